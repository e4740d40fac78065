/**
 * The classic-BPF assembler and the seccomp policy compiler (src/sandbox/bpf.ts),
 * evaluated with a BPF interpreter (fixtures/sandbox/bpf-interpreter.ts), so
 * every rule, including 64-bit argument comparisons, the arch check and the
 * x32 check, is tested without installing a filter.
 */
import { describe, expect, test } from "bun:test";
import { AUDIT_ARCH, SECCOMP_RET } from "../../src/ffi/sandbox-syscalls.ts";
import {
  ACTION,
  BpfAssembler,
  BpfAssemblyError,
  OP,
  actionValue,
  compileFilter,
  decodeProgram,
  describeReturn,
  disassemble,
  encodeProgram,
  type ArgCondition,
  type FilterPolicy,
  type Instruction,
} from "../../src/sandbox/bpf.ts";
import { runFilter } from "./fixtures/sandbox/bpf-interpreter.ts";

const ALLOW = SECCOMP_RET.SECCOMP_RET_ALLOW;
const KILL = SECCOMP_RET.SECCOMP_RET_KILL_PROCESS;

/** A tiny deterministic PRNG (xorshift32), so failures reproduce. */
function rng(seed: number) {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state;
  };
}

describe("assembler", () => {
  test("resolves forward labels into jt/jf offsets and ends with ret", () => {
    const asm = new BpfAssembler();
    asm.ldAbs(0).jeq(7, "yes", "no").label("no").ret(1).label("yes").ret(2);
    const program = asm.assemble();
    expect(program).toEqual([
      { code: OP.LD_W_ABS, jt: 0, jf: 0, k: 0 },
      { code: OP.JEQ_K, jt: 1, jf: 0, k: 7 },
      { code: OP.RET_K, jt: 0, jf: 0, k: 1 },
      { code: OP.RET_K, jt: 0, jf: 0, k: 2 },
    ]);
    expect(runFilter(program, { nr: 7 }).value).toBe(2);
    expect(runFilter(program, { nr: 8 }).value).toBe(1);
  });

  test("refuses undefined labels, backward jumps, duplicate labels, a missing final ret and bad loads", () => {
    expect(() => new BpfAssembler().ja("nowhere").ret(0).assemble()).toThrow(BpfAssemblyError);
    expect(() => new BpfAssembler().label("top").ldAbs(0).ja("top").ret(0).assemble()).toThrow(/backwards/);
    expect(() => new BpfAssembler().label("a").label("a")).toThrow(/twice/);
    expect(() => new BpfAssembler().ldAbs(0).assemble()).toThrow(/end with ret/);
    expect(() => new BpfAssembler().ldAbs(2)).toThrow(/offset 2/);
    expect(() => new BpfAssembler().ldAbs(64)).toThrow(/offset 64/);
    expect(() => new BpfAssembler().ret(2 ** 32)).toThrow(/32-bit/);
  });

  test("a conditional jump further than 255 instructions goes through a ja trampoline", () => {
    for (const [farTrue, farFalse] of [
      [true, false],
      [false, true],
      [true, true],
    ]) {
      const asm = new BpfAssembler();
      asm.ldAbs(0).jeq(5, farTrue ? "farYes" : "nearYes", farFalse ? "farNo" : "nearNo");
      asm.label("nearYes").ret(11);
      asm.label("nearNo").ret(12);
      for (let i = 0; i < 300; i++) asm.ret(99); // padding nobody reaches
      asm.label("farYes").ret(21);
      asm.label("farNo").ret(22);
      const program = asm.assemble();
      for (const insn of program) {
        expect(insn.jt).toBeLessThanOrEqual(255);
        expect(insn.jf).toBeLessThanOrEqual(255);
      }
      expect(runFilter(program, { nr: 5 }).value).toBe(farTrue ? 21 : 11);
      expect(runFilter(program, { nr: 6 }).value).toBe(farFalse ? 22 : 12);
    }
  });

  test("`null` targets fall through past any trampolines", () => {
    const asm = new BpfAssembler();
    asm.ldAbs(0).jeq(1, null, "far").ret(7);
    for (let i = 0; i < 300; i++) asm.ret(99);
    asm.label("far").ret(8);
    const program = asm.assemble();
    expect(runFilter(program, { nr: 1 }).value).toBe(7);
    expect(runFilter(program, { nr: 2 }).value).toBe(8);
  });

  test("encodes 8 bytes per instruction, little-endian, and decodes back", () => {
    const program: Instruction[] = [
      { code: OP.LD_W_ABS, jt: 0, jf: 0, k: 4 },
      { code: OP.JEQ_K, jt: 1, jf: 255, k: 0xc000003e },
      { code: OP.RET_K, jt: 0, jf: 0, k: 0x7fff0000 },
    ];
    const bytes = encodeProgram(program);
    expect(bytes.byteLength).toBe(24);
    expect([...bytes.subarray(8, 16)]).toEqual([0x15, 0x00, 1, 255, 0x3e, 0x00, 0x00, 0xc0]);
    expect(decodeProgram(bytes)).toEqual(program);
  });

  test("disassembles with absolute targets and named returns", () => {
    const program = compileFilter({ defaultAction: ACTION.killProcess, rules: [{ nr: 1, name: "write" }] });
    const text = disassemble(program).join("\n");
    expect(text).toContain("ld [4]");
    expect(text).toContain("jeq #0xc000003e");
    expect(text).toContain("ret ALLOW");
    expect(text).toContain("ret KILL_PROCESS");
  });
});

