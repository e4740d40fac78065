import { defineCommand } from "citty";
import { KvmError } from "../../kvm/errors.ts";
import { buildForBoot } from "../../vmm/builder.ts";
import { DEFAULT_CMDLINE, MAX_VCPUS } from "../../vmm/config.ts";
import { VmBuildError } from "../../vmm/errors.ts";
import { runVm, type ConsoleIo, type VmOutcome } from "../../vmm/vmm.ts";
import { EXIT, type ExitCode } from "../exit-codes.ts";
import { CliError, printJson, rejectUnknownFlags, reportError, usageError } from "../output.ts";

const args = {
  kernel: { type: "string", description: "Guest kernel: ELF vmlinux (PVH entry when present) or bzImage", valueHint: "path", required: true },
  initrd: { type: "string", description: "Initial ramdisk (cpio, optionally compressed)", valueHint: "path" },
  cmdline: { type: "string", description: `Extra kernel parameters, after Volt's defaults ("${DEFAULT_CMDLINE}")`, valueHint: "params" },
  mem: { type: "string", description: "Guest memory in MiB", default: "128", valueHint: "MiB" },
  vcpus: { type: "string", description: `Number of vCPUs (1-${MAX_VCPUS})`, default: "1", valueHint: "N" },
  json: { type: "boolean", description: "Console to stderr; one JSON document with the outcome to stdout", default: false },
} as const;

export const runCommand = defineCommand({
  meta: {
    name: "run",
    description:
      "Boot a Linux guest and attach its serial console to this terminal (or pipe).\n\n" +
      "Examples:\n  volt run --kernel vmlinux --initrd initrd.cpio.gz\n" +
      "  volt run --kernel bzImage --initrd initrd.img --mem 512 --vcpus 2 --cmdline 'quiet'\n\n" +
      "Exit status: 0 guest powered off or rebooted, 2 bad input (no VM created), 3 no usable KVM,\n" +
      "5 guest kernel panic, 6 VM failure, 130/143 stopped by SIGINT/SIGTERM.",
  },
  args,
  async run({ args: parsed, rawArgs }) {
    const startedAtMs = performance.timeOrigin + performance.now();
    const json = parsed.json;
    try {
      rejectUnknownFlags(rawArgs, args);
      const memoryMiB = wholeNumber("mem", parsed.mem);
      const vcpus = wholeNumber("vcpus", parsed.vcpus);
      const built = build({ kernelPath: parsed.kernel, memoryMiB, vcpus, ...(parsed.initrd ? { initrdPath: parsed.initrd } : {}), ...(parsed.cmdline ? { cmdline: parsed.cmdline } : {}) });
      let outcome: VmOutcome;
      try {
        outcome = await runVm(built, { console: terminalConsole(json ? process.stderr : process.stdout), startedAtMs });
      } finally {
        built.dispose();
      }
      const exitCode = exitCodeFor(outcome);
      if (json) {
        printJson({ ok: exitCode === EXIT.ok, outcome: outcome.kind, detail: outcome.detail, exitCode, kernel: built.kernel, cmdline: built.cmdline, ...(outcome.bootTimeMs !== undefined ? { bootTimeMs: outcome.bootTimeMs } : {}) });
      } else if (exitCode !== EXIT.ok) {
        process.stderr.write(`volt: ${outcome.detail}\n`);
      }
      process.exitCode = exitCode;
    } catch (error) {
      process.exitCode = reportError(error, json);
    }
  },
});

function wholeNumber(flag: string, value: string): number {
  if (!/^\d+$/.test(value)) throw usageError(`--${flag} must be a whole number (got '${value}')`);
  return Number(value);
}

function build(config: Parameters<typeof buildForBoot>[0]) {
  try {
    return buildForBoot(config);
  } catch (error) {
    if (error instanceof VmBuildError) throw new CliError(error.kind, error.message, EXIT.usage, { cause: error });
    if (error instanceof KvmError) throw new CliError(`kvm-${error.kind}`, error.message, EXIT.kvmUnavailable, { cause: error });
    throw error;
  }
}

function exitCodeFor(outcome: VmOutcome): ExitCode {
  switch (outcome.kind) {
    case "poweroff":
    case "reboot":
      return EXIT.ok;
    case "panic":
      return EXIT.guestPanic;
    case "error":
      return EXIT.vmFailed;
    case "signal":
      return outcome.detail.includes("SIGTERM") ? EXIT.terminated : EXIT.interrupted;
  }
}

/** Guest console on `output`; host stdin to the guest, in raw mode on a terminal (restored on every exit path). */
function terminalConsole(output: NodeJS.WriteStream): ConsoleIo {
  return {
    write: (bytes) => output.write(bytes),
    attachInput(deliver) {
      const stdin = process.stdin;
      const raw = stdin.isTTY === true;
      if (raw) stdin.setRawMode(true);
      const onData = (chunk: Buffer) => deliver(new Uint8Array(chunk));
      stdin.on("data", onData);
      stdin.on("error", () => {});
      const restore = () => {
        if (raw) stdin.setRawMode(false);
      };
      process.once("exit", restore);
      return () => {
        stdin.off("data", onData);
        stdin.pause();
        restore();
      };
    },
  };
}
