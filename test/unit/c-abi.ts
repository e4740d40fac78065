/**
 * Compares struct layouts and constants declared in TypeScript with what a C
 * compiler says for the same names, so an ABI mistake fails a unit test rather
 * than corrupting a guest. Used by kvm-abi.test.ts (<linux/kvm.h>) and the x86
 * boot ABI tests (<asm/bootparam.h>, and structs declared in the test itself).
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SCALAR_SIZE, type StructLayout } from "../../src/kvm/struct.ts";

/** Values keyed by the C expression that must produce them. */
export type Expectations = Map<string, number>;

export function isLayout(value: unknown): value is StructLayout {
  return typeof value === "object" && value !== null && "cType" in value && "fields" in value;
}

/** Every struct layout among a module's exports. */
export function layoutsOf(module: Record<string, unknown>): StructLayout[] {
  return Object.values(module).filter(isLayout);
}

/** What the TypeScript side claims: every struct size, member offset and member size, plus constants. */
export function tsExpectations(layouts: readonly StructLayout[], constants: Record<string, number> = {}): Expectations {
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

export interface CProbeSource {
  /** Header names for #include <...>. */
  readonly includes: readonly string[];
  /** C declarations placed after the includes (structs the system headers lack). */
  readonly declarations?: string;
}

/** Compiles a C program printing each expression's value and returns what C says. */
export function cValues(source: CProbeSource, expressions: readonly string[]): Expectations {
  const dir = mkdtempSync(join(tmpdir(), "volt-abi-"));
  try {
    const lines = expressions.map(
      (expr) => `  printf("%s\\t%llu\\n", ${JSON.stringify(expr)}, (unsigned long long)(${expr}));`,
    );
    const program = [
      ...["stddef.h", "stdio.h", ...source.includes].map((header) => `#include <${header}>`),
      source.declarations ?? "",
      "int main(void) {",
      ...lines,
      "  return 0;",
      "}",
    ].join("\n");
    writeFileSync(join(dir, "abi.c"), program);
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

/** One line per disagreement, naming the C expression and both values. */
export function mismatches(expected: Expectations, actual: Expectations): string[] {
  const wrong: string[] = [];
  for (const [expr, value] of expected) {
    const cValue = actual.get(expr);
    if (cValue !== value) wrong.push(`${expr}: TypeScript says ${value}, C says ${cValue}`);
  }
  return wrong;
}