describe("actions", () => {
  test("map to SECCOMP_RET values and back to words", () => {
    expect(actionValue(ACTION.allow)).toBe(0x7fff0000);
    expect(actionValue(ACTION.killProcess)).toBe(0x80000000);
    expect(actionValue(ACTION.killThread)).toBe(0);
    expect(actionValue(ACTION.log)).toBe(0x7ffc0000);
    expect(actionValue(ACTION.errno(38))).toBe(0x00050026);
    expect(actionValue({ type: "trap", data: 7 })).toBe(0x00030007);
    expect(describeReturn(0x00050026)).toBe("ERRNO(38)");
    expect(describeReturn(0x80000000)).toBe("KILL_PROCESS");
    expect(() => actionValue(ACTION.errno(0))).toThrow();
    expect(() => actionValue(ACTION.errno(4096))).toThrow();
  });
});

describe("compiled policy: arch, x32, dispatch", () => {
  const policy: FilterPolicy = {
    defaultAction: ACTION.killProcess,
    rules: [
      { nr: 0, name: "read" },
      { nr: 1, name: "write" },
      { nr: 60, name: "exit" },
      { nr: 435, name: "clone3", otherwise: ACTION.errno(38) },
    ],
  };
  const program = compileFilter(policy);

  test("allowed numbers pass, others are killed, and an action other than allow is returned as such", () => {
    expect(runFilter(program, { nr: 0 }).value).toBe(ALLOW);
    expect(runFilter(program, { nr: 1 }).value).toBe(ALLOW);
    expect(runFilter(program, { nr: 60 }).value).toBe(ALLOW);
    expect(runFilter(program, { nr: 435 }).value).toBe(0x00050026);
    for (const nr of [2, 59, 61, 434, 436, 1000, 0x3fffffff]) expect(runFilter(program, { nr }).value).toBe(KILL);
  });

  test("the arch is checked first: an i386 call (int 0x80) with an allowed number is killed", () => {
    expect(runFilter(program, { nr: 1, arch: AUDIT_ARCH.AUDIT_ARCH_I386 }).value).toBe(KILL);
    expect(runFilter(program, { nr: 1, arch: 0 }).value).toBe(KILL);
    expect(program[0]).toEqual({ code: OP.LD_W_ABS, jt: 0, jf: 0, k: 4 });
  });

  test("x32 calls (bit 30 set) are killed even when the low bits name an allowed call", () => {
    for (const nr of [0x40000000, 0x40000001, 0x4000003c, 0x7fffffff, -1]) expect(runFilter(program, { nr }).value).toBe(KILL);
  });

  test("the dispatch is a binary search: hundreds of rules cost a handful of comparisons", () => {
    const next = rng(42);
    const numbers = new Set<number>();
    while (numbers.size < 300) numbers.add(next() % 1000);
    const rules = [...numbers].map((nr) => ({ nr, name: `sys${nr}`, otherwise: ACTION.errno((nr % 4000) + 1) }));
    const big = compileFilter({ defaultAction: ACTION.killProcess, rules });
    let worst = 0;
    for (let nr = 0; nr < 1100; nr++) {
      const run = runFilter(big, { nr });
      worst = Math.max(worst, run.steps);
      expect(run.value).toBe(numbers.has(nr) ? actionValue(ACTION.errno((nr % 4000) + 1)) : KILL);
    }
    expect(worst).toBeLessThan(25);
    expect(big.length).toBeLessThan(4096);
  });

  test("duplicate rules, foreign numbers and impossible values are refused", () => {
    expect(() => compileFilter({ defaultAction: ACTION.killProcess, rules: [{ nr: 1, name: "a" }, { nr: 1, name: "b" }] })).toThrow(/two rules/);
    expect(() => compileFilter({ defaultAction: ACTION.killProcess, rules: [{ nr: 0x40000001, name: "x32" }] })).toThrow(/native/);
    const bad = (when: ArgCondition[]) => () => compileFilter({ defaultAction: ACTION.killProcess, rules: [{ nr: 16, name: "ioctl", cases: [{ when }] }] });
    expect(bad([{ arg: 1, width: 32, op: "eq", value: 0x1_0000_0000 }])).toThrow(/32 bits/);
    expect(bad([{ arg: 1, op: "masked-eq", mask: 0xff, value: 0x100 }])).toThrow(/outside mask/);
    expect(bad([{ arg: 1, op: "in", values: [] }])).toThrow(/at least one/);
    expect(bad([{ arg: 1, op: "eq", value: 2 ** 60 }])).toThrow(/exact integer/);
  });

  test("an empty policy kills everything", () => {
    const none = compileFilter({ defaultAction: ACTION.killProcess, rules: [] });
    expect(runFilter(none, { nr: 0 }).value).toBe(KILL);
  });
});

