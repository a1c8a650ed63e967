/**
 * Traffic shaping: budgets that delay frames instead of refusing them, and
 * what a frame costs. The clock is passed in, so shaping is exact in tests.
 *
 * A {@link Budget} is a token bucket that may go into debt. A frame is
 * handled as soon as one whole token is there and then pays its whole cost,
 * so one expensive frame passes at once and the frames after it wait until
 * the debt is repaid. Nothing is dropped: the broker queues a frame it cannot
 * afford yet and handles it, in order, when the budget allows.
 *
 * @module
 */

/**
 * A token bucket that may go into debt. Rates are per second; times are in
 * milliseconds on the caller's clock.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const b = new Budget(10, 2, 0);
 * assert.equal(b.ready(0), true);
 * b.charge(5); // a frame costing 5 passes on a balance of 2 and leaves a debt of 3
 * assert.equal(b.ready(0), false);
 * assert.equal(b.waitMs(0), 400); // until one whole token is there again
 * assert.equal(b.ready(400), true);
 * ```
 */
export class Budget {
  /** The balance: positive is credit, negative is debt. */
  tokens: number;
  /** When the balance was last brought up to date, in ms. */
  last: number;

  /** A full budget at time `now`: `rate` tokens a second, at most `capacity` banked. */
  constructor(public rate: number, public capacity: number, now: number) {
    this.tokens = capacity;
    this.last = now;
  }

  /** Brings the balance up to time `now`. */
  refill(now: number): void {
    if (now <= this.last) return;
    const t = this.tokens + ((now - this.last) * this.rate) / 1000;
    this.tokens = t > this.capacity ? this.capacity : t;
    this.last = now;
  }

  /**
   * True when at least one whole token is there at `now`: the next frame may
   * go, whatever it costs.
   */
  ready(now: number): boolean {
    this.refill(now);
    return this.tokens >= 1;
  }

  /** Takes `cost` tokens; the balance may go negative. */
  charge(cost: number): void {
    this.tokens -= cost;
  }

  /** Whole milliseconds from `now` until the budget is {@link Budget.ready} (0 when it is). */
  waitMs(now: number): number {
    this.refill(now);
    if (this.tokens >= 1) return 0;
    return Math.ceil(((1 - this.tokens) * 1000) / this.rate);
  }

  /**
   * Changes the rate and the capacity at `now`, adding `credit` tokens first
   * (a negative credit takes them away); the balance never exceeds the new
   * capacity.
   */
  resize(now: number, rate: number, capacity: number, credit: number): void {
    this.refill(now);
    this.rate = rate;
    this.capacity = capacity;
    const t = this.tokens + credit;
    this.tokens = t > capacity ? capacity : t;
  }
}

/** Bytes that cost one token more. */
const BYTES_PER_TOKEN = 1024;
/** Nested arrays and objects that cost one token more. */
const CONTAINERS_PER_TOKEN = 8;

/**
 * What handling a frame costs, in tokens: 1, plus 1 per KiB, plus 1 per 8
 * arrays or objects nested in it. Parsing a container costs far more than a
 * byte of a string (a 64 KiB frame of nested arrays takes about 700 times as
 * long to parse as a 64 KiB string), so a frame is charged for both. Brackets
 * inside strings are counted too; that only ever overcharges, and real
 * signals (SDP, candidates) hold none.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.equal(frameCost('["ping"]'), 1);
 * assert.equal(frameCost("[".repeat(4097) + "]".repeat(4097)), 1 + 8 + 512);
 * ```
 */
export function frameCost(data: string | Uint8Array): number {
  let containers = 0;
  let bytes: number;
  if (typeof data === "string") {
    bytes = data.length;
    for (let i = data.indexOf("[", 1); i >= 0; i = data.indexOf("[", i + 1)) containers++;
    for (let i = data.indexOf("{"); i >= 0; i = data.indexOf("{", i + 1)) containers++;
  } else {
    bytes = data.byteLength;
    // The first `[` opens the frame itself and is not charged.
    let outer = true;
    for (let i = 0; i < bytes; i++) {
      const c = data[i];
      if (c === 0x5b) {
        if (outer) outer = false;
        else containers++;
      } else if (c === 0x7b) containers++;
    }
  }
  return 1 + Math.floor(bytes / BYTES_PER_TOKEN) + Math.floor(containers / CONTAINERS_PER_TOKEN);
}

