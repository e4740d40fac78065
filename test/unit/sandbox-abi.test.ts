/**
 * The sandbox's kernel ABI against the C headers: system call numbers
 * (<sys/syscall.h>), prctl options, seccomp operations, flags and return
 * values (<linux/seccomp.h>), classic BPF opcodes (<linux/filter.h>), audit
 * arch values (<linux/audit.h>), clone and open flags, terminal ioctls, and
 * the layouts of struct sock_filter, sock_fprog, seccomp_data,
 * landlock_ruleset_attr and landlock_path_beneath_attr.
 *
 * The build machine's <linux/landlock.h> may predate parts of Landlock (here:
 * ABI 2 era, no TRUNCATE, IOCTL_DEV, network rights or scopes). What the
 * header has is compared; what it lacks is listed by the "newer than the
 * header" test and checked against the running kernel by
 * sandbox-landlock.test.ts instead.
 */
import { describe, expect, test } from "bun:test";
import {
  AUDIT_ARCH,
  BPF,
  LANDLOCK_ACCESS_FS,
  LANDLOCK_ACCESS_NET,
  LANDLOCK_CREATE_RULESET,
  LANDLOCK_RESTRICT_SELF,
  LANDLOCK_RULE_NET_PORT,
  LANDLOCK_RULE_PATH_BENEATH,
  LANDLOCK_SCOPE,
  PR,
  SANDBOX_OPEN,
  SANDBOX_SYSCALL_NUMBERS,
  SECCOMP,
  SECCOMP_RET,
  TERMINAL_IOCTL,
  X32_SYSCALL_BIT,
  landlock_path_beneath_attr,
  landlock_ruleset_attr,
  rulesetAttrSize,
  seccomp_data,
  sock_filter,
  sock_fprog,
} from "../../src/ffi/sandbox-syscalls.ts";
import type { StructLayout } from "../../src/kvm/struct.ts";
import { CLONE, OPEN_FLAGS, X86_64_SYSCALLS } from "../../src/sandbox/seccomp.ts";
import { cValues, mismatches, tsExpectations, type Expectations } from "./c-abi.ts";

const prefixed = (prefix: string, table: Record<string, number>) =>
  Object.fromEntries(Object.entries(table).map(([name, value]) => [`${prefix}${name}`, value]));

const INCLUDES = [
  "errno.h",
  "fcntl.h",
  "sys/syscall.h",
  "sys/ioctl.h",
  "sys/prctl.h",
  "linux/audit.h",
  "linux/filter.h",
  "linux/seccomp.h",
  "linux/sched.h",
  "linux/landlock.h",
  "asm/unistd.h",
];

/** A value the probe prints for a macro the header does not define. */
const ABSENT = 0xfffffffe;

/** Constants whose macros exist only in newer headers: `#ifdef` guarded, ABSENT when missing. */
const OPTIONAL_CONSTANTS: Record<string, number> = {
  ...Object.fromEntries(Object.entries(LANDLOCK_ACCESS_FS).map(([name, bit]) => [name, Number(bit)])),
  ...Object.fromEntries(Object.entries(LANDLOCK_ACCESS_NET).map(([name, bit]) => [name, Number(bit)])),
  ...Object.fromEntries(Object.entries(LANDLOCK_SCOPE).map(([name, bit]) => [name, Number(bit)])),
  ...LANDLOCK_RESTRICT_SELF,
  LANDLOCK_CREATE_RULESET_ERRATA: LANDLOCK_CREATE_RULESET.LANDLOCK_CREATE_RULESET_ERRATA,
};

const optionalDeclarations = Object.keys(OPTIONAL_CONSTANTS)
  .map((name) => `#ifdef ${name}\n#define OPT_${name} (${name})\n#else\n#define OPT_${name} ${ABSENT}u\n#endif`)
  .join("\n");

// Members of landlock_ruleset_attr newer than ABI 1 exist when their rights' macros do.
const rulesetDeclarations = `
#ifdef LANDLOCK_ACCESS_NET_BIND_TCP
#define OFF_handled_access_net offsetof(struct landlock_ruleset_attr, handled_access_net)
#else
#define OFF_handled_access_net ${ABSENT}u
#endif
#ifdef LANDLOCK_SCOPE_SIGNAL
#define OFF_scoped offsetof(struct landlock_ruleset_attr, scoped)
#else
#define OFF_scoped ${ABSENT}u
#endif
#ifndef LANDLOCK_RULE_NET_PORT
#define LANDLOCK_RULE_NET_PORT_OR_ABSENT ${ABSENT}u
#else
#define LANDLOCK_RULE_NET_PORT_OR_ABSENT LANDLOCK_RULE_NET_PORT
#endif
`;

