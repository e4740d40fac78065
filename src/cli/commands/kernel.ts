import { defineCommand } from "citty";
import { existsSync, readFileSync, statSync } from "node:fs";
import { resolve } from "node:path";
import { createHash } from "node:crypto";
import { KernelFormatError } from "../../loader/errors.ts";
import { type BuildProgress, buildKernel, formatDuration, KernelBuildError } from "../../kernel/build.ts";
import { ExtractError, extractVmlinux, writeFileAtomic } from "../../kernel/extract.ts";
import { fetchKernelIntoStore, KernelFetchError } from "../../kernel/fetch.ts";
import { formatLabel, hex, inspectKernelFile, type KernelFacts } from "../../kernel/inspect.ts";
import { KernelStore, KernelStoreError, type StoredKernel } from "../../kernel/store.ts";
import { EXIT } from "../exit-codes.ts";
import { CliError, printJson, rejectUnknownFlags, reportError, usageError } from "../output.ts";

const jsonArg = { type: "boolean", description: "One JSON document on stdout (also on failure)", default: false } as const;

/** Store, extract and format errors are bad input: exit 2, with a kind scripts can match. */
function explain(error: unknown): never {
  if (error instanceof KernelStoreError) throw new CliError(`kernel-${error.kind}`, error.message, EXIT.usage, { cause: error });
  if (error instanceof ExtractError) throw new CliError(`extract-${error.kind}`, error.message, EXIT.usage, { cause: error });
  if (error instanceof KernelFormatError) throw new CliError("kernel-format", error.message, EXIT.usage, { cause: error });
  if (error instanceof KernelFetchError) throw new CliError("kernel-fetch", error.message, EXIT.usage, { cause: error });
  if (error instanceof KernelBuildError) {
    throw new CliError(`kernel-build-${error.kind}`, error.message, error.kind === "interrupted" ? EXIT.interrupted : EXIT.usage, { cause: error });
  }
  throw error;
}

function readKernelFile(path: string): Uint8Array {
  try {
    if (!statSync(path).isFile()) throw usageError(`${path} is not a regular file`);
    return new Uint8Array(readFileSync(path));
  } catch (error) {
    if (error instanceof CliError) throw error;
    const code = (error as NodeJS.ErrnoException).code;
    throw new CliError("kernel-not-found", `cannot read kernel ${path}: ${code === "ENOENT" ? "no such file" : (error as Error).message}`, EXIT.usage);
  }
}

/** A required argument, checked here (not by citty) so a missing one is exit 2 with --json's error document. */
function need(value: string | undefined, what: string): string {
  if (typeof value !== "string" || value === "") throw usageError(`missing ${what} (see --help)`);
  return value;
}

