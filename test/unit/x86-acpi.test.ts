import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as aml from "../../src/arch/x86_64/acpi/aml.ts";
import { ACPI_TABLES_ADDRESS, type AcpiMachine, buildAcpiTables, writeAcpiTables } from "../../src/arch/x86_64/acpi/machine.ts";
import { MiB, MPTABLE_ADDRESS, VIRTIO_MMIO_BASE } from "../../src/arch/x86_64/layout.ts";
import { writeMpTable } from "../../src/arch/x86_64/mptable.ts";
import { GuestMemory, type GuestMemoryView } from "../../src/memory/guest-memory.ts";

const sum = (bytes: Uint8Array) => bytes.reduce((total, b) => total + b, 0) % 256;
const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
const hex = (n: number) => `0x${n.toString(16)}`;

const POWER = { sleepControlPort: 0x600, sleepStatusPort: 0x601, resetPort: 0x602, resetValue: 0x01 };
function machine(vcpus: number, devices = 2): AcpiMachine {
  return {
    vcpus,
    virtioDevices: Array.from({ length: devices }, (_, i) => ({ address: VIRTIO_MMIO_BASE + i * 0x1000, size: 0x1000, irq: 5 + i })),
    power: POWER,
  };
}

// ---------------------------------------------------------------- an independent reader, as a guest would walk the tables

interface Tables {
  rsdp: Uint8Array;
  xsdt: Uint8Array;
  fadt: Uint8Array;
  madt: Uint8Array;
  dsdt: Uint8Array;
  addresses: Record<"rsdp" | "xsdt" | "fadt" | "madt" | "dsdt", number>;
  xsdtEntries: number[];
}

function table(memory: GuestMemoryView, address: number): Uint8Array {
  return memory.read(address, memory.readU32(address + 4));
}

function walkTables(memory: GuestMemoryView, rsdpAddress: number): Tables {
  const rsdp = memory.read(rsdpAddress, 36);
  const xsdtAddress = Number(memory.readU64(rsdpAddress + 24));
  const xsdt = table(memory, xsdtAddress);
  const xsdtEntries = Array.from({ length: (xsdt.length - 36) / 8 }, (_, i) => Number(memory.readU64(xsdtAddress + 36 + 8 * i)));
  const bySignature = new Map(xsdtEntries.map((address) => [text(memory.read(address, 4)), address]));
  const fadtAddress = bySignature.get("FACP")!;
  const madtAddress = bySignature.get("APIC")!;
  const dsdtAddress = Number(memory.readU64(fadtAddress + 140));
  return {
    rsdp,
    xsdt,
    fadt: table(memory, fadtAddress),
    madt: table(memory, madtAddress),
    dsdt: table(memory, dsdtAddress),
    addresses: { rsdp: rsdpAddress, xsdt: xsdtAddress, fadt: fadtAddress, madt: madtAddress, dsdt: dsdtAddress },
    xsdtEntries,
  };
}

function loadTables(m: AcpiMachine): { memory: GuestMemory; tables: Tables; size: number } {
  const memory = GuestMemory.create([{ guestAddress: 0, size: 2 * MiB }]);
  const { rsdpAddress, size } = writeAcpiTables(memory, m);
  return { memory, tables: walkTables(memory, rsdpAddress), size };
}

/** Linux's acpi_find_root_pointer: "RSD PTR " on a 16-byte boundary in 0xE0000-0xFFFFF with a valid checksum. */
function scanForRsdp(memory: GuestMemoryView): number | undefined {
  for (let address = 0xe0000; address < 0x100000; address += 16) {
    if (text(memory.read(address, 8)) === "RSD PTR " && sum(memory.read(address, 20)) === 0) return address;
  }
  return undefined;
}

interface MadtEntry {
  type: number;
  bytes: Uint8Array;
}

function madtEntries(madt: Uint8Array): MadtEntry[] {
  const entries: MadtEntry[] = [];
  for (let at = 44; at < madt.length; ) {
    const length = madt[at + 1]!;
    if (length < 2) throw new Error(`MADT entry at +${at} has length ${length}`);
    entries.push({ type: madt[at]!, bytes: madt.subarray(at, at + length) });
    at += length;
  }
  return entries;
}

const dv = (bytes: Uint8Array) => new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);

function gas(bytes: Uint8Array, offset: number) {
  return { spaceId: bytes[offset], bitWidth: bytes[offset + 1], bitOffset: bytes[offset + 2], accessSize: bytes[offset + 3], address: dv(bytes).getBigUint64(offset + 4, true) };
}

