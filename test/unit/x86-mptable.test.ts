import { afterAll, describe, expect, test } from "bun:test";
import { MiB, MPTABLE_ADDRESS } from "../../src/arch/x86_64/layout.ts";
import { MAX_MP_VCPUS, mpTableSize, writeMpTable } from "../../src/arch/x86_64/mptable.ts";
import { GuestMemory, type GuestMemoryView } from "../../src/memory/guest-memory.ts";

const sum = (bytes: Uint8Array) => bytes.reduce((total, b) => total + b, 0) % 256;
const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);

/** An independent reader of MP spec 1.4 tables, as a guest kernel would parse them. */
function parseMpTable(memory: GuestMemoryView, floatingAddress: number) {
  const floating = memory.read(floatingAddress, 16);
  const table = memory.readU32(floatingAddress + 4);
  const length = memory.readU16(table + 4);
  const header = memory.read(table, 44);
  const body = memory.read(table, length);
  const view = new DataView(body.buffer);
  const entries: Record<string, unknown>[] = [];
  let at = 44;
  while (at < length) {
    const type = view.getUint8(at);
    if (type === 0) {
      entries.push({ type: "cpu", apicId: view.getUint8(at + 1), flags: view.getUint8(at + 3), features: view.getUint32(at + 8, true) });
      at += 20;
    } else if (type === 1) {
      entries.push({ type: "bus", id: view.getUint8(at + 1), name: text(body.subarray(at + 2, at + 8)) });
      at += 8;
    } else if (type === 2) {
      entries.push({ type: "ioapic", id: view.getUint8(at + 1), flags: view.getUint8(at + 3), address: view.getUint32(at + 4, true) });
      at += 8;
    } else if (type === 3 || type === 4) {
      entries.push({
        type: type === 3 ? "intsrc" : "lintsrc",
        irqType: view.getUint8(at + 1),
        flags: view.getUint16(at + 2, true),
        bus: view.getUint8(at + 4),
        busIrq: view.getUint8(at + 5),
        destApic: view.getUint8(at + 6),
        destPin: view.getUint8(at + 7),
      });
      at += 8;
    } else {
      throw new Error(`unknown MP entry type ${type} at +${at}`);
    }
  }
  return {
    floating: { signature: text(floating.subarray(0, 4)), checksum: sum(floating), length: floating[8], spec: floating[9], table },
    header: {
      signature: text(header.subarray(0, 4)),
      checksum: sum(body),
      spec: header[6],
      count: view.getUint16(34, true),
      lapic: view.getUint32(36, true),
      oem: text(header.subarray(8, 16)),
    },
    entries,
  };
}

describe("MP table", () => {
  const memory = GuestMemory.create([{ guestAddress: 0, size: 2 * MiB }]);
  afterAll(() => memory.dispose());

  test("describes CPUs, the ISA bus, the IOAPIC and the interrupt routing, with valid checksums", () => {
    const written = writeMpTable(memory, 4);
    expect(written).toEqual({ address: MPTABLE_ADDRESS, size: mpTableSize(4) });
    const mp = parseMpTable(memory, MPTABLE_ADDRESS);
    expect(mp.floating).toEqual({ signature: "_MP_", checksum: 0, length: 1, spec: 4, table: MPTABLE_ADDRESS + 16 });
    expect(mp.header).toEqual({ signature: "PCMP", checksum: 0, spec: 4, count: mp.entries.length, lapic: 0xfee00000, oem: "VOLT    " });

    const cpus = mp.entries.filter((e) => e.type === "cpu");
    expect(cpus.map((c) => [c.apicId, c.flags])).toEqual([[0, 3], [1, 1], [2, 1], [3, 1]]); // BSP flag only on 0
    expect(mp.entries.filter((e) => e.type === "bus")).toEqual([{ type: "bus", id: 0, name: "ISA   " }]);
    expect(mp.entries.filter((e) => e.type === "ioapic")).toEqual([{ type: "ioapic", id: 4, flags: 1, address: 0xfec00000 }]);
    const intsrc = mp.entries.filter((e) => e.type === "intsrc");
    expect(intsrc.map((e) => [e.busIrq, e.destApic, e.destPin])).toEqual(Array.from({ length: 16 }, (_, irq) => [irq, 4, irq]));
    expect(intsrc.every((e) => e.irqType === 0 && e.bus === 0 && e.flags === 0)).toBe(true);
    expect(mp.entries.filter((e) => e.type === "lintsrc").map((e) => [e.irqType, e.destApic, e.destPin])).toEqual([
      [3, 0, 0], // ExtINT on LINT0
      [1, 0xff, 1], // NMI on LINT1 of every CPU
    ]);
  });

  test("a single vCPU is the BSP and the IOAPIC gets id 1", () => {
    writeMpTable(memory, 1);
    const mp = parseMpTable(memory, MPTABLE_ADDRESS);
    expect(mp.entries.filter((e) => e.type === "cpu")).toEqual([{ type: "cpu", apicId: 0, flags: 3, features: 0x201 }]);
    expect(mp.entries.find((e) => e.type === "ioapic")?.id).toBe(1);
    expect(mp.header.checksum).toBe(0);
  });

  test("the largest table (255 vCPUs) still has valid checksums and ends below 1 MiB", () => {
    const { size } = writeMpTable(memory, MAX_MP_VCPUS);
    expect(MPTABLE_ADDRESS + size).toBeLessThanOrEqual(0x100000);
    const mp = parseMpTable(memory, MPTABLE_ADDRESS);
    expect([mp.floating.checksum, mp.header.checksum]).toEqual([0, 0]);
    expect(mp.entries.filter((e) => e.type === "cpu").length).toBe(255);
  });

  test("rejects vCPU counts outside 1..255", () => {
    for (const count of [0, 256, 1.5]) expect(() => writeMpTable(memory, count)).toThrow(/vCPU count .* must be 1\.\.255/);
  });
});
