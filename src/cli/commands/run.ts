import { defineCommand } from "citty";
import { DriveOptionError, parseDriveOption, parseNetOption, parseVsockOption, repeatedOption } from "../../config/device-options.ts";
import { ConfigFileError, loadVmFile, type VmFile } from "../../config/vm-file.ts";
import type { VirtioDeviceSpec } from "../../devices/virtio/factory.ts";
import { kvmBackendWarning } from "../../diagnostics/host.ts";
import { buildForBoot, validateInputs } from "../../vmm/builder.ts";
import { isSandboxed } from "../../sandbox/landlock.ts";
import { DEFAULT_CMDLINE, DEFAULT_MEMORY_MIB, DEFAULT_VCPUS, MAX_VCPUS, type VmConfig } from "../../vmm/config.ts";
import { EXIT } from "../exit-codes.ts";
import { CliError, rejectUnknownFlags, reportError, usageError } from "../output.ts";
import { buildOrExplain, checkApiSocket, logBuilt, reportOutcome, runSession, terminalConsole } from "../vm-session.ts";
import { log, setLogContext } from "../../log/index.ts";
import { registerRun, runDetached, type RunRegistration } from "../../runtime/cli-glue.ts";
import { runtimeRoot } from "../../runtime/dirs.ts";
import { defaultInitramfs, resolveKernel } from "../defaults.ts";
import { SANDBOX_FLAGS, enterLandlock, enterSeccomp, sandboxChoice, vmPathNeeds } from "../sandbox.ts";
import { mkdirSync } from "node:fs";
import { JAIL_FLAGS, jailRequested, runJailed } from "./jail.ts";

// No citty defaults for values a config file may set: a flag given on the command line must be told apart from one left out.
const args = {
  config: { type: "string", description: "VM config file (JSON); flags given on the command line override its fields", valueHint: "path" },
  kernel: { type: "string", description: "Guest kernel: ELF vmlinux (PVH entry when present) or bzImage", valueHint: "path" },
  initrd: { type: "string", description: "Initial ramdisk (cpio, optionally compressed)", valueHint: "path" },
  cmdline: { type: "string", description: `Extra kernel parameters, after Volt's defaults ("${DEFAULT_CMDLINE}")`, valueHint: "params" },
  mem: { type: "string", description: `Guest memory in MiB (default ${DEFAULT_MEMORY_MIB})`, valueHint: "MiB" },
  vcpus: { type: "string", description: `Number of vCPUs, 1-${MAX_VCPUS} (default ${DEFAULT_VCPUS})`, valueHint: "N" },
  drive: {
    type: "string",
    description: "Add a virtio-blk drive (repeatable): path=IMAGE[,ro][,root][,id=SERIAL]; root boots from it as /dev/vda",
    valueHint: "spec",
  },
  rng: { type: "boolean", description: "Add a virtio-rng device (the guest's /dev/hwrng, fed from the host's CSPRNG)" },
  net: {
    type: "string",
    description: "Add a virtio-net interface on a TAP device (repeatable): tap=NAME[,mac=52:54:00:12:34:56]; Volt creates the tap if it may",
    valueHint: "spec",
  },
  vsock: {
    type: "string",
    description: "Add virtio-vsock: cid=N,uds=PATH; host programs connect to PATH and send 'CONNECT <port>', guest connections to port P reach PATH_P",
    valueHint: "spec",
  },
  "boot-timer": { type: "boolean", description: "Map the boot-timer device; the outcome reports bootTimeMs when the guest writes it" },
  "on-reboot": { type: "string", description: "What a guest reboot does: exit (default) or restart the VM from its kernel", valueHint: "exit|restart" },
  "api-socket": { type: "string", description: "Serve the VM's control API (HTTP/JSON: pause, resume, stop, snapshot) on this Unix socket", valueHint: "path" },
  json: { type: "boolean", description: "Console to stderr; one JSON document with the outcome to stdout", default: false },
  detach: {
    type: "boolean",
    description: "Run the VM in the background: prints its id once its API answers (--json: id, pid, apiSocket, consoleLog); see volt ls, logs, console, stop",
  },
  id: {
    type: "string",
    description: "Name the VM (1-63 of A-Z a-z 0-9 _ . -) and give it a runtime dir, ${XDG_RUNTIME_DIR:-/run}/volt/ID; --detach picks one if absent",
    valueHint: "name",
  },
  "detached-child": { type: "boolean", description: "(internal) the background half of --detach" },
  ...SANDBOX_FLAGS,
  ...JAIL_FLAGS,
} as const;

