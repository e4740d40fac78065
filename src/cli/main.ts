#!/usr/bin/env bun
/** The `volt` command line. Each subcommand lives in commands/ and owns its flags and help text. */
import { defineCommand, runMain } from "citty";
import pkg from "../../package.json" with { type: "json" };
import { LOG_FORMAT_ENV, LOG_FORMATS, LOG_LEVEL_ENV, LOG_LEVELS, LogOptionError, configureLogging, lenientLogSettings, logEnvironment, resolveLogSettings, takeLogFlags } from "../log/index.ts";
import { apiCommand } from "./commands/api.ts";
import { configCommand } from "./commands/config.ts";
import { imageCommand } from "./commands/image.ts";
import { kernelCommand } from "./commands/kernel.ts";
import { kvmCheckCommand } from "./commands/kvm-check.ts";
import { lifecycleCommands } from "./commands/lifecycle.ts";
import { runCommand } from "./commands/run.ts";
import { snapshotCommand } from "./commands/snapshot.ts";
import { sandboxCommand } from "./commands/sandbox.ts";
import { reportError, usageError } from "./output.ts";

/**
 * Global options, accepted before or after the command by every command. citty has no global flags:
 * main.ts takes them out of argv before citty sees it; they are listed here only for `volt --help`.
 */
export const GLOBAL_ARGS = {
  "log-level": {
    type: "string",
    description: `Diagnostics on stderr up to this level: ${LOG_LEVELS.join("|")} (default info; env ${LOG_LEVEL_ENV}); any command takes it`,
    valueHint: "level",
  },
  "log-format": {
    type: "string",
    description: `Diagnostics as text (volt: ...) or json (one object per line: time, level, message, pid, ...; env ${LOG_FORMAT_ENV}); any command takes it`,
    valueHint: LOG_FORMATS.join("|"),
  },
} as const;

export const mainCommand = defineCommand({
  meta: {
    name: "volt",
    version: pkg.version,
    description:
      "Volt: a KVM microVM monitor. Boots Linux guests fast, small and sandboxed.\n" +
      `Global options, for every command: --log-level ${LOG_LEVELS.join("|")}, --log-format ${LOG_FORMATS.join("|")} (or ${LOG_LEVEL_ENV}, ${LOG_FORMAT_ENV}; the flag wins).\n` +
      "Results go to stdout, diagnostics to stderr.",
  },
  args: GLOBAL_ARGS,
  subCommands: {
    run: runCommand,
    snapshot: snapshotCommand,
    sandbox: sandboxCommand,
    "kvm-check": kvmCheckCommand,
    kernel: kernelCommand,
    image: imageCommand,
    ...lifecycleCommands,
    api: apiCommand,
    config: configCommand,
  },
});

/** Reads the global log options (flag over environment), sets up the logger and returns the arguments left for citty. */
function setUpLogging(argv: readonly string[]): string[] | undefined {
  let flags: ReturnType<typeof takeLogFlags> | undefined;
  try {
    flags = takeLogFlags(argv);
    configureLogging(resolveLogSettings(flags, process.env));
    // Every volt started from this one (the Landlock re-exec, a detached VM, the jailed VMM) inherits the environment.
    Object.assign(process.env, logEnvironment());
    return flags.argv;
  } catch (error) {
    if (!(error instanceof LogOptionError)) throw error;
    // Report it in whatever the valid part of the settings asks for; a --json command still gets its one document.
    configureLogging(lenientLogSettings(flags ?? {}, process.env));
    const beforeDashes = argv.indexOf("--") === -1 ? argv : argv.slice(0, argv.indexOf("--"));
    process.exitCode = reportError(usageError(error.message), beforeDashes.includes("--json"));
    return undefined;
  }
}

const rawArgs = setUpLogging(process.argv.slice(2));
if (rawArgs !== undefined) await runMain(mainCommand, { rawArgs });
