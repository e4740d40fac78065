/**
 * Builds a minimal busybox initramfs: a static busybox, a few kernel modules
 * and an /init that runs one shell script and then ends the guest. It is the
 * smallest userland that lets a test (or the nested-KVM harness) run commands
 * inside a freshly booted Linux guest and read back an exit code from the
 * console.
 */
import { readFileSync, statSync } from "node:fs";
import { basename } from "node:path";
import { writeCpio, type CpioEntry } from "./cpio.ts";

export interface InitramfsFile {
  /** File on the host to copy into the archive. */
  hostPath: string;
  /** Absolute path inside the guest, e.g. "/usr/bin/helper". */
  archivePath: string;
  /** Permission bits; default: the host file's. */
  mode?: number;
}

export interface InitramfsOptions {
  /** Statically linked busybox to use as the guest's only userland. Default /bin/busybox (Debian's busybox-static). */
  busyboxPath?: string;
  /** Kernel module files (.ko) copied to /lib/modules and insmod'ed by /init in this order. */
  modules?: readonly string[];
  /** Extra host files to place in the archive. */
  files?: readonly InitramfsFile[];
  /** Shell script (busybox sh) run by /init once the modules are loaded; its exit code is reported. */
  script?: string;
  /**
   * How /init ends the guest. "poweroff" needs ACPI in the guest; "reboot"
   * works on machines without it when the VMM treats a reset as exit
   * (QEMU -no-reboot, or reboot=t/k on the kernel command line).
   */
  exit?: "poweroff" | "reboot";
  /** gzip level 1-9; default 6. */
  compressionLevel?: 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9;
}

/** The line /init prints after the script ends: `VOLT-INIT: script exit code N`. */
export const INIT_EXIT_MARKER = "VOLT-INIT: script exit code ";

/** Finds the script's exit code in a guest console transcript, if /init got that far. */
export function parseInitExitCode(console: string): number | undefined {
  const matches = [...console.matchAll(/VOLT-INIT: script exit code (\d+)/g)];
  const last = matches.at(-1);
  return last ? Number(last[1]) : undefined;
}

export class InitramfsError extends Error {
  override name = "InitramfsError";
}

const SCRIPT_PATH = "/etc/volt/script.sh";
const MODULE_DIR = "/lib/modules";

