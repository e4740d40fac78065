/**
 * Volt's diagnostics: one consola logger for the process, writing to stderr
 * (stdout is for results: a command's output or its one --json document).
 *
 * Levels, most to least severe: error, warn, info (the default), debug,
 * trace; "silent" prints nothing. Formats:
 *
 * - text (the default): the messages people have always seen,
 *     volt: <message>            (error, info)
 *     volt: warning: <message>   (warn)
 *     volt: debug: <message> key=value...   (debug, trace: with the fields)
 *   An error's stack (internal errors) follows on the next lines.
 * - json: one JSON object per line (JSON Lines), keys in this order:
 *     time     ISO-8601 UTC with milliseconds ("2026-11-29T08:02:45.123Z")
 *     level    "error" | "warn" | "info" | "debug" | "trace"
 *     message  the same text the text format shows (without "volt: ")
 *     pid      the volt process that wrote it (a re-exec keeps it; a detached VM's is its own)
 *     tag      optional: the part of Volt ("sandbox", "jail", "runtime", "vm", "cli", ...)
 *     vm       optional: the VM's id, once the process runs a VM that has one
 *     ...      optional structured fields of that line (kind, exitCode, stack, path, ...)
 *   The first five never change meaning; a field with one of their names is
 *   dropped rather than allowed to replace them.
 *
 * Settings come from `--log-level` / `--log-format` (global options, taken
 * out of argv by main.ts) or VOLT_LOG_LEVEL / VOLT_LOG_FORMAT, the flag
 * winning. main.ts writes the result back to the environment, so every volt
 * this one starts (the Landlock re-exec, a detached VM, the jailed VMM) logs
 * the same way.
 *
 * Never log from hot paths (vCPU exits, virtio queues): the level check is
 * cheap, but building messages there is not.
 */
import { createConsola, LogLevels, type ConsolaInstance, type ConsolaReporter, type LogObject } from "consola/core";

export const LOG_LEVELS = ["silent", "error", "warn", "info", "debug", "trace"] as const;
export type LogLevelName = (typeof LOG_LEVELS)[number];
export const LOG_FORMATS = ["text", "json"] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

export const LOG_LEVEL_ENV = "VOLT_LOG_LEVEL";
export const LOG_FORMAT_ENV = "VOLT_LOG_FORMAT";
export const LOG_LEVEL_FLAG = "--log-level";
export const LOG_FORMAT_FLAG = "--log-format";

export const DEFAULT_LOG_SETTINGS: LogSettings = { level: "info", format: "text" };

export interface LogSettings {
  readonly level: LogLevelName;
  readonly format: LogFormat;
}

/** Structured data of one line: in JSON as keys of its object, in text (debug and trace only) as key=value. */
export type LogFields = Record<string, unknown>;

/** How a text line is laid out on a terminal; JSON lines ignore them. */
export interface LogHints {
  /** End the line with \r\n (the terminal is, or just was, in raw mode). */
  readonly crlf?: boolean;
  /** Start on a fresh line (the guest's console may have left the cursor mid-line). */
  readonly freshLine?: boolean;
}

/** Where lines go: stderr, looked up on every write (tests replace process.stderr.write). */
export type LogSink = (line: string) => void;

const RESERVED = new Set(["time", "level", "message", "pid", "tag"]);

/** A bad --log-level / --log-format / VOLT_LOG_* value, or a flag without its value: a usage error (exit 2). */
export class LogOptionError extends Error {
  override name = "LogOptionError";
}

// ---------------------------------------------------------------- settings

export function parseLogLevel(value: string, source: string): LogLevelName {
  const lower = value.toLowerCase();
  if ((LOG_LEVELS as readonly string[]).includes(lower)) return lower as LogLevelName;
  throw new LogOptionError(`${source} must be one of ${LOG_LEVELS.join(", ")} (got '${value}')`);
}

export function parseLogFormat(value: string, source: string): LogFormat {
  const lower = value.toLowerCase();
  if ((LOG_FORMATS as readonly string[]).includes(lower)) return lower as LogFormat;
  throw new LogOptionError(`${source} must be one of ${LOG_FORMATS.join(", ")} (got '${value}')`);
}

export interface LogFlags {
  /** argv without the global log options. */
  readonly argv: string[];
  readonly level?: string;
  readonly format?: string;
}

/**
 * Takes `--log-level L`, `--log-level=L`, `--log-format F`, `--log-format=F`
 * out of argv, anywhere before a `--` (after it, arguments belong to someone
 * else). The last one given wins. A flag without a value is a LogOptionError.
 */
