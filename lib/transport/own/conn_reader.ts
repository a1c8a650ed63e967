/**
 * Reads from one connection into a fixed buffer, taking turns with the other
 * connections through the server's {@link ReadScheduler}.
 *
 * @module
 */

import type { ReadScheduler } from "./read_scheduler.ts";

/**
 * Read buffers of connections that ended, for the next ones: a storm of new
 * connections after others left allocates (and zeroes) no buffer, and the
 * garbage collector has less to do. At most {@link MAX_SPARE_BUFFERS}.
 */
const spare: Uint8Array<ArrayBuffer>[] = [];

/** Buffers kept in {@link spare} at most (4 MiB of 4 KiB buffers). */
const MAX_SPARE_BUFFERS = 1024;

/**
 * A connection's reader. Each {@link read} returns a view of the same buffer,
 * valid until the next call: the connection's memory for input stays fixed
 * however fast the peer sends.
 */
export class ConnReader {
  readonly #conn: Deno.Conn;
  readonly #buf: Uint8Array<ArrayBuffer>;
  readonly #scheduler: ReadScheduler;
  #error: unknown;
  #reading = false;
  #released = false;
  /** Reads and writes wait for turns (see {@link takeTurns}); not during the handshake. */
  #turns = false;
  /** The read waiting for its turn. */
  #waiting: ((bytes: Promise<Uint8Array | null>) => void) | undefined;
  // Bound once: a connection reads many times, and each read would
  // otherwise allocate its callbacks anew.
  readonly #onTurn = () => {
    const resolve = this.#waiting!;
    this.#waiting = undefined;
    resolve(this.#readNow());
  };
  readonly #onRead = (n: number | null): Uint8Array | null => {
    this.#reading = false;
    if (this.#released) {
      this.#giveBack();
      return null;
    }
    return n === null ? null : this.#buf.subarray(0, n);
  };
  readonly #onFail = (e: unknown): null => {
    this.#reading = false;
    this.#error = e;
    if (this.#released) this.#giveBack();
    return null;
  };

  /** A reader of `conn` with a buffer of `size` bytes (a released one when there is one). */
  constructor(conn: Deno.Conn, size: number, scheduler: ReadScheduler) {
    this.#conn = conn;
    const top = spare[spare.length - 1];
    this.#buf = top !== undefined && top.length === size ? spare.pop()! : new Uint8Array(size);
    this.#scheduler = scheduler;
  }

  /**
   * The connection is done: its buffer goes to the next connection, once
   * no read is in flight (the runtime may yet write into it): a read still
   * pending gives it back when it settles, and resolves null. Reads after
   * this return null.
   */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    if (!this.#reading) this.#giveBack();
  }

  #giveBack(): void {
    if (spare.length < MAX_SPARE_BUFFERS) spare.push(this.#buf);
  }

  /** The error that ended reading, if it ended with one (not set at a clean end). */
  get error(): unknown {
    return this.#error;
  }

  /**
   * From now on reads and writes take turns. Until then (the HTTP phase:
   * one request head read, one answer written) they go at once: turns are
   * for sockets that keep sending, and a handshake queued behind them waits
   * for nothing it could starve.
   */
  takeTurns(): void {
    this.#turns = true;
  }

  /** Takes a turn if one is free now (writes take turns too); else see {@link waitTurnThen}. */
  acquire(): boolean {
    return !this.#turns || this.#scheduler.acquire();
  }

  /** Calls `start` when a turn is free, after {@link acquire} said no. */
  waitTurnThen(start: () => void): void {
    this.#scheduler.wait(start);
  }

  /** The next bytes, or null at the end of the stream or on any error (see {@link error}). */
  read(): Promise<Uint8Array | null> {
    // Plain promises, not an async function: a connection waits in a read
    // for most of its life, and an async frame is one more object it keeps.
    if (!this.#turns || this.#scheduler.acquire()) return this.#readNow();
    return new Promise((resolve) => {
      this.#waiting = resolve;
      this.#scheduler.wait(this.#onTurn);
    });
  }

  #readNow(): Promise<Uint8Array | null> {
    if (this.#released) return Promise.resolve(null);
    this.#reading = true;
    // Only the bytes this read wrote are handed out: a buffer that served
    // another connection never shows what it held.
    return this.#conn.read(this.#buf).then(this.#onRead, this.#onFail);
  }
}

/** Writes all of `data`, however many calls it takes. */
export async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await conn.write(data.subarray(off));
}

/** Closes `conn`, ignoring that it may be closed already. */
export function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed: cutting twice is harmless.
  }
}
