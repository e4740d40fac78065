/**
 * Snapshot and restore on real KVM: a guest that counts on its console is
 * snapshotted through the control API, the original is killed, and restores
 * in new processes carry on where it was.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildInitramfs } from "../../src/image/initramfs.ts";
import { requireKvm, sandboxViolations } from "./kvm.ts";

const root = join(import.meta.dir, "..", "..");
const volt = join(root, "dist", "volt");
const work = mkdtempSync(join(tmpdir(), "volt-snapshot-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const kvmUsable = requireKvm();
/** The kernel log before these VMs ran: they run sandboxed (Volt's default) and must add no violation. */
const violationsBefore = kvmUsable ? sandboxViolations().length : 0;
const kernel = process.env.VOLT_TEST_VMLINUX ?? process.env.VOLT_TEST_BZIMAGE;
const modules = (process.env.VOLT_TEST_VMLINUX_MODULES ?? "").split(":").filter((m) => m !== "");

/** Counts once a second; each line carries a value kept in guest RAM; a line typed on the console is echoed. */
function counterScript(withDisk: boolean): string {
  return `
${withDisk ? "mkdir -p /mnt && mount -t ext4 /dev/vda /mnt && echo VOLT-MOUNTED" : ""}
echo "marker-$(cat /proc/sys/kernel/random/uuid)" > /tmp/marker
i=0
while [ $i -lt 600 ]; do
  i=$((i+1))
  echo "VOLT-COUNT=$i $(cat /tmp/marker)"
  ${withDisk ? "echo $i >> /mnt/counts; sync" : ""}
  if read -t 1 line; then echo "VOLT-GOT=$line"; fi
done
`;
}

interface Watched {
  readonly child: Bun.Subprocess<"pipe", "pipe", "pipe">;
  console: string;
  readonly exited: Promise<{ exitCode: number; stdout: string }>;
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
}

function watch(args: string[]): Watched {
  const child = Bun.spawn([volt, ...args], { stdin: "pipe", stdout: "pipe", stderr: "pipe" });
  const waiters: { pattern: RegExp; resolve: (m: RegExpMatchArray) => void }[] = [];
  const state: { console: string } = { console: "" };
  const watched: Watched = {
    child,
    get console() {
      return state.console;
    },
    exited: (async () => {
      const decoder = new TextDecoder();
      for await (const chunk of child.stderr) {
        state.console += decoder.decode(chunk);
        for (const waiter of [...waiters]) {
          const match = state.console.match(waiter.pattern);
          if (match) {
            waiters.splice(waiters.indexOf(waiter), 1);
            waiter.resolve(match);
          }
        }
      }
      const exitCode = await child.exited;
      return { exitCode, stdout: await new Response(child.stdout).text() };
    })(),
    waitFor(pattern, timeoutMs = 180_000) {
      const match = state.console.match(pattern);
      if (match) return Promise.resolve(match);
      return new Promise((resolve, reject) => {
        waiters.push({ pattern, resolve });
        setTimeout(() => reject(new Error(`timed out waiting for ${pattern}; console tail:\n${state.console.slice(-2000)}`)), timeoutMs);
      });
    },
  };
  return watched;
}

function voltSync(args: string[]) {
  const result = Bun.spawnSync([volt, ...args], { timeout: 120_000 });
  return { exitCode: result.exitCode, stdout: result.stdout.toString(), stderr: result.stderr.toString() };
}

