/**
 * `bun run test`: the whole suite, as CI runs it.
 *   1. build (C shims + dist/volt: end-to-end tests run the compiled binary);
 *   2. unit tests, natively (no KVM needed);
 *   3. end-to-end tests on real KVM through test/harness/run-e2e.ts (native
 *      /dev/kvm with hardware virtualisation, else a nested L1 under QEMU).
 * It ends with one line "N passed, N failed[, N skipped]" summed from the
 * JUnit reports, because bun test prints no such line of its own. A stage
 * that dies without a report (build error, crashed L1) counts as a failure.
 * Extra arguments go to `bun test` in both stages (e.g. a name filter: -t abi).
 */
import { existsSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";

const root = join(import.meta.dir, "..");
const startedAt = performance.now();
const reports = join(root, "build", "test-reports");
const extraArgs = process.argv.slice(2);

interface StageResult {
  readonly name: string;
  readonly exitCode: number;
  readonly passed: number;
  readonly failed: number;
  readonly skipped: number;
}

function run(command: string[], env: Record<string, string> = {}): number {
  const child = Bun.spawnSync(command, { cwd: root, stdout: "inherit", stderr: "inherit", stdin: "ignore", env: { ...process.env, ...env } });
  return child.exitCode ?? 1;
}

/** Totals from a JUnit file's root <testsuites> element. */
function countJunit(file: string): { tests: number; failures: number; skipped: number } | undefined {
  if (!existsSync(file)) return undefined;
  const head = readFileSync(file, "utf8").match(/<testsuites\b[^>]*>/)?.[0];
  if (!head) return undefined;
  const attr = (name: string) => Number(head.match(new RegExp(`\\b${name}="(\\d+)"`))?.[1] ?? 0);
  return { tests: attr("tests"), failures: attr("failures") + attr("errors"), skipped: attr("skipped") };
}

function stage(name: string, command: string[], report: string, options: { rerunIfRunnerDies?: boolean; env?: Record<string, string> } = {}): StageResult {
  console.log(`\n==== ${name}: ${command.join(" ")}`);
  rmSync(report, { force: true });
  let exitCode = run(command, options.env);
  let counts = countJunit(report);
  if (!counts && options.rerunIfRunnerDies) {
    // Failing tests still write a report; none means bun itself died (Bun 1.4.5 segfaults now and then, "Bun has
    // crashed"). Once more, loudly; a second death counts as a failure.
    console.log(`==== ${name}: THE TEST RUNNER DIED WITHOUT A REPORT (exit ${exitCode}); running the stage once more`);
    rmSync(report, { force: true });
    exitCode = run(command, options.env);
    counts = countJunit(report);
  }
  if (!counts) {
    console.log(`==== ${name}: no test report (exit ${exitCode}); counted as one failure`);
    return { name, exitCode: exitCode || 1, passed: 0, failed: 1, skipped: 0 };
  }
  let failed = counts.failures;
  // A file that fails to load, or a harness failure after the tests ran, shows only in the exit code.
  if (exitCode !== 0 && failed === 0) failed = 1;
  const passed = counts.tests - counts.failures - counts.skipped;
  console.log(`==== ${name}: passed=${passed} failed=${failed} skipped=${counts.skipped} (exit ${exitCode})`);
  return { name, exitCode, passed, failed, skipped: counts.skipped };
}

mkdirSync(reports, { recursive: true });
const results: StageResult[] = [];

console.log("==== build: bun build.ts");
if (run(["bun", "build.ts"]) !== 0) {
  results.push({ name: "build", exitCode: 1, passed: 0, failed: 1, skipped: 0 });
} else {
  const unitReport = join(reports, "unit.xml");
  results.push(
    stage("unit tests", ["bun", "test", "./test/unit", "--reporter=junit", `--reporter-outfile=${unitReport}`, ...extraArgs], unitReport, {
      rerunIfRunnerDies: true,
      // JSC's optimizing JIT thread span forever in the xz decoder tests twice (main thread waiting on it, no
      // child process left): the top tier is off for the unit stage; the hot loops still get the baseline JITs.
      env: { BUN_JSC_useFTLJIT: "0" },
    }),
  );
  // run-e2e.ts writes its report to build/test-reports/e2e.xml, wherever the tests ran.
  results.push(stage("end-to-end tests (real KVM)", ["bun", "test/harness/run-e2e.ts", ...extraArgs], join(reports, "e2e.xml")));
}

const total = results.reduce(
  (sum, r) => ({ passed: sum.passed + r.passed, failed: sum.failed + r.failed, skipped: sum.skipped + r.skipped }),
  { passed: 0, failed: 0, skipped: 0 },
);
console.log(`\ntest run took ${((performance.now() - startedAt) / 1000).toFixed(0)} s`);
for (const r of results) console.log(`  ${r.name}: passed=${r.passed} failed=${r.failed} skipped=${r.skipped}`);
console.log(`${total.passed} passed, ${total.failed} failed${total.skipped ? `, ${total.skipped} skipped` : ""}`);
process.exit(total.failed > 0 || results.some((r) => r.exitCode !== 0) ? 1 : 0);
