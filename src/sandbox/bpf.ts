/**
 * A small classic-BPF assembler and a compiler from a declarative seccomp
 * policy to a sock_filter program.
 *
 * The assembler takes instructions with symbolic jump targets (labels) and
 * lays them out. Classic BPF jumps are forward only and a conditional jump
 * reaches at most 255 instructions; a conditional jump whose target is
 * further away is relaxed into a short jump to an unconditional `ja`
 * (32-bit offset) placed right after it, repeating until the layout settles.
 *
 * The compiled program:
 *   1. checks seccomp_data.arch is AUDIT_ARCH_X86_64 (an i386 int 0x80 call
 *      has another arch and different numbers: killed);
 *   2. kills x32 calls (numbers with bit 30 set, same arch value);
 *   3. finds the rule for the number with a binary search (jge splits, jeq
 *      leaves), so any call costs about log2(rules) + 3 comparisons;
 *   4. for rules with argument cases, checks each case's conditions in order
 *      and returns the first matching case's action, or the rule's
 *      `otherwise`;
 *   5. anything without a rule gets the default action (KILL_PROCESS).
 *
 * Arguments are 64 bits and classic BPF loads 32: a 64-bit comparison checks
 * the high word, then the low word (little-endian: the low word comes first
 * in seccomp_data). A condition with `width: 32` checks the low word only,
 * which is right for arguments the kernel declares as int/unsigned int
 * (ioctl's request, socket's domain): the kernel ignores the high half of
 * those registers, so a caller cannot use it to slip past the filter, and a
 * sign-extended value from a C caller still matches.
 */
import {
  AUDIT_ARCH,
  BPF,
  SECCOMP_RET,
  X32_SYSCALL_BIT,
  argLowOffset,
  seccomp_data,
  sock_filter,
} from "../ffi/sandbox-syscalls.ts";

// ---------------------------------------------------------------- instructions

/** One encoded instruction (struct sock_filter). */
export interface Instruction {
  readonly code: number;
  readonly jt: number;
  readonly jf: number;
  readonly k: number;
}

export const OP = {
  LD_W_ABS: BPF.BPF_LD | BPF.BPF_W | BPF.BPF_ABS,
  LD_IMM: BPF.BPF_LD | BPF.BPF_IMM,
  ALU_AND_K: BPF.BPF_ALU | BPF.BPF_AND | BPF.BPF_K,
  JA: BPF.BPF_JMP | BPF.BPF_JA,
  JEQ_K: BPF.BPF_JMP | BPF.BPF_JEQ | BPF.BPF_K,
  JGT_K: BPF.BPF_JMP | BPF.BPF_JGT | BPF.BPF_K,
  JGE_K: BPF.BPF_JMP | BPF.BPF_JGE | BPF.BPF_K,
  JSET_K: BPF.BPF_JMP | BPF.BPF_JSET | BPF.BPF_K,
  RET_K: BPF.BPF_RET | BPF.BPF_K,
} as const;

export type Condition = "jeq" | "jgt" | "jge" | "jset";

const CONDITION_OP: Readonly<Record<Condition, number>> = {
  jeq: OP.JEQ_K,
  jgt: OP.JGT_K,
  jge: OP.JGE_K,
  jset: OP.JSET_K,
};

/** A jump target: a label, or `null` for the next instruction. */
export type Target = string | null;

type Item =
  | { readonly kind: "plain"; readonly code: number; readonly k: number }
  | { readonly kind: "jump"; readonly code: number; readonly k: number; readonly jt: Target; readonly jf: Target }
  | { readonly kind: "ja"; readonly target: string }
  | { readonly kind: "label"; readonly name: string };

export class BpfAssemblyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BpfAssemblyError";
  }
}

function u32(value: number): number {
  if (!Number.isInteger(value) || value < -0x80000000 || value > 0xffffffff) {
    throw new BpfAssemblyError(`${value} is not a 32-bit constant`);
  }
  return value >>> 0;
}

/** Builds a program from instructions and labels; `assemble` lays it out. */
export class BpfAssembler {
  private readonly items: Item[] = [];
  private readonly labels = new Set<string>();
  private nextLabel = 0;

