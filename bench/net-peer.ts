/**
 * The host end of the network throughput rows: a Bun TCP socket that counts
 * bytes. bench/inside.ts starts it inside the benchmark's private network
 * namespace (`ip netns exec NS bun bench/net-peer.ts ...`), where the VM's tap is.
 *
 *   bun bench/net-peer.ts sink PORT
 *     listens on 0.0.0.0:PORT; prints "LISTENING", then for every connection one
 *     JSON line {bytes, ms, firstByteMs}: ms from the accept to the sender's
 *     end of stream (FIN), firstByteMs from the accept to the first byte.
 *   bun bench/net-peer.ts source HOST PORT BYTES
 *     connects (retrying while refused, up to 10 s), sends BYTES of zeros with
 *     backpressure, shuts its side down, and waits until the receiver has read
 *     everything and closed; prints {bytes, ms}: from the connect to that close.
 */
export {};

const [mode, ...rest] = process.argv.slice(2);
const print = (value: unknown) => process.stdout.write(`${JSON.stringify(value)}\n`);

if (mode === "sink") {
  const port = Number(rest[0]);
  interface Conn {
    opened: number;
    first: number | undefined;
    bytes: number;
    reported: boolean;
  }
  // Defensive: an error or close on a socket that never opened must not throw (a throw would end the counter).
  const report = (c: Conn | undefined) => {
    if (!c || c.reported) return;
    c.reported = true;
    print({ bytes: c.bytes, ms: performance.now() - c.opened, firstByteMs: c.first === undefined ? null : c.first - c.opened });
  };
  Bun.listen<Conn>({
    hostname: "0.0.0.0",
    port,
    socket: {
      open(socket) {
        socket.data = { opened: performance.now(), first: undefined, bytes: 0, reported: false };
      },
      data(socket, chunk) {
        if (!socket.data) return;
        if (socket.data.first === undefined) socket.data.first = performance.now();
        socket.data.bytes += chunk.byteLength;
      },
      end(socket) {
        report(socket.data);
        socket.end();
      },
      close(socket) {
        report(socket.data);
      },
      error(socket) {
        report(socket.data);
      },
    },
  });
  print("LISTENING");
} else if (mode === "source") {
  const [host, portText, bytesText] = rest;
  const total = Number(bytesText);
  const chunk = new Uint8Array(1 << 20);
  const deadline = performance.now() + 10_000;
  for (;;) {
    try {
      await send(host!, Number(portText), total, chunk);
      break;
    } catch (error) {
      if (performance.now() > deadline) {
        console.error(`net-peer: ${(error as Error).message}`);
        process.exit(1);
      }
      await Bun.sleep(100);
    }
  }
  process.exit(0);
} else {
  console.error("usage: net-peer.ts sink PORT | source HOST PORT BYTES");
  process.exit(2);
}

async function send(hostname: string, port: number, total: number, chunk: Uint8Array): Promise<void> {
  const done = Promise.withResolvers<void>();
  let opened = 0;
  let sent = 0;
  let finished = false;
  const pump = (socket: Bun.Socket<undefined>) => {
    while (sent < total) {
      const n = Math.min(chunk.byteLength, total - sent);
      const wrote = socket.write(chunk.subarray(0, n));
      sent += wrote;
      if (wrote < n) return; // the rest on drain
    }
    if (!finished) {
      finished = true;
      socket.flush();
      socket.shutdown();
    }
  };
  let settled = false;
  const closed = () => {
    if (settled) return;
    settled = true;
    if (sent < total || !finished) {
      done.reject(new Error(`connection closed after ${sent} of ${total} bytes`));
      return;
    }
    print({ bytes: sent, ms: performance.now() - opened });
    done.resolve();
  };
  await Bun.connect({
    hostname,
    port,
    socket: {
      open(socket) {
        opened = performance.now();
        pump(socket);
      },
      drain: pump,
      data() {},
      end: closed,
      close: closed,
      error(_socket, error) {
        done.reject(error);
      },
      connectError(_socket, error) {
        done.reject(error);
      },
    },
  });
  await done.promise;
}