export function takeLogFlags(argv: readonly string[]): LogFlags {
  const out: string[] = [];
  let level: string | undefined;
  let format: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      out.push(...argv.slice(i));
      break;
    }
    const flag = arg === LOG_LEVEL_FLAG || arg.startsWith(`${LOG_LEVEL_FLAG}=`) ? "level" : arg === LOG_FORMAT_FLAG || arg.startsWith(`${LOG_FORMAT_FLAG}=`) ? "format" : undefined;
    if (flag === undefined) {
      out.push(arg);
      continue;
    }
    const name = flag === "level" ? LOG_LEVEL_FLAG : LOG_FORMAT_FLAG;
    let value: string;
    if (arg.includes("=")) value = arg.slice(arg.indexOf("=") + 1);
    else {
      const next = argv[i + 1];
      if (next === undefined || next === "--") throw new LogOptionError(`${name} needs a value: one of ${(flag === "level" ? LOG_LEVELS : LOG_FORMATS).join(", ")}`);
      value = next;
      i++;
    }
    if (flag === "level") level = value;
    else format = value;
  }
  return { argv: out, ...(level !== undefined ? { level } : {}), ...(format !== undefined ? { format } : {}) };
}

/** The flag if given, else the environment variable if set (and not empty), else the default. Throws LogOptionError naming the source. */
export function resolveLogSettings(flags: { level?: string; format?: string }, env: Record<string, string | undefined> = process.env): LogSettings {
  const envLevel = env[LOG_LEVEL_ENV] || undefined;
  const envFormat = env[LOG_FORMAT_ENV] || undefined;
  const level =
    flags.level !== undefined ? parseLogLevel(flags.level, LOG_LEVEL_FLAG) : envLevel !== undefined ? parseLogLevel(envLevel, LOG_LEVEL_ENV) : DEFAULT_LOG_SETTINGS.level;
  const format =
    flags.format !== undefined ? parseLogFormat(flags.format, LOG_FORMAT_FLAG) : envFormat !== undefined ? parseLogFormat(envFormat, LOG_FORMAT_ENV) : DEFAULT_LOG_SETTINGS.format;
  return { level, format };
}

/** Like resolveLogSettings, but a bad value falls back to the default instead of throwing (to report that very error). */
export function lenientLogSettings(flags: { level?: string; format?: string }, env: Record<string, string | undefined> = process.env): LogSettings {
  const attempt = <T>(pick: (s: LogSettings) => T, only: { level?: string; format?: string }, fallback: T): T => {
    try {
      return pick(resolveLogSettings(only, env));
    } catch {
      return fallback;
    }
  };
  return {
    level: attempt((s) => s.level, flags.level !== undefined ? { level: flags.level } : {}, DEFAULT_LOG_SETTINGS.level),
    format: attempt((s) => s.format, flags.format !== undefined ? { format: flags.format } : {}, DEFAULT_LOG_SETTINGS.format),
  };
}

// ---------------------------------------------------------------- formatting

type Level = Exclude<LogLevelName, "silent">;

interface Entry {
  readonly date: Date;
  readonly level: Level;
  readonly message: string;
  readonly tag: string;
  readonly fields: LogFields;
  readonly hints: LogHints;
}

function jsonValue(value: unknown): unknown {
  if (typeof value === "bigint") return value.toString();
  if (value instanceof Error) return { name: value.name, message: value.message };
  return value;
}

/** One JSON object, on one line, without the line ending. */
export function formatJsonLine(entry: Entry, context: LogFields, pid: number = process.pid): string {
  const object: Record<string, unknown> = { time: entry.date.toISOString(), level: entry.level, message: entry.message, pid };
  if (entry.tag !== "") object.tag = entry.tag;
  for (const source of [context, entry.fields]) {
    for (const [key, value] of Object.entries(source)) {
      if (RESERVED.has(key) || value === undefined) continue;
      object[key] = jsonValue(value);
    }
  }
  try {
    return JSON.stringify(object, (_key, value: unknown) => (typeof value === "bigint" ? value.toString() : value));
  } catch {
    // A field that does not serialise (a cycle): keep the line, say so.
    return JSON.stringify({ time: object.time, level: object.level, message: object.message, pid, ...(entry.tag !== "" ? { tag: entry.tag } : {}), fieldsError: "unserialisable fields" });
  }
}

