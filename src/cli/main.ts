#!/usr/bin/env bun
/** The `volt` command line. Each subcommand lives in commands/ and owns its flags and help text. */
import { defineCommand, runMain } from "citty";
import pkg from "../../package.json" with { type: "json" };
import { apiCommand } from "./commands/api.ts";
import { configCommand } from "./commands/config.ts";
import { imageCommand } from "./commands/image.ts";
import { kernelCommand } from "./commands/kernel.ts";
import { kvmCheckCommand } from "./commands/kvm-check.ts";
import { lifecycleCommands } from "./commands/lifecycle.ts";
import { runCommand } from "./commands/run.ts";
import { snapshotCommand } from "./commands/snapshot.ts";
import { sandboxCommand } from "./commands/sandbox.ts";

export const mainCommand = defineCommand({
  meta: {
    name: "volt",
    version: pkg.version,
    description: "Volt: a KVM microVM monitor. Boots Linux guests fast, small and sandboxed.",
  },
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

await runMain(mainCommand);