export const runCommand = defineCommand({
  meta: {
    name: "run",
    description:
      "Boot a Linux guest and attach its serial console to this terminal (or pipe).\n\n" +
      "Examples:\n  volt run --kernel vmlinux --initrd initrd.cpio.gz\n" +
      "  volt run --kernel bzImage --initrd initrd.img --mem 512 --vcpus 2 --cmdline 'quiet'\n" +
      "  volt run --config vm.json --vcpus 4      (the flag overrides the file)\n\n" +
      "  volt run --kernel vmlinux --drive path=rootfs.ext4,root --drive path=data.img,ro,id=data --rng\n" +
      "  volt run --kernel vmlinux --initrd initrd.img --net tap=tap0 --vsock cid=3,uds=/tmp/vm.vsock\n" +
      "  volt run --kernel vmlinux --initrd initrd.img --detach --id web1   (then: volt ls, volt console web1, volt stop web1)\n\n" +
      "Config file fields: kernel, initrd, cmdline, memMiB, vcpus, bootTimer, onReboot, rng, drives (a list of\n" +
      "{path, readOnly, root, id}), nets (a list of {tap, mac}), vsock ({guestCid, udsPath}); relative paths are\n" +
      "relative to the file.\n\n" +
      "Exit status: 0 guest powered off or rebooted, 2 bad input (no VM created), 3 no usable KVM,\n" +
      "5 guest kernel panic, 6 VM failure, 130/143 stopped by SIGINT/SIGTERM.",
  },
  args,
  async run({ args: parsed, rawArgs }) {
    const startedAtMs = performance.timeOrigin + performance.now();
    const json = parsed.json;
    let registration: RunRegistration | undefined;
    try {
      rejectUnknownFlags(rawArgs, args);
      if (jailRequested(parsed)) {
        process.exitCode = await runJailed({ parsed, rawArgs, ...resolveConfig(parsed, rawArgs) });
        return;
      }
      const { config, onReboot, alsoRead } = resolveConfig(parsed, rawArgs);
      const givenApiSocket = typeof parsed["api-socket"] === "string" ? parsed["api-socket"] : undefined;
      const id = typeof parsed.id === "string" ? parsed.id : undefined;
      // Every later JSON log line of this VM's process names it (a --detach parent has no id until it claims one).
      if (id !== undefined && !parsed.detach) setLogContext({ vm: id });
      if (parsed.detach) {
        process.exitCode = await runDetached({ runArgs: rawArgs, json, ...(id !== undefined ? { id } : {}), ...(givenApiSocket !== undefined ? { apiSocket: givenApiSocket } : {}) });
        return;
      }
      // Bad input is reported as such (exit 2) before the sandbox, whose policy needs every path to exist.
      if (!isSandboxed()) for (const device of buildOrExplain(() => validateInputs(config)).virtioDevices) device.release?.();
      // Then the sandbox: this process restricts itself and re-executes inside Landlock (returning only there).
      const sandbox = sandboxChoice(parsed);
      const snapshotDirs = repeatedOption(rawArgs, "snapshot-dir");
      const registered = id !== undefined || parsed["detached-child"] === true;
      if (registered) mkdirSync(runtimeRoot(), { recursive: true, mode: 0o700 });
      enterLandlock(
        sandbox,
        vmPathNeeds({
          config,
          ...(givenApiSocket !== undefined ? { apiSocket: givenApiSocket } : {}),
          // A registered VM keeps its API socket, console socket and log under the runtime root.
          snapshotDirs: [...snapshotDirs, ...(registered ? [runtimeRoot()] : [])],
          extraReadOnly: alsoRead,
          ...(registered ? { extraSocketDirs: [runtimeRoot()] } : {}),
        }),
      );
      const terminal = () => terminalConsole(json ? process.stderr : process.stdout);
      if (id !== undefined || parsed["detached-child"]) {
        registration = await registerRun({ detachedChild: parsed["detached-child"] === true, terminal, ...(id !== undefined ? { id } : {}), ...(givenApiSocket !== undefined ? { apiSocket: givenApiSocket } : {}) });
      }
      const apiSocket = registration?.apiSocket ?? givenApiSocket;
      await checkApiSocket(apiSocket);
      const consoleIo = registration?.console ?? terminal();
      const warning = kvmBackendWarning();
      if (warning) log.withTag("kvm").warn(warning);
      let restarts = 0;
      for (;;) {
        const built = buildOrExplain(() => buildForBoot(config));
        logBuilt(built, "boot");
        registration?.recordStart(config);
        if (restarts === 0) enterSeccomp(sandbox, { snapshotsToDisk: snapshotDirs.length > 0 || registered });
        const outcome = await runSession(built, {
          console: consoleIo,
          startedAtMs,
          ...(apiSocket !== undefined ? { apiSocket } : {}),
          ...(sandbox.landlock && snapshotDirs.length > 0 ? { snapshotDirs } : sandbox.landlock ? { snapshotDirs: [] } : {}),
        });
        if (outcome.kind === "reboot" && onReboot === "restart") {
          restarts++;
          // With --json the outcome document says how many restarts there were; the line stays out of the way unless asked for.
          (json ? log.debug : log.info).call(log, `${outcome.detail}; restarting the VM (restart ${restarts})`, { restarts });
          continue;
        }
        process.exitCode = reportOutcome(outcome, built, json, { restarts });
        registration?.recordOutcome(process.exitCode, outcome);
        return;
      }
    } catch (error) {
      process.exitCode = reportError(error, json);
      registration?.recordFailure(error, process.exitCode);
    } finally {
      registration?.close();
    }
  },
});