/** Like voltSync, but the event loop keeps reading the other VMs' consoles meanwhile. */
async function voltAsync(args: string[]) {
  const child = Bun.spawn([volt, ...args], { stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr, exitCode] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  return { exitCode, stdout, stderr };
}

/**
 * Snapshots `vm` through `socket` and brackets the count the guest was at: at
 * least what it printed before the request, at most what it printed by the
 * time the answer came (the guest runs on while the capture is requested).
 */
async function snapshotBracketed(vm: Watched, args: string[]) {
  const lower = Math.max(0, ...counts(vm.console));
  const result = await voltAsync(args);
  await Bun.sleep(300); // let the console reader catch up with lines printed before the answer
  const upper = Math.max(0, ...counts(vm.console));
  return { result, lower, upper };
}

/** A whole count line (the marker read from RAM included), so a line cut between two reads is not taken for one. */
const COMPLETE_COUNT_LINE = /VOLT-COUNT=(\d+) marker-[0-9a-f-]{36}\r?\n/;

function counts(console: string): number[] {
  return [...console.matchAll(/VOLT-COUNT=(\d+) (marker-[0-9a-f-]{36})/g)].map((m) => Number(m[1]));
}

function markers(console: string): Set<string> {
  return new Set([...console.matchAll(/VOLT-COUNT=\d+ (marker-[0-9a-f-]{36})/g)].map((m) => m[1]!));
}

function sha256File(path: string): string {
  return createHash("sha256").update(readFileSync(path)).digest("hex");
}

/** Boots the counter guest, waits for a few counts, snapshots it through the API and kills it. */
async function bootAndSnapshot(name: string, extraArgs: string[], withDisk: boolean) {
  const initrd = join(work, `${name}.cpio.gz`);
  writeFileSync(initrd, buildInitramfs({ script: counterScript(withDisk), exit: "poweroff", modules }));
  const socket = join(work, `${name}.sock`);
  // Disk snapshots under the sandbox go only where --snapshot-dir allows.
  const original = watch(["run", "--kernel", kernel!, "--initrd", initrd, "--mem", "128", "--api-socket", socket, "--snapshot-dir", work, "--json", ...extraArgs]);
  await original.waitFor(/VOLT-COUNT=3 /);
  // The running VM's metrics: exits by kind (the console is port I/O), and the drive's counters when it has one.
  const metrics = (await (await fetch("http://volt/metrics", { unix: socket } as RequestInit)).json()) as {
    exitsTotal: number;
    vcpus: { exits: { io: number } }[];
    devices: { kind: string; writes?: number; flushes?: number }[];
  };
  expect(metrics.exitsTotal).toBeGreaterThan(0);
  expect(metrics.vcpus[0]!.exits.io).toBeGreaterThan(0);
  if (withDisk) {
    const block = metrics.devices[0] as { kind?: string; writes?: unknown } | undefined;
    if (typeof block?.writes !== "number" || block.writes <= 0) console.error(`metrics: ${JSON.stringify(metrics)}`);
    expect(block?.kind).toBe("block");
    expect(typeof block?.writes).toBe("number");
    expect(block!.writes as number).toBeGreaterThan(0);
  }
  const dir = join(work, `${name}-snap`);
  const { result: created, lower, upper } = await snapshotBracketed(original, ["snapshot", "create", "--api-socket", socket, dir, "--json"]);
  if (created.exitCode !== 0) console.error(created.stderr);
  expect(created.exitCode).toBe(0);
  expect(JSON.parse(created.stdout)).toMatchObject({ ok: true, snapshot: { dir } });
  // Under the sandbox the API refuses a snapshot outside --snapshot-dir (the process could not write there anyway).
  const outside = await voltAsync(["snapshot", "create", "--api-socket", socket, join(tmpdir(), `volt-outside-${process.pid}`)]);
  expect(outside.exitCode).toBe(2);
  expect(outside.stderr).toContain("the sandbox does not let this VM write to");
  // The original runs on after the snapshot...
  await original.waitFor(new RegExp(`VOLT-COUNT=${upper + 1} `));
  // ...until it is killed: restores must not need it.
  original.child.kill("SIGKILL");
  await original.exited;
  return { dir, lower, upper, marker: [...markers(original.console)][0]!, socket };
}

describe.skipIf(!kvmUsable)(`snapshot and restore (${process.env.VOLT_KVM_MODE ?? "unknown"} KVM)`, () => {
  test("a restored guest continues its count and its RAM, keeps using its disk; an existing snapshot is not overwritten", async () => {
    const tree = join(work, "tree");
    mkdirSync(tree);
    const disk = join(work, "disk.ext4");
    const mkfs = Bun.spawnSync(["mkfs.ext4", "-q", "-F", "-d", tree, disk, "16M"]);
    expect(mkfs.exitCode).toBe(0);
    const { dir, lower, upper, marker } = await bootAndSnapshot("counter", ["--drive", `path=${disk}`], true);

    const again = voltSync(["snapshot", "create", "--api-socket", join(work, "counter.sock"), dir]);
    expect(again.exitCode).toBe(2); // the original is gone: nothing to reach
    const inspect = voltSync(["snapshot", "inspect", dir, "--json"]);
    expect(JSON.parse(inspect.stdout)).toMatchObject({ ok: true, snapshot: { vcpus: 1, memorySizeBytes: 128 * 1024 * 1024, devices: ["block"] } });

    const restored = watch(["snapshot", "restore", dir, "--json"]);
    const firstCount = Number((await restored.waitFor(COMPLETE_COUNT_LINE))[1]);
    // Where it was, not from the start: within what the original printed around the snapshot request.
    expect(firstCount).toBeGreaterThanOrEqual(lower);
    expect(firstCount).toBeLessThanOrEqual(upper + 1);
    // The value in guest RAM came back.
    expect(markers(restored.console)).toEqual(new Set([marker]));
    await restored.waitFor(new RegExp(`VOLT-COUNT=${firstCount + 2} `));
    restored.child.kill("SIGTERM");
    const { exitCode, stdout } = await restored.exited;
    expect(exitCode).toBe(143);
    expect(JSON.parse(stdout)).toMatchObject({ outcome: "signal", restoredFrom: dir });
    // The restored guest kept writing its counts to the same disk.
    const logged = Bun.spawnSync(["debugfs", "-R", "cat /counts", disk]).stdout.toString().trim().split("\n").map(Number);
    expect(Math.max(...logged)).toBeGreaterThanOrEqual(firstCount + 1);
  });

  test("two restores of one snapshot run at once and diverge; the memory file is unchanged", async () => {
    const { dir, marker } = await bootAndSnapshot("clones", [], false);
    const memoryBefore = sha256File(join(dir, "memory.raw"));
    const a = watch(["snapshot", "restore", dir, "--json"]);
    const b = watch(["snapshot", "restore", dir, "--json"]);
    await Promise.all([a.waitFor(/VOLT-COUNT=\d+ /), b.waitFor(/VOLT-COUNT=\d+ /)]);
    a.child.stdin.write("alpha\n");
    a.child.stdin.flush();
    b.child.stdin.write("beta\n");
    b.child.stdin.flush();
    await Promise.all([a.waitFor(/VOLT-GOT=alpha/), b.waitFor(/VOLT-GOT=beta/)]);
    a.child.kill("SIGTERM");
    b.child.kill("SIGTERM");
    await Promise.all([a.exited, b.exited]);
    expect(a.console).not.toContain("VOLT-GOT=beta");
    expect(b.console).not.toContain("VOLT-GOT=alpha");
    expect(markers(a.console)).toEqual(new Set([marker]));
    expect(markers(b.console)).toEqual(new Set([marker]));
    expect(sha256File(join(dir, "memory.raw"))).toBe(memoryBefore);
  });

  test("an in-memory snapshot is cloned by another process without touching disk; the original runs on", async () => {
    const initrd = join(work, "inmem.cpio.gz");
    writeFileSync(initrd, buildInitramfs({ script: counterScript(false), exit: "poweroff", modules }));
    const socket = join(work, "inmem.sock");
    const original = watch(["run", "--kernel", kernel!, "--initrd", initrd, "--mem", "128", "--api-socket", socket, "--json"]);
    await original.waitFor(/VOLT-COUNT=3 /);
    const { result: created, lower, upper } = await snapshotBracketed(original, ["snapshot", "create", "--api-socket", socket, "--in-memory", "--json"]);
    if (created.exitCode !== 0) console.error(created.stderr);
    const { snapshot } = JSON.parse(created.stdout) as { snapshot: { id: string; memoryFileSize: number } };
    expect(snapshot.id).toMatch(/^mem-\d+$/);
    expect(snapshot.memoryFileSize).toBe(128 * 1024 * 1024);
    const marker = [...markers(original.console)][0]!;

    const clone = watch(["snapshot", "clone", "--from", socket, snapshot.id, "--json"]);
    const firstCount = Number((await clone.waitFor(COMPLETE_COUNT_LINE))[1]);
    expect(firstCount).toBeGreaterThanOrEqual(lower);
    expect(firstCount).toBeLessThanOrEqual(upper + 1);
    expect(markers(clone.console)).toEqual(new Set([marker]));
    // The original was not disturbed: it keeps counting too.
    const originalNow = Math.max(...counts(original.console));
    await original.waitFor(new RegExp(`VOLT-COUNT=${originalNow + 1} `));
    clone.child.kill("SIGTERM");
    const cloned = await clone.exited;
    expect(JSON.parse(cloned.stdout)).toMatchObject({ outcome: "signal", clonedFrom: `${socket}#${snapshot.id}` });
    console.log(`in-memory clone: VM built in ${JSON.parse(cloned.stdout).restoreMs.toFixed(0)} ms after the command started`);
    // An unknown id is a clear error, not a VM.
    const unknown = voltSync(["snapshot", "clone", "--from", socket, "mem-999"]);
    expect(unknown.exitCode).toBe(2);
    expect(unknown.stderr).toContain("no in-memory snapshot mem-999");
    original.child.kill("SIGTERM");
    await original.exited;
  });

  test("a chunk store shares what two VMs booted from the same kernel and initramfs have in common; a chunked snapshot restores", async () => {
    const store = join(work, "chunk-store");
    const initrd = join(work, "chunked.cpio.gz");
    writeFileSync(initrd, buildInitramfs({ script: counterScript(false), exit: "poweroff", modules }));
    const boot = async (name: string) => {
      const socket = join(work, `${name}.sock`);
      const vm = watch(["run", "--kernel", kernel!, "--initrd", initrd, "--mem", "128", "--api-socket", socket, "--snapshot-dir", work, "--json"]);
      await vm.waitFor(/VOLT-COUNT=2 /);
      return { vm, socket };
    };
    // One after the other: two nested guests booting at once on a loaded L1 are slow and have hung in early boot.
    const first = await boot("chunked-a");
    const second = await boot("chunked-b");
    const snap = async (vm: Watched, socket: string, dir: string) => {
      const { result, lower } = await snapshotBracketed(vm, ["snapshot", "create", "--api-socket", socket, dir, "--chunk-store", store, "--json"]);
      if (result.exitCode !== 0) console.error(result.stderr);
      expect(result.exitCode).toBe(0);
      type Chunked = { memoryFileSize: number; chunks: { chunks: number; newChunks: number; reusedChunks: number; zeroChunks: number; bytesWritten: number; bytesDeduplicated: number } };
      return { ...(JSON.parse(result.stdout).snapshot as Chunked), lower };
    };
    const a = await snap(first.vm, first.socket, join(work, "chunked-a-snap"));
    const b = await snap(second.vm, second.socket, join(work, "chunked-b-snap"));
    const countAtSnapshot = b.lower;
    for (const vm of [first.vm, second.vm]) vm.child.kill("SIGKILL");
    await Promise.all([first.vm.exited, second.vm.exited]);

    const logical = a.memoryFileSize + b.memoryFileSize;
    const stored = a.chunks.bytesWritten + b.chunks.bytesWritten;
    const ratio = logical / stored;
    console.log(
      `chunk store: ${(logical / 2 ** 20).toFixed(0)} MiB of guest memory in ${(stored / 2 ** 20).toFixed(1)} MiB of chunks (dedup ratio ${ratio.toFixed(2)}); ` +
        `second VM reused ${b.chunks.reusedChunks} of ${b.chunks.chunks - b.chunks.zeroChunks} non-zero chunks`,
    );
    expect(b.chunks.reusedChunks).toBeGreaterThan(0);
    expect(ratio).toBeGreaterThan(1);

    const restored = watch(["snapshot", "restore", join(work, "chunked-b-snap"), "--json"]);
    const firstCount = Number((await restored.waitFor(COMPLETE_COUNT_LINE))[1]);
    expect(firstCount).toBeGreaterThanOrEqual(countAtSnapshot);
    restored.child.kill("SIGTERM");
    expect((await restored.exited).exitCode).toBe(143);
  });
  test("the sandboxed VMs above caused no seccomp kill or Landlock denial in the kernel log", () => {
    expect(sandboxViolations().slice(violationsBefore)).toEqual([]);
  });
});
