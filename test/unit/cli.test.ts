/** The volt command line without a guest: help, bad input, a missing KVM device, and the compiled binary. */
import { beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const root = join(import.meta.dir, "..", "..");

function volt(args: string[], command = ["bun", join(root, "src/cli/main.ts")], cwd = root) {
  const child = Bun.spawnSync([...command, ...args], { cwd, env: { ...process.env, NO_COLOR: "1" } });
  return { exitCode: child.exitCode, stdout: child.stdout.toString(), stderr: child.stderr.toString() };
}

describe("volt CLI", () => {
  test("--help names the commands", () => {
    const result = volt(["--help"]);
    expect(result.exitCode).toBe(0);
    expect(result.stdout).toContain("kvm-check");
  });

  test("an unknown option is refused with exit 2 and its name", () => {
    const result = volt(["kvm-check", "--smok"]);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain("unknown option '--smok'");
  });

  test("a missing KVM device: exit 3, a message naming it, and a JSON error for scripts", () => {
    const result = volt(["kvm-check", "--device", "/nonexistent/kvm", "--json"]);
    expect(result.exitCode).toBe(3);
    expect(result.stderr).toContain("cannot open /nonexistent/kvm");
    const json = JSON.parse(result.stdout);
    expect(json).toEqual({ ok: false, error: { kind: "kvm-unavailable", message: expect.stringContaining("/nonexistent/kvm") } });
  });

  test("a KVM device that is not KVM is reported, not crashed on", () => {
    const result = volt(["kvm-check", "--device", "/dev/null"]);
    expect(result.exitCode).toBe(3);
    expect(result.stderr).toContain("/dev/null is not a KVM device (KVM_GET_API_VERSION: ENOTTY)");
  });
});

describe("compiled dist/volt", () => {
  let dir: string;
  beforeAll(() => {
    const build = Bun.spawnSync(["bun", "build.ts"], { cwd: root, stdout: "inherit", stderr: "inherit" });
    expect(build.exitCode).toBe(0);
    // A directory with no node_modules and no sources: the binary must carry everything.
    dir = mkdtempSync(join(tmpdir(), "volt-bin-"));
    copyFileSync(join(root, "dist/volt"), join(dir, "volt"));
    Bun.spawnSync(["chmod", "+x", join(dir, "volt")]);
    return () => rmSync(dir, { recursive: true, force: true });
  });

  test("--help and --version work from a directory without node_modules", () => {
    const help = volt(["--help"], [join(dir, "volt")], dir);
    expect(help.exitCode).toBe(0);
    expect(help.stdout).toContain("kvm-check");
    const version = volt(["--version"], [join(dir, "volt")], dir);
    expect(version.stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
  });

  test("kvm-check without KVM: clear error and exit 3", () => {
    const result = volt(["kvm-check", "--device", "/nonexistent/kvm"], [join(dir, "volt")], dir);
    expect(result.exitCode).toBe(3);
    expect(result.stderr).toContain("cannot open /nonexistent/kvm");
  });
});
