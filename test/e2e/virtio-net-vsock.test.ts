/**
 * virtio-net and virtio-vsock on a real guest, in one boot. The host side of
 * the network is a TAP inside a network namespace the test creates (volt runs
 * in it, so the tap is born there and no traffic leaves the machine); the
 * host side of vsock is volt's Unix socket. A small static helper (xfer.c,
 * built here) moves files over TCP and vsock on both sides; every transfer is
 * checked by its SHA-256 against the bytes sent.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildInitramfs } from "../../src/image/initramfs.ts";
import { requireKvm, sandboxViolations } from "./kvm.ts";

const root = join(import.meta.dir, "..", "..");
const volt = join(root, "dist", "volt");
const work = mkdtempSync(join(tmpdir(), "volt-netvsock-"));
const namespace = `volt-e2e-${process.pid}`;
afterAll(() => {
  Bun.spawnSync(["ip", "netns", "delete", namespace]);
  rmSync(work, { recursive: true, force: true });
});

const kvmUsable = requireKvm();
/** The kernel log before these VMs ran: they run sandboxed (Volt's default) and must add no violation. */
const violationsBefore = kvmUsable ? sandboxViolations().length : 0;
const kernel = process.env.VOLT_TEST_VMLINUX ?? process.env.VOLT_TEST_BZIMAGE;
const modules = (process.env.VOLT_TEST_VMLINUX_MODULES ?? "").split(":").filter((m) => m !== "");
const MiB = 1024 * 1024;
const TAP = "vtap0";
const HOST_IP = "10.0.2.1";
const GUEST_IP = "10.0.2.2";

function sh(command: string[]): string {
  const result = Bun.spawnSync(command);
  if (result.exitCode !== 0) throw new Error(`${command.join(" ")}: ${result.stderr.toString()}`);
  return result.stdout.toString();
}

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

const GUEST_SCRIPT = `
set -u
ip link set lo up
ip link set eth0 up && ip addr add ${GUEST_IP}/24 dev eth0 && echo VOLT-NET-UP
# host -> guest over TCP, and host -> guest over vsock, both into files the guest hashes
xfer tcp-recv 5002 /tmp/tcp-in > /tmp/tcp-in.log 2>&1 &
tcp_in=$!
xfer vsock-recv 1234 /tmp/vsock-in > /tmp/vsock-in.log 2>&1 &
vsock_in=$!
sleep 1
echo VOLT-LISTENING
# guest -> host: 4 MiB over TCP, 1 MiB over vsock (to host port 5000 = <uds>_5000)
dd if=/dev/urandom of=/tmp/tcp-out bs=1M count=4 2>/dev/null
dd if=/dev/urandom of=/tmp/vsock-out bs=1M count=1 2>/dev/null
echo "VOLT-TCP-OUT-SHA=$(sha256sum /tmp/tcp-out | cut -d' ' -f1)"
echo "VOLT-VSOCK-OUT-SHA=$(sha256sum /tmp/vsock-out | cut -d' ' -f1)"
xfer tcp-send ${HOST_IP} 5001 /tmp/tcp-out && echo VOLT-TCP-SENT
xfer vsock-send 2 5000 /tmp/vsock-out && echo VOLT-VSOCK-SENT
wait $tcp_in; echo "VOLT-TCP-IN-SHA=$(sha256sum /tmp/tcp-in | cut -d' ' -f1)"
wait $vsock_in; echo "VOLT-VSOCK-IN-SHA=$(sha256sum /tmp/vsock-in | cut -d' ' -f1)"
echo VOLT-NETVSOCK-DONE
`;

