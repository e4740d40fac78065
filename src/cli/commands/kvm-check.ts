import { defineCommand } from "citty";
import { kickSmoke, probeKvm, realModeSmoke, type KvmReport, type SmokeResult } from "../../diagnostics/kvm-check.ts";
import { kvmBackendWarning } from "../../diagnostics/host.ts";
import { KvmError } from "../../kvm/errors.ts";
import { Kvm, DEFAULT_KVM_PATH } from "../../kvm/system.ts";
import { EXIT } from "../exit-codes.ts";
import { CliError, printJson, rejectUnknownFlags, reportError } from "../output.ts";
import { log } from "../../log/index.ts";

const args = {
  json: { type: "boolean", description: "Print one JSON document on stdout (also on failure)", default: false },
  smoke: {
    type: "boolean",
    description: "Also run tiny real-mode guests in a vCPU worker and check their exact KVM exits",
    default: false,
  },
  device: { type: "string", description: "KVM device to use", default: DEFAULT_KVM_PATH, valueHint: "path" },
} as const;

export const kvmCheckCommand = defineCommand({
  meta: {
    name: "kvm-check",
    description:
      "Report the host's KVM: API version and the capabilities Volt uses.\n\n" +
      "Examples:\n  volt kvm-check\n  volt kvm-check --json\n  volt kvm-check --smoke   # also run a guest\n\n" +
      "Exit status: 0 usable, 3 KVM missing or lacking a capability, 4 a smoke guest misbehaved.",
  },
  args,
  async run({ args: parsed, rawArgs }) {
    const json = parsed.json;
    let kvm: Kvm | undefined;
    let reportPrinted = false;
    try {
      rejectUnknownFlags(rawArgs, args);
      kvm = openKvm(parsed.device);
      const report = probeKvm(kvm);
      const smoke = parsed.smoke && report.missingCapabilities.length === 0 ? [await realModeSmoke(kvm), await kickSmoke(kvm)] : [];
      const ok = report.missingCapabilities.length === 0 && smoke.every((s) => s.passed);
      const warning = kvmBackendWarning();
      if (json) printJson({ ok, kvm: report, ...(parsed.smoke ? { smoke } : {}), warnings: warning ? [warning] : [] });
      else printText(report, smoke);
      if (warning) log.withTag("kvm").warn(warning);
      reportPrinted = true;
      if (report.missingCapabilities.length > 0) {
        throw new CliError("missing-capability", `KVM at ${report.path} lacks: ${report.missingCapabilities.join(", ")}`, EXIT.kvmUnavailable);
      }
      if (!ok) throw new CliError("smoke-failed", "a smoke guest did not behave as expected (see above)", EXIT.checkFailed);
    } catch (error) {
      // Once the report is out, the JSON document (with "ok": false) already says what failed.
      process.exitCode = reportError(error, json && !reportPrinted);
    } finally {
      kvm?.close();
    }
  },
});

function openKvm(path: string): Kvm {
  try {
    return Kvm.open(path);
  } catch (error) {
    if (error instanceof KvmError) throw new CliError(`kvm-${error.kind}`, error.message, EXIT.kvmUnavailable, { cause: error });
    throw error;
  }
}

function printText(report: KvmReport, smoke: readonly SmokeResult[]): void {
  const lines = [`KVM device:      ${report.path}`, `API version:     ${report.apiVersion}`, `vCPU mmap size:  ${report.vcpuMmapSize} bytes`, "Capabilities:"];
  for (const [name, value] of Object.entries(report.capabilities)) {
    const required = report.missingCapabilities.includes(name as never) ? "  <- required, MISSING" : "";
    lines.push(`  ${name.replace(/^KVM_CAP_/, "").padEnd(24)} ${String(value).padStart(5)}${required}`);
  }
  for (const s of smoke) {
    lines.push(`Smoke: ${s.passed ? "PASS" : "FAIL"}  ${s.name} (${s.elapsedMs.toFixed(1)} ms; exits: ${s.exits.map((e) => e.reason.replace(/^KVM_EXIT_/, "")).join(", ") || "none"})`);
    if (s.problem) lines.push(`       ${s.problem}`);
  }
  process.stdout.write(`${lines.join("\n")}\n`);
}
