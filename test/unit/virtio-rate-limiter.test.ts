/** Token buckets with a hand-driven clock and timer: what is allowed, what waits, and for how long. */
import { describe, expect, test } from "bun:test";
import { RateLimiter, TokenBucket, timerfdTimer, type LimiterTimer } from "../../src/devices/virtio/rate-limiter.ts";
import { pollReadable } from "../../src/ffi/syscalls.ts";

function fakeTimer() {
  const armed: number[] = [];
  let acknowledged = 0;
  const timer: LimiterTimer = { fd: 99, arm: (ms) => void armed.push(ms), acknowledge: () => void acknowledged++, close: () => {} };
  return { timer, armed, acknowledged: () => acknowledged };
}

describe("TokenBucket", () => {
  test("starts full, refills linearly to its size, never beyond", () => {
    let now = 0;
    const bucket = new TokenBucket({ size: 1000, refillTimeMs: 100 }, () => now);
    expect(bucket.available()).toBe(1000);
    bucket.take(1000);
    expect(bucket.available()).toBe(0);
    now = 50;
    expect(bucket.available()).toBe(500);
    now = 1000;
    expect(bucket.available()).toBe(1000);
  });

  test("a request bigger than the bucket costs a full bucket (it is served, never starved)", () => {
    const bucket = new TokenBucket({ size: 100, refillTimeMs: 10 }, () => 0);
    expect(bucket.cost(5000)).toBe(100);
    expect(bucket.msUntil(5000)).toBe(0);
  });

  test("refuses nonsense sizes", () => {
    expect(() => new TokenBucket({ size: 0, refillTimeMs: 1 }, () => 0)).toThrow(RangeError);
    expect(() => new TokenBucket({ size: 1, refillTimeMs: 0 }, () => 0)).toThrow(RangeError);
  });
});

describe("RateLimiter", () => {
  test("takes from both buckets or neither; when short it arms the timer for exactly the wait", () => {
    let now = 0;
    const { timer, armed } = fakeTimer();
    const limiter = new RateLimiter({ bandwidth: { size: 4096, refillTimeMs: 1000 }, ops: { size: 2, refillTimeMs: 1000 } }, timer, () => now);
    expect(limiter.consume(1024)).toBe(true);
    expect(limiter.consume(1024)).toBe(true);
    // Bandwidth has 2048 left, but the ops bucket is empty: nothing is taken, the wait is the ops refill (1 op = 500 ms).
    expect(limiter.consume(1024)).toBe(false);
    expect(limiter.isThrottled).toBe(true);
    expect(armed).toEqual([500]);
    now = 500;
    limiter.timerFired();
    expect(limiter.isThrottled).toBe(false);
    // By now the bandwidth bucket is full again (500 ms refill 2048 bytes) and one op came back.
    expect(limiter.consume(1024)).toBe(true);
    // 3072 bytes left: 4096 more waits 250 ms for bandwidth, but the empty ops bucket needs 500 ms: the longer wait wins.
    expect(limiter.consume(4096)).toBe(false);
    expect(armed.at(-1)).toBeCloseTo(500, 5);
    now = 750;
    limiter.timerFired();
    expect(limiter.consume(4096)).toBe(false); // bandwidth is back, the op is not yet
    expect(armed.at(-1)).toBeCloseTo(250, 5);
  });

  test("charge takes what was already moved and puts later requests in debt", () => {
    let now = 0;
    const { timer } = fakeTimer();
    const limiter = new RateLimiter({ bandwidth: { size: 1000, refillTimeMs: 1000 } }, timer, () => now);
    limiter.charge(1000);
    expect(limiter.canConsume(1)).toBe(false);
    now = 1000;
    expect(limiter.canConsume(1000)).toBe(true);
  });

  test("the timerfd timer becomes readable after its delay", () => {
    const timer = timerfdTimer();
    try {
      timer.arm(20);
      expect(pollReadable([timer.fd], 0)).toEqual([false]);
      expect(pollReadable([timer.fd], 2000)).toEqual([true]);
      timer.acknowledge();
      expect(pollReadable([timer.fd], 0)).toEqual([false]);
    } finally {
      timer.close();
    }
  });
});
