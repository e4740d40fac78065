/**
 * Synthetic kernels for the kernel store, inspect and extract tests: a small
 * ELF vmlinux (PVH note, "Linux version" banner, optional IKCONFIG blob, code
 * with call/jmp opcodes for the x86 BCJ filter) and bzImages whose payload is
 * that vmlinux compressed the way arch/x86/boot/compressed/Makefile does it.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { constants, gzipSync, zstdCompressSync } from "node:zlib";
import { buildBzImage, buildElf, concat, elfNote, PT_LOAD, PT_NOTE } from "./loader-fixtures.ts";

export const SYNTHETIC_RELEASE = "6.9.0-volt-test";
export const PVH_ENTRY = 0x100_0040;
export const ENTRY64 = 0x100_0000;

export interface VmlinuxSpec {
  /** Embed this config text the way CONFIG_IKCONFIG does. */
  config?: string;
  pvh?: boolean;
  /** Bytes of code-like filler (default 192 KiB). */
  size?: number;
  /** Extra bytes placed in the data segment (e.g. "RSD PTR "). */
  extra?: string;
}

/** Deterministic bytes that look a little like x86 code: runs, repeats, and E8/E9 rel32 branches. */
function codeLike(size: number, seed = 1): Uint8Array {
  const out = new Uint8Array(size);
  let x = seed;
  const next = () => {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    return x >>> 16;
  };
  let i = 0;
  while (i < size) {
    const kind = next() % 8;
    if (kind < 3 && i + 5 <= size) {
      // call/jmp rel32 with a small displacement (high byte 0x00 or 0xff): what BCJ converts
      out[i] = kind === 0 ? 0xe9 : 0xe8;
      const disp = (next() % 0x4000) - 0x2000;
      new DataView(out.buffer).setInt32(i + 1, disp, true);
      i += 5;
    } else if (kind < 6 && i > 64) {
      // repeat an earlier stretch (matches for the LZ coders)
      const len = Math.min(4 + (next() % 60), size - i);
      const from = i - 1 - (next() % Math.min(i - 1, 4000));
      for (let k = 0; k < len; k++) out[i + k] = out[from + k]!;
      i += len;
    } else {
      out[i++] = next() & 0xff;
    }
  }
  return out;
}

export function makeVmlinux(spec: VmlinuxSpec = {}): Uint8Array {
  const text = new TextEncoder();
  const code = codeLike(spec.size ?? 192 * 1024);
  const banner = text.encode(`Linux version ${SYNTHETIC_RELEASE} (test@volt) (gcc 12) #1 SMP PREEMPT_DYNAMIC\n\0`);
  const ikconfig = spec.config === undefined ? new Uint8Array(0) : concat(text.encode("IKCFG_ST"), gzipSync(spec.config), text.encode("IKCFG_ED"));
  const data = concat(banner, ikconfig, text.encode(spec.extra ?? ""), new Uint8Array(64));
  const note = spec.pvh === false ? elfNote("GNU", 3, new Uint8Array(20)) : elfNote("Xen", 18, Uint8Array.of(0x40, 0, 0, 1, 0, 0, 0, 0));
  return buildElf({
    entry: ENTRY64,
    segments: [
      { type: PT_LOAD, paddr: ENTRY64, data: code },
      { type: PT_LOAD, paddr: 0x200_0000, data },
      { type: PT_NOTE, paddr: 0, data: note },
    ],
  });
}

export type Method = "gzip" | "zstd" | "xz" | "lzma" | "lz4" | "bzip2";
export const METHODS: readonly Method[] = ["gzip", "zstd", "xz", "lzma", "lz4", "bzip2"];

/** The compressor commands the kernel's build uses; undefined where the tool is missing. */
const COMMANDS: Record<Method, string[] | undefined> = {
  gzip: undefined,
  zstd: undefined,
  xz: ["xz", "--format=xz", "--check=crc32", "--x86", "--lzma2=preset=6,dict=1MiB", "-c"],
  lzma: ["xz", "--format=lzma", "-9", "-c"],
  lz4: ["lz4", "-l", "-9", "-c"],
  bzip2: ["bzip2", "-9", "-c"],
};

export function toolFor(method: Method): string | undefined {
  const argv = COMMANDS[method];
  if (argv === undefined) return "(in-process)";
  return Bun.which(argv[0]!) ?? undefined;
}

export function sizeWord(n: number): Uint8Array {
  const word = new Uint8Array(4);
  new DataView(word.buffer).setUint32(0, n, true);
  return word;
}

/** Runs a compressor command over `data`; throws if it fails. */
export function runCompressor(argv: string[], data: Uint8Array): Uint8Array {
  // Files on both ends and the shell doing the redirection: Bun's pipes to a tool moving tens of MiB hung the
  // suite (stdin from memory) and crashed it (stdout to a pipe) on a busy host.
  const dir = mkdtempSync(join(tmpdir(), "volt-compress-"));
  try {
    const input = join(dir, "input");
    const output = join(dir, "output");
    writeFileSync(input, data);
    const proc = Bun.spawnSync(["sh", "-c", 'in="$1"; out="$2"; shift 2; exec "$@" < "$in" > "$out"', "sh", input, output, ...argv], {
      stdin: "ignore",
      stdout: "ignore",
      stderr: "pipe",
    });
    if (proc.exitCode !== 0) throw new Error(`${argv.join(" ")} failed: ${proc.stderr.toString()}`);
    return new Uint8Array(readFileSync(output));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The payload as the kernel's Makefile makes it: compressed data, then (except gzip) the size word. */
export function compressPayload(vmlinux: Uint8Array, method: Method): Uint8Array {
  switch (method) {
    case "gzip":
      return gzipSync(vmlinux, { level: 9 });
    case "zstd":
      // The zstd tool writes a content checksum by default; the kernel's build uses the tool.
      return concat(zstdCompressSync(vmlinux, { params: { [constants.ZSTD_c_checksumFlag]: 1 } }), sizeWord(vmlinux.length));
    default:
      return concat(runCompressor(COMMANDS[method]!, vmlinux), sizeWord(vmlinux.length));
  }
}

/** A bzImage around `payload`, with a kernel_version string in its setup code. */
export function makeBzImage(payload: Uint8Array, version = `${SYNTHETIC_RELEASE} (test@volt) #1 SMP PREEMPT_DYNAMIC`): Uint8Array {
  // The payload starts past the 64-bit entry (+0x200), where buildBzImage marks a byte, as in a real bzImage.
  const bytes = buildBzImage({ payload, payloadOffset: 0x400, initSize: Math.max(0x200000, payload.length * 8) });
  const at = 0x600;
  bytes.set(new TextEncoder().encode(`${version}\0`), at);
  new DataView(bytes.buffer, bytes.byteOffset).setUint16(0x20e, at - 0x200, true);
  return bytes;
}
