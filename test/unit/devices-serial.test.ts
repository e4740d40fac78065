import { describe, expect, test } from "bun:test";
import { CountingInterruptLine } from "../../src/devices/interrupt.ts";
import {
  SERIAL_INPUT_CAPACITY,
  SERIAL_OUTPUT_CAPACITY,
  Serial16550,
  createSerialState,
  enqueueSerialInput,
  serialOutputDropped,
  takeSerialOutput,
} from "../../src/devices/legacy/serial.ts";
import type { WriterJob } from "./fixtures/devices-serial-writer.ts";

const THR = 0;
const RBR = 0;
const DLL = 0;
const DLM = 1;
const IER = 1;
const IIR = 2;
const FCR = 2;
const LCR = 3;
const MCR = 4;
const LSR = 5;
const MSR = 6;
const SCR = 7;

const IER_RDI = 0x01;
const IER_THRI = 0x02;
const IIR_NONE = 0x01;
const IIR_THRE = 0x02;
const IIR_RDA = 0x04;
const LSR_DR = 0x01;
const LSR_THRE_TEMT = 0x60;
const LCR_DLAB = 0x80;
const MCR_LOOP = 0x10;

function uart() {
  const state = createSerialState();
  const irq = new CountingInterruptLine();
  const serial = new Serial16550(state, irq);
  const out = (offset: number, value: number) => serial.write(offset, Uint8Array.of(value));
  const inb = (offset: number) => {
    const data = new Uint8Array(1);
    serial.read(offset, data);
    return data[0]!;
  };
  return { state, irq, serial, out, inb };
}

const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);

describe("Serial16550 transmit", () => {
  test("bytes written to THR come out of takeSerialOutput once, in order", () => {
    const { state, out } = uart();
    for (const c of "hi\n") out(THR, c.charCodeAt(0));
    expect(text(takeSerialOutput(state))).toBe("hi\n");
    expect(takeSerialOutput(state).length).toBe(0);
  });

  test("LSR always reports THR empty and transmitter idle, and DR only while input waits", () => {
    const { serial, out, inb } = uart();
    expect(inb(LSR)).toBe(LSR_THRE_TEMT);
    out(THR, 0x41);
    expect(inb(LSR)).toBe(LSR_THRE_TEMT);
    serial.deliverInput(Uint8Array.of(1));
    expect(inb(LSR)).toBe(LSR_THRE_TEMT | LSR_DR);
    inb(RBR);
    expect(inb(LSR)).toBe(LSR_THRE_TEMT);
  });

  test("a full output ring drops the oldest bytes and counts them", () => {
    const { state, out } = uart();
    const total = SERIAL_OUTPUT_CAPACITY + 10;
    for (let i = 0; i < total; i++) out(THR, i & 0xff);
    expect(serialOutputDropped(state)).toBe(10);
    const kept = takeSerialOutput(state);
    expect(kept.length).toBe(SERIAL_OUTPUT_CAPACITY);
    expect(kept[0]).toBe(10);
    expect(kept.at(-1)).toBe((total - 1) & 0xff);
    // The ring keeps working (and wrapping) after a drain.
    out(THR, 0x7a);
    expect([...takeSerialOutput(state)]).toEqual([0x7a]);
  });
});

describe("Serial16550 registers", () => {
  test("DLAB switches offsets 0 and 1 to the divisor latch and back", () => {
    const { state, out, inb } = uart();
    out(IER, IER_RDI);
    out(LCR, LCR_DLAB | 0x03);
    expect(inb(DLL)).toBe(0x0c); // 9600 baud until the guest changes it
    out(DLL, 0x01);
    out(DLM, 0x00);
    expect(inb(DLL)).toBe(0x01);
    expect(inb(DLM)).toBe(0x00);
    expect(takeSerialOutput(state).length).toBe(0); // the DLL write was not output
    out(LCR, 0x03);
    expect(inb(IER)).toBe(IER_RDI);
    expect(inb(LCR)).toBe(0x03);
    out(THR, 0x42);
    expect([...takeSerialOutput(state)]).toEqual([0x42]);
  });

  test("IER keeps only the four 16550A sources; SCR stores any byte", () => {
    const { out, inb } = uart();
    out(IER, 0xff);
    expect(inb(IER)).toBe(0x0f);
    out(SCR, 0xa5);
    expect(inb(SCR)).toBe(0xa5);
  });

  test("IIR reports the FIFOs enabled once FCR enables them (how Linux detects a 16550A)", () => {
    const { out, inb } = uart();
    expect(inb(IIR)).toBe(IIR_NONE);
    out(FCR, 0x01);
    expect(inb(IIR) >> 6).toBe(3);
    out(FCR, 0x00);
    expect(inb(IIR) >> 6).toBe(0);
  });

  test("MSR reports a ready modem, and in loopback mirrors MCR (the 8250 autoconfig check)", () => {
    const { out, inb } = uart();
    expect(inb(MSR)).toBe(0xb0);
    out(MCR, MCR_LOOP | 0x0a); // RTS | OUT2
    expect(inb(MSR) & 0xf0).toBe(0x90); // CTS | DCD
    out(MCR, MCR_LOOP | 0x05); // DTR | OUT1
    expect(inb(MSR) & 0xf0).toBe(0x60); // DSR | RI
  });

  test("loopback sends THR to the receiver, not the host, and ignores host input", () => {
    const { state, serial, irq, out, inb } = uart();
    out(IER, IER_RDI);
    out(MCR, MCR_LOOP);
    out(THR, 0x55);
    expect(irq.take()).toBe(1);
    expect(takeSerialOutput(state).length).toBe(0);
    expect(inb(LSR) & LSR_DR).toBe(LSR_DR);
    expect(serial.deliverInput(Uint8Array.of(1, 2))).toBe(0);
    expect(inb(RBR)).toBe(0x55);
    expect(inb(LSR) & LSR_DR).toBe(0);
    out(MCR, 0x08);
    out(THR, 0x56);
    expect([...takeSerialOutput(state)]).toEqual([0x56]);
  });
});

