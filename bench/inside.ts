/**
 * The benchmarks proper, run where real KVM is (inside the nested L1, or
 * natively): Volt against QEMU's microvm machine (and, for the exit cost,
 * against a minimal C KVM loop), in the same run, rounds interleaved.
 * bench/run.ts starts this; run it directly only where /dev/kvm is real KVM:
 *
 *   BENCH_KERNELS='[{"id":"microvm","name":"...","path":"..."}]' bun bench/inside.ts
 *
 * Env: BENCH_KERNELS (JSON list; the first is used for everything but the boot
 * time, which runs on each), BENCH_ROUNDS (default 7), BENCH_BUDGET_S (time
 * limit for all measurements; sections that do not fit are skipped and said
 * so), BENCH_QEMU (default /usr/bin/qemu-system-x86_64), BENCH_DENSITY_S
 * (density window, default 60; 0 skips it), BENCH_RESULTS_DIR (default
 * bench/results), BENCH_HOST (JSON: the physical host's nproc/cpu/memGiB),
 * BENCH_KVM_MODE / BENCH_KVM_REASON, BENCH_VOLT_COMMIT, BENCH_SECTIONS (comma
 * list of boot, startup, exits, restore, clone, io, density, profile; default
 * all), BENCH_IO_ROUNDS (rounds for block and network, default 3),
 * BENCH_BLOCK_MIB (disk image size, default 256), BENCH_NET_MIB (bytes each
 * way over TCP, default 64), BENCH_GUEST_MODULES (colon list of .ko files the
 * first kernel needs for virtio-mmio, -blk and -net; empty for the microVM
 * kernel).
 */
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { cpus, freemem, tmpdir, totalmem } from "node:os";
import { basename, join, resolve } from "node:path";
import { BOOT_TIMER_ADDRESS } from "../src/arch/x86_64/layout.ts";
import { buildInitramfs } from "../src/image/initramfs.ts";
import { DEFAULT_CMDLINE } from "../src/vmm/config.ts";
import { childrenOf, readSmaps, sampleMemory, stop, watch, type Mapping, type MemorySample, type Watched } from "./lib/proc.ts";
import { Qmp } from "./lib/qmp.ts";
import { metric, renderTable, writeResults, type Metric, type Results } from "./lib/results.ts";

const checkout = resolve(import.meta.dir, "..");
const env = process.env;
const ROUNDS = positiveInt("BENCH_ROUNDS", 7);
const BUDGET_MS = positiveInt("BENCH_BUDGET_S", 1200) * 1000;
const DENSITY_S = Number(env.BENCH_DENSITY_S ?? "60");
const QEMU = env.BENCH_QEMU ?? "/usr/bin/qemu-system-x86_64";
const RESULTS_DIR = resolve(checkout, env.BENCH_RESULTS_DIR ?? "bench/results");
const ALL_SECTIONS = ["boot", "startup", "exits", "restore", "clone", "io", "density", "profile"] as const;
const selected = new Set<string>(env.BENCH_SECTIONS ? env.BENCH_SECTIONS.split(",").map((n) => n.trim()) : ALL_SECTIONS);
for (const name of selected) {
  if (!(ALL_SECTIONS as readonly string[]).includes(name)) {
    console.error(`bench: BENCH_SECTIONS: unknown section ${name} (known: ${ALL_SECTIONS.join(", ")})`);
    process.exit(2);
  }
}
const MEM_MIB = 128;
const EXTRA_CMDLINE = "quiet";
const EXITS_SMALL = 2_000;
const EXITS_LARGE = 12_000;
/** Per round, each side runs this many times and keeps its fastest: the least disturbed by other load on the host. */
const EXIT_REPETITIONS = 3;
const BOOT_TIMEOUT_MS = 240_000;
const INIT_MARKER = /BENCH-INIT-REACHED/;
const TICK_LINE = /BENCH-TICK (\d+)\r?\n/;

const started = performance.now();
const deadline = started + BUDGET_MS;
const remainingMs = () => deadline - performance.now();
const log = (line: string) => console.log(`bench: [${((performance.now() - started) / 1000).toFixed(0).padStart(4)}s] ${line}`);
const ms = (value: number) => `${value.toFixed(0)} ms`;

interface Kernel {
  readonly id: string;
  readonly name: string;
  readonly path: string;
}

const kernels: Kernel[] = JSON.parse(env.BENCH_KERNELS ?? "[]");
if (kernels.length === 0) {
  console.error("bench: BENCH_KERNELS is empty; run through `bun run bench` (bench/run.ts)");
  process.exit(2);
}

const metrics: Metric[] = [];
const unmeasured: { what: string; why: string }[] = [];
const notes: string[] = [];
const detail: Record<string, unknown> = {};
const live = new Set<Watched>();

// ------------------------------------------------------------------ setup
const work = mkdtempSync(join(tmpdir(), "volt-bench-"));
/** Directories outside `work` (on /dev/shm) that a section made: removed at exit too, should the run be stopped. */
const scratchDirs = new Set<string>();
process.on("exit", () => {
  for (const w of live) w.proc.kill("SIGKILL");
  rmSync(work, { recursive: true, force: true });
  for (const dir of scratchDirs) rmSync(dir, { recursive: true, force: true });
});
// Stopped by the time limit (timeout sends SIGTERM): keep what was measured.
let saved = false;
let lastResults: Results | undefined;
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    if (!saved) {
      unmeasured.push({ what: "the rest of this run", why: `stopped by ${signal} (the time limit?) before it finished: the table has only what was measured by then` });
      try {
        saveResults();
      } catch (error) {
        console.error(`bench: could not save partial results: ${(error as Error).message}`);
      }
    }
    process.exit(signal === "SIGTERM" ? 124 : 130);
  });
}

// Volt runs from a local copy: inside L1 the checkout is a 9p share, and reading a
// 110 MB binary over 9p on every start would be charged to Volt, not to KVM or the VMM.
const volt = join(work, "volt");
copyFileSync(join(checkout, "dist", "volt"), volt);
chmodSync(volt, 0o755);
const localKernels = kernels.map((k) => {
  const path = join(work, `kernel-${k.id}`);
  copyFileSync(k.path, path);
  return { ...k, path };
});
const primary = localKernels[0]!;

const bootScript = `echo BENCH-INIT-REACHED
devmem 0x${BOOT_TIMER_ADDRESS.toString(16)} 8 123
echo BENCH-IDLE
exec sleep 1000000
`;
// `read -t` is a shell builtin: the loop forks nothing, so an idle counter costs little CPU.
const counterScript = `echo BENCH-INIT-REACHED
i=0
while true; do
  i=$((i+1))
  echo "BENCH-TICK $i"
  read -t 0.05 line
done
`;
const bootInitrd = join(work, "boot.cpio.gz");
writeFileSync(bootInitrd, buildInitramfs({ script: bootScript, exit: "reboot" }));
const counterInitrd = join(work, "counter.cpio.gz");
writeFileSync(counterInitrd, buildInitramfs({ script: counterScript, exit: "reboot" }));

const haveQemu = existsSync(QEMU);
const qemuVersion = haveQemu ? (Bun.spawnSync([QEMU, "--version"]).stdout.toString().split("\n")[0] ?? "").replace(/^QEMU emulator version /, "") : "missing";
const stracePath = Bun.which("strace");
const gccPath = Bun.which("gcc");
log(`work dir ${work}; ${ROUNDS} rounds; budget ${(BUDGET_MS / 1000).toFixed(0)} s; QEMU ${QEMU} (${qemuVersion}); strace ${stracePath ?? "missing"}; gcc ${gccPath ?? "missing"}`);
log(`kernels: ${localKernels.map((k) => `${k.id} = ${k.name}`).join("; ")}`);
if (!haveQemu) unmeasured.push({ what: "every QEMU number", why: `${QEMU} does not exist here` });

const voltCmdline = new Map<string, string>();
const cmdlineFor = (kernel: Kernel) => voltCmdline.get(kernel.id) ?? `${DEFAULT_CMDLINE} ${EXTRA_CMDLINE}`;
const voltRunArgs = (kernel: Kernel, initrd: string, extra: string[] = []) => [
  volt, "run", "--kernel", kernel.path, "--initrd", initrd, "--mem", String(MEM_MIB), "--vcpus", "1", "--cmdline", EXTRA_CMDLINE, "--boot-timer", "--json", ...extra,
];
const qemuArgs = (kernel: Kernel, initrd: string, extra: string[] = []) => [
  QEMU, "-M", "microvm", "-enable-kvm", "-cpu", "host", "-m", String(MEM_MIB), "-smp", "1",
  "-kernel", kernel.path, "-initrd", initrd, "-append", cmdlineFor(kernel), "-nographic", "-no-reboot", ...extra,
];
const voltEnv = { ...process.env, NO_COLOR: "1" };

/** Volt's guest RAM: its memfd (fresh boot), the snapshot's memory file (restore) or the source's snapshot memfd (clone). */
const voltGuest = (m: Mapping) => m.path.includes("memfd:volt-guest-ram") || m.path.endsWith("/memory.raw") || m.path.includes("memfd:volt-snapshot");
/** QEMU's guest RAM: the anonymous RAM block of exactly the guest's size. */
const qemuGuest = (m: Mapping) => m.sizeKiB === MEM_MIB * 1024 && (m.path === "" || m.path.startsWith("[anon")) && m.perms.startsWith("rw");

function spawnWatched(argv: string[], consoleOn: "stdout" | "stderr"): Watched {
  const w = watch(argv, consoleOn, { env: voltEnv });
  live.add(w);
  w.done.finally(() => live.delete(w));
  return w;
}

async function finish(w: Watched): Promise<number> {
  return stop(w, "SIGTERM", 15_000);
}

// ------------------------------------------------------------------ 1 + 3: boot time and memory
interface BootSample {
  consoleMs: number;
  firstByteMs?: number;
  bootTimeMs?: number;
  memBoot?: MemorySample;
  memIdle?: MemorySample;
  /** CPU time the VMM process used while the guest sat idle, as % of one CPU. */
  idleCpuPercent?: number;
  /** SIGTERM → the process has exited. */
  teardownMs?: number;
  /** Where the idle RSS is, grouped by mapping. */
  breakdown?: Record<string, number>;
}

const IDLE_SETTLE_MS = 3_000;
const CLOCK_TICKS_PER_S = 100;

/** utime + stime of the whole process (every thread), in ms. */
function cpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // After the command: state is field 3, utime 14 and stime 15 (1-based) => indices 11 and 12 here.
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS_PER_S;
}

/** Idle sampling: CPU used over the settle period, then the memory map. */
async function idleSample(pid: number, isGuest: (m: Mapping) => boolean, sample: BootSample): Promise<void> {
  const cpu0 = cpuMs(pid);
  const t0 = performance.now();
  await Bun.sleep(IDLE_SETTLE_MS);
  sample.idleCpuPercent = ((cpuMs(pid) - cpu0) / (performance.now() - t0)) * 100;
  sample.memIdle = sampleMemory(pid, isGuest);
  sample.breakdown = rssBreakdown(readSmaps(pid), isGuest);
}

