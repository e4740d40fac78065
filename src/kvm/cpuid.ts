/** CPUID tables in KVM's variable-length kvm_cpuid2 format. */
import { KVM_CPUID2_ENTRIES_OFFSET, kvm_cpuid2, kvm_cpuid_entry2 } from "./abi.ts";
import { StructView } from "./struct.ts";

export interface CpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

const REGISTERS = ["function", "index", "flags", "eax", "ebx", "ecx", "edx"] as const;

export function readCpuidEntries(table: Uint8Array): CpuidEntry[] {
  const count = new StructView(kvm_cpuid2, table).get("nent");
  const entries: CpuidEntry[] = [];
  for (let i = 0; i < count; i++) {
    const offset = KVM_CPUID2_ENTRIES_OFFSET + i * kvm_cpuid_entry2.size;
    const view = new StructView(kvm_cpuid_entry2, table.subarray(offset, offset + kvm_cpuid_entry2.size));
    const entry = {} as CpuidEntry;
    for (const name of REGISTERS) entry[name] = view.get(name);
    entries.push(entry);
  }
  return entries;
}

export function writeCpuidEntries(entries: readonly CpuidEntry[]): Uint8Array {
  const table = new Uint8Array(KVM_CPUID2_ENTRIES_OFFSET + entries.length * kvm_cpuid_entry2.size);
  new StructView(kvm_cpuid2, table).set("nent", entries.length);
  entries.forEach((entry, i) => {
    const offset = KVM_CPUID2_ENTRIES_OFFSET + i * kvm_cpuid_entry2.size;
    const view = new StructView(kvm_cpuid_entry2, table.subarray(offset, offset + kvm_cpuid_entry2.size));
    for (const name of REGISTERS) view.set(name, entry[name] >>> 0);
  });
  return table;
}
