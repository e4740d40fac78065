/**
 * `volt config schema`: the VM config file's JSON Schema (draft-07), generated
 * from the valibot schema that `volt run --config` validates with, so an
 * editor's completion and checks match what Volt accepts.
 */
import { toJsonSchema } from "@valibot/to-json-schema";
import { defineCommand } from "citty";
import pkg from "../../../package.json" with { type: "json" };
import { VmFileSchema } from "../../config/vm-file.ts";
import { printJson, rejectUnknownFlags, reportError, usageError } from "../output.ts";
import { log } from "../../log/index.ts";

/** The schema document. A check JSON Schema cannot express is left out with a warning on stderr (volt run still makes it). */
export function vmFileJsonSchema(): Record<string, unknown> {
  // The library would console.warn them; they go through Volt's logger instead (text or JSON lines, as asked).
  const problems: string[] = [];
  const collect = (context: { errors: readonly string[] | undefined }) => {
    problems.push(...(context.errors ?? []));
    return undefined;
  };
  const schema = toJsonSchema(VmFileSchema, { errorMode: "ignore", overrideSchema: collect, overrideAction: collect }) as Record<string, unknown>;
  for (const problem of new Set(problems)) log.warn(`config schema: ${problem} (left out of the schema; volt run still checks it)`);
  return {
    ...schema,
    title: `Volt ${pkg.version} VM config file`,
    description: "One VM for `volt run --config FILE`: relative paths are relative to the file; command-line flags override fields.",
  };
}

const schemaArgs = {} as const;

const schemaCommand = defineCommand({
  meta: {
    name: "schema",
    description:
      "Print the JSON Schema of the VM config file (volt run --config), for editors.\n\n" +
      "Example:\n  volt config schema > volt-vm.schema.json\n" +
      '  (VS Code: "json.schemas": [{"fileMatch": ["vm.json"], "url": "./volt-vm.schema.json"}] in settings.json)\n\n' +
      "Exit status: 0.",
  },
  args: schemaArgs,
  run({ rawArgs }) {
    try {
      rejectUnknownFlags(rawArgs, schemaArgs);
      printJson(vmFileJsonSchema());
    } catch (error) {
      process.exitCode = reportError(error, false);
    }
  },
});

export const configCommand = defineCommand({
  meta: { name: "config", description: "The VM config file: print its JSON Schema" },
  subCommands: { schema: schemaCommand },
  run({ rawArgs }) {
    if (rawArgs.length === 0) process.exitCode = reportError(usageError("volt config needs a subcommand: schema (see --help)"), false);
  },
});