/** RSS in MiB by kind of mapping: the executable, shared libraries, heap/anonymous, KVM, guest RAM, other files. */
function rssBreakdown(mappings: Mapping[], isGuest: (m: Mapping) => boolean): Record<string, number> {
  const groups: Record<string, number> = {};
  const exe = mappings[0]?.path ?? "";
  for (const m of mappings) {
    let key: string;
    if (isGuest(m)) key = "guest RAM";
    else if (m.path === exe && exe !== "") key = `executable (${basename(exe)})`;
    else if (/\.so(\.|$)/.test(m.path)) key = "shared libraries";
    else if (m.path === "[heap]") key = "[heap]";
    else if (m.path === "" || m.path.startsWith("[anon")) key = "anonymous (JS heaps, malloc arenas, stacks)";
    else if (m.path.startsWith("[stack")) key = "[stack]";
    else if (m.path.includes("kvm")) key = "KVM (vcpu run pages)";
    else if (m.path.startsWith("/memfd:")) key = `memfd (${m.path.slice(7).replace(/ \(deleted\)$/, "")})`;
    else if (m.path.startsWith("[")) key = m.path;
    else key = m.rssKiB >= 1024 ? m.path : "other files (under 1 MiB each)";
    groups[key] = (groups[key] ?? 0) + m.rssKiB / 1024;
  }
  for (const key of Object.keys(groups)) groups[key] = Math.round(groups[key]! * 10) / 10;
  return groups;
}

async function bootVolt(kernel: Kernel, withMemory: boolean, extraArgs: string[] = []): Promise<BootSample> {
  const w = spawnWatched(voltRunArgs(kernel, bootInitrd, extraArgs), "stderr");
  try {
    const marker = await w.waitFor(INIT_MARKER, BOOT_TIMEOUT_MS);
    const sample: BootSample = { consoleMs: marker.at - w.spawnedAt };
    if (w.firstConsoleByteAt !== undefined) sample.firstByteMs = w.firstConsoleByteAt - w.spawnedAt;
    if (withMemory) sample.memBoot = sampleMemory(w.proc.pid, voltGuest);
    await w.waitFor(/BENCH-IDLE/, 60_000);
    if (withMemory) await idleSample(w.proc.pid, voltGuest, sample);
    const t0 = performance.now();
    await finish(w);
    sample.teardownMs = performance.now() - t0;
    const outcome = parseJson(w.other());
    if (typeof outcome?.bootTimeMs === "number") sample.bootTimeMs = outcome.bootTimeMs;
    if (typeof outcome?.cmdline === "string") voltCmdline.set(kernel.id, outcome.cmdline);
    return sample;
  } finally {
    if (w.proc.exitCode === null) await stop(w, "SIGKILL");
  }
}

async function bootQemu(kernel: Kernel, withMemory: boolean): Promise<BootSample> {
  const w = spawnWatched(qemuArgs(kernel, bootInitrd), "stdout");
  try {
    const marker = await w.waitFor(INIT_MARKER, BOOT_TIMEOUT_MS);
    const sample: BootSample = { consoleMs: marker.at - w.spawnedAt };
    if (w.firstConsoleByteAt !== undefined) sample.firstByteMs = w.firstConsoleByteAt - w.spawnedAt;
    if (withMemory) sample.memBoot = sampleMemory(w.proc.pid, qemuGuest);
    await w.waitFor(/BENCH-IDLE/, 60_000);
    if (withMemory) await idleSample(w.proc.pid, qemuGuest, sample);
    const t0 = performance.now();
    await finish(w);
    sample.teardownMs = performance.now() - t0;
    return sample;
  } finally {
    if (w.proc.exitCode === null) await stop(w, "SIGKILL");
  }
}

