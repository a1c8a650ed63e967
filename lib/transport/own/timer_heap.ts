/**
 * The connections' timeouts on one runtime timer: a binary min-heap of
 * deadlines. Every connection has a timeout armed most of its life (request
 * head, keep-alive, idle ping, close), and a runtime timer each costs a few
 * objects and about a microsecond and a half to set and clear; a join storm
 * arms thousands. Here arming is an object the connection already owns and
 * O(log n) heap steps, and the one runtime timer follows the earliest
 * deadline.
 *
 * Inputs: {@link TimerHeap.set} and {@link TimerHeap.clear}, with the time
 * read from the clock given to the constructor. Output: each due entry's
 * `fire()`, called from the runtime timer in deadline order, each entry at
 * most once per `set`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { type TimerEntry, TimerHeap } from "./timer_heap.ts";
 *
 * let now = 0;
 * const fired: string[] = [];
 * const later: (() => void)[] = [];
 * const heap = new TimerHeap({
 *   now: () => now,
 *   schedule: (fn) => {
 *     later.push(fn);
 *     return later.length;
 *   },
 *   cancel: () => {},
 * });
 * const entry = (name: string): TimerEntry => ({ deadline: 0, slot: -1, fire: () => fired.push(name) });
 * const a = entry("a"), b = entry("b"), c = entry("c");
 * heap.set(a, 300);
 * heap.set(b, 100);
 * heap.set(c, 200);
 * heap.clear(c);
 * now = 300;
 * later.pop()!();
 * assert.deepEqual(fired, ["b", "a"]);
 * assert.equal(heap.size, 0);
 * ```
 *
 * @module
 */

/** What the heap keeps of one timeout: the connection's own object. */
export interface TimerEntry {
  /** When it is due, on the heap's clock (set by the heap). */
  deadline: number;
  /** Its place in the heap, -1 while not armed (kept by the heap; start at -1). */
  slot: number;
  /** Called once the deadline passes. */
  fire(): void;
}

/** The clock and the runtime timer a {@link TimerHeap} uses. */
export interface TimerHeapOptions {
  /** Milliseconds, monotonic. Default `performance.now()`. */
  now?: () => number;
  /** Runs `fn` after `ms`; returns a handle for `cancel`. Default `setTimeout`. */
  schedule?: (fn: () => void, ms: number) => unknown;
  /** Cancels a `schedule`. Default `clearTimeout`. */
  cancel?: (handle: unknown) => void;
  /**
   * Told of an exception thrown by an entry's `fire`; the others still fire.
   * Default: `console.error`.
   */
  onError?: (error: unknown) => void;
}

/** Deadlines of many entries behind one runtime timer. */
export class TimerHeap {
  readonly #heap: TimerEntry[] = [];
  readonly #now: () => number;
  readonly #schedule: (fn: () => void, ms: number) => unknown;
  readonly #cancel: (handle: unknown) => void;
  readonly #onError: (error: unknown) => void;
  readonly #run = () => this.#fireDue();
  #handle: unknown;
  /** The deadline the runtime timer is set for (Infinity when none). */
  #timerAt = Infinity;

  /** A heap on the given clock (see {@link TimerHeapOptions}). */
  constructor(options: TimerHeapOptions = {}) {
    this.#now = options.now ?? (() => performance.now());
    this.#schedule = options.schedule ??
      ((fn, ms) => setTimeout(fn, ms) as unknown);
    this.#cancel = options.cancel ??
      ((h) => clearTimeout(h as ReturnType<typeof setTimeout>));
    this.#onError = options.onError ?? ((e) => console.error("timer failed:", e));
  }

  /** Entries armed. */
  get size(): number {
    return this.#heap.length;
  }

  /** Arms `entry` to fire `ms` from now, replacing its earlier deadline if it had one. */
  set(entry: TimerEntry, ms: number): void {
    entry.deadline = this.#now() + Math.max(0, ms);
    if (entry.slot < 0) {
      entry.slot = this.#heap.length;
      this.#heap.push(entry);
      this.#up(entry.slot);
    } else {
      this.#fix(entry.slot);
    }
    this.#arm();
  }

  /** Disarms `entry` (nothing when it is not armed). */
  clear(entry: TimerEntry): void {
    const i = entry.slot;
    if (i < 0) return;
    entry.slot = -1;
    const last = this.#heap.pop()!;
    if (last !== entry) {
      this.#heap[i] = last;
      last.slot = i;
      this.#fix(i);
    }
    if (this.#heap.length === 0) {
      // Nothing left to wait for: no timer may keep the process alive.
      if (this.#handle !== undefined) this.#cancel(this.#handle);
      this.#handle = undefined;
      this.#timerAt = Infinity;
    }
    // Otherwise the runtime timer stays set: when it fires early it finds
    // nothing due and follows the new earliest deadline. Resetting it on
    // every clear would cost more than that one wasted wake-up.
  }

  /** Whether `entry` is armed. */
  armed(entry: TimerEntry): boolean {
    return entry.slot >= 0;
  }

  #arm(): void {
    const first = this.#heap[0];
    if (first === undefined || first.deadline >= this.#timerAt) return;
    if (this.#handle !== undefined) this.#cancel(this.#handle);
    this.#timerAt = first.deadline;
    this.#handle = this.#schedule(this.#run, Math.max(0, first.deadline - this.#now()));
  }

  #fireDue(): void {
    this.#handle = undefined;
    this.#timerAt = Infinity;
    const now = this.#now();
    // Entries re-armed by their own fire() for "now" wait for the next run.
    for (let budget = this.#heap.length; budget > 0; budget--) {
      const first = this.#heap[0];
      if (first === undefined || first.deadline > now) break;
      this.clear(first);
      try {
        first.fire();
      } catch (e) {
        this.#onError(e);
      }
    }
    this.#arm();
  }

  #fix(i: number): void {
    if (i > 0 && this.#heap[i].deadline < this.#heap[(i - 1) >> 1].deadline) this.#up(i);
    else this.#down(i);
  }

  #up(i: number): void {
    const h = this.#heap;
    const e = h[i];
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (h[p].deadline <= e.deadline) break;
      h[i] = h[p];
      h[i].slot = i;
      i = p;
    }
    h[i] = e;
    e.slot = i;
  }

  #down(i: number): void {
    const h = this.#heap;
    const n = h.length;
    const e = h[i];
    for (;;) {
      const l = 2 * i + 1;
      if (l >= n) break;
      const r = l + 1;
      const c = r < n && h[r].deadline < h[l].deadline ? r : l;
      if (h[c].deadline >= e.deadline) break;
      h[i] = h[c];
      h[i].slot = i;
      i = c;
    }
    h[i] = e;
    e.slot = i;
  }
}
