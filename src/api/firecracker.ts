/**
 * Firecracker's API shape, so tools written for Firecracker can configure,
 * start and drive a Volt VM (docs/firecracker-api.md lists what is covered).
 *
 * Before InstanceStart (`volt api --socket PATH`), requests build up a
 * configuration: PUT /machine-config, /boot-source, /drives/{id},
 * /network-interfaces/{id}, /vsock, /entropy; PUT /snapshot/load starts a VM
 * from a snapshot instead. PUT /actions {"action_type": "InstanceStart"}
 * builds and starts the VM. After that, configuration is refused as
 * Firecracker refuses it, and PATCH /vm, PUT /snapshot/create and GET
 * requests drive the running VM. The same routes are mounted on every Volt
 * control socket (`volt run --api-socket`), as a VM that has started.
 *
 * Answers are Firecracker's: 204 with no body on success, 200 with JSON for
 * GETs, and 400 {"fault_message": "..."} for every refusal.
 */
import { existsSync, lstatSync, realpathSync, symlinkSync, unlinkSync } from "node:fs";
import { join, resolve } from "node:path";
import * as v from "valibot";
import pkg from "../../package.json" with { type: "json" };
import { MAX_MEMORY_MIB } from "../config/vm-file.ts";
import type { VirtioDeviceSpec } from "../devices/virtio/factory.ts";
import { MEMORY_FILE } from "../snapshot/files.ts";
import { DEFAULT_MEMORY_MIB, DEFAULT_VCPUS, MAX_VCPUS, type VmConfig } from "../vmm/config.ts";
import type { RunningVm } from "../vmm/vmm.ts";

/** What the API needs of a running VM (RunningVm has it; unit tests pass a stand-in). */
export type ControlledVm = Pick<RunningVm, "state" | "pause" | "resume" | "stop" | "sendCtrlAltDel">;

/** How the API builds, restores and snapshots VMs (real KVM in `volt api`; a fake in unit tests). */
export interface FirecrackerBackend {
  /** Builds and starts a VM; an Error's message is the fault message (nothing was started). */
  boot?(config: VmConfig): Promise<ControlledVm>;
  /** Starts a VM from a Volt snapshot directory. */
  restore?(snapshotDir: string, options: { resume: boolean }): Promise<ControlledVm>;
  /** Writes a Volt snapshot directory (replacing one that is there, as Firecracker overwrites its files). */
  snapshot?(vm: ControlledVm, dir: string): Promise<unknown>;
}

export const NOT_AFTER_START = "The requested operation is not supported after starting the microVM.";
export const NOT_BEFORE_START = "The requested operation is not supported before starting the microVM.";

const ID = v.pipe(
  v.string("must be a string"),
  v.regex(/^[A-Za-z0-9_]{1,64}$/, "must be 1-64 letters, digits or '_'"),
);
const PATH = v.pipe(v.string("must be a path (a string)"), v.nonEmpty("must not be empty"));
const MAC = v.pipe(v.string("must be a MAC address"), v.regex(/^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$/, "must look like 06:00:AC:10:00:02"));

const MachineConfig = v.strictObject({
  vcpu_count: v.pipe(v.number("must be a number"), v.integer(`must be a whole number from 1 to ${MAX_VCPUS}`), v.minValue(1, `must be a whole number from 1 to ${MAX_VCPUS}`), v.maxValue(MAX_VCPUS, `must be a whole number from 1 to ${MAX_VCPUS}`)),
  mem_size_mib: v.pipe(v.number("must be a number"), v.integer("must be a whole number of MiB"), v.minValue(1, "must be at least 1"), v.maxValue(MAX_MEMORY_MIB, `must be at most ${MAX_MEMORY_MIB}`)),
  smt: v.optional(v.literal(false, "true is not supported: Volt has no SMT topology")),
  track_dirty_pages: v.optional(v.literal(false, "true is not supported: Volt has no diff snapshots")),
  cpu_template: v.optional(v.nullable(v.literal("None", 'only "None" is supported (Volt has no CPU templates)'))),
  huge_pages: v.optional(v.literal("None", 'only "None" is supported')),
});
const MachineConfigPatch = v.partial(MachineConfig);

