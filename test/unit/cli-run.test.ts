/**
 * `volt run` refuses bad input before it creates a VM: none of these needs
 * KVM, so they run here rather than in the (slow, nested) end-to-end suite.
 * Each names what is wrong and exits 2.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildBzImage, buildElf, PT_LOAD } from "./loader-fixtures.ts";

const root = join(import.meta.dir, "..", "..");
const work = mkdtempSync(join(tmpdir(), "volt-cli-run-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

function file(name: string, contents: string | Uint8Array): string {
  const path = join(work, name);
  writeFileSync(path, contents);
  return path;
}

// A well-formed bzImage header: validation gets past the kernel check to the option being tested.
const kernel = file("bzImage", buildBzImage());

function run(args: string[]) {
  const child = Bun.spawnSync(["bun", join(root, "src/cli/main.ts"), "run", ...args], {
    cwd: work,
    env: { ...process.env, NO_COLOR: "1" },
    // A VM that got built by mistake must not hang the suite: KVM here cannot boot this kernel anyway.
    timeout: 30_000,
  });
  return { exitCode: child.exitCode, stdout: child.stdout.toString(), stderr: child.stderr.toString() };
}

describe("volt run rejects bad input with exit 2 before creating a VM", () => {
  test.each([
    ["no kernel at all", [], "no kernel: give --kernel PATH"],
    ["a missing kernel", ["--kernel", "/no/such/kernel"], "cannot read kernel /no/such/kernel: no such file"],
    ["a file that is not a kernel", ["--kernel", "/etc/hostname"], "not a Linux kernel"],
    ["a truncated bzImage", ["--kernel", file("short-bzImage", buildBzImage({ truncateTo: 0x300 }))], "past the end of the file"],
    [
      "a truncated ELF vmlinux",
      ["--kernel", file("short-vmlinux", buildElf({ entry: 0x100_0000, segments: [{ type: PT_LOAD, paddr: 0x100_0000, data: new Uint8Array(4096) }] }).subarray(0, 1000))],
      "runs past the end of the file",
    ],
    [
      "a kernel too big for --mem",
      ["--kernel", file("big-vmlinux", buildElf({ entry: 0x100_0000, segments: [{ type: PT_LOAD, paddr: 0x100_0000, data: new Uint8Array(4096), memSize: 100 * 1024 * 1024 }] })), "--mem", "64"],
      "needs memory up to 116 MiB; give the VM more",
    ],
    ["a missing initrd", ["--kernel", kernel, "--initrd", "/no/such/initrd"], "cannot read initrd /no/such/initrd: no such file"],
    ["--mem 0", ["--kernel", kernel, "--mem", "0"], "mem 0 MiB"],
    ["--mem beyond the host's RAM", ["--kernel", kernel, "--mem", "999999999"], "more than this host's"],
    ["--vcpus 0", ["--kernel", kernel, "--vcpus", "0"], "vcpus must be a whole number from 1 to 64"],
    ["--vcpus 65", ["--kernel", kernel, "--vcpus", "65"], "vcpus must be a whole number from 1 to 64"],
    ["--mem that is not a number", ["--kernel", kernel, "--mem", "lots"], "--mem must be a whole number"],
    ["--on-reboot that is neither exit nor restart", ["--kernel", kernel, "--on-reboot", "maybe"], "--on-reboot must be exit or restart"],
    ["an unknown option", ["--kernel", kernel, "--memory", "64"], "unknown option '--memory'"],
    ["a missing config file", ["--config", "/no/such/vm.json"], "config /no/such/vm.json: cannot read it: no such file"],
    ["a config file that is not JSON", ["--config", file("broken.json", "{ vcpus: 2 ")], "not valid JSON"],
    ["a config field of the wrong type", ["--config", file("type.json", '{"kernel": "bzImage", "vcpus": "2"}')], "vcpus: must be a number"],
    ["a config field out of range", ["--config", file("range.json", '{"kernel": "bzImage", "memMiB": 0}')], "memMiB: must be at least 1 MiB"],
    ["an unknown config field", ["--config", file("unknown.json", '{"kernel": "bzImage", "memory": 64}')], "memory: unknown field"],
    // "$schema" (what editors add to use `volt config schema`) is accepted: the error is the next real one.
    ["a config with $schema and a bad field", ["--config", file("schema.json", '{"$schema": "./volt.schema.json", "vcpus": 0}')], "vcpus: must be a whole number"],
    ["a drive without a path", ["--kernel", kernel, "--drive", "ro"], "--drive 'ro': path=IMAGE is required"],
    ["a drive option with an unknown key", ["--kernel", kernel, "--drive", "path=x.img,cache=none"], "unknown key 'cache'"],
    ["a drive whose image is missing", ["--kernel", kernel, "--drive", "path=/no/such.img"], "virtio-blk /no/such.img: disk image /no/such.img"],
    ["a drive image that is a directory", ["--kernel", kernel, "--drive", `path=${work}`], "not a regular file or block device"],
    ["a drive image whose size is not whole sectors", ["--kernel", kernel, "--drive", `path=${file("odd.img", new Uint8Array(1000))}`], "not a multiple of 512"],
    [
      "two root drives",
      ["--kernel", kernel, "--drive", `path=${file("a.img", new Uint8Array(512))},root`, "--drive", `path=${file("b.img", new Uint8Array(512))},root`],
      "only one drive can be the root drive",
    ],
    ["a tap name that is too long", ["--kernel", kernel, "--net", "tap=averyveryverylongname"], "tap averyveryverylongname"],
    ["two --vsock devices", ["--kernel", kernel, "--vsock", "cid=3,uds=/tmp/a", "--vsock", "cid=4,uds=/tmp/b"], "--vsock can be given once"],
    ["a vsock socket path in a missing directory", ["--kernel", kernel, "--vsock", "cid=3,uds=/no/such/dir/v.sock"], "/no/such/dir/v.sock"],
    ["a config vsock with a bad CID", ["--config", file("vsock.json", '{"kernel": "bzImage", "vsock": {"guestCid": 1, "udsPath": "v.sock"}}')], "vsock.guestCid: must be at least 3"],
    ["a config drive without a path", ["--config", file("drive.json", '{"kernel": "bzImage", "drives": [{"readOnly": true}]}')], "drives[0].path: is required"],
    ["a config drive with an unknown field", ["--config", file("drive2.json", '{"kernel": "bzImage", "drives": [{"path": "a.img", "ro": true}]}')], "drives[0].ro: unknown field"],
  ])("%s", (_, args, message) => {
    const result = run(args as string[]);
    expect(result.stderr).toContain(message);
    expect(result.exitCode).toBe(2);
  });

  test("with --json the error is one JSON document on stdout naming the kind", () => {
    const result = run(["--config", file("json-out.json", '{"kernel": "bzImage", "onReboot": "never"}'), "--json"]);
    expect(result.exitCode).toBe(2);
    expect(JSON.parse(result.stdout)).toEqual({ ok: false, error: { kind: "config", message: expect.stringContaining('onReboot: must be "exit" or "restart"') } });
  });

  test("a config file's relative kernel path is relative to the file; a flag overrides the file", () => {
    const dir = mkdtempSync(join(work, "cfg-"));
    const config = join(dir, "vm.json");
    writeFileSync(config, JSON.stringify({ kernel: "missing-kernel", vcpus: 2 }));
    const fromFile = run(["--config", config]);
    expect(fromFile.stderr).toContain(`cannot read kernel ${join(dir, "missing-kernel")}: no such file`);
    expect(fromFile.exitCode).toBe(2);
    // The file's vcpus (2) is fine; the flag's 0 is what gets checked, so the flag won.
    const overridden = run(["--config", config, "--vcpus", "0"]);
    expect(overridden.stderr).toContain("vcpus must be a whole number from 1 to 64 (got 0)");
    expect(overridden.exitCode).toBe(2);
  });
});
