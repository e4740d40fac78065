/**
 * `bun run bench`: Volt against QEMU's microvm machine on real KVM.
 *   1. builds Volt (C shim + dist/volt);
 *   2. prepares the guest kernels (test/harness/guest-assets.ts: the minimal
 *      microVM kernel when ../shared has it, and Debian's kernel);
 *   3. runs bench/inside.ts where real KVM is: natively when the host has
 *      hardware KVM, otherwise inside one nested L1 boot (test/harness/l1.ts),
 *      with the checkout shared read-write so the results land in bench/results;
 *   4. prints the table (bench/results/latest.md has it as Markdown).
 *
 * Env: BENCH_ROUNDS (default 7), BENCH_TIMEOUT_S (whole run, default 1680 =
 * 28 min), BENCH_DENSITY_S (default 60; 0 skips density), VOLT_KVM
 * (native|nested|auto), VOLT_TEST_KERNEL=debian (ignore the microVM kernel),
 * BENCH_SECTIONS (comma list: boot, startup, exits, restore, clone, io, density,
 * profile), BENCH_IO_ROUNDS (default 3), BENCH_BLOCK_MIB (default 256),
 * BENCH_NET_MIB (default 64),
 * BENCH_RESULTS_DIR (default bench/results; relative to the checkout).
 */
import { existsSync, readFileSync, statSync } from "node:fs";
import { cpus, loadavg, totalmem } from "node:os";
import { basename, join, resolve } from "node:path";
import { prepareGuestKernels } from "../test/harness/guest-assets.ts";
import { decideKvmMode } from "../test/harness/kvm-mode.ts";
import { defaultCacheDir, prepareL1, runInL1 } from "../test/harness/l1.ts";
import { renderTable, type Results } from "./lib/results.ts";

const checkout = resolve(import.meta.dir, "..");
const started = performance.now();
const startedAtMs = Date.now();
const timeoutMs = seconds("BENCH_TIMEOUT_S", 28 * 60) * 1000;
const elapsed = () => performance.now() - started;
const say = (line: string) => console.log(`bench: ${line}`);

function seconds(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value <= 0) {
    console.error(`bench: ${name}=${raw} is not a positive number of seconds`);
    process.exit(2);
  }
  return value;
}

const decision = decideKvmMode();
say(`${decision.mode} KVM (${decision.reason}); time limit ${(timeoutMs / 60_000).toFixed(0)} min`);

say("building volt");
const build = Bun.spawnSync([process.execPath, "build.ts"], { cwd: checkout, stdout: "inherit", stderr: "inherit" });
if (build.exitCode !== 0) {
  console.error("bench: the build failed");
  process.exit(1);
}

// The benchmark has no use for the kernel the e2e tests build with `volt kernel build` (minutes of compiling).
process.env.VOLT_TEST_BUILD_KERNEL ??= "0";
const guestEnv = await prepareGuestKernels(defaultCacheDir());
const kernels: { id: string; name: string; path: string }[] = [];
const vmlinux = guestEnv.VOLT_TEST_VMLINUX;
if (vmlinux && basename(vmlinux).startsWith("microvm-vmlinux")) {
  kernels.push({ id: "microvm", name: "microVM kernel 6.1 (vmlinux, PVH)", path: vmlinux });
} else {
  say("no minimal microVM kernel at hand: boot times are for Debian's kernel only");
}
kernels.push({ id: "debian", name: "Debian kernel 6.1 (bzImage)", path: guestEnv.VOLT_TEST_BZIMAGE! });