describe.skipIf(!kvmUsable)(`virtio-net and virtio-vsock on a real guest (${process.env.VOLT_KVM_MODE ?? "unknown"} KVM)`, () => {
  test("environment provides a guest kernel", () => {
    expect(kernel).toBeDefined();
  });

  test("TCP both ways over a TAP in a private namespace, and vsock both ways, arrive intact", async () => {
    const xfer = join(work, "xfer");
    sh(["gcc", "-static", "-O2", "-o", xfer, join(import.meta.dir, "guest", "xfer.c")]);
    sh(["ip", "netns", "add", namespace]);
    sh(["ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up"]);

    const initrd = join(work, "netvsock.cpio.gz");
    writeFileSync(initrd, buildInitramfs({ script: GUEST_SCRIPT, exit: "poweroff", modules, files: [{ hostPath: xfer, archivePath: "/bin/xfer", mode: 0o755 }] }));
    const uds = join(work, "vm.vsock");

    // Host-side data for the host -> guest transfers.
    const tcpToGuest = join(work, "tcp-to-guest");
    writeFileSync(tcpToGuest, randomBytes(3 * MiB));
    const vsockToGuest = randomBytes(MiB);
    // Guest -> host: the TCP receiver in the namespace, and the vsock listener on <uds>_5000.
    const tcpFromGuest = join(work, "tcp-from-guest");
    const vsockChunks: Uint8Array[] = [];
    const vsockDone = Promise.withResolvers<void>();
    const listener = Bun.listen({
      unix: `${uds}_5000`,
      socket: {
        data: (_socket, data) => void vsockChunks.push(new Uint8Array(data)),
        end: () => vsockDone.resolve(),
        close: () => vsockDone.resolve(),
      },
    });

    const child = Bun.spawn(
      ["ip", "netns", "exec", namespace, volt, "run", "--kernel", kernel!, "--initrd", initrd, "--mem", "256", "--net", `tap=${TAP}`, "--vsock", `cid=3,uds=${uds}`, "--json"],
      { stdin: "ignore", stdout: "pipe", stderr: "pipe" },
    );
    const timer = setTimeout(() => child.kill("SIGKILL"), 300_000);
    let console = "";
    let tapConfigured = false;
    const steps: Promise<unknown>[] = [];
    let listening = false;
    const decoder = new TextDecoder();
    for await (const chunk of child.stderr) {
      console += decoder.decode(chunk);
      if (!tapConfigured && console.includes("VOLT-NET-UP")) {
        tapConfigured = true;
        sh(["ip", "netns", "exec", namespace, "ip", "addr", "add", `${HOST_IP}/24`, "dev", TAP]);
        sh(["ip", "netns", "exec", namespace, "ip", "link", "set", TAP, "up"]);
        steps.push(Bun.spawn(["ip", "netns", "exec", namespace, xfer, "tcp-recv", "5001", tcpFromGuest]).exited);
      }
      if (!listening && console.includes("VOLT-LISTENING")) {
        listening = true;
        steps.push(Bun.spawn(["ip", "netns", "exec", namespace, xfer, "tcp-send", GUEST_IP, "5002", tcpToGuest]).exited);
        steps.push(sendOverVsock(uds, 1234, vsockToGuest));
      }
    }
    clearTimeout(timer);
    const exitCode = await child.exited;
    const outcome = await new Response(child.stdout).text();
    const stepResults = await Promise.all(steps.map((s) => s.catch((e: Error) => e.message)));
    listener.stop(true);
    if (!console.includes("VOLT-NETVSOCK-DONE")) globalThis.console.error(`exit ${exitCode}, steps ${JSON.stringify(stepResults)}, outcome ${outcome}\n${console.slice(-4000)}`);

    expect(console).toContain("VOLT-NET-UP");
    expect(console).toContain("VOLT-TCP-SENT");
    expect(console).toContain("VOLT-VSOCK-SENT");
    const shaOf = (marker: string) => console.match(new RegExp(`${marker}=([0-9a-f]{64})`))?.[1];
    // guest -> host
    expect(existsSync(tcpFromGuest)).toBe(true);
    expect(sha256(readFileSync(tcpFromGuest))).toBe(shaOf("VOLT-TCP-OUT-SHA")!);
    await vsockDone.promise;
    const vsockReceived = Buffer.concat(vsockChunks);
    expect(vsockReceived.byteLength).toBe(MiB);
    expect(sha256(vsockReceived)).toBe(shaOf("VOLT-VSOCK-OUT-SHA")!);
    // host -> guest
    expect(shaOf("VOLT-TCP-IN-SHA")).toBe(sha256(readFileSync(tcpToGuest)));
    expect(shaOf("VOLT-VSOCK-IN-SHA")).toBe(sha256(vsockToGuest));
    expect(JSON.parse(outcome)).toMatchObject({ ok: true, outcome: "poweroff" });
    expect(exitCode).toBe(0);
  });
  test("the sandboxed VMs above caused no seccomp kill or Landlock denial in the kernel log", () => {
    expect(sandboxViolations().slice(violationsBefore)).toEqual([]);
  });
});

/** Firecracker's host-initiated vsock: connect to the Unix socket, "CONNECT <port>\n", read "OK <n>\n", then stream. */
async function sendOverVsock(uds: string, port: number, data: Uint8Array): Promise<void> {
  const acknowledged = Promise.withResolvers<void>();
  let reply = "";
  const socket = await Bun.connect({
    unix: uds,
    socket: {
      data(_socket, chunk) {
        reply += new TextDecoder().decode(chunk);
        if (reply.includes("\n")) {
          if (reply.startsWith("OK ")) acknowledged.resolve();
          else acknowledged.reject(new Error(`vsock CONNECT answered ${JSON.stringify(reply)}`));
        }
      },
      close: () => acknowledged.reject(new Error(`vsock closed before OK (got ${JSON.stringify(reply)})`)),
    },
  });
  socket.write(`CONNECT ${port}\n`);
  await acknowledged.promise;
  let sent = 0;
  while (sent < data.byteLength) {
    const wrote = socket.write(data.subarray(sent));
    sent += wrote;
    if (wrote === 0) await Bun.sleep(5);
  }
  socket.flush();
  socket.shutdown();
  await Bun.sleep(10);
}