const BootSource = v.strictObject({
  kernel_image_path: PATH,
  initrd_path: v.optional(v.nullable(PATH)),
  boot_args: v.optional(v.nullable(v.string("must be a string of kernel parameters"))),
});

/** A field Firecracker has and Volt does not: refused when set to anything but null. */
const unsupported = (why: string) => v.optional(v.custom<null>((value) => value === null, why));

const Drive = v.strictObject({
  drive_id: ID,
  path_on_host: PATH,
  is_root_device: v.boolean("must be true or false"),
  is_read_only: v.optional(v.boolean("must be true or false")),
  partuuid: unsupported("is not supported: Volt boots a root drive as /dev/vda"),
  cache_type: v.optional(v.picklist(["Unsafe", "Writeback"], 'must be "Unsafe" or "Writeback"')),
  io_engine: v.optional(v.picklist(["Sync", "Async"], 'must be "Sync" or "Async"')),
  rate_limiter: unsupported("is not supported by Volt (yet)"),
  socket: unsupported("is not supported: Volt has no vhost-user drives"),
});

const NetworkInterface = v.strictObject({
  iface_id: ID,
  host_dev_name: v.pipe(v.string("must be a tap name"), v.nonEmpty("must not be empty"), v.maxLength(15, "must be at most 15 bytes")),
  guest_mac: v.optional(v.nullable(MAC)),
  rx_rate_limiter: unsupported("is not supported by Volt (yet)"),
  tx_rate_limiter: unsupported("is not supported by Volt (yet)"),
});

const Vsock = v.strictObject({
  guest_cid: v.pipe(v.number("must be a number"), v.integer("must be a whole number"), v.minValue(3, "must be at least 3"), v.maxValue(0xffff_fffe, "must be at most 4294967294")),
  uds_path: PATH,
  vsock_id: v.optional(v.string("must be a string")),
});

const Entropy = v.strictObject({ rate_limiter: unsupported("is not supported by Volt (yet)") });

const Action = v.strictObject({
  action_type: v.picklist(["InstanceStart", "SendCtrlAltDel", "FlushMetrics"], 'must be "InstanceStart", "SendCtrlAltDel" or "FlushMetrics"'),
});

const VmState = v.strictObject({ state: v.picklist(["Paused", "Resumed"], 'must be "Paused" or "Resumed"') });

const SnapshotCreate = v.strictObject({
  snapshot_path: PATH,
  mem_file_path: PATH,
  snapshot_type: v.optional(v.literal("Full", '"Diff" is not supported: Volt writes full snapshots')),
  version: v.optional(v.string("must be a string")),
});

const SnapshotLoad = v.strictObject({
  snapshot_path: PATH,
  mem_file_path: v.optional(PATH),
  mem_backend: v.optional(
    v.strictObject({
      backend_type: v.literal("File", '"Uffd" is not supported: Volt maps the memory file copy-on-write'),
      backend_path: PATH,
    }),
  ),
  enable_diff_snapshots: v.optional(v.literal(false, "true is not supported: Volt has no diff snapshots")),
  track_dirty_pages: v.optional(v.literal(false, "true is not supported: Volt has no diff snapshots")),
  resume_vm: v.optional(v.boolean("must be true or false")),
  network_overrides: v.optional(v.array(v.unknown(), "must be a list")),
});

type DriveBody = v.InferOutput<typeof Drive>;
type NetBody = v.InferOutput<typeof NetworkInterface>;
type MachineBody = v.InferOutput<typeof MachineConfig>;

/** Endpoints Firecracker has and Volt does not: a clear refusal rather than "no such path". */
const UNSUPPORTED_PATHS: Record<string, string> = {
  "/logger": "Volt logs to stderr; the logger cannot be configured through the API",
  "/metrics": "Volt has no metrics sink to configure",
  "/mmds": "Volt has no MMDS",
  "/mmds/config": "Volt has no MMDS",
  "/balloon": "Volt has no balloon device",
  "/balloon/statistics": "Volt has no balloon device",
  "/cpu-config": "Volt has no custom CPU templates",
  "/serial": "Volt's serial console is always on",
  "/hotplug/memory": "Volt has no memory hotplug",
};

export class FaultError extends Error {
  override name = "FaultError";
}

