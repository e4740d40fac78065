/**
 * Real KVM on hosts without hardware virtualisation: boot Debian's generic
 * kernel under QEMU's software emulator with an emulated AMD SVM CPU ("L1"),
 * load kvm-amd there, share the host root (read-only) and the checkout
 * (read-write, same path) over 9p, chroot into the host root and run one job.
 * Host binaries (bun, qemu, the project) run inside L1 unchanged.
 *
 * L1 runs on QEMU 10 from Debian backports when it can be had: the system's
 * QEMU 7.2 can live-lock L1 under multi-threaded TCG when L1's kernel patches
 * its own text (KVM static keys). L1 also runs l1-pin, which keeps those keys
 * from flipping at all.
 */
import { createHash } from "node:crypto";
import { appendFileSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { buildInitramfs } from "../../src/image/initramfs.ts";
import { fetchDebianKernel, findKernelModules, type DebianKernel } from "../../src/kernel/debian.ts";

/** Everything needed to boot L1, cached outside the checkout. */
export interface L1Assets {
  qemu: QemuForL1;
  kernel: DebianKernel;
  initramfsPath: string;
}

interface QemuForL1 {
  binary: string;
  /** Extra arguments (firmware search paths of a privately unpacked QEMU). */
  args: string[];
  env: Record<string, string>;
  description: string;
}

export interface L1Job {
  /** Command and arguments, run inside L1 in `checkoutDir` (looked up on the host root's PATH). */
  command: readonly string[];
  /** Shared read-write into L1 at the same path; the job's working directory. */
  checkoutDir: string;
  /** Variables set for the job (besides CI and VOLT_*, which pass through). */
  env?: Record<string, string>;
  /** Names of further host variables to pass through. */
  passEnv?: readonly string[];
  /** Host-side limit for the whole run, boot included. Default 40 minutes. */
  timeoutMs?: number;
  /** Limit for the job inside L1 (the `timeout` command there). Default: 3 minutes less than timeoutMs, at least 1 minute. */
  innerTimeoutMs?: number;
  /** Give up on an attempt whose job has not started by then (and retry). Default 5 minutes. */
  bootTimeoutMs?: number;
  /** Console transcript; default: a file in the run's state directory. */
  logFile?: string;
  /** Put before each console line relayed to stdout. Default none. */
  consolePrefix?: string;
}

export type L1Outcome = "completed" | "no-kvm" | "timeout" | "crashed";

export interface L1Result {
  /** The job's exit status, or non-zero for any failure of L1 itself (124 timeout, 125 no /dev/kvm). */
  exitCode: number;
  outcome: L1Outcome;
  attempts: number;
  logFile: string;
}

const REQUIRED_MODULES = [
  "irqbypass", "kvm", "ccp", "kvm-amd",
  "virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
  "9pnet", "9pnet_virtio", "netfs", "fscache", "9p",
];
/**
 * L1's root is the host's, without /lib/modules for L1's kernel, so modules
 * later tests need (TAP, veth, bridges, loop mounts, vsock, vhost) are loaded
 * at boot. Together they add 0.5-0.8 s (L1 clock) to L1's boot.
 */
const OPTIONAL_MODULES = [
  "tun", "tap", "veth", "bridge", "loop", "ext4", "crc32c_generic", "fuse",
  "vsock", "vsock_loopback", "vhost_vsock", "vhost_net",
];
const APT_PACKAGES = ["qemu-system-x86", "busybox-static", "gcc", "libc6-dev", "linux-libc-dev"];
const BACKPORTS_QEMU_PACKAGES = ["qemu-system-x86", "qemu-system-data", "qemu-system-common", "seabios"];
const CONSOLE_TAIL_LINES = 60;
// ESC c (full reset), ESC [2J (clear screen), ESC [?7l (no line wrap)
const TERMINAL_RESETS = /\x1bc|\x1b\[2J|\x1b\[\?7l/g;
const MAX_ATTEMPTS = 3;
const INNER_TIMEOUT_MARKER = "L1-JOB: timed out";

export function defaultCacheDir(env: Record<string, string | undefined> = process.env): string {
  if (env.VOLT_TEST_CACHE) return env.VOLT_TEST_CACHE;
  const cacheHome = env.XDG_CACHE_HOME || join(env.HOME || tmpdir(), ".cache");
  return join(cacheHome, "volt-test");
}

const say = (line: string): void => {
  process.stderr.write(`l1: ${line}\n`);
};

/** Installs packages, fetches QEMU and the kernel, builds the helper and L1's initramfs. Cached. */
export async function prepareL1(options: { cacheDir?: string } = {}): Promise<L1Assets> {
  const cacheDir = options.cacheDir ?? defaultCacheDir();
  mkdirSync(cacheDir, { recursive: true });
  const started = performance.now();
  await ensureAptPackages(APT_PACKAGES);
  const qemu = await qemuForL1(cacheDir);
  const kernel = await fetchDebianKernel({ cacheDir, log: say });
  const pin = await compilePinHelper(cacheDir);

  const required = findKernelModules(kernel, REQUIRED_MODULES);
  const optional = findKernelModules(kernel, OPTIONAL_MODULES, { ifPresent: true }).filter((p) => !required.includes(p));
  const image = buildInitramfs({
    modules: [...required, ...optional],
    files: [{ hostPath: pin, archivePath: "/usr/libexec/volt/l1-pin", mode: 0o755 }],
    script: readFileSync(join(import.meta.dir, "l1-init.sh"), "utf8"),
    exit: "poweroff",
    compressionLevel: 1,
  });
  const digest = createHash("sha256").update(image).digest("hex").slice(0, 16);
  const initramfsPath = join(cacheDir, `l1-initramfs-${digest}.cpio.gz`);
  if (!existsSync(initramfsPath)) writeAtomically(initramfsPath, image);
  say(`assets ready in ${seconds(started)}: ${qemu.description}, kernel ${kernel.version}, ${required.length + optional.length} modules`);
  return { qemu, kernel, initramfsPath };
}

/** Boots L1, runs the job, relays L1's console live, and reports the job's exit status. */
export async function runInL1(assets: L1Assets, job: L1Job): Promise<L1Result> {
  const timeoutMs = job.timeoutMs ?? 40 * 60_000;
  const innerTimeoutMs = job.innerTimeoutMs ?? Math.max(60_000, timeoutMs - 3 * 60_000);
  const bootTimeoutMs = job.bootTimeoutMs ?? 5 * 60_000;
  const deadline = Date.now() + timeoutMs;

  const stateDir = join(tmpdir(), `volt-l1-${process.pid}-${Date.now()}`);
  const jobDir = join(stateDir, "job");
  mkdirSync(jobDir, { recursive: true });
  // Outside stateDir, which is removed at the end: the caller may want to read it.
  const logFile = job.logFile ?? join(tmpdir(), `volt-l1-console-${process.pid}-${Date.now()}.log`);
  mkdirSync(dirname(logFile), { recursive: true });
  writeFileSync(logFile, "");
  writeFileSync(join(jobDir, "checkout"), job.checkoutDir);
  writeFileSync(join(jobDir, "job.sh"), jobScript(job, innerTimeoutMs));

  try {
    for (let attempt = 1; ; attempt++) {
      const attemptResult = await bootOnce(assets, job, { jobDir, logFile, deadline, bootTimeoutMs, attempt });
      if (attemptResult.kind === "reported") {
        const exitCode = attemptResult.rc;
        const outcome: L1Outcome = attemptResult.innerTimeout ? "timeout" : exitCode === 125 ? "no-kvm" : "completed";
        if (outcome === "timeout") say(`the job hit its ${innerTimeoutMs / 1000}s timeout inside L1`);
        if (outcome !== "completed") printTail(attemptResult.tail, logFile);
        return { exitCode, outcome, attempts: attempt, logFile };
      }
      const retryable = !attemptResult.jobStarted && attempt < MAX_ATTEMPTS && Date.now() < deadline;
      if (retryable) {
        say(`L1 died before the job started (${attemptResult.detail}); retrying (attempt ${attempt + 1} of ${MAX_ATTEMPTS})`);
        continue;
      }
      if (attemptResult.kind === "timeout") {
        const elapsedSeconds = ((timeoutMs - (deadline - Date.now())) / 1000).toFixed(0);
        say(`TIMEOUT: L1 killed after ${elapsedSeconds}s (limit ${timeoutMs / 1000}s)`);
        printTail(attemptResult.tail, logFile);
        return { exitCode: 124, outcome: "timeout", attempts: attempt, logFile };
      }
      const when = attemptResult.jobStarted ? "while running the job" : "before the job started";
      say(`L1 died ${when} (${attemptResult.detail}) and reported no exit status`);
      printTail(attemptResult.tail, logFile);
      return { exitCode: 1, outcome: "crashed", attempts: attempt, logFile };
    }
  } finally {
    rmSync(stateDir, { recursive: true, force: true });
  }
}

type AttemptOutcome =
  | { kind: "reported"; rc: number; innerTimeout: boolean; tail: string[] }
  | { kind: "timeout" | "died"; jobStarted: boolean; detail: string; tail: string[] };

async function bootOnce(
  assets: L1Assets,
  job: L1Job,
  run: { jobDir: string; logFile: string; deadline: number; bootTimeoutMs: number; attempt: number },
): Promise<AttemptOutcome> {
  // QEMU option values escape a comma by doubling it.
  const virtfs = (tag: string, path: string, extra: string) =>
    ["-virtfs", `local,path=${path.replaceAll(",", ",,")},mount_tag=${tag},security_model=passthrough${extra}`];
  const args = [
    ...assets.qemu.args,
    "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2", "-m", "4096",
    "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
    "-device", "isa-debug-exit,iobase=0xf4,iosize=0x01",
    "-kernel", assets.kernel.vmlinuzPath, "-initrd", assets.initramfsPath,
    "-append", "console=ttyS0 panic=-1 quiet",
    ...virtfs("hostroot", "/", ",readonly=on,multidevs=remap"),
    ...virtfs("voltjob", run.jobDir, ""),
    ...virtfs("checkout", job.checkoutDir, ",multidevs=remap"),
  ];
  appendFileSync(run.logFile, `=== L1 attempt ${run.attempt}: ${assets.qemu.binary} ${args.join(" ")}\n`);
  if (run.attempt === 1) say(`booting L1: ${assets.qemu.description}`);

  const qemu = Bun.spawn([assets.qemu.binary, ...args], {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, ...assets.qemu.env },
  });
  const stopQemu = () => {
    qemu.kill("SIGTERM");
    setTimeout(() => qemu.kill("SIGKILL"), 5000).unref();
  };
  const onSignal = (signal: NodeJS.Signals) => {
    stopQemu();
    say(`${signal}: stopped L1`);
    process.exit(130);
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);

  const tail: string[] = [];
  let jobStarted = false;
  let reportedRc: number | undefined;
  let innerTimeout = false;
  let timedOut = false;
  const onLine = (raw: string, fromStderr: boolean) => {
    // SeaBIOS resets and clears the "screen" (the serial console); keep that off the user's terminal.
    const line = raw.replace(TERMINAL_RESETS, "");
    appendFileSync(run.logFile, `${line}\n`);
    tail.push(line);
    if (tail.length > CONSOLE_TAIL_LINES) tail.shift();
    if (fromStderr) process.stderr.write(`qemu: ${line}\n`);
    else process.stdout.write(`${job.consolePrefix ?? ""}${line}\n`);
    if (line.includes("L1: job start")) jobStarted = true;
    if (line.includes(INNER_TIMEOUT_MARKER)) innerTimeout = true;
    const done = /L1: done rc=(\d+)/.exec(line);
    if (done) reportedRc = Number(done[1]);
  };

  const overall = setTimeout(() => {
    timedOut = true;
    stopQemu();
  }, Math.max(0, run.deadline - Date.now()));
  const boot = setTimeout(() => {
    if (jobStarted) return;
    say(`L1 did not start the job within ${run.bootTimeoutMs / 1000}s; killing it`);
    timedOut = true;
    stopQemu();
  }, run.bootTimeoutMs);
  const [, , exitCode] = await Promise.all([
    relayLines(qemu.stdout, (line) => onLine(line, false)),
    relayLines(qemu.stderr, (line) => onLine(line, true)),
    qemu.exited,
  ]);
  clearTimeout(overall);
  clearTimeout(boot);
  process.off("SIGINT", onSignal);
  process.off("SIGTERM", onSignal);

  if (reportedRc !== undefined) return { kind: "reported", rc: reportedRc, innerTimeout, tail };
  const detail = qemu.signalCode ? `qemu killed by ${qemu.signalCode}` : `qemu exit status ${exitCode}`;
  return { kind: timedOut ? "timeout" : "died", jobStarted, detail, tail };
}

async function relayLines(stream: ReadableStream<Uint8Array>, onLine: (line: string) => void): Promise<void> {
  const decoder = new TextDecoder();
  let pending = "";
  for await (const chunk of stream) {
    pending += decoder.decode(chunk, { stream: true });
    let newline: number;
    while ((newline = pending.indexOf("\n")) >= 0) {
      onLine(pending.slice(0, newline).replace(/\r+$/, ""));
      pending = pending.slice(newline + 1);
    }
  }
  pending += decoder.decode();
  if (pending !== "") onLine(pending.replace(/\r+$/, ""));
}

function printTail(tail: readonly string[], logFile: string): void {
  say(`last ${tail.length} console lines (full log: ${logFile}):`);
  for (const line of tail) process.stderr.write(`  | ${line}\n`);
}

function jobScript(job: L1Job, innerTimeoutMs: number): string {
  const passed = new Map<string, string>();
  for (const [name, value] of Object.entries(process.env)) {
    if (value !== undefined && (name === "CI" || name.startsWith("VOLT_") || job.passEnv?.includes(name))) passed.set(name, value);
  }
  // The job writes to L1's serial console, a terminal: without this, tools
  // colour their output even when ours goes to a CI log file.
  if (!process.stdout.isTTY && process.env.FORCE_COLOR === undefined) passed.set("NO_COLOR", "1");
  for (const [name, value] of Object.entries(job.env ?? {})) passed.set(name, value);
  const exports = [...passed]
    .filter(([name]) => /^[A-Za-z_][A-Za-z0-9_]*$/.test(name))
    .map(([name, value]) => `export ${name}=${shellQuote(value)}`)
    .join("\n");
  const innerSeconds = Math.ceil(innerTimeoutMs / 1000);
  return `# Generated by test/harness/l1.ts; runs inside L1, chrooted into the host root.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TMPDIR=/tmp
${exports}
cd ${shellQuote(job.checkoutDir)} || exit 122
# -k: a job that ignores SIGTERM is killed 20 s later; timeout exits 124 on expiry.
timeout -k 20 ${innerSeconds} ${job.command.map(shellQuote).join(" ")}
rc=$?
[ $rc = 124 ] && echo "${INNER_TIMEOUT_MARKER} after ${innerSeconds}s"
exit $rc
`;
}

const shellQuote = (value: string): string => `'${value.replaceAll("'", `'\\''`)}'`;

async function ensureAptPackages(packages: readonly string[]): Promise<void> {
  const missing: string[] = [];
  for (const name of packages) {
    const status = Bun.spawnSync(["dpkg-query", "-W", "-f=${db:Status-Status}", name], { stderr: "ignore" });
    if (status.stdout.toString().trim() !== "installed") missing.push(name);
  }
  if (missing.length === 0) return;
  say(`installing with apt-get: ${missing.join(" ")}`);
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  // An update failure for some unrelated source must not stop the install.
  await command(["apt-get", "update", "-q"], "apt-get update", { env, allowFailure: true });
  await command(["apt-get", "install", "-y", "-q", "--no-install-recommends", ...missing], `install ${missing.join(" ")}`, { env });
}

/**
 * QEMU 10 from <codename>-backports, unpacked under the cache (the system's
 * QEMU stays as it is: L2 guests use that one). Falls back to the system
 * QEMU, loudly, when the backport cannot be had.
 */
async function qemuForL1(cacheDir: string): Promise<QemuForL1> {
  const system: QemuForL1 = { binary: "qemu-system-x86_64", args: [], env: {}, description: "system QEMU" };
  if (process.env.VOLT_L1_QEMU === "system") return describe(system, "system QEMU (VOLT_L1_QEMU=system)");
  const root = join(cacheDir, "qemu-backports", "root");
  const unpacked = (base: string): QemuForL1 => ({
    binary: join(base, "usr/bin/qemu-system-x86_64"),
    args: ["-L", join(base, "usr/share/qemu"), "-L", join(base, "usr/share/seabios")],
    env: { QEMU_MODULE_DIR: join(base, "usr/lib/x86_64-linux-gnu/qemu") },
    description: "",
  });
  try {
    if (!existsSync(root)) await downloadBackportsQemu(dirname(root));
    // await here, so a cached QEMU that no longer runs also falls back
    return await describe(unpacked(root), "");
  } catch (error) {
    const banner = "!".repeat(78);
    say(banner);
    say(`WARNING: QEMU from backports is unavailable: ${(error as Error).message}`);
    say("WARNING: falling back to the system QEMU for L1. QEMU 7.2's multi-threaded TCG");
    say("WARNING: can live-lock L1 when KVM flips static keys; l1-pin mitigates, expect flakes.");
    say(banner);
    return describe(system, "system QEMU (fallback)");
  }
}

async function describe(qemu: QemuForL1, label: string): Promise<QemuForL1> {
  const version = await command([qemu.binary, "--version"], `run ${qemu.binary}`, { env: { ...process.env, ...qemu.env } });
  const first = version.split("\n")[0] ?? "";
  return { ...qemu, description: `${first.replace(/^QEMU emulator /, "QEMU ")}${label ? ` — ${label}` : ""}` };
}

async function downloadBackportsQemu(targetDir: string): Promise<void> {
  const codename = /^VERSION_CODENAME=(\S+)/m.exec(readFileSync("/etc/os-release", "utf8"))?.[1];
  if (!codename) throw new Error("no VERSION_CODENAME in /etc/os-release");
  const suite = `${codename}-backports`;
  const { mirror, signedBy } = systemDebianMirror(codename);
  say(`fetching QEMU from ${suite} (${mirror})`);
  const work = `${targetDir}.partial-${process.pid}`;
  rmSync(work, { recursive: true, force: true });
  mkdirSync(join(work, "lists", "partial"), { recursive: true });
  mkdirSync(join(work, "debs"));
  const options = signedBy ? `[signed-by=${signedBy}] ` : "";
  writeFileSync(join(work, "sources.list"), `deb ${options}${mirror} ${suite} main\n`);
  // A private package list: the system's apt configuration and caches stay untouched.
  const apt = [
    "-o", `Dir::Etc::sourcelist=${join(work, "sources.list")}`,
    "-o", "Dir::Etc::sourceparts=/nonexistent",
    "-o", `Dir::State::Lists=${join(work, "lists")}`,
    "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=",
  ];
  try {
    await command(["apt-get", ...apt, "update", "-q"], `apt-get update for ${suite}`);
    await command(
      ["apt-get", ...apt, "download", "-q", ...BACKPORTS_QEMU_PACKAGES.map((name) => `${name}/${suite}`)],
      `download ${BACKPORTS_QEMU_PACKAGES.join(" ")} from ${suite}`,
      { cwd: join(work, "debs") },
    );
    for (const deb of readdirSync(join(work, "debs"))) {
      await command(["dpkg-deb", "-x", join(work, "debs", deb), join(work, "root")], `unpack ${deb}`);
    }
    const unpackedRoot = join(work, "root");
    await command([join(unpackedRoot, "usr/bin/qemu-system-x86_64"), "--version"], "run the backports QEMU", {
      env: { ...process.env, QEMU_MODULE_DIR: join(unpackedRoot, "usr/lib/x86_64-linux-gnu/qemu") },
    });
    rmSync(join(work, "debs"), { recursive: true });
    rmSync(join(work, "lists"), { recursive: true });
    rmSync(targetDir, { recursive: true, force: true });
    renameSync(work, targetDir);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** The Debian mirror the system already uses (the only one known to be reachable). */
function systemDebianMirror(codename: string): { mirror: string; signedBy?: string } {
  const sourcesDir = "/etc/apt/sources.list.d";
  const deb822 = existsSync(sourcesDir) ? readdirSync(sourcesDir).filter((f) => f.endsWith(".sources")) : [];
  for (const file of deb822) {
    for (const stanza of readFileSync(join(sourcesDir, file), "utf8").split(/\n\s*\n/)) {
      const field = (name: string) => new RegExp(`^${name}:\\s*(.+)$`, "mi").exec(stanza)?.[1]?.trim();
      if (!field("Suites")?.split(/\s+/).includes(codename)) continue;
      const mirror = field("URIs")?.split(/\s+/)[0];
      if (mirror) return { mirror, signedBy: field("Signed-By") };
    }
  }
  if (existsSync("/etc/apt/sources.list")) {
    const line = new RegExp(`^deb\\s+(?:\\[[^\\]]*\\]\\s+)?(\\S+)\\s+${codename}\\s`, "m").exec(
      readFileSync("/etc/apt/sources.list", "utf8"),
    );
    if (line?.[1]) return { mirror: line[1] };
  }
  return { mirror: "http://deb.debian.org/debian" };
}

async function compilePinHelper(cacheDir: string): Promise<string> {
  const source = join(import.meta.dir, "l1-pin.c");
  const digest = createHash("sha256").update(readFileSync(source)).digest("hex").slice(0, 16);
  const binary = join(cacheDir, `l1-pin-${digest}`);
  if (existsSync(binary)) return binary;
  const temporary = `${binary}.partial-${process.pid}`;
  await command(["gcc", "-O2", "-static", "-Wall", "-Werror", "-o", temporary, source], `compile ${source}`);
  renameSync(temporary, binary);
  return binary;
}

function writeAtomically(path: string, data: Uint8Array): void {
  const temporary = `${path}.partial-${process.pid}`;
  writeFileSync(temporary, data);
  renameSync(temporary, path);
}

async function command(
  argv: string[],
  what: string,
  options: { cwd?: string; env?: Record<string, string | undefined>; allowFailure?: boolean } = {},
): Promise<string> {
  const proc = Bun.spawn(argv, { cwd: options.cwd, env: options.env, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr, exitCode] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  if (exitCode !== 0 && !options.allowFailure) {
    const detail = stderr.split("\n").filter((l) => l.trim() && !l.includes("unsandboxed")).slice(-5).join("; ");
    throw new Error(`cannot ${what}: ${argv[0]} exited ${exitCode}${detail ? `: ${detail}` : ""}`);
  }
  return stdout;
}

const seconds = (since: number): string => `${((performance.now() - since) / 1000).toFixed(1)}s`;
