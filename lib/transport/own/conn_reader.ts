/**
 * Reads from one connection into a fixed buffer, taking turns with the other
 * connections through the server's {@link ReadScheduler}.
 *
 * @module
 */

import type { ReadScheduler } from "./read_scheduler.ts";

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

  /** A reader of `conn` with a buffer of `size` bytes. */
  constructor(conn: Deno.Conn, size: number, scheduler: ReadScheduler) {
    this.#conn = conn;
    this.#buf = new Uint8Array(size);
    this.#scheduler = scheduler;
  }

  /** The error that ended reading, if it ended with one (not set at a clean end). */
  get error(): unknown {
    return this.#error;
  }

  /** Waits for a turn, as a read does (writes take turns too). */
  async turn(): Promise<void> {
    if (!this.#scheduler.acquire()) {
      await new Promise<void>((resolve) => this.#scheduler.wait(resolve));
    }
  }

  /** The next bytes, or null at the end of the stream or on any error (see {@link error}). */
  async read(): Promise<Uint8Array | null> {
    if (!this.#scheduler.acquire()) {
      await new Promise<void>((resolve) => this.#scheduler.wait(resolve));
    }
    try {
      const n = await this.#conn.read(this.#buf);
      return n === null ? null : this.#buf.subarray(0, n);
    } catch (e) {
      this.#error = e;
      return null;
    }
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
