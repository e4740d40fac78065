import { defineCommand } from "citty";
import { existsSync, readFileSync, statSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { DriveOptionError, repeatedOption } from "../../config/device-options.ts";
import { buildExt4Image, Ext4ImageError } from "../../image/ext4.ts";
import { buildInitramfs, InitramfsError, type InitramfsFile } from "../../image/initramfs.ts";
import { writeFileAtomic } from "../../kernel/extract.ts";
import { KernelStore, KernelStoreError } from "../../kernel/store.ts";
import { EXIT } from "../exit-codes.ts";
import { CliError, printJson, rejectUnknownFlags, reportError, usageError } from "../output.ts";

const jsonArg = { type: "boolean", description: "One JSON document on stdout (also on failure)", default: false } as const;

/** A required argument, checked here (not by citty) so a missing one is exit 2 with --json's error document. */
function need(value: string | undefined, what: string): string {
  if (typeof value !== "string" || value === "") throw usageError(`missing ${what} (see --help)`);
  return value;
}

function checkOutput(out: string | undefined, force: boolean): string {
  if (typeof out !== "string" || out === "") throw usageError("missing --out FILE (see --help)");
  const path = resolve(out);
  if (!existsSync(dirname(path))) throw new CliError("output", `cannot write ${out}: directory ${dirname(path)} does not exist`, EXIT.usage);
  if (existsSync(path) && !force) throw new CliError("output-exists", `${out} exists; give --force to replace it`, EXIT.usage);
  return path;
}

/** HOST:GUEST, the guest path absolute; the host path may itself contain ':' (the last one splits). */
function parseFileOption(value: string): InitramfsFile {
  const split = value.lastIndexOf(":");
  const hostPath = split > 0 ? value.slice(0, split) : "";
  const archivePath = split > 0 ? value.slice(split + 1) : "";
  if (!hostPath || !archivePath.startsWith("/")) throw usageError(`--file '${value}': expected HOST:GUEST with an absolute guest path, e.g. ./tool:/usr/bin/tool`);
  if (!existsSync(hostPath) || !statSync(hostPath).isFile()) throw usageError(`--file '${value}': ${hostPath} is not a file`);
  return { hostPath, archivePath };
}

// ---------------------------------------------------------------- initramfs
const initramfsArgs = {
  out: { type: "string", description: "Where to write the initramfs (gzip'ed newc cpio) (required)", valueHint: "path" },
  kernel: { type: "string", description: "A kernel in the store whose modules /init loads (volt kernel fetch keeps them)", valueHint: "name" },
  script: { type: "string", description: "Shell script /init runs after loading the modules; its exit code is printed", valueHint: "file" },
  file: { type: "string", description: "Add a host file (repeatable): HOST:GUEST", valueHint: "host:guest" },
  "init-exit": { type: "string", description: "How /init ends the guest: poweroff (default, needs ACPI) or reboot", valueHint: "poweroff|reboot" },
  busybox: { type: "string", description: "Static busybox to use (default /bin/busybox, Debian's busybox-static)", valueHint: "path" },
  force: { type: "boolean", description: "Replace an existing output file", default: false },
  json: jsonArg,
} as const;
const initramfsCommand = defineCommand({
  meta: {
    name: "initramfs",
    description:
      "Build a busybox initramfs: /init mounts /proc, /sys and /dev, loads the kernel's modules (with their\n" +
      "module.param=value options from the kernel command line), runs the script, prints\n" +
      "'VOLT-INIT: script exit code N' and powers off (or reboots).\n\n" +
      "Examples:\n  volt image initramfs --out initrd.img\n" +
      "  volt image initramfs --out initrd.img --kernel debian-6.1.0-56-amd64 --script test.sh\n" +
      "  volt image initramfs --out initrd.img --file ./probe:/usr/bin/probe --init-exit reboot\n\n" +
      "Exit status: 0 written, 2 bad input (a missing file, kernel, busybox, or a dynamically linked busybox).",
  },
  args: initramfsArgs,
  run({ args: parsed, rawArgs }) {
    const json = parsed.json;
    try {
      rejectUnknownFlags(rawArgs, initramfsArgs);
      const initExit = parsed["init-exit"] ?? "poweroff";
      if (initExit !== "poweroff" && initExit !== "reboot") throw usageError(`--init-exit must be poweroff or reboot (got '${initExit}')`);
      let files: InitramfsFile[];
      try {
        files = repeatedOption(rawArgs, "file").map(parseFileOption);
      } catch (error) {
        if (error instanceof DriveOptionError) throw usageError(error.message);
        throw error;
      }
      let modules: string[] = [];
      let kernelName: string | null = null;
      if (parsed.kernel !== undefined) {
        try {
          const kernel = new KernelStore().require(parsed.kernel);
          modules = kernel.modulePaths;
          kernelName = kernel.name;
        } catch (error) {
          if (error instanceof KernelStoreError) throw new CliError(`kernel-${error.kind}`, error.message, EXIT.usage, { cause: error });
          throw error;
        }
      }
      let script: string | undefined;
      if (parsed.script !== undefined) {
        try {
          script = readFileSync(parsed.script, "utf8");
        } catch (error) {
          throw usageError(`cannot read script ${parsed.script}: ${(error as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (error as Error).message}`);
        }
      }
      const out = checkOutput(parsed.out, parsed.force);
      let image: Uint8Array;
      try {
        image = buildInitramfs({
          modules,
          files,
          exit: initExit,
          ...(script !== undefined ? { script } : {}),
          ...(parsed.busybox !== undefined ? { busyboxPath: parsed.busybox } : {}),
        });
      } catch (error) {
        if (error instanceof InitramfsError) throw new CliError("initramfs", error.message, EXIT.usage, { cause: error });
        throw error;
      }
      writeFileAtomic(out, image);
      const result = {
        path: out,
        sizeBytes: image.length,
        kernel: kernelName,
        modules: modules.map((m) => m.slice(m.lastIndexOf("/") + 1)),
        files: files.map((f) => f.archivePath),
        script: script !== undefined,
        initExit,
      };
      if (json) printJson({ ok: true, initramfs: result });
      else {
        process.stdout.write(
          `${parsed.out}: initramfs, ${(image.length / 2 ** 20).toFixed(1)} MiB, ${result.modules.length} module(s), ${files.length} extra file(s)${script !== undefined ? ", a script" : ""}\n`,
        );
      }
    } catch (error) {
      process.exitCode = reportError(error, json);
    }
  },
});

// ---------------------------------------------------------------- ext4
const ext4Args = {
  dir: { type: "positional", description: "Directory whose contents become the filesystem's root (required)", required: false },
  out: { type: "string", description: "Where to write the ext4 image (required)", valueHint: "path" },
  size: { type: "string", description: "Image size in MiB (default: the tree's size plus a third, plus 8 MiB)", valueHint: "MiB" },
  label: { type: "string", description: "Filesystem label (default volt-root)", valueHint: "label" },
  force: { type: "boolean", description: "Replace an existing output file", default: false },
  json: jsonArg,
} as const;
const ext4Command = defineCommand({
  meta: {
    name: "ext4",
    description:
      "Build an ext4 root filesystem image from a directory with mkfs.ext4 -d (e2fsprogs; no mounting, no root needed).\n" +
      "Files keep their modes and owners; / belongs to root.\n\n" +
      "Examples:\n  volt image ext4 ./rootfs --out rootfs.ext4\n  volt image ext4 ./rootfs --out rootfs.ext4 --size 256\n" +
      "  volt run --kernel vmlinux --drive path=rootfs.ext4,root\n\n" +
      "Exit status: 0 written, 2 a missing directory, no mkfs.ext4, a size too small for the tree, or the output exists.",
  },
  args: ext4Args,
  run({ args: parsed, rawArgs }) {
    const json = parsed.json;
    try {
      rejectUnknownFlags(rawArgs, ext4Args);
      let sizeMiB: number | undefined;
      if (parsed.size !== undefined) {
        if (!/^\d+$/.test(parsed.size) || Number(parsed.size) < 1) throw usageError(`--size must be a whole number of MiB (got '${parsed.size}')`);
        sizeMiB = Number(parsed.size);
      }
      const sourceDir = need(parsed.dir, "the directory to build the image from");
      const out = checkOutput(parsed.out, parsed.force);
      let image;
      try {
        image = buildExt4Image({
          sourceDir,
          out,
          force: parsed.force,
          ...(sizeMiB !== undefined ? { sizeMiB } : {}),
          ...(parsed.label !== undefined ? { label: parsed.label } : {}),
        });
      } catch (error) {
        if (error instanceof Ext4ImageError) throw new CliError(`ext4-${error.kind}`, error.message, EXIT.usage, { cause: error });
        throw error;
      }
      if (json) printJson({ ok: true, image });
      else process.stdout.write(`${parsed.out}: ext4, ${image.sizeMiB} MiB, ${image.entries} entries from ${image.sourceDir}\n`);
    } catch (error) {
      process.exitCode = reportError(error, json);
    }
  },
});

export const imageCommand = defineCommand({
  meta: { name: "image", description: "Build guest images: a busybox initramfs, an ext4 root filesystem" },
  subCommands: { initramfs: initramfsCommand, ext4: ext4Command },
  run({ rawArgs }) {
    if (rawArgs.length === 0) process.exitCode = reportError(usageError("volt image needs a subcommand: initramfs or ext4 (see --help)"), false);
  },
});