export interface FirecrackerApiOptions {
  readonly backend: FirecrackerBackend;
  /** GET /'s id (Firecracker's --id); default "anonymous-instance". */
  readonly instanceId?: string;
  /** A VM that is already running (mounted on `volt run --api-socket`), with the config it was built from. */
  readonly running?: { readonly vm: ControlledVm; readonly config: VmConfig };
}

export class FirecrackerApi {
  private readonly backend: FirecrackerBackend;
  private readonly instanceId: string;
  private machine: MachineBody = { vcpu_count: DEFAULT_VCPUS, mem_size_mib: DEFAULT_MEMORY_MIB, smt: false, track_dirty_pages: false, huge_pages: "None" };
  private bootSource: v.InferOutput<typeof BootSource> | undefined;
  private readonly drives = new Map<string, DriveBody>();
  private readonly nets = new Map<string, NetBody>();
  private vsock: v.InferOutput<typeof Vsock> | undefined;
  private entropy = false;
  private phase: "configuring" | "starting" | "started" = "configuring";
  private vmHandle: ControlledVm | undefined;
  /** Called once the VM runs (after InstanceStart or a snapshot load). */
  onStarted: ((vm: ControlledVm) => void) | undefined;

  constructor(options: FirecrackerApiOptions) {
    this.backend = options.backend;
    this.instanceId = options.instanceId ?? "anonymous-instance";
    if (options.running) {
      this.adoptConfig(options.running.config);
      this.vmHandle = options.running.vm;
      this.phase = "started";
    }
  }

  get vm(): ControlledVm | undefined {
    return this.vmHandle;
  }

  /** Firecracker's instance state: "Not started", "Running" or "Paused". */
  get state(): "Not started" | "Running" | "Paused" {
    if (!this.vmHandle) return "Not started";
    return this.vmHandle.state === "paused" ? "Paused" : "Running";
  }

  /** The VmConfig the configuration so far describes (what InstanceStart boots). */
  vmConfig(): VmConfig {
    if (!this.bootSource) throw new FaultError("Cannot start microvm without kernel configuration.");
    const drives = [...this.drives.values()];
    const virtioDevices: VirtioDeviceSpec[] = [
      ...drives.map((drive): VirtioDeviceSpec => ({
        kind: "block",
        path: drive.path_on_host,
        readOnly: drive.is_read_only ?? false,
        ...(drive.is_root_device ? { root: true } : {}),
        // The guest reads the drive id as the disk's serial, when it fits virtio-blk's 20 bytes.
        ...(drive.drive_id.length <= 20 ? { id: drive.drive_id } : {}),
      })),
      ...[...this.nets.values()].map((net): VirtioDeviceSpec => ({ kind: "net", tap: net.host_dev_name, ...(net.guest_mac ? { mac: net.guest_mac } : {}) })),
      ...(this.vsock ? [{ kind: "vsock", guestCid: this.vsock.guest_cid, udsPath: this.vsock.uds_path } as const] : []),
      ...(this.entropy ? [{ kind: "rng" } as const] : []),
    ];
    return {
      kernelPath: this.bootSource.kernel_image_path,
      ...(this.bootSource.initrd_path ? { initrdPath: this.bootSource.initrd_path } : {}),
      ...(this.bootSource.boot_args ? { cmdline: this.bootSource.boot_args } : {}),
      memoryMiB: this.machine.mem_size_mib,
      vcpus: this.machine.vcpu_count,
      virtioDevices,
    };
  }

  /** Firecracker's GET /vm/config document. */
  fullConfig(): Record<string, unknown> {
    return {
      "boot-source": this.bootSource ?? null,
      drives: [...this.drives.values()],
      "machine-config": this.machine,
      "network-interfaces": [...this.nets.values()],
      vsock: this.vsock ?? null,
      entropy: this.entropy ? {} : null,
      balloon: null,
      logger: null,
      metrics: null,
      "mmds-config": null,
      "cpu-config": null,
    };
  }

  /** Answers a Firecracker request, or returns undefined when the path is not one of Firecracker's. */
  async handle(request: Request): Promise<Response | undefined> {
    const { pathname } = new URL(request.url);
    const route = this.route(request, pathname);
    if (route === undefined) return undefined;
    try {
      return await route();
    } catch (error) {
      if (error instanceof FaultError) return fault(error.message);
      return fault(`Internal error: ${(error as Error).message}`);
    }
  }

