/**
 * A registered VM's serial console: everything the guest writes is appended
 * to console.log (rotated to console.log.1 past a size, so a chatty guest
 * cannot fill the disk) and streamed to every client of console.sock; bytes a
 * client sends are the guest's keyboard input. `volt console ID` is such a
 * client. A foreground VM (`volt run --id`) keeps its terminal too: both the
 * terminal and the socket clients type into the same UART.
 *
 * A client that does not read (its unsent output passes MAX_CLIENT_BACKLOG)
 * is disconnected rather than buffered without bound.
 */
import { closeSync, fstatSync, openSync, renameSync, unlinkSync, writeSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { claimSocketPath } from "../api/server.ts";
import type { ConsoleIo } from "../vmm/vmm.ts";

export const DEFAULT_MAX_LOG_BYTES = 32 * 1024 * 1024;
export const MAX_CLIENT_BACKLOG = 1024 * 1024;

export interface RuntimeConsoleOptions {
  readonly logPath: string;
  readonly socketPath: string;
  /** Also write to (and take input from) this console, e.g. the terminal of a foreground VM. */
  readonly inner?: ConsoleIo;
  readonly maxLogBytes?: number;
}

export class RuntimeConsole implements ConsoleIo {
  private logFd: number;
  private logBytes = 0;
  private readonly clients = new Set<Socket>();
  private deliver: ((bytes: Uint8Array) => void) | undefined;
  private closed = false;

  private constructor(
    private readonly options: RuntimeConsoleOptions,
    private readonly server: Server,
  ) {
    this.logFd = openSync(options.logPath, "a");
    this.logBytes = fstatSync(this.logFd).size;
  }

  static async open(options: RuntimeConsoleOptions): Promise<RuntimeConsole> {
    await claimSocketPath(options.socketPath);
    const server = createServer();
    const console = new RuntimeConsole(options, server);
    server.on("connection", (socket) => console.accept(socket));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(options.socketPath, () => {
        server.off("error", reject);
        resolve();
      });
    });
    server.on("error", () => {});
    return console;
  }

  get clientCount(): number {
    return this.clients.size;
  }

  write(bytes: Uint8Array): void {
    if (this.closed) return;
    this.options.inner?.write(bytes);
    this.appendLog(bytes);
    for (const client of this.clients) {
      if (client.writableLength > MAX_CLIENT_BACKLOG) {
        client.destroy();
        this.clients.delete(client);
        continue;
      }
      client.write(bytes);
    }
  }

  attachInput(deliver: (bytes: Uint8Array) => void): () => void {
    this.deliver = deliver;
    const detachInner = this.options.inner?.attachInput?.(deliver);
    return () => {
      if (this.deliver === deliver) this.deliver = undefined;
      detachInner?.();
    };
  }

  /** Stops serving clients (they see the end of the stream) and closes the log. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const client of this.clients) client.end();
    this.clients.clear();
    this.server.close();
    try {
      unlinkSync(this.options.socketPath);
    } catch {
      // Already gone.
    }
    if (this.logFd >= 0) closeSync(this.logFd);
    this.logFd = -1;
  }

  private accept(socket: Socket): void {
    if (this.closed) {
      socket.destroy();
      return;
    }
    this.clients.add(socket);
    socket.on("data", (chunk: Buffer) => this.deliver?.(new Uint8Array(chunk)));
    const forget = () => this.clients.delete(socket);
    socket.on("close", forget);
    socket.on("error", forget);
  }

  private appendLog(bytes: Uint8Array): void {
    if (this.logFd < 0) return;
    const limit = this.options.maxLogBytes ?? DEFAULT_MAX_LOG_BYTES;
    try {
      if (this.logBytes + bytes.length > limit && this.logBytes > 0) {
        renameSync(this.options.logPath, `${this.options.logPath}.1`);
        closeSync(this.logFd);
        this.logFd = -1;
        this.logFd = openSync(this.options.logPath, "a");
        this.logBytes = 0;
      }
      writeSync(this.logFd, bytes);
      this.logBytes += bytes.length;
    } catch {
      // A full disk or a removed directory must not stop the VM; the socket clients still get the output.
    }
  }
}
