/**
 * `volt kernel build` without compiling a kernel: the config fragment and its
 * verification, make-output progress, argument and source checks, missing
 * tools, and whole builds against a fake Linux tree whose Makefile mimics
 * kbuild (allnoconfig from KCONFIG_ALLCONFIG, "  CC  file" lines, a vmlinux)
 * and can drop a symbol or fail on request. Every failure must leave the
 * store and the work directory empty.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  type BuildProgress,
  buildKernel,
  configMismatchMessage,
  findDebianSourceTarball,
  KernelBuildError,
  MakeProgress,
  missingBuildTools,
  parseConfigFragment,
  parseJobs,
  parseMakeLine,
  resolveSource,
  verifyConfig,
} from "../../src/kernel/build.ts";
import { MICROVM_CONFIG } from "../../src/kernel/microvm-config.ts";
import { KernelStore } from "../../src/kernel/store.ts";
import { makeVmlinux } from "./kernel-fixtures.ts";

const root = join(import.meta.dir, "..", "..");
const work = mkdtempSync(join(tmpdir(), "volt-kernel-build-test-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));
let counter = 0;
const fresh = (prefix: string) => {
  const dir = join(work, `${prefix}-${++counter}`);
  mkdirSync(dir, { recursive: true });
  return dir;
};

async function buildError(promise: Promise<unknown>): Promise<KernelBuildError> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof KernelBuildError) return error;
    throw error;
  }
  throw new Error("expected a KernelBuildError");
}

// ---------------------------------------------------------------- the fragment
describe("Volt's microVM config fragment", () => {
  const fragment = parseConfigFragment(MICROVM_CONFIG);

  test("asks for everything the issue lists, built in", () => {
    const builtIn = [
      "CONFIG_64BIT", "CONFIG_SMP", "CONFIG_X86_MPPARSE", "CONFIG_PVH", "CONFIG_KVM_GUEST", "CONFIG_PARAVIRT", "CONFIG_PARAVIRT_CLOCK",
      "CONFIG_VIRTIO_MMIO", "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES", "CONFIG_VIRTIO_BLK", "CONFIG_VIRTIO_NET", "CONFIG_VIRTIO_VSOCKETS",
      "CONFIG_HW_RANDOM_VIRTIO", "CONFIG_VIRTIO_BALLOON", "CONFIG_EXT4_FS", "CONFIG_SERIAL_8250", "CONFIG_SERIAL_8250_CONSOLE",
      "CONFIG_SERIO_I8042", "CONFIG_KEYBOARD_ATKBD", "CONFIG_DEVTMPFS", "CONFIG_DEVTMPFS_MOUNT", "CONFIG_TMPFS", "CONFIG_PROC_FS",
      "CONFIG_SYSFS", "CONFIG_UNIX", "CONFIG_INET", "CONFIG_PRINTK", "CONFIG_BINFMT_ELF", "CONFIG_BINFMT_SCRIPT", "CONFIG_DEBUG_INFO_NONE",
      "CONFIG_DEVMEM",
    ];
    for (const symbol of builtIn) expect([symbol, fragment.get(symbol)]).toEqual([symbol, "y"]);
    // ACPI off: Linux 6.1 cannot load ACPI tables without PCI (see microvm-config.ts).
    for (const symbol of ["CONFIG_MODULES", "CONFIG_PCI", "CONFIG_ACPI"]) expect([symbol, fragment.get(symbol)]).toEqual([symbol, "n"]);
    const cpus = Number(fragment.get("CONFIG_NR_CPUS"));
    expect(cpus).toBeGreaterThanOrEqual(2);
    expect(cpus).toBeLessThanOrEqual(64);
  });

  test("every line is a comment, blank, or one assignment; no symbol twice", () => {
    const seen = new Set<string>();
    for (const line of MICROVM_CONFIG.split("\n")) {
      if (line === "" || (line.startsWith("#") && !/^# CONFIG_/.test(line))) continue;
      const match = /^(?:(CONFIG_\w+)=\S+|# (CONFIG_\w+) is not set)$/.exec(line);
      expect(match, line).not.toBeNull();
      const symbol = match![1] ?? match![2]!;
      expect(seen.has(symbol), `${symbol} twice`).toBe(false);
      seen.add(symbol);
    }
    expect(seen.size).toBe(fragment.size);
  });
});

describe("verifyConfig", () => {
  const fragment = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_NR=8\nCONFIG_S=\"x\"\n";

  test("a .config with every symbol as asked passes; unset and absent both count as 'not set'", () => {
    expect(verifyConfig(fragment, 'CONFIG_A=y\nCONFIG_NR=8\nCONFIG_S="x"\nCONFIG_OTHER=y\n')).toEqual([]);
    expect(verifyConfig(fragment, 'CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_NR=8\nCONFIG_S="x"\n')).toEqual([]);
  });

  test("names each symbol that was dropped or changed, with both values", () => {
    const mismatches = verifyConfig(fragment, "# CONFIG_A is not set\nCONFIG_B=y\nCONFIG_NR=64\n");
    expect(mismatches).toEqual([
      { symbol: "CONFIG_A", wanted: "y", got: "n" },
      { symbol: "CONFIG_B", wanted: "n", got: "y" },
      { symbol: "CONFIG_NR", wanted: "8", got: "64" },
      { symbol: "CONFIG_S", wanted: '"x"', got: "n" },
    ]);
    const message = configMismatchMessage(mismatches);
    expect(message).toContain("CONFIG_A: wanted y, .config has it unset");
    expect(message).toContain("CONFIG_NR: wanted 8, .config has 64");
    expect(message).toContain("4 symbols");
  });
});

// ---------------------------------------------------------------- progress
describe("make output progress", () => {
  test("kbuild's quiet lines parse; anything else does not", () => {
    expect(parseMakeLine("  CC      init/main.o")).toEqual({ action: "CC", target: "init/main.o" });
    expect(parseMakeLine("  HOSTCC  scripts/basic/fixdep")).toEqual({ action: "HOSTCC", target: "scripts/basic/fixdep" });
    expect(parseMakeLine("  CC [M]  fs/ext4/inode.o")).toEqual({ action: "CC [M]", target: "fs/ext4/inode.o" });
    expect(parseMakeLine("make[1]: Entering directory '/tmp/build'")).toBeUndefined();
    expect(parseMakeLine("fs/ext4/inode.c:12:3: error: expected ';'")).toBeUndefined();
    expect(parseMakeLine("")).toBeUndefined();
  });

  test("counts compiled and assembled files and moves to the link phase at vmlinux", () => {
    const tracker = new MakeProgress();
    const lines = [
      "  SYNC    include/config/auto.conf",
      "  HOSTCC  scripts/kallsyms",
      "  CC      init/main.o",
      "  AS      arch/x86/entry/entry_64.o",
      "  AR      init/built-in.a",
      "warning: something",
      "  CC      kernel/fork.o",
      "  LD      vmlinux.o",
      "  LD      vmlinux",
      "  SORTTAB vmlinux",
    ];
    const phases: string[] = [];
    for (const line of lines) {
      tracker.feed(line);
      phases.push(tracker.phase);
    }
    expect(tracker.compiled).toBe(3);
    expect(phases.slice(0, 7).every((p) => p === "compile")).toBe(true);
    expect(phases.slice(7)).toEqual(["link", "link", "link"]);
    expect(tracker.last).toBe("SORTTAB vmlinux");
  });
});

// ---------------------------------------------------------------- arguments and sources
describe("arguments and sources", () => {
  test("--jobs: a whole number from 1; none means the CPU count", () => {
    expect(parseJobs(3)).toBe(3);
    expect(parseJobs("8")).toBe(8);
    expect(parseJobs(undefined)).toBeGreaterThanOrEqual(1);
    for (const bad of [0, -1, 1.5, "x", 5000]) expect(() => parseJobs(bad)).toThrow(/--jobs .* is not a whole number/);
  });

  test("a missing source, a directory that is not a Linux tree, and a file that is not a tarball are refused by kind", () => {
    const none = (() => {
      try {
        resolveSource(join(work, "no-such-tree"));
      } catch (error) {
        return error as KernelBuildError;
      }
    })();
    expect(none).toBeInstanceOf(KernelBuildError);
    expect(none!.kind).toBe("source-missing");
    expect(none!.message).toContain("does not exist");
    const empty = fresh("empty");
    expect(() => resolveSource(empty)).toThrow(/is not a Linux source tree \(no Makefile, Kconfig, arch\/x86\/Kconfig, scripts\/kconfig\)/);
    const text = join(fresh("file"), "notes.txt");
    writeFileSync(text, "hello");
    expect(() => resolveSource(text)).toThrow(/neither a Linux source directory nor a tarball/);
    const tarball = join(fresh("tar"), "linux.tar.xz");
    writeFileSync(tarball, "");
    expect(resolveSource(tarball)).toEqual({ path: tarball, kind: "tarball" });
  });

  test("a tree's Makefile must be Linux's top-level one", () => {
    const tree = fakeTree();
    writeFileSync(join(tree, "Makefile"), "all:\n\ttrue\n");
    expect(() => resolveSource(tree)).toThrow(/not the top-level Makefile of a Linux tree/);
  });

  test("no source: Debian's newest /usr/src/linux-source-X.Y tarball, or an error saying how to get one", () => {
    const usrSrc = fresh("usr-src");
    expect(() => resolveSource(undefined, usrSrc)).toThrow(/apt-get install linux-source-6\.1/);
    for (const name of ["linux-source-5.10.tar.xz", "linux-source-6.1.tar.xz", "linux-config-6.1", "linux-source-6.1"]) writeFileSync(join(usrSrc, name), "");
    expect(findDebianSourceTarball(usrSrc)).toBe(join(usrSrc, "linux-source-6.1.tar.xz"));
    expect(resolveSource(undefined, usrSrc)).toEqual({ path: join(usrSrc, "linux-source-6.1.tar.xz"), kind: "tarball" });
  });

  test("missing build tools are all named at once, with the Debian packages to install", () => {
    const bin = stubBin(["make", "gcc", "ld", "bison"]);
    const missing = missingBuildTools({ PATH: bin }, { tarball: "/x/linux.tar.xz" });
    const names = missing.map((m) => m.tool);
    expect(names).toEqual(expect.arrayContaining(["flex", "bc", "tar", "xz"]));
    expect(names).not.toContain("make");
    expect(names).not.toContain("libelf headers (gelf.h)");
    // A gcc that cannot find <gelf.h> means libelf-dev is missing.
    const noElf = stubBin(["make", "ld", "bison", "flex", "bc"], { gcc: "#!/bin/sh\necho 'fatal error: gelf.h: No such file' >&2\nexit 1\n" });
    expect(missingBuildTools({ PATH: noElf }).map((m) => m.debianPackage)).toEqual(["libelf-dev"]);
  });
});

// ---------------------------------------------------------------- whole builds against a fake tree

/**
 * A directory that passes for a Linux tree, whose Makefile does what kbuild
 * does as far as volt kernel build can tell: allnoconfig copies
 * KCONFIG_ALLCONFIG into $(O)/.config (less FAKE_DROP's symbol), vmlinux
 * prints CC lines and copies FAKE_VMLINUX (or fails with FAKE_FAIL set).
 */
