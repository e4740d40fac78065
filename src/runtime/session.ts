/**
 * The VM process's side of its runtime directory (`volt run --detach`'s
 * child, or `volt run --id NAME` in the foreground): claim or adopt the
 * directory, write the pid file, serve the console on console.sock with
 * console.log, describe the VM in vm.json once it is configured, and record
 * how it ended in exit.json just before the process exits.
 */
import { existsSync, writeFileSync } from "node:fs";
import { resolve } from "node:path";
import pkg from "../../package.json" with { type: "json" };
import type { VmConfig } from "../vmm/config.ts";
import type { ConsoleIo } from "../vmm/vmm.ts";
import { RuntimeConsole } from "./console.ts";
import { checkSocketPaths, checkVmId, runtimeRoot, vmPaths, type VmPaths } from "./dirs.ts";
import { claimVmDir, processStartTime, writeJsonAtomic, type ExitRecord, type RuntimeRecord } from "./registry.ts";
import { log as rootLog, setLogContext } from "../log/index.ts";

const log = rootLog.withTag("runtime");

export interface RegistrationOptions {
  /** The VM's id; a fresh one when absent (never absent for a detached child: its parent chose it). */
  readonly id?: string;
  /** The directory was claimed by `volt run --detach`, which spawned this process. */
  readonly adopt: boolean;
  /** The control socket, when the user chose one; else the directory's api.sock. */
  readonly apiSocket?: string;
  /** A foreground VM's terminal, which keeps its console too. */
  readonly terminal?: ConsoleIo;
  readonly root?: string;
}

export class VmRegistration {
  readonly paths: VmPaths;
  readonly apiSocket: string;
  readonly console: RuntimeConsole;
  private readonly detached: boolean;
  private closed = false;

  private constructor(paths: VmPaths, apiSocket: string, console: RuntimeConsole, detached: boolean) {
    this.paths = paths;
    this.apiSocket = apiSocket;
    this.console = console;
    this.detached = detached;
  }

  static async open(options: RegistrationOptions): Promise<VmRegistration> {
    const root = options.root ?? runtimeRoot();
    let paths: VmPaths;
    if (options.adopt && options.id !== undefined && existsSync(vmPaths(checkVmId(options.id), root).dir)) {
      paths = vmPaths(options.id, root);
      checkSocketPaths(paths);
    } else {
      paths = claimVmDir(options.id, root);
    }
    writeFileSync(paths.pid, `${process.pid}\n`);
    const console = await RuntimeConsole.open({
      logPath: paths.consoleLog,
      socketPath: paths.consoleSocket,
      ...(options.terminal ? { inner: options.terminal } : {}),
    });
    // From here on every JSON log line of this process names the VM.
    setLogContext({ vm: paths.id });
    log.debug("runtime directory ready", { dir: paths.dir, adopted: options.adopt });
    // Absolute, so `volt ls` from any directory reaches it.
    return new VmRegistration(paths, options.apiSocket !== undefined ? resolve(options.apiSocket) : paths.apiSocket, console, options.adopt);
  }

  get id(): string {
    return this.paths.id;
  }

  /** Describes the VM in vm.json (what `volt ls` and `volt inspect` read). */
  recordStart(config: VmConfig): void {
    const startTime = processStartTime(process.pid);
    const record: RuntimeRecord = {
      id: this.paths.id,
      pid: process.pid,
      ...(startTime !== undefined ? { pidStartTime: startTime } : {}),
      startedAt: new Date().toISOString(),
      detached: this.detached,
      kernel: config.kernelPath,
      ...(config.initrdPath !== undefined ? { initrd: config.initrdPath } : {}),
      ...(config.cmdline !== undefined ? { cmdline: config.cmdline } : {}),
      vcpus: config.vcpus,
      memoryMiB: config.memoryMiB,
      apiSocket: this.apiSocket,
      consoleSocket: this.paths.consoleSocket,
      consoleLog: this.paths.consoleLog,
      voltVersion: pkg.version,
    };
    writeJsonAtomic(this.paths.record, record);
  }

  /** How the process ends: written before it exits, so `volt wait` can return the VM's status. */
  recordExit(exit: Omit<ExitRecord, "endedAt">): void {
    try {
      writeJsonAtomic(this.paths.exit, { ...exit, endedAt: new Date().toISOString() });
    } catch {
      // The directory was removed under us (volt kill): nobody is left to read it.
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.console.close();
  }
}
