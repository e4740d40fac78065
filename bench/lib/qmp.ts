/** A minimal QMP client (QEMU's JSON monitor on a Unix socket): enough to migrate a VM to a file and quit. */
import { existsSync } from "node:fs";

export class Qmp {
  private buffer = "";
  private readonly replies: ((value: Record<string, unknown>) => void)[] = [];
  private readonly queued: Record<string, unknown>[] = [];

  private constructor(private readonly socket: Bun.Socket<undefined>) {}

  static async connect(path: string, timeoutMs = 60_000): Promise<Qmp> {
    const deadline = Date.now() + timeoutMs;
    while (!existsSync(path)) {
      if (Date.now() > deadline) throw new Error(`QMP socket ${path} did not appear`);
      await Bun.sleep(20);
    }
    let qmp: Qmp | undefined;
    const pending: Record<string, unknown>[] = [];
    const socket = await Bun.connect({
      unix: path,
      socket: {
        data(_socket, data) {
          if (qmp) qmp.receive(data.toString());
          else pending.push({ raw: data.toString() });
        },
      },
    });
    qmp = new Qmp(socket);
    for (const chunk of pending) qmp.receive(String(chunk.raw));
    await qmp.next(); // the greeting
    await qmp.execute("qmp_capabilities");
    return qmp;
  }

  private receive(text: string): void {
    this.buffer += text;
    let newline: number;
    while ((newline = this.buffer.indexOf("\n")) >= 0) {
      const line = this.buffer.slice(0, newline).trim();
      this.buffer = this.buffer.slice(newline + 1);
      if (line === "") continue;
      const message = JSON.parse(line) as Record<string, unknown>;
      if ("event" in message) continue; // asynchronous events are not needed here
      const waiter = this.replies.shift();
      if (waiter) waiter(message);
      else this.queued.push(message);
    }
  }

  private next(): Promise<Record<string, unknown>> {
    const queued = this.queued.shift();
    if (queued) return Promise.resolve(queued);
    return new Promise((resolve) => this.replies.push(resolve));
  }

  async execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    this.socket.write(`${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`);
    const reply = await this.next();
    if ("error" in reply) throw new Error(`QMP ${command}: ${JSON.stringify(reply.error)}`);
    return reply.return;
  }

  close(): void {
    this.socket.end();
  }
}