function fakeTree(): string {
  const tree = fresh("linux");
  mkdirSync(join(tree, "arch/x86"), { recursive: true });
  mkdirSync(join(tree, "scripts/kconfig"), { recursive: true });
  writeFileSync(join(tree, "Kconfig"), "mainmenu \"fake\"\n");
  writeFileSync(join(tree, "arch/x86/Kconfig"), "");
  const recipe = (lines: string[]) => lines.map((l) => `\t${l}`).join("\n");
  writeFileSync(
    join(tree, "Makefile"),
    [
      "VERSION = 6",
      "PATCHLEVEL = 1",
      "SUBLEVEL = 0",
      "EXTRAVERSION = -fake",
      "O ?= .",
      ".PHONY: allnoconfig vmlinux kernelrelease",
      "allnoconfig:",
      recipe([
        '@echo "  HOSTCC  scripts/kconfig/conf.o"',
        '@if [ -n "$(FAKE_DROP)" ]; then grep -v "^$(FAKE_DROP)=" "$(KCONFIG_ALLCONFIG)" > "$(O)/.config"; else cp "$(KCONFIG_ALLCONFIG)" "$(O)/.config"; fi',
        '@echo "#" >> "$(O)/.config"',
        '@echo "# configuration written to .config"',
      ]),
      "kernelrelease:",
      recipe(['@echo "$(VERSION).$(PATCHLEVEL).$(SUBLEVEL)$(EXTRAVERSION)"']),
      "vmlinux:",
      recipe([
        '@touch "$(O)/make-vmlinux-ran"',
        '@echo "  SYNC    include/config/auto.conf"',
        '@echo "  CC      init/main.o"',
        '@echo "  CC      kernel/fork.o"',
        '@echo "  AS      arch/x86/entry/entry_64.o"',
        '@if [ -n "$(FAKE_FAIL)" ]; then echo "fs/ext4/inode.c:12:3: error: expected declaration" >&2; exit 2; fi',
        '@echo "  LD      vmlinux.o"',
        '@echo "  LD      vmlinux"',
        '@cp "$(FAKE_VMLINUX)" "$(O)/vmlinux"',
      ]),
      "",
    ].join("\n"),
  );
  return tree;
}

