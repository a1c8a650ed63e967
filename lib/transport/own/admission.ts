/**
 * Connection caps, without I/O: a total and a per-client-address count, so
 * one address (or a flood from many) cannot take every descriptor.
 *
 * @module
 */

/** Why a connection was refused. */
export type Refusal = "total" | "address";

/** Settings of {@link Admission}. */
export interface AdmissionOptions {
  /** Most connections at once. */
  maxConnections: number;
  /** Most connections from one client address at once (0 = no cap). */
  maxPerAddress: number;
}

/**
 * Counts open connections by client address and says whether one more may
 * be let in. An address that is `undefined` is counted in the total only
 * (a connection from a trusted proxy, until a request names its client).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { Admission } from "./admission.ts";
 *
 * const a = new Admission({ maxConnections: 3, maxPerAddress: 2 });
 * assert.equal(a.admit("10.0.0.1"), undefined);
 * assert.equal(a.admit("10.0.0.1"), undefined);
 * assert.equal(a.admit("10.0.0.1"), "address");
 * assert.equal(a.admit("10.0.0.2"), undefined);
 * assert.equal(a.admit("10.0.0.3"), "total");
 * a.release("10.0.0.1");
 * assert.equal(a.admit("10.0.0.3"), undefined);
 * assert.equal(a.total, 3);
 * ```
 */
export class Admission {
  readonly #options: AdmissionOptions;
  readonly #byAddress = new Map<string, number>();
  #total = 0;

  /** Caps as given. */
  constructor(options: AdmissionOptions) {
    this.#options = options;
  }

  /** Connections counted now. */
  get total(): number {
    return this.#total;
  }

  /** Connections counted for `address`. */
  count(address: string): number {
    return this.#byAddress.get(address) ?? 0;
  }

  /** Counts a new connection, or says why it is refused (and counts nothing). */
  admit(address: string | undefined): Refusal | undefined {
    if (this.#total >= this.#options.maxConnections) return "total";
    if (address !== undefined && !this.#addOne(address)) return "address";
    this.#total++;
    return undefined;
  }

  /**
   * Moves a counted connection from one address to another (a request from
   * a trusted proxy named its client). On refusal nothing changes.
   */
  move(from: string | undefined, to: string): Refusal | undefined {
    if (from === to) return undefined;
    if (!this.#addOne(to)) return "address";
    if (from !== undefined) this.#removeOne(from);
    return undefined;
  }

  /** Forgets a connection counted with {@link admit}. */
  release(address: string | undefined): void {
    this.#total--;
    if (address !== undefined) this.#removeOne(address);
  }

  #addOne(address: string): boolean {
    const n = this.#byAddress.get(address) ?? 0;
    const cap = this.#options.maxPerAddress;
    if (cap > 0 && n >= cap) return false;
    this.#byAddress.set(address, n + 1);
    return true;
  }

  #removeOne(address: string): void {
    const n = (this.#byAddress.get(address) ?? 0) - 1;
    if (n <= 0) this.#byAddress.delete(address);
    else this.#byAddress.set(address, n);
  }
}
