/**
 * `--drive path=IMAGE[,ro][,root][,id=SERIAL]`: a drive on the command line,
 * in the key=value style QEMU and Cloud Hypervisor users know. A path that
 * contains a comma needs the config file instead.
 */
import type { VirtioDeviceSpec } from "../devices/virtio/factory.ts";

export type DriveSpec = Extract<VirtioDeviceSpec, { kind: "block" }>;

export class DriveOptionError extends Error {
  override name = "DriveOptionError";
}

export function parseDriveOption(text: string): DriveSpec {
  let path: string | undefined;
  let readOnly = false;
  let root = false;
  let id: string | undefined;
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
      default:
        throw new DriveOptionError(`--drive '${text}': unknown key '${key}' (known: path, ro, root, id)`);
    }
  }
  if (path === undefined) throw new DriveOptionError(`--drive '${text}': path=IMAGE is required`);
  return { kind: "block", path, readOnly, ...(root ? { root } : {}), ...(id !== undefined ? { id } : {}) };
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