/** Returns the gzip-compressed newc cpio image. */
export function buildInitramfs(options: InitramfsOptions = {}): Uint8Array<ArrayBuffer> {
  const busyboxPath = options.busyboxPath ?? "/bin/busybox";
  const busybox = readHostFile(busyboxPath, "busybox (install the busybox-static package)");
  assertStaticallyLinked(busybox, busyboxPath);

  const modules = (options.modules ?? []).map((hostPath) => {
    if (!hostPath.endsWith(".ko")) {
      throw new InitramfsError(
        `initramfs: kernel module ${hostPath} is not an uncompressed .ko file (busybox insmod cannot load compressed modules)`,
      );
    }
    return { hostPath, name: basename(hostPath) };
  });
  const moduleNames = new Set<string>();
  for (const { name, hostPath } of modules) {
    if (moduleNames.has(name)) throw new InitramfsError(`initramfs: module ${name} given twice (${hostPath})`);
    moduleNames.add(name);
  }

  const entries: CpioEntry[] = [];
  for (const dir of ["bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "etc", "lib/modules"]) {
    entries.push({ kind: "directory", path: dir });
  }
  entries.push({ kind: "directory", path: "tmp", mode: 0o1777 });
  // The kernel opens /dev/console for /init before anything is mounted; without
  // it /init runs with no stdin/stdout on kernels lacking a built-in initramfs.
  entries.push({ kind: "chardev", path: "dev/console", major: 5, minor: 1, mode: 0o600 });
  entries.push({ kind: "file", path: "bin/busybox", data: busybox, mode: 0o755 });
  for (const { hostPath, name } of modules) {
    entries.push({ kind: "file", path: `${MODULE_DIR}/${name}`, data: readHostFile(hostPath, "kernel module"), mode: 0o644 });
  }
  for (const file of options.files ?? []) {
    if (!file.archivePath.startsWith("/")) {
      throw new InitramfsError(`initramfs: archive path "${file.archivePath}" must be absolute`);
    }
    const data = readHostFile(file.hostPath, `file for ${file.archivePath}`);
    const mode = file.mode ?? statSync(file.hostPath).mode & 0o7777;
    entries.push({ kind: "file", path: file.archivePath, data, mode });
  }
  if (options.script !== undefined) {
    entries.push({ kind: "file", path: SCRIPT_PATH, data: options.script, mode: 0o755 });
  }
  entries.push({
    kind: "file",
    path: "init",
    data: renderInit(modules.map((m) => m.name), options.script !== undefined, options.exit ?? "poweroff"),
    mode: 0o755,
  });

  let archive: Uint8Array<ArrayBuffer>;
  try {
    archive = writeCpio(entries);
  } catch (error) {
    // e.g. an extra file that lands on /init or /bin/busybox
    throw new InitramfsError(`initramfs: ${(error as Error).message}`);
  }
  return Bun.gzipSync(archive, { level: options.compressionLevel ?? 6 });
}

/** "virtio-mmio.ko" → "virtio_mmio": the prefix of its options on the kernel command line. */
function moduleOptionPrefix(fileName: string): string {
  return fileName.replace(/\.ko$/, "").replaceAll("-", "_");
}

function renderInit(moduleNames: readonly string[], hasScript: boolean, exit: "poweroff" | "reboot"): string {
  // insmod, unlike modprobe, does not look for "module.param=value" on the kernel command line; /init does it
  // (virtio_mmio.device=... is how a VMM without ACPI announces its devices to a modular virtio_mmio).
  const insmods = moduleNames
    .map((name) => `insmod ${MODULE_DIR}/${name} $(module_options ${moduleOptionPrefix(name)}) || echo "VOLT-INIT: insmod ${name} failed"`)
    .join("\n");
  return `#!/bin/busybox sh
# Generated by Volt's initramfs builder (src/image/initramfs.ts).
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/ TERM=dumb
mount -t proc proc /proc
mount -t sysfs sys /sys
# Some kernels mount devtmpfs themselves; a second mount attempt is harmless.
mount -t devtmpfs dev /dev 2>/dev/null
module_options() {
  for word in $(cat /proc/cmdline); do
    case "$word" in "$1".*=*) echo "\${word#"$1".}" ;; esac
  done
}
${insmods}
rc=0
${hasScript ? `/bin/sh ${SCRIPT_PATH}\nrc=$?` : "# no script given"}
echo "${INIT_EXIT_MARKER}$rc"
sync
${exit} -f
# poweroff/reboot -f should not return; if it does, avoid a kernel panic loop
while true; do sleep 3600; done
`;
}

function readHostFile(path: string, what: string): Uint8Array {
  try {
    return readFileSync(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? String(error);
    throw new InitramfsError(`initramfs: cannot read ${what} at ${path}: ${code}`);
  }
}

/**
 * A dynamically linked busybox boots to "init not found" because the guest
 * has no loader or libc; catch that on the host instead.
 */
function assertStaticallyLinked(elf: Uint8Array, path: string): void {
  const view = new DataView(elf.buffer, elf.byteOffset, elf.byteLength);
  const isElf64 = elf.byteLength > 64 && view.getUint32(0) === 0x7f454c46 && elf[4] === 2 && elf[5] === 1;
  if (!isElf64) throw new InitramfsError(`initramfs: busybox at ${path} is not a 64-bit little-endian ELF executable`);
  const programHeaderOffset = Number(view.getBigUint64(32, true));
  const entrySize = view.getUint16(54, true);
  const count = view.getUint16(56, true);
  const PT_INTERP = 3;
  for (let i = 0; i < count; i++) {
    const at = programHeaderOffset + i * entrySize;
    if (at + 4 > elf.byteLength) break;
    if (view.getUint32(at, true) === PT_INTERP) {
      throw new InitramfsError(
        `initramfs: busybox at ${path} is dynamically linked; use a static one (Debian: busybox-static)`,
      );
    }
  }
}