  private route(request: Request, path: string): (() => Promise<Response>) | undefined {
    const method = request.method;
    const invalid = () => Promise.resolve(fault(`Invalid request method and/or path: ${method} ${path}.`));
    const drive = path.match(/^\/drives\/([^/]*)$/);
    const net = path.match(/^\/network-interfaces\/([^/]*)$/);
    const on = (allowed: string, handler: () => Promise<Response>) => (method === allowed ? handler : invalid);
    if (path === "/") return on("GET", async () => json(this.describe()));
    if (path === "/machine-config") {
      if (method === "GET") return async () => json(this.machine);
      if (method === "PUT") return () => this.configure(request, MachineConfig, (body) => (this.machine = { ...this.machine, ...body }));
      if (method === "PATCH") return () => this.configure(request, MachineConfigPatch, (body) => (this.machine = { ...this.machine, ...body }));
      return invalid;
    }
    if (path === "/vm/config") return on("GET", async () => json(this.fullConfig()));
    if (path === "/boot-source") return on("PUT", () => this.configure(request, BootSource, (body) => (this.bootSource = body)));
    if (drive) {
      if (method === "PATCH") return () => this.refuseAfterStart("PATCH /drives (Volt cannot swap a running VM's drive)");
      return on("PUT", () => this.configure(request, Drive, (body) => this.putDrive(decodeURIComponent(drive[1]!), body)));
    }
    if (net) {
      if (method === "PATCH") return () => this.refuseAfterStart("PATCH /network-interfaces (Volt has no rate limiters to update)");
      return on("PUT", () => this.configure(request, NetworkInterface, (body) => this.putNet(decodeURIComponent(net[1]!), body)));
    }
    if (path === "/vsock") return on("PUT", () => this.configure(request, Vsock, (body) => (this.vsock = body)));
    if (path === "/entropy") return on("PUT", () => this.configure(request, Entropy, () => (this.entropy = true)));
    if (path === "/actions") return on("PUT", () => this.action(request));
    if (path === "/vm") return method === "PATCH" ? () => this.patchVm(request) : undefined;
    if (path === "/snapshot/create") return on("PUT", () => this.snapshotCreate(request));
    if (path === "/snapshot/load") return on("PUT", () => this.snapshotLoad(request));
    const unsupportedWhy = UNSUPPORTED_PATHS[path];
    if (unsupportedWhy !== undefined) return () => Promise.resolve(fault(`${path} is not supported: ${unsupportedWhy}.`));
    return undefined;
  }

  private describe() {
    return { id: this.instanceId, state: this.state, vmm_version: pkg.version, app_name: "Volt" };
  }

  private async refuseAfterStart(what: string): Promise<Response> {
    if (this.phase !== "configuring") return fault(NOT_AFTER_START);
    return fault(`${what} is not supported.`);
  }

  /** A pre-boot configuration request: checked in full, then applied, or refused with nothing changed. */
  private async configure<S extends v.GenericSchema>(request: Request, schema: S, apply: (body: v.InferOutput<S>) => void): Promise<Response> {
    if (this.phase === "started") return fault(NOT_AFTER_START);
    if (this.phase === "starting") return fault("The microVM is starting; its configuration can no longer change.");
    const body = parse(schema, await jsonBody(request));
    apply(body);
    return noContent();
  }

  private putDrive(pathId: string, body: DriveBody): void {
    if (pathId !== body.drive_id) throw new FaultError(`The id from the path [${pathId}] does not match the id from the body [${body.drive_id}]!`);
    if (body.is_root_device && [...this.drives.values()].some((d) => d.is_root_device && d.drive_id !== body.drive_id)) {
      throw new FaultError("A root block device already exists!");
    }
    this.drives.set(body.drive_id, body);
  }

  private putNet(pathId: string, body: NetBody): void {
    if (pathId !== body.iface_id) throw new FaultError(`The id from the path [${pathId}] does not match the id from the body [${body.iface_id}]!`);
    for (const other of this.nets.values()) {
      if (other.iface_id === body.iface_id) continue;
      if (other.host_dev_name === body.host_dev_name) throw new FaultError(`The host device ${body.host_dev_name} is already used by interface ${other.iface_id}.`);
      if (body.guest_mac && other.guest_mac?.toLowerCase() === body.guest_mac.toLowerCase()) throw new FaultError(`The guest MAC address ${body.guest_mac} is already in use.`);
    }
    this.nets.set(body.iface_id, body);
  }

