/**
 * The host side of virtio-vsock: Unix stream sockets, Firecracker's model
 * (see docs in vsock.ts). One listening socket at `uds_path` for
 * host-initiated connections, and one outgoing connection to
 * `${uds_path}_${port}` per guest-initiated one.
 *
 * Every socket is non-blocking and close-on-exec, and every call is a plain
 * synchronous system call: this runs on the VM's I/O worker, which sits in
 * ppoll and has no event loop. Results are the kernel's (-errno on failure),
 * so the muxer decides what EAGAIN, EPIPE or ECONNREFUSED mean for a
 * connection; only building the listener throws.
 *
 * Decisions:
 * - An existing file at `uds_path`: a socket nobody listens on (connect says
 *   ECONNREFUSED) is a leftover of an earlier run and is removed; a socket
 *   something listens on, or any other kind of file, is refused with an
 *   error naming the path. Volt never deletes a file it did not create, nor
 *   takes over a live socket.
 * - The listening socket file is removed on close only if it is still the
 *   one Volt bound (same device and inode), so a later VM that already
 *   replaced it keeps its socket.
 * - Paths are limited to 107 bytes (sun_path). A guest-initiated port whose
 *   `${uds_path}_${port}` is longer fails to connect (ENAMETOOLONG), which
 *   the guest sees as a refused connection.
 * - A guest-initiated connect is non-blocking: a Unix stream connect either
 *   completes at once or fails (EAGAIN when the listener's backlog is full,
 *   which counts as refused); the I/O worker never waits for a host program.
 */
import { lstatSync, type Stats } from "node:fs";
import { ERRNO } from "../../ffi/errno.ts";
import {
  SOCKET_CONSTANTS,
  SOCKET_ERRNO,
  SocketError,
  accept4Raw,
  bindUnix,
  closeRaw,
  connectUnixRaw,
  listen,
  readRaw,
  sendRaw,
  shutdownRaw,
  socket,
  socketErrnoName,
  socketRaw,
  sockaddrUn,
  unlinkRaw,
} from "../../ffi/socket-syscalls.ts";

const { AF_UNIX, SOCK_STREAM, SOCK_NONBLOCK, SOCK_CLOEXEC } = SOCKET_CONSTANTS;
const STREAM_FLAGS = SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC;
export const VSOCK_LISTEN_BACKLOG = 128;

/**
 * What the vsock muxer needs from the host: descriptors and non-blocking
 * calls on them. Results follow the kernel: a descriptor or byte count, or
 * -errno (-EAGAIN = nothing now). Tests substitute a fake.
 */
export interface VsockHostSockets {
  /** The listening socket (polled for POLLIN). */
  readonly listenerFd: number;
  /** `uds_path`, for messages. */
  readonly path: string;
  /** Next waiting host connection as a non-blocking descriptor, or -errno (-EAGAIN: none). */
  accept(): number;
  /** A non-blocking descriptor connected to `${path}_${port}`, or -errno (nobody listening, no such file, ...). */
  connect(port: number): number;
  /** Bytes read into `into` (0: end of stream), or -errno. */
  read(fd: number, into: Uint8Array): number;
  /** Bytes written from `data` (possibly fewer), or -errno (-EAGAIN: the socket is full). */
  write(fd: number, data: Uint8Array): number;
  /** No more bytes from Volt on this connection: the host program reads end of stream. */
  shutdownWrite(fd: number): void;
  close(fd: number): void;
  /** Closes the listening socket and removes its file. Idempotent. */
  closeListener(): void;
}

/** `uds_path` cannot be used; raised when the VM is built, naming the path. */
export class VsockConfigError extends Error {
  override name = "VsockConfigError";
}

export class UnixVsockSockets implements VsockHostSockets {
  private listenerOpen = true;

  private constructor(
    readonly path: string,
    readonly listenerFd: number,
    /** Identity of the socket file Volt bound, so close removes only that file. */
    private readonly bound: { dev: number; ino: number } | undefined,
  ) {}

