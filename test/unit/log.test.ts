/** Volt's logger (src/log): level filtering, the text and JSON-lines formats, and how the settings are read. */
import { afterEach, describe, expect, test } from "bun:test";
import {
  DEFAULT_LOG_SETTINGS,
  LOG_FORMAT_ENV,
  LOG_LEVEL_ENV,
  LogOptionError,
  configureLogging,
  lenientLogSettings,
  log,
  logEnvironment,
  resolveLogSettings,
  setLogContext,
  stderrSink,
  takeLogFlags,
  type LogSettings,
} from "../../src/log/index.ts";

let lines: string[] = [];

function capture(settings: Partial<LogSettings>): void {
  lines = [];
  configureLogging({ ...DEFAULT_LOG_SETTINGS, ...settings }, { sink: (line) => lines.push(line) });
}

function everyLevel(): void {
  log.error("e1");
  log.warn("w1");
  log.info("i1");
  log.debug("d1");
  log.trace("t1");
}

afterEach(() => {
  configureLogging(DEFAULT_LOG_SETTINGS, { sink: stderrSink });
  setLogContext({ vm: undefined });
});

describe("levels", () => {
  test.each([
    ["silent", []],
    ["error", ["e1"]],
    ["warn", ["e1", "w1"]],
    ["info", ["e1", "w1", "i1"]],
    ["debug", ["e1", "w1", "i1", "d1"]],
    ["trace", ["e1", "w1", "i1", "d1", "t1"]],
  ] as const)("--log-level %s writes only that level and the more severe ones", (level, expected) => {
    capture({ level, format: "json" });
    everyLevel();
    expect(lines.map((line) => (JSON.parse(line) as { message: string }).message)).toEqual([...expected]);
  });

  test("enabled() says whether a level would be written", () => {
    capture({ level: "warn" });
    expect(log.enabled("error")).toBe(true);
    expect(log.enabled("warn")).toBe(true);
    expect(log.enabled("info")).toBe(false);
    expect(log.enabled("debug")).toBe(false);
  });

  test("the same message many times over is written every time (no folding into 'repeated N times')", () => {
    capture({ level: "info" });
    for (let i = 0; i < 20; i++) log.warn("again");
    expect(lines).toHaveLength(20);
  });
});

describe("text format: the long-standing wording", () => {
  test("error and info as 'volt: ...', warn as 'volt: warning: ...', debug/trace labelled, with their fields", () => {
    capture({ level: "trace", format: "text" });
    log.error("it broke", { kind: "usage" });
    log.warn("careful", { where: "here" });
    log.info("done");
    log.withTag("vm").debug("VM built", { vcpus: 2, cmdline: "console=ttyS0 quiet", acpi: true });
    log.trace("tick");
    expect(lines).toEqual([
      "volt: it broke\n",
      "volt: warning: careful\n",
      "volt: done\n",
      'volt: debug: [vm] VM built vcpus=2 cmdline="console=ttyS0 quiet" acpi=true\n',
      "volt: trace: tick\n",
    ]);
  });

  test("an error's stack follows its message on the next lines", () => {
    capture({ format: "text" });
    log.error("internal trouble", { stack: "Error: internal trouble\n    at somewhere" });
    expect(lines).toEqual(["volt: internal trouble\nError: internal trouble\n    at somewhere\n"]);
  });

  test("raw-terminal hints: \\r\\n line ends and a fresh line first", () => {
    capture({ format: "text" });
    log.info("detached from web1 (it runs on)", { vm: "web1" }, { crlf: true, freshLine: true });
    expect(lines).toEqual(["\r\nvolt: detached from web1 (it runs on)\r\n"]);
  });

  test("each line is one write (a caller that counts writes sees one per message)", () => {
    capture({ format: "text" });
    log.warn("one");
    log.warn("two");
    expect(lines).toHaveLength(2);
  });
});

