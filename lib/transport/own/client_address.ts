/**
 * Which address a request comes from, without I/O: the TCP peer, unless the
 * peer is a trusted proxy that names the client in a header.
 *
 * @module
 */

/** A proxy whose header is believed. */
export interface TrustedProxy {
  /** The header naming the client, e.g. `x-forwarded-for` (a comma list, client first). */
  header: string;
  /** Addresses of the proxies; only their connections' header is read. */
  proxies: readonly string[];
}

/**
 * An address as a stable key: IPv4-mapped IPv6 addresses are written as
 * IPv4, brackets are dropped, and hexadecimal is lower-cased.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { normalizeAddress } from "./client_address.ts";
 *
 * assert.equal(normalizeAddress("::ffff:10.1.2.3"), "10.1.2.3");
 * assert.equal(normalizeAddress("[2001:DB8::1]"), "2001:db8::1");
 * ```
 */
export function normalizeAddress(address: string): string {
  let a = address.trim();
  if (a.startsWith("[") && a.endsWith("]")) a = a.slice(1, -1);
  a = a.toLowerCase();
  if (a.startsWith("::ffff:") && a.includes(".")) a = a.slice(7);
  return a;
}

const IP_LIKE = /^[0-9a-f:.]{2,45}$/;

/**
 * The client address of a request from `peer`. When `peer` is one of
 * `trust.proxies`, the header's entries are read from the right (the entry
 * the nearest proxy added), skipping trusted proxies; the first other entry
 * is the client. Entries that are not IP addresses end the walk, and so
 * does an absent header: the peer itself is then the answer.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { clientAddress } from "./client_address.ts";
 *
 * const trust = { header: "x-forwarded-for", proxies: ["127.0.0.1", "10.0.0.9"] };
 * assert.equal(clientAddress("127.0.0.1", "1.1.1.1, 2.2.2.2, 10.0.0.9", trust), "2.2.2.2");
 * // A header from an untrusted peer is ignored.
 * assert.equal(clientAddress("3.3.3.3", "1.1.1.1", trust), "3.3.3.3");
 * assert.equal(clientAddress("127.0.0.1", null, trust), "127.0.0.1");
 * ```
 */
export function clientAddress(
  peer: string,
  headerValue: string | null,
  trust: TrustedProxy | undefined,
): string {
  const p = normalizeAddress(peer);
  if (trust === undefined || headerValue === null || !isTrusted(p, trust)) return p;
  const entries = headerValue.split(",");
  let last = p;
  for (let i = entries.length - 1; i >= 0; i--) {
    const e = normalizeAddress(entries[i]);
    if (!IP_LIKE.test(e)) return last;
    if (!isTrusted(e, trust)) return e;
    last = e;
  }
  return last;
}

/** Whether connections from `peer` carry a trusted client header. */
export function isTrusted(peer: string, trust: TrustedProxy | undefined): boolean {
  if (trust === undefined) return false;
  const p = normalizeAddress(peer);
  return trust.proxies.some((x) => normalizeAddress(x) === p);
}
