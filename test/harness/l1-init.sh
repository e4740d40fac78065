# L1's job runner. The initramfs /init (src/image/initramfs.ts) has already
# mounted proc/sys/devtmpfs and insmod'ed kvm, kvm-amd and the virtio/9p
# modules when it runs this with busybox sh. The host (test/harness/l1.ts)
# reads the "L1: ..." lines from the serial console:
#   "L1: job start"   the job is running: from here on the host never retries
#   "L1: done rc=N"   the job's exit status (authoritative)
# Exit statuses made here: 125 no /dev/kvm, 123 a 9p share did not mount.
up() { cut -d' ' -f1 /proc/uptime; }

finish() {
  rc=$1
  # Kernel warnings in L1 explain many odd test failures; show them.
  if dmesg | grep -q -E 'WARNING:|BUG:|Oops|Call Trace|general protection'; then
    echo "L1: kernel warnings in dmesg:"
    dmesg | grep -A3 -E 'WARNING:|BUG:|Oops|Call Trace|general protection' | head -40
  fi
  echo "L1: done rc=$rc uptime=$(up)s"
  sync
  # isa-debug-exit (port 0xf4): QEMU exits at once with status (value << 1) | 1.
  printf "\\$(printf %o $((rc & 255)))" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
  exit "$rc"
}

echo "L1: init script start uptime=$(up)s cpu: $(grep -m1 -o -w -E 'svm|vmx' /proc/cpuinfo)"
if [ ! -c /dev/kvm ]; then
  echo "L1: NO /dev/kvm"
  dmesg | grep -i -E 'kvm|svm|vmx'
  finish 125
fi

# Keep KVM's static keys from flipping for L1's whole life (see l1-pin.c).
/usr/libexec/volt/l1-pin > /tmp/l1-pin.log 2>&1 &
pinned=no
for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
  if grep -q holding /tmp/l1-pin.log; then pinned=yes; break; fi
  if grep -q FAILED /tmp/l1-pin.log; then break; fi
  sleep 0.25
done
echo "L1: /dev/kvm ok; static keys pinned: $pinned $(cat /tmp/l1-pin.log)"

O=trans=virtio,version=9p2000.L,msize=512000
mkdir -p /job /host
mount -t 9p -o $O,cache=none voltjob /job || { echo "L1: job share mount FAILED"; finish 123; }
checkout=$(cat /job/checkout)
mount -t 9p -o $O,ro,cache=loose hostroot /host || { echo "L1: host root mount FAILED"; finish 123; }
for d in proc sys dev; do mount --bind /$d /host/$d; done
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs shm /host/dev/shm
# The host root is read-only: give the job fresh, private scratch space.
mount -t tmpfs tmp /host/tmp
mount -t tmpfs run /host/run
mount -t tmpfs vartmp /host/var/tmp
mkdir -p /host/tmp/.volt-l1-job
mount --bind /job /host/tmp/.volt-l1-job
mkdir -p "/host$checkout" 2>/dev/null
mount -t 9p -o $O,cache=mmap checkout "/host$checkout" || { echo "L1: checkout share mount FAILED"; finish 123; }

echo "L1: job start uptime=$(up)s in $checkout"
start=$(up)
chroot /host /bin/sh /tmp/.volt-l1-job/job.sh </dev/null
rc=$?
echo "L1: job took $(echo "$(up) $start" | awk '{printf "%.1f", $1 - $2}')s (L1 clock)"
finish $rc