/** What a condition means, computed directly on the 64-bit value. */
function reference(cond: ArgCondition, arg: bigint): boolean {
  const width = cond.width ?? 64;
  const a = BigInt.asUintN(width, arg);
  const v = (value: number | bigint) => BigInt.asUintN(width, BigInt(value));
  switch (cond.op) {
    case "eq":
      return a === v(cond.value);
    case "ne":
      return a !== v(cond.value);
    case "gt":
      return a > v(cond.value);
    case "ge":
      return a >= v(cond.value);
    case "lt":
      return a < v(cond.value);
    case "le":
      return a <= v(cond.value);
    case "masked-eq":
      return (a & v(cond.mask)) === v(cond.value);
    case "in":
      return cond.values.some((value) => a === v(value));
  }
}

const EDGES = [
  0n,
  1n,
  0x7fffffffn,
  0x80000000n,
  0xfffffffen,
  0xffffffffn,
  0x1_0000_0000n,
  0x1_0000_0001n,
  0x1_ffff_ffffn,
  0xffff_ffff_0000_0000n,
  0xffff_ffff_ffff_ffffn,
  0x8000_0000_0000_0000n,
  0x7fff_ffff_ffff_ffffn,
  0xdead_beef_0000_ae80n,
];

function randomValue(next: () => number): bigint {
  const pick = next() % 4;
  if (pick === 0) return EDGES[next() % EDGES.length]!;
  if (pick === 1) return BigInt(next() % 16);
  if (pick === 2) return (BigInt(next() % 4) << 32n) | BigInt(next() % 8);
  return (BigInt(next()) << 32n) | BigInt(next());
}

function evaluate(cond: ArgCondition, arg: bigint, index: 0 | 1 | 2 | 3 | 4 | 5 = cond.arg): number {
  const program = compileFilter({ defaultAction: ACTION.killProcess, rules: [{ nr: 16, name: "ioctl", cases: [{ when: [cond] }] }] });
  const args: bigint[] = [0n, 0n, 0n, 0n, 0n, 0n].map((_, i) => (i === index ? arg : 0x5a5a5a5a_a5a5a5a5n));
  return runFilter(program, { nr: 16, args }).value;
}

