/**
 * A token bucket with the clock passed in, so it is deterministic in tests.
 *
 * @module
 */

/**
 * A token bucket: holds up to `burst` tokens and refills at `rate` tokens a
 * second. Time is given by the caller in milliseconds.
 *
 * @example
 * ```ts
 * const b = new TokenBucket(10, 20, 0);
 * b.take(0); // true, 19 tokens left
 * ```
 */
export class TokenBucket {
  /** Tokens available now (fractional while refilling). */
  tokens: number;
  /** When tokens were last added, in ms. */
  last: number;

  /** A full bucket at time `now` (ms). */
  constructor(readonly rate: number, readonly burst: number, now: number) {
    this.tokens = burst;
    this.last = now;
  }

  /** Takes one token at time `now` (ms); false when the bucket is empty. */
  take(now: number): boolean {
    if (now > this.last) {
      const t = this.tokens + ((now - this.last) * this.rate) / 1000;
      this.tokens = t > this.burst ? this.burst : t;
      this.last = now;
    }
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return true;
    }
    return false;
  }
}
