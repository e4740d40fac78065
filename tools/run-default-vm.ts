/**
 * Boots a microVM with a default kernel and userland when you have neither:
 * Debian's generic kernel (fetched once through apt, cached) and a busybox
 * initramfs whose /init gives you a shell on the serial console. Leave the
 * shell (exit or Ctrl-D) and the guest reboots, which ends volt with 0.
 *
 *   bun tools/run-default-vm.ts [extra volt run options, e.g. --vcpus 2 --mem 512]
 *
 * Managed kernels and root images inside volt itself are issue #7; until
 * then this script is the "no kernel given" path.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { join, resolve } from "node:path";
import { buildInitramfs } from "../src/image/initramfs.ts";
import { fetchDebianKernel } from "../src/kernel/debian.ts";

const root = resolve(import.meta.dir, "..");
const cacheDir = join(process.env.XDG_CACHE_HOME || join(homedir(), ".cache"), "volt");
mkdirSync(cacheDir, { recursive: true });

const kernel = await fetchDebianKernel({ cacheDir, log: (line) => console.error(`volt-default: ${line}`) });
const initrd = join(cacheDir, "default-initramfs.cpio.gz");
writeFileSync(
  initrd,
  buildInitramfs({
    script: 'echo "Volt guest: busybox shell on ttyS0 (exit to end the VM)"\nsetsid cttyhack sh -l',
    exit: "reboot",
  }),
);
console.error(`volt-default: kernel ${kernel.version}, initramfs ${initrd}`);
const child = Bun.spawn([join(root, "dist", "volt"), "run", "--kernel", kernel.vmlinuzPath, "--initrd", initrd, ...process.argv.slice(2)], {
  stdio: ["inherit", "inherit", "inherit"],
});
process.exit(await child.exited);
