/**
 * Pacing for a failing accept loop, without I/O: how long to wait after each
 * consecutive failure, and whether a failure may be logged now. An `accept()`
 * that fails with EMFILE fails again at once until a descriptor is freed, so
 * retrying without a pause would spin a core and flood the log.
 *
 * @module
 */

/** Settings of {@link AcceptBackoff}. */
export interface BackoffOptions {
  /** First delay after a failure, in ms. Default 10. */
  initialMs?: number;
  /** Largest delay, in ms. Default 1000. */
  maxMs?: number;
}

/**
 * Doubling delays between retries, reset by a success.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { AcceptBackoff } from "./backoff.ts";
 *
 * const b = new AcceptBackoff({ initialMs: 10, maxMs: 50 });
 * assert.deepEqual([b.failure(), b.failure(), b.failure(), b.failure()], [10, 20, 40, 50]);
 * b.success();
 * assert.equal(b.failure(), 10);
 * ```
 */
export class AcceptBackoff {
  readonly #initial: number;
  readonly #max: number;
  #next: number;

  /** A backoff with the given bounds. */
  constructor(options: BackoffOptions = {}) {
    this.#initial = options.initialMs ?? 10;
    this.#max = options.maxMs ?? 1000;
    this.#next = this.#initial;
  }

  /** Records a failure; returns how long to wait before trying again, in ms. */
  failure(): number {
    const d = this.#next;
    this.#next = Math.min(this.#max, this.#next * 2);
    return d;
  }

  /** Records a success: the next failure waits the initial delay again. */
  success(): void {
    this.#next = this.#initial;
  }
}

/**
 * Lets one event through per interval and counts the ones held back, so a
 * repeated error is logged at a bounded rate with how often it happened.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { LogThrottle } from "./backoff.ts";
 *
 * const t = new LogThrottle(1000);
 * assert.deepEqual(t.take(0), { log: true, suppressed: 0 });
 * assert.deepEqual(t.take(10), { log: false, suppressed: 1 });
 * assert.deepEqual(t.take(20), { log: false, suppressed: 2 });
 * assert.deepEqual(t.take(1000), { log: true, suppressed: 2 });
 * assert.deepEqual(t.take(1001), { log: false, suppressed: 1 });
 * ```
 */
export class LogThrottle {
  readonly #interval: number;
  #last = -Infinity;
  #suppressed = 0;

  /** At most one event per `intervalMs`. */
  constructor(intervalMs: number) {
    this.#interval = intervalMs;
  }

  /**
   * Records an event at time `now` (ms). `log` says whether to log it;
   * `suppressed` is how many were held back since the last one logged
   * (including this one when it is held back).
   */
  take(now: number): { log: boolean; suppressed: number } {
    if (now - this.#last >= this.#interval) {
      const suppressed = this.#suppressed;
      this.#last = now;
      this.#suppressed = 0;
      return { log: true, suppressed };
    }
    this.#suppressed++;
    return { log: false, suppressed: this.#suppressed };
  }
}
