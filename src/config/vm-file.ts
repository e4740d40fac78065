/**
 * The VM config file (`volt run --config vm.json`): one JSON document that
 * says what a VM is made of. It is checked with valibot before anything else
 * happens, and every complaint names the field by its path
 * (`vcpus`, `drives[1].path`), so a script author can find the mistake.
 *
 * Relative paths inside the file are relative to the file's directory, not to
 * wherever volt was started: a config file and its kernel can move together.
 */
import { readFileSync } from "node:fs";
import { dirname, isAbsolute, resolve } from "node:path";
import * as v from "valibot";
import { MAX_VCPUS } from "../vmm/config.ts";

export const MAX_MEMORY_MIB = 1024 * 1024;

const path = v.pipe(v.string("must be a path (a string)"), v.nonEmpty("must not be empty"));

const bucket = v.strictObject(
  {
    size: v.pipe(v.number("must be a number of tokens"), v.integer("must be a whole number"), v.minValue(1, "must be at least 1")),
    refillTimeMs: v.pipe(v.number("must be a number of milliseconds"), v.integer("must be a whole number"), v.minValue(1, "must be at least 1")),
  },
  'must be an object like {"size": 10485760, "refillTimeMs": 1000}',
);

/** Token buckets as Firecracker configures them: bytes and operations, each refilling fully in refillTimeMs. */
const rateLimit = v.strictObject({ bandwidth: v.optional(bucket), ops: v.optional(bucket) }, 'must be an object like {"bandwidth": {...}, "ops": {...}}');

export const VmFileSchema = v.strictObject(
  {
    /** Where an editor finds the schema (`volt config schema`); Volt ignores it. */
    $schema: v.optional(v.string("must be the URL or path of the file's JSON Schema")),
    kernel: v.optional(path),
    initrd: v.optional(path),
    cmdline: v.optional(v.string("must be a string of kernel parameters")),
    memMiB: v.optional(
      v.pipe(
        v.number("must be a number of MiB"),
        v.integer("must be a whole number of MiB"),
        v.minValue(1, "must be at least 1 MiB"),
        v.maxValue(MAX_MEMORY_MIB, `must be at most ${MAX_MEMORY_MIB} MiB`),
      ),
    ),
    vcpus: v.optional(
      v.pipe(
        v.number("must be a number"),
        v.integer(`must be a whole number from 1 to ${MAX_VCPUS}`),
        v.minValue(1, `must be a whole number from 1 to ${MAX_VCPUS}`),
        v.maxValue(MAX_VCPUS, `must be a whole number from 1 to ${MAX_VCPUS}`),
      ),
    ),
    bootTimer: v.optional(v.boolean("must be true or false")),
    onReboot: v.optional(v.picklist(["exit", "restart"], 'must be "exit" or "restart"')),
    drives: v.optional(
      v.array(
        v.strictObject(
          {
            path,
            readOnly: v.optional(v.boolean("must be true or false")),
            root: v.optional(v.boolean("must be true or false")),
            id: v.optional(v.pipe(v.string("must be a string"), v.nonEmpty("must not be empty"))),
            rateLimit: v.optional(rateLimit),
          },
          "must be an object like {\"path\": \"rootfs.ext4\", \"root\": true}",
        ),
        "must be a list of drives",
      ),
    ),
    rng: v.optional(v.boolean("must be true or false")),
    nets: v.optional(
      v.array(
        v.strictObject(
          {
            tap: v.pipe(v.string("must be a tap name"), v.nonEmpty("must not be empty"), v.maxLength(15, "must be at most 15 bytes")),
            mac: v.optional(v.pipe(v.string("must be a MAC address"), v.regex(/^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$/, "must look like 52:54:00:12:34:56"))),
            rxRateLimit: v.optional(rateLimit),
            txRateLimit: v.optional(rateLimit),
          },
          'must be an object like {"tap": "tap0"}',
        ),
        "must be a list of network interfaces",
      ),
    ),
    vsock: v.optional(
      v.strictObject(
        {
          guestCid: v.pipe(v.number("must be a number"), v.integer("must be a whole number"), v.minValue(3, "must be at least 3"), v.maxValue(0xffff_fffe, "must be at most 4294967294")),
          udsPath: path,
        },
        'must be an object like {"guestCid": 3, "udsPath": "/tmp/vm.vsock"}',
      ),
    ),
  },
  "must be a JSON object",
);

