/*
 * The only native code Volt carries. bun:ffi can call libc, but two things it
 * cannot do well:
 *  - return errno reliably: errno is thread-local and the JS runtime may make
 *    its own calls between ours, so we issue raw system calls, whose kernel
 *    return value is -errno on failure, and never touch errno at all;
 *  - provide a C function pointer for a signal handler: a vCPU worker blocked
 *    in KVM_RUN is kicked out with a signal whose handler must do nothing and
 *    must be installed without SA_RESTART so the ioctl returns EINTR.
 * Everything else (which syscalls, which arguments) is decided in TypeScript.
 */
#include <signal.h>
#include <string.h>

long volt_syscall6(long nr, long a0, long a1, long a2, long a3, long a4, long a5)
{
	long ret;
	register long r10 __asm__("r10") = a3;
	register long r8 __asm__("r8") = a4;
	register long r9 __asm__("r9") = a5;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(nr), "D"(a0), "S"(a1), "d"(a2), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}

static void ignore_kick(int sig)
{
	(void)sig;
}

/* Returns the signal number to kick vCPU threads with, or -errno. */
int volt_install_kick_handler(void)
{
	struct sigaction sa;
	int sig = SIGRTMIN + 3;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = ignore_kick;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0; /* no SA_RESTART: KVM_RUN must come back with EINTR */
	if (sigaction(sig, &sa, NULL) != 0)
		return -1;
	return sig;
}
