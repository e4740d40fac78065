/**
 * Process plumbing for the benchmarks: start a VMM with its console piped,
 * timestamp console output as it arrives, wait for markers, read a process's
 * memory map, and stop it.
 */
import { readFileSync } from "node:fs";

export interface Watched {
  readonly proc: Bun.Subprocess<"ignore" | "pipe", "pipe", "pipe">;
  /** performance.now() just before the spawn. */
  readonly spawnedAt: number;
  /** performance.now() when the first byte of console output arrived. */
  firstConsoleByteAt: number | undefined;
  readonly console: () => string;
  readonly other: () => string;
  /** Resolves with the arrival time (performance.now()) of the chunk that completed a match. */
  waitFor(pattern: RegExp, timeoutMs: number, since?: number): Promise<{ at: number; match: RegExpMatchArray }>;
  /** Resolves when the process has exited and both streams are drained. */
  readonly done: Promise<number>;
}

/**
 * Spawns `argv`; `consoleOn` says which stream carries the guest console (Volt
 * --json: stderr; QEMU -nographic: stdout). `since` in waitFor: only text
 * after that console offset counts.
 */
export function watch(argv: readonly string[], consoleOn: "stdout" | "stderr", options: { env?: Record<string, string | undefined>; cwd?: string } = {}): Watched {
  const spawnedAt = performance.now();
  const proc = Bun.spawn([...argv], {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    ...(options.env ? { env: options.env } : {}),
    ...(options.cwd ? { cwd: options.cwd } : {}),
  });
  const buffers = { console: "", other: "" };
  const waiters: { pattern: RegExp; since: number; resolve: (v: { at: number; match: RegExpMatchArray }) => void }[] = [];
  const state: { first: number | undefined } = { first: undefined };
  const check = (at: number) => {
    for (const waiter of [...waiters]) {
      const match = buffers.console.slice(waiter.since).match(waiter.pattern);
      if (match) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve({ at, match });
      }
    }
  };
  const pump = async (stream: ReadableStream<Uint8Array>, isConsole: boolean) => {
    const decoder = new TextDecoder();
    for await (const chunk of stream) {
      const at = performance.now();
      if (isConsole) {
        if (state.first === undefined && chunk.length > 0) state.first = at;
        buffers.console += decoder.decode(chunk, { stream: true });
        // Keep memory bounded for chatty guests; markers are matched as they arrive.
        if (buffers.console.length > 4_000_000) buffers.console = buffers.console.slice(-1_000_000);
        check(at);
      } else {
        buffers.other += decoder.decode(chunk, { stream: true });
      }
    }
  };
  const consoleStream = consoleOn === "stdout" ? proc.stdout : proc.stderr;
  const otherStream = consoleOn === "stdout" ? proc.stderr : proc.stdout;
  const done = Promise.all([pump(consoleStream, true), pump(otherStream, false), proc.exited]).then(([, , code]) => code);
  const watched: Watched = {
    proc,
    spawnedAt,
    get firstConsoleByteAt() {
      return state.first;
    },
    console: () => buffers.console,
    other: () => buffers.other,
    waitFor(pattern, timeoutMs, since = 0) {
      const existing = buffers.console.slice(since).match(pattern);
      if (existing) return Promise.resolve({ at: performance.now(), match: existing });
      return new Promise((resolve, reject) => {
        const waiter = { pattern, since, resolve: (v: { at: number; match: RegExpMatchArray }) => {
          clearTimeout(timer);
          resolve(v);
        } };
        waiters.push(waiter);
        const timer = setTimeout(() => {
          const index = waiters.indexOf(waiter);
          if (index >= 0) waiters.splice(index, 1);
          reject(new Error(`timed out after ${timeoutMs / 1000}s waiting for ${pattern} from ${argv[0]}; exit ${proc.exitCode ?? "(running)"}; console tail: ${JSON.stringify(buffers.console.slice(-600))}; stderr/stdout tail: ${JSON.stringify(buffers.other.slice(-600))}`));
        }, timeoutMs);
        done.then(() => {
          const index = waiters.indexOf(waiter);
          if (index < 0) return;
          waiters.splice(index, 1);
          clearTimeout(timer);
          reject(new Error(`${argv[0]} exited ${proc.exitCode} before ${pattern}; console tail: ${JSON.stringify(buffers.console.slice(-800))}; other output: ${JSON.stringify(buffers.other.slice(-800))}`));
        });
      });
    },
    done,
  };
  return watched;
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves with the exit code once the streams are drained. */
export async function stop(watched: Watched, signal: NodeJS.Signals = "SIGTERM", graceMs = 10_000): Promise<number> {
  if (watched.proc.exitCode === null && watched.proc.signalCode === null) watched.proc.kill(signal);
  const timer = setTimeout(() => watched.proc.kill("SIGKILL"), graceMs);
  try {
    return await watched.done;
  } finally {
    clearTimeout(timer);
  }
}

export interface Mapping {
  readonly start: bigint;
  readonly end: bigint;
  readonly perms: string;
  readonly path: string;
  readonly sizeKiB: number;
  readonly rssKiB: number;
  readonly pssKiB: number;
}

export function readSmaps(pid: number): Mapping[] {
  const text = readFileSync(`/proc/${pid}/smaps`, "utf8");
  const mappings: Mapping[] = [];
  let current: { start: bigint; end: bigint; perms: string; path: string; sizeKiB: number; rssKiB: number; pssKiB: number } | undefined;
  for (const line of text.split("\n")) {
    const header = /^([0-9a-f]+)-([0-9a-f]+)\s+(\S+)\s+\S+\s+\S+\s+\d+\s*(.*)$/.exec(line);
    if (header) {
      if (current) mappings.push(current);
      current = { start: BigInt(`0x${header[1]}`), end: BigInt(`0x${header[2]}`), perms: header[3]!, path: header[4]!.trim(), sizeKiB: 0, rssKiB: 0, pssKiB: 0 };
      continue;
    }
    const field = /^(Size|Rss|Pss):\s+(\d+) kB/.exec(line);
    if (field && current) {
      const value = Number(field[2]);
      if (field[1] === "Size") current.sizeKiB = value;
      else if (field[1] === "Rss") current.rssKiB = value;
      else current.pssKiB = value;
    }
  }
  if (current) mappings.push(current);
  return mappings;
}

export interface MemorySample {
  /** RSS of every mapping, guest memory included. */
  readonly totalRssKiB: number;
  /** RSS of the guest-memory mapping(s). */
  readonly guestRssKiB: number;
  /** Firecracker's "memory overhead": RSS of every mapping except guest memory. */
  readonly overheadRssKiB: number;
  /** The same as PSS (shared library pages split among the processes mapping them). */
  readonly overheadPssKiB: number;
  /** Guest mappings found (for the record: how guest memory was recognised). */
  readonly guestMappings: readonly string[];
}

export function sampleMemory(pid: number, isGuest: (m: Mapping) => boolean): MemorySample {
  const mappings = readSmaps(pid);
  let total = 0;
  let guest = 0;
  let overheadPss = 0;
  const guestMappings: string[] = [];
  for (const m of mappings) {
    total += m.rssKiB;
    if (isGuest(m)) {
      guest += m.rssKiB;
      guestMappings.push(`${m.path || "[anonymous]"} ${m.sizeKiB} KiB`);
    } else {
      overheadPss += m.pssKiB;
    }
  }
  return { totalRssKiB: total, guestRssKiB: guest, overheadRssKiB: total - guest, overheadPssKiB: overheadPss, guestMappings };
}

/** Children of `pid` (for a process started under strace). */
export function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}
