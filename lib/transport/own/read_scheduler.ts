/**
 * Fair turns for socket reads.
 *
 * Why: in Deno a read that finds data waiting completes at once, inside the
 * same event-loop turn, and the runtime's I/O budget for the turn (Tokio's
 * cooperative budget, 128 polls) is then spent on the sockets that JavaScript
 * re-armed first. With hundreds of backlogged sockets the same ~128 are read
 * over and over and the rest are never read (measured: 872 of 1,000 sockets
 * starved for seconds; see the design note in `server.ts`). Letting only a
 * few reads be re-armed per turn leaves the runtime budget to the reads that
 * are already waiting, and the others queue here in FIFO order, so every
 * backlogged socket is read in turn.
 *
 * @module
 */

import { setImmediate } from "node:timers";

/** Settings of {@link ReadScheduler}. */
export interface ReadSchedulerOptions {
  /** Reads (and writes) started per turn before the rest queue (0 = no limit). Default 4. */
  readsPerTurn?: number;
  /** Runs `fn` on a later event-loop turn. Default `setImmediate(fn)`. */
  defer?: (fn: () => void) => void;
}

/**
 * Hands out read turns: {@link acquire} says whether a read may start now;
 * otherwise the caller waits its turn with {@link wait}. The budget renews
 * on the turn after the first wait (a `setImmediate`, not a zero timeout,
 * which costs a 1–2 ms timer tick in Deno and would cap a busy socket's
 * reads), so an idle server keeps nothing armed.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { ReadScheduler } from "./read_scheduler.ts";
 *
 * const turns: (() => void)[] = [];
 * const s = new ReadScheduler({ readsPerTurn: 2, defer: (fn) => turns.push(fn) });
 * const order: string[] = [];
 * assert.equal(s.acquire(), true);
 * assert.equal(s.acquire(), true);
 * assert.equal(s.acquire(), false);
 * s.wait(() => order.push("a"));
 * s.wait(() => order.push("b"));
 * s.wait(() => order.push("c"));
 * turns.shift()!(); // next turn: two more reads
 * assert.deepEqual(order, ["a", "b"]);
 * turns.shift()!();
 * assert.deepEqual(order, ["a", "b", "c"]);
 * ```
 */
export class ReadScheduler {
  readonly #perTurn: number;
  readonly #defer: (fn: () => void) => void;
  #left: number;
  #queue: (() => void)[] = [];
  #head = 0;
  #scheduled = false;

  /** A scheduler with the given settings. */
  constructor(options: ReadSchedulerOptions = {}) {
    this.#perTurn = options.readsPerTurn ?? 4;
    // setImmediate runs on the next turn, after the I/O it polled: a zero
    // setTimeout would wait for the timer's 1–2 ms tick instead.
    this.#defer = options.defer ?? ((fn) => setImmediate(fn));
    this.#left = this.#perTurn;
  }

  /** Readers waiting for a turn. */
  get waiting(): number {
    return this.#queue.length - this.#head;
  }

  /** Takes a turn if one is free now and nobody is waiting. */
  acquire(): boolean {
    if (this.#perTurn === 0) return true;
    if (this.#left > 0 && this.waiting === 0) {
      this.#left--;
      return true;
    }
    return false;
  }

  /** Queues `start`, called when a turn is free (after {@link acquire} said no). */
  wait(start: () => void): void {
    this.#queue.push(start);
    this.#schedule();
  }

  #schedule(): void {
    if (this.#scheduled) return;
    this.#scheduled = true;
    this.#defer(() => this.#turn());
  }

  #turn(): void {
    this.#scheduled = false;
    this.#left = this.#perTurn;
    while (this.#left > 0 && this.waiting > 0) {
      this.#left--;
      const start = this.#queue[this.#head++];
      start();
    }
    if (this.#head > 1024 && this.#head * 2 > this.#queue.length) {
      this.#queue = this.#queue.slice(this.#head);
      this.#head = 0;
    }
    if (this.waiting > 0) this.#schedule();
  }
}