/** Which bound a queue would pass. */
export const QUEUE_BOUNDS = ["frames", "bytes"] as const;

/** One of {@link QUEUE_BOUNDS}. */
export type QueueBound = typeof QUEUE_BOUNDS[number];

/** How many frames and bytes may wait in one connection's queue. */
export interface QueueLimits {
  /** Frames that may wait; one more passes the bound. */
  maxQueuedFrames: number;
  /** Bytes that may wait; more pass the bound. */
  maxQueuedBytes: number;
}

function sizeOf(data: string | Uint8Array): number {
  return typeof data === "string" ? data.length : data.byteLength;
}

/**
 * The frames one connection has waiting, in arrival order, bounded in frames
 * and in bytes, with the wake that is pending for them. Every engine that
 * shapes its connections keeps one per connection, so the rules of waiting
 * (order, bounds, one wake at a time, re-entrant drains) are written once.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const q = new FrameQueue();
 * const limits = { maxQueuedFrames: 2, maxQueuedBytes: 1024 };
 * assert.equal(q.push("a", limits), undefined);
 * assert.equal(q.push("b", limits), undefined);
 * assert.equal(q.push("c", limits), "frames"); // not queued
 * const ran: string[] = [];
 * // The first frame runs, the second must wait 50 ms.
 * const wait = q.drain((d) => (d === "a" ? (ran.push(d), 0) : 50), () => true);
 * assert.deepEqual([wait, ran, q.length], [50, ["a"], 1]);
 * ```
 */
export class FrameQueue {
  #items: (string | Uint8Array | undefined)[] = [];
  #head = 0;
  #bytes = 0;
  #draining = false;
  /** When the pending wake is due (the engine's clock), or -1 when none is. */
  wakeAt: number = -1;

  /** Frames waiting. */
  get length(): number {
    return this.#items.length - this.#head;
  }

  /** Bytes waiting (UTF-16 units for text). */
  get bytes(): number {
    return this.#bytes;
  }

  /** Queues `data` at the end, or returns the bound it would pass (and queues nothing). */
  push(data: string | Uint8Array, limits: QueueLimits): QueueBound | undefined {
    const size = sizeOf(data);
    if (this.length >= limits.maxQueuedFrames) return "frames";
    if (this.#bytes + size > limits.maxQueuedBytes) return "bytes";
    this.#items.push(data);
    this.#bytes += size;
    return undefined;
  }

  /**
   * Runs waiting frames through `step`, oldest first, while `go()` holds.
   * `step` returns 0 when it handled the frame, or the milliseconds to wait
   * before the frame can be tried again; `drain` then returns that wait (0
   * when it stopped for another reason). A call from inside `step` (an
   * answer given re-entrantly) returns 0 at once: the running loop goes on.
   */
  drain(step: (data: string | Uint8Array) => number, go: () => boolean): number {
    if (this.#draining) return 0;
    this.#draining = true;
    let wait = 0;
    try {
      const q = this.#items;
      while (this.#head < q.length && go()) {
        const data = q[this.#head]!;
        wait = step(data);
        if (wait > 0 || this.#head === q.length) break;
        q[this.#head++] = undefined;
        this.#bytes -= sizeOf(data);
      }
      if (this.#head === q.length) this.clear();
      else if (this.#head >= 1024) {
        q.splice(0, this.#head);
        this.#head = 0;
      }
    } finally {
      this.#draining = false;
    }
    return wait;
  }

  /**
   * True when a wake in `ms` from `now` must be asked for: none is pending,
   * or the pending one is later. Records it as pending.
   */
  schedule(now: number, ms: number): boolean {
    const at = now + ms;
    if (this.wakeAt >= 0 && this.wakeAt <= at) return false;
    this.wakeAt = at;
    return true;
  }

  /** Forgets every waiting frame. */
  clear(): void {
    this.#items.length = 0;
    this.#head = 0;
    this.#bytes = 0;
  }
}