describe("Serial16550 interrupts", () => {
  test("enabling THRI raises THR-empty at once; reading IIR acknowledges it", () => {
    const { irq, out, inb } = uart();
    out(IER, IER_THRI);
    expect(irq.take()).toBe(1);
    expect(inb(IIR) & 0x0f).toBe(IIR_THRE);
    expect(inb(IIR) & 0x0f).toBe(IIR_NONE);
    // Rewriting the same IER is not a new enable.
    out(IER, IER_THRI);
    expect(irq.take()).toBe(0);
    // Off and on again is (Linux's UART_BUG_THRE probe depends on this).
    out(IER, 0);
    out(IER, IER_THRI);
    expect(irq.take()).toBe(1);
    expect(inb(IIR) & 0x0f).toBe(IIR_THRE);
  });

  test("every THR write raises THR-empty again while THRI is enabled, and never when it is not", () => {
    const { irq, out, inb } = uart();
    out(THR, 1);
    expect(irq.take()).toBe(0);
    expect(inb(IIR) & 0x0f).toBe(IIR_NONE);
    out(IER, IER_THRI);
    inb(IIR);
    irq.take();
    out(THR, 2);
    out(THR, 3);
    expect(irq.take()).toBe(2);
    expect(inb(IIR) & 0x0f).toBe(IIR_THRE);
  });

  test("disabling THRI masks a pending THR-empty", () => {
    const { out, inb } = uart();
    out(IER, IER_THRI);
    out(IER, 0);
    expect(inb(IIR) & 0x0f).toBe(IIR_NONE);
  });

  test("input raises the receive interrupt only while RDI is enabled", () => {
    const { serial, irq, out, inb } = uart();
    expect(serial.deliverInput(Uint8Array.of(0x61))).toBe(1);
    expect(irq.take()).toBe(0);
    expect(inb(IIR) & 0x0f).toBe(IIR_NONE);
    // Enabling RDI with data already waiting raises it.
    out(IER, IER_RDI);
    expect(irq.take()).toBe(1);
    expect(inb(IIR) & 0x0f).toBe(IIR_RDA);
    serial.deliverInput(Uint8Array.of(0x62));
    expect(irq.take()).toBe(1);
    expect(inb(RBR)).toBe(0x61);
    expect(inb(IIR) & 0x0f).toBe(IIR_RDA); // still data waiting
    expect(inb(RBR)).toBe(0x62);
    expect(inb(IIR) & 0x0f).toBe(IIR_NONE); // reading the last byte clears it
    expect(inb(RBR)).toBe(0); // an empty RBR reads as zero
  });

  test("received data outranks THR-empty, which stays pending until IIR reports it", () => {
    const { serial, out, inb } = uart();
    out(IER, IER_RDI | IER_THRI);
    serial.deliverInput(Uint8Array.of(0x31));
    expect(inb(IIR) & 0x0f).toBe(IIR_RDA);
    expect(inb(IIR) & 0x0f).toBe(IIR_RDA); // reading IIR does not clear received data
    inb(RBR);
    expect(inb(IIR) & 0x0f).toBe(IIR_THRE);
    expect(inb(IIR) & 0x0f).toBe(IIR_NONE);
  });

  test("enqueueSerialInput queues without raising; the input queue refuses what does not fit", () => {
    const { state, serial, irq, out, inb } = uart();
    out(IER, IER_RDI);
    const big = new Uint8Array(SERIAL_INPUT_CAPACITY + 5).map((_, i) => i & 0xff);
    expect(enqueueSerialInput(state, big)).toBe(SERIAL_INPUT_CAPACITY);
    expect(irq.take()).toBe(0);
    expect(serial.deliverInput(Uint8Array.of(1))).toBe(0);
    expect(irq.take()).toBe(0); // nothing new arrived
    for (let i = 0; i < SERIAL_INPUT_CAPACITY; i++) expect(inb(RBR)).toBe(i & 0xff);
    expect(inb(LSR) & LSR_DR).toBe(0);
    // The queue wraps cleanly once drained.
    expect(serial.deliverInput(Uint8Array.of(9, 8))).toBe(2);
    expect([inb(RBR), inb(RBR)]).toEqual([9, 8]);
  });
});

