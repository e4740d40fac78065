/**
 * Devices on the command line, in the key=value style QEMU and Cloud
 * Hypervisor users know:
 *   --drive path=IMAGE[,ro][,root][,id=SERIAL][,bps=BYTES_PER_S][,iops=N]
 *   --net tap=NAME[,mac=52:54:00:12:34:56][,rx-bps=N][,tx-bps=N]
 *   --vsock cid=N,uds=PATH
 * A path that contains a comma needs the config file instead.
 */
import type { VirtioDeviceSpec } from "../devices/virtio/factory.ts";

export type DriveSpec = Extract<VirtioDeviceSpec, { kind: "block" }>;
export type NetSpec = Extract<VirtioDeviceSpec, { kind: "net" }>;
export type VsockSpec = Extract<VirtioDeviceSpec, { kind: "vsock" }>;

export class DriveOptionError extends Error {
  override name = "DriveOptionError";
}

/** Splits "k=v,flag,k2=v2" into entries, refusing keys not in `known` (naming the option and the key). */
function keyValues(option: string, text: string, known: readonly string[]): Map<string, string | undefined> {
  const entries = new Map<string, string | undefined>();
  for (const part of text.split(",")) {
    const [key = "", ...rest] = part.split("=");
    if (!known.includes(key)) throw new DriveOptionError(`--${option} '${text}': unknown key '${key}' (known: ${known.join(", ")})`);
    entries.set(key, rest.length > 0 ? rest.join("=") : undefined);
  }
  return entries;
}

/** "bps=1048576": a bucket of that many tokens refilling every second. */
function perSecond(option: string, text: string, key: string, value: string | undefined) {
  if (value === undefined || !/^\d+$/.test(value) || Number(value) < 1) throw new DriveOptionError(`--${option} '${text}': ${key}= must be a whole number above 0`);
  return { size: Number(value), refillTimeMs: 1000 };
}

export function parseNetOption(text: string): NetSpec {
  const entries = keyValues("net", text, ["tap", "mac", "rx-bps", "tx-bps"]);
  const tap = entries.get("tap");
  if (!tap) throw new DriveOptionError(`--net '${text}': tap=NAME is required`);
  const mac = entries.get("mac");
  if (entries.has("mac") && !mac) throw new DriveOptionError(`--net '${text}': mac= needs an address`);
  const rx = entries.has("rx-bps") ? { rxRateLimit: { bandwidth: perSecond("net", text, "rx-bps", entries.get("rx-bps")) } } : {};
  const tx = entries.has("tx-bps") ? { txRateLimit: { bandwidth: perSecond("net", text, "tx-bps", entries.get("tx-bps")) } } : {};
  return { kind: "net", tap, ...(mac ? { mac } : {}), ...rx, ...tx };
}

export function parseVsockOption(text: string): VsockSpec {
  const entries = keyValues("vsock", text, ["cid", "uds"]);
  const cid = entries.get("cid");
  const uds = entries.get("uds");
  if (!cid || !/^\d+$/.test(cid) || Number(cid) < 3 || Number(cid) > 0xffff_fffe) {
    throw new DriveOptionError(`--vsock '${text}': cid=N must be a whole number from 3 to 4294967294`);
  }
  if (!uds) throw new DriveOptionError(`--vsock '${text}': uds=PATH is required`);
  return { kind: "vsock", guestCid: Number(cid), udsPath: uds };
}

export function parseDriveOption(text: string): DriveSpec {
  let path: string | undefined;
  let readOnly = false;
  let root = false;
  let id: string | undefined;
  const limits: { bandwidth?: { size: number; refillTimeMs: number }; ops?: { size: number; refillTimeMs: number } } = {};
  for (const part of text.split(",")) {
    const [key, ...rest] = part.split("=");
    const value = rest.join("=");
    const hasValue = rest.length > 0;
    switch (key) {
      case "path":
        if (!hasValue || value === "") throw new DriveOptionError(`--drive '${text}': path= needs a file`);
        path = value;
        break;
      case "ro":
      case "readonly":
        if (hasValue && value !== "on" && value !== "true") throw new DriveOptionError(`--drive '${text}': ${key} takes no value`);
        readOnly = true;
        break;
      case "root":
        if (hasValue) throw new DriveOptionError(`--drive '${text}': root takes no value`);
        root = true;
        break;
      case "id":
        if (!hasValue || value === "") throw new DriveOptionError(`--drive '${text}': id= needs a value`);
        id = value;
        break;
      case "bps":
        limits.bandwidth = perSecond("drive", text, key, value);
        break;
      case "iops":
        limits.ops = perSecond("drive", text, key, value);
        break;
      default:
        throw new DriveOptionError(`--drive '${text}': unknown key '${key}' (known: path, ro, root, id, bps, iops)`);
    }
  }
  if (path === undefined) throw new DriveOptionError(`--drive '${text}': path=IMAGE is required`);
  const rateLimit = limits.bandwidth || limits.ops ? { rateLimit: limits } : {};
  return { kind: "block", path, readOnly, ...(root ? { root } : {}), ...(id !== undefined ? { id } : {}), ...rateLimit };
}

/** Every value of a repeatable `--name VALUE` / `--name=VALUE` option, in order (citty keeps only one). */
export function repeatedOption(rawArgs: readonly string[], name: string): string[] {
  const values: string[] = [];
  for (let i = 0; i < rawArgs.length; i++) {
    const arg = rawArgs[i]!;
    if (arg === "--") break;
    if (arg === `--${name}`) {
      const value = rawArgs[i + 1];
      if (value === undefined || value.startsWith("--")) throw new DriveOptionError(`--${name} needs a value`);
      values.push(value);
      i++;
    } else if (arg.startsWith(`--${name}=`)) {
      values.push(arg.slice(name.length + 3));
    }
  }
  return values;
}
