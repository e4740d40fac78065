/**
 * `volt kernel build`: a minimal microVM kernel from a Linux source tree or
 * tarball, configured with Volt's own fragment (src/kernel/microvm-config.ts),
 * into the kernel store.
 *
 *   1. check the inputs before anything long starts: the source exists and
 *      is a Linux tree (or a tarball), the name is free, the build tools are
 *      there (all missing ones named at once, with their Debian packages);
 *   2. unpack a tarball into a temporary directory;
 *   3. `make allnoconfig KCONFIG_ALLCONFIG=<fragment>` out of tree (O=), then
 *      check every symbol the fragment sets is in .config with that value
 *      (Kconfig silently drops a symbol whose dependencies are not met);
 *   4. `make -jN vmlinux`, reporting progress from kbuild's "  CC  file" lines;
 *   5. add the ELF vmlinux (the PVH path) and its .config to the store through
 *      KernelStore.add, which writes a temporary entry and renames it into
 *      place, so a failure anywhere leaves nothing in the store.
 *
 * The temporary directory goes whatever happens.
 */
import { createHash } from "node:crypto";
import { accessSync, constants, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { delimiter, join, resolve } from "node:path";
import { parseKernelConfig } from "./inspect.ts";
import { MICROVM_CONFIG } from "./microvm-config.ts";
import { checkKernelName, KernelStore, KernelStoreError, type StoredKernel } from "./store.ts";

export type KernelBuildErrorKind =
  | "source-missing" // no such file or directory (or nothing given and no /usr/src/linux-source-*)
  | "not-a-linux-tree" // a directory or archive that does not hold a Linux source tree
  | "tree-not-clean" // configured or built in place: an out-of-tree build refuses it
  | "tools-missing" // make, gcc, flex, bison, bc, libelf headers, …
  | "bad-option" // --jobs, --name
  | "exists" // the name is taken in the store
  | "unpack-failed"
  | "config-dropped" // a symbol of the fragment did not make it into .config
  | "make-failed"
  | "interrupted";

export class KernelBuildError extends Error {
  override name = "KernelBuildError";
  readonly kind: KernelBuildErrorKind;

  constructor(kind: KernelBuildErrorKind, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.kind = kind;
  }
}

export type BuildPhase = "unpack" | "configure" | "compile" | "link" | "store";

export interface BuildProgress {
  phase: BuildPhase;
  /** Files compiled or assembled so far (kbuild's CC and AS lines). */
  compiled: number;
  /** What make said last ("CC fs/ext4/inode.o"), if anything yet. */
  last: string | null;
  elapsedMs: number;
}

export interface BuildOptions {
  /** An unpacked Linux tree or a tarball of one; default: the single /usr/src/linux-source-*.tar.* (Debian's linux-source). */
  source?: string;
  store: KernelStore;
  /** Store name; default microvm-<kernel release>. */
  name?: string;
  /** make -j; default: the CPUs available. */
  jobs?: number;
  makeDefault?: boolean;
  /** Where the temporary build directory goes; default the system's temp directory. */
  workDir?: string;
  /** The config fragment; default Volt's (MICROVM_CONFIG). */
  config?: string;
  /** Environment for make and the tool checks (PATH); default process.env. */
  env?: NodeJS.ProcessEnv;
  /** Where Debian's linux-source tarballs are looked for when no source is given. */
  usrSrc?: string;
  onProgress?: (progress: BuildProgress) => void;
  log?: (line: string) => void;
  /** Aborting kills make and fails the build with "interrupted" (nothing is added). */
  signal?: AbortSignal;
}

export interface BuildResult {
  kernel: StoredKernel;
  /** The kernel release (make kernelrelease), e.g. "6.1.192". */
  release: string;
  source: string;
  sourceKind: "directory" | "tarball";
  jobs: number;
  /** Files compiled (CC/AS lines). */
  compiled: number;
  seconds: number;
  /** sha256 of the fragment applied, the part of a cache key that is Volt's. */
  configSha256: string;
}

const TARBALL = /\.(tar|tar\.xz|txz|tar\.gz|tgz|tar\.bz2|tbz2?|tar\.zst)$/;

/** What make needs, with the Debian package that provides it. */
export const BUILD_TOOLS: readonly { command: string; debianPackage: string; why: string }[] = [
  { command: "make", debianPackage: "make", why: "runs the build" },
  { command: "gcc", debianPackage: "gcc", why: "compiles the kernel" },
  { command: "ld", debianPackage: "binutils", why: "links it" },
  { command: "flex", debianPackage: "flex", why: "Kconfig's lexer" },
  { command: "bison", debianPackage: "bison", why: "Kconfig's parser" },
  { command: "bc", debianPackage: "bc", why: "kernel/time/timeconst.h" },
];

// ---------------------------------------------------------------- config fragment

export interface ConfigMismatch {
  symbol: string;
  wanted: string;
  /** What .config has: "n" when it is unset or absent. */
  got: string;
}

/** The fragment's assignments: CONFIG_X=value and "# CONFIG_X is not set" (as "n"). */
export function parseConfigFragment(text: string): Map<string, string> {
  return parseKernelConfig(text);
}

/** Symbols of the fragment whose value in .config differs (unset or absent counts as "n"). */
export function verifyConfig(fragment: string, dotConfig: string): ConfigMismatch[] {
  const wanted = parseConfigFragment(fragment);
  const got = parseKernelConfig(dotConfig);
  const mismatches: ConfigMismatch[] = [];
  for (const [symbol, value] of wanted) {
    const actual = got.get(symbol) ?? "n";
    if (actual !== value) mismatches.push({ symbol, wanted: value, got: actual });
  }
  return mismatches;
}

export function configMismatchMessage(mismatches: readonly ConfigMismatch[]): string {
  const lines = mismatches.map((m) => `  ${m.symbol}: wanted ${m.wanted}, .config has ${m.got === "n" ? "it unset" : m.got}`);
  return (
    `the kernel configuration did not take ${mismatches.length === 1 ? "a symbol" : `${mismatches.length} symbols`} of Volt's microVM fragment ` +
    `(a dependency is missing in this source tree, or the symbol does not exist in this kernel version):\n${lines.join("\n")}`
  );
}

export const configSha256 = (fragment: string = MICROVM_CONFIG): string => createHash("sha256").update(fragment).digest("hex");

// ---------------------------------------------------------------- progress

/** One kbuild quiet-mode line ("  CC      init/main.o"), or undefined for anything else. */
export function parseMakeLine(line: string): { action: string; target: string } | undefined {
  const match = /^ {2}([A-Z][A-Z0-9_-]*(?: \[[A-Z]\])?) +(\S.*)$/.exec(line.trimEnd());
  if (!match) return undefined;
  return { action: match[1]!, target: match[2]! };
}

const COMPILE_ACTIONS = new Set(["CC", "AS"]);
/** Steps that only happen once every object is built: vmlinux.o and the final link. */
const LINK_TARGET = /^(vmlinux|\.tmp_vmlinux|System\.map)/;

/** Follows make's output and says which phase the build is in and how many files it compiled. */
export class MakeProgress {
  phase: BuildPhase = "compile";
  compiled = 0;
  last: string | null = null;

  /** Returns true when the line changed the progress. */
  feed(line: string): boolean {
    const step = parseMakeLine(line);
    if (!step) return false;
    this.last = `${step.action} ${step.target}`;
    if (COMPILE_ACTIONS.has(step.action)) this.compiled++;
    if (this.phase === "compile" && LINK_TARGET.test(step.target) && step.action !== "CC" && step.action !== "AS") this.phase = "link";
    return true;
  }
}

// ---------------------------------------------------------------- inputs

/** Why `dir` is not a Linux source tree Volt can build for x86, or undefined when it is one. */
export function notALinuxTree(dir: string): string | undefined {
  const needed = ["Makefile", "Kconfig", "arch/x86/Kconfig", "scripts/kconfig"];
  const missing = needed.filter((p) => !existsSync(join(dir, p)));
  if (missing.length) return `${dir} is not a Linux source tree (no ${missing.join(", ")})`;
  const makefile = readFileSync(join(dir, "Makefile"), "utf8").slice(0, 4000);
  if (!/^VERSION = \d+/m.test(makefile) || !/^PATCHLEVEL = \d+/m.test(makefile)) return `${dir}/Makefile is not the top-level Makefile of a Linux tree (no VERSION/PATCHLEVEL)`;
  return undefined;
}

/** Debian's linux-source-X.Y tarball when exactly one newest is installed (/usr/src/linux-source-6.1.tar.xz). */
export function findDebianSourceTarball(usrSrc = "/usr/src"): string | undefined {
  if (!existsSync(usrSrc)) return undefined;
  const found = readdirSync(usrSrc)
    .filter((name) => /^linux-source-\d+\.\d+\.tar\.(xz|bz2|gz)$/.test(name))
    .sort((a, b) => versionOf(b) - versionOf(a));
  return found[0] === undefined ? undefined : join(usrSrc, found[0]);
}

const versionOf = (name: string): number => {
  const m = /(\d+)\.(\d+)/.exec(name);
  return m ? Number(m[1]) * 1000 + Number(m[2]) : 0;
};

function which(command: string, env: NodeJS.ProcessEnv): string | undefined {
  for (const dir of (env.PATH ?? "").split(delimiter)) {
    if (!dir) continue;
    const path = join(dir, command);
    try {
      accessSync(path, constants.X_OK);
      if (statSync(path).isFile()) return path;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** Build tools that are missing, as "flex (apt-get install flex: Kconfig's lexer)"; empty when all are there. */
export function missingBuildTools(env: NodeJS.ProcessEnv = process.env, options: { tarball?: string } = {}): { tool: string; debianPackage: string; why: string }[] {
  const missing = BUILD_TOOLS.filter((t) => which(t.command, env) === undefined).map((t) => ({ tool: t.command, debianPackage: t.debianPackage, why: t.why }));
  if (options.tarball !== undefined) {
    if (which("tar", env) === undefined) missing.push({ tool: "tar", debianPackage: "tar", why: "unpacks the source" });
    const compressor = /xz$/.test(options.tarball) ? ["xz", "xz-utils"] : /(bz2|tbz2?)$/.test(options.tarball) ? ["bzip2", "bzip2"] : /zst$/.test(options.tarball) ? ["zstd", "zstd"] : undefined;
    if (compressor && which(compressor[0]!, env) === undefined) missing.push({ tool: compressor[0]!, debianPackage: compressor[1]!, why: "unpacks the source" });
  }
  // objtool (built for every x86-64 kernel) needs libelf's headers.
  const gcc = which("gcc", env);
  if (gcc !== undefined) {
    const probe = Bun.spawnSync([gcc, "-E", "-x", "c", "-o", "/dev/null", "-"], { stdin: new TextEncoder().encode("#include <gelf.h>\n"), env, stdout: "ignore", stderr: "ignore" });
    if (probe.exitCode !== 0) missing.push({ tool: "libelf headers (gelf.h)", debianPackage: "libelf-dev", why: "objtool" });
  }
  return missing;
}

export function missingToolsMessage(missing: readonly { tool: string; debianPackage: string; why: string }[]): string {
  const packages = [...new Set(missing.map((m) => m.debianPackage))].join(" ");
  return `building a kernel needs tools that are missing: ${missing.map((m) => `${m.tool} (${m.why})`).join(", ")}; on Debian: apt-get install ${packages}`;
}

export function parseJobs(value: string | number | undefined): number {
  if (value === undefined || value === "") return Math.max(1, availableParallelism());
  const n = typeof value === "number" ? value : Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 1024) throw new KernelBuildError("bad-option", `--jobs ${value} is not a whole number of parallel jobs from 1 to 1024`);
  return n;
}

interface ResolvedSource {
  path: string;
  kind: "directory" | "tarball";
}

/** Checks the source argument (or finds Debian's tarball) without touching anything. */
export function resolveSource(source: string | undefined, usrSrc = "/usr/src"): ResolvedSource {
  if (source === undefined || source === "") {
    const found = findDebianSourceTarball(usrSrc);
    if (found === undefined) {
      throw new KernelBuildError(
        "source-missing",
        `no source given and no Debian kernel source in ${usrSrc} (linux-source-X.Y.tar.xz); give a Linux tree or tarball, or on Debian: apt-get install linux-source-6.1`,
      );
    }
    return { path: found, kind: "tarball" };
  }
  const path = resolve(source);
  if (!existsSync(path)) throw new KernelBuildError("source-missing", `kernel source ${source} does not exist`);
  const stat = statSync(path);
  if (stat.isDirectory()) {
    const why = notALinuxTree(path);
    if (why) throw new KernelBuildError("not-a-linux-tree", why);
    return { path, kind: "directory" };
  }
  if (stat.isFile() && TARBALL.test(path)) return { path, kind: "tarball" };
  throw new KernelBuildError("not-a-linux-tree", `${source} is neither a Linux source directory nor a tarball (.tar, .tar.xz, .tar.gz, .tar.bz2, .tar.zst)`);
}

// ---------------------------------------------------------------- the build

/** Last lines of a build log, for an error message. */
class Tail {
  private readonly lines: string[] = [];
  constructor(private readonly size: number) {}
  push(line: string): void {
    this.lines.push(line);
    if (this.lines.length > this.size) this.lines.shift();
  }
  text(): string {
    return this.lines.join("\n");
  }
}

async function runLogged(
  argv: string[],
  options: { cwd?: string; env: NodeJS.ProcessEnv; logFile: string; signal?: AbortSignal; onLine?: (line: string) => void },
): Promise<{ exitCode: number; tail: string }> {
  const tail = new Tail(40);
  // Its own process group, so an abort reaches make's compilers too (and make alone is not what holds the pipes).
  const child = Bun.spawn(argv, { ...(options.cwd ? { cwd: options.cwd } : {}), env: options.env, stdin: "ignore", stdout: "pipe", stderr: "pipe", detached: true });
  const signalGroup = (signal: NodeJS.Signals) => {
    try {
      process.kill(-child.pid, signal);
    } catch {
      // already gone
    }
  };
  const kill = () => {
    signalGroup("SIGTERM");
    setTimeout(() => signalGroup("SIGKILL"), 5000).unref();
  };
  options.signal?.addEventListener("abort", kill, { once: true });
  const logParts: string[] = [];
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    const decoder = new TextDecoder();
    let pending = "";
    for await (const chunk of stream) {
      pending += decoder.decode(chunk, { stream: true });
      let newline = pending.indexOf("\n");
      while (newline >= 0) {
        const line = pending.slice(0, newline);
        pending = pending.slice(newline + 1);
        logParts.push(line);
        tail.push(line);
        options.onLine?.(line);
        newline = pending.indexOf("\n");
      }
    }
    if (pending) {
      logParts.push(pending);
      tail.push(pending);
      options.onLine?.(pending);
    }
  };
  try {
    await Promise.all([pump(child.stdout), pump(child.stderr)]);
    const exitCode = await child.exited;
    writeFileSync(options.logFile, `${logParts.join("\n")}\n`, { flag: "a" });
    if (options.signal?.aborted) throw new KernelBuildError("interrupted", "the kernel build was interrupted; nothing was added to the store");
    return { exitCode, tail: tail.text() };
  } finally {
    options.signal?.removeEventListener("abort", kill);
  }
}

export async function buildKernel(options: BuildOptions): Promise<BuildResult> {
  const started = performance.now();
  const env = { ...(options.env ?? process.env), LC_ALL: "C", KBUILD_BUILD_USER: "volt", KBUILD_BUILD_HOST: "volt" };
  const log = options.log ?? (() => {});
  const fragment = options.config ?? MICROVM_CONFIG;
  const { store } = options;
  const jobs = parseJobs(options.jobs);
  const progress = (phase: BuildPhase, make?: MakeProgress) =>
    options.onProgress?.({ phase, compiled: make?.compiled ?? 0, last: make?.last ?? null, elapsedMs: performance.now() - started });

  // 1. Everything that can be checked in a second, before minutes of building.
  if (options.name !== undefined) checkName(store, options.name);
  const source = resolveSource(options.source, options.usrSrc);
  if (source.kind === "directory" && (existsSync(join(source.path, ".config")) || existsSync(join(source.path, "include/config/auto.conf")))) {
    throw new KernelBuildError(
      "tree-not-clean",
      `${source.path} has been configured or built in place (it has a .config); Volt builds out of tree, which needs a clean tree: run 'make mrproper' there, or give a fresh tree or a tarball`,
    );
  }
  const missing = missingBuildTools(env, source.kind === "tarball" ? { tarball: source.path } : {});
  if (missing.length) throw new KernelBuildError("tools-missing", missingToolsMessage(missing));

  const workRoot = options.workDir ?? tmpdir();
  mkdirSync(workRoot, { recursive: true });
  const work = mkdtempSync(join(workRoot, "volt-kernel-build-"));
  const logFile = join(work, "build.log");
  try {
    // 2. The tree.
    let tree = source.path;
    if (source.kind === "tarball") {
      log(`unpacking ${source.path}`);
      progress("unpack");
      const unpacked = join(work, "src");
      mkdirSync(unpacked);
      const tar = await runLogged(["tar", "-xf", source.path, "-C", unpacked], { env, logFile, ...(options.signal ? { signal: options.signal } : {}) });
      if (tar.exitCode !== 0) throw new KernelBuildError("unpack-failed", `cannot unpack ${source.path} (tar exit ${tar.exitCode}):\n${tar.tail}`);
      const top = readdirSync(unpacked);
      tree = top.length === 1 && statSync(join(unpacked, top[0]!)).isDirectory() ? join(unpacked, top[0]!) : unpacked;
      const why = notALinuxTree(tree);
      if (why) throw new KernelBuildError("not-a-linux-tree", `${source.path} does not hold a Linux source tree: ${why}`);
    }

    // 3. Configure, then check the fragment took.
    const out = join(work, "build");
    mkdirSync(out);
    const fragmentFile = join(work, "volt-microvm.config");
    writeFileSync(fragmentFile, fragment);
    const make = (targets: string[], extra: string[] = []) => ["make", "-C", tree, `O=${out}`, "ARCH=x86_64", ...extra, ...targets];
    log(`configuring: make allnoconfig with Volt's microVM fragment (${parseConfigFragment(fragment).size} symbols)`);
    progress("configure");
    const configure = await runLogged(make(["allnoconfig"], [`KCONFIG_ALLCONFIG=${fragmentFile}`]), { env, logFile, ...(options.signal ? { signal: options.signal } : {}) });
    if (configure.exitCode !== 0) throw new KernelBuildError("make-failed", `make allnoconfig failed (exit ${configure.exitCode}); the last lines:\n${configure.tail}`);
    const dotConfigPath = join(out, ".config");
    if (!existsSync(dotConfigPath)) throw new KernelBuildError("make-failed", `make allnoconfig wrote no .config; the last lines:\n${configure.tail}`);
    const mismatches = verifyConfig(fragment, readFileSync(dotConfigPath, "utf8"));
    if (mismatches.length) throw new KernelBuildError("config-dropped", configMismatchMessage(mismatches));

    // The release (and so the default name) is known once configured: check the name before the long part.
    const releaseRun = Bun.spawnSync(make(["-s", "kernelrelease"]), { env, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
    const release = releaseRun.exitCode === 0 ? (releaseRun.stdout.toString().split("\n").find((l) => /^\d+\.\d+\S*$/.test(l.trim())) ?? "").trim() : "";
    if (!release) throw new KernelBuildError("make-failed", `make kernelrelease failed: ${releaseRun.stderr.toString().trim()}`);
    const name = options.name ?? `microvm-${release}`;
    if (options.name === undefined) checkName(store, name);

    // 4. Compile.
    const tracker = new MakeProgress();
    log(`compiling with make -j${jobs} vmlinux`);
    progress("compile", tracker);
    const compile = await runLogged(make(["vmlinux"], [`-j${jobs}`]), {
      env,
      logFile,
      ...(options.signal ? { signal: options.signal } : {}),
      onLine: (line) => {
        if (tracker.feed(line)) progress(tracker.phase, tracker);
      },
    });
    const vmlinux = join(out, "vmlinux");
    if (compile.exitCode !== 0 || !existsSync(vmlinux)) {
      throw new KernelBuildError(
        "make-failed",
        `make vmlinux failed (exit ${compile.exitCode}) after ${tracker.compiled} files; the last lines of the build log:\n${compile.tail}`,
      );
    }
    // 5. Into the store, atomically (KernelStore.add writes a temporary entry and renames it).
    progress("store", tracker);
    const kernel = store.add(vmlinux, {
      name,
      configPath: dotConfigPath,
      addedFrom: `volt kernel build ${source.path}`,
      ...(options.makeDefault ? { makeDefault: true } : {}),
    });
    return {
      kernel,
      release,
      source: source.path,
      sourceKind: source.kind,
      jobs,
      compiled: tracker.compiled,
      seconds: (performance.now() - started) / 1000,
      configSha256: configSha256(fragment),
    };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

function checkName(store: KernelStore, name: string): void {
  try {
    checkKernelName(name);
  } catch (error) {
    if (error instanceof KernelStoreError) throw new KernelBuildError("bad-option", error.message, { cause: error });
    throw error;
  }
  if (store.get(name)) {
    throw new KernelBuildError("exists", `a kernel named "${name}" is already in the store; remove it first (volt kernel rm ${name}) or choose another --name`);
  }
}

/** "2m05s" */
export function formatDuration(ms: number): string {
  const s = Math.floor(ms / 1000);
  return s < 60 ? `${s}s` : `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
}
