import { defineCommand } from "citty";
import { ConfigFileError, loadVmFile } from "../../config/vm-file.ts";
import { EXIT } from "../exit-codes.ts";
import { CliError, printJson, rejectUnknownFlags, reportError } from "../output.ts";
import { describeSandbox, vmPathNeeds } from "../sandbox.ts";

const showArgs = {
  config: { type: "string", description: "Show the Landlock rules for this VM config file (else for a VM with no devices)", valueHint: "path" },
  json: { type: "boolean", description: "One JSON document on stdout", default: false },
} as const;

const showCommand = defineCommand({
  meta: {
    name: "show",
    description:
      "Print the sandbox volt run applies: the seccomp allowlist (system calls, ioctl requests, argument rules) and\n" +
      "the Landlock rules for a VM, with what this kernel's Landlock ABI cannot enforce.\n\n" +
      "Example:\n  volt sandbox show --config vm.json --json",
  },
  args: showArgs,
  run({ args: parsed, rawArgs }) {
    const json = parsed.json;
    try {
      rejectUnknownFlags(rawArgs, showArgs);
      let kernelPath = "/dev/null";
      let file: ReturnType<typeof loadVmFile> = {};
      if (parsed.config !== undefined) {
        try {
          file = loadVmFile(parsed.config);
        } catch (error) {
          if (error instanceof ConfigFileError) throw new CliError("config", error.message, EXIT.usage, { cause: error });
          throw error;
        }
        kernelPath = file.kernel ?? kernelPath;
      }
      const devices = [
        ...(file.drives ?? []).map((d) => ({ kind: "block" as const, path: d.path, readOnly: d.readOnly ?? false })),
        ...(file.nets ?? []).map((n) => ({ kind: "net" as const, tap: n.tap })),
        ...(file.vsock ? [{ kind: "vsock" as const, guestCid: file.vsock.guestCid, udsPath: file.vsock.udsPath }] : []),
      ];
      const needs = vmPathNeeds({
        config: { kernelPath, memoryMiB: 128, vcpus: 1, virtioDevices: devices, ...(file.initrd ? { initrdPath: file.initrd } : {}) },
        snapshotDirs: [],
      });
      const sandbox = describeSandbox(needs);
      if (json) printJson({ ok: true, seccomp: sandbox.seccomp, landlock: sandbox.landlock });
      else {
        const landlock = sandbox.landlock.available
          ? [`landlock ABI ${sandbox.landlock.abi}:`, JSON.stringify(sandbox.landlock.plan, null, 2)]
          : [`landlock: unavailable (${sandbox.landlock.reason})`];
        process.stdout.write([...sandbox.seccompText, "", ...landlock].join("\n") + "\n");
      }
    } catch (error) {
      process.exitCode = reportError(error, json);
    }
  },
});

export const sandboxCommand = defineCommand({
  meta: { name: "sandbox", description: "Inspect the sandbox (Landlock + seccomp) Volt runs VMs in" },
  subCommands: { show: showCommand },
});