const cpuModel = /^model name\s*:\s*(.+)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1]?.trim() ?? cpus()[0]?.model ?? "unknown";
const commit = Bun.spawnSync(["git", "rev-parse", "--short", "HEAD"], { cwd: checkout }).stdout.toString().trim();
const dirty = Bun.spawnSync(["git", "status", "--porcelain", "--untracked-files=no", "src"], { cwd: checkout }).stdout.toString().trim() !== "";
const benchEnv: Record<string, string> = {
  BENCH_KERNELS: JSON.stringify(kernels),
  BENCH_HOST: JSON.stringify({ nproc: cpus().length, cpu: cpuModel, memGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10 }),
  BENCH_KVM_MODE: decision.mode,
  BENCH_KVM_REASON: decision.reason,
  BENCH_VOLT_COMMIT: `${commit || "unknown"}${dirty ? " (with uncommitted changes in src/)" : ""}`,
};
// Without the microVM kernel the first kernel is Debian's, whose virtio drivers are modules the I/O guest must load.
if (guestEnv.VOLT_TEST_VMLINUX_MODULES && kernels[0]!.id === "debian") benchEnv.BENCH_GUEST_MODULES = guestEnv.VOLT_TEST_VMLINUX_MODULES;
for (const name of ["BENCH_ROUNDS", "BENCH_DENSITY_S", "BENCH_DENSITY_MAX", "BENCH_QEMU", "BENCH_SECTIONS", "BENCH_RESULTS_DIR", "BENCH_IO_ROUNDS", "BENCH_BLOCK_MIB", "BENCH_NET_MIB"]) {
  if (process.env[name]) benchEnv[name] = process.env[name]!;
}
// Anything else burning CPU here (another L1, a build) slows one side's rounds more than the other's.
const others = Bun.spawnSync(["ps", "-eo", "pid=,pcpu=,args="]).stdout.toString().split("\n")
  .filter((line) => /qemu-system|bun (test|build)|\bgcc\b|\bmake\b/.test(line) && !line.includes(String(process.pid)));
const load = loadavg().map((l) => l.toFixed(2)).join(" ");
say(`host load average ${load}${others.length > 0 ? `; other busy processes: ${others.length} (e.g. ${others[0]!.trim().slice(0, 120)}); expect noisier numbers` : ""}`);
benchEnv.BENCH_HOST_LOAD = JSON.stringify({ loadavg: load, otherProcesses: others.map((l) => l.trim().slice(0, 200)) });
const command = [process.execPath, join(checkout, "bench", "inside.ts")];

let exitCode: number;
if (decision.mode === "native") {
  const budgetS = Math.floor((timeoutMs - elapsed()) / 1000) - 60;
  const child = Bun.spawn(command, {
    cwd: checkout,
    stdio: ["ignore", "inherit", "inherit"],
    env: { ...process.env, ...benchEnv, BENCH_BUDGET_S: String(budgetS) },
  });
  const timer = setTimeout(() => child.kill("SIGTERM"), timeoutMs - elapsed());
  exitCode = await child.exited;
  clearTimeout(timer);
} else {
  const assets = await prepareL1();
  const remaining = timeoutMs - elapsed();
  // L1 boots in ~15-60 s; the job's own budget leaves room for that and for writing results.
  const innerMs = remaining - 2.5 * 60_000;
  const budgetS = Math.floor(innerMs / 1000) - 90;
  if (budgetS < 300) {
    console.error(`bench: only ${(remaining / 1000).toFixed(0)} s of the time limit left after preparing; raise BENCH_TIMEOUT_S`);
    process.exit(1);
  }
  const result = await runInL1(assets, {
    command,
    checkoutDir: checkout,
    env: { ...benchEnv, BENCH_BUDGET_S: String(budgetS) },
    timeoutMs: remaining,
    innerTimeoutMs: innerMs,
    logFile: join(checkout, "build", "bench-l1-console.log"),
  });
  say(`L1 ${result.outcome} after ${result.attempts} boot(s); job exit status ${result.exitCode}; console log ${result.logFile}`);
  exitCode = result.exitCode;
}

const latest = join(resolve(checkout, process.env.BENCH_RESULTS_DIR ?? "bench/results"), "latest.json");
// A run stopped by its time limit still saves what it measured.
if (existsSync(latest) && statSync(latest).mtimeMs >= startedAtMs) {
  const results = JSON.parse(readFileSync(latest, "utf8")) as Results;
  console.log("");
  console.log(`Volt vs QEMU microvm — ${results.date}, ${results.kvm.mode} KVM${results.kvm.mode === "nested" ? " (absolute numbers are slow; the ratios are the point)" : ""}, host ${results.machine.host.nproc} CPUs (${results.machine.host.cpu})`);
  console.log(renderTable(results));
  for (const u of results.unmeasured) console.log(`not measured: ${u.what}: ${u.why}`);
  console.log("bench: bench/results/latest.md, latest.json and one SVG per metric written");
}
say(`finished in ${(elapsed() / 1000).toFixed(0)} s, exit status ${exitCode}`);
process.exit(exitCode);
