/**
 * Every size, offset, ioctl number and constant the TypeScript side uses is
 * compiled against the kernel's own headers and compared, so a wrong offset in
 * src/kvm/abi.ts fails here rather than corrupting a guest.
 */
import { describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as abi from "../../src/kvm/abi.ts";
import { ERRNO } from "../../src/ffi/errno.ts";
import * as sys from "../../src/ffi/syscalls.ts";
import { SCALAR_SIZE, type StructLayout } from "../../src/kvm/struct.ts";

type Expectations = Map<string, number>;

function isLayout(value: unknown): value is StructLayout {
  return typeof value === "object" && value !== null && "cType" in value && "fields" in value;
}

/** What the TypeScript side claims, keyed by the C expression that must produce it. */
function tsExpectations(layouts: StructLayout[], constants: Record<string, number>): Expectations {
  const expected: Expectations = new Map();
  for (const layout of layouts) {
    expected.set(`sizeof(${layout.cType})`, layout.size);
    for (const [member, spec] of Object.entries(layout.fields)) {
      expected.set(`offsetof(${layout.cType}, ${member})`, spec.offset);
      expected.set(`sizeof(((${layout.cType} *)0)->${member})`, SCALAR_SIZE[spec.type] * (spec.count ?? 1));
    }
  }
  for (const [name, value] of Object.entries(constants)) expected.set(name, value);
  return expected;
}

/** Compiles a C program printing each expression's value and returns what C says. */
function cValues(expressions: string[]): Expectations {
  const dir = mkdtempSync(join(tmpdir(), "volt-abi-"));
  try {
    const lines = expressions.map(
      (expr) => `  printf("%s\\t%llu\\n", ${JSON.stringify(expr)}, (unsigned long long)(${expr}));`,
    );
    const source = [
      "#include <errno.h>",
      "#include <stddef.h>",
      "#include <stdio.h>",
      "#include <sys/mman.h>",
      "#include <sys/syscall.h>",
      "#include <fcntl.h>",
      "#include <linux/memfd.h>",
      "#include <linux/kvm.h>",
      "int main(void) {",
      ...lines,
      "  return 0;",
      "}",
    ].join("\n");
    writeFileSync(join(dir, "abi.c"), source);
    const cc = Bun.spawnSync(["gcc", "-Wall", "-Werror", "-o", join(dir, "abi"), join(dir, "abi.c")]);
    if (cc.exitCode !== 0) throw new Error(`the ABI probe did not compile:\n${cc.stderr.toString()}`);
    const run = Bun.spawnSync([join(dir, "abi")]);
    const actual: Expectations = new Map();
    for (const line of run.stdout.toString().trim().split("\n")) {
      const [expr, value] = line.split("\t");
      actual.set(expr!, Number(value));
    }
    return actual;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function mismatches(expected: Expectations, actual: Expectations): string[] {
  const wrong: string[] = [];
  for (const [expr, value] of expected) {
    const cValue = actual.get(expr);
    if (cValue !== value) wrong.push(`${expr}: TypeScript says ${value}, C says ${cValue}`);
  }
  return wrong;
}

const layouts: StructLayout[] = (Object.values(abi) as unknown[]).filter(isLayout);

const constants: Record<string, number> = {
  KVM_API_VERSION: abi.KVM_API_VERSION,
  KVM_EXIT_IO_IN: abi.KVM_EXIT_IO_IN,
  KVM_EXIT_IO_OUT: abi.KVM_EXIT_IO_OUT,
  ...abi.KVM_IOCTL,
  ...abi.KVM_CAP,
  ...abi.KVM_EXIT,
  ...ERRNO,
  ...Object.fromEntries(Object.entries(sys.SYSCALL_NUMBERS).map(([name, nr]) => [`SYS_${name}`, nr])),
  PROT_READ: sys.PROT_READ,
  PROT_WRITE: sys.PROT_WRITE,
  MAP_SHARED: sys.MAP_SHARED,
  MAP_PRIVATE: sys.MAP_PRIVATE,
  MAP_FIXED: sys.MAP_FIXED,
  MAP_ANONYMOUS: sys.MAP_ANONYMOUS,
  MFD_CLOEXEC: sys.MFD_CLOEXEC,
  O_RDWR: sys.O_RDWR,
  O_CLOEXEC: sys.O_CLOEXEC,
};

describe("KVM ABI matches <linux/kvm.h>", () => {
  const expected = tsExpectations(layouts, constants);
  const actual = cValues([...expected.keys()]);

  test("covers every struct layout the TypeScript side defines", () => {
    expect(layouts.length).toBeGreaterThanOrEqual(15);
    expect(expected.size).toBeGreaterThan(200);
  });

  test("every size, offset, ioctl number and constant agrees with C", () => {
    expect(mismatches(expected, actual)).toEqual([]);
  });

  test("a wrong offset is caught (the check can fail)", () => {
    const broken: StructLayout = {
      ...abi.kvm_regs,
      fields: { ...abi.kvm_regs.fields, rip: { offset: abi.kvm_regs.fields.rip.offset + 8, type: "u64" } },
    };
    const brokenExpected = tsExpectations([broken], {});
    expect(mismatches(brokenExpected, actual)).toEqual([
      "offsetof(struct kvm_regs, rip): TypeScript says 136, C says 128",
    ]);
  });
});
