/**
 * virtio-mmio devices on a real guest: one boot exercises an ext4 drive, a
 * read-only drive, a raw drive whose flushed data must survive a SIGKILL of
 * volt, and virtio-rng. The host prepares the images and checks them after.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildInitramfs } from "../../src/image/initramfs.ts";
import { requireKvm, sandboxViolations } from "./kvm.ts";

const root = join(import.meta.dir, "..", "..");
const volt = join(root, "dist", "volt");
const work = mkdtempSync(join(tmpdir(), "volt-virtio-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const kvmUsable = requireKvm();
/** The kernel log before these VMs ran: they run sandboxed (Volt's default) and must add no violation. */
const violationsBefore = kvmUsable ? sandboxViolations().length : 0;
const kernel = process.env.VOLT_TEST_VMLINUX ?? process.env.VOLT_TEST_BZIMAGE;
const modules = (process.env.VOLT_TEST_VMLINUX_MODULES ?? "").split(":").filter((m) => m !== "");

const MiB = 1024 * 1024;
/** What the guest writes to the raw drive: 64 KiB the host can regenerate. */
const PATTERN_BYTES = 64 * 1024;
function pattern(): Buffer {
  return Buffer.from("VOLT-PATTERN\n".repeat(Math.ceil(PATTERN_BYTES / 13))).subarray(0, PATTERN_BYTES);
}

function sh(command: string[]): string {
  const result = Bun.spawnSync(command);
  if (result.exitCode !== 0) throw new Error(`${command.join(" ")}: ${result.stderr.toString()}`);
  return result.stdout.toString();
}

const GUEST_SCRIPT = `
set -u
echo "VOLT-VIRTIO-DEVICES=$(ls /sys/bus/virtio/devices | wc -l)"
mkdir -p /mnt
mount -t ext4 /dev/vda /mnt && echo VOLT-MOUNTED
echo "VOLT-HOST-FILE=$(cat /mnt/from-host.txt)"
echo "written by the guest" > /mnt/from-guest.txt
sync
umount /mnt && echo VOLT-UNMOUNTED
echo "VOLT-VDA-SERIAL=$(cat /sys/block/vda/serial)"
echo "VOLT-VDB-RO=$(cat /sys/block/vdb/ro)"
echo "VOLT-VDB-HEAD=$(head -c 16 /dev/vdb)"
if dd if=/dev/zero of=/dev/vdb bs=512 count=1 conv=fsync 2>/dev/null; then echo VOLT-RO-WRITE=succeeded; else echo VOLT-RO-WRITE=refused; fi
echo "VOLT-RNG=$(cat /sys/class/misc/hw_random/rng_current)"
echo "VOLT-RNG-BYTES=$(head -c 32 /dev/hwrng | od -An -tx1 | tr -d ' \\n')"
yes VOLT-PATTERN | head -c ${PATTERN_BYTES} > /tmp/pattern
dd if=/tmp/pattern of=/dev/vdc bs=4096 conv=fsync 2>/dev/null && echo VOLT-FLUSHED
sleep 600
`;

describe.skipIf(!kvmUsable)(`virtio devices on a real guest (${process.env.VOLT_KVM_MODE ?? "unknown"} KVM)`, () => {
  test("environment provides a guest kernel", () => {
    expect(kernel).toBeDefined();
  });

  test("ext4 on virtio-blk round-trips files, a read-only drive refuses writes, flushed data survives SIGKILL, virtio-rng gives bytes", async () => {
    // Files of this attempt only: --retry runs the test again.
    const dir = mkdtempSync(join(work, "attempt-"));
    // ext4 image made from a directory on the host.
    const tree = join(dir, "tree");
    mkdirSync(tree);
    writeFileSync(join(tree, "from-host.txt"), "hello from the host\n");
    const ext4 = join(dir, "data.ext4");
    sh(["mkfs.ext4", "-q", "-F", "-d", tree, "-L", "voltdata", ext4, "32M"]);
    // A read-only drive with recognisable first bytes, and a zeroed raw drive for the flush check.
    const readOnly = join(dir, "readonly.img");
    const readOnlyBytes = Buffer.alloc(MiB);
    readOnlyBytes.write("READ-ONLY-DRIVE!", 0);
    writeFileSync(readOnly, readOnlyBytes);
    const raw = join(dir, "raw.img");
    writeFileSync(raw, Buffer.alloc(4 * MiB));
    const initrd = join(dir, "virtio.cpio.gz");
    writeFileSync(initrd, buildInitramfs({ script: GUEST_SCRIPT, exit: "poweroff", modules }));

    const child = Bun.spawn(
      [volt, "run", "--kernel", kernel!, "--initrd", initrd, "--mem", "256", "--drive", `path=${ext4},id=data`, "--drive", `path=${readOnly},ro`, "--drive", `path=${raw}`, "--rng"],
      { stdin: "ignore", stdout: "pipe", stderr: "pipe" },
    );
    const timer = setTimeout(() => child.kill("SIGKILL"), 240_000);
    let console = "";
    let killed = false;
    const decoder = new TextDecoder();
    const drain = async (stream: ReadableStream<Uint8Array>) => {
      for await (const chunk of stream) {
        console += decoder.decode(chunk);
        if (!killed && console.includes("VOLT-FLUSHED")) {
          killed = true;
          child.kill("SIGKILL");
        }
      }
    };
    await Promise.all([drain(child.stdout), drain(child.stderr)]);
    clearTimeout(timer);
    await child.exited;
    if (!killed) globalThis.console.error(`volt ended by itself (exit ${child.exitCode}, signal ${child.signalCode ?? "none"}); console tail:\n${console.slice(-4000)}`);

    expect(console).toContain("VOLT-VIRTIO-DEVICES=4");
    expect(console).toContain("VOLT-MOUNTED");
    expect(console).toContain("VOLT-HOST-FILE=hello from the host");
    expect(console).toContain("VOLT-UNMOUNTED");
    expect(console).toContain("VOLT-VDA-SERIAL=data");
    expect(console).toContain("VOLT-VDB-RO=1");
    expect(console).toContain("VOLT-VDB-HEAD=READ-ONLY-DRIVE!");
    expect(console).toContain("VOLT-RO-WRITE=refused");
    expect(console).toMatch(/VOLT-RNG=virtio_rng/); // "virtio_rng" or "virtio_rng.0", by kernel
    const rngHex = console.match(/VOLT-RNG-BYTES=([0-9a-f]*)/)?.[1] ?? "";
    expect(rngHex.length).toBe(64);
    expect(new Set(rngHex).size).toBeGreaterThan(4);
    expect(killed).toBe(true);

    // After volt is gone: the guest's file is in the ext4 image, which is consistent; the read-only image is untouched;
    // the raw drive holds exactly what the guest flushed before the SIGKILL.
    expect(sh(["debugfs", "-R", "cat /from-guest.txt", ext4])).toBe("written by the guest\n");
    expect(Bun.spawnSync(["e2fsck", "-fn", ext4]).exitCode).toBe(0);
    expect(readFileSync(readOnly).equals(readOnlyBytes)).toBe(true);
    const rawAfter = readFileSync(raw);
    expect(rawAfter.subarray(0, PATTERN_BYTES).equals(pattern())).toBe(true);
    expect(rawAfter.subarray(PATTERN_BYTES).every((b) => b === 0)).toBe(true);
  });

  test("the sandboxed VMs above caused no seccomp kill or Landlock denial in the kernel log", () => {
    expect(sandboxViolations().slice(violationsBefore)).toEqual([]);
  });
});