const mib = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(1)} MiB`;

/** Store entries as JSON: the stored facts, without the internal schema number. */
function storedJson(kernel: StoredKernel): Record<string, unknown> {
  const { schema: _schema, ...rest } = kernel;
  return rest;
}

function pvhText(facts: Pick<KernelFacts, "pvh" | "pvhEntry">): string {
  if (facts.pvh === null) return "unknown (payload not decompressed)";
  return facts.pvh ? `yes, entry ${facts.pvhEntry}` : "no (boots through the 64-bit entry)";
}

function factsText(facts: Omit<KernelFacts, "path"> & { path: string }, header: string): string {
  const lines = [header];
  const payload = facts.payload;
  let format = formatLabel(facts);
  if (payload?.uncompressedBytes != null) format += `, ${mib(payload.uncompressedBytes)} uncompressed`;
  lines.push(`  format       ${format}`);
  if (payload?.error) lines.push(`  payload      ${payload.error}`);
  lines.push(`  version      ${facts.versionString ?? "unknown"}`);
  lines.push(`  boot         ${facts.bootProtocol ? `protocol ${facts.bootProtocol}, ` : ""}64-bit entry ${facts.entry64}`);
  lines.push(`  PVH          ${pvhText(facts)}`);
  lines.push(`  ACPI         ${facts.acpi ? "yes" : "no"}`);
  lines.push(`  size         ${facts.sizeBytes} bytes (${mib(facts.sizeBytes)}), sha256 ${facts.sha256}`);
  const root = facts.rootWithoutInitramfs;
  lines.push(`  root without initramfs: ${root.answer}: ${root.reason}${root.source ? ` (${root.source})` : ""}`);
  return lines.join("\n");
}

// ---------------------------------------------------------------- list
const listArgs = { json: jsonArg } as const;
const listCommand = defineCommand({
  meta: {
    name: "list",
    description: "List the kernels in the store (the default one is marked *).\n\nExamples:\n  volt kernel list\n  volt kernel list --json",
  },
  args: listArgs,
  run({ args: parsed, rawArgs }) {
    const json = parsed.json;
    try {
      rejectUnknownFlags(rawArgs, listArgs);
      const store = new KernelStore();
      const kernels = store.list();
      if (json) {
        printJson({ ok: true, dir: store.dir, default: store.defaultName() ?? null, kernels: kernels.map(storedJson) });
        return;
      }
      if (kernels.length === 0) {
        process.stdout.write(`no kernels in ${store.dir} (add one: volt kernel add PATH, or volt kernel fetch)\n`);
        return;
      }
      const rows = kernels.map((k) => [
        `${k.isDefault ? "*" : " "} ${k.name}`,
        formatLabel(k),
        k.version ?? "?",
        k.pvh === null ? "?" : k.pvh ? "yes" : "no",
        mib(k.sizeBytes),
        String(k.modules.length),
      ]);
      const table = [["  NAME", "FORMAT", "VERSION", "PVH", "SIZE", "MODULES"], ...rows];
      const widths = table[0]!.map((_, i) => Math.max(...table.map((r) => r[i]!.length)));
      process.stdout.write(`${table.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd()).join("\n")}\n`);
    } catch (error) {
      process.exitCode = reportError(error, json);
    }
  },
});

// ---------------------------------------------------------------- add
const addArgs = {
  path: { type: "positional", description: "Kernel file: ELF vmlinux or bzImage (required)", required: false },
  name: { type: "string", description: "Name in the store (default: the kernel release, e.g. 6.1.0-56-amd64)", valueHint: "name" },
  default: { type: "boolean", description: "Make it the default kernel (the first kernel added becomes the default anyway)", default: false },
  json: jsonArg,
} as const;
const addCommand = defineCommand({
  meta: {
    name: "add",
    description:
      "Copy a kernel into the store, after checking it is one (a bzImage's payload is decompressed to check it).\n" +
      "A config file beside it (config-<release> or config) is kept with it.\n\n" +
      "Examples:\n  volt kernel add /boot/vmlinuz-6.1.0-56-amd64\n  volt kernel add ./vmlinux --name micro --default\n\n" +
      "Exit status: 0 added, 2 not a kernel, a corrupt payload, a missing file or a name already in the store (nothing is added).",
  },
  args: addArgs,
  run({ args: parsed, rawArgs }) {
    const json = parsed.json;
    try {
      rejectUnknownFlags(rawArgs, addArgs);
      const store = new KernelStore();
      let kernel: StoredKernel;
      try {
        kernel = store.add(need(parsed.path, "the kernel file to add"), { ...(parsed.name !== undefined ? { name: parsed.name } : {}), makeDefault: parsed.default });
      } catch (error) {
        explain(error);
      }
      if (json) printJson({ ok: true, kernel: storedJson(kernel) });
      else process.stdout.write(`added ${kernel.name}: ${formatLabel(kernel)}, ${kernel.version ?? "unknown version"}${kernel.isDefault ? " (default)" : ""}\n`);
    } catch (error) {
      process.exitCode = reportError(error, json);
    }
  },
});

// ---------------------------------------------------------------- rm
const rmArgs = { name: { type: "positional", description: "Kernel name (required)", required: false }, json: jsonArg } as const;
const rmCommand = defineCommand({
  meta: { name: "rm", description: "Remove a kernel (and its modules and config) from the store.\n\nExample:\n  volt kernel rm 6.1.0-56-amd64" },
  args: rmArgs,
  run({ args: parsed, rawArgs }) {
    const json = parsed.json;
    try {
      rejectUnknownFlags(rawArgs, rmArgs);
      let result: { removed: string; defaultCleared: boolean };
      try {
        result = new KernelStore().remove(need(parsed.name, "the name of the kernel to remove"));
      } catch (error) {
        explain(error);
      }
      if (json) printJson({ ok: true, ...result });
      else process.stdout.write(`removed ${result.removed}${result.defaultCleared ? " (it was the default; no default kernel now)" : ""}\n`);
    } catch (error) {
      process.exitCode = reportError(error, json);
    }
  },
});

// ---------------------------------------------------------------- default
const defaultArgs = { name: { type: "positional", description: "Kernel name (omit to show the current default)", required: false }, json: jsonArg } as const;
const defaultCommand = defineCommand({
  meta: {
    name: "default",
    description: "Set or show the default kernel (what volt uses when given no kernel).\n\nExamples:\n  volt kernel default micro\n  volt kernel default --json",
  },
  args: defaultArgs,
  run({ args: parsed, rawArgs }) {
    const json = parsed.json;
    try {
      rejectUnknownFlags(rawArgs, defaultArgs);
      const store = new KernelStore();
      if (typeof parsed.name === "string") {
        try {
          store.setDefault(parsed.name);
        } catch (error) {
          explain(error);
        }
      }
      const current = store.defaultName() ?? null;
      if (json) printJson({ ok: true, default: current });
      else process.stdout.write(current === null ? "no default kernel\n" : `${current}\n`);
    } catch (error) {
      process.exitCode = reportError(error, json);
    }
  },
});

// ---------------------------------------------------------------- inspect
const inspectArgs = {
  kernel: { type: "positional", description: "Kernel file, or a name in the store (required)", required: false },
  decompress: { type: "boolean", description: "Decompress a bzImage's payload to find the PVH note and an embedded config (--no-decompress: faster)", default: true },
  json: jsonArg,
} as const;
const inspectCommand = defineCommand({
  meta: {
    name: "inspect",
    description:
      "Report a kernel's format (ELF vmlinux, or bzImage and its compression), Linux version, PVH entry note, boot\n" +
      "protocol, ACPI, size, and whether it can mount a virtio-blk ext4 root without an initramfs (from its embedded\n" +
      "config, or a config-* / config file beside it).\n\n" +
      "Examples:\n  volt kernel inspect /boot/vmlinuz-6.1.0-56-amd64\n  volt kernel inspect micro --json\n" +
      "  volt kernel inspect bzImage --no-decompress\n\n" +
      "Exit status: 0 reported, 2 not a kernel or no such file or name.",
  },
  args: inspectArgs,
  run({ args: parsed, rawArgs }) {
    const json = parsed.json;
    try {
      rejectUnknownFlags(rawArgs, inspectArgs);
      const store = new KernelStore();
      let target;
      try {
        target = store.resolve(need(parsed.kernel, "the kernel file or name to inspect"));
      } catch (error) {
        explain(error);
      }
      if (target.kind === "stored") {
        const kernel = target.kernel;
        if (json) printJson({ ok: true, kernel: { stored: true, ...storedJson(kernel) } });
        else {
          const extra = [
            `  stored       ${kernel.path}${kernel.isDefault ? " (default)" : ""}, added ${kernel.addedAt} from ${kernel.addedFrom}`,
            `  modules      ${kernel.modules.length ? kernel.modules.join(" ") : "none"}`,
          ];
          process.stdout.write(`${factsText(kernel, `kernel ${kernel.name}`)}\n${extra.join("\n")}\n`);
        }
        return;
      }
      readKernelFile(target.path); // a clear error for a missing file before inspecting
      let facts: KernelFacts;
      try {
        facts = inspectKernelFile(target.path, { decompress: parsed.decompress });
      } catch (error) {
        explain(error);
      }
      if (json) printJson({ ok: true, kernel: { stored: false, ...facts } });
      else process.stdout.write(`${factsText(facts, `kernel ${facts.path}`)}\n`);
    } catch (error) {
      process.exitCode = reportError(error, json);
    }
  },
});

// ---------------------------------------------------------------- extract
const extractArgs = {
  bzimage: { type: "positional", description: "bzImage file, or a name in the store (required)", required: false },
  out: { type: "string", description: "Where to write the ELF vmlinux (required)", valueHint: "path" },
  force: { type: "boolean", description: "Replace an existing output file", default: false },
  json: jsonArg,
} as const;
const extractCommand = defineCommand({
  meta: {
    name: "extract",
    description:
      "Write the uncompressed ELF vmlinux inside a bzImage (gzip, xz, lzma, lz4, zstd or bzip2 payload), so the kernel\n" +
      "can boot through Volt's ELF path (PVH entry, nothing to decompress in the guest). The output is exactly the\n" +
      "decompressed payload, as the kernel's scripts/extract-vmlinux gives it.\n\n" +
      "Examples:\n  volt kernel extract /boot/vmlinuz-6.1.0-56-amd64 --out vmlinux\n  volt kernel extract debian-6.1.0-56-amd64 --out vmlinux --json\n\n" +
      "Exit status: 0 written, 2 not a bzImage, an unsupported (lzo) or corrupt payload, or the output exists\n" +
      "(nothing is written unless the whole kernel decompressed and checked out).",
  },
  args: extractArgs,
  run({ args: parsed, rawArgs }) {
    const json = parsed.json;
    try {
      rejectUnknownFlags(rawArgs, extractArgs);
      const bzImageArg = need(parsed.bzimage, "the bzImage to extract from");
      const outArg = need(parsed.out, "--out FILE");
      let source: string;
      try {
        const target = new KernelStore().resolve(bzImageArg);
        source = target.kind === "stored" ? target.kernel.path : target.path;
      } catch (error) {
        explain(error);
      }
      const out = resolve(outArg);
      if (existsSync(out) && !parsed.force) throw new CliError("output-exists", `${outArg} exists; give --force to replace it`, EXIT.usage);
      const bytes = readKernelFile(source);
      let extracted;
      try {
        extracted = extractVmlinux(bytes);
      } catch (error) {
        explain(error);
      }
      try {
        writeFileAtomic(out, extracted.vmlinux);
      } catch (error) {
        throw new CliError("output", `cannot write ${outArg}: ${(error as Error).message}`, EXIT.usage, { cause: error });
      }
      const result = {
        source,
        out,
        compression: extracted.compression,
        sizeBytes: extracted.vmlinux.length,
        sha256: createHash("sha256").update(extracted.vmlinux).digest("hex"),
        entry64: hex(extracted.elf.entry64),
        pvhEntry: extracted.elf.pvhEntry === undefined ? null : hex(extracted.elf.pvhEntry),
      };
      if (json) printJson({ ok: true, extract: result });
      else {
        process.stdout.write(
          `${outArg}: ELF vmlinux, ${mib(result.sizeBytes)} from a ${result.compression} payload; ` +
            `${result.pvhEntry ? `PVH entry ${result.pvhEntry}` : "no PVH note (boots through the 64-bit entry)"}\n`,
        );
      }
    } catch (error) {
      process.exitCode = reportError(error, json);
    }
  },
});

// ---------------------------------------------------------------- fetch
const fetchArgs = {
  deb: { type: "string", description: "Use this linux-image .deb instead of downloading one with apt", valueHint: "file" },
  name: { type: "string", description: "Name in the store (default: debian-<release>)", valueHint: "name" },
  vmlinux: { type: "boolean", description: "Also store the extracted ELF vmlinux, as <name>-vmlinux", default: false },
  default: { type: "boolean", description: "Make it the default kernel", default: false },
  json: jsonArg,
} as const;
const fetchCommand = defineCommand({
  meta: {
    name: "fetch",
    description:
      "Get Debian's generic kernel (linux-image-amd64 through apt, or a given .deb) into the store, with the modules a\n" +
      "guest needs for Volt's devices (virtio_mmio, virtio_blk, virtio_net, virtio_rng, vsock, ext4 and what they\n" +
      "depend on), so `volt image initramfs --kernel NAME` can load them. The unpacked package is cached under\n" +
      "${XDG_CACHE_HOME:-~/.cache}/volt.\n\n" +
      "Examples:\n  volt kernel fetch\n  volt kernel fetch --deb linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb --vmlinux\n\n" +
      "Exit status: 0 added, 2 the package cannot be had or unpacked, or the name is taken (nothing is added).",
  },
  args: fetchArgs,
  async run({ args: parsed, rawArgs }) {
    const json = parsed.json;
    try {
      rejectUnknownFlags(rawArgs, fetchArgs);
      if (parsed.deb !== undefined && !existsSync(parsed.deb)) throw new CliError("kernel-fetch", `kernel package file ${parsed.deb} does not exist`, EXIT.usage);
      let result;
      try {
        result = await fetchKernelIntoStore({
          store: new KernelStore(),
          ...(parsed.deb !== undefined ? { debPath: parsed.deb } : {}),
          ...(parsed.name !== undefined ? { name: parsed.name } : {}),
          vmlinux: parsed.vmlinux,
          makeDefault: parsed.default,
          log: (line) => process.stderr.write(`volt: ${line}\n`),
        });
      } catch (error) {
        explain(error);
      }
      if (json) printJson({ ok: true, release: result.release, modules: result.modules, kernels: result.kernels.map(storedJson) });
      else {
        for (const k of result.kernels) {
          process.stdout.write(`added ${k.name}: ${formatLabel(k)}, ${k.version ?? "?"}, ${k.modules.length} module(s)${k.isDefault ? " (default)" : ""}\n`);
        }
      }
    } catch (error) {
      process.exitCode = reportError(error, json);
    }
  },
});

// ---------------------------------------------------------------- build
const buildArgs = {
  path: { type: "positional", description: "Linux source directory or tarball (default: Debian's /usr/src/linux-source-X.Y.tar.xz)", required: false },
  source: { type: "string", description: "The same as the positional SOURCE: a Linux source directory or tarball", valueHint: "dir-or-tarball" },
  name: { type: "string", description: "Name in the store (default: microvm-<release>, e.g. microvm-6.1.192)", valueHint: "name" },
  jobs: { type: "string", alias: "j", description: "Parallel make jobs (default: the number of CPUs)", valueHint: "n" },
  default: { type: "boolean", description: "Make it the default kernel (the first kernel in the store becomes the default anyway)", default: false },
  json: jsonArg,
} as const;

/**
 * Live progress on stderr: one line rewritten every second on a terminal; a line per phase and every 15 s
 * otherwise. The clock keeps ticking between make's lines (unpacking, a long link).
 */
function progressReporter(): { update: (p: BuildProgress) => void; done: () => void; stop: () => void } {
  const tty = process.stderr.isTTY === true;
  const every = tty ? 1000 : 15_000;
  let lastPhase = "";
  let lastWrite = 0;
  let drawn = false;
  let latest: { progress: BuildProgress; at: number } | undefined;
  let ticker: ReturnType<typeof setInterval> | undefined;
  const text = (p: BuildProgress) => {
    const elapsed = formatDuration(p.elapsedMs);
    switch (p.phase) {
      case "unpack":
        return `unpacking the source (${elapsed})`;
      case "configure":
        return `configuring (${elapsed})`;
      case "compile":
        return `compiling: ${p.compiled} files, ${elapsed}${p.last ? ` (${p.last})` : ""}`;
      case "link":
        return `linking vmlinux: ${p.compiled} files compiled, ${elapsed}${p.last ? ` (${p.last})` : ""}`;
      case "store":
        return `adding to the store (${p.compiled} files compiled in ${elapsed})`;
    }
  };
  const draw = (p: BuildProgress, now: number) => {
    if (tty) {
      const line = `volt: ${text(p)}`.slice(0, Math.max(40, (process.stderr.columns || 100) - 1));
      process.stderr.write(`\r\x1b[K${line}`);
      drawn = true;
    } else {
      process.stderr.write(`volt: ${text(p)}\n`);
    }
    lastPhase = p.phase;
    lastWrite = now;
  };
  const tick = () => {
    const now = performance.now();
    if (latest && now - lastWrite >= every - 50) draw({ ...latest.progress, elapsedMs: latest.progress.elapsedMs + (now - latest.at) }, now);
  };
  return {
    update(p) {
      const now = performance.now();
      latest = { progress: p, at: now };
      ticker ??= setInterval(tick, Math.min(every, 1000));
      ticker.unref?.();
      if (p.phase !== lastPhase || now - lastWrite >= (tty ? 100 : every)) draw(p, now);
    },
    done() {
      if (drawn) process.stderr.write("\n");
      drawn = false;
    },
    stop() {
      if (ticker !== undefined) clearInterval(ticker);
      ticker = undefined;
      latest = undefined;
    },
  };
}

const buildCommand = defineCommand({
  meta: {
    name: "build",
    description:
      "Build a minimal microVM kernel from a Linux source tree or tarball, with the configuration Volt ships, and add\n" +
      "its ELF vmlinux (booted through PVH) and .config to the store. Built in: everything a Volt guest needs (64-bit\n" +
      "SMP with MP tables, PVH, KVM guest and paravirt clock, 8250 console, i8042, virtio-mmio with devices from the\n" +
      "command line, virtio blk, net, vsock, rng and balloon, ext4, devtmpfs); no modules, no PCI, no ACPI (Linux 6.1\n" +
      "cannot load ACPI tables without PCI), no debug info. The kernel mounts a virtio-blk ext4 root without an\n" +
      "initramfs. Configured with `make allnoconfig` plus Volt's fragment, then checked: a symbol the fragment asks\n" +
      "for that did not make it into .config is an error naming it. Built out of tree in a temporary directory (a\n" +
      "tarball is unpacked there), removed afterwards. Progress goes to stderr; building takes minutes. Needs make,\n" +
      "gcc, binutils, flex, bison, bc and libelf-dev (and xz-utils for .tar.xz).\n\n" +
      "Examples:\n" +
      "  apt-get install linux-source-6.1 && volt kernel build          # Debian's /usr/src/linux-source-6.1.tar.xz\n" +
      "  volt kernel build --source ~/src/linux-6.6 --name micro-6.6 --default --jobs 8\n" +
      "  volt kernel build /usr/src/linux-source-6.1.tar.xz --json\n" +
      "  volt run --kernel micro-6.6 --drive path=rootfs.ext4,root\n\n" +
      "Exit status: 0 added; 2 a missing or unusable source, missing build tools, a name already in the store, a\n" +
      "configuration symbol that did not take, or a failed make (with the end of its log); 130 interrupted. Nothing is\n" +
      "added to the store unless the whole build succeeded.",
  },
  args: buildArgs,
  async run({ args: parsed, rawArgs }) {
    const json = parsed.json;
    const reporter = progressReporter();
    const abort = new AbortController();
    const onSignal = () => abort.abort();
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
    try {
      rejectUnknownFlags(rawArgs, buildArgs);
      const positional = typeof parsed.path === "string" && parsed.path !== "" ? parsed.path : undefined;
      if (positional !== undefined && parsed.source !== undefined && parsed.source !== positional) {
        throw usageError("give the source once: either as SOURCE or as --source");
      }
      const source = positional ?? parsed.source;
      let result;
      try {
        result = await buildKernel({
          store: new KernelStore(),
          ...(source !== undefined && source !== "" ? { source } : {}),
          ...(parsed.name !== undefined ? { name: parsed.name } : {}),
          ...(parsed.jobs !== undefined ? { jobs: parseJobsArg(parsed.jobs) } : {}),
          makeDefault: parsed.default,
          onProgress: (p) => reporter.update(p),
          log: (line) => {
            reporter.done();
            process.stderr.write(`volt: ${line}\n`);
          },
          signal: abort.signal,
        });
      } catch (error) {
        reporter.stop();
        reporter.done();
        explain(error);
      }
      reporter.stop();
      reporter.done();
      const build = {
        source: result.source,
        sourceKind: result.sourceKind,
        release: result.release,
        jobs: result.jobs,
        compiledFiles: result.compiled,
        seconds: Number(result.seconds.toFixed(1)),
        configSha256: result.configSha256,
      };
      if (json) printJson({ ok: true, kernel: storedJson(result.kernel), build });
      else {
        const k = result.kernel;
        process.stdout.write(
          `added ${k.name}: ${formatLabel(k)}, ${k.version ?? "?"}, ${mib(k.sizeBytes)}, PVH ${k.pvh ? "yes" : "no"}, ` +
            `root without initramfs ${k.rootWithoutInitramfs.answer}; built in ${formatDuration(result.seconds * 1000)}${k.isDefault ? " (default)" : ""}\n`,
        );
      }
    } catch (error) {
      process.exitCode = reportError(error, json);
    } finally {
      reporter.stop();
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
    }
  },
});

/** --jobs as given: a whole number; buildKernel checks the range. */
function parseJobsArg(value: string | boolean): number {
  const n = typeof value === "string" && /^\d+$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isInteger(n)) throw usageError(`--jobs ${String(value)} is not a whole number of parallel jobs`);
  return n;
}

export const kernelCommand = defineCommand({
  meta: { name: "kernel", description: "Manage guest kernels: a store of named kernels, inspect, extract a vmlinux, fetch Debian's, build a microVM kernel" },
  subCommands: {
    list: listCommand,
    add: addCommand,
    rm: rmCommand,
    inspect: inspectCommand,
    default: defaultCommand,
    extract: extractCommand,
    fetch: fetchCommand,
    build: buildCommand,
  },
  run({ rawArgs }) {
    if (rawArgs.length === 0) {
      process.exitCode = reportError(usageError("volt kernel needs a subcommand: list, add, rm, inspect, default, extract, fetch or build (see --help)"), false);
    }
  },
});