export type VmFile = v.InferOutput<typeof VmFileSchema>;

export class ConfigFileError extends Error {
  override name = "ConfigFileError";
  readonly file: string;
  /** Each problem as "field.path: what is wrong". */
  readonly problems: readonly string[];

  constructor(file: string, problems: readonly string[]) {
    super(`config ${file}: ${problems.join("; ")}`);
    this.file = file;
    this.problems = problems;
  }
}

export function loadVmFile(file: string): VmFile {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const why = code === "ENOENT" ? "no such file" : code === "EACCES" ? "permission denied" : code === "EISDIR" ? "is a directory" : String(error);
    throw new ConfigFileError(file, [`cannot read it: ${why}`]);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new ConfigFileError(file, [`not valid JSON: ${(error as Error).message}`]);
  }
  return parseVmFile(file, json);
}

/** Validates an already-parsed document; `file` names it in errors and anchors relative paths. */
export function parseVmFile(file: string, json: unknown): VmFile {
  // valibot takes an array for an object; a config that is a list is a mistake worth naming.
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw new ConfigFileError(file, ["the document must be a JSON object"]);
  const result = v.safeParse(VmFileSchema, json, { abortPipeEarly: true });
  if (!result.success) throw new ConfigFileError(file, result.issues.map(describeIssue));
  const base = dirname(resolve(file));
  const anchored = (p: string | undefined) => (p === undefined || isAbsolute(p) ? p : resolve(base, p));
  const config = { ...result.output };
  if (config.kernel !== undefined) config.kernel = anchored(config.kernel)!;
  if (config.initrd !== undefined) config.initrd = anchored(config.initrd)!;
  if (config.drives !== undefined) config.drives = config.drives.map((drive) => ({ ...drive, path: anchored(drive.path)! }));
  if (config.vsock !== undefined) config.vsock = { ...config.vsock, udsPath: anchored(config.vsock.udsPath)! };
  return config;
}

function describeIssue(issue: v.BaseIssue<unknown>): string {
  const where = fieldPath(issue.path);
  if (issue.kind === "schema" && issue.type === "strict_object" && issue.path?.length && issue.expected === "never") {
    // valibot reports an unknown key with that key as the last path item.
    const known = issue.path.length === 1 ? Object.keys(VmFileSchema.entries) : knownFieldsAt(String((issue.path[0] as { key: unknown }).key));
    return `${where}: unknown field (allowed: ${known.join(", ")})`;
  }
  if (issue.kind === "schema" && issue.type === "strict_object" && issue.path?.length && issue.received === "undefined") {
    return `${where}: is required`;
  }
  return where ? `${where}: ${issue.message}` : `the document ${issue.message}`;
}

function knownFieldsAt(section: string): string[] {
  const entry = VmFileSchema.entries[section as keyof typeof VmFileSchema.entries] as unknown as { wrapped?: { item?: { entries?: object }; entries?: object } };
  const inner = entry.wrapped?.item?.entries ?? entry.wrapped?.entries ?? {};
  return Object.keys(inner);
}

function fieldPath(path: v.BaseIssue<unknown>["path"]): string {
  if (!path) return "";
  let text = "";
  for (const item of path) {
    const key = (item as { key: unknown }).key;
    text += typeof key === "number" ? `[${key}]` : text === "" ? String(key) : `.${String(key)}`;
  }
  return text;
}
