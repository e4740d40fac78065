/**
 * The global --log-level / --log-format options through the real CLI (bun src/cli/main.ts): every command takes
 * them, bad values are usage errors (exit 2), warnings and errors come out as JSON lines, the flag beats
 * VOLT_LOG_*, and the setting reaches the volts this one starts (the Landlock re-exec, a detached VM). No KVM needed.
 */
import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DEFAULT_LOG_SETTINGS, configureLogging } from "../../src/log/index.ts";
import { DetachError, startDetached } from "../../src/runtime/detach.ts";
import { sandboxChoice } from "../../src/cli/sandbox.ts";
import { passedFlags } from "../../src/cli/commands/jail.ts";
import { buildBzImage } from "./loader-fixtures.ts";

// Each test starts volt (bun from source) one to five times: ~0.1-0.5 s each, more on a busy host.
setDefaultTimeout(60_000);

const root = join(import.meta.dir, "..", "..");
const work = mkdtempSync(join(tmpdir(), "volt-log-cli-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const kernel = join(work, "bzImage");
writeFileSync(kernel, buildBzImage());
const initrd = join(work, "initrd.img");
writeFileSync(initrd, new Uint8Array(512));

interface Result {
  exitCode: number | null;
  stdout: string;
  stderr: string;
}

/** Runs volt from source with a clean logging environment (plus `env`) and an empty kernel store. */
function volt(args: string[], env: Record<string, string> = {}): Result {
  const base: Record<string, string | undefined> = { ...process.env, NO_COLOR: "1", XDG_DATA_HOME: join(work, "data"), XDG_RUNTIME_DIR: join(work, "run") };
  delete base.VOLT_LOG_LEVEL;
  delete base.VOLT_LOG_FORMAT;
  const child = Bun.spawnSync(["bun", join(root, "src/cli/main.ts"), ...args], { cwd: work, env: { ...base, ...env }, timeout: 30_000 });
  return { exitCode: child.exitCode, stdout: child.stdout.toString(), stderr: child.stderr.toString() };
}

/** Every stderr line parsed as JSON (fails the test on a line that is not). */
function jsonLines(stderr: string): Record<string, unknown>[] {
  return stderr
    .split("\n")
    .filter((line) => line !== "")
    .map((line) => {
      try {
        return JSON.parse(line) as Record<string, unknown>;
      } catch {
        throw new Error(`not a JSON line on stderr: ${line}`);
      }
    });
}

function expectLineShape(line: Record<string, unknown>): void {
  expect(typeof line.time).toBe("string");
  expect(new Date(line.time as string).toISOString()).toBe(line.time as string);
  expect(["error", "warn", "info", "debug", "trace"]).toContain(line.level as string);
  expect(typeof line.message).toBe("string");
  expect(Number.isInteger(line.pid)).toBe(true);
}

/** A Unix socket something listens on: `volt run --api-socket` refuses it (exit 2) after the sandbox steps, before KVM. */
async function busySocket(name: string): Promise<{ path: string; server: Server }> {
  const path = join(work, name);
  // Connections are left open: one closed at once can reach volt's probe as an error first, and volt would then
  // take the socket for a stale one, remove it and go on to start a VM.
  const server = createServer(() => {});
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return { path, server };
}

/** Spawned asynchronously: the listening socket lives in this process's event loop. */
async function voltAsync(args: string[], env: Record<string, string> = {}): Promise<Result> {
  const base: Record<string, string | undefined> = { ...process.env, NO_COLOR: "1", XDG_DATA_HOME: join(work, "data"), XDG_RUNTIME_DIR: join(work, "run") };
  delete base.VOLT_LOG_LEVEL;
  delete base.VOLT_LOG_FORMAT;
  const child = Bun.spawn(["bun", join(root, "src/cli/main.ts"), ...args], { cwd: work, env: { ...base, ...env }, stdout: "pipe", stderr: "pipe", timeout: 30_000 });
  const [stdout, stderr, exitCode] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  return { exitCode, stdout, stderr };
}

describe("every command takes the global options", () => {
  test("volt kernel list with --log-format json --log-level debug, before or after the command", () => {
    for (const args of [
      ["kernel", "list", "--log-format", "json", "--log-level", "debug"],
      ["--log-level=warn", "--log-format=text", "kernel", "list"],
    ]) {
      const result = volt(args);
      expect(result.stderr).not.toContain("unknown option");
      expect(result.exitCode).toBe(0);
      expect(result.stdout.toLowerCase()).toContain("no kernels in");
    }
  });

  test("a command that refuses unknown flags (kvm-check) does not refuse them, and reports its error as a JSON line", () => {
    const result = volt(["kvm-check", "--device", "/nonexistent/kvm", "--log-format", "json"]);
    expect(result.exitCode).toBe(3);
    const lines = jsonLines(result.stderr);
    expect(lines).toHaveLength(1);
    expectLineShape(lines[0]!);
    expect(lines[0]).toMatchObject({ level: "error", kind: "kvm-unavailable", exitCode: 3 });
    expect(lines[0]!.message).toContain("cannot open /nonexistent/kvm");
  });

  test("--json's document on stdout stays exactly as it was; the log line goes to stderr", () => {
    const plain = volt(["kvm-check", "--device", "/nonexistent/kvm", "--json"]);
    const logged = volt(["kvm-check", "--device", "/nonexistent/kvm", "--json", "--log-format", "json", "--log-level", "trace"]);
    expect(logged.stdout).toBe(plain.stdout);
    expect(JSON.parse(logged.stdout)).toMatchObject({ ok: false, error: { kind: "kvm-unavailable" } });
    expect(plain.stderr).toStartWith("volt: cannot open /nonexistent/kvm");
    expect(jsonLines(logged.stderr)[0]).toMatchObject({ level: "error", kind: "kvm-unavailable" });
  });

  test("after a --, they are someone else's arguments", () => {
    const result = volt(["kvm-check", "--device", "/nonexistent/kvm", "--", "--log-level", "nonsense"]);
    expect(result.exitCode).toBe(3);
    expect(result.stderr).not.toContain("--log-level must be");
  });

  test("volt --help names them", () => {
    const result = volt(["--help"]);
    expect(result.exitCode).toBe(0);
    expect(result.stdout).toContain("--log-level");
    expect(result.stdout).toContain("--log-format");
    expect(result.stdout).toContain("VOLT_LOG_LEVEL");
  });
});

describe("bad values are usage errors (exit 2) naming the option and what it allows", () => {
  test.each([
    ["--log-level loud", ["--log-level", "loud", "kernel", "list"], {}, "--log-level must be one of silent, error, warn, info, debug, trace (got 'loud')"],
    ["--log-format=xml", ["kernel", "list", "--log-format=xml"], {}, "--log-format must be one of text, json (got 'xml')"],
    ["--log-level without a value", ["kernel", "list", "--log-level"], {}, "--log-level needs a value: one of silent, error, warn, info, debug, trace"],
    ["VOLT_LOG_LEVEL=loud", ["kernel", "list"], { VOLT_LOG_LEVEL: "loud" }, "VOLT_LOG_LEVEL must be one of silent, error, warn, info, debug, trace (got 'loud')"],
    ["VOLT_LOG_FORMAT=yaml", ["kernel", "list"], { VOLT_LOG_FORMAT: "yaml" }, "VOLT_LOG_FORMAT must be one of text, json (got 'yaml')"],
  ] as const)("%s", (_, args, env, message) => {
    const result = volt([...args], { ...env });
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toBe(`volt: ${message}\n`);
    expect(result.stdout).toBe("");
  });

  test("with --json the command's one document says so too; with a valid --log-format json the error is a JSON line", () => {
    const result = volt(["kvm-check", "--json", "--log-format", "json", "--log-level", "verbose"]);
    expect(result.exitCode).toBe(2);
    expect(JSON.parse(result.stdout)).toEqual({ ok: false, error: { kind: "usage", message: "--log-level must be one of silent, error, warn, info, debug, trace (got 'verbose')" } });
    expect(jsonLines(result.stderr)).toEqual([expect.objectContaining({ level: "error", kind: "usage", exitCode: 2 })]);
  });

  test("a bad VOLT_LOG_LEVEL does not matter when the flag overrides it", () => {
    const result = volt(["kernel", "list", "--log-level", "warn"], { VOLT_LOG_LEVEL: "loud" });
    expect(result.exitCode).toBe(0);
  });
});

describe("a warning as a JSON line, and the flag over the environment", () => {
  const runArgs = (socket: string) => ["run", "--kernel", kernel, "--initrd", initrd, "--api-socket", socket, "--no-sandbox"];

  test("volt run --no-sandbox: the sandbox warning and the refusal, each one JSON object per line", async () => {
    const { path, server } = await busySocket("busy1.sock");
    try {
      const result = await voltAsync([...runArgs(path), "--log-format", "json"]);
      expect(result.exitCode).toBe(2);
      const lines = jsonLines(result.stderr);
      for (const line of lines) expectLineShape(line);
      expect(lines.map((line) => line.level)).toEqual(["warn", "error"]);
      expect(lines[0]).toMatchObject({ tag: "sandbox", message: "running without the sandbox (--no-sandbox): a compromised volt can reach everything this user can" });
      expect(lines[1]).toMatchObject({ kind: "api-socket", exitCode: 2, message: `api socket ${path}: another process is listening on it` });
      expect(lines[0]!.pid).toBe(lines[1]!.pid);
    } finally {
      server.close();
    }
  });

  test("VOLT_LOG_FORMAT=json alone gives JSON lines; --log-format text beats it; VOLT_LOG_LEVEL=error hides the warning; silent hides all", async () => {
    const { path, server } = await busySocket("busy2.sock");
    try {
      const fromEnv = await voltAsync(runArgs(path), { VOLT_LOG_FORMAT: "json" });
      expect(jsonLines(fromEnv.stderr).map((line) => line.level)).toEqual(["warn", "error"]);

      const flagWins = await voltAsync([...runArgs(path), "--log-format", "text"], { VOLT_LOG_FORMAT: "json" });
      expect(flagWins.stderr).toBe(`volt: warning: running without the sandbox (--no-sandbox): a compromised volt can reach everything this user can\nvolt: api socket ${path}: another process is listening on it\n`);

      const errorsOnly = await voltAsync(runArgs(path), { VOLT_LOG_LEVEL: "error" });
      expect(errorsOnly.stderr).toBe(`volt: api socket ${path}: another process is listening on it\n`);

      const levelFlagWins = await voltAsync([...runArgs(path), "--log-level", "warn"], { VOLT_LOG_LEVEL: "error" });
      expect(levelFlagWins.stderr).toContain("volt: warning: running without the sandbox");

      const silent = await voltAsync([...runArgs(path), "--json", "--log-level", "silent"]);
      expect(silent.exitCode).toBe(2);
      expect(silent.stderr).toBe("");
      expect(JSON.parse(silent.stdout)).toMatchObject({ ok: false, error: { kind: "api-socket" } });
    } finally {
      server.close();
    }
  });
});

describe("the setting reaches the volts this one starts", () => {
  test("the Landlock re-exec: the sandboxed process goes on logging debug lines as JSON", async () => {
    const { path, server } = await busySocket("busy3.sock");
    try {
      const result = await voltAsync(["run", "--kernel", kernel, "--initrd", initrd, "--api-socket", path, "--log-level", "debug", "--log-format", "json"]);
      expect(result.exitCode).toBe(2);
      const lines = jsonLines(result.stderr);
      const messages = lines.map((line) => line.message);
      const unavailable = lines.find((line) => line.level === "warn" && String(line.message).startsWith("Landlock is unavailable"));
      if (unavailable === undefined) {
        // Before the exec, then in the new program (same pid: execve).
        expect(messages).toContain("restricting with Landlock and re-executing");
        expect(messages).toContain("running inside Landlock (re-executed)");
        const inside = lines.find((line) => line.message === "running inside Landlock (re-executed)")!;
        expect(inside).toMatchObject({ level: "debug", tag: "sandbox" });
      }
      expect(lines.at(-1)).toMatchObject({ level: "error", kind: "api-socket" });
    } finally {
      server.close();
    }
  });

  test("a detached VM's volt gets VOLT_LOG_*, and its error document is found among JSON log lines in volt.log", async () => {
    // A stand-in for the background volt: records what it was given, logs JSON lines around its one error document, fails.
    const seen = join(work, "child-saw.json");
    const fake = join(work, "fake-volt.ts");
    writeFileSync(
      fake,
      `import { writeFileSync } from "node:fs";
writeFileSync(${JSON.stringify(seen)}, JSON.stringify({ level: process.env.VOLT_LOG_LEVEL, format: process.env.VOLT_LOG_FORMAT, argv: process.argv.slice(2) }));
const line = (message) => process.stderr.write(JSON.stringify({ time: new Date().toISOString(), level: "debug", message, pid: process.pid }) + "\\n");
line("before");
process.stdout.write(JSON.stringify({ ok: false, error: { kind: "usage", message: "not a Linux kernel (from the child)" } }, null, 2) + "\\n");
line("after");
process.exit(2);
`,
    );
    configureLogging({ level: "trace", format: "json" }, { sink: () => {} });
    try {
      const failed = await startDetached({ runArgs: ["--kernel", "k"], id: "logvm", root: join(work, "detach-root"), command: [process.execPath, fake], timeoutMs: 20_000 }).then(
        () => undefined,
        (error: unknown) => error,
      );
      expect(failed).toBeInstanceOf(DetachError);
      expect((failed as DetachError).message).toBe("not a Linux kernel (from the child)");
      expect((failed as DetachError).kind).toBe("usage");
      const child = JSON.parse(readFileSync(seen, "utf8")) as { level: string; format: string; argv: string[] };
      // This process never had VOLT_LOG_* in its environment: the settings themselves travel.
      expect(child).toMatchObject({ level: "trace", format: "json" });
      expect(child.argv).toEqual(["run", "--kernel", "k", "--json", "--id", "logvm", "--detached-child"]);
    } finally {
      configureLogging(DEFAULT_LOG_SETTINGS, { sink: (line) => void process.stderr.write(line) });
    }
  });
});

describe("--no-sandbox as citty 0.2 parses it (sandbox: false), which the JSON warning test above depends on", () => {
  test("the parsed form turns the sandbox off and is passed on to a jailed volt", () => {
    configureLogging({ level: "silent" }, { sink: () => {} });
    try {
      expect(sandboxChoice({ sandbox: false })).toEqual({ landlock: false, seccomp: false });
      expect(sandboxChoice({ landlock: false })).toEqual({ landlock: false, seccomp: true });
      expect(sandboxChoice({ seccomp: false })).toEqual({ landlock: true, seccomp: false });
      expect(passedFlags({ json: true, seccomp: false })).toEqual(["--json", "--no-seccomp"]);
    } finally {
      configureLogging(DEFAULT_LOG_SETTINGS, { sink: (line) => void process.stderr.write(line) });
    }
  });
});
