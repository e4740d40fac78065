/*
 * l1-pin: hold two idle KVM VMs open for the whole life of the nested-KVM L1
 * guest, so that KVM's static keys never flip when tests create and destroy
 * VMs. Flipping them makes L1's kernel live-patch its own text (int3 based),
 * which under QEMU's multi-threaded TCG can leave an emulated vCPU spinning
 * on a stale int3 forever (seen with QEMU 7.2; this is the second line of
 * defence next to running L1 on a newer QEMU).
 *
 *  - VM 1, no irqchip, one vCPU: keeps preempt_notifier_key and
 *    kvm_has_noapic_vcpu enabled.
 *  - VM 2, in-kernel irqchip, one vCPU whose local APIC stays hardware- and
 *    software-disabled: keeps apic_hw_disabled and apic_sw_disabled enabled.
 *
 * Build: gcc -O2 -static -o l1-pin l1-pin.c
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <unistd.h>

static int check(int result, const char *what)
{
	if (result < 0) {
		perror(what);
		printf("l1-pin: FAILED at %s\n", what);
		exit(1);
	}
	return result;
}

int main(void)
{
	int kvm = check(open("/dev/kvm", O_RDWR | O_CLOEXEC), "open /dev/kvm");
	int api = ioctl(kvm, KVM_GET_API_VERSION, 0);
	if (api != KVM_API_VERSION) {
		printf("l1-pin: FAILED: KVM API version %d, expected %d\n", api, KVM_API_VERSION);
		return 1;
	}

	int vm1 = check(ioctl(kvm, KVM_CREATE_VM, 0UL), "KVM_CREATE_VM");
	check(ioctl(vm1, KVM_CREATE_VCPU, 0UL), "KVM_CREATE_VCPU");

	int vm2 = check(ioctl(kvm, KVM_CREATE_VM, 0UL), "KVM_CREATE_VM (irqchip)");
	check(ioctl(vm2, KVM_CREATE_IRQCHIP, 0), "KVM_CREATE_IRQCHIP");
	int vcpu2 = check(ioctl(vm2, KVM_CREATE_VCPU, 0UL), "KVM_CREATE_VCPU (irqchip)");
	/* APIC base with only the BSP bit: the APIC is present but disabled. */
	struct {
		struct kvm_msrs header;
		struct kvm_msr_entry entry;
	} msrs = { .header.nmsrs = 1, .entry.index = 0x1b /* IA32_APICBASE */, .entry.data = 0xfee00000 | 0x100 };
	if (ioctl(vcpu2, KVM_SET_MSRS, &msrs) != 1)
		check(-1, "KVM_SET_MSRS IA32_APICBASE");

	printf("l1-pin: KVM API %d, holding 2 idle VMs\n", api);
	fflush(stdout);
	for (;;)
		pause();
}
