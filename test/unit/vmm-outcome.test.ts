/** How a vCPU's end becomes volt's outcome and exit status (the paths a real guest rarely takes). */
import { describe, expect, test } from "bun:test";
import { exitCodeFor } from "../../src/cli/vm-session.ts";
import { outcomeOf } from "../../src/vmm/vmm.ts";

describe("outcomes", () => {
  test("an exit Volt cannot handle is an error outcome naming the exit and the registers, exit status 6", () => {
    const outcome = outcomeOf({
      type: "finished",
      vcpuId: 1,
      reason: "error",
      exits: [{ reason: "KVM_EXIT_INTERNAL_ERROR", suberror: 1 }],
      state: "rip 0xffffffff81000000 rsp 0x0 cr0 0x80050033 cr2 0x0 cr3 0x1000 cr4 0x20",
    });
    expect(outcome.kind).toBe("error");
    expect(outcome.detail).toContain("vCPU 1: unexpected");
    expect(outcome.detail).toContain("KVM_EXIT_INTERNAL_ERROR");
    expect(outcome.detail).toContain("rip 0xffffffff81000000");
    expect(exitCodeFor(outcome)).toBe(6);
  });

  test("a worker failure is an error (6); a triple fault a reboot (0) that says where; ACPI S5 a power-off (0)", () => {
    expect(exitCodeFor(outcomeOf({ type: "finished", vcpuId: 0, reason: "error", exits: [], error: "KVM_RUN failed: EFAULT" }))).toBe(6);
    const triple = outcomeOf({ type: "finished", vcpuId: 0, reason: "shutdown", exits: [], state: "rip 0x1234" });
    expect(triple).toEqual({ kind: "reboot", detail: "the guest rebooted (triple fault on vCPU 0: rip 0x1234)" });
    expect(exitCodeFor(triple)).toBe(0);
    expect(outcomeOf({ type: "finished", vcpuId: 0, reason: "poweroff", exits: [] })).toEqual({ kind: "poweroff", detail: "the guest powered off (ACPI)" });
  });

  test("signals: SIGINT 130, SIGTERM 143; stopped through the API 0; a guest panic 5", () => {
    expect(exitCodeFor({ kind: "signal", detail: "stopped by SIGINT" })).toBe(130);
    expect(exitCodeFor({ kind: "signal", detail: "stopped by SIGTERM" })).toBe(143);
    expect(exitCodeFor({ kind: "signal", detail: "stopped by the API" })).toBe(0);
    expect(exitCodeFor({ kind: "panic", detail: "the guest kernel panicked" })).toBe(5);
  });
});