  /** A label name not used before (for compiler-generated targets). */
  fresh(hint = "L"): string {
    return `${hint}#${this.nextLabel++}`;
  }

  label(name: string): this {
    if (this.labels.has(name)) throw new BpfAssemblyError(`label ${name} is defined twice`);
    this.labels.add(name);
    this.items.push({ kind: "label", name });
    return this;
  }

  /** A = the 32-bit word at `offset` of seccomp_data. */
  ldAbs(offset: number): this {
    if (!Number.isInteger(offset) || offset < 0 || offset % 4 !== 0 || offset + 4 > seccomp_data.size) {
      throw new BpfAssemblyError(`seccomp_data has no 32-bit word at offset ${offset}`);
    }
    this.items.push({ kind: "plain", code: OP.LD_W_ABS, k: offset });
    return this;
  }

  /** A = constant. */
  ldImm(value: number): this {
    this.items.push({ kind: "plain", code: OP.LD_IMM, k: u32(value) });
    return this;
  }

  /** A &= constant. */
  and(mask: number): this {
    this.items.push({ kind: "plain", code: OP.ALU_AND_K, k: u32(mask) });
    return this;
  }

  /** Conditional jump comparing A (unsigned) with a constant; `jset` tests A & k != 0. */
  jump(condition: Condition, value: number, jt: Target, jf: Target): this {
    this.items.push({ kind: "jump", code: CONDITION_OP[condition], k: u32(value), jt, jf });
    return this;
  }

  jeq(value: number, jt: Target, jf: Target = null): this {
    return this.jump("jeq", value, jt, jf);
  }

  jgt(value: number, jt: Target, jf: Target = null): this {
    return this.jump("jgt", value, jt, jf);
  }

  jge(value: number, jt: Target, jf: Target = null): this {
    return this.jump("jge", value, jt, jf);
  }

  jset(value: number, jt: Target, jf: Target = null): this {
    return this.jump("jset", value, jt, jf);
  }

  /** Unconditional jump (32-bit offset). */
  ja(target: string): this {
    this.items.push({ kind: "ja", target });
    return this;
  }

  /** Returns the constant (a SECCOMP_RET_* value). */
  ret(value: number): this {
    this.items.push({ kind: "plain", code: OP.RET_K, k: u32(value) });
    return this;
  }

  /**
   * Resolves labels into offsets. Throws for undefined labels, backward
   * jumps, a program that does not end in `ret`, or one longer than
   * BPF_MAXINSNS.
   */
  assemble(): Instruction[] {
    for (const item of this.items) {
      const targets = item.kind === "jump" ? [item.jt, item.jf] : item.kind === "ja" ? [item.target] : [];
      for (const target of targets) {
        if (target !== null && !this.labels.has(target)) throw new BpfAssemblyError(`jump to undefined label ${target}`);
      }
    }
    // far[i] = [true-target needs a trampoline, false-target needs a trampoline]
    const far = this.items.map(() => [false, false] as [boolean, boolean]);
    const sizeOf = (index: number): number => {
      const item = this.items[index]!;
      if (item.kind === "label") return 0;
      if (item.kind === "jump") return 1 + Number(far[index]![0]) + Number(far[index]![1]);
      return 1;
    };
    let positions: number[] = [];
    let labelAt = new Map<string, number>();
    const layout = () => {
      positions = [];
      labelAt = new Map();
      let at = 0;
      this.items.forEach((item, index) => {
        positions.push(at);
        if (item.kind === "label") labelAt.set(item.name, at);
        at += sizeOf(index);
      });
      return at;
    };
    const resolve = (target: Target, from: number): number => {
      const offset = target === null ? 0 : labelAt.get(target)! - from;
      if (offset < 0) throw new BpfAssemblyError(`jump to ${target} goes backwards`);
      return offset;
    };
    let length = 0;
    for (let changed = true; changed; ) {
      changed = false;
      length = layout();
      this.items.forEach((item, index) => {
        if (item.kind !== "jump") return;
        const after = positions[index]! + 1;
        [item.jt, item.jf].forEach((target, side) => {
          if (!far[index]![side] && target !== null && resolve(target, after) > 255) {
            far[index]![side] = true;
            changed = true;
          }
        });
      });
    }
    if (length > BPF.BPF_MAXINSNS) throw new BpfAssemblyError(`the program has ${length} instructions; the kernel takes at most ${BPF.BPF_MAXINSNS}`);
    const program: Instruction[] = [];
    this.items.forEach((item, index) => {
      const at = positions[index]!;
      switch (item.kind) {
        case "label":
          return;
        case "plain":
          program.push({ code: item.code, jt: 0, jf: 0, k: item.k });
          return;
        case "ja":
          program.push({ code: OP.JA, jt: 0, jf: 0, k: resolve(item.target, at + 1) });
          return;
        case "jump": {
          const [farT, farF] = far[index]!;
          // `null` is the instruction after the jump, which follows any trampolines.
          const trampolines = Number(farT) + Number(farF);
          const near = (target: Target) => (target === null ? trampolines : resolve(target, at + 1));
          const jt = farT ? 0 : near(item.jt);
          const jf = farF ? Number(farT) : near(item.jf);
          program.push({ code: item.code, jt, jf, k: item.k });
          if (farT) program.push({ code: OP.JA, jt: 0, jf: 0, k: resolve(item.jt, at + 2) });
          if (farF) program.push({ code: OP.JA, jt: 0, jf: 0, k: resolve(item.jf, at + 2 + Number(farT)) });
          return;
        }
      }
    });
    if (program.length === 0 || program[program.length - 1]!.code !== OP.RET_K) {
      throw new BpfAssemblyError("a seccomp program must end with ret");
    }
    return program;
  }
}

