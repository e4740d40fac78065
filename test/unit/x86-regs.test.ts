import { afterAll, describe, expect, test } from "bun:test";
import { kvm_regs, kvm_sregs } from "../../src/kvm/abi.ts";
import { StructView } from "../../src/kvm/struct.ts";
import * as layout from "../../src/arch/x86_64/layout.ts";
import { bootGdt, gdtEntry, linux64BootState, pvhBootState, setupBootCpu, type VcpuBootState } from "../../src/arch/x86_64/regs.ts";
import { GuestMemory } from "../../src/memory/guest-memory.ts";

/** What the vCPU code will do: copy each value into the kvm_regs / kvm_sregs views. */
function apply(state: VcpuBootState) {
  const regs = new StructView(kvm_regs);
  const sregs = new StructView(kvm_sregs);
  for (const [name, value] of Object.entries(state.regs)) regs.set(name as keyof typeof kvm_regs.fields, value as bigint);
  for (const [name, value] of Object.entries(state.sregs)) sregs.set(name as keyof typeof kvm_sregs.fields, value as never);
  return { regs, sregs };
}

describe("x86-64 boot vCPU state", () => {
  test("GDT descriptors match the well-known encodings", () => {
    expect(gdtEntry(0xa09b, 0, 0xfffff)).toBe(0x00af9b000000ffffn);
    expect(gdtEntry(0xc093, 0, 0xfffff)).toBe(0x00cf93000000ffffn);
    expect(gdtEntry(0xc09b, 0, 0xfffff)).toBe(0x00cf9b000000ffffn);
    expect(gdtEntry(0x808b, 0, 0xfffff)).toBe(0x008f8b000000ffffn);
    expect(gdtEntry(0x0093, 0x12345678, 0xabcde)).toBe(0x120a93345678bcden);
  });

  test("the 64-bit Linux entry runs in long mode with flat segments", () => {
    const { regs, sregs } = apply(linux64BootState(0x100200));
    expect(regs.get("rip")).toBe(0x100200n);
    expect(regs.get("rsi")).toBe(BigInt(layout.ZERO_PAGE_ADDRESS));
    expect(regs.get("rflags")).toBe(2n);
    expect(sregs.get("cr0")).toBe(0x80000011n);
    expect(sregs.get("cr3")).toBe(BigInt(layout.PML4_ADDRESS));
    expect(sregs.get("cr4")).toBe(0x20n);
    expect(sregs.get("efer")).toBe(0x500n);
    expect([sregs.get("cs.selector"), sregs.get("cs.l"), sregs.get("cs.db"), sregs.get("cs.type"), sregs.get("cs.s")]).toEqual([8, 1, 0, 0xb, 1]);
    expect([sregs.get("cs.present"), sregs.get("cs.g"), sregs.get("cs.limit"), sregs.get("cs.base")]).toEqual([1, 1, 0xffffffff, 0n]);
    for (const seg of ["ds", "es", "fs", "gs", "ss"] as const) {
      expect([sregs.get(`${seg}.selector`), sregs.get(`${seg}.type`), sregs.get(`${seg}.db`), sregs.get(`${seg}.l`)]).toEqual([0x10, 3, 1, 0]);
    }
    expect([sregs.get("tr.selector"), sregs.get("tr.type"), sregs.get("tr.s")]).toEqual([0x18, 0xb, 0]);
    expect([sregs.get("gdt.base"), sregs.get("gdt.limit")]).toEqual([BigInt(layout.BOOT_GDT_ADDRESS), 31]);
    expect([sregs.get("idt.base"), sregs.get("idt.limit")]).toEqual([BigInt(layout.BOOT_IDT_ADDRESS), 7]);
  });

  test("the PVH entry runs in 32-bit protected mode without paging", () => {
    const { regs, sregs } = apply(pvhBootState(0x1000400));
    expect(regs.get("rip")).toBe(0x1000400n);
    expect(regs.get("rbx")).toBe(BigInt(layout.PVH_INFO_ADDRESS));
    expect(sregs.get("cr0") & 0x80000001n).toBe(1n);
    expect([sregs.get("cr3"), sregs.get("cr4"), sregs.get("efer")]).toEqual([0n, 0n, 0n]);
    expect([sregs.get("cs.selector"), sregs.get("cs.db"), sregs.get("cs.l"), sregs.get("cs.limit"), sregs.get("cs.type")]).toEqual([8, 1, 0, 0xffffffff, 0xb]);
    expect([sregs.get("ss.selector"), sregs.get("ss.db"), sregs.get("ss.limit"), sregs.get("ss.type")]).toEqual([0x10, 1, 0xffffffff, 3]);
    expect([sregs.get("tr.limit"), sregs.get("tr.g"), sregs.get("tr.type")]).toEqual([0x67, 0, 0xb]);
  });
});

describe("setupBootCpu", () => {
  const memory = GuestMemory.create([{ guestAddress: 0, size: 2 * layout.MiB }]);
  afterAll(() => memory.dispose());

  test("linux64: GDT, IDT and an identity map of the first 1 GiB in 2 MiB pages", () => {
    memory.slice(layout.PML4_ADDRESS, 0x3000).fill(0xff);
    setupBootCpu(memory, "linux64", 0x100200);
    const gdt = bootGdt("linux64");
    gdt.forEach((descriptor, i) => expect(memory.readU64(layout.BOOT_GDT_ADDRESS + i * 8)).toBe(descriptor));
    expect(memory.readU64(layout.BOOT_IDT_ADDRESS)).toBe(0n);
    expect(memory.readU64(layout.PML4_ADDRESS)).toBe(BigInt(layout.PDPTE_ADDRESS) | 3n);
    expect(memory.readU64(layout.PML4_ADDRESS + 8)).toBe(0n);
    expect(memory.readU64(layout.PDPTE_ADDRESS)).toBe(BigInt(layout.PDE_ADDRESS) | 3n);
    expect(memory.readU64(layout.PDPTE_ADDRESS + 8)).toBe(0n);

    // Walk the tables as the MMU would for a few addresses: each maps to itself.
    const translate = (virtual: bigint): bigint => {
      const pml4e = memory.readU64(layout.PML4_ADDRESS + Number((virtual >> 39n) & 511n) * 8);
      const pdpte = memory.readU64(Number(pml4e & ~0xfffn) + Number((virtual >> 30n) & 511n) * 8);
      const pde = memory.readU64(Number(pdpte & ~0xfffn) + Number((virtual >> 21n) & 511n) * 8);
      if ((pde & 0x81n) !== 0x81n) throw new Error(`0x${virtual.toString(16)} is not mapped by a present 2 MiB page`);
      return (pde & ~0x1fffffn & 0xffffffffffn) | (virtual & 0x1fffffn);
    };
    for (const address of [0n, 0x7000n, 0x100200n, 0x1000000n, 0x3fffffffn]) expect(translate(address)).toBe(address);
  });

  test("pvh: a 32-bit GDT and no page tables", () => {
    memory.slice(layout.PML4_ADDRESS, 8).fill(0xab);
    const state = setupBootCpu(memory, "pvh", 0x1000400);
    expect(memory.readU64(layout.BOOT_GDT_ADDRESS + 8)).toBe(0x00cf9b000000ffffn);
    expect(memory.readU8(layout.PML4_ADDRESS)).toBe(0xab);
    expect(state.regs.rip).toBe(0x1000400n);
  });
});
