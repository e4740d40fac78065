/**
 * Builds Volt:
 *   1. c-shims/*.c -> build/<name>.so with gcc (the shims are imported as
 *      files, so step 2 embeds them in the binary); the programs in
 *      EXECUTABLES instead become static executables, build/<name>, embedded
 *      the same way (volt_jailer: the jail's namespaces must exist before Bun starts);
 *   2. `bun build --compile` -> dist/volt, one self-contained executable.
 *      Worker entry points must be listed here as well, or the binary fails
 *      at run time when it starts a worker.
 *
 *   bun build.ts               # everything
 *   bun build.ts --shims-only  # just the C shims (enough for `bun test` and `bun src/...`)
 */
import { mkdirSync, readdirSync, statSync } from "node:fs";
import { basename, join } from "node:path";

const root = import.meta.dir;
const shimDir = join(root, "c-shims");
const buildDir = join(root, "build");
const outfile = join(root, "dist", "volt");

const ENTRY_POINTS = ["src/cli/main.ts"];
/** Modules started with `new Worker(...)` (src/workers.ts); each is its own entry point in the binary. */
const WORKER_ENTRY_POINTS = ["src/vcpu/worker.ts", "src/devices/virtio/io-worker.ts"];
/** C programs (not libraries) in c-shims: built as static executables build/<name>. */
const EXECUTABLES = ["volt_jailer.c"];

function compileShims(): void {
  mkdirSync(buildDir, { recursive: true });
  for (const file of readdirSync(shimDir).filter((f) => f.endsWith(".c"))) {
    const source = join(shimDir, file);
    const executable = EXECUTABLES.includes(file);
    const output = join(buildDir, executable ? basename(file, ".c") : `${basename(file, ".c")}.so`);
    const upToDate = (() => {
      try {
        return statSync(output).mtimeMs >= statSync(source).mtimeMs;
      } catch {
        return false;
      }
    })();
    if (upToDate) continue;
    const kind = executable ? ["-static"] : ["-shared", "-fPIC"];
    const cc = Bun.spawnSync(["gcc", ...kind, "-O2", "-Wall", "-Wextra", "-Werror", "-o", output, source], {
      stdout: "inherit",
      stderr: "inherit",
    });
    if (cc.exitCode !== 0) {
      console.error(`build: compiling ${file} failed (needs gcc and libc6-dev)`);
      process.exit(1);
    }
    console.log(`build: ${file} -> ${output}`);
  }
}

async function compileBinary(): Promise<void> {
  const result = await Bun.build({
    entrypoints: [...ENTRY_POINTS, ...WORKER_ENTRY_POINTS].map((p) => join(root, p)),
    compile: { outfile },
    // Not bytecode (`bytecode: true, format: "cjs"`), though it starts ~2x faster: with it, e2e guests' consoles
    // stalled mid-boot in 3 of 4 tries (docs/notes.md), which ESM builds never did. Revisit with a newer Bun.
    minify: false,
    sourcemap: "inline",
  });
  if (!result.success) {
    for (const log of result.logs) console.error(log);
    console.error("build: bun build --compile failed");
    process.exit(1);
  }
  console.log(`build: ${outfile} (${(statSync(outfile).size / 1e6).toFixed(1)} MB)`);
}

compileShims();
if (!process.argv.includes("--shims-only")) await compileBinary();
