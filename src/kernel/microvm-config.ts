/**
 * Volt's microVM kernel configuration fragment, written for Volt (not copied
 * from a distribution): everything a Volt guest needs is built in, nothing
 * else. `volt kernel build` applies it with `make allnoconfig
 * KCONFIG_ALLCONFIG=<this>` (every symbol not named here is off, or at its
 * default when it has no prompt), then checks that every symbol below ended
 * up in .config with the value asked for: Kconfig silently drops a symbol
 * whose dependencies are not met, and that must be an error naming it.
 *
 * It is a TypeScript string, not a separate file, so `bun build --compile`
 * puts it inside the volt binary.
 *
 * Choices worth a word:
 * - ACPI is off, measured, not assumed. Volt writes ACPI tables, and with
 *   ACPI the guest's poweroff and reboot would reach Volt through the FADT's
 *   registers at port 0x600. But Linux 6.1 cannot load ACPI tables without
 *   PCI: ACPICA lists PCI_Config among the default address spaces
 *   unconditionally while its handler exists only with CONFIG_PCI, so table
 *   loading fails ("ACPI Error: AE_BAD_PARAMETER, During Region
 *   initialization", "Unable to load the System Description Tables"), the
 *   DSDT's virtio-mmio devices never appear and the root cannot be mounted.
 *   (Seen in the first e2e run of this kernel; the reference config in
 *   ../shared has no ACPI either.) The issue rules out PCI, so ACPI goes: Volt gives kernels without ACPI their devices as
 *   `virtio_mmio.device=` parameters (VIRTIO_MMIO_CMDLINE_DEVICES), finds the
 *   CPUs through the MP table (X86_MPPARSE), and recognises a power-off from
 *   the kernel's "reboot: Power down" console line (`reboot=k` resets
 *   through the i8042).
 * - NR_CPUS=64: Volt's own vCPU limit. The cost of a larger NR_CPUS is
 *   static per-CPU arrays and cpumasks, small at 64.
 * - EXPERT on, so allnoconfig turns off the "if EXPERT" conveniences
 *   (kallsyms, BUG, vm event counters, …); what a busybox or systemd-less
 *   userland needs (futex, epoll, timerfd, eventfd, signalfd, shmem, file
 *   locking, POSIX timers, multi-user) is named explicitly.
 * - No PCI, no ACPI, no modules, no debug info, no initramfs compressors but gzip
 *   (Volt's own initramfs images are gzip).
 */
export const MICROVM_CONFIG = `# Volt microVM guest kernel (applied with make allnoconfig KCONFIG_ALLCONFIG=this file)
# Architecture and platform
CONFIG_64BIT=y
CONFIG_SMP=y
CONFIG_NR_CPUS=64
CONFIG_X86_MPPARSE=y
CONFIG_HYPERVISOR_GUEST=y
CONFIG_PARAVIRT=y
CONFIG_PARAVIRT_SPINLOCKS=y
CONFIG_KVM_GUEST=y
CONFIG_PARAVIRT_CLOCK=y
CONFIG_PVH=y
# CONFIG_ACPI is not set
# CONFIG_PCI is not set
# CONFIG_MODULES is not set
CONFIG_HIGH_RES_TIMERS=y
CONFIG_SLUB=y
CONFIG_UNWINDER_GUESS=y
CONFIG_DEBUG_INFO_NONE=y

# Kernel facilities userland expects
CONFIG_EXPERT=y
CONFIG_PRINTK=y
CONFIG_MULTIUSER=y
CONFIG_POSIX_TIMERS=y
CONFIG_FUTEX=y
CONFIG_EPOLL=y
CONFIG_SIGNALFD=y
CONFIG_TIMERFD=y
CONFIG_EVENTFD=y
CONFIG_SHMEM=y
CONFIG_FILE_LOCKING=y
CONFIG_SYSCTL=y
CONFIG_PROC_SYSCTL=y
CONFIG_BINFMT_ELF=y
CONFIG_BINFMT_SCRIPT=y
CONFIG_BLK_DEV_INITRD=y
CONFIG_RD_GZIP=y

# Console and legacy devices
CONFIG_TTY=y
CONFIG_UNIX98_PTYS=y
CONFIG_SERIAL_8250=y
CONFIG_SERIAL_8250_CONSOLE=y
CONFIG_SERIAL_8250_NR_UARTS=1
CONFIG_SERIAL_8250_RUNTIME_UARTS=1
CONFIG_INPUT=y
CONFIG_INPUT_KEYBOARD=y
CONFIG_KEYBOARD_ATKBD=y
CONFIG_SERIO=y
CONFIG_SERIO_I8042=y
CONFIG_DEVMEM=y

# virtio over MMIO, with devices from the command line too
CONFIG_VIRTIO_MENU=y
CONFIG_VIRTIO=y
CONFIG_VIRTIO_MMIO=y
CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y
CONFIG_BLOCK=y
CONFIG_BLK_DEV=y
CONFIG_VIRTIO_BLK=y
CONFIG_NET=y
CONFIG_NETDEVICES=y
CONFIG_NET_CORE=y
CONFIG_VIRTIO_NET=y
CONFIG_VSOCKETS=y
CONFIG_VIRTIO_VSOCKETS=y
CONFIG_HW_RANDOM=y
CONFIG_HW_RANDOM_VIRTIO=y
CONFIG_VIRTIO_BALLOON=y

# Networking
CONFIG_UNIX=y
CONFIG_INET=y

# File systems
CONFIG_EXT4_FS=y
CONFIG_DEVTMPFS=y
CONFIG_DEVTMPFS_MOUNT=y
CONFIG_TMPFS=y
CONFIG_PROC_FS=y
CONFIG_SYSFS=y
`;