type ParsedArgs = { [K in keyof typeof args]?: string | boolean | undefined };

/** Config file first, then the flags on top of it, then defaults for whatever neither gave. */
function resolveConfig(parsed: ParsedArgs, rawArgs: readonly string[]): { config: VmConfig; onReboot: "exit" | "restart"; alsoRead: string[] } {
  let file: VmFile = {};
  if (typeof parsed.config === "string") {
    try {
      file = loadVmFile(parsed.config);
    } catch (error) {
      if (error instanceof ConfigFileError) throw new CliError("config", error.message, EXIT.usage, { cause: error });
      throw error;
    }
  }
  // A path, a stored kernel's name, or the store's default kernel.
  const kernel = resolveKernel(typeof parsed.kernel === "string" ? parsed.kernel : file.kernel);
  const kernelPath = kernel.path;
  let initrdPath = typeof parsed.initrd === "string" ? parsed.initrd : file.initrd;
  const cmdline = typeof parsed.cmdline === "string" ? parsed.cmdline : file.cmdline;
  const memoryMiB = typeof parsed.mem === "string" ? wholeNumber("mem", parsed.mem) : (file.memMiB ?? DEFAULT_MEMORY_MIB);
  const vcpus = typeof parsed.vcpus === "string" ? wholeNumber("vcpus", parsed.vcpus) : (file.vcpus ?? DEFAULT_VCPUS);
  const bootTimer = typeof parsed["boot-timer"] === "boolean" ? parsed["boot-timer"] : (file.bootTimer ?? false);
  const onRebootFlag = parsed["on-reboot"];
  if (typeof onRebootFlag === "string" && onRebootFlag !== "exit" && onRebootFlag !== "restart") {
    throw usageError(`--on-reboot must be exit or restart (got '${onRebootFlag}')`);
  }
  const onReboot = (onRebootFlag as "exit" | "restart" | undefined) ?? file.onReboot ?? "exit";
  let driveFlags: VirtioDeviceSpec[];
  let netFlags: VirtioDeviceSpec[];
  let vsockFlag: VirtioDeviceSpec | undefined;
  try {
    driveFlags = repeatedOption(rawArgs, "drive").map(parseDriveOption);
    netFlags = repeatedOption(rawArgs, "net").map(parseNetOption);
    const vsocks = repeatedOption(rawArgs, "vsock").map(parseVsockOption);
    if (vsocks.length > 1) throw new DriveOptionError("--vsock can be given once (a VM has one vsock device)");
    vsockFlag = vsocks[0];
  } catch (error) {
    if (error instanceof DriveOptionError) throw usageError(error.message);
    throw error;
  }
  // Drives add up (file first, then flags); a device kind is a switch (the flag wins).
  const fileDrives: VirtioDeviceSpec[] = (file.drives ?? []).map((drive) => ({
    kind: "block",
    path: drive.path,
    readOnly: drive.readOnly ?? false,
    ...(drive.root ? { root: true } : {}),
    ...(drive.id !== undefined ? { id: drive.id } : {}),
    ...(drive.rateLimit ? { rateLimit: drive.rateLimit } : {}),
  }));
  const rng = typeof parsed.rng === "boolean" ? parsed.rng : (file.rng ?? false);
  const fileNets: VirtioDeviceSpec[] = (file.nets ?? []).map((net) => ({
    kind: "net",
    tap: net.tap,
    ...(net.mac !== undefined ? { mac: net.mac } : {}),
    ...(net.rxRateLimit ? { rxRateLimit: net.rxRateLimit } : {}),
    ...(net.txRateLimit ? { txRateLimit: net.txRateLimit } : {}),
  }));
  const fileVsock: VirtioDeviceSpec | undefined = file.vsock ? { kind: "vsock", guestCid: file.vsock.guestCid, udsPath: file.vsock.udsPath } : undefined;
  const vsock = vsockFlag ?? fileVsock;
  const virtioDevices: VirtioDeviceSpec[] = [
    ...fileDrives,
    ...driveFlags,
    ...fileNets,
    ...netFlags,
    ...(vsock ? [vsock] : []),
    ...(rng ? [{ kind: "rng" } as const] : []),
  ];
  // Neither an initrd nor a root drive: the default userland, a busybox shell on the console.
  if (initrdPath === undefined && !virtioDevices.some((d) => d.kind === "block" && d.root)) initrdPath = defaultInitramfs(kernel.modulePaths);
  return {
    config: { kernelPath, memoryMiB, vcpus, bootTimer, virtioDevices, ...(initrdPath !== undefined ? { initrdPath } : {}), ...(cmdline !== undefined ? { cmdline } : {}) },
    onReboot,
    // What resolving the configuration reads, which the re-executed volt reads again inside the sandbox.
    alsoRead: [...(typeof parsed.config === "string" ? [parsed.config] : []), ...(kernel.storeDir !== undefined ? [kernel.storeDir] : [])],
  };
}

function wholeNumber(flag: string, value: string): number {
  if (!/^\d+$/.test(value)) throw usageError(`--${flag} must be a whole number (got '${value}')`);
  return Number(value);
}