describe("argument conditions: 64-bit values as two 32-bit halves", () => {
  const ops = ["eq", "ne", "gt", "ge", "lt", "le"] as const;

  test("each comparison agrees with 64-bit arithmetic on the edges where the halves meet", () => {
    for (const op of ops) {
      for (const value of EDGES) {
        for (const arg of EDGES) {
          const cond: ArgCondition = { arg: 2, op, value };
          expect({ op, value, arg, allowed: evaluate(cond, arg) === ALLOW }).toEqual({ op, value, arg, allowed: reference(cond, arg) });
        }
      }
    }
  });

  test("random conditions of every kind, both widths and every argument slot agree with 64-bit arithmetic", () => {
    const next = rng(7);
    for (let i = 0; i < 600; i++) {
      const width = next() % 2 === 0 ? 64 : 32;
      const arg = (next() % 6) as 0 | 1 | 2 | 3 | 4 | 5;
      const fit = (value: bigint) => (width === 32 ? value & 0xffffffffn : value);
      const kind = next() % 3;
      const cond: ArgCondition =
        kind === 0
          ? { arg, width, op: ops[next() % ops.length]!, value: fit(randomValue(next)) }
          : kind === 1
            ? (() => {
                const mask = fit(randomValue(next));
                return { arg, width, op: "masked-eq" as const, mask, value: fit(randomValue(next)) & mask };
              })()
            : { arg, width, op: "in" as const, values: Array.from({ length: 1 + (next() % 5) }, () => fit(randomValue(next))) };
      const value = next() % 3 === 0 && cond.op !== "masked-eq" && cond.op !== "in" ? BigInt(cond.value) : randomValue(next);
      expect({ cond, value, allowed: evaluate(cond, value) === ALLOW }).toEqual({ cond, value, allowed: reference(cond, value) });
    }
  });

  test("width 32 looks at the low half only (the kernel ignores the high half of an int argument)", () => {
    const cond: ArgCondition = { arg: 1, width: 32, op: "eq", value: 0xae80 };
    expect(evaluate(cond, 0xae80n)).toBe(ALLOW);
    expect(evaluate(cond, 0xffff_ffff_0000_ae80n)).toBe(ALLOW);
    expect(evaluate(cond, 0xae81n)).toBe(KILL);
    // Negative numbers mean their two's complement at the width.
    expect(evaluate({ arg: 0, width: 32, op: "eq", value: -100 }, 0xffffff9cn)).toBe(ALLOW);
    expect(evaluate({ arg: 0, op: "eq", value: -100 }, 0xffff_ffff_ffff_ff9cn)).toBe(ALLOW);
    expect(evaluate({ arg: 0, op: "eq", value: -100 }, 0xffffff9cn)).toBe(KILL);
  });

  test("width 64 needs both halves: a value differing only in the high half is refused", () => {
    const cond: ArgCondition = { arg: 0, op: "eq", value: 0x10 };
    expect(evaluate(cond, 0x10n)).toBe(ALLOW);
    expect(evaluate(cond, 0x1_0000_0010n)).toBe(KILL);
    const inSet: ArgCondition = { arg: 0, op: "in", values: [1n, 0x2_0000_0001n] };
    expect(evaluate(inSet, 1n)).toBe(ALLOW);
    expect(evaluate(inSet, 0x2_0000_0001n)).toBe(ALLOW);
    expect(evaluate(inSet, 0x1_0000_0001n)).toBe(KILL);
    expect(evaluate(inSet, 0x2_0000_0000n)).toBe(KILL);
  });

  test("the condition reads its own argument slot, not a neighbour's", () => {
    const cond: ArgCondition = { arg: 3, op: "eq", value: 9 };
    expect(evaluate(cond, 9n, 3)).toBe(ALLOW);
    expect(evaluate(cond, 9n, 2)).toBe(KILL);
    expect(evaluate(cond, 9n, 4)).toBe(KILL);
  });
});

describe("rule cases", () => {
  const program = compileFilter({
    defaultAction: ACTION.killProcess,
    rules: [
      {
        nr: 56,
        name: "clone",
        cases: [
          { when: [{ arg: 0, op: "masked-eq", mask: 0x10000, value: 0x10000 }, { arg: 1, op: "ne", value: 0 }] },
          { when: [{ arg: 0, op: "eq", value: 17 }], action: ACTION.errno(1) },
        ],
      },
      { nr: 157, name: "prctl", cases: [{ when: [{ arg: 0, width: 32, op: "in", values: [15, 16] }] }], otherwise: ACTION.errno(1) },
    ],
  });

  test("all conditions of a case must hold; the first matching case decides", () => {
    expect(runFilter(program, { nr: 56, args: [0x10000, 5] }).value).toBe(ALLOW);
    expect(runFilter(program, { nr: 56, args: [0x10000, 0] }).value).toBe(KILL); // second condition fails, second case fails
    expect(runFilter(program, { nr: 56, args: [17, 0] }).value).toBe(actionValue(ACTION.errno(1)));
    expect(runFilter(program, { nr: 56, args: [0, 5] }).value).toBe(KILL);
  });

  test("`otherwise` applies when no case matches", () => {
    expect(runFilter(program, { nr: 157, args: [15] }).value).toBe(ALLOW);
    expect(runFilter(program, { nr: 157, args: [16] }).value).toBe(ALLOW);
    expect(runFilter(program, { nr: 157, args: [4] }).value).toBe(actionValue(ACTION.errno(1)));
  });
});
