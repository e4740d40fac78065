/**
 * Volt's main job on a fresh machine: boot a microVM with the default kernel
 * and userland. The first time, `volt kernel fetch --default` puts Debian's
 * kernel (and the modules its guests need) in Volt's kernel store; then
 * `volt run` with no kernel and no initrd boots that kernel with a busybox
 * shell on the serial console. Leave the shell (exit or Ctrl-D) and the guest
 * reboots, which ends volt with 0.
 *
 *   bun tools/run-default-vm.ts [extra volt run options, e.g. --vcpus 2 --mem 512]
 */
import { join, resolve } from "node:path";

const volt = join(resolve(import.meta.dir, ".."), "dist", "volt");

const listed = Bun.spawnSync([volt, "kernel", "list", "--json"], { stderr: "inherit" });
const store = JSON.parse(listed.stdout.toString() || "{}") as { default?: string | null };
if (!store.default) {
  console.error("volt-default: no default kernel yet: fetching Debian's (once)");
  const fetched = Bun.spawnSync([volt, "kernel", "fetch", "--default"], { stdio: ["inherit", "inherit", "inherit"] });
  if (fetched.exitCode !== 0) process.exit(fetched.exitCode ?? 1);
}
const child = Bun.spawn([volt, "run", ...process.argv.slice(2)], { stdio: ["inherit", "inherit", "inherit"] });
process.exit(await child.exited);