/** A PATH directory with the given commands: stubs that succeed (real make is linked in when named). */
function stubBin(commands: string[], scripts: Record<string, string> = {}): string {
  const bin = fresh("bin");
  for (const command of commands) {
    const path = join(bin, command);
    if (command === "make" || command === "tar" || command === "xz") {
      const real = Bun.which(command);
      if (!real) throw new Error(`${command} is needed on this host for these tests`);
      symlinkSync(real, path);
    } else {
      writeFileSync(path, "#!/bin/sh\nexit 0\n");
      chmodSync(path, 0o755);
    }
  }
  for (const [command, script] of Object.entries(scripts)) {
    writeFileSync(join(bin, command), script);
    chmodSync(join(bin, command), 0o755);
  }
  return bin;
}

const vmlinuxFile = (() => {
  const path = join(fresh("fixture"), "vmlinux");
  writeFileSync(path, makeVmlinux());
  return path;
})();

/** Stubs first (gcc, flex, bison, bc, ld succeed), the system after (the recipes' cp, grep, echo). */
function fakeEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return { PATH: `${stubBin(["make", "gcc", "ld", "flex", "bison", "bc"])}:/usr/bin:/bin`, FAKE_VMLINUX: vmlinuxFile, ...extra };
}

describe("buildKernel against a fake Linux tree", () => {
  test("configures with the fragment, reports progress, and stores the vmlinux with its .config under microvm-<release>", async () => {
    const store = new KernelStore(join(fresh("store"), "kernels"));
    const workDir = fresh("work");
    const seen: BuildProgress[] = [];
    const result = await buildKernel({ source: fakeTree(), store, jobs: 2, env: fakeEnv(), workDir, onProgress: (p) => seen.push(p) });
    expect(result.release).toBe("6.1.0-fake");
    expect(result.sourceKind).toBe("directory");
    expect(result.compiled).toBe(3);
    expect(result.jobs).toBe(2);
    expect(result.configSha256).toMatch(/^[0-9a-f]{64}$/);
    expect(result.kernel).toMatchObject({ name: "microvm-6.1.0-fake", format: "elf", pvh: true, isDefault: true });
    expect(readFileSync(result.kernel.configPath!, "utf8")).toContain("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y");
    // The stored config is the fragment applied, so the store knows the kernel mounts a virtio-blk root by itself.
    expect(result.kernel.rootWithoutInitramfs.answer).toBe("yes");
    const phases = [...new Set(seen.map((p) => p.phase))];
    expect(phases).toEqual(["configure", "compile", "link", "store"]);
    expect(seen.at(-1)!.compiled).toBe(3);
    expect(seen.some((p) => p.last === "CC kernel/fork.o")).toBe(true);
    expect(readdirSync(workDir)).toEqual([]);
  });

  test("a tarball is unpacked and built the same way", async () => {
    const tree = fakeTree();
    const tarball = join(fresh("tarball"), "linux-source-6.1.tar.xz");
    const tar = Bun.spawnSync(["tar", "-cJf", tarball, "-C", join(tree, ".."), tree.split("/").at(-1)!]);
    expect(tar.exitCode).toBe(0);
    const store = new KernelStore(join(fresh("store"), "kernels"));
    const env = fakeEnv();
    env.PATH = `${stubBin(["tar", "xz"])}:${env.PATH}`;
    const seen: string[] = [];
    const result = await buildKernel({ source: tarball, store, name: "from-tar", env, workDir: fresh("work"), onProgress: (p) => seen.push(p.phase) });
    expect(result.sourceKind).toBe("tarball");
    expect(result.kernel.name).toBe("from-tar");
    expect(seen[0]).toBe("unpack");
  });

  test("a symbol the configuration dropped is an error naming it; nothing is compiled or stored", async () => {
    const store = new KernelStore(join(fresh("store"), "kernels"));
    const workDir = fresh("work");
    const error = await buildError(buildKernel({ source: fakeTree(), store, env: fakeEnv({ FAKE_DROP: "CONFIG_VIRTIO_VSOCKETS" }), workDir }));
    expect(error.kind).toBe("config-dropped");
    expect(error.message).toContain("CONFIG_VIRTIO_VSOCKETS: wanted y, .config has it unset");
    expect(store.list()).toEqual([]);
    expect(readdirSync(workDir)).toEqual([]);
  });

  test("a failing make is an error with the end of its log; nothing is stored and the work directory is gone", async () => {
    const store = new KernelStore(join(fresh("store"), "kernels"));
    const workDir = fresh("work");
    const error = await buildError(buildKernel({ source: fakeTree(), store, env: fakeEnv({ FAKE_FAIL: "1" }), workDir }));
    expect(error.kind).toBe("make-failed");
    expect(error.message).toContain("make vmlinux failed");
    expect(error.message).toContain("after 3 files");
    expect(error.message).toContain("fs/ext4/inode.c:12:3: error: expected declaration");
    expect(store.list()).toEqual([]);
    expect(existsSync(store.dir) ? readdirSync(store.dir) : []).toEqual([]);
    expect(readdirSync(workDir)).toEqual([]);
  });

  test("a name already in the store is refused before anything is built, explicit or derived", async () => {
    const store = new KernelStore(join(fresh("store"), "kernels"));
    const first = await buildKernel({ source: fakeTree(), store, env: fakeEnv(), workDir: fresh("work") });
    const before = readFileSync(first.kernel.path);
    const workDir = fresh("work");
    const explicit = await buildError(buildKernel({ source: fakeTree(), store, name: first.kernel.name, env: fakeEnv(), workDir }));
    expect(explicit.kind).toBe("exists");
    expect(explicit.message).toContain(`volt kernel rm ${first.kernel.name}`);
    // Explicit names are checked before the work directory exists; derived ones right after configuring, before make vmlinux.
    expect(readdirSync(workDir)).toEqual([]);
    const tree = fakeTree();
    const derived = await buildError(buildKernel({ source: tree, store, env: fakeEnv(), workDir }));
    expect(derived.kind).toBe("exists");
    expect(store.list().map((k) => k.name)).toEqual([first.kernel.name]);
    expect(readFileSync(first.kernel.path).equals(before)).toBe(true);
    expect(readdirSync(workDir)).toEqual([]);
  });

  test("a tree configured in place, missing tools and a bad name are refused up front", async () => {
    const store = new KernelStore(join(fresh("store"), "kernels"));
    const configured = fakeTree();
    writeFileSync(join(configured, ".config"), "CONFIG_X=y\n");
    expect((await buildError(buildKernel({ source: configured, store, env: fakeEnv() }))).kind).toBe("tree-not-clean");
    const noFlex = { PATH: stubBin(["make", "gcc", "ld", "bison", "bc"]) };
    const tools = await buildError(buildKernel({ source: fakeTree(), store, env: noFlex }));
    expect(tools.kind).toBe("tools-missing");
    expect(tools.message).toContain("flex (Kconfig's lexer)");
    expect(tools.message).toContain("apt-get install flex");
    expect((await buildError(buildKernel({ source: fakeTree(), store, name: "bad name", env: fakeEnv() }))).kind).toBe("bad-option");
    expect(store.list()).toEqual([]);
  });

  test("an abort kills make and adds nothing", async () => {
    const tree = fakeTree();
    // A vmlinux target that hangs until killed.
    const makefile = readFileSync(join(tree, "Makefile"), "utf8").replace('@echo "  SYNC    include/config/auto.conf"', '@echo "  SYNC    include/config/auto.conf"; sleep 30');
    writeFileSync(join(tree, "Makefile"), makefile);
    const store = new KernelStore(join(fresh("store"), "kernels"));
    const abort = new AbortController();
    const started = performance.now();
    const promise = buildKernel({
      source: tree,
      store,
      env: fakeEnv(),
      workDir: fresh("work"),
      signal: abort.signal,
      onProgress: (p) => {
        if (p.phase === "compile") setTimeout(() => abort.abort(), 200);
      },
    });
    const error = await buildError(promise);
    expect(error.kind).toBe("interrupted");
    expect(performance.now() - started).toBeLessThan(20_000);
    expect(store.list()).toEqual([]);
  }, 30_000);
});