function indexOf(haystack: Uint8Array, needle: readonly number[]): number {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

/** Device (name) { ... } objects found by their opcode, each body as its PkgLength delimits it. */
function deviceBodies(dsdt: Uint8Array): Map<string, Uint8Array> {
  const found = new Map<string, Uint8Array>();
  for (let at = 36; at + 1 < dsdt.length; at++) {
    if (dsdt[at] !== 0x5b || dsdt[at + 1] !== 0x82) continue;
    const { value, size } = decodePkgLength(dsdt.subarray(at + 2));
    const name = text(dsdt.subarray(at + 2 + size, at + 6 + size));
    found.set(name, dsdt.subarray(at + 2 + size + 4, at + 2 + value));
  }
  return found;
}

const ascii = (s: string) => [...new TextEncoder().encode(s)];
const le32 = (n: number) => [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff];

// ---------------------------------------------------------------- tables

describe("ACPI tables", () => {
  const { memory, tables, size } = loadTables(machine(4));

  test("every table has its signature, its length in the header, a zero byte sum and its revision", () => {
    const expected = [
      [tables.xsdt, "XSDT", 1],
      [tables.fadt, "FACP", 6],
      [tables.madt, "APIC", 6],
      [tables.dsdt, "DSDT", 2],
    ] as const;
    for (const [bytes, signature, revision] of expected) {
      expect(text(bytes.subarray(0, 4))).toBe(signature);
      expect(dv(bytes).getUint32(4, true)).toBe(bytes.length);
      expect(bytes[8]).toBe(revision);
      expect(sum(bytes)).toBe(0);
      expect(text(bytes.subarray(10, 16))).toBe("VOLT  ");
      expect(text(bytes.subarray(28, 32))).toBe("VOLT");
    }
  });

  test("a corrupted byte anywhere in a table breaks its checksum", () => {
    for (const bytes of [tables.xsdt, tables.fadt, tables.madt, tables.dsdt]) {
      for (const at of [0, 9, 20, bytes.length - 1]) {
        const corrupt = bytes.slice();
        corrupt[at] = (corrupt[at]! + 1) & 0xff;
        expect(sum(corrupt)).not.toBe(0);
      }
    }
  });

  test("RSDP: revision 2, 36 bytes, both checksums, pointing at the XSDT only", () => {
    const { rsdp } = tables;
    expect(tables.addresses.rsdp).toBe(ACPI_TABLES_ADDRESS);
    expect(text(rsdp.subarray(0, 8))).toBe("RSD PTR ");
    expect(text(rsdp.subarray(9, 15))).toBe("VOLT  ");
    expect(rsdp[15]).toBe(2);
    expect(dv(rsdp).getUint32(16, true)).toBe(0); // no RSDT
    expect(dv(rsdp).getUint32(20, true)).toBe(36);
    expect(sum(rsdp.subarray(0, 20))).toBe(0);
    expect(sum(rsdp)).toBe(0);
    // The first checksum guards only the ACPI 1.0 part, the extended one all of it.
    const late = rsdp.slice();
    late[30] = late[30]! ^ 0x01;
    expect(sum(late.subarray(0, 20))).toBe(0);
    expect(sum(late)).not.toBe(0);
    const early = rsdp.slice();
    early[16] = early[16]! ^ 0x01;
    expect(sum(early.subarray(0, 20))).not.toBe(0);
  });

  test("a guest scanning the BIOS area finds the RSDP", () => {
    expect(scanForRsdp(memory)).toBe(ACPI_TABLES_ADDRESS);
  });

  test("XSDT lists the FADT and the MADT; the DSDT is reached through the FADT", () => {
    expect(tables.xsdtEntries).toEqual([tables.addresses.fadt, tables.addresses.madt]);
    expect(text(tables.fadt.subarray(0, 4))).toBe("FACP");
    expect(text(tables.madt.subarray(0, 4))).toBe("APIC");
  });

  test("tables are 16-byte aligned, do not overlap, and end below 1 MiB", () => {
    const spans = (["rsdp", "xsdt", "fadt", "madt", "dsdt"] as const)
      .map((name) => ({ start: tables.addresses[name], end: tables.addresses[name] + tables[name].length }))
      .sort((a, b) => a.start - b.start);
    for (const [i, span] of spans.entries()) {
      expect(span.start % 16).toBe(0);
      if (i > 0) expect(span.start).toBeGreaterThanOrEqual(spans[i - 1]!.end);
    }
    expect(spans[0]!.start).toBe(ACPI_TABLES_ADDRESS);
    expect(spans.at(-1)!.end).toBe(ACPI_TABLES_ADDRESS + size);
    expect(ACPI_TABLES_ADDRESS + size).toBeLessThanOrEqual(0x100000);
  });

  test("buildAcpiTables gives the bytes writeAcpiTables puts in guest memory", () => {
    const built = buildAcpiTables(machine(4));
    expect(built.rsdpAddress).toBe(ACPI_TABLES_ADDRESS);
    expect(built.bytes.length).toBe(size);
    expect(memory.read(ACPI_TABLES_ADDRESS, size)).toEqual(built.bytes);
  });

  test("FADT: 276 bytes, revision 6.5, hardware reduced, X_DSDT, power registers and hypervisor id", () => {
    const { fadt } = tables;
    const view = dv(fadt);
    expect(fadt.length).toBe(276);
    expect(fadt[131]).toBe(5); // minor revision
    expect(view.getUint32(40, true)).toBe(tables.addresses.dsdt); // DSDT
    expect(view.getBigUint64(140, true)).toBe(BigInt(tables.addresses.dsdt)); // X_DSDT
    expect(view.getUint32(112, true)).toBe((1 << 20) | (1 << 10) | (1 << 5) | (1 << 4));
    // 8042 present (Linux then probes it without a PNP entry), VGA not present, MSI not supported, PCIe ASPM controls;
    // no legacy devices.
    expect(view.getUint16(109, true)).toBe(0b1_1110);
    expect(gas(fadt, 116)).toEqual({ spaceId: 1, bitWidth: 8, bitOffset: 0, accessSize: 1, address: 0x602n }); // RESET_REG
    expect(fadt[128]).toBe(0x01); // RESET_VALUE
    expect(gas(fadt, 244)).toEqual({ spaceId: 1, bitWidth: 8, bitOffset: 0, accessSize: 1, address: 0x600n }); // SLEEP_CONTROL_REG
    expect(gas(fadt, 256)).toEqual({ spaceId: 1, bitWidth: 8, bitOffset: 0, accessSize: 1, address: 0x601n }); // SLEEP_STATUS_REG
    expect([...fadt.subarray(268, 276)]).toEqual([...ascii("VOLT"), 0, 0, 0, 0]);
  });

  test("FADT: everything else is zero (no FACS, SCI, PM blocks, PM timer or GPEs)", () => {
    const set = new Set<number>();
    const mark = (from: number, length: number) => {
      for (let i = from; i < from + length; i++) set.add(i);
    };
    mark(0, 36); // header
    mark(40, 4); // DSDT
    mark(109, 2); // IAPC_BOOT_ARCH
    mark(112, 4); // flags
    mark(116, 13); // RESET_REG, RESET_VALUE
    mark(131, 1); // minor revision
    mark(140, 8); // X_DSDT
    mark(244, 24); // SLEEP_CONTROL_REG, SLEEP_STATUS_REG
    mark(268, 8); // hypervisor id
    const stray = [...tables.fadt.entries()].filter(([i, b]) => !set.has(i) && b !== 0).map(([i]) => i);
    expect(stray).toEqual([]);
  });

  for (const vcpus of [1, 4]) {
    test(`MADT for ${vcpus} vCPU(s): LAPIC address, one enabled Local APIC each, the IOAPIC, NMI on LINT1`, () => {
      const { madt } = loadTables(machine(vcpus)).tables;
      expect(madt.length).toBe(44 + 8 * vcpus + 12 + 6);
      expect(dv(madt).getUint32(36, true)).toBe(0xfee00000);
      expect(dv(madt).getUint32(40, true)).toBe(0); // no PCAT_COMPAT
      const entries = madtEntries(madt);
      expect(entries.map((e) => e.type)).toEqual([...Array<number>(vcpus).fill(0), 1, 4]);
      for (let cpu = 0; cpu < vcpus; cpu++) {
        const e = entries[cpu]!.bytes;
        expect(e.length).toBe(8);
        expect([e[2], e[3]]).toEqual([cpu, cpu]); // ACPI processor UID, APIC id
        expect(dv(e).getUint32(4, true)).toBe(1); // enabled
      }
      const ioapic = entries[vcpus]!.bytes;
      expect(ioapic.length).toBe(12);
      expect(ioapic[2]).toBe(vcpus);
      expect(dv(ioapic).getUint32(4, true)).toBe(0xfec00000);
      expect(dv(ioapic).getUint32(8, true)).toBe(0); // GSI base
      expect([...entries[vcpus + 1]!.bytes]).toEqual([4, 6, 0xff, 0, 0, 1]);
    });
  }

  test("MADT and MP table agree on the APIC ids", () => {
    const { memory, tables } = loadTables(machine(3));
    writeMpTable(memory, 3);
    const mp = MPTABLE_ADDRESS + 16 + 44;
    const cpuIds = [0, 1, 2].map((i) => memory.readU8(mp + 20 * i + 1));
    const ioapicId = memory.readU8(mp + 3 * 20 + 8 + 1);
    const entries = madtEntries(tables.madt);
    expect(entries.filter((e) => e.type === 0).map((e) => e.bytes[3])).toEqual(cpuIds);
    expect(entries.find((e) => e.type === 1)!.bytes[2]).toBe(ioapicId);
  });

  test("DSDT: \\_S5 is Package { 5, 0, 0, 0 }", () => {
    expect(indexOf(tables.dsdt, [0x08, ...ascii("_S5_"), 0x12, 0x07, 0x04, 0x0a, 0x05, 0x00, 0x00, 0x00])).toBeGreaterThan(35);
  });

  test("DSDT: each virtio device has LNRO0005, its page and its edge-triggered IRQ", () => {
    const { dsdt } = tables;
    const devices = deviceBodies(dsdt);
    expect([...devices.keys()]).toEqual(["COM1", "PS2K", "V000", "V001"]);
    for (const [i, dev] of machine(4).virtioDevices.entries()) {
      // Each device's PkgLength must enclose exactly its own objects.
      const body = devices.get(`V00${i}`)!;
      expect(indexOf(body, [0x0d, ...ascii("LNRO0005"), 0x00])).toBeGreaterThan(0);
      expect(indexOf(body, [0x86, 0x09, 0x00, 0x01, ...le32(dev.address), ...le32(dev.size)])).toBeGreaterThan(0);
      expect(indexOf(body, [0x89, 0x06, 0x00, 0x03, 0x01, ...le32(dev.irq)])).toBeGreaterThan(0);
      expect(body.at(-2)).toBe(0x79); // the resource template's End Tag closes the device
    }
  });

  test("DSDT: the i8042 is PNP0303 at ports 0x60 and 0x64 with IRQ 1 (Linux needs it to get its interrupt)", () => {
    const body = deviceBodies(tables.dsdt).get("PS2K")!;
    expect(indexOf(body, [...aml.eisaId("PNP0303")])).toBeGreaterThan(0);
    expect(indexOf(body, [0x47, 0x01, 0x60, 0x00, 0x60, 0x00, 0x00, 0x01])).toBeGreaterThan(0);
    expect(indexOf(body, [0x47, 0x01, 0x64, 0x00, 0x64, 0x00, 0x00, 0x01])).toBeGreaterThan(0);
    expect(indexOf(body, [0x22, 0x02, 0x00])).toBeGreaterThan(0);
  });

  test("DSDT without virtio devices still has \\_S5 and COM1", () => {
    const { dsdt } = loadTables(machine(1, 0)).tables;
    expect(indexOf(dsdt, ascii("_S5_"))).toBeGreaterThan(0);
    expect(indexOf(dsdt, ascii("COM1"))).toBeGreaterThan(0);
    expect(indexOf(dsdt, ascii("LNRO0005"))).toBe(-1);
  });

  test("refuses machines it cannot describe", () => {
    expect(() => buildAcpiTables(machine(0))).toThrow(/vCPU count 0/);
    expect(() => buildAcpiTables(machine(255))).toThrow(/vCPU count 255/);
    const dev = { address: VIRTIO_MMIO_BASE, size: 0x1000, irq: 5 };
    expect(() => buildAcpiTables({ ...machine(1), virtioDevices: [dev, { ...dev, address: dev.address + 0x1000 }] })).toThrow(/IRQ 5 is already in use/);
    expect(() => buildAcpiTables({ ...machine(1), virtioDevices: [{ ...dev, irq: 4 }] })).toThrow(/IRQ 4 is already in use/); // COM1's
    expect(() => buildAcpiTables({ ...machine(1), virtioDevices: [{ ...dev, irq: 24 }] })).toThrow(/IOAPIC pin/);
    expect(() => buildAcpiTables({ ...machine(1), virtioDevices: [{ ...dev, address: 0xffff_f800 }] })).toThrow(/below 4 GiB/);
    expect(() => buildAcpiTables({ ...machine(1), power: { ...POWER, resetValue: 0x100 } })).toThrow(/resetValue/);
    expect(() => buildAcpiTables({ ...machine(1), power: { ...POWER, sleepControlPort: 0x10000 } })).toThrow(/sleepControlPort/);
  });

  test("refuses guest memory that does not cover the BIOS area", () => {
    const small = GuestMemory.create([{ guestAddress: 0, size: 512 * 1024 }]);
    expect(() => writeAcpiTables(small, machine(1))).toThrow(/not guest RAM/);
  });

  test("the largest machines still fit below 1 MiB", () => {
    const devices = Array.from({ length: 19 }, (_, i) => ({ address: VIRTIO_MMIO_BASE + i * 0x1000, size: 0x1000, irq: 5 + i }));
    const { bytes } = buildAcpiTables({ vcpus: 254, virtioDevices: devices, power: POWER });
    expect(ACPI_TABLES_ADDRESS + bytes.length).toBeLessThanOrEqual(0x100000);
  });
});

// ---------------------------------------------------------------- AML encoder

/** Reads a PkgLength back: (value, bytes used). */
function decodePkgLength(bytes: Uint8Array): { value: number; size: number } {
  const lead = bytes[0]!;
  const follow = lead >> 6;
  if (follow === 0) return { value: lead & 0x3f, size: 1 };
  expect(lead & 0x30).toBe(0);
  let value = lead & 0x0f;
  for (let i = 1; i <= follow; i++) value |= bytes[i]! << (4 + 8 * (i - 1));
  return { value, size: 1 + follow };
}

describe("AML encoder", () => {
  test("PkgLength at the 1/2/3/4-byte boundaries", () => {
    expect([...aml.encodePkgLength(0)]).toEqual([0x00]);
    expect([...aml.encodePkgLength(63)]).toEqual([0x3f]);
    expect([...aml.encodePkgLength(64)]).toEqual([0x40, 0x04]);
    expect([...aml.encodePkgLength(4095)]).toEqual([0x4f, 0xff]);
    expect([...aml.encodePkgLength(4096)]).toEqual([0x80, 0x00, 0x01]);
    expect([...aml.encodePkgLength(0xf_ffff)]).toEqual([0x8f, 0xff, 0xff]);
    expect([...aml.encodePkgLength(0x10_0000)]).toEqual([0xc0, 0x00, 0x00, 0x01]);
    expect([...aml.encodePkgLength(0xfff_ffff)]).toEqual([0xcf, 0xff, 0xff, 0xff]);
    expect(() => aml.encodePkgLength(0x1000_0000)).toThrow();
    expect(() => aml.encodePkgLength(-1)).toThrow();
    for (const value of [1, 62, 63, 64, 65, 300, 4094, 4095, 4096, 4097, 0xfffff, 0x100000]) {
      expect(decodePkgLength(aml.encodePkgLength(value)).value).toBe(value);
    }
  });

  test("a package's PkgLength counts itself and is as short as possible", () => {
    const cases: [body: number, size: number][] = [
      [0, 1],
      [62, 1], // 62 + 1 = 63 fits one byte
      [63, 2], // 63 + 1 = 64 does not
      [4093, 2], // 4093 + 2 = 4095
      [4094, 3], // 4094 + 2 = 4096 needs three bytes
      [0xfffff - 3, 3],
      [0xfffff - 2, 4],
    ];
    for (const [body, size] of cases) {
      const encoded = aml.withPkgLength(new Uint8Array(body));
      const { value, size: used } = decodePkgLength(encoded);
      expect(used).toBe(size);
      expect(value).toBe(body + size);
      expect(encoded.length).toBe(value);
    }
  });

  test("integers use Zero, One and the shortest constant", () => {
    const cases: [number | bigint, number[]][] = [
      [0, [0x00]],
      [1, [0x01]],
      [2, [0x0a, 0x02]],
      [0xff, [0x0a, 0xff]],
      [0x100, [0x0b, 0x00, 0x01]],
      [0xffff, [0x0b, 0xff, 0xff]],
      [0x1_0000, [0x0c, 0x00, 0x00, 0x01, 0x00]],
      [0xffff_ffff, [0x0c, 0xff, 0xff, 0xff, 0xff]],
      [0x1_0000_0000, [0x0e, 0, 0, 0, 0, 1, 0, 0, 0]],
      [(1n << 64n) - 1n, [0x0e, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]],
    ];
    for (const [value, bytes] of cases) expect([...aml.integer(value)]).toEqual(bytes);
    expect(() => aml.integer(-1)).toThrow();
    expect(() => aml.integer(1n << 64n)).toThrow();
    expect(() => aml.integer(2 ** 60)).toThrow(/not exact/);
  });

  test("NameSegs are padded with '_' and checked", () => {
    expect(text(aml.nameSeg("_SB"))).toBe("_SB_");
    expect(text(aml.nameSeg("_S5"))).toBe("_S5_");
    expect(text(aml.nameSeg("A"))).toBe("A___");
    expect(text(aml.nameSeg("COM1"))).toBe("COM1");
    for (const bad of ["", "TOOLONG", "1ABC", "abcd", "A-B"]) expect(() => aml.nameSeg(bad)).toThrow();
  });

  test("NameStrings: root, parent prefixes, dual and multi name paths, null name", () => {
    expect([...aml.nameString("\\_SB")]).toEqual([0x5c, ...ascii("_SB_")]);
    expect([...aml.nameString("\\_SB.COM1")]).toEqual([0x5c, 0x2e, ...ascii("_SB_COM1")]);
    expect([...aml.nameString("^^FOO")]).toEqual([0x5e, 0x5e, ...ascii("FOO_")]);
    expect([...aml.nameString("A.B.C")]).toEqual([0x2f, 3, ...ascii("A___B___C___")]);
    expect([...aml.nameString("\\")]).toEqual([0x5c, 0x00]);
  });

  test("EisaId compresses the PNP id", () => {
    expect(aml.eisaIdValue("PNP0501")).toBe(0x0105d041);
    expect(aml.eisaIdValue("PNP0A03")).toBe(0x030ad041);
    expect([...aml.eisaId("PNP0501")]).toEqual([0x0c, 0x41, 0xd0, 0x05, 0x01]);
    expect(() => aml.eisaIdValue("pnp0501")).toThrow();
    expect(() => aml.eisaIdValue("PNP050")).toThrow();
  });

  test("strings, packages, names, scopes and devices", () => {
    expect([...aml.string("LNRO0005")]).toEqual([0x0d, ...ascii("LNRO0005"), 0x00]);
    expect(() => aml.string("é")).toThrow();
    expect(() => aml.string("a\0b")).toThrow();
    expect([...aml.packageOf([aml.integer(5), aml.integer(0)])]).toEqual([0x12, 0x05, 0x02, 0x0a, 0x05, 0x00]);
    expect([...aml.name("_UID", aml.integer(0))]).toEqual([0x08, ...ascii("_UID"), 0x00]);
    expect([...aml.scope("\\_SB", [])]).toEqual([0x10, 0x06, 0x5c, ...ascii("_SB_")]);
    expect([...aml.device("COM1", [aml.name("_UID", aml.integer(1))])]).toEqual([0x5b, 0x82, 0x0b, ...ascii("COM1"), 0x08, ...ascii("_UID"), 0x01]);
  });

  test("resource descriptors and the ResourceTemplate buffer", () => {
    expect([...aml.memory32Fixed(true, 0xc000_0000, 0x1000)]).toEqual([0x86, 0x09, 0x00, 0x01, 0, 0, 0, 0xc0, 0, 0x10, 0, 0]);
    expect([...aml.extendedInterrupt({ consumer: true, edge: true, activeLow: false, shared: false }, 5)]).toEqual([0x89, 0x06, 0x00, 0x03, 0x01, 5, 0, 0, 0]);
    expect([...aml.extendedInterrupt({ consumer: false, edge: false, activeLow: true, shared: true }, 5)][3]).toBe(0x0c);
    expect([...aml.ioPort(0x3f8, 0x3f8, 0, 8)]).toEqual([0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x00, 0x08]);
    expect([...aml.irqNoFlags(4)]).toEqual([0x22, 0x10, 0x00]);
    expect([...aml.resourceTemplate([aml.irqNoFlags(4)])]).toEqual([0x11, 0x08, 0x0a, 0x05, 0x22, 0x10, 0x00, 0x79, 0x00]);
  });
});

// ---------------------------------------------------------------- ACPICA's own tools

const iasl = Bun.which("iasl");
const acpiexec = Bun.which("acpiexec");
if (!iasl) {
  console.warn(
    "\n*** x86-acpi.test.ts: `iasl` is not on PATH, so the ACPICA disassembly checks are SKIPPED. ***\n" +
      "*** Install acpica-tools (apt-get install acpica-tools) to verify the tables against ACPICA. ***\n",
  );
}

const workDir = mkdtempSync(join(tmpdir(), "volt-acpi-"));
afterAll(() => rmSync(workDir, { recursive: true, force: true }));

function run(argv: string[], cwd: string): { exitCode: number; output: string } {
  const result = Bun.spawnSync(argv, { cwd, stdin: "ignore", stdout: "pipe", stderr: "pipe", timeout: 30_000 });
  return { exitCode: result.exitCode ?? -1, output: result.stdout.toString() + result.stderr.toString() };
}

let fileCounter = 0;
/** Writes `bytes` to a fresh directory as <name>.dat and disassembles it; returns iasl's messages and the .dsl. */
function disassemble(name: string, bytes: Uint8Array): { exitCode: number; output: string; dsl: string; dir: string } {
  const dir = join(workDir, `${name}-${fileCounter++}`);
  mkdirSync(dir);
  writeFileSync(join(dir, `${name}.dat`), bytes);
  const { exitCode, output } = run([iasl!, "-d", `${name}.dat`], dir);
  let dsl = "";
  try {
    dsl = readFileSync(join(dir, `${name}.dsl`), "utf8");
  } catch {}
  return { exitCode, output, dsl, dir };
}

const PROBLEMS = /error|warning|incorrect checksum/i;

describe.skipIf(!iasl)("ACPI tables through iasl", () => {
  const { tables } = loadTables(machine(4, 3));

  test("the DSDT disassembles to \\_S5, the COM1 UART and the virtio-mmio devices", () => {
    const { exitCode, output, dsl } = disassemble("dsdt", tables.dsdt);
    expect(exitCode).toBe(0);
    expect(output + dsl).not.toMatch(PROBLEMS);
    expect(dsl).toContain("_S5_");
    expect(dsl).toMatch(/Name \(_S5, Package \(0x04\)[^{]*\{\s*0x05,\s*Zero,\s*Zero,\s*Zero\s*\}/);
    expect(dsl).toContain('EisaId ("PNP0501")');
    expect(dsl).toMatch(/IO \(Decode16,\s*0x03F8,[^)]*0x08,/);
    expect(dsl).toMatch(/IRQNoFlags \(\)\s*\{4\}/);
    expect(dsl).toContain('EisaId ("PNP0303")');
    expect(dsl).toMatch(/IO \(Decode16,\s*0x0060,[^)]*0x01,/);
    expect(dsl).toMatch(/IO \(Decode16,\s*0x0064,[^)]*0x01,/);
    expect(dsl).toMatch(/IRQNoFlags \(\)\s*\{1\}/);
    for (const [i, dev] of machine(4, 3).virtioDevices.entries()) {
      expect(dsl).toContain(`Device (V00${i})`);
      const hexAddress = `0x${dev.address.toString(16).toUpperCase().padStart(8, "0")}`;
      expect(dsl).toMatch(new RegExp(`Memory32Fixed \\(ReadWrite,\\s*${hexAddress},[^\\n]*\\n\\s*0x00001000,`));
      expect(dsl).toMatch(new RegExp(`Interrupt \\(ResourceConsumer, Edge, ActiveHigh, Exclusive[^{]*\\{\\s*0x0000000${dev.irq},`));
    }
    expect(dsl.match(/"LNRO0005"/g)?.length).toBe(3);
  });

  test("the FADT disassembles as hardware reduced with the power registers", () => {
    const { exitCode, output, dsl } = disassemble("facp", tables.fadt);
    expect(exitCode).toBe(0);
    expect(output + dsl).not.toMatch(PROBLEMS);
    expect(dsl).toMatch(/Hardware Reduced \(V5\) : 1/);
    expect(dsl).toMatch(/Reset Register Supported \(V2\) : 1/);
    expect(dsl).toMatch(/8042 Present on ports 60\/64 \(V2\) : 1/);
    expect(dsl).toMatch(/FADT Minor Revision : 05/);
    expect(dsl).toMatch(/Sleep Control Register : \[Generic Address Structure\][\s\S]*?Space ID : 01 \[SystemIO\][\s\S]*?Address : 0000000000000600/);
    expect(dsl).toMatch(/Sleep Status Register : \[Generic Address Structure\][\s\S]*?Space ID : 01 \[SystemIO\][\s\S]*?Address : 0000000000000601/);
    expect(dsl).toMatch(/Reset Register : \[Generic Address Structure\][\s\S]*?Address : 0000000000000602/);
    expect(dsl).toMatch(/Value to cause reset : 01/);
    expect(dsl).toMatch(new RegExp(`DSDT Address : 0+${tables.addresses.dsdt.toString(16).toUpperCase()}`));
  });

  test("the MADT disassembles to the Local APICs, the I/O APIC and the NMI entry", () => {
    const { exitCode, output, dsl } = disassemble("apic", tables.madt);
    expect(exitCode).toBe(0);
    expect(output + dsl).not.toMatch(PROBLEMS);
    expect(dsl).toMatch(/Local Apic Address : FEE00000/);
    expect(dsl.match(/Subtable Type : 00 \[Processor Local APIC\]/g)?.length).toBe(4);
    for (let cpu = 0; cpu < 4; cpu++) expect(dsl).toContain(`Local Apic ID : 0${cpu}`);
    expect(dsl.match(/Processor Enabled : 1/g)?.length).toBe(4);
    expect(dsl).toMatch(/Subtable Type : 01 \[I\/O APIC\][\s\S]*?I\/O Apic ID : 04[\s\S]*?Address : FEC00000[\s\S]*?Interrupt : 00000000/);
    expect(dsl).toMatch(/Subtable Type : 04 \[Local APIC NMI\][\s\S]*?Processor ID : FF[\s\S]*?Interrupt Input LINT : 01/);
  });

  test("the XSDT disassembles to the FADT and MADT addresses", () => {
    const { exitCode, output, dsl } = disassemble("xsdt", tables.xsdt);
    expect(exitCode).toBe(0);
    expect(output + dsl).not.toMatch(PROBLEMS);
    expect(dsl).toContain(`ACPI Table Address   0 : ${tables.addresses.fadt.toString(16).toUpperCase().padStart(16, "0")}`);
    expect(dsl).toContain(`ACPI Table Address   1 : ${tables.addresses.madt.toString(16).toUpperCase().padStart(16, "0")}`);
  });

  test("iasl recompiles each disassembly to the same bytes (apart from checksum and compiler id)", () => {
    for (const [name, bytes] of [
      ["dsdt", tables.dsdt],
      ["facp", tables.fadt],
      ["apic", tables.madt],
      ["xsdt", tables.xsdt],
    ] as const) {
      const { dir } = disassemble(name, bytes);
      // -oa: no optimizations, so iasl encodes exactly what the disassembly says.
      const { exitCode, output } = run([iasl!, "-oa", "-p", "recompiled", `${name}.dsl`], dir);
      expect(exitCode, `${name}: ${output}`).toBe(0);
      const recompiled = new Uint8Array(readFileSync(join(dir, "recompiled.aml")));
      expect(recompiled.length).toBe(bytes.length);
      const differs = [...bytes.entries()].filter(([i, b]) => recompiled[i] !== b && i !== 9 && !(i >= 28 && i < 36)).map(([i]) => hex(i));
      expect(differs, name).toEqual([]);
    }
  });

  test("a corrupted checksum shows up in iasl's output (so the checks above can fail)", () => {
    const corrupt = tables.madt.slice();
    corrupt[9] = corrupt[9]! ^ 0x01;
    const { output, dsl } = disassemble("apic", corrupt);
    expect(output + dsl).toMatch(/Incorrect checksum/);
  });
});

describe.skipIf(!iasl || !acpiexec)("ACPI tables in ACPICA's interpreter (acpiexec)", () => {
  const { tables } = loadTables(machine(2, 1));

  function execute(commands: string, fadt = tables.fadt): string {
    const dir = join(workDir, `exec-${fileCounter++}`);
    mkdirSync(dir);
    writeFileSync(join(dir, "facp.dat"), fadt);
    writeFileSync(join(dir, "dsdt.dat"), tables.dsdt);
    writeFileSync(join(dir, "apic.dat"), tables.madt);
    const { exitCode, output } = run([acpiexec!, "-b", commands, "facp.dat", "dsdt.dat", "apic.dat"], dir);
    expect(exitCode, output).toBe(0);
    return output;
  }

  test("loads the tables, evaluates the devices and enters S5 through the sleep control register", () => {
    const output = execute("evaluate \\_SB.V000._HID; evaluate \\_SB.V000._CRS; evaluate \\_SB.COM1._HID; sleep 5");
    expect(output).not.toMatch(PROBLEMS);
    expect(output).toContain('[String] Length 08 = "LNRO0005"');
    expect(output).toMatch(/86 09 00 01 00 00 00 C0 00 10 00 00 89 06 00 03/);
    expect(output).toContain("[Integer] = 000000000105D041");
    expect(output).toContain("Sleep-A: 05");
    // ACPICA took the hardware-reduced path, which needs both sleep registers.
    expect(output).toContain("HwExtendedSleep");
  });

  test("without a sleep control register, S5 fails (so the check above can fail)", () => {
    const fadt = tables.fadt.slice();
    fadt.fill(0, 244, 256);
    fadt[9] = 0;
    fadt[9] = (256 - sum(fadt)) % 256;
    const output = execute("sleep 5", fadt);
    expect(output).toContain("AE_NOT_EXIST");
  });
});
