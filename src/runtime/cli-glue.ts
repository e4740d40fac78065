/** What `volt run` needs from the runtime directory, in the CLI's terms (CliError, exit statuses, one JSON document). */
import { CliError, printJson } from "../cli/output.ts";
import { EXIT, type ExitCode } from "../cli/exit-codes.ts";
import type { ConsoleIo } from "../vmm/vmm.ts";
import { RuntimeError } from "./dirs.ts";
import { DetachError, startDetached } from "./detach.ts";
import { removeVmDir } from "./registry.ts";
import { VmRegistration } from "./session.ts";

/** Runtime-directory problems are bad input: nothing was started (exit 2). */
export function runtimeCliError(error: unknown): unknown {
  if (error instanceof RuntimeError) return new CliError(error.kind, error.message, EXIT.usage, { cause: error });
  return error;
}

/** `volt run --detach`: starts the background VM, prints its id (or one JSON document), returns 0; throws CliError when it could not start. */
export async function runDetached(options: { runArgs: readonly string[]; id?: string; apiSocket?: string; json: boolean }): Promise<ExitCode> {
  try {
    const vm = await startDetached({
      runArgs: options.runArgs,
      ...(options.id !== undefined ? { id: options.id } : {}),
      ...(options.apiSocket !== undefined ? { apiSocket: options.apiSocket } : {}),
    });
    if (options.json) printJson({ ok: true, ...vm });
    else process.stdout.write(`${vm.id}\n`);
    return EXIT.ok;
  } catch (error) {
    if (error instanceof DetachError) {
      const cliError = new CliError(error.kind, error.message, error.exitCode as ExitCode, { cause: error });
      // The failure happened in the background volt (its own trace is in volt.log); this process's stack would mislead.
      cliError.stack = "";
      throw cliError;
    }
    throw runtimeCliError(error);
  }
}

/** A run with a runtime directory: the background half of --detach (console in the directory only), or --id in the foreground (the terminal too). */
export async function registerRun(options: { id?: string; detachedChild: boolean; apiSocket?: string; terminal: () => ConsoleIo }): Promise<RunRegistration> {
  try {
    const registration = await VmRegistration.open({
      ...(options.id !== undefined ? { id: options.id } : {}),
      adopt: options.detachedChild,
      ...(options.apiSocket !== undefined ? { apiSocket: options.apiSocket } : {}),
      ...(options.detachedChild ? {} : { terminal: options.terminal() }),
    });
    return new RunRegistration(registration, options.detachedChild);
  } catch (error) {
    throw runtimeCliError(error);
  }
}

export class RunRegistration {
  private started = false;

  constructor(
    readonly registration: VmRegistration,
    private readonly detachedChild: boolean,
  ) {}

  get apiSocket(): string {
    return this.registration.apiSocket;
  }

  get console(): ConsoleIo {
    return this.registration.console;
  }

  recordStart(...args: Parameters<VmRegistration["recordStart"]>): void {
    if (this.started) return;
    this.started = true;
    this.registration.recordStart(...args);
  }

  recordOutcome(exitCode: number, outcome: { kind: string; detail: string }): void {
    this.registration.recordExit({ exitCode, outcome: outcome.kind, detail: outcome.detail });
  }

  /**
   * The run failed. A detached child records why (its parent reports it); a
   * foreground run that never started its VM removes its directory, since
   * the error is already on the terminal.
   */
  recordFailure(error: unknown, exitCode: number): void {
    if (!this.detachedChild && !this.started) {
      this.registration.close();
      removeVmDir(this.registration.paths);
      return;
    }
    const kind = error instanceof CliError ? error.kind : "internal";
    this.registration.recordExit({ exitCode, error: { kind, message: error instanceof Error ? error.message : String(error) } });
  }

  close(): void {
    this.registration.close();
  }
}
