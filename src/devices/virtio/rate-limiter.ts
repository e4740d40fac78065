/**
 * Token buckets for a device's bandwidth and operations, as Firecracker
 * configures them: a bucket holds up to `size` tokens and refills completely
 * in `refillTimeMs`. A request takes its bytes from the bandwidth bucket and
 * one token from the ops bucket, from both or from neither. When a device is
 * out of tokens it stops taking requests and arms a timerfd for when enough
 * will be back; the I/O worker polls that timerfd with the device's other
 * descriptors, so no thread sleeps and no timer runs in JS.
 */
import { armTimerfd, close, drainEventfd, timerfd } from "../../ffi/syscalls.ts";

export interface BucketConfig {
  /** Capacity in tokens (bytes for bandwidth, requests for ops). */
  readonly size: number;
  /** Time for an empty bucket to fill up, in milliseconds. */
  readonly refillTimeMs: number;
}

export interface RateLimitConfig {
  readonly bandwidth?: BucketConfig;
  readonly ops?: BucketConfig;
}

export type Clock = () => number;

export class TokenBucket {
  private tokens: number;
  private lastRefill: number;

  constructor(
    readonly config: BucketConfig,
    private readonly clock: Clock,
  ) {
    if (!(config.size > 0) || !(config.refillTimeMs > 0)) throw new RangeError(`a token bucket needs size > 0 and refillTimeMs > 0`);
    this.tokens = config.size;
    this.lastRefill = clock();
  }

  /** Tokens a request of `n` is charged: a request larger than the bucket costs a full bucket, so it is never starved. */
  cost(n: number): number {
    return Math.min(n, this.config.size);
  }

  available(): number {
    this.refill();
    return this.tokens;
  }

  take(n: number): void {
    this.refill();
    this.tokens -= this.cost(n);
  }

  /** Milliseconds until `n` tokens are there (0 if they already are). */
  msUntil(n: number): number {
    this.refill();
    const missing = this.cost(n) - this.tokens;
    return missing <= 0 ? 0 : (missing * this.config.refillTimeMs) / this.config.size;
  }

  private refill(): void {
    const now = this.clock();
    const elapsed = now - this.lastRefill;
    if (elapsed <= 0) return;
    this.tokens = Math.min(this.config.size, this.tokens + (elapsed * this.config.size) / this.config.refillTimeMs);
    this.lastRefill = now;
  }
}

export interface LimiterTimer {
  readonly fd: number;
  arm(delayMs: number): void;
  /** Clears an expiry (after the fd polled readable). */
  acknowledge(): void;
  close(): void;
}

export class RateLimiter {
  private readonly bandwidth: TokenBucket | undefined;
  private readonly ops: TokenBucket | undefined;
  private throttled = false;
  /** Requests refused for want of tokens (each later served when the timer fires). */
  throttleEvents = 0;

  constructor(
    config: RateLimitConfig,
    private readonly timer: LimiterTimer,
    clock: Clock = () => performance.now(),
  ) {
    this.bandwidth = config.bandwidth ? new TokenBucket(config.bandwidth, clock) : undefined;
    this.ops = config.ops ? new TokenBucket(config.ops, clock) : undefined;
  }

  /**
   * Takes `bytes` and one operation if both buckets have them and returns
   * true; otherwise takes nothing, arms the timer for when they will be
   * there, and returns false.
   */
  consume(bytes: number): boolean {
    const wait = Math.max(this.bandwidth?.msUntil(bytes) ?? 0, this.ops?.msUntil(1) ?? 0);
    if (wait > 0) {
      this.throttled = true;
      this.throttleEvents++;
      this.timer.arm(wait);
      return false;
    }
    this.bandwidth?.take(bytes);
    this.ops?.take(1);
    return true;
  }

  /** Charges what was already moved (received packets cannot be refused once read); later requests wait for the debt. */
  charge(bytes: number): void {
    this.bandwidth?.take(bytes);
    this.ops?.take(1);
  }

  /** Whether a request of `bytes` could go now (without taking anything). */
  canConsume(bytes: number): boolean {
    return (this.bandwidth?.msUntil(bytes) ?? 0) === 0 && (this.ops?.msUntil(1) ?? 0) === 0;
  }

  /** Arms the timer for when a request of `bytes` can go; used when a device stops reading for want of tokens. */
  waitFor(bytes: number): void {
    const wait = Math.max(this.bandwidth?.msUntil(bytes) ?? 0, this.ops?.msUntil(1) ?? 0);
    this.throttled = true;
    this.throttleEvents++;
    this.timer.arm(Math.max(wait, 0.001));
  }

  get isThrottled(): boolean {
    return this.throttled;
  }

  get timerFd(): number {
    return this.timer.fd;
  }

  /** The timer fired: the device may try again. */
  timerFired(): void {
    this.timer.acknowledge();
    this.throttled = false;
  }

  close(): void {
    this.timer.close();
  }
}

/** The real timer: a timerfd the I/O worker polls. */
export function timerfdTimer(): LimiterTimer {
  const fd = timerfd();
  return {
    fd,
    arm: (delayMs) => armTimerfd(fd, delayMs),
    acknowledge: () => void drainEventfd(fd), // a timerfd reads like an eventfd: an 8-byte expiry count
    close: () => close(fd),
  };
}