const syscalls: Record<string, number> = {
  ...prefixed("SYS_", X86_64_SYSCALLS),
  ...prefixed("SYS_", SANDBOX_SYSCALL_NUMBERS),
};

const constants: Record<string, number> = {
  ...syscalls,
  ...PR,
  ...SECCOMP,
  ...SECCOMP_RET,
  ...BPF,
  ...AUDIT_ARCH,
  ...TERMINAL_IOCTL,
  __X32_SYSCALL_BIT: X32_SYSCALL_BIT,
  ...CLONE,
  O_CREAT: OPEN_FLAGS.O_CREAT,
  "(__O_TMPFILE & ~O_DIRECTORY)": OPEN_FLAGS.__O_TMPFILE,
  __O_PATH: SANDBOX_OPEN.O_PATH,
  O_CLOEXEC: SANDBOX_OPEN.O_CLOEXEC,
  O_DIRECTORY: SANDBOX_OPEN.O_DIRECTORY,
  O_RDONLY: SANDBOX_OPEN.O_RDONLY,
  LANDLOCK_CREATE_RULESET_VERSION: LANDLOCK_CREATE_RULESET.LANDLOCK_CREATE_RULESET_VERSION,
  LANDLOCK_RULE_PATH_BENEATH,
  ...prefixed("OPT_", OPTIONAL_CONSTANTS),
  LANDLOCK_RULE_NET_PORT_OR_ABSENT: LANDLOCK_RULE_NET_PORT,
  "offsetof(struct landlock_ruleset_attr, handled_access_fs)": landlock_ruleset_attr.fields.handled_access_fs.offset,
  OFF_handled_access_net: landlock_ruleset_attr.fields.handled_access_net.offset,
  OFF_scoped: landlock_ruleset_attr.fields.scoped.offset,
};

const layouts: StructLayout[] = [sock_filter, sock_fprog, seccomp_data, landlock_path_beneath_attr];

/** The C values, with ABSENT ones set aside. */
function split(expected: Expectations, actual: Expectations): { present: Expectations; absent: string[] } {
  const present: Expectations = new Map();
  const absent: string[] = [];
  for (const [expr, value] of expected) {
    if (actual.get(expr) === ABSENT && value !== ABSENT) absent.push(expr);
    else present.set(expr, value);
  }
  return { present, absent };
}

describe("sandbox ABI matches the C headers", () => {
  const expected = tsExpectations(layouts, constants);
  const headerSize = "sizeof(struct landlock_ruleset_attr)";
  const actual = cValues({ includes: INCLUDES, declarations: `${optionalDeclarations}\n${rulesetDeclarations}` }, [
    ...expected.keys(),
    headerSize,
  ]);
  const { present, absent } = split(expected, actual);

  test("covers the structs, the system call table and the constants", () => {
    expect(expected.get("sizeof(struct seccomp_data)")).toBe(64);
    expect(expected.get("offsetof(struct seccomp_data, args)")).toBe(16);
    expect(expected.get("sizeof(struct landlock_path_beneath_attr)")).toBe(12);
    expect(Object.keys(X86_64_SYSCALLS).length).toBeGreaterThan(150);
    expect(expected.size).toBeGreaterThan(300);
  });

  test("every size, offset, number and flag the header defines agrees with C", () => {
    expect(mismatches(present, actual)).toEqual([]);
  });

  test("only Landlock additions newer than the header are left unchecked here", () => {
    // Everything not in the header is a Landlock ABI 3+ addition, checked against the kernel elsewhere.
    for (const expr of absent) expect(expr).toMatch(/^(OPT_LANDLOCK_|OFF_|LANDLOCK_RULE_NET_PORT)/);
    // The ABI 1-2 rights are in every header that has Landlock at all.
    expect(absent).not.toContain("OPT_LANDLOCK_ACCESS_FS_READ_FILE");
    expect(absent).not.toContain("OPT_LANDLOCK_ACCESS_FS_REFER");
  });

  test("landlock_ruleset_attr: the header's size is the size Volt passes for the header's ABI", () => {
    const headerAbi = actual.get("OFF_scoped") !== ABSENT ? 6 : actual.get("OFF_handled_access_net") !== ABSENT ? 4 : 1;
    expect(actual.get(headerSize)).toBe(rulesetAttrSize(headerAbi));
    expect(landlock_ruleset_attr.size).toBe(rulesetAttrSize(6));
  });

  test("a wrong number is caught (the check can fail)", () => {
    const wrong = new Map(present);
    wrong.set("SYS_execve", 57);
    wrong.set("offsetof(struct seccomp_data, arch)", 8);
    expect(mismatches(wrong, actual)).toHaveLength(2);
  });
});
