/**
 * The pieces together, as the VM builder will call them: every write lands
 * where the layout says, and nothing overwrites anything else.
 */
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { boot_params, writeBootParams } from "../../src/arch/x86_64/boot-params.ts";
import { CMDLINE_ADDRESS, MiB, VIRTIO_MMIO_BASE, ZERO_PAGE_ADDRESS } from "../../src/arch/x86_64/layout.ts";
import { e820Entries, guestRamRegions, lowRamEnd } from "../../src/arch/x86_64/memory-map.ts";
import { writeMpTable } from "../../src/arch/x86_64/mptable.ts";
import { writePvhStartInfo } from "../../src/arch/x86_64/pvh.ts";
import { setupBootCpu } from "../../src/arch/x86_64/regs.ts";
import { StructView } from "../../src/kvm/struct.ts";
import { KernelCmdline, writeCmdline } from "../../src/loader/cmdline.ts";
import { loadKernel } from "../../src/loader/detect.ts";
import { loadInitrd } from "../../src/loader/initrd.ts";
import { GuestMemory } from "../../src/memory/guest-memory.ts";
import { availableOrExplain, buildBzImage, MICROVM_KERNEL_DIR } from "./loader-fixtures.ts";

function bootLinux64(kernelBytes: Uint8Array, memBytes: number) {
  const memory = GuestMemory.create(guestRamRegions(memBytes));
  const kernel = loadKernel(memory, kernelBytes);
  if (kernel.format !== "bzimage") throw new Error("this recipe boots a bzImage");
  const cmdline = writeCmdline(
    memory,
    new KernelCmdline(kernel.cmdlineSize).add("console", "ttyS0").addVirtioMmioDevice(0x1000, VIRTIO_MMIO_BASE, 5),
    CMDLINE_ADDRESS,
  );
  const initrdBytes = new Uint8Array(3 * MiB).fill(0x42);
  const initrd = loadInitrd(memory, initrdBytes, { lowRamEnd: lowRamEnd(memBytes), kernelEnd: kernel.kernelEnd, initrdAddrMax: kernel.initrdAddrMax });
  writeBootParams(memory, { setupHeader: kernel.setupHeader, cmdline, initrd, e820: e820Entries(memBytes) });
  writeMpTable(memory, 2);
  const state = setupBootCpu(memory, "linux64", kernel.entry64);
  return { memory, kernel, cmdline, initrd, initrdBytes, state };
}

describe("64-bit Linux boot recipe", () => {
  test("a synthetic bzImage: kernel, cmdline, initrd, zero page, MP table and tables coexist", () => {
    const image = buildBzImage();
    const { memory, kernel, cmdline, initrd, initrdBytes, state } = bootLinux64(image, 64 * MiB);
    try {
      // Everything written after the kernel left the kernel intact.
      expect([...memory.read(kernel.loadAddress, kernel.protectedModeSize)]).toEqual([...image.subarray(kernel.setupSize)]);
      expect([...memory.read(initrd.address, initrd.size)]).toEqual([...initrdBytes]);
      const params = new StructView(boot_params, memory.read(ZERO_PAGE_ADDRESS, boot_params.size));
      expect(params.get("hdr.cmd_line_ptr")).toBe(cmdline.address);
      expect(params.get("hdr.ramdisk_image")).toBe(initrd.address);
      expect(new TextDecoder().decode(memory.read(cmdline.address, cmdline.size - 1))).toBe(
        "console=ttyS0 virtio_mmio.device=4K@0xc0000000:5",
      );
      expect(state.regs.rip).toBe(BigInt(kernel.entry64));
      expect(initrd.address).toBeGreaterThanOrEqual(kernel.kernelEnd);
    } finally {
      memory.dispose();
    }
  });

  const bzImage = join(MICROVM_KERNEL_DIR, "bzImage");
  test.skipIf(!availableOrExplain(bzImage, "the real bzImage boot recipe"))("the microVM bzImage in 128 MiB", () => {
    const { memory, kernel, initrd } = bootLinux64(readFileSync(bzImage), 128 * MiB);
    try {
      expect(initrd.address).toBeGreaterThanOrEqual(kernel.kernelEnd);
      expect(initrd.address + initrd.size).toBeLessThanOrEqual(128 * MiB);
    } finally {
      memory.dispose();
    }
  });
});

describe("PVH boot recipe", () => {
  const gz = join(MICROVM_KERNEL_DIR, "vmlinux.gz");
  test.skipIf(!availableOrExplain(existsSync(gz) ? gz : undefined, "the real vmlinux PVH recipe"))("the microVM vmlinux enters through PVH", () => {
    const memBytes = 128 * MiB;
    const memory = GuestMemory.create(guestRamRegions(memBytes));
    try {
      const kernel = loadKernel(memory, Bun.gunzipSync(readFileSync(gz)));
      if (kernel.format !== "elf" || kernel.pvhEntry === undefined) throw new Error("expected an ELF kernel with a PVH note");
      const cmdline = writeCmdline(memory, new KernelCmdline().add("console", "ttyS0"), CMDLINE_ADDRESS);
      const initrd = loadInitrd(memory, new Uint8Array(MiB), { lowRamEnd: lowRamEnd(memBytes), kernelEnd: kernel.kernelEnd });
      const startInfo = writePvhStartInfo(memory, { cmdlineAddress: cmdline.address, memoryMap: e820Entries(memBytes), modules: [initrd] });
      const state = setupBootCpu(memory, "pvh", kernel.pvhEntry);
      expect(state.regs.rbx).toBe(BigInt(startInfo));
      expect(state.regs.rip).toBe(BigInt(kernel.pvhEntry));
      expect(initrd.address).toBeGreaterThanOrEqual(kernel.kernelEnd);
    } finally {
      memory.dispose();
    }
  });
});