  private async action(request: Request): Promise<Response> {
    const { action_type } = parse(Action, await jsonBody(request));
    switch (action_type) {
      case "InstanceStart":
        return this.start();
      case "SendCtrlAltDel":
        return this.ctrlAltDel();
      case "FlushMetrics":
        return fault("FlushMetrics is not supported: Volt has no metrics sink.");
    }
  }

  private ctrlAltDel(): Response {
    const vm = this.startedVm();
    if (vm.state === "stopping") return fault("The microVM is stopping.");
    if (vm.state === "paused") return fault("SendCtrlAltDel needs a running microVM; this one is paused.");
    if (vm.sendCtrlAltDel() === "buffer-full") return fault("The guest has not read the keys sent before (is its i8042 driver loaded?).");
    return noContent();
  }

  private async start(): Promise<Response> {
    if (this.phase === "started") return fault(NOT_AFTER_START);
    if (this.phase === "starting") return fault("The microVM is already starting.");
    const config = this.vmConfig();
    if (!this.backend.boot) return fault("This API cannot start a VM.");
    this.phase = "starting";
    try {
      this.vmHandle = await this.backend.boot(config);
    } catch (error) {
      // Nothing was started: the configuration can be fixed and InstanceStart tried again.
      this.phase = "configuring";
      return fault(`Cannot start the microVM: ${(error as Error).message}`);
    }
    this.phase = "started";
    this.onStarted?.(this.vmHandle);
    return noContent();
  }

  private async patchVm(request: Request): Promise<Response> {
    const body = parse(VmState, await jsonBody(request));
    const vm = this.startedVm();
    if (vm.state === "stopping") return fault("The microVM is stopping.");
    // Idempotent, as in Firecracker: pausing a paused VM (or resuming a running one) succeeds and changes nothing.
    if (body.state === "Paused") await vm.pause();
    else await vm.resume();
    return noContent();
  }

  private startedVm(): ControlledVm {
    if (this.phase !== "started" || !this.vmHandle) throw new FaultError(NOT_BEFORE_START);
    return this.vmHandle;
  }

  /** Firecracker writes a state file and a memory file; Volt writes its snapshot directory at snapshot_path and links mem_file_path to its memory. */
  private async snapshotCreate(request: Request): Promise<Response> {
    const body = parse(SnapshotCreate, await jsonBody(request));
    const vm = this.startedVm();
    if (vm.state === "stopping") return fault("The microVM is stopping.");
    if (!this.backend.snapshot) return fault("This API cannot write snapshots.");
    const dir = resolve(body.snapshot_path);
    const memoryInDir = join(dir, MEMORY_FILE);
    const memPath = resolve(body.mem_file_path);
    if (memPath !== memoryInDir && (memPath === dir || memPath.startsWith(`${dir}/`))) {
      throw new FaultError(`mem_file_path must be outside the snapshot directory ${dir}, or be ${memoryInDir}.`);
    }
    try {
      await this.backend.snapshot(vm, dir);
    } catch (error) {
      return fault(`Cannot create the snapshot: ${(error as Error).message}`);
    }
    if (memPath !== memoryInDir) {
      try {
        if (existsOrLink(memPath)) unlinkSync(memPath);
        symlinkSync(memoryInDir, memPath);
      } catch (error) {
        return fault(`The snapshot was written to ${dir}, but mem_file_path ${memPath} could not be linked to its memory: ${(error as Error).message}`);
      }
    }
    return noContent();
  }