function textValue(value: unknown): string {
  if (typeof value === "string") return /[\s"=]/.test(value) || value === "" ? JSON.stringify(value) : value;
  if (typeof value === "bigint") return value.toString();
  if (value instanceof Error) return JSON.stringify(value.message);
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

/** The text form, without the line ending: Volt's long-standing `volt: ...` wording. */
export function formatTextLine(entry: Entry): string {
  const label = entry.level === "warn" ? "warning: " : entry.level === "debug" || entry.level === "trace" ? `${entry.level}: ` : "";
  const tag = entry.tag !== "" && (entry.level === "debug" || entry.level === "trace") ? `[${entry.tag}] ` : "";
  let line = `volt: ${label}${tag}${entry.message}`;
  if (entry.level === "debug" || entry.level === "trace") {
    const pairs = Object.entries(entry.fields).filter(([key, value]) => value !== undefined && key !== "stack");
    if (pairs.length > 0) line += ` ${pairs.map(([key, value]) => `${key}=${textValue(value)}`).join(" ")}`;
  }
  const stack = entry.fields.stack;
  if (typeof stack === "string" && stack !== "") line += `\n${stack}`;
  return line;
}

// ---------------------------------------------------------------- the logger

/** The default sink: process.stderr, looked up on every line. */
export const stderrSink: LogSink = (line) => {
  process.stderr.write(line);
};

const state: { settings: LogSettings; context: LogFields; sink: LogSink } = {
  settings: lenientLogSettings({}),
  context: {},
  sink: stderrSink,
};

const reporter: ConsolaReporter = {
  log(logObj: LogObject) {
    const extra = logObj as LogObject & { fields?: LogFields; hints?: LogHints };
    const entry: Entry = {
      date: logObj.date,
      level: logObj.type as Level,
      message: logObj.args.map((arg) => (typeof arg === "string" ? arg : String(arg))).join(" "),
      tag: logObj.tag,
      fields: extra.fields ?? {},
      hints: extra.hints ?? {},
    };
    if (state.settings.format === "json") {
      state.sink(`${formatJsonLine(entry, state.context)}\n`);
      return;
    }
    const end = entry.hints.crlf ? "\r\n" : "\n";
    const text = formatTextLine(entry);
    state.sink(`${entry.hints.freshLine ? "\r\n" : ""}${entry.hints.crlf ? text.replaceAll("\n", "\r\n") : text}${end}`);
  },
};

// throttle 0: consola would otherwise fold a message repeated within a second into "(repeated N times)", later.
const consola: ConsolaInstance = createConsola({ level: LogLevels[state.settings.level], reporters: [reporter], throttle: 0 });

/** Sets the process's logging (main.ts does, once the flags and environment are read). */
export function configureLogging(settings: Partial<LogSettings>, options: { sink?: LogSink } = {}): void {
  state.settings = { ...state.settings, ...settings };
  consola.level = LogLevels[state.settings.level];
  if (options.sink) state.sink = options.sink;
}

export function logSettings(): LogSettings {
  return state.settings;
}

/** Fields every later JSON line carries (the VM's id, once known); undefined removes one. */
export function setLogContext(fields: LogFields): void {
  const next = { ...state.context };
  for (const [key, value] of Object.entries(fields)) {
    if (value === undefined) delete next[key];
    else next[key] = value;
  }
  state.context = next;
}

/** The environment that makes a volt started from this one log the same way. */
export function logEnvironment(): Record<string, string> {
  return { [LOG_LEVEL_ENV]: state.settings.level, [LOG_FORMAT_ENV]: state.settings.format };
}

const SEVERITY: Record<LogLevelName, number> = { silent: -1, error: 0, warn: 1, info: 3, debug: 4, trace: 5 };

export class Logger {
  constructor(readonly tag: string = "") {}

  /** Whether a line of this level would be written (to skip building an expensive message). */
  enabled(level: Level): boolean {
    return SEVERITY[level] <= SEVERITY[state.settings.level];
  }

  error(message: string, fields?: LogFields, hints?: LogHints): void {
    this.emit("error", message, fields, hints);
  }

  warn(message: string, fields?: LogFields, hints?: LogHints): void {
    this.emit("warn", message, fields, hints);
  }

  info(message: string, fields?: LogFields, hints?: LogHints): void {
    this.emit("info", message, fields, hints);
  }

  debug(message: string, fields?: LogFields, hints?: LogHints): void {
    this.emit("debug", message, fields, hints);
  }

  trace(message: string, fields?: LogFields, hints?: LogHints): void {
    this.emit("trace", message, fields, hints);
  }

  /** The same logger, its lines tagged (nested tags join with ":"). */
  withTag(tag: string): Logger {
    return new Logger(this.tag === "" ? tag : `${this.tag}:${tag}`);
  }

  private emit(level: Level, message: string, fields: LogFields | undefined, hints: LogHints | undefined): void {
    if (!this.enabled(level)) return;
    // A log object (message + our own keys): consola hands it to the reporter with the level and date filled in.
    // (An empty message would not pass as one: consola would print the object itself.)
    consola[level]({ message: message === "" ? " " : message, tag: this.tag, fields: fields ?? {}, hints: hints ?? {} } as never);
  }
}

/** The process's logger. */
export const log = new Logger();