/** The program as the kernel takes it: 8 bytes per instruction, little-endian. */
export function encodeProgram(program: readonly Instruction[]): Uint8Array {
  const bytes = new Uint8Array(program.length * sock_filter.size);
  const view = new DataView(bytes.buffer);
  program.forEach((insn, i) => {
    const at = i * sock_filter.size;
    view.setUint16(at + sock_filter.fields.code.offset, insn.code, true);
    view.setUint8(at + sock_filter.fields.jt.offset, insn.jt);
    view.setUint8(at + sock_filter.fields.jf.offset, insn.jf);
    view.setUint32(at + sock_filter.fields.k.offset, insn.k, true);
  });
  return bytes;
}

export function decodeProgram(bytes: Uint8Array): Instruction[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const program: Instruction[] = [];
  for (let at = 0; at + sock_filter.size <= bytes.byteLength; at += sock_filter.size) {
    program.push({
      code: view.getUint16(at, true),
      jt: view.getUint8(at + 2),
      jf: view.getUint8(at + 3),
      k: view.getUint32(at + 4, true),
    });
  }
  return program;
}

const MNEMONIC = new Map<number, string>([
  [OP.LD_W_ABS, "ld"],
  [OP.LD_IMM, "ld #"],
  [OP.ALU_AND_K, "and"],
  [OP.JA, "ja"],
  [OP.JEQ_K, "jeq"],
  [OP.JGT_K, "jgt"],
  [OP.JGE_K, "jge"],
  [OP.JSET_K, "jset"],
  [OP.RET_K, "ret"],
]);

/** One line per instruction, bpf_asm style, with absolute jump targets. */
export function disassemble(program: readonly Instruction[]): string[] {
  return program.map((insn, i) => {
    const name = MNEMONIC.get(insn.code) ?? `op 0x${insn.code.toString(16)}`;
    const hex = `0x${insn.k.toString(16)}`;
    const where = String(i).padStart(4);
    if (insn.code === OP.JA) return `${where}: ja ${i + 1 + insn.k}`;
    if (insn.code === OP.RET_K) return `${where}: ret ${describeReturn(insn.k)}`;
    if (insn.code === OP.LD_W_ABS) return `${where}: ld [${insn.k}]`;
    if (MNEMONIC.has(insn.code) && (insn.code & 0x07) === BPF.BPF_JMP) {
      return `${where}: ${name} #${hex}, ${i + 1 + insn.jt}, ${i + 1 + insn.jf}`;
    }
    return `${where}: ${name} #${hex}`;
  });
}

