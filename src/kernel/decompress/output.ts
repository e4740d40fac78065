/**
 * What the in-process decompressors share: a growable output buffer with a
 * hard size limit (a bzImage says how big its kernel is, so a corrupt or
 * hostile payload cannot make Volt allocate without bound) and one error type
 * whose message names the format and what was wrong.
 */

export class DecompressError extends Error {
  override name = "DecompressError";
}

export class Output {
  buf: Uint8Array;
  pos = 0;
  readonly limit: number;
  private readonly format: string;

  /** `expected` sizes the first allocation; `limit` is the most the stream may produce. */
  constructor(format: string, limit: number, expected?: number) {
    this.format = format;
    this.limit = limit;
    // The first allocation trusts `expected` only so far: a hostile size word must not cost a gigabyte up front.
    this.buf = new Uint8Array(Math.min(limit, expected ?? 1 << 20, 128 << 20));
  }

  /** Makes room for `n` more bytes or throws when that would pass the limit. */
  reserve(n: number): void {
    const need = this.pos + n;
    if (need <= this.buf.length) return;
    if (need > this.limit) throw new DecompressError(`${this.format}: output exceeds the expected ${this.limit} bytes (corrupt data)`);
    let size = Math.max(this.buf.length * 2, 1 << 16);
    while (size < need) size *= 2;
    const grown = new Uint8Array(Math.min(size, this.limit));
    grown.set(this.buf.subarray(0, this.pos));
    this.buf = grown;
  }

  result(): Uint8Array {
    return this.buf.length === this.pos ? this.buf : this.buf.slice(0, this.pos);
  }
}
