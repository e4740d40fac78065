/**
 * How commands talk to people and scripts: with --json exactly one JSON
 * document goes to stdout (success or error, so scripts can always parse it);
 * errors are also logged on stderr (src/log: text or JSON lines, as
 * --log-format says; --log-level silent hides them).
 */
import { log } from "../log/index.ts";
import type { ExitCode } from "./exit-codes.ts";
import { EXIT } from "./exit-codes.ts";

export class CliError extends Error {
  override name = "CliError";
  readonly exitCode: ExitCode;
  readonly kind: string;

  constructor(kind: string, message: string, exitCode: ExitCode, options?: { cause?: unknown }) {
    super(message, options);
    this.kind = kind;
    this.exitCode = exitCode;
  }
}

export function usageError(message: string): CliError {
  return new CliError("usage", message, EXIT.usage);
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** Reports an error the way the command was asked to and returns the exit status to use. */
export function reportError(error: unknown, json: boolean): ExitCode {
  const cliError =
    error instanceof CliError ? error : new CliError("internal", error instanceof Error ? error.message : String(error), EXIT.internal);
  const stack = cliError.exitCode === EXIT.internal && error instanceof Error && error.stack ? error.stack : undefined;
  log.error(cliError.message, { kind: cliError.kind, exitCode: cliError.exitCode, ...(stack !== undefined ? { stack } : {}) });
  if (json) printJson({ ok: false, error: { kind: cliError.kind, message: cliError.message } });
  return cliError.exitCode;
}

/** citty accepts any flag; Volt refuses ones it does not know, so a typo never passes silently. */
export function rejectUnknownFlags(rawArgs: readonly string[], known: Record<string, object>): void {
  const names = new Set<string>(["help", "h", "version", "v"]);
  for (const [name, def] of Object.entries(known)) {
    names.add(name);
    names.add(name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`));
    const alias = (def as { alias?: string | string[] }).alias;
    for (const aliasName of [alias ?? []].flat()) names.add(aliasName);
  }
  for (const arg of rawArgs) {
    if (arg === "--") break;
    if (!arg.startsWith("-") || arg === "-") continue;
    const name = arg.replace(/^--?/, "").replace(/=.*$/, "");
    // citty reads --no-X as X=false; a flag literally named no-X (--no-sandbox) is known as itself.
    if (!names.has(name) && !names.has(name.replace(/^no-/, ""))) throw usageError(`unknown option '${arg}' (see --help)`);
  }
}
