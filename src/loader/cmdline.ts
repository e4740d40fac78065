/**
 * The kernel command line, built from typed pieces rather than glued strings
 * (as linux-loader's Cmdline does): every piece is checked when added, so a
 * NUL, a control character or an over-long line fails at the call that
 * caused it instead of silently truncating what the guest sees.
 */
import type { GuestMemoryView } from "../memory/guest-memory.ts";

/**
 * x86's COMMAND_LINE_SIZE is 2048 bytes including the terminating NUL; a
 * bzImage states its own limit in setup_header.cmdline_size (2047 there too).
 */
export const DEFAULT_CMDLINE_MAX_LENGTH = 2047;

export class CmdlineError extends Error {
  override name = "CmdlineError";
}

export class KernelCmdline {
  /** Longest line accepted, not counting the terminating NUL. */
  readonly maxLength: number;
  private readonly parts: string[] = [];

  constructor(maxLength = DEFAULT_CMDLINE_MAX_LENGTH) {
    if (!Number.isSafeInteger(maxLength) || maxLength < 1) throw new CmdlineError(`command line limit ${maxLength} must be a positive integer`);
    this.maxLength = maxLength;
  }

  /** Adds `key` or `key=value`; a value containing spaces is quoted, as the kernel's parser expects. */
  add(key: string, value?: string): this {
    checkText(key, `command line key "${key}"`);
    if (key === "" || /[\s="]/.test(key)) throw new CmdlineError(`command line key "${key}" must be non-empty and contain no spaces, '=' or '"'`);
    if (value === undefined) return this.push(key);
    checkText(value, `value of "${key}"`);
    if (value.includes('"')) throw new CmdlineError(`value of "${key}" contains '"', which the kernel's parser cannot carry`);
    return this.push(`${key}=${/\s/.test(value) ? `"${value}"` : value}`);
  }

  /** Appends a user-written fragment (several space-separated parameters) as it is, after checking it. */
  appendRaw(fragment: string): this {
    checkText(fragment, "command line");
    const trimmed = fragment.trim();
    return trimmed === "" ? this : this.push(trimmed);
  }

  /** A virtio-mmio device the kernel should probe: `virtio_mmio.device=<size>@<base>:<irq>[:<id>]`. */
  addVirtioMmioDevice(size: number, base: number, irq: number, id?: number): this {
    for (const [name, value] of [["size", size], ["base", base], ["irq", irq], ["id", id ?? 0]] as const) {
      if (!Number.isSafeInteger(value) || value < 0) throw new CmdlineError(`virtio-mmio device ${name} ${value} must be a non-negative integer`);
    }
    if (size === 0) throw new CmdlineError("virtio-mmio device size must not be 0");
    const device = `${memparseSize(size)}@0x${base.toString(16)}:${irq}${id === undefined ? "" : `:${id}`}`;
    return this.add("virtio_mmio.device", device);
  }

  get length(): number {
    return this.toString().length;
  }

  toString(): string {
    return this.parts.join(" ");
  }

  /** The line as the kernel reads it: ASCII bytes and a terminating NUL. */
  toBytes(): Uint8Array {
    return new TextEncoder().encode(`${this.toString()}\0`);
  }

  private push(part: string): this {
    const length = this.length + (this.parts.length > 0 ? 1 : 0) + part.length;
    if (length > this.maxLength) {
      throw new CmdlineError(`adding "${part}" makes the command line ${length} bytes; the kernel accepts at most ${this.maxLength}`);
    }
    this.parts.push(part);
    return this;
  }
}

/** Writes the NUL-terminated line at `address`; the result is what boot_params/PVH start info point at. */
export function writeCmdline(memory: GuestMemoryView, cmdline: KernelCmdline, address: number): { address: number; size: number } {
  const bytes = cmdline.toBytes();
  memory.write(address, bytes);
  return { address, size: bytes.byteLength };
}

/** The kernel parses sizes with memparse: the largest exact K/M/G suffix keeps the line short. */
function memparseSize(size: number): string {
  for (const [suffix, unit] of [["G", 2 ** 30], ["M", 2 ** 20], ["K", 2 ** 10]] as const) {
    if (size % unit === 0) return `${size / unit}${suffix}`;
  }
  return String(size);
}

function checkText(text: string, what: string): void {
  if (text.includes("\0")) throw new CmdlineError(`${what} contains a NUL byte, which would end the command line early`);
  // Printable ASCII and spaces only: the boot protocol defines the line as bytes, not UTF-8.
  const bad = [...text].find((c) => c !== " " && (c < "!" || c > "~"));
  if (bad !== undefined) throw new CmdlineError(`${what} contains the character U+${bad.codePointAt(0)!.toString(16).padStart(4, "0")}; only printable ASCII is allowed`);
}
