/*
 * The smallest KVM exit loop that can run bench/exit-guest code: one VM, 64 KiB
 * of RAM, one vCPU in real mode at 0x1000, and a loop that re-enters KVM_RUN
 * after every KVM_EXIT_IO without looking at the data, until KVM_EXIT_HLT.
 * It is the baseline for Volt's vCPU worker (bench/exit-volt.ts runs the same
 * guest bytes there): the difference is what Volt's own exit handling costs.
 *
 *   kvm-loop <exits> <port>     prints one JSON line:
 *   {"exits": N, "loopNs": ..., "setupNs": ...}
 *
 * loopNs is the time from the first KVM_RUN to the HLT exit (CLOCK_MONOTONIC).
 * The guest code is the same as in bench/exit-volt.ts (keep them in step):
 *   mov $N,%ecx; mov $port,%dx; 1: out %al,(%dx); dec %ecx; jnz 1b; hlt
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MEM_SIZE 0x10000
#define CODE_ADDRESS 0x1000

static void die(const char *what) {
  fprintf(stderr, "kvm-loop: %s: %s\n", what, strerror(errno));
  exit(1);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: kvm-loop <exits> <port>\n");
    return 2;
  }
  uint32_t exits = (uint32_t)strtoul(argv[1], NULL, 0);
  uint16_t port = (uint16_t)strtoul(argv[2], NULL, 0);
  if (exits == 0) {
    fprintf(stderr, "kvm-loop: exits must be at least 1\n");
    return 2;
  }
  uint64_t setup_start = now_ns();

  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) die("open /dev/kvm");
  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0) die("KVM_CREATE_VM");
  uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) die("mmap guest memory");

  const uint8_t code[] = {
      0x66, 0xb9, (uint8_t)exits, (uint8_t)(exits >> 8), (uint8_t)(exits >> 16), (uint8_t)(exits >> 24), /* mov $exits,%ecx */
      0xba, (uint8_t)port, (uint8_t)(port >> 8), /* mov $port,%dx */
      0xee,                                      /* 1: out %al,(%dx) */
      0x66, 0x49,                                /* dec %ecx */
      0x75, 0xfb,                                /* jnz 1b */
      0xf4,                                      /* hlt */
  };
  memcpy(mem + CODE_ADDRESS, code, sizeof code);

  struct kvm_userspace_memory_region region = {
      .slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE, .userspace_addr = (uint64_t)(uintptr_t)mem};
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");
  int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
  if (vcpu < 0) die("KVM_CREATE_VCPU");
  int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (run_size < 0) die("KVM_GET_VCPU_MMAP_SIZE");
  struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  if (run == MAP_FAILED) die("mmap kvm_run");

  struct kvm_sregs sregs;
  if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
  sregs.cs.base = 0;
  sregs.cs.selector = 0;
  if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
  struct kvm_regs regs = {.rip = CODE_ADDRESS, .rflags = 0x2};
  if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");

  uint64_t loop_start = now_ns();
  uint64_t io_exits = 0;
  for (;;) {
    if (ioctl(vcpu, KVM_RUN, 0) < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      die("KVM_RUN");
    }
    if (run->exit_reason == KVM_EXIT_IO) {
      io_exits++;
      continue;
    }
    if (run->exit_reason == KVM_EXIT_HLT) break;
    fprintf(stderr, "kvm-loop: unexpected exit reason %u after %llu I/O exits\n", run->exit_reason, (unsigned long long)io_exits);
    return 1;
  }
  uint64_t loop_end = now_ns();
  if (io_exits != exits) {
    fprintf(stderr, "kvm-loop: expected %u I/O exits, saw %llu\n", exits, (unsigned long long)io_exits);
    return 1;
  }
  printf("{\"exits\": %llu, \"loopNs\": %llu, \"setupNs\": %llu}\n", (unsigned long long)io_exits,
         (unsigned long long)(loop_end - loop_start), (unsigned long long)(loop_start - setup_start));
  return 0;
}