function parseJson(text: string): Record<string, unknown> | undefined {
  const start = text.indexOf("{");
  if (start < 0) return undefined;
  try {
    return JSON.parse(text.slice(start)) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}

const mib = (kib: number) => kib / 1024;

async function tryRound<T>(what: string, body: () => Promise<T>): Promise<T | undefined> {
  try {
    return await body();
  } catch (error) {
    log(`FAILED ${what}: ${(error as Error).message.slice(0, 1500)}`);
    (detail.failures as string[] | undefined)?.push(`${what}: ${(error as Error).message.slice(0, 500)}`) ?? (detail.failures = [`${what}: ${(error as Error).message.slice(0, 500)}`]);
    return undefined;
  }
}

/** Rounds to run: all of them while there is time for `perRoundMs` more each, at least `minimum`. */
function roundsFitting(perRoundMs: number, reserveMs: number, minimum = 3): number {
  const fit = Math.floor((remainingMs() - reserveMs) / Math.max(1, perRoundMs));
  return Math.max(Math.min(ROUNDS, fit), Math.min(minimum, ROUNDS));
}

async function bootSection(kernel: Kernel, isPrimary: boolean, reserveMs: number): Promise<void> {
  log(`boot (${kernel.name}): warm-up`);
  const warmStart = performance.now();
  const warmVolt = await tryRound(`warm-up volt boot ${kernel.id}`, () => bootVolt(kernel, false));
  const warmQemu = haveQemu ? await tryRound(`warm-up qemu boot ${kernel.id}`, () => bootQemu(kernel, false)) : undefined;
  const perRound = (performance.now() - warmStart) * (isPrimary ? 1.6 : 1) + (isPrimary ? 2 * (IDLE_SETTLE_MS + 500) : 0);
  log(`boot (${kernel.name}): warm-up volt ${warmVolt ? ms(warmVolt.consoleMs) : "failed"}, qemu ${warmQemu ? ms(warmQemu.consoleMs) : "failed"}; QEMU's -append: ${cmdlineFor(kernel)}`);
  const rounds = roundsFitting(perRound, reserveMs);
  const volts: BootSample[] = [];
  const qemus: BootSample[] = [];
  // On the primary kernel a third arm: Volt without its sandbox (Landlock restrict + re-exec, seccomp), to show what it costs.
  const unsandboxed: BootSample[] = [];
  if (isPrimary) await tryRound("warm-up volt --no-sandbox boot", () => bootVolt(kernel, false, ["--no-sandbox"]));
  for (let round = 1; round <= rounds; round++) {
    const v = await tryRound(`volt boot ${kernel.id} round ${round}`, () => bootVolt(kernel, isPrimary));
    if (v) volts.push(v);
    if (isPrimary) {
      const u = await tryRound(`volt --no-sandbox boot ${kernel.id} round ${round}`, () => bootVolt(kernel, false, ["--no-sandbox"]));
      if (u) unsandboxed.push(u);
      log(`boot (${kernel.id}) round ${round}/${rounds}: volt --no-sandbox ${u ? `${ms(u.consoleMs)} to /init (bootTimeMs ${u.bootTimeMs?.toFixed(0) ?? "?"})` : "failed"}`);
    }
    const q = haveQemu ? await tryRound(`qemu boot ${kernel.id} round ${round}`, () => bootQemu(kernel, isPrimary)) : undefined;
    if (q) qemus.push(q);
    log(`boot (${kernel.id}) round ${round}/${rounds}: volt ${v ? `${ms(v.consoleMs)} to /init (bootTimeMs ${v.bootTimeMs?.toFixed(0) ?? "?"})` : "failed"}; qemu ${q ? `${ms(q.consoleMs)} to /init` : "failed"}${v?.memIdle && q?.memIdle ? `; idle overhead RSS volt ${mib(v.memIdle.overheadRssKiB).toFixed(1)} MiB, qemu ${mib(q.memIdle.overheadRssKiB).toFixed(1)} MiB; idle CPU volt ${v.idleCpuPercent?.toFixed(1)}%, qemu ${q.idleCpuPercent?.toFixed(1)}%; SIGTERM to exit volt ${v.teardownMs?.toFixed(0)} ms, qemu ${q.teardownMs?.toFixed(0)} ms` : ""}`);
  }
  detail[`boot-${kernel.id}`] = { volt: volts, qemu: qemus, qemuAppend: cmdlineFor(kernel) };
  metrics.push(metric({
    id: `boot-${kernel.id}-console`, group: "Boot time", label: `process start → /init marker on console, ${kernel.name}`, unit: "ms",
    volt: volts.map((s) => s.consoleMs), baseline: qemus.map((s) => s.consoleMs), baselineName: "QEMU microvm",
    how: "wall clock from spawn to the console line the initramfs /init echoes first, read from the VMM's console pipe",
  }));
  metrics.push(metric({
    id: `boot-${kernel.id}-volt-timer`, group: "Boot time", label: `Volt's bootTimeMs (volt run start → boot-timer write), ${kernel.name}`, unit: "ms",
    volt: volts.flatMap((s) => (s.bootTimeMs === undefined ? [] : [s.bootTimeMs])), baseline: [], baselineName: "QEMU (no boot timer)",
    how: "volt run --boot-timer --json: from the run command's start to the guest's devmem write of 123 (written just after the marker)",
  }));
  if (isPrimary) {
    detail[`boot-${kernel.id}-no-sandbox`] = unsandboxed;
    metrics.push(metric({
      id: `boot-${kernel.id}-console-no-sandbox`, group: "Boot time", label: `as above with volt run --no-sandbox, ${kernel.name}`, unit: "ms",
      volt: unsandboxed.map((s) => s.consoleMs), baseline: qemus.map((s) => s.consoleMs), baselineName: "QEMU microvm",
      how: "same as the boot row, Volt without Landlock (no restrict-and-re-exec) and without seccomp; interleaved in the same rounds",
    }));
    const memoryMetric = (id: string, label: string, pick: (s: BootSample) => number | undefined, how: string) =>
      metrics.push(metric({
        id, group: "Memory", label, unit: "MiB",
        volt: volts.flatMap((s) => { const v = pick(s); return v === undefined ? [] : [v]; }),
        baseline: qemus.flatMap((s) => { const v = pick(s); return v === undefined ? [] : [v]; }),
        baselineName: "QEMU microvm", how,
      }));
    memoryMetric("memory-overhead-idle", `VMM overhead RSS (all mappings but guest RAM), idle ${IDLE_SETTLE_MS / 1000} s after /init, ${kernel.id} kernel`,
      (s) => s.memIdle && mib(s.memIdle.overheadRssKiB), "sum of Rss in /proc/PID/smaps minus the guest-RAM mapping (Volt: memfd:volt-guest-ram; QEMU: the 128 MiB anonymous RAM block)");
    memoryMetric("memory-overhead-boot", `VMM overhead RSS at the /init marker, ${kernel.id} kernel`,
      (s) => s.memBoot && mib(s.memBoot.overheadRssKiB), "as above, sampled when the /init marker arrived");
    memoryMetric("memory-total-idle", `total VMM RSS (guest RAM included), idle, ${kernel.id} kernel`,
      (s) => s.memIdle && mib(s.memIdle.totalRssKiB), "sum of Rss over every mapping of the VMM process");
    memoryMetric("memory-overhead-pss-idle", `VMM overhead PSS (shared pages split), idle, ${kernel.id} kernel`,
      (s) => s.memIdle && mib(s.memIdle.overheadPssKiB), "sum of Pss over all mappings but guest RAM");
    const pick = (list: BootSample[], f: (s: BootSample) => number | undefined) => list.flatMap((s) => { const v = f(s); return v === undefined ? [] : [v]; });
    metrics.push(metric({
      id: "idle-cpu", group: "Idle cost", label: `VMM CPU use while the guest idles (${IDLE_SETTLE_MS / 1000} s after /init), ${kernel.id} kernel`, unit: "% of a CPU",
      volt: pick(volts, (s) => s.idleCpuPercent), baseline: pick(qemus, (s) => s.idleCpuPercent), baselineName: "QEMU microvm",
      how: "utime+stime of the VMM process (all threads, /proc/PID/stat) over the idle window, divided by the window",
    }));
    metrics.push(metric({
      id: "teardown", group: "Teardown", label: "SIGTERM → VMM process exited (idle guest)", unit: "ms",
      volt: pick(volts, (s) => s.teardownMs), baseline: pick(qemus, (s) => s.teardownMs), baselineName: "QEMU microvm",
      how: "wall clock from kill(SIGTERM) to the process's exit (both stop the VM on SIGTERM)",
    }));
    detail.rssBreakdownMiB = { volt: volts.at(-1)?.breakdown, qemu: qemus.at(-1)?.breakdown };
    const firstBytes = (list: BootSample[]) => list.flatMap((s) => (s.firstByteMs === undefined ? [] : [s.firstByteMs]));
    detail.firstConsoleByteMs = { volt: firstBytes(volts), qemu: firstBytes(qemus) };
    const guestNames = new Set([...volts, ...qemus].flatMap((s) => s.memIdle?.guestMappings ?? []));
    detail.guestMappingsSeen = [...guestNames];
  }
}

// ------------------------------------------------------------------ 2: start-up to the first KVM_RUN
interface StartupSample {
  execToCreateVmMs?: number;
  execToFirstRunMs: number;
}

function parseStrace(path: string): StartupSample | undefined {
  let exec: number | undefined;
  let createVm: number | undefined;
  let firstRun: number | undefined;
  for (const line of readFileSync(path, "utf8").split("\n")) {
    const m = /^\d+\s+(\d+\.\d+)\s+(\w+)\((.*)$/.exec(line);
    if (!m) continue;
    const ts = Number(m[1]) * 1000;
    const call = m[2]!;
    const args = m[3]!;
    if (call === "execve" && exec === undefined) exec = ts;
    if (call === "ioctl" && createVm === undefined && /KVM_CREATE_VM|0xae01\b/.test(args)) createVm = ts;
    if (call === "ioctl" && /KVM_RUN|0xae80\b/.test(args)) {
      firstRun = ts;
      break;
    }
  }
  if (exec === undefined || firstRun === undefined) return undefined;
  return { execToFirstRunMs: firstRun - exec, ...(createVm !== undefined ? { execToCreateVmMs: createVm - exec } : {}) };
}

let straceRuns = 0;
async function startupUnderStrace(argv: string[], consoleOn: "stdout" | "stderr"): Promise<StartupSample> {
  const out = join(work, `strace-${++straceRuns}.txt`);
  const w = spawnWatched([stracePath!, "-f", "--seccomp-bpf", "-qq", "-ttt", "-e", "trace=execve,ioctl", "-o", out, ...argv], consoleOn);
  try {
    // Stop at the first KVM_RUN: under strace every later KVM_RUN (each guest exit) is a ptrace stop.
    const until = performance.now() + BOOT_TIMEOUT_MS;
    for (;;) {
      if (existsSync(out) && /KVM_RUN|0xae80\b/.test(readFileSync(out, "utf8"))) break;
      if (w.proc.exitCode !== null) throw new Error(`strace exited ${w.proc.exitCode} before a KVM_RUN: ${w.other().slice(-600)}`);
      if (performance.now() > until) throw new Error("no KVM_RUN in time");
      await Bun.sleep(25);
    }
  } finally {
    // Kill the traced VMM itself; strace then exits on its own.
    for (const child of childrenOf(w.proc.pid)) {
      try {
        process.kill(child, "SIGKILL");
      } catch {
        // already gone
      }
    }
    await stop(w, "SIGTERM", 10_000);
  }
  const sample = parseStrace(out);
  if (!sample) throw new Error(`no execve/KVM_RUN in ${out}: ${readFileSync(out, "utf8").slice(0, 600)}`);
  return sample;
}

async function startupSection(reserveMs: number): Promise<void> {
  const kernel = primary;
  if (!stracePath) {
    unmeasured.push({ what: "VMM start-up to the first KVM_RUN", why: "strace is not installed where the VMs run; the row shows process start → first console byte instead (a later event)" });
    const fb = detail.firstConsoleByteMs as { volt: number[]; qemu: number[] } | undefined;
    metrics.push(metric({
      id: "startup-first-console-byte", group: "Start-up (proxy)", label: "process start → first console byte (NOT first KVM_RUN: strace missing)", unit: "ms",
      volt: fb?.volt ?? [], baseline: fb?.qemu ?? [], baselineName: "QEMU microvm", how: "first byte on the console pipe after spawn, from the boot rounds",
    }));
    return;
  }
  log("start-up under strace: warm-up");
  const warmStart = performance.now();
  await tryRound("warm-up volt strace", () => startupUnderStrace(voltRunArgs(kernel, bootInitrd), "stderr"));
  if (haveQemu) await tryRound("warm-up qemu strace", () => startupUnderStrace(qemuArgs(kernel, bootInitrd), "stdout"));
  const rounds = roundsFitting(performance.now() - warmStart, reserveMs);
  const volts: StartupSample[] = [];
  const qemus: StartupSample[] = [];
  for (let round = 1; round <= rounds; round++) {
    const v = await tryRound(`volt strace round ${round}`, () => startupUnderStrace(voltRunArgs(kernel, bootInitrd), "stderr"));
    if (v) volts.push(v);
    const q = haveQemu ? await tryRound(`qemu strace round ${round}`, () => startupUnderStrace(qemuArgs(kernel, bootInitrd), "stdout")) : undefined;
    if (q) qemus.push(q);
    const show = (s?: StartupSample) => (s ? `${ms(s.execToFirstRunMs)} (KVM_CREATE_VM at ${s.execToCreateVmMs?.toFixed(0) ?? "?"} ms)` : "failed");
    log(`start-up round ${round}/${rounds}: volt ${show(v)}; qemu ${show(q)}`);
  }
  detail.startup = { volt: volts, qemu: qemus, kernel: kernel.id };
  // How much of that is loading the program at all: `--version` starts, prints and exits.
  const versionRun = async (argv: string[]) => {
    const t0 = performance.now();
    const proc = Bun.spawn(argv, { stdin: "ignore", stdout: "ignore", stderr: "ignore", env: voltEnv });
    if ((await proc.exited) !== 0) throw new Error(`${argv.join(" ")} exited ${proc.exitCode}`);
    return performance.now() - t0;
  };
  const voltVersion: number[] = [];
  const qemuVersions: number[] = [];
  await tryRound("warm-up --version", async () => [await versionRun([volt, "--version"]), haveQemu ? await versionRun([QEMU, "--version"]) : 0]);
  for (let round = 1; round <= rounds; round++) {
    const v = await tryRound(`volt --version round ${round}`, () => versionRun([volt, "--version"]));
    if (v !== undefined) voltVersion.push(v);
    const q = haveQemu ? await tryRound(`qemu --version round ${round}`, () => versionRun([QEMU, "--version"])) : undefined;
    if (q !== undefined) qemuVersions.push(q);
  }
  log(`program load (--version, spawn to exit): volt ${voltVersion.map((v) => v.toFixed(0)).join(", ")} ms; qemu ${qemuVersions.map((v) => v.toFixed(0)).join(", ")} ms`);
  metrics.push(metric({
    id: "startup-version", group: "Start-up", label: "`--version`: spawn → exit (loading the program and its runtime, no VM)", unit: "ms",
    volt: voltVersion, baseline: qemuVersions, baselineName: "QEMU",
    how: "wall clock of `volt --version` / `qemu-system-x86_64 --version`, no strace: the floor under any VMM start-up",
  }));
  metrics.push(metric({
    id: "startup-first-kvm-run", group: "Start-up", label: "execve → first KVM_RUN (under strace)", unit: "ms",
    volt: volts.map((s) => s.execToFirstRunMs), baseline: qemus.map((s) => s.execToFirstRunMs), baselineName: "QEMU microvm",
    how: "strace -f --seccomp-bpf -ttt -e trace=execve,ioctl: timestamp of the first KVM_RUN minus the VMM's execve",
  }));
  metrics.push(metric({
    id: "startup-create-vm", group: "Start-up", label: "execve → KVM_CREATE_VM (under strace; process and runtime start-up)", unit: "ms",
    volt: volts.flatMap((s) => (s.execToCreateVmMs === undefined ? [] : [s.execToCreateVmMs])),
    baseline: qemus.flatMap((s) => (s.execToCreateVmMs === undefined ? [] : [s.execToCreateVmMs])), baselineName: "QEMU microvm",
    how: "as above, to the first KVM_CREATE_VM ioctl: what the process does before it touches KVM",
  }));
}

// ------------------------------------------------------------------ 4: exit cost
async function exitSection(reserveMs: number): Promise<void> {
  if (!gccPath) {
    unmeasured.push({ what: "exit cost baseline (C KVM loop)", why: "gcc is not installed where the VMs run" });
    return;
  }
  const loop = join(work, "kvm-loop");
  const cc = Bun.spawnSync([gccPath, "-O2", "-Wall", "-Werror", "-o", loop, join(import.meta.dir, "kvm-loop.c")], { stderr: "pipe" });
  if (cc.exitCode !== 0) {
    unmeasured.push({ what: "exit cost baseline (C KVM loop)", why: `gcc failed: ${cc.stderr.toString().slice(0, 300)}` });
    return;
  }
  const runC = async (exits: number): Promise<number> => {
    const proc = Bun.spawn([loop, String(exits), "0x80"], { stdout: "pipe", stderr: "pipe" });
    const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
    if (code !== 0) throw new Error(`kvm-loop exited ${code}: ${err}`);
    return (JSON.parse(out) as { loopNs: number }).loopNs;
  };
  let voltRuns = 0;
  const runVolt = async (): Promise<Map<number, number>> => {
    // Alternate which port goes first, so neither always runs in the fresher process.
    const ports = voltRuns++ % 2 === 0 ? ["0x80", "0x3ff"] : ["0x3ff", "0x80"];
    const proc = Bun.spawn([process.execPath, join(import.meta.dir, "exit-volt.ts"), String(EXITS_SMALL), String(EXITS_LARGE), String(EXIT_REPETITIONS), ...ports], {
      stdout: "pipe", stderr: "pipe", cwd: checkout,
    });
    const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
    if (code !== 0) throw new Error(`exit-volt.ts exited ${code}: ${err.slice(-1500)}`);
    const perPort = new Map<number, number>();
    for (const line of out.trim().split("\n")) {
      const r = JSON.parse(line) as { port: number; small: number; large: number; smallMs: number; largeMs: number };
      const ns = ((r.largeMs - r.smallMs) * 1e6) / (r.large - r.small);
      perPort.set(r.port, Math.min(perPort.get(r.port) ?? Infinity, ns));
    }
    return perPort;
  };
  const runCPair = async () => {
    let best = Infinity;
    for (let repetition = 0; repetition < EXIT_REPETITIONS; repetition++) {
      const small = await runC(EXITS_SMALL);
      const large = await runC(EXITS_LARGE);
      best = Math.min(best, (large - small) / (EXITS_LARGE - EXITS_SMALL));
    }
    return best;
  };
  log(`exit cost: warm-up (guest: ${EXITS_SMALL} and ${EXITS_LARGE} OUTs to port 0x80, then HLT)`);
  const warmStart = performance.now();
  await tryRound("warm-up volt exits", runVolt);
  await tryRound("warm-up C exits", runCPair);
  const rounds = roundsFitting(performance.now() - warmStart, reserveMs);
  const volt80: number[] = [];
  const volt3ff: number[] = [];
  const c: number[] = [];
  for (let round = 1; round <= rounds; round++) {
    const v = await tryRound(`volt exits round ${round}`, runVolt);
    if (v?.has(0x80)) volt80.push(v.get(0x80)!);
    if (v?.has(0x3ff)) volt3ff.push(v.get(0x3ff)!);
    const k = await tryRound(`C exits round ${round}`, runCPair);
    if (k !== undefined) c.push(k);
    log(`exit cost round ${round}/${rounds}: volt ${v?.get(0x80)?.toFixed(0) ?? "?"} ns/exit (UART scratch register: ${v?.get(0x3ff)?.toFixed(0) ?? "?"}), C loop ${k?.toFixed(0) ?? "?"} ns/exit`);
  }
  metrics.push(metric({
    id: "exit-port-io", group: "Exit cost", label: "guest OUT to an unclaimed port (0x80) → back in the guest", unit: "ns/exit",
    volt: volt80, baseline: c, baselineName: "C KVM loop",
    how: `(time for ${EXITS_LARGE} exits − time for ${EXITS_SMALL}) / ${EXITS_LARGE - EXITS_SMALL}, fastest of ${EXIT_REPETITIONS} per round; Volt: its vCPU worker in machine mode (bus lookup, no device); C: bench/kvm-loop.c`,
  }));
  metrics.push(metric({
    id: "exit-uart-scratch", group: "Exit cost", label: "guest OUT to the UART scratch register (0x3ff, a real Volt device) → back", unit: "ns/exit",
    volt: volt3ff, baseline: c, baselineName: "C KVM loop (no device)",
    how: "as above, but Volt dispatches to its 16550A model (shared-state lock); the C loop handles every exit the same way",
  }));
}

// ------------------------------------------------------------------ 5: snapshot and restore
async function restoreSection(reserveMs: number): Promise<void> {
  const kernel = primary;
  const voltSocket = join(work, "volt-api.sock");
  const qmpSocket = join(work, "qmp.sock");
  log("restore: booting the counter guest under both VMMs");
  const voltSource = spawnWatched([volt, "run", "--kernel", kernel.path, "--initrd", counterInitrd, "--mem", String(MEM_MIB), "--vcpus", "1", "--cmdline", EXTRA_CMDLINE, "--api-socket", voltSocket, "--snapshot-dir", work, "--json"], "stderr");
  const qemuSource = haveQemu ? spawnWatched(qemuArgs(kernel, counterInitrd, ["-qmp", `unix:${qmpSocket},server=on,wait=off`]), "stdout") : undefined;
  let qmp: Qmp | undefined;
  const creates: { volt: number[]; qemu: number[]; voltPausedMs: number[]; voltMem: number[]; qemuMem: number[]; voltGuestRssMiB: number[]; qemuGuestRssMiB: number[] } =
    { volt: [], qemu: [], voltPausedMs: [], voltMem: [], qemuMem: [], voltGuestRssMiB: [], qemuGuestRssMiB: [] };
  let voltSnapshot: string | undefined;
  let qemuState: string | undefined;
  try {
    await voltSource.waitFor(/BENCH-TICK 3\b/, BOOT_TIMEOUT_MS);
    if (qemuSource) {
      await qemuSource.waitFor(/BENCH-TICK 3\b/, BOOT_TIMEOUT_MS);
      qmp = await Qmp.connect(qmpSocket);
    }
    detail.snapshotSourceBefore = {
      voltGuestRssMiB: mib(sampleMemory(voltSource.proc.pid, voltGuest).guestRssKiB),
      ...(qemuSource ? { qemuGuestRssMiB: mib(sampleMemory(qemuSource.proc.pid, qemuGuest).guestRssKiB) } : {}),
    };
    const rounds = roundsFitting(8_000, reserveMs);
    for (let round = 0; round <= rounds; round++) {
      // Round 0 is the warm-up.
      const dir = join(work, `volt-snap-${round}`);
      const t0 = performance.now();
      const created = Bun.spawnSync([volt, "snapshot", "create", "--api-socket", voltSocket, dir, "--json"], { env: voltEnv, timeout: 120_000 });
      const voltMs = performance.now() - t0;
      const body = parseJson(created.stdout.toString());
      if (created.exitCode !== 0) throw new Error(`volt snapshot create exited ${created.exitCode}: ${created.stderr.toString().slice(-800)}`);
      const voltMem = sampleMemory(voltSource.proc.pid, voltGuest);
      let qemuMs: number | undefined;
      let qemuMem: MemorySample | undefined;
      if (qmp && qemuSource) {
        const file = join(work, `qemu-state-${round}`);
        const q0 = performance.now();
        await qmp.execute("migrate", { uri: `exec:cat > ${file}` });
        for (;;) {
          const status = (await qmp.execute("query-migrate")) as { status?: string; "error-desc"?: string };
          if (status.status === "completed") break;
          if (status.status === "failed" || status.status === "cancelled") throw new Error(`QEMU migration ${status.status}: ${status["error-desc"] ?? ""}`);
          await Bun.sleep(5);
        }
        qemuMs = performance.now() - q0;
        qemuMem = sampleMemory(qemuSource.proc.pid, qemuGuest);
        // The source stops after a completed migration; let it run on, as Volt's does.
        await qmp.execute("cont");
        qemuState = file;
      }
      voltSnapshot = dir;
      const paused = (body?.snapshot as { pausedMs?: number } | undefined)?.pausedMs;
      log(`snapshot ${round === 0 ? "warm-up" : `round ${round}/${rounds}`}: volt snapshot create ${ms(voltMs)}${paused !== undefined ? ` (guest paused ${ms(paused)})` : ""}; qemu migrate to file ${qemuMs === undefined ? "n/a" : ms(qemuMs)}`);
      if (round === 0) continue;
      creates.volt.push(voltMs);
      if (paused !== undefined) creates.voltPausedMs.push(paused);
      creates.voltMem.push(mib(voltMem.overheadRssKiB));
      creates.voltGuestRssMiB.push(mib(voltMem.guestRssKiB));
      if (qemuMs !== undefined) creates.qemu.push(qemuMs);
      if (qemuMem) {
        creates.qemuMem.push(mib(qemuMem.overheadRssKiB));
        creates.qemuGuestRssMiB.push(mib(qemuMem.guestRssKiB));
      }
    }
  } finally {
    qmp?.close();
    await finish(voltSource);
    if (qemuSource) await finish(qemuSource);
  }
  metrics.push(metric({
    id: "snapshot-create", group: "Snapshot", label: "snapshot a running 128 MiB guest to a file (command start → done)", unit: "ms",
    volt: creates.volt, baseline: creates.qemu, baselineName: "QEMU migrate exec:cat>file",
    how: "Volt: `volt snapshot create --api-socket` process start to exit; QEMU: QMP migrate to exec:cat until query-migrate says completed (files on tmpfs)",
  }));
  metrics.push(metric({
    id: "memory-overhead-after-snapshot", group: "Memory", label: "VMM overhead RSS right after a snapshot", unit: "MiB",
    volt: creates.voltMem, baseline: creates.qemuMem, baselineName: "QEMU microvm",
    how: "smaps Rss minus guest RAM, sampled once the snapshot (or migration) completed",
  }));
  detail.snapshotCreate = creates;
  if (!voltSnapshot) return;
  const snapshotBytes = statSync(join(voltSnapshot, "memory.raw")).blocks * 512;
  detail.snapshotFiles = { voltMemoryRawAllocatedBytes: snapshotBytes, qemuStateBytes: qemuState ? statSync(qemuState).size : undefined };

  const restoreVolt = async () => {
    const w = spawnWatched([volt, "snapshot", "restore", voltSnapshot!, "--json"], "stderr");
    try {
      const tick = await w.waitFor(TICK_LINE, 120_000);
      const latency = tick.at - w.spawnedAt;
      await Bun.sleep(1_000);
      return { latency, mem: sampleMemory(w.proc.pid, voltGuest) };
    } finally {
      await finish(w);
    }
  };
  const restoreQemu = async () => {
    const w = spawnWatched(qemuArgs(kernel, counterInitrd, ["-incoming", `exec:cat ${qemuState!}`]), "stdout");
    try {
      const tick = await w.waitFor(TICK_LINE, 120_000);
      const latency = tick.at - w.spawnedAt;
      await Bun.sleep(1_000);
      return { latency, mem: sampleMemory(w.proc.pid, qemuGuest) };
    } finally {
      await finish(w);
    }
  };
  log("restore: warm-up");
  const warmStart = performance.now();
  await tryRound("warm-up volt restore", restoreVolt);
  if (qemuState) await tryRound("warm-up qemu restore", restoreQemu);
  const rounds = roundsFitting(performance.now() - warmStart, reserveMs);
  const volts: { latency: number; mem: MemorySample }[] = [];
  const qemus: { latency: number; mem: MemorySample }[] = [];
  for (let round = 1; round <= rounds; round++) {
    const v = await tryRound(`volt restore round ${round}`, restoreVolt);
    if (v) volts.push(v);
    const q = qemuState ? await tryRound(`qemu restore round ${round}`, restoreQemu) : undefined;
    if (q) qemus.push(q);
    log(`restore round ${round}/${rounds}: volt ${v ? ms(v.latency) : "failed"}; qemu ${q ? ms(q.latency) : "failed"}`);
  }
  metrics.push(metric({
    id: "restore-latency", group: "Restore", label: "restore command start → first counter line from the restored guest", unit: "ms",
    volt: volts.map((r) => r.latency), baseline: qemus.map((r) => r.latency), baselineName: "QEMU -incoming exec:cat",
    how: "the guest prints a counter every 50 ms (read -t 0.05): wall clock from spawn of `volt snapshot restore DIR` / `qemu ... -incoming exec:cat FILE` to the first complete counter line",
  }));
  metrics.push(metric({
    id: "memory-overhead-restored", group: "Memory", label: "VMM overhead RSS of a restored VM, 1 s after its first counter line", unit: "MiB",
    volt: volts.map((r) => mib(r.mem.overheadRssKiB)), baseline: qemus.map((r) => mib(r.mem.overheadRssKiB)), baselineName: "QEMU microvm",
    how: "smaps Rss minus guest RAM (Volt: the copy-on-write mapping of memory.raw; QEMU: its RAM block)",
  }));
  detail.restore = {
    voltGuestRssMiB: volts.map((r) => mib(r.mem.guestRssKiB)),
    qemuGuestRssMiB: qemus.map((r) => mib(r.mem.guestRssKiB)),
  };
}

// ------------------------------------------------------------------ 5b: in-memory clone
/**
 * Volt: `volt snapshot create --in-memory` on a running counter guest (the
 * snapshot stays in that process: a memfd), then `volt snapshot clone --from
 * SOCKET ID`, a new process mapping that memfd copy-on-write, timed from its
 * spawn to the clone's first complete counter line. QEMU has no in-memory
 * clone; its closest is a migration to a file on tmpfs (/dev/shm) and
 * `-incoming exec:cat FILE`, which is what the baseline is.
 */
const CLONE_ROUNDS = Math.min(ROUNDS, 5);
async function cloneSection(reserveMs: number): Promise<void> {
  const kernel = primary;
  const shm = existsSync("/dev/shm") ? mkdtempSync("/dev/shm/volt-bench-") : mkdtempSync(join(work, "shm-"));
  scratchDirs.add(shm);
  const shmIsTmpfs = fsType(shm) === "tmpfs";
  const voltSocket = join(work, "volt-clone-api.sock");
  const qmpSocket = join(work, "qmp-clone.sock");
  log("clone: booting the counter guest under both VMMs (the sources)");
  const voltSource = spawnWatched([volt, "run", "--kernel", kernel.path, "--initrd", counterInitrd, "--mem", String(MEM_MIB), "--vcpus", "1", "--cmdline", EXTRA_CMDLINE, "--api-socket", voltSocket, "--json"], "stderr");
  const qemuSource = haveQemu ? spawnWatched(qemuArgs(kernel, counterInitrd, ["-qmp", `unix:${qmpSocket},server=on,wait=off`]), "stdout") : undefined;
  let qmp: Qmp | undefined;
  const api = (path: string, init: RequestInit = {}) => fetch(`http://volt${path}`, { ...init, unix: voltSocket } as RequestInit);
  const creates = { volt: [] as number[], qemu: [] as number[], voltPausedMs: [] as number[] };
  const clones: { latency: number; mem: MemorySample; buildMs?: number }[] = [];
  const qemus: { latency: number; mem: MemorySample }[] = [];
  try {
    await voltSource.waitFor(/BENCH-TICK 3\b/, BOOT_TIMEOUT_MS);
    if (qemuSource) {
      await qemuSource.waitFor(/BENCH-TICK 3\b/, BOOT_TIMEOUT_MS);
      qmp = await Qmp.connect(qmpSocket);
    }
    // Snapshot creation, in memory vs QEMU's migration to a tmpfs file: a warm-up and a few rounds.
    // Each Volt snapshot holds a 128 MiB memfd in the source until it is deleted: keep only the newest.
    let snapshotId: string | undefined;
    let qemuFile: string | undefined;
    const createRounds = Math.min(ROUNDS, 3);
    for (let round = 0; round <= createRounds; round++) {
      const t0 = performance.now();
      const created = Bun.spawnSync([volt, "snapshot", "create", "--api-socket", voltSocket, "--in-memory", "--json"], { env: voltEnv, timeout: 120_000 });
      const voltMs = performance.now() - t0;
      if (created.exitCode !== 0) throw new Error(`volt snapshot create --in-memory exited ${created.exitCode}: ${created.stderr.toString().slice(-800)}`);
      const snapshot = parseJson(created.stdout.toString())?.snapshot as { id: string; pausedMs?: number } | undefined;
      if (!snapshot?.id) throw new Error(`volt snapshot create --in-memory printed no id: ${created.stdout.toString().slice(0, 400)}`);
      if (snapshotId !== undefined) await api(`/snapshot/memory/${snapshotId}`, { method: "DELETE" }).catch(() => undefined);
      snapshotId = snapshot.id;
      let qemuMs: number | undefined;
      if (qmp) {
        const file = join(shm, `qemu-state-${round}`);
        const q0 = performance.now();
        await qmp.execute("migrate", { uri: `exec:cat > ${file}` });
        for (;;) {
          const status = (await qmp.execute("query-migrate")) as { status?: string; "error-desc"?: string };
          if (status.status === "completed") break;
          if (status.status === "failed" || status.status === "cancelled") throw new Error(`QEMU migration ${status.status}: ${status["error-desc"] ?? ""}`);
          await Bun.sleep(5);
        }
        qemuMs = performance.now() - q0;
        await qmp.execute("cont");
        if (qemuFile) rmSync(qemuFile, { force: true });
        qemuFile = file;
      }
      log(`in-memory snapshot ${round === 0 ? "warm-up" : `round ${round}/${createRounds}`}: volt ${ms(voltMs)}${snapshot.pausedMs !== undefined ? ` (guest paused ${ms(snapshot.pausedMs)})` : ""}, id ${snapshot.id}; qemu migrate to ${shm} ${qemuMs === undefined ? "n/a" : ms(qemuMs)}`);
      if (round === 0) continue;
      creates.volt.push(voltMs);
      if (snapshot.pausedMs !== undefined) creates.voltPausedMs.push(snapshot.pausedMs);
      if (qemuMs !== undefined) creates.qemu.push(qemuMs);
    }
    detail.cloneSourceAfterSnapshot = { voltOverheadRssMiB: mib(sampleMemory(voltSource.proc.pid, voltGuest).overheadRssKiB) };

    const cloneVolt = async () => {
      const w = spawnWatched([volt, "snapshot", "clone", "--from", voltSocket, snapshotId!, "--json"], "stderr");
      try {
        const tick = await w.waitFor(TICK_LINE, 120_000);
        const latency = tick.at - w.spawnedAt;
        await Bun.sleep(1_000);
        return { latency, mem: sampleMemory(w.proc.pid, voltGuest) };
      } finally {
        await finish(w);
      }
    };
    const restoreQemu = async () => {
      const w = spawnWatched(qemuArgs(kernel, counterInitrd, ["-incoming", `exec:cat ${qemuFile!}`]), "stdout");
      try {
        const tick = await w.waitFor(TICK_LINE, 120_000);
        const latency = tick.at - w.spawnedAt;
        await Bun.sleep(1_000);
        return { latency, mem: sampleMemory(w.proc.pid, qemuGuest) };
      } finally {
        await finish(w);
      }
    };
    log("clone: warm-up");
    const warmStart = performance.now();
    await tryRound("warm-up volt clone", cloneVolt);
    if (qemuFile) await tryRound("warm-up qemu restore from /dev/shm", restoreQemu);
    const rounds = Math.min(CLONE_ROUNDS, roundsFitting(performance.now() - warmStart, reserveMs));
    for (let round = 1; round <= rounds; round++) {
      const v = await tryRound(`volt clone round ${round}`, cloneVolt);
      if (v) clones.push(v);
      const q = qemuFile ? await tryRound(`qemu restore from /dev/shm round ${round}`, restoreQemu) : undefined;
      if (q) qemus.push(q);
      log(`clone round ${round}/${rounds}: volt clone ${v ? ms(v.latency) : "failed"}; qemu restore from tmpfs ${q ? ms(q.latency) : "failed"}`);
    }
    if (snapshotId !== undefined) await api(`/snapshot/memory/${snapshotId}`, { method: "DELETE" }).catch(() => undefined);
  } finally {
    qmp?.close();
    await finish(voltSource);
    if (qemuSource) await finish(qemuSource);
    rmSync(shm, { recursive: true, force: true });
  }
  if (CLONE_ROUNDS < ROUNDS) notes.push(`The in-memory snapshot and clone rows ran ${Math.min(ROUNDS, 3)} and at most ${CLONE_ROUNDS} rounds (not ${ROUNDS}), to keep the whole run within its time limit.`);
  if (!shmIsTmpfs) notes.push(`The QEMU clone baseline's state file was not on tmpfs (${shm} is ${fsType(shm)}).`);
  metrics.push(metric({
    id: "snapshot-create-in-memory", group: "Snapshot", label: "in-memory snapshot of a running 128 MiB guest (command start → done)", unit: "ms",
    volt: creates.volt, baseline: creates.qemu, baselineName: "QEMU migrate exec:cat>/dev/shm file",
    how: "Volt: `volt snapshot create --api-socket S --in-memory` process start to exit (state + memfd kept in the VM's process); QEMU has no in-memory snapshot: QMP migrate to a file on tmpfs",
  }));
  metrics.push(metric({
    id: "clone-latency", group: "Clone", label: "clone command start → first counter line from the clone (QEMU: no in-memory clone; restore from a tmpfs file)", unit: "ms",
    volt: clones.map((c) => c.latency), baseline: qemus.map((c) => c.latency), baselineName: "QEMU -incoming exec:cat /dev/shm file",
    how: "Volt: spawn of `volt snapshot clone --from SOCKET ID` (memory mapped copy-on-write from the source's memfd) to the first complete counter line; QEMU: -incoming exec:cat of a migration file on /dev/shm",
  }));
  metrics.push(metric({
    id: "memory-overhead-clone", group: "Memory", label: "VMM overhead RSS of a clone, 1 s after its first counter line", unit: "MiB",
    volt: clones.map((c) => mib(c.mem.overheadRssKiB)), baseline: qemus.map((c) => mib(c.mem.overheadRssKiB)), baselineName: "QEMU restored from /dev/shm",
    how: "smaps Rss minus guest RAM (Volt: the copy-on-write mapping of the source's snapshot memfd; QEMU: its RAM block)",
  }));
  detail.clone = {
    snapshotCreate: creates,
    voltCloneGuestRssMiB: clones.map((c) => mib(c.mem.guestRssKiB)),
    qemuGuestRssMiB: qemus.map((c) => mib(c.mem.guestRssKiB)),
    voltGuestMappings: [...new Set(clones.flatMap((c) => c.mem.guestMappings))],
    qemuStateDir: shm,
    qemuStateDirFs: shmIsTmpfs ? "tmpfs" : "not tmpfs",
  };
}

function fsType(path: string): string {
  const out = Bun.spawnSync(["stat", "-f", "-c", "%T", path]).stdout.toString().trim();
  return out || "unknown";
}

// ------------------------------------------------------------------ 5c: block and network throughput
const IO_BLOCK_MIB = positiveInt("BENCH_BLOCK_MIB", 256);
const IO_NET_MIB = positiveInt("BENCH_NET_MIB", 64);
const IO_ROUNDS = Math.min(ROUNDS, positiveInt("BENCH_IO_ROUNDS", 3));
const HOST_IP = "10.0.2.1";
const GUEST_IP = "10.0.2.2";
const TAP = "vtbench0";
const SINK_PORT = 5001;
const GUEST_PORT = 5002;
/**
 * The I/O guest: a virtio-blk disk (/dev/vda) and a virtio-net interface
 * (eth0). Block: dd with O_DIRECT (no guest page cache) of the whole disk,
 * write then read, 1 MiB requests, timed by the guest's /proc/uptime around
 * dd (busybox's dd prints no elapsed time). Network: guest → host with `dd | nc` to the host's byte
 * counter, then host → guest into `nc -l` (its stdin the console, which
 * never gets input here: nc half-closes nothing and exits when the host's
 * stream ends).
 */
const ioScript = `set -u
ip link set lo up
[ -b /dev/vda ] || echo "BENCH-IO-FAIL: no /dev/vda (virtio-blk not found)"
if ip link set eth0 up && ip addr add ${GUEST_IP}/24 dev eth0; then echo BENCH-NET-UP; else echo "BENCH-IO-FAIL: no eth0 (virtio-net not found)"; fi
read t0 x < /proc/uptime; r=$(dd if=/dev/zero of=/dev/vda bs=1M count=${IO_BLOCK_MIB} oflag=direct conv=fsync 2>&1 | tail -n 1); read t1 x < /proc/uptime
echo "BENCH-BLK-WRITE: $t0 $t1 $r"
read t0 x < /proc/uptime; r=$(dd if=/dev/vda of=/dev/null bs=1M count=${IO_BLOCK_MIB} iflag=direct 2>&1 | tail -n 1); read t1 x < /proc/uptime
echo "BENCH-BLK-READ: $t0 $t1 $r"
n=0
until ping -c 1 -W 1 ${HOST_IP} >/dev/null 2>&1; do n=$((n+1)); if [ $n -gt 60 ]; then echo BENCH-NET-NO-PING; break; fi; done
echo BENCH-NET-PING
dd if=/dev/zero bs=64k count=${IO_NET_MIB * 16} 2>/dev/null | nc ${HOST_IP} ${SINK_PORT}
echo "BENCH-NET-G2H-DONE rc=$?"
nc -l -p ${GUEST_PORT} < /dev/console > /dev/null &
sleep 1
echo BENCH-NET-LISTENING
wait $!
echo BENCH-NET-H2G-DONE
exec sleep 1000000
`;

interface IoSample {
  blockWriteMiBs: number;
  blockReadMiBs: number;
  netG2hMiBs: number;
  netH2gMiBs: number;
  /** For the record: the host's view of the block transfers (console marker to marker), ms. */
  blockWriteConsoleMs?: number;
  bootToNetUpMs: number;
}

/** "T0 T1 N+0 records out": the guest's uptime (10 ms resolution) around busybox dd (which prints no elapsed time), and dd's count of 1 MiB blocks. */
function parseDd(line: string | undefined, what: string): { bytes: number; seconds: number } {
  const m = /^([\d.]+) ([\d.]+) (\d+)\+(\d+) records out/.exec(line?.trim() ?? "");
  if (!m) throw new Error(`${what}: dd failed or printed something unexpected: ${JSON.stringify(line)}`);
  if (Number(m[3]) !== IO_BLOCK_MIB) throw new Error(`${what}: dd moved ${m[3]} full blocks, not ${IO_BLOCK_MIB}: ${JSON.stringify(line)}`);
  return { bytes: IO_BLOCK_MIB * 2 ** 20, seconds: Number(m[2]) - Number(m[1]) };
}

async function ioSection(reserveMs: number): Promise<void> {
  const ipPath = Bun.which("ip");
  if (!ipPath) {
    unmeasured.push({ what: "block and network throughput", why: "`ip` (iproute2) is missing where the VMs run" });
    return;
  }
  const modules = (env.BENCH_GUEST_MODULES ?? "").split(":").filter((m) => m !== "");
  const ioInitrd = join(work, "io.cpio.gz");
  writeFileSync(ioInitrd, buildInitramfs({ script: ioScript, exit: "reboot", modules }));
  const diskDir = existsSync("/dev/shm") ? mkdtempSync("/dev/shm/volt-bench-disk-") : mkdtempSync(join(work, "disk-"));
  scratchDirs.add(diskDir);
  const namespace = `volt-bench-${process.pid}`;
  const ns = (args: string[]) => {
    const r = Bun.spawnSync([ipPath, "-n", namespace, ...args], { stderr: "pipe" });
    if (r.exitCode !== 0) throw new Error(`ip -n ${namespace} ${args.join(" ")}: ${r.stderr.toString().trim()}`);
  };
  const add = Bun.spawnSync([ipPath, "netns", "add", namespace], { stderr: "pipe" });
  if (add.exitCode !== 0) {
    unmeasured.push({ what: "block and network throughput", why: `cannot create a network namespace: ${add.stderr.toString().trim()}` });
    rmSync(diskDir, { recursive: true, force: true });
    return;
  }
  process.on("exit", () => Bun.spawnSync([ipPath, "netns", "delete", namespace]));
  const inNs = (argv: string[]) => [ipPath, "netns", "exec", namespace, ...argv];
  try {
    ns(["link", "set", "lo", "up"]);
    /**
     * The host's byte counter for guest → host: one per VM (a fresh process, so nothing a failed round left behind
     * can answer for the next one), listening on 0.0.0.0 in the namespace before the VM starts.
     */
    const startSink = async () => {
      const proc = Bun.spawn(inNs([process.execPath, join(import.meta.dir, "net-peer.ts"), "sink", String(SINK_PORT)]), { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
      const lines: string[] = [];
      let waiter: ((line: string) => void) | undefined;
      let stderr = "";
      void (async () => {
        for await (const chunk of proc.stderr) stderr += new TextDecoder().decode(chunk);
      })();
      void (async () => {
        const decoder = new TextDecoder();
        let buffer = "";
        for await (const chunk of proc.stdout) {
          buffer += decoder.decode(chunk, { stream: true });
          let nl: number;
          while ((nl = buffer.indexOf("\n")) >= 0) {
            const line = buffer.slice(0, nl);
            buffer = buffer.slice(nl + 1);
            const take = waiter;
            waiter = undefined;
            if (take) take(line);
            else lines.push(line);
          }
        }
      })();
      const next = (timeoutMs: number): Promise<string> => {
        const queued = lines.shift();
        if (queued !== undefined) return Promise.resolve(queued);
        return new Promise<string>((resolve, reject) => {
          const timer = setTimeout(() => {
            waiter = undefined;
            reject(new Error(`no report from the host's byte counter in ${timeoutMs / 1000} s (its exit status ${proc.exitCode ?? "(running)"}, stderr ${JSON.stringify(stderr.slice(-300))})`));
          }, timeoutMs);
          waiter = (line) => {
            clearTimeout(timer);
            resolve(line);
          };
        });
      };
      const stopSink = async () => {
        proc.kill("SIGKILL");
        await proc.exited;
      };
      const first = await next(30_000).catch((error: Error) => error.message);
      if (first !== '"LISTENING"') {
        await stopSink();
        throw new Error(`the host's byte counter did not start: ${first}`);
      }
      return { next, stop: stopSink };
    };

    const oneVm = async (which: "volt" | "qemu"): Promise<IoSample> => {
      Bun.spawnSync([ipPath, "-n", namespace, "link", "del", TAP], { stderr: "ignore" });
      const sink = await startSink();
      const disk = join(diskDir, `${which}.img`);
      rmSync(disk, { force: true });
      writeFileSync(disk, "");
      Bun.spawnSync(["truncate", "-s", `${IO_BLOCK_MIB}M`, disk]);
      const argv = which === "volt"
        ? [...voltRunArgs(primary, ioInitrd).filter((a) => a !== "--boot-timer"), "--drive", `path=${disk}`, "--net", `tap=${TAP}`]
        // acpi=off: QEMU then names its virtio-mmio transports on the kernel command line (virtio_mmio.device=, as
        // Volt does for a kernel without ACPI); with ACPI on it lists them only in its DSDT, which the microVM kernel
        // (no CONFIG_ACPI) never reads. The guest sees the same machine otherwise (its kernel ignores ACPI anyway).
        : qemuArgs(primary, ioInitrd, [
          "-M", "microvm,acpi=off",
          "-drive", `id=d0,file=${disk},format=raw,if=none,cache=writeback,aio=threads`, "-device", "virtio-blk-device,drive=d0",
          "-netdev", `tap,id=n0,ifname=${TAP},script=no,downscript=no`, "-device", "virtio-net-device,netdev=n0",
        ]);
      const w = spawnWatched(inNs(argv), which === "volt" ? "stderr" : "stdout");
      try {
        const up = await w.waitFor(/BENCH-NET-UP|BENCH-IO-FAIL: .*/, BOOT_TIMEOUT_MS);
        if (up.match[0].startsWith("BENCH-IO-FAIL")) throw new Error(`${which}: ${up.match[0].trim()}`);
        ns(["addr", "add", `${HOST_IP}/24`, "dev", TAP]);
        ns(["link", "set", TAP, "up"]);
        const write = await w.waitFor(/BENCH-BLK-WRITE: (.*)\r?\n/, 300_000);
        const read = await w.waitFor(/BENCH-BLK-READ: (.*)\r?\n/, 300_000);
        const wr = parseDd(write.match[1], `${which} block write`);
        const rd = parseDd(read.match[1], `${which} block read`);
        await w.waitFor(/BENCH-NET-PING\r?\n/, 120_000);
        if (w.console().includes("BENCH-NET-NO-PING")) throw new Error(`${which}: the guest could not ping the host over the tap`);
        // The counter's report, or the guest saying its nc has finished (then the report has 15 s to come).
        const report = sink.next(240_000);
        report.catch(() => undefined);
        const guestDone = w.waitFor(/BENCH-NET-G2H-DONE rc=(\d+)/, 240_000);
        guestDone.catch(() => undefined);
        const first = await Promise.race([report.then((line) => ({ line })), guestDone.then((m) => ({ rc: m.match[1] }))]);
        let line: string;
        if ("line" in first) line = first.line;
        else {
          const late = await Promise.race([report, Bun.sleep(15_000).then(() => undefined)]);
          if (late === undefined) throw new Error(`${which}: the guest's nc ended (status ${first.rc}) but the host counted no finished connection; console tail: ${JSON.stringify(w.console().slice(-600))}`);
          line = late;
        }
        const g2h = JSON.parse(line) as { bytes: number; ms: number };
        if (g2h.bytes !== IO_NET_MIB * 2 ** 20) throw new Error(`${which}: the host counted ${g2h.bytes} bytes from the guest, expected ${IO_NET_MIB * 2 ** 20}`);
        await w.waitFor(/BENCH-NET-LISTENING/, 120_000);
        const source = Bun.spawn(inNs([process.execPath, join(import.meta.dir, "net-peer.ts"), "source", GUEST_IP, String(GUEST_PORT), String(IO_NET_MIB * 2 ** 20)]), { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
        const timer = setTimeout(() => source.kill("SIGKILL"), 300_000);
        const [out, err, code] = await Promise.all([new Response(source.stdout).text(), new Response(source.stderr).text(), source.exited]);
        clearTimeout(timer);
        if (code !== 0) throw new Error(`${which}: host → guest sender exited ${code}: ${err.slice(-400)}`);
        const h2g = JSON.parse(out.trim()) as { bytes: number; ms: number };
        await w.waitFor(/BENCH-NET-H2G-DONE/, 60_000);
        const perS = (bytes: number, msValue: number) => bytes / 2 ** 20 / (msValue / 1000);
        return {
          blockWriteMiBs: wr.bytes / 2 ** 20 / wr.seconds,
          blockReadMiBs: rd.bytes / 2 ** 20 / rd.seconds,
          netG2hMiBs: perS(g2h.bytes, g2h.ms),
          netH2gMiBs: perS(h2g.bytes, h2g.ms),
          blockWriteConsoleMs: write.at - up.at,
          bootToNetUpMs: up.at - w.spawnedAt,
        };
      } catch (error) {
        throw new Error(`${(error as Error).message.slice(0, 900)}; console tail: ${JSON.stringify(w.console().slice(-500))}`);
      } finally {
        await finish(w);
        await sink.stop();
        rmSync(disk, { force: true });
      }
    };
    const show = (s: IoSample | undefined) => s
      ? `block write ${s.blockWriteMiBs.toFixed(1)} MiB/s, read ${s.blockReadMiBs.toFixed(1)} MiB/s; TCP guest→host ${s.netG2hMiBs.toFixed(1)} MiB/s, host→guest ${s.netH2gMiBs.toFixed(1)} MiB/s`
      : "failed";
    log(`block and network: warm-up (${IO_BLOCK_MIB} MiB disk image on ${fsType(diskDir)}, ${IO_NET_MIB} MiB each way over a tap in netns ${namespace})`);
    const warmStart = performance.now();
    const warmVolt = await tryRound("warm-up volt io", () => oneVm("volt"));
    const warmQemu = haveQemu ? await tryRound("warm-up qemu io", () => oneVm("qemu")) : undefined;
    log(`block and network warm-up: volt ${show(warmVolt)}; qemu ${show(warmQemu)}`);
    const fit = roundsFitting(performance.now() - warmStart, reserveMs);
    const rounds = Math.min(IO_ROUNDS, fit);
    const volts: IoSample[] = [];
    const qemus: IoSample[] = [];
    for (let round = 1; round <= rounds; round++) {
      const v = await tryRound(`volt io round ${round}`, () => oneVm("volt"));
      if (v) volts.push(v);
      const q = haveQemu ? await tryRound(`qemu io round ${round}`, () => oneVm("qemu")) : undefined;
      if (q) qemus.push(q);
      log(`block and network round ${round}/${rounds}: volt ${show(v)}; qemu ${show(q)}`);
    }
    detail.io = { volt: volts, qemu: qemus, blockMiB: IO_BLOCK_MIB, netMiB: IO_NET_MIB, diskOn: fsType(diskDir), rounds, roundsWanted: IO_ROUNDS };
    if (rounds < ROUNDS) notes.push(`Block and network throughput ran ${rounds} rounds (not ${ROUNDS}) to keep the whole run within its time limit: each round boots both VMMs with a disk and a NIC and moves ${IO_BLOCK_MIB} MiB each way on the disk and ${IO_NET_MIB} MiB each way over TCP.`);
    const row = (id: string, label: string, pick: (s: IoSample) => number, how: string) => metrics.push(metric({
      id, group: id.startsWith("block") ? "Block" : "Network", label, unit: "MiB/s",
      volt: volts.map(pick), baseline: qemus.map(pick), baselineName: id.startsWith("block") ? "QEMU virtio-blk-device, cache=writeback" : "QEMU virtio-net-device, -netdev tap (no vhost)", how,
    }));
    row("block-write", `sequential write, ${IO_BLOCK_MIB} MiB raw image on tmpfs, guest dd bs=1M oflag=direct conv=fsync (higher is better)`, (s) => s.blockWriteMiBs,
      "guest /proc/uptime around dd (10 ms resolution); O_DIRECT in the guest; host file on tmpfs (Volt pread/pwrite via the page cache, FLUSH = fsync; QEMU cache=writeback aio=threads: the same semantics, cache=none is impossible on tmpfs)");
    row("block-read", `sequential read, ${IO_BLOCK_MIB} MiB raw image on tmpfs, guest dd bs=1M iflag=direct (higher is better)`, (s) => s.blockReadMiBs,
      "as for the write: the whole disk read back with O_DIRECT");
    row("net-guest-to-host", `TCP guest → host over a tap, ${IO_NET_MIB} MiB, busybox dd piped into nc (higher is better)`, (s) => s.netG2hMiBs,
      "bytes counted by a Bun TCP socket on the host (in a private netns with the tap), accept to the guest's end of stream");
    row("net-host-to-guest", `TCP host → guest over a tap, ${IO_NET_MIB} MiB, into busybox nc -l (higher is better)`, (s) => s.netH2gMiBs,
      "a Bun TCP socket on the host sends the bytes; connect to the guest's close after its nc read everything");
  } finally {
    Bun.spawnSync([ipPath, "netns", "delete", namespace]);
    rmSync(diskDir, { recursive: true, force: true });
  }
}

// ------------------------------------------------------------------ 6: density
async function densitySection(): Promise<void> {
  const windowMs = DENSITY_S * 1000;
  const maxVms = positiveInt("BENCH_DENSITY_MAX", 64);
  const result: Record<string, unknown> = { windowS: DENSITY_S, maxVms };
  const counts: Record<"volt" | "qemu", number> = { volt: 0, qemu: 0 };
  const perVmOverhead: Record<"volt" | "qemu", number[]> = { volt: [], qemu: [] };
  const perVmPss: Record<"volt" | "qemu", number[]> = { volt: [], qemu: [] };
  for (const which of haveQemu ? (["volt", "qemu"] as const) : (["volt"] as const)) {
    const vms: Watched[] = [];
    const windowStart = performance.now();
    const steps: { count: number; atS: number; meanOverheadMiB: number; meanOverheadPssMiB: number; memAvailableMiB: number }[] = [];
    let stoppedBy = "window";
    try {
      while (performance.now() - windowStart < windowMs) {
        if (vms.length >= maxVms) {
          stoppedBy = `the cap of ${maxVms} VMs`;
          break;
        }
        const available = memAvailableMiB();
        if (available < 768) {
          stoppedBy = `memory (MemAvailable ${available.toFixed(0)} MiB)`;
          break;
        }
        const w = which === "volt" ? spawnWatched(voltRunArgs(primary, bootInitrd), "stderr") : spawnWatched(qemuArgs(primary, bootInitrd), "stdout");
        vms.push(w);
        const left = windowMs - (performance.now() - windowStart);
        try {
          await w.waitFor(INIT_MARKER, Math.max(1, left));
        } catch {
          stoppedBy = "window (the last VM had not reached /init)";
          break;
        }
        const samples = vms.map((vm) => sampleMemory(vm.proc.pid, which === "volt" ? voltGuest : qemuGuest));
        const mean = (f: (m: MemorySample) => number) => mib(samples.reduce((sum, m) => sum + f(m), 0) / samples.length);
        steps.push({
          count: vms.length,
          atS: (performance.now() - windowStart) / 1000,
          meanOverheadMiB: mean((m) => m.overheadRssKiB),
          meanOverheadPssMiB: mean((m) => m.overheadPssKiB),
          memAvailableMiB: memAvailableMiB(),
        });
      }
    } finally {
      await Promise.all(vms.map((vm) => stop(vm, "SIGKILL")));
    }
    counts[which] = steps.length;
    perVmOverhead[which] = steps.map((s) => s.meanOverheadMiB);
    perVmPss[which] = steps.map((s) => s.meanOverheadPssMiB);
    result[which] = { reached: steps.length, stoppedBy, steps };
    log(`density: ${which}: ${steps.length} VMs reached /init within ${DENSITY_S} s (started one after another; stopped by ${stoppedBy}); mean overhead per VM at the end: RSS ${steps.at(-1)?.meanOverheadMiB.toFixed(1) ?? "?"} MiB, PSS ${steps.at(-1)?.meanOverheadPssMiB.toFixed(1) ?? "?"} MiB`);
    await Bun.sleep(2_000);
  }
  detail.density = result;
  metrics.push(metric({
    id: "density-count", group: "Density", label: `128 MiB VMs started one after another that reached /init within ${DENSITY_S} s (all kept running)`, unit: "VMs",
    volt: [counts.volt], baseline: haveQemu ? [counts.qemu] : [], baselineName: "QEMU microvm",
    how: "one run per VMM (n=1): start a VM, wait for its /init marker, start the next, until the window ends; higher is better",
  }));
  metrics.push(metric({
    id: "density-overhead", group: "Density", label: "mean overhead RSS per VM as the count grows (one sample per count)", unit: "MiB",
    volt: perVmOverhead.volt, baseline: perVmOverhead.qemu, baselineName: "QEMU microvm",
    how: "after each VM reaches /init: mean over all running VMs of smaps Rss minus guest RAM",
  }));
  metrics.push(metric({
    id: "density-overhead-pss", group: "Density", label: "mean overhead PSS per VM as the count grows (shared executable pages split)", unit: "MiB",
    volt: perVmPss.volt, baseline: perVmPss.qemu, baselineName: "QEMU microvm",
    how: "as above with Pss: pages of the VMM binary and libraries shared by N VMs count 1/N to each",
  }));
}

// ------------------------------------------------------------------ exit profile (diagnostics)
/**
 * What KVM counted for one boot to /init under each VMM: L1's debugfs has a
 * directory per VM (`<pid>-<fd>`) whose files sum the vCPUs' statistics
 * (exits, io_exits, mmio_exits, halt_exits, pf_taken, ...). io and mmio exits
 * are the ones the VMM's own code handles. Not a metric: it explains them.
 */
async function profileSection(): Promise<void> {
  const debugfs = "/sys/kernel/debug";
  if (!existsSync(join(debugfs, "kvm"))) Bun.spawnSync(["mount", "-t", "debugfs", "debugfs", debugfs], { stderr: "ignore" });
  if (!existsSync(join(debugfs, "kvm"))) {
    unmeasured.push({ what: "exit profile (KVM's per-VM exit counts)", why: "debugfs with KVM statistics is not available here" });
    return;
  }
  const statsOf = (pid: number): Record<string, number> => {
    const totals: Record<string, number> = {};
    for (const dir of readdirSync(join(debugfs, "kvm")).filter((d) => d.startsWith(`${pid}-`))) {
      for (const file of readdirSync(join(debugfs, "kvm", dir))) {
        try {
          const value = Number(readFileSync(join(debugfs, "kvm", dir, file), "utf8").trim());
          if (Number.isFinite(value)) totals[file] = (totals[file] ?? 0) + value;
        } catch {
          // a directory (vcpuN) or an unreadable file
        }
      }
    }
    return totals;
  };
  // KVM's kvm_pio trace event names the port of every port-I/O exit: which ports the guest hammers.
  const tracing = existsSync(join(debugfs, "tracing", "events", "kvm", "kvm_pio")) ? join(debugfs, "tracing") : undefined;
  const traceWrite = (file: string, value: string) => writeFileSync(join(tracing!, file), value);
  const portsOf = (pid: number): Record<string, number> => {
    const threads = new Set(readdirSync(`/proc/${pid}/task`).map(Number));
    const counts: Record<string, number> = {};
    for (const line of readFileSync(join(tracing!, "trace"), "utf8").split("\n")) {
      // "  bun-1234  [001] d..1.  12.345: kvm_pio: pio_read at 0x64 size 1 count 1 val 0x1c"
      const m = /-(\d+)\s+\[.*kvm_pio: pio_(read|write) at (0x[0-9a-f]+)/.exec(line);
      if (!m || !threads.has(Number(m[1]))) continue;
      const key = `${m[2]} ${m[3]}`;
      counts[key] = (counts[key] ?? 0) + 1;
    }
    return Object.fromEntries(Object.entries(counts).sort((a, b) => b[1] - a[1]).slice(0, 12));
  };
  const profile = async (argv: string[], consoleOn: "stdout" | "stderr") => {
    if (tracing) {
      traceWrite("buffer_size_kb", "16384");
      Bun.spawnSync(["sh", "-c", `echo > ${join(tracing, "trace")}`]); // opening with O_TRUNC clears the buffer
      traceWrite("events/kvm/kvm_pio/enable", "1");
    }
    const w = spawnWatched(argv, consoleOn);
    try {
      const marker = await w.waitFor(INIT_MARKER, BOOT_TIMEOUT_MS);
      const stats = statsOf(w.proc.pid);
      if (tracing) traceWrite("events/kvm/kvm_pio/enable", "0");
      // Read while the process (and so its thread list) still exists.
      return { toInitMs: marker.at - w.spawnedAt, stats, ...(tracing ? { topPorts: portsOf(w.proc.pid) } : {}) };
    } finally {
      await stop(w, "SIGKILL");
    }
  };
  const keys = ["exits", "io_exits", "mmio_exits", "halt_exits", "irq_exits", "irq_window_exits", "signal_exits", "pf_taken", "pf_fixed", "insn_emulation"];
  const result: Record<string, unknown[]> = { volt: [], qemu: [] };
  for (let round = 1; round <= 2; round++) {
    for (const which of haveQemu ? (["volt", "qemu"] as const) : (["volt"] as const)) {
      const p = await tryRound(`exit profile ${which} ${round}`, () =>
        which === "volt" ? profile(voltRunArgs(primary, bootInitrd), "stderr") : profile(qemuArgs(primary, bootInitrd), "stdout"));
      if (!p) continue;
      result[which]!.push(p);
      log(`exit profile ${which} round ${round}: /init after ${ms(p.toInitMs)}; ${keys.filter((k) => k in p.stats).map((k) => `${k} ${p.stats[k]}`).join(", ")}`);
      if (p.topPorts) log(`exit profile ${which} round ${round}: port I/O exits by port: ${Object.entries(p.topPorts).map(([k, v]) => `${k} ×${v}`).join(", ")}`);
    }
  }
  detail.exitProfile = result;
}

function memAvailableMiB(): number {
  const m = /MemAvailable:\s+(\d+) kB/.exec(readFileSync("/proc/meminfo", "utf8"));
  return m ? Number(m[1]) / 1024 : freemem() / 2 ** 20;
}

// ------------------------------------------------------------------ run
// Rough time each later section needs, kept in reserve by the earlier ones.
const RESERVE = { startup: 60_000, exits: 60_000, restore: 90_000, clone: 120_000, io: 270_000, density: DENSITY_S > 0 ? DENSITY_S * 2_000 + 30_000 : 0 };
async function section(name: string, body: () => Promise<void>): Promise<void> {
  try {
    await body();
  } catch (error) {
    log(`section ${name} FAILED: ${(error as Error).stack ?? (error as Error).message}`);
    unmeasured.push({ what: name, why: `failed in this run: ${(error as Error).message.slice(0, 300)}` });
  }
}

const laterReserve = (...names: (keyof typeof RESERVE)[]) => names.reduce((sum, n) => sum + (selected.has(n) ? RESERVE[n] : 0), 0);
const otherKernelsReserve = selected.has("boot") ? 120_000 * (localKernels.length - 1) : 0;
if (selected.has("boot")) await section(`boot time (${primary.name})`, () => bootSection(primary, true, laterReserve("startup", "exits", "restore", "clone", "io", "density") + otherKernelsReserve));
if (selected.has("startup")) await section("start-up", () => startupSection(laterReserve("exits", "restore", "clone", "io", "density") + otherKernelsReserve));
if (selected.has("exits")) await section("exit cost", () => exitSection(laterReserve("restore", "clone", "io", "density") + otherKernelsReserve));
if (selected.has("restore")) await section("snapshot and restore", () => restoreSection(laterReserve("clone", "io", "density") + otherKernelsReserve));
if (selected.has("clone")) await section("in-memory clone", () => cloneSection(laterReserve("io", "density") + otherKernelsReserve));
if (selected.has("io")) await section("block and network throughput", () => ioSection(laterReserve("density") + otherKernelsReserve));
if (selected.has("boot")) {
  for (const kernel of localKernels.slice(1)) {
    await section(`boot time (${kernel.name})`, () => bootSection(kernel, false, laterReserve("density")));
  }
}
if (selected.has("density")) {
  if (DENSITY_S > 0 && remainingMs() > RESERVE.density) await section("density", densitySection);
  else unmeasured.push({ what: "density", why: DENSITY_S > 0 ? "skipped: not enough of the time budget left" : "skipped (BENCH_DENSITY_S=0)" });
}
if (selected.has("profile")) {
  if (remainingMs() > 90_000) await section("exit profile", profileSection);
  else unmeasured.push({ what: "exit profile", why: "skipped: not enough of the time budget left" });
}
for (const name of ALL_SECTIONS) if (!selected.has(name)) unmeasured.push({ what: `section "${name}"`, why: "not selected (BENCH_SECTIONS)" });


// ------------------------------------------------------------------ results
saveResults();
console.log(renderTable(lastResults!));

function saveResults(): void {
  const host = env.BENCH_HOST ? (JSON.parse(env.BENCH_HOST) as Results["machine"]["host"]) : machineHere();
  const mode = (env.BENCH_KVM_MODE as "native" | "nested" | undefined) ?? "native";
  const runNotes = [...notes];
  if (env.BENCH_HOST_LOAD) {
    const hostLoad = JSON.parse(env.BENCH_HOST_LOAD) as { loadavg: string; otherProcesses: string[] };
    detail.hostAtStart = hostLoad;
    if (hostLoad.otherProcesses.length > 0) {
      runNotes.push(`Other work was running on the host when this run started (load average ${hostLoad.loadavg}; ${hostLoad.otherProcesses.length} busy processes such as another nested L1): both VMMs' rounds share that noise, interleaved, but spreads are wider.`);
    }
  }
  if (mode === "nested") {
    runNotes.push("KVM was nested: the guests ran under KVM inside an emulated L1 (QEMU TCG with an emulated AMD SVM CPU). Every exit and page fault costs many times what it does on hardware; compare ratios, not absolute times.");
  }
  runNotes.push(`Boot: the kernel command line is Volt's (${cmdlineFor(primary)}) for both VMMs; "quiet" keeps the boot log off the serial console, which would otherwise dominate (each byte is a port-I/O exit in both VMMs).`);
  runNotes.push("Volt runs from a copy of dist/volt on local tmpfs; QEMU is the system binary. One warm-up round per VMM and section is discarded.");
  const results: Results = {
    schema: 1,
    date: new Date().toISOString(),
    kvm: { mode, reason: env.BENCH_KVM_REASON ?? "" },
    machine: { host, runner: { ...machineHere(), kernel: Bun.spawnSync(["uname", "-r"]).stdout.toString().trim() } },
    versions: {
      volt: env.BENCH_VOLT_COMMIT ?? "unknown",
      bun: Bun.version,
      qemu: qemuVersion,
      kernels: localKernels.map((k) => `${k.id}: ${basename(kernels.find((o) => o.id === k.id)!.path)}`).join(", "),
    },
    rounds: ROUNDS,
    durationS: (performance.now() - started) / 1000,
    metrics,
    unmeasured,
    notes: runNotes,
    detail,
  };
  writeResults(RESULTS_DIR, results);
  const historyDir = join(RESULTS_DIR, "history");
  mkdirSync(historyDir, { recursive: true });
  writeFileSync(join(historyDir, `${results.date.replaceAll(":", "-").slice(0, 19)}.json`), `${JSON.stringify(results, null, 2)}\n`);
  saved = true;
  lastResults = results;
  log(`results written to ${RESULTS_DIR} (latest.json, latest.md, one SVG per metric)`);
}

function machineHere(): { nproc: number; cpu: string; memGiB: number } {
  const model = /^model name\s*:\s*(.+)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1]?.trim() ?? cpus()[0]?.model ?? "unknown";
  return { nproc: cpus().length, cpu: model, memGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10 };
}

function positiveInt(name: string, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value <= 0) {
    console.error(`bench: ${name}=${raw} is not a positive whole number`);
    process.exit(2);
  }
  return value;
}
