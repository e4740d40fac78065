/**
 * Where Volt's own modules are. Inside the `volt` binary (bun build --compile)
 * the entry points are embedded under /$bunfs/root, laid out relative to src/
 * (build.ts). `import.meta` cannot tell the two cases apart there: the binary
 * is compiled to bytecode, which needs CommonJS, and in that output Bun bakes
 * the build machine's source path into import.meta.url and import.meta.dir.
 * A binary that trusted them loaded its workers from that source tree when it
 * existed, and failed where it did not (in a jail, on a user's machine).
 */
const EMBEDDED_ROOT_URL = "file:///$bunfs/root/";

/** True inside the compiled binary, false when running from source with `bun`. */
export function runningCompiled(): boolean {
  return Bun.main.startsWith("/$bunfs/");
}

/** The URL that paths relative to src/ resolve against, for a module at `sourceUrl` (its import.meta.url). */
export function moduleBaseUrl(sourceUrl: string): string {
  return runningCompiled() ? EMBEDDED_ROOT_URL : sourceUrl;
}