// ---------------------------------------------------------------- CLI
function volt(args: string[], env: NodeJS.ProcessEnv) {
  const child = Bun.spawnSync(["bun", join(root, "src/cli/main.ts"), "kernel", "build", ...args], {
    cwd: work,
    env: { ...env, NO_COLOR: "1", HOME: process.env.HOME ?? "/root" },
    timeout: 120_000,
  });
  return { exitCode: child.exitCode, stdout: child.stdout.toString(), stderr: child.stderr.toString() };
}

describe("volt kernel build (CLI)", () => {
  const bunDir = join(process.execPath, "..");

  test("--help explains usage with examples", () => {
    const help = volt(["--help"], process.env);
    expect(help.exitCode).toBe(0);
    const text = help.stdout + help.stderr;
    expect(text).toContain("Examples:");
    expect(text).toContain("volt kernel build /usr/src/linux-source-6.1.tar.xz");
    expect(text).toContain("--jobs");
  });

  test("a missing source is exit 2 with a JSON error; nothing is stored", () => {
    const data = fresh("data");
    const result = volt([join(work, "no-such-linux"), "--json"], { ...process.env, VOLT_DATA_DIR: data });
    expect(result.exitCode).toBe(2);
    expect(JSON.parse(result.stdout)).toMatchObject({ ok: false, error: { kind: "kernel-build-source-missing" } });
    expect(result.stderr).toContain("does not exist");
    expect(existsSync(join(data, "kernels"))).toBe(false);
  });

  test("a whole build with --json: progress on stderr, the stored kernel and the build on stdout; again is exit 2 (name exists)", () => {
    const data = fresh("data");
    const env = { ...fakeEnv(), PATH: `${fakeEnv().PATH}:${bunDir}`, VOLT_DATA_DIR: data, TMPDIR: fresh("tmp") };
    const tree = fakeTree();
    const result = volt(["--source", tree, "--name", "micro", "-j", "2", "--json"], env);
    if (result.exitCode !== 0) console.error(result.stderr);
    expect(result.exitCode).toBe(0);
    const doc = JSON.parse(result.stdout);
    expect(doc).toMatchObject({ ok: true, kernel: { name: "micro", format: "elf", pvh: true }, build: { release: "6.1.0-fake", jobs: 2, compiledFiles: 3, sourceKind: "directory" } });
    expect(result.stderr).toContain("volt: configuring");
    expect(result.stderr).toMatch(/volt: (compiling|linking)/);
    const again = volt([tree, "--name", "micro", "--json"], env);
    expect(again.exitCode).toBe(2);
    expect(JSON.parse(again.stdout).error.kind).toBe("kernel-build-exists");
    expect(readdirSync(env.TMPDIR!)).toEqual([]);
  });
});

// ---------------------------------------------------------------- the e2e harness's decision
describe("when the e2e harness builds its test kernel", () => {
  test("only for run-e2e.ts running every file or kernel-build.test.ts; never for the benchmark unless told", async () => {
    const { builtKernelWanted } = await import("../../test/harness/guest-assets.ts");
    const runner = "/work/main/test/harness/run-e2e.ts";
    expect(builtKernelWanted(["bun", runner], {})).toBe(true);
    expect(builtKernelWanted(["bun", runner, "-t", "abi"], {})).toBe(true);
    expect(builtKernelWanted(["bun", runner, "./test/e2e/kernel-build.test.ts"], {})).toBe(true);
    expect(builtKernelWanted(["bun", runner, "./test/e2e/boot.test.ts"], {})).toBe(false);
    expect(builtKernelWanted(["bun", "/work/main/bench/run.ts"], {})).toBe(false);
    expect(builtKernelWanted(["bun", "/work/main/bench/run.ts"], { VOLT_TEST_BUILD_KERNEL: "1" })).toBe(true);
    expect(builtKernelWanted(["bun", runner], { VOLT_TEST_BUILD_KERNEL: "0" })).toBe(false);
  });
});