  /** Binds and listens on `path` (see the decisions above); every error names the path. */
  static listen(path: string): UnixVsockSockets {
    const fail = (why: string): never => {
      throw new VsockConfigError(`vsock uds_path ${path}: ${why}`);
    };
    try {
      sockaddrUn(path);
    } catch (error) {
      fail((error as Error).message);
    }
    removeStaleSocket(path, fail);
    let fd: number;
    try {
      fd = socket(AF_UNIX, STREAM_FLAGS);
    } catch (error) {
      return fail((error as Error).message);
    }
    try {
      bindUnix(fd, path);
      listen(fd, VSOCK_LISTEN_BACKLOG, path);
    } catch (error) {
      closeRaw(fd);
      const reason = error instanceof SocketError ? socketErrnoName(error.errno) : (error as Error).message;
      return fail(`cannot listen there (${error instanceof SocketError ? `${error.call}: ` : ""}${reason})`);
    }
    let identity: { dev: number; ino: number } | undefined;
    try {
      const stats = lstatSync(path);
      identity = { dev: stats.dev, ino: stats.ino };
    } catch {
      identity = undefined;
    }
    return new UnixVsockSockets(path, fd, identity);
  }

  accept(): number {
    for (;;) {
      const fd = accept4Raw(this.listenerFd, SOCK_NONBLOCK | SOCK_CLOEXEC);
      // A connection the client abandoned before we took it is not an error: try the next one.
      if (fd === -SOCKET_ERRNO.ECONNABORTED || fd === -ERRNO.EINTR) continue;
      return fd;
    }
  }

  connect(port: number): number {
    const fd = socketRaw(AF_UNIX, STREAM_FLAGS);
    if (fd < 0) return fd;
    const result = connectUnixRaw(fd, `${this.path}_${port}`);
    if (result < 0) {
      closeRaw(fd);
      return result;
    }
    return fd;
  }

  read(fd: number, into: Uint8Array): number {
    for (;;) {
      const result = readRaw(fd, into);
      if (result !== -ERRNO.EINTR) return result;
    }
  }

  write(fd: number, data: Uint8Array): number {
    for (;;) {
      const result = sendRaw(fd, data);
      if (result !== -ERRNO.EINTR) return result;
    }
  }

  shutdownWrite(fd: number): void {
    shutdownRaw(fd, SOCKET_CONSTANTS.SHUT_WR);
  }

  close(fd: number): void {
    closeRaw(fd);
  }

  closeListener(): void {
    if (!this.listenerOpen) return;
    this.listenerOpen = false;
    closeRaw(this.listenerFd);
    if (!this.bound) return;
    let now: Stats;
    try {
      now = lstatSync(this.path);
    } catch {
      return;
    }
    if (now.isSocket() && now.dev === this.bound.dev && now.ino === this.bound.ino) unlinkRaw(this.path);
  }
}

/** Makes `path` free for bind: nothing there, or a dead socket (removed). Anything else fails. */
function removeStaleSocket(path: string, fail: (why: string) => never): void {
  let stats: Stats;
  try {
    stats = lstatSync(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
    return fail(`cannot check it (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
  }
  if (!stats.isSocket()) fail("exists and is not a socket; remove it or choose another path");
  const probe = socketRaw(AF_UNIX, STREAM_FLAGS);
  if (probe < 0) fail(`cannot probe the existing socket (${socketErrnoName(-probe)})`);
  const result = connectUnixRaw(probe, path);
  closeRaw(probe);
  // EAGAIN: a listener whose backlog is full is still a listener.
  if (result === 0 || result === -SOCKET_ERRNO.EAGAIN) fail("is in use: another program is listening on it");
  if (result !== -SOCKET_ERRNO.ECONNREFUSED) fail(`cannot probe the existing socket (${socketErrnoName(-result)})`);
  const removed = unlinkRaw(path);
  if (removed < 0 && removed !== -ERRNO.ENOENT) fail(`cannot remove the stale socket (${socketErrnoName(-removed)})`);
}