describe("Serial16550 against a hostile guest", () => {
  test.each([2, 4, 8])("a %d-byte access does nothing: reads all ones, writes dropped", (size) => {
    const { state, serial, irq, inb } = uart();
    serial.deliverInput(Uint8Array.of(0x10));
    const data = new Uint8Array(size).fill(0x41);
    serial.write(THR, data);
    serial.write(IER, new Uint8Array(size).fill(0xff));
    serial.read(RBR, data);
    expect([...data]).toEqual(new Array(size).fill(0xff));
    expect(takeSerialOutput(state).length).toBe(0);
    expect(irq.count).toBe(0);
    expect(inb(IER)).toBe(0);
    expect(inb(RBR)).toBe(0x10); // the wide read did not consume input
  });

  test.each([8, 9, 255, -1, 0.5, Number.NaN, 2 ** 40])("offset %p is ignored without throwing", (offset) => {
    const { state, serial } = uart();
    const data = Uint8Array.of(0x41);
    expect(() => serial.write(offset, data)).not.toThrow();
    expect(() => serial.read(offset, data)).not.toThrow();
    expect(data[0]).toBe(0xff);
    expect(takeSerialOutput(state).length).toBe(0);
  });

  test("an empty access neither throws nor changes anything", () => {
    const { state, serial } = uart();
    serial.write(THR, new Uint8Array(0));
    serial.read(RBR, new Uint8Array(0));
    expect(takeSerialOutput(state).length).toBe(0);
  });

  test("writes to the read-only LSR and MSR are ignored", () => {
    const { out, inb } = uart();
    out(LSR, 0x00);
    out(MSR, 0x00);
    expect(inb(LSR)).toBe(LSR_THRE_TEMT);
    expect(inb(MSR)).toBe(0xb0);
  });

  test("a state that did not come from createSerialState is refused at construction", () => {
    expect(() => new Serial16550({ buffer: new SharedArrayBuffer(16) }, new CountingInterruptLine())).toThrow(TypeError);
  });
});

describe("Serial16550 across threads", () => {
  test("two workers writing through their own instances: the host sees every byte once, in each writer's order", async () => {
    const state = createSerialState();
    const perWriter = 30_000; // together under the ring size, so any loss is a bug, not the drop policy
    const go = new SharedArrayBuffer(4);
    const url = new URL("./fixtures/devices-serial-writer.ts", import.meta.url).href;
    const workers = [0x00, 0x80].map((tag) => {
      const worker = new Worker(url);
      const job: WriterJob = { state, tag, count: perWriter, go };
      const ready = nextMessage(worker, "ready");
      worker.postMessage(job);
      return { worker, ready };
    });
    try {
      await Promise.all(workers.map((w) => w.ready));
      const done = Promise.all(workers.map((w) => nextMessage(w.worker, "done")));
      let finished = false;
      void done.then(() => (finished = true));
      const go32 = new Int32Array(go);
      Atomics.store(go32, 0, 1);
      Atomics.notify(go32, 0);

      // Drain while they write, so the host side contends for the lock too.
      const chunks: Uint8Array[] = [];
      while (!finished) {
        chunks.push(takeSerialOutput(state));
        await Bun.sleep(0);
      }
      chunks.push(takeSerialOutput(state));

      const seen = { low: [] as number[], high: [] as number[] };
      for (const chunk of chunks) for (const byte of chunk) (byte & 0x80 ? seen.high : seen.low).push(byte & 0x7f);
      const expected = Array.from({ length: perWriter }, (_, i) => i % 128);
      expect(seen.low).toEqual(expected);
      expect(seen.high).toEqual(expected);
      expect(serialOutputDropped(state)).toBe(0);
    } finally {
      for (const { worker } of workers) worker.terminate();
    }
  }, 20_000);
});

function nextMessage(worker: Worker, expected: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onMessage = (event: MessageEvent) => {
      if (event.data !== expected) return;
      worker.removeEventListener("message", onMessage);
      resolve();
    };
    worker.addEventListener("message", onMessage);
    worker.addEventListener("error", (event) => reject(new Error(`worker failed: ${event.message}`)), { once: true });
  });
}
