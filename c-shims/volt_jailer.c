/*
 * volt_jailer: puts one program into a jail and execs it. Modelled on
 * Firecracker's jailer; the per-VM directory, its files and device nodes are
 * prepared beforehand by Volt (src/sandbox/jail.ts). This program exists
 * because namespaces must be entered before Bun starts its threads (a
 * multi-threaded process cannot unshare its mount namespace).
 *
 *   volt_jailer --root DIR --uid U --gid G [--cgroup PATH] [--netns PATH]
 *               [--rlimit-nofile N] [--rlimit-fsize BYTES]
 *               [--bind SRC DST]... [--bind-ro SRC DST]...
 *               -- PROGRAM [ARGS...]
 *
 * In order:
 *   1. close every descriptor above 2;
 *   2. --cgroup: write our pid to PATH/cgroup.procs (what we fork inherits it);
 *   3. --netns: join that network namespace (else a new, empty one below);
 *   4. unshare mount, PID, IPC, UTS, cgroup (and network) namespaces: the
 *      cgroup namespace is rooted at the cgroup of step 2;
 *   5. fork: the child is pid 1 of the new PID namespace; the parent forwards
 *      SIGINT/SIGTERM/SIGHUP/SIGQUIT to it, waits, and exits with its status
 *      (killed by signal n: 128+n).
 * In the child:
 *   6. make every mount private, so nothing below propagates to the host;
 *   7. bind DIR onto itself (pivot_root needs a mount point) and re-mount it
 *      nosuid only: the jail's device nodes and binaries must work even when
 *      DIR lives on a nodev/noexec file system such as /run;
 *   8. each --bind/--bind-ro: bind SRC onto DIR/DST (nosuid, nodev; -ro: read-only);
 *   9. pivot_root into DIR (pivot_root(".", "."), then detach the old root);
 *  10. mount a fresh proc on /proc for the new PID namespace, if /proc exists;
 *  11. chdir("/"), set the host name (the new UTS namespace starts with the
 *      host's), set the rlimits;
 *  12. setgroups(0), setgid(G), setuid(U), and check root cannot be regained;
 *  13. ask for SIGKILL if the parent dies (after setuid, which clears it);
 *  14. execve PROGRAM with ARGS and this environment.
 * Any failure: a message naming the step on stderr, exit 127.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_BINDS 64

extern char **environ;

struct bind {
	const char *src;
	const char *dst;
	int read_only;
};

static struct bind binds[MAX_BINDS];
static int bind_count;
static volatile pid_t child_pid;

static void die(const char *fmt, ...)
{
	int saved = errno;
	va_list ap;

	fputs("volt_jailer: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	if (saved != 0)
		fprintf(stderr, ": %s", strerror(saved));
	fputc('\n', stderr);
	_exit(127);
}

static void usage(const char *why)
{
	errno = 0;
	die("%s\nusage: volt_jailer --root DIR --uid U --gid G [--cgroup PATH] [--netns PATH] "
	    "[--rlimit-nofile N] [--rlimit-fsize BYTES] [--bind SRC DST] [--bind-ro SRC DST] -- PROGRAM [ARGS...]",
	    why);
}

static unsigned long long number(const char *flag, const char *text)
{
	char *end;
	unsigned long long value;

	errno = 0;
	if (text[0] < '0' || text[0] > '9')
		usage(flag);
	value = strtoull(text, &end, 10);
	if (errno != 0 || *end != '\0')
		usage(flag);
	return value;
}

static void forward(int sig)
{
	if (child_pid > 0)
		kill(child_pid, sig);
}

static void write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);

	if (fd < 0)
		die("cgroup: open %s", path);
	if (write(fd, text, strlen(text)) != (ssize_t)strlen(text))
		die("cgroup: write %s to %s", text, path);
	close(fd);
}

static void join_path(char *out, const char *root, const char *inside)
{
	if (inside[0] != '/')
		usage("a bind destination must be an absolute path inside the jail");
	if (snprintf(out, PATH_MAX, "%s%s", root, inside) >= PATH_MAX) {
		errno = ENAMETOOLONG;
		die("bind destination %s%s", root, inside);
	}
}

static void set_limit(int resource, const char *name, unsigned long long value)
{
	struct rlimit limit = { .rlim_cur = value, .rlim_max = value };

	if (setrlimit(resource, &limit) != 0)
		die("setrlimit %s %llu", name, value);
}

int main(int argc, char **argv)
{
	const char *root = NULL, *cgroup = NULL, *netns = NULL;
	long long uid = -1, gid = -1, nofile = -1, fsize = -1;
	char **program = NULL;
	int flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP | CLONE_NEWNET;
	int i, status;

	for (i = 1; i < argc; i++) {
		const char *arg = argv[i];
		const char *value = i + 1 < argc ? argv[i + 1] : NULL;

		if (strcmp(arg, "--") == 0) {
			program = &argv[i + 1];
			break;
		}
		if (value == NULL)
			usage(arg);
		if (strcmp(arg, "--root") == 0)
			root = value;
		else if (strcmp(arg, "--uid") == 0)
			uid = (long long)number(arg, value);
		else if (strcmp(arg, "--gid") == 0)
			gid = (long long)number(arg, value);
		else if (strcmp(arg, "--cgroup") == 0)
			cgroup = value;
		else if (strcmp(arg, "--netns") == 0)
			netns = value;
		else if (strcmp(arg, "--rlimit-nofile") == 0)
			nofile = (long long)number(arg, value);
		else if (strcmp(arg, "--rlimit-fsize") == 0)
			fsize = (long long)number(arg, value);
		else if (strcmp(arg, "--bind") == 0 || strcmp(arg, "--bind-ro") == 0) {
			if (i + 2 >= argc || bind_count == MAX_BINDS)
				usage(arg);
			binds[bind_count].src = argv[i + 1];
			binds[bind_count].dst = argv[i + 2];
			binds[bind_count].read_only = strcmp(arg, "--bind-ro") == 0;
			bind_count++;
			i++;
		} else
			usage(arg);
		i++;
	}
	if (root == NULL || root[0] != '/' || uid < 0 || gid < 0 || program == NULL || program[0] == NULL)
		usage("--root (absolute), --uid, --gid and a program after -- are required");
	if (uid > 0xfffffffeLL || gid > 0xfffffffeLL)
		usage("--uid/--gid out of range");

	/* 1. Nothing of the caller's reaches the jail but stdin, stdout and stderr. */
	if (syscall(SYS_close_range, 3U, ~0U, 0U) != 0)
		for (i = 3; i < 1024; i++)
			close(i);

	/* 2. The cgroup first: everything forked from here on is inside it. */
	if (cgroup != NULL) {
		char path[PATH_MAX], pid[32];

		if (snprintf(path, sizeof(path), "%s/cgroup.procs", cgroup) >= (int)sizeof(path)) {
			errno = ENAMETOOLONG;
			die("cgroup %s", cgroup);
		}
		snprintf(pid, sizeof(pid), "%d", (int)getpid());
		write_file(path, pid);
	}

	/* 3. An existing network namespace (holding the VM's taps), or a new, empty one. */
	if (netns != NULL) {
		int fd = open(netns, O_RDONLY | O_CLOEXEC);

		if (fd < 0)
			die("open network namespace %s", netns);
		if (setns(fd, CLONE_NEWNET) != 0)
			die("setns %s", netns);
		close(fd);
		flags &= ~CLONE_NEWNET;
	}

	/* 4. */
	if (unshare(flags) != 0)
		die("unshare (mount, pid, ipc, uts, cgroup%s namespaces)", netns != NULL ? "" : ", net");

	/* 5. Handlers before the fork, so no signal is lost; the child's are reset by execve. */
	{
		struct sigaction sa;
		const int forwarded[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT };

		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = forward;
		sigemptyset(&sa.sa_mask);
		for (i = 0; i < (int)(sizeof(forwarded) / sizeof(forwarded[0])); i++)
			if (sigaction(forwarded[i], &sa, NULL) != 0)
				die("sigaction");
	}
	child_pid = fork();
	if (child_pid < 0)
		die("fork into the new pid namespace");
	if (child_pid > 0) {
		pid_t done;

		while ((done = waitpid(child_pid, &status, 0)) < 0 && errno == EINTR)
			;
		if (done < 0)
			die("waitpid");
		if (WIFEXITED(status))
			return WEXITSTATUS(status);
		return 128 + WTERMSIG(status);
	}

	/* 6. */
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
		die("make mounts private");

	/* 7. */
	if (mount(root, root, NULL, MS_BIND, NULL) != 0)
		die("bind %s onto itself", root);
	if (mount(NULL, root, NULL, MS_REMOUNT | MS_BIND | MS_NOSUID, NULL) != 0)
		die("re-mount %s nosuid", root);

	/* 8. */
	for (i = 0; i < bind_count; i++) {
		char target[PATH_MAX];
		unsigned long remount = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV;

		join_path(target, root, binds[i].dst);
		if (mount(binds[i].src, target, NULL, MS_BIND, NULL) != 0)
			die("bind %s onto %s", binds[i].src, target);
		if (binds[i].read_only)
			remount |= MS_RDONLY;
		if (mount(NULL, target, NULL, remount, NULL) != 0)
			die("re-mount %s%s", target, binds[i].read_only ? " read-only" : "");
	}

	/* 9. The old root ends up stacked on the new one; detaching it leaves only the jail. */
	if (chdir(root) != 0)
		die("chdir %s", root);
	if (syscall(SYS_pivot_root, ".", ".") != 0)
		die("pivot_root into %s", root);
	if (umount2(".", MNT_DETACH) != 0)
		die("detach the old root");

	/* 10. */
	{
		struct stat st;

		if (stat("/proc", &st) == 0 && S_ISDIR(st.st_mode) &&
		    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
			die("mount /proc");
	}

	/* 11. */
	if (chdir("/") != 0)
		die("chdir /");
	if (sethostname("volt", 4) != 0)
		die("sethostname");
	if (nofile >= 0)
		set_limit(RLIMIT_NOFILE, "nofile", (unsigned long long)nofile);
	if (fsize >= 0)
		set_limit(RLIMIT_FSIZE, "fsize", (unsigned long long)fsize);

	/* 12. Groups, then gid, then uid: after setuid nothing else could be changed. */
	if (setgroups(0, NULL) != 0)
		die("setgroups(0)");
	if (setgid((gid_t)gid) != 0)
		die("setgid %lld", gid);
	if (setuid((uid_t)uid) != 0)
		die("setuid %lld", uid);
	if (uid != 0 && (setuid(0) == 0 || geteuid() == 0)) {
		errno = 0;
		die("still able to become root after setuid %lld", uid);
	}

	/* 13. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
		die("prctl(PR_SET_PDEATHSIG)");

	/* 14. */
	execve(program[0], program, environ);
	die("execve %s", program[0]);
	return 127;
}