// ---------------------------------------------------------------- actions

export type SeccompAction =
  | { readonly type: "allow" }
  | { readonly type: "kill-process" }
  | { readonly type: "kill-thread" }
  | { readonly type: "errno"; readonly errno: number }
  | { readonly type: "trap"; readonly data?: number }
  | { readonly type: "log" }
  | { readonly type: "user-notif" };

export const ACTION = {
  allow: { type: "allow" },
  killProcess: { type: "kill-process" },
  killThread: { type: "kill-thread" },
  log: { type: "log" },
  trap: { type: "trap" },
  errno: (errno: number): SeccompAction => ({ type: "errno", errno }),
} as const satisfies Record<string, SeccompAction | ((errno: number) => SeccompAction)>;

/** The SECCOMP_RET_* value for an action. */
export function actionValue(action: SeccompAction): number {
  switch (action.type) {
    case "allow":
      return SECCOMP_RET.SECCOMP_RET_ALLOW;
    case "kill-process":
      return SECCOMP_RET.SECCOMP_RET_KILL_PROCESS;
    case "kill-thread":
      return SECCOMP_RET.SECCOMP_RET_KILL_THREAD;
    case "log":
      return SECCOMP_RET.SECCOMP_RET_LOG;
    case "user-notif":
      return SECCOMP_RET.SECCOMP_RET_USER_NOTIF;
    case "trap":
      return (SECCOMP_RET.SECCOMP_RET_TRAP | ((action.data ?? 0) & SECCOMP_RET.SECCOMP_RET_DATA)) >>> 0;
    case "errno":
      if (!Number.isInteger(action.errno) || action.errno < 1 || action.errno > 4095) {
        throw new BpfAssemblyError(`errno ${action.errno} is out of range`);
      }
      return (SECCOMP_RET.SECCOMP_RET_ERRNO | action.errno) >>> 0;
  }
}

/** A return value in words: "ALLOW", "ERRNO(38)", "KILL_PROCESS". */
export function describeReturn(value: number): string {
  const action = (value & SECCOMP_RET.SECCOMP_RET_ACTION_FULL) >>> 0;
  const data = value & SECCOMP_RET.SECCOMP_RET_DATA;
  switch (action) {
    case SECCOMP_RET.SECCOMP_RET_ALLOW:
      return "ALLOW";
    case SECCOMP_RET.SECCOMP_RET_KILL_PROCESS:
      return "KILL_PROCESS";
    case SECCOMP_RET.SECCOMP_RET_KILL_THREAD:
      return "KILL_THREAD";
    case SECCOMP_RET.SECCOMP_RET_LOG:
      return "LOG";
    case SECCOMP_RET.SECCOMP_RET_USER_NOTIF:
      return "USER_NOTIF";
    case SECCOMP_RET.SECCOMP_RET_TRAP:
      return `TRAP(${data})`;
    case SECCOMP_RET.SECCOMP_RET_ERRNO:
      return `ERRNO(${data})`;
    default:
      return `0x${value.toString(16)}`;
  }
}

// ---------------------------------------------------------------- policy

export type ArgIndex = 0 | 1 | 2 | 3 | 4 | 5;

interface ConditionBase {
  readonly arg: ArgIndex;
  /** 64 (default) compares the whole register; 32 only its low half (for int-typed arguments). */
  readonly width?: 32 | 64;
}

export type ArgCondition =
  | (ConditionBase & { readonly op: "eq" | "ne" | "gt" | "ge" | "lt" | "le"; readonly value: number | bigint })
  /** (arg & mask) == value */
  | (ConditionBase & { readonly op: "masked-eq"; readonly mask: number | bigint; readonly value: number | bigint })
  /** arg is one of `values` */
  | (ConditionBase & { readonly op: "in"; readonly values: readonly (number | bigint)[] });

export interface RuleCase {
  /** All must hold. */
  readonly when: readonly ArgCondition[];
  /** Default: allow. */
  readonly action?: SeccompAction;
}