describe("JSON format: one object per line", () => {
  test("time, level, message, pid first; then tag, the context, the fields", () => {
    capture({ level: "debug", format: "json" });
    setLogContext({ vm: "web1" });
    const before = Date.now();
    log.withTag("sandbox").warn("running without seccomp", { flag: "--no-seccomp", big: 2n ** 64n });
    log.error("plain");
    expect(lines).toHaveLength(2);
    for (const line of lines) {
      expect(line.endsWith("\n")).toBe(true);
      expect(line.slice(0, -1)).not.toContain("\n");
    }
    const first = JSON.parse(lines[0]!) as Record<string, unknown>;
    expect(Object.keys(first)).toEqual(["time", "level", "message", "pid", "tag", "vm", "flag", "big"]);
    expect(first).toMatchObject({ level: "warn", message: "running without seccomp", pid: process.pid, tag: "sandbox", vm: "web1", flag: "--no-seccomp", big: "18446744073709551616" });
    expect(first.time).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    expect(Date.parse(first.time as string)).toBeGreaterThanOrEqual(before - 1000);
    const second = JSON.parse(lines[1]!) as Record<string, unknown>;
    expect(second).toEqual({ time: expect.any(String), level: "error", message: "plain", pid: process.pid, vm: "web1" });
  });

  test("a field cannot replace time, level, message, pid or tag", () => {
    capture({ format: "json" });
    log.info("the real message", { time: "never", level: "fatal", message: "fake", pid: 1, tag: "x", other: 1 });
    expect(JSON.parse(lines[0]!)).toEqual({ time: expect.stringMatching(/Z$/), level: "info", message: "the real message", pid: process.pid, other: 1 });
  });

  test("errors as fields become {name, message}; a cycle does not lose the line", () => {
    capture({ format: "json" });
    log.error("failed", { cause: new TypeError("bad type") });
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    log.warn("odd", { cyclic });
    expect(JSON.parse(lines[0]!)).toMatchObject({ message: "failed", cause: { name: "TypeError", message: "bad type" } });
    expect(JSON.parse(lines[1]!)).toMatchObject({ level: "warn", message: "odd", fieldsError: "unserialisable fields" });
  });

  test("raw-terminal hints do not break JSON lines", () => {
    capture({ format: "json" });
    log.info("attached", {}, { crlf: true, freshLine: true });
    expect(lines[0]!.startsWith("{")).toBe(true);
    expect(JSON.parse(lines[0]!)).toMatchObject({ message: "attached" });
  });
});

describe("settings: flags, environment, defaults", () => {
  test("the global flags are taken out of argv anywhere before --, in both spellings; the last wins", () => {
    expect(takeLogFlags(["--log-level", "debug", "run", "--kernel", "k", "--log-format=json", "--log-level=warn", "--", "--log-level", "x"])).toEqual({
      argv: ["run", "--kernel", "k", "--", "--log-level", "x"],
      level: "warn",
      format: "json",
    });
    expect(takeLogFlags(["kernel", "list"])).toEqual({ argv: ["kernel", "list"] });
  });

  test("a flag without its value is refused, naming the flag and the allowed values", () => {
    expect(() => takeLogFlags(["kvm-check", "--log-level"])).toThrow(new LogOptionError("--log-level needs a value: one of silent, error, warn, info, debug, trace"));
    expect(() => takeLogFlags(["--log-format", "--", "x"])).toThrow("--log-format needs a value: one of text, json");
  });

  test("the flag wins over the environment, the environment over the default", () => {
    const env = { [LOG_LEVEL_ENV]: "debug", [LOG_FORMAT_ENV]: "json" };
    expect(resolveLogSettings({}, {})).toEqual({ level: "info", format: "text" });
    expect(resolveLogSettings({}, env)).toEqual({ level: "debug", format: "json" });
    expect(resolveLogSettings({ level: "error" }, env)).toEqual({ level: "error", format: "json" });
    expect(resolveLogSettings({ level: "trace", format: "text" }, env)).toEqual({ level: "trace", format: "text" });
    expect(resolveLogSettings({}, { [LOG_LEVEL_ENV]: "", [LOG_FORMAT_ENV]: "" })).toEqual(DEFAULT_LOG_SETTINGS);
    expect(resolveLogSettings({ level: "WARN", format: "JSON" }, {})).toEqual({ level: "warn", format: "json" });
  });

  test("a bad value names where it came from and what is allowed; a bad variable the flag overrides does not matter", () => {
    expect(() => resolveLogSettings({ level: "loud" }, {})).toThrow("--log-level must be one of silent, error, warn, info, debug, trace (got 'loud')");
    expect(() => resolveLogSettings({ format: "xml" }, {})).toThrow("--log-format must be one of text, json (got 'xml')");
    expect(() => resolveLogSettings({}, { [LOG_LEVEL_ENV]: "loud" })).toThrow("VOLT_LOG_LEVEL must be one of silent, error, warn, info, debug, trace (got 'loud')");
    expect(() => resolveLogSettings({}, { [LOG_FORMAT_ENV]: "xml" })).toThrow("VOLT_LOG_FORMAT must be one of text, json (got 'xml')");
    expect(resolveLogSettings({ level: "warn" }, { [LOG_LEVEL_ENV]: "loud" })).toEqual({ level: "warn", format: "text" });
    // To report such an error, the valid half is kept.
    expect(lenientLogSettings({ level: "loud", format: "json" }, {})).toEqual({ level: "info", format: "json" });
  });

  test("logEnvironment hands the settings to a volt started from this one", () => {
    capture({ level: "debug", format: "json" });
    expect(logEnvironment()).toEqual({ VOLT_LOG_LEVEL: "debug", VOLT_LOG_FORMAT: "json" });
    expect(resolveLogSettings({}, logEnvironment())).toEqual({ level: "debug", format: "json" });
  });
});
