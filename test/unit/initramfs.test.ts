import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  buildInitramfs,
  INIT_EXIT_MARKER,
  InitramfsError,
  parseInitExitCode,
  type InitramfsOptions,
} from "../../src/image/initramfs.ts";

const scratch = mkdtempSync(join(tmpdir(), "volt-initramfs-test-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/**
 * The smallest file that passes as a static x86-64 ELF executable: a header
 * with one PT_LOAD program header (or PT_INTERP, to fake a dynamic one). It
 * keeps these tests independent of the busybox-static package.
 */
function fakeElf(programHeaderType: number): Uint8Array {
  const elf = new Uint8Array(64 + 56);
  const view = new DataView(elf.buffer);
  view.setUint32(0, 0x7f454c46);
  elf[4] = 2; // 64-bit
  elf[5] = 1; // little endian
  view.setBigUint64(32, 64n, true); // e_phoff
  view.setUint16(54, 56, true); // e_phentsize
  view.setUint16(56, 1, true); // e_phnum
  view.setUint32(64, programHeaderType, true);
  return elf;
}
const staticBusybox = join(scratch, "busybox-static");
writeFileSync(staticBusybox, fakeElf(1 /* PT_LOAD */));
const dynamicBusybox = join(scratch, "busybox-dynamic");
writeFileSync(dynamicBusybox, fakeElf(3 /* PT_INTERP */));

let extractions = 0;
function extract(image: Uint8Array<ArrayBuffer>): string {
  const dir = join(scratch, `root-${++extractions}`);
  mkdirSync(dir);
  const cpioBytes = Bun.gunzipSync(image);
  const result = Bun.spawnSync(["cpio", "-id", "--quiet", "--no-absolute-filenames"], {
    cwd: dir,
    stdin: cpioBytes,
    stderr: "pipe",
  });
  expect(result.exitCode, result.stderr.toString()).toBe(0);
  return dir;
}

function build(options: InitramfsOptions = {}): Uint8Array<ArrayBuffer> {
  return buildInitramfs({ busyboxPath: staticBusybox, ...options });
}

describe("buildInitramfs", () => {
  const moduleA = join(scratch, "irqbypass.ko");
  const moduleB = join(scratch, "kvm-amd.ko");
  writeFileSync(moduleA, "module a");
  writeFileSync(moduleB, "module b");
  const helper = join(scratch, "helper");
  writeFileSync(helper, "#!/bin/sh\necho helper\n", { mode: 0o750 });

  test("lays out busybox, directories, modules, extra files, the script and /init", () => {
    const root = extract(
      build({
        modules: [moduleA, moduleB],
        files: [
          { hostPath: helper, archivePath: "/usr/libexec/helper" },
          { hostPath: helper, archivePath: "/etc/helper.conf", mode: 0o600 },
        ],
        script: "echo hello from the guest\nexit 3\n",
      }),
    );
    const mode = (path: string) => lstatSync(join(root, path)).mode & 0o7777;
    expect(new Uint8Array(readFileSync(join(root, "bin/busybox")))).toEqual(new Uint8Array(readFileSync(staticBusybox)));
    expect(mode("bin/busybox")).toBe(0o755);
    for (const dir of ["proc", "sys", "dev", "tmp", "etc", "lib/modules"]) {
      expect(lstatSync(join(root, dir)).isDirectory()).toBe(true);
    }
    expect(mode("tmp")).toBe(0o1777);
    expect(readFileSync(join(root, "lib/modules/irqbypass.ko"), "utf8")).toBe("module a");
    expect(readFileSync(join(root, "lib/modules/kvm-amd.ko"), "utf8")).toBe("module b");
    expect(mode("usr/libexec/helper")).toBe(0o750); // the host file's mode
    expect(mode("etc/helper.conf")).toBe(0o600); // an explicit mode wins
    expect(readFileSync(join(root, "etc/volt/script.sh"), "utf8")).toBe("echo hello from the guest\nexit 3\n");
    expect(mode("init")).toBe(0o755);
    if (process.getuid?.() === 0) expect(lstatSync(join(root, "dev/console")).isCharacterDevice()).toBe(true);

    const init = readFileSync(join(root, "init"), "utf8");
    expect(init.startsWith("#!/bin/busybox sh\n")).toBe(true);
    expect(init).toContain("/bin/busybox --install -s");
    for (const mount of ["-t proc", "-t sysfs", "-t devtmpfs"]) expect(init).toContain(`mount ${mount}`);
    // modules load in the order given, after the mounts and before the script
    const insmodA = init.indexOf("insmod /lib/modules/irqbypass.ko");
    const insmodB = init.indexOf("insmod /lib/modules/kvm-amd.ko");
    const script = init.indexOf("/bin/sh /etc/volt/script.sh");
    expect(init.indexOf("mount -t devtmpfs")).toBeLessThan(insmodA);
    expect(insmodA).toBeGreaterThan(0);
    expect(insmodB).toBeGreaterThan(insmodA);
    expect(script).toBeGreaterThan(insmodB);
    expect(init.indexOf(`echo "${INIT_EXIT_MARKER}$rc"`)).toBeGreaterThan(script);
    expect(init).toContain("\npoweroff -f\n");

    // insmod gets the module's "name.param=value" words from the kernel command line, as modprobe would pass them.
    expect(init).toContain("insmod /lib/modules/kvm-amd.ko $(module_options kvm_amd)");
    const fn = init.slice(init.indexOf("module_options() {"), init.indexOf("\n}\n", init.indexOf("module_options() {")) + 3);
    const cmdline = join(scratch, "cmdline");
    writeFileSync(cmdline, "console=ttyS0 kvm_amd.nested=1 kvm_amd.npt=0 kvm_amdx.y=2 other.z=3 kvm_amd\n");
    const shell = Bun.spawnSync(["sh", "-c", `${fn.replace("/proc/cmdline", cmdline)}\necho $(module_options kvm_amd)`]);
    expect(shell.stdout.toString().trim()).toBe("nested=1 npt=0");
  });

  test("the generated /init runs: script exit code is printed as the marker line", () => {
    // Run /init's tail on the host with a shell, with the guest-only commands stubbed.
    const root = extract(build({ script: "echo from-script; exit 7\n", exit: "reboot" }));
    const init = readFileSync(join(root, "init"), "utf8")
      .replace("/bin/sh /etc/volt/script.sh", `sh ${join(root, "etc/volt/script.sh")}`)
      .replace(/^(\/bin\/busybox|mount|sync|reboot|poweroff|while).*$/gm, ": stubbed");
    const result = Bun.spawnSync(["sh", "-c", init], { stderr: "pipe" });
    const output = result.stdout.toString();
    expect(output).toContain("from-script\n");
    expect(output).toContain(`${INIT_EXIT_MARKER}7\n`);
    expect(parseInitExitCode(output)).toBe(7);
  });

  test("without a script /init reports 0; reboot can replace poweroff", () => {
    const root = extract(build({ exit: "reboot" }));
    const init = readFileSync(join(root, "init"), "utf8");
    expect(init).not.toContain("script.sh");
    expect(init).toContain("\nreboot -f\n");
    expect(init).not.toContain("poweroff -f");
  });

  test("the real busybox-static is accepted when installed", () => {
    if (!existsSync("/bin/busybox")) return; // exercised where busybox-static is installed
    const image = buildInitramfs({});
    expect(image[0]).toBe(0x1f); // gzip magic
    expect(image[1]).toBe(0x8b);
  });

  test("the image is gzip'ed newc cpio", () => {
    const cpioBytes = Bun.gunzipSync(build());
    expect(new TextDecoder().decode(cpioBytes.subarray(0, 6))).toBe("070701");
  });
});

describe("parseInitExitCode", () => {
  test("takes the last marker and ignores other output", () => {
    expect(parseInitExitCode("boot...\nVOLT-INIT: script exit code 0\n")).toBe(0);
    expect(parseInitExitCode("VOLT-INIT: script exit code 1\r\nnoise\nVOLT-INIT: script exit code 42\r\n")).toBe(42);
    expect(parseInitExitCode("kernel panic\n")).toBeUndefined();
  });
});

describe("buildInitramfs rejects bad input with a clear error", () => {
  test("missing busybox names the path and the package", () => {
    expect(() => buildInitramfs({ busyboxPath: join(scratch, "nope") })).toThrow(
      /cannot read busybox \(install the busybox-static package\) at .*nope: ENOENT/,
    );
  });
  test("a dynamically linked busybox", () => {
    expect(() => buildInitramfs({ busyboxPath: dynamicBusybox })).toThrow(/dynamically linked/);
  });
  test("something that is not an ELF executable", () => {
    const notElf = join(scratch, "not-elf");
    writeFileSync(notElf, "#!/bin/sh\n".repeat(10));
    expect(() => buildInitramfs({ busyboxPath: notElf })).toThrow(/not a 64-bit little-endian ELF/);
  });
  test("compressed or misnamed modules", () => {
    expect(() => build({ modules: ["/x/kvm.ko.xz"] })).toThrow(/not an uncompressed \.ko/);
  });
  test("the same module twice", () => {
    writeFileSync(join(scratch, "dup.ko"), "");
    expect(() => build({ modules: [join(scratch, "dup.ko"), join(scratch, "dup.ko")] })).toThrow(/dup\.ko given twice/);
  });
  test("a missing module file", () => {
    expect(() => build({ modules: [join(scratch, "absent.ko")] })).toThrow(/cannot read kernel module at .*absent\.ko/);
  });
  test("an extra file that would replace /init", () => {
    expect(() => build({ files: [{ hostPath: staticBusybox, archivePath: "/init" }] })).toThrow(
      InitramfsError,
    );
    expect(() => build({ files: [{ hostPath: staticBusybox, archivePath: "/init" }] })).toThrow(/duplicate path "init"/);
  });
  test("a relative archive path", () => {
    expect(() => build({ files: [{ hostPath: staticBusybox, archivePath: "bin/x" }] })).toThrow(/must be absolute/);
  });
});