export interface SyscallRule {
  readonly nr: number;
  readonly name: string;
  /** Tried in order; the first case whose conditions all hold gives the action. */
  readonly cases?: readonly RuleCase[];
  /** The action when no case matches: default allow without cases, the policy's default with them. */
  readonly otherwise?: SeccompAction;
}

export interface FilterPolicy {
  /** Default AUDIT_ARCH_X86_64. */
  readonly arch?: number;
  /** For calls without a rule, x32 calls and a foreign arch. */
  readonly defaultAction: SeccompAction;
  readonly rules: readonly SyscallRule[];
}

const MASK32 = 0xffffffffn;

function normalise(value: number | bigint, width: 32 | 64, what: string): bigint {
  const big = typeof value === "bigint" ? value : BigInt(value);
  if (typeof value === "number" && !Number.isSafeInteger(value)) throw new BpfAssemblyError(`${what}: ${value} is not an exact integer (use a bigint)`);
  const limit = 1n << BigInt(width);
  if (big >= limit || big < -(limit >> 1n)) throw new BpfAssemblyError(`${what}: ${value} does not fit ${width} bits`);
  return BigInt.asUintN(width, big);
}

function halves(value: bigint): { hi: number; lo: number } {
  return { hi: Number(value >> 32n), lo: Number(value & MASK32) };
}

function emitCondition(asm: BpfAssembler, cond: ArgCondition, fail: string, context: string): void {
  const width = cond.width ?? 64;
  const lo = argLowOffset(cond.arg);
  const hi = lo + 4;
  const wide = width === 64;
  const ok = asm.fresh("ok");
  switch (cond.op) {
    case "eq":
    case "ne": {
      const v = halves(normalise(cond.value, width, context));
      const equal = cond.op === "eq";
      // eq: a differing word fails; ne: a differing high word already succeeds, an equal low word fails.
      if (wide) asm.ldAbs(hi).jeq(v.hi, null, equal ? fail : ok);
      asm.ldAbs(lo).jeq(v.lo, equal ? null : fail, equal ? fail : null);
      break;
    }
    case "masked-eq": {
      const mask = normalise(cond.mask, width, context);
      const value = normalise(cond.value, width, context);
      if ((value & ~mask) !== 0n) throw new BpfAssemblyError(`${context}: value 0x${value.toString(16)} has bits outside mask 0x${mask.toString(16)}`);
      const m = halves(mask);
      const v = halves(value);
      const word = (offset: number, maskWord: number, valueWord: number) => {
        if (maskWord === 0) return; // nothing to compare in this half
        asm.ldAbs(offset);
        if (maskWord !== 0xffffffff) asm.and(maskWord);
        asm.jeq(valueWord, null, fail);
      };
      if (wide) word(hi, m.hi, v.hi);
      word(lo, m.lo, v.lo);
      break;
    }
    case "gt":
    case "ge":
    case "lt":
    case "le": {
      const v = halves(normalise(cond.value, width, context));
      // a > v, a >= v: true when hi > vhi; false when hi < vhi; else compare lo.
      // a < v, a <= v: the negations of a >= v, a > v.
      const upward = cond.op === "gt" || cond.op === "ge";
      const [above, below] = upward ? [ok, fail] : [fail, ok];
      if (wide) {
        asm.ldAbs(hi).jgt(v.hi, above, null);
        asm.jeq(v.hi, null, below);
      }
      asm.ldAbs(lo);
      const strictLow = cond.op === "gt" || cond.op === "le";
      asm.jump(strictLow ? "jgt" : "jge", v.lo, upward ? null : fail, upward ? fail : null);
      break;
    }
    case "in": {
      if (cond.values.length === 0) throw new BpfAssemblyError(`${context}: "in" needs at least one value`);
      const values = [...new Set(cond.values.map((value) => normalise(value, width, context)))];
      const groups = new Map<number, number[]>();
      for (const value of values) {
        const { hi: h, lo: l } = halves(value);
        groups.set(h, [...(groups.get(h) ?? []), l]);
      }
      const entries = [...groups.entries()];
      entries.forEach(([h, lows], index) => {
        const nextGroup = index === entries.length - 1 ? fail : asm.fresh("group");
        if (wide) asm.ldAbs(hi).jeq(h, null, nextGroup);
        asm.ldAbs(lo);
        lows.forEach((l, i) => {
          if (i === lows.length - 1) asm.jeq(l, ok, nextGroup);
          else asm.jeq(l, ok, null);
        });
        if (nextGroup !== fail) asm.label(nextGroup);
      });
      break;
    }
  }
  asm.label(ok);
}