  private async snapshotLoad(request: Request): Promise<Response> {
    const body = parse(SnapshotLoad, await jsonBody(request));
    if (this.phase !== "configuring") return fault(NOT_AFTER_START);
    if (this.bootSource || this.drives.size > 0 || this.nets.size > 0 || this.vsock) {
      return fault("Loading a microVM snapshot not allowed after configuring boot-specific resources.");
    }
    if ((body.mem_file_path === undefined) === (body.mem_backend === undefined)) throw new FaultError("Give exactly one of mem_file_path and mem_backend.");
    if (body.network_overrides && body.network_overrides.length > 0) throw new FaultError("network_overrides is not supported: a restored VM reopens the taps it had.");
    if (!this.backend.restore) return fault("This API cannot load snapshots.");
    const dir = resolve(body.snapshot_path);
    const memPath = resolve(body.mem_file_path ?? body.mem_backend!.backend_path);
    if (!sameFile(memPath, join(dir, MEMORY_FILE))) {
      throw new FaultError(`snapshot_path must be a Volt snapshot directory and mem_file_path its ${MEMORY_FILE} (or a link to it); ${memPath} is not ${join(dir, MEMORY_FILE)}.`);
    }
    this.phase = "starting";
    try {
      this.vmHandle = await this.backend.restore(dir, { resume: body.resume_vm ?? false });
    } catch (error) {
      this.phase = "configuring";
      return fault(`Cannot load the snapshot: ${(error as Error).message}`);
    }
    this.phase = "started";
    this.onStarted?.(this.vmHandle);
    return noContent();
  }

  /** The Firecracker view of a VM Volt built from its own config (a `volt run` VM). */
  private adoptConfig(config: VmConfig): void {
    this.machine = { ...this.machine, vcpu_count: config.vcpus, mem_size_mib: config.memoryMiB };
    if (config.kernelPath !== "(snapshot)") {
      this.bootSource = {
        kernel_image_path: config.kernelPath,
        ...(config.initrdPath !== undefined ? { initrd_path: config.initrdPath } : {}),
        ...(config.cmdline !== undefined ? { boot_args: config.cmdline } : {}),
      };
    }
    let drive = 0;
    let net = 0;
    for (const spec of config.virtioDevices ?? []) {
      if (spec.kind === "block") {
        const id = spec.id !== undefined && /^[A-Za-z0-9_]{1,64}$/.test(spec.id) ? spec.id : `drive${drive}`;
        drive++;
        this.drives.set(id, { drive_id: id, path_on_host: spec.path, is_root_device: spec.root ?? false, is_read_only: spec.readOnly });
      } else if (spec.kind === "net") {
        const id = `net${net++}`;
        this.nets.set(id, { iface_id: id, host_dev_name: spec.tap, ...(spec.mac !== undefined ? { guest_mac: spec.mac } : {}) });
      } else if (spec.kind === "vsock") {
        this.vsock = { guest_cid: spec.guestCid, uds_path: spec.udsPath };
      } else {
        this.entropy = true;
      }
    }
  }
}

function existsOrLink(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

function sameFile(a: string, b: string): boolean {
  if (!existsSync(a) || !existsSync(b)) return false;
  return realpathSync(a) === realpathSync(b);
}

export function fault(message: string, status = 400): Response {
  return Response.json({ fault_message: message }, { status });
}

function json(body: unknown): Response {
  return Response.json(body, { status: 200 });
}

function noContent(): Response {
  return new Response(null, { status: 204 });
}

async function jsonBody(request: Request): Promise<unknown> {
  const text = await request.text();
  if (text.trim() === "") throw new FaultError("The request body is empty; this endpoint takes a JSON object.");
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new FaultError(`An error occurred when deserializing the json body of a request: ${(error as Error).message}.`);
  }
}

/** Validates a body in full; the fault names every bad field by its path. */
function parse<S extends v.GenericSchema>(schema: S, body: unknown): v.InferOutput<S> {
  if (typeof body !== "object" || body === null || Array.isArray(body)) throw new FaultError("The request body must be a JSON object.");
  const result = v.safeParse(schema, body, { abortPipeEarly: true });
  if (result.success) return result.output;
  throw new FaultError(result.issues.map(describeIssue).join("; "));
}

function describeIssue(issue: v.BaseIssue<unknown>): string {
  const where = (issue.path ?? []).map((item) => String((item as { key: unknown }).key)).join(".");
  if (issue.type === "strict_object" && issue.expected === "never") return `${where}: unknown field`;
  if (issue.received === "undefined" && issue.type !== "custom") return `${where}: is required`;
  return where ? `${where}: ${issue.message}` : issue.message;
}
