/**
 * The i8042 on a real guest: Linux's i8042 and atkbd drivers probe Volt's
 * controller and keyboard (with a full keyboard probe: no i8042.dumbkbd on
 * this command line), and Firecracker's SendCtrlAltDel, then Volt's own
 * PUT /vm/ctrl-alt-del, reach the guest as key presses. Also: `volt api` runs
 * its VM under the seccomp filter.
 *
 * Debian's kernel on purpose, whatever kernel the other tests use: Ctrl-Alt-Del
 * travels through the VT keyboard handler, which the minimal test kernel in
 * ../shared leaves out.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildInitramfs } from "../../src/image/initramfs.ts";
import { requireKvm } from "./kvm.ts";

const root = join(import.meta.dir, "..", "..");
const volt = join(root, "dist", "volt");
const work = mkdtempSync(join(tmpdir(), "vkb-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const kvmUsable = requireKvm();
const debianKernel = process.env.VOLT_TEST_BZIMAGE;

/** `volt api` on a socket, with its console collected and a Firecracker-style client. */
function apiProcess(name: string) {
  // A fresh name per call: a retried test must not find the socket file its killed predecessor left.
  const socket = join(mkdtempSync(join(work, `${name}-`)), "api.sock");
  const child = Bun.spawn([volt, "api", "--socket", socket], { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  let consoleText = "";
  const consoleDone = (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of child.stdout) consoleText += decoder.decode(chunk);
  })();
  const waitFor = async (pattern: RegExp, timeoutMs = 240_000) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const match = consoleText.match(pattern);
      if (match) return match;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${pattern}; console tail:\n${consoleText.slice(-3000)}`);
      await Bun.sleep(100);
    }
  };
  const api = async (method: string, path: string, body?: unknown) => {
    const response = await fetch(`http://localhost${path}`, {
      method,
      unix: socket,
      ...(body !== undefined ? { body: JSON.stringify(body), headers: { "content-type": "application/json" } } : {}),
    } as RequestInit);
    const text = await response.text();
    return { status: response.status, body: text === "" ? undefined : (JSON.parse(text) as Record<string, unknown>) };
  };
  const ready = async () => {
    for (let i = 0; !existsSync(socket); i++) {
      if (i > 300) throw new Error(`volt api did not create ${socket}`);
      await Bun.sleep(50);
    }
  };
  return { child, api, waitFor, ready, console: () => consoleText, consoleDone };
}

describe.skipIf(!kvmUsable)(`i8042 keyboard on a real guest (${process.env.VOLT_KVM_MODE ?? "unknown"} KVM)`, () => {
  test("Linux probes the controller and keyboard at once, and Ctrl-Alt-Del (Firecracker's action, then Volt's endpoint) makes it reboot", async () => {
    expect(debianKernel, "VOLT_TEST_BZIMAGE (Debian's kernel) is set by the harness").toBeDefined();
    const initrd = join(work, "tick.cpio.gz");
    // The script asks the kernel to hand Ctrl-Alt-Del to it (cad_pid, with ctrl-alt-del=0: what busybox and systemd
    // inits do), says so when it arrives, and then puts the kernel default back: the next press reboots at once.
    writeFileSync(
      initrd,
      buildInitramfs({
        script: [
          "trap 'echo VOLT-GOT-CTRL-ALT-DEL; echo 1 > /proc/sys/kernel/ctrl-alt-del' INT",
          "echo $$ > /proc/sys/kernel/cad_pid",
          "echo 0 > /proc/sys/kernel/ctrl-alt-del",
          'i=0; while true; do i=$((i+1)); echo "VOLT-TICK=$i"; sleep 1; done',
        ].join("\n"),
        exit: "poweroff",
      }),
    );
    const vm = apiProcess("cad");
    try {
      await vm.ready();
      expect(await vm.api("PUT", "/actions", { action_type: "SendCtrlAltDel" })).toMatchObject({ status: 400 });
      expect(await vm.api("PUT", "/machine-config", { vcpu_count: 1, mem_size_mib: 128 })).toEqual({ status: 204, body: undefined });
      // Not Volt's default command line: no i8042.dumbkbd/noaux/nomux, so atkbd probes the keyboard and the driver the AUX port.
      const bootArgs = "console=ttyS0 reboot=k panic=1 pci=off";
      expect(await vm.api("PUT", "/boot-source", { kernel_image_path: debianKernel, initrd_path: initrd, boot_args: bootArgs })).toEqual({ status: 204, body: undefined });
      expect(await vm.api("PUT", "/actions", { action_type: "InstanceStart" })).toEqual({ status: 204, body: undefined });
      await vm.waitFor(/VOLT-TICK=2\b/);
      // volt api filters its system calls from InstanceStart on, as volt run does.
      expect(readFileSync(`/proc/${vm.child.pid}/status`, "utf8")).toMatch(/^Seccomp:\s+2$/m);
      const boot = vm.console();
      // The IRQ number is Linux's mapping of GSI 1 (dynamic without a legacy PIC), so any number will do.
      expect(boot).toMatch(/serio: i8042 KBD port at 0x60,0x64 irq \d+/);
      expect(boot).toMatch(/input: AT (Raw|Translated) Set 2 keyboard/);
      expect(boot).not.toMatch(/Can't read CTR|i8042: .*timeout|atkbd.*(failed|timeout)/i);

      // Firecracker's action: the press reaches the script.
      expect(await vm.api("PUT", "/actions", { action_type: "SendCtrlAltDel" })).toEqual({ status: 204, body: undefined });
      await vm.waitFor(/VOLT-GOT-CTRL-ALT-DEL/, 60_000);

      // Paused: refused, and the VM runs on afterwards.
      expect(await vm.api("PATCH", "/vm", { state: "Paused" })).toEqual({ status: 204, body: undefined });
      expect(await vm.api("PUT", "/vm/ctrl-alt-del")).toMatchObject({ status: 409, body: { error: { kind: "state" } } });
      expect(await vm.api("PATCH", "/vm", { state: "Resumed" })).toEqual({ status: 204, body: undefined });
      const ticked = Number(vm.console().match(/VOLT-TICK=(\d+)(?![\s\S]*VOLT-TICK)/)?.[1]);
      await vm.waitFor(new RegExp(`VOLT-TICK=${ticked + 1}\\b`), 60_000);

      // Volt's endpoint, with the kernel's default back: Linux restarts the machine and Volt ends the VM.
      expect(await vm.api("PUT", "/vm/ctrl-alt-del")).toMatchObject({ status: 200, body: { ok: true, sent: "ctrl-alt-del" } });
      const exited = await Promise.race([vm.child.exited, Bun.sleep(120_000).then(() => "still running" as const)]);
      await vm.consoleDone;
      expect({ exited, console: vm.console().slice(-600) }).toMatchObject({ exited: 0, console: expect.stringMatching(/reboot: Restarting system/) });
      expect(vm.console().match(/VOLT-GOT-CTRL-ALT-DEL/g)).toHaveLength(1);
    } finally {
      vm.child.kill("SIGKILL");
    }
  }, 600_000);
});