/**
 * Compiles a policy into a seccomp program: arch check, x32 kill, binary
 * search on the number, argument cases. Throws BpfAssemblyError for an
 * impossible policy (duplicate rules, values that do not fit, ...).
 */
export function compileFilter(policy: FilterPolicy): Instruction[] {
  const asm = new BpfAssembler();
  const arch = policy.arch ?? AUDIT_ARCH.AUDIT_ARCH_X86_64;
  const rules = [...policy.rules].sort((a, b) => a.nr - b.nr);
  for (let i = 1; i < rules.length; i++) {
    if (rules[i]!.nr === rules[i - 1]!.nr) throw new BpfAssemblyError(`two rules for system call ${rules[i]!.nr} (${rules[i - 1]!.name}, ${rules[i]!.name})`);
  }
  for (const rule of rules) {
    if (!Number.isInteger(rule.nr) || rule.nr < 0 || rule.nr >= X32_SYSCALL_BIT) throw new BpfAssemblyError(`${rule.name}: ${rule.nr} is not a native system call number`);
  }
  // Shared `ret` labels, one per distinct action value, emitted at the end.
  const returns = new Map<number, string>();
  const returnLabel = (action: SeccompAction) => {
    const value = actionValue(action);
    let label = returns.get(value);
    if (label === undefined) {
      label = asm.fresh(`ret_${describeReturn(value)}`);
      returns.set(value, label);
    }
    return label;
  };
  const defaultLabel = returnLabel(policy.defaultAction);
  const bodyLabel = new Map<SyscallRule, string>();
  const bodyOf = (rule: SyscallRule) => {
    let label = bodyLabel.get(rule);
    if (label === undefined) {
      label = asm.fresh(`body_${rule.name}`);
      bodyLabel.set(rule, label);
    }
    return label;
  };

  asm.ldAbs(seccomp_data.fields.arch.offset).jeq(arch >>> 0, null, defaultLabel);
  asm.ldAbs(seccomp_data.fields.nr.offset).jge(X32_SYSCALL_BIT, defaultLabel, null);

  const dispatch = (lo: number, hi: number) => {
    if (hi - lo <= 3) {
      for (let i = lo; i < hi; i++) {
        const rule = rules[i]!;
        if (rule.cases === undefined || rule.cases.length === 0) {
          // A rule without cases returns its action right here.
          const skip = asm.fresh("not");
          asm.jeq(rule.nr, null, skip).ret(actionValue(rule.otherwise ?? ACTION.allow)).label(skip);
        } else {
          asm.jeq(rule.nr, bodyOf(rule), null);
        }
      }
      asm.ja(defaultLabel);
      return;
    }
    const mid = (lo + hi) >> 1;
    const right = asm.fresh("ge");
    asm.jge(rules[mid]!.nr, right, null);
    dispatch(lo, mid);
    asm.label(right);
    dispatch(mid, hi);
  };
  dispatch(0, rules.length);

  for (const rule of rules) {
    const label = bodyLabel.get(rule);
    if (label === undefined) continue;
    asm.label(label);
    rule.cases!.forEach((ruleCase, index) => {
      const next = asm.fresh(`case_${rule.name}_${index + 1}`);
      ruleCase.when.forEach((cond, c) => emitCondition(asm, cond, next, `${rule.name} case ${index} condition ${c}`));
      asm.ja(returnLabel(ruleCase.action ?? ACTION.allow));
      asm.label(next);
    });
    asm.ja(returnLabel(rule.otherwise ?? policy.defaultAction));
  }
  // The shared returns come last, so the program ends in ret.
  for (const [value, label] of returns) asm.label(label).ret(value);
  return asm.assemble();
}
