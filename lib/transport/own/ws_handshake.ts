/**
 * The server side of the WebSocket opening handshake (RFC 6455 §4.2),
 * without I/O: checks an upgrade request and computes the accept key.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { hasToken } from "./http1.ts";

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/**
 * The `Sec-WebSocket-Accept` value for a client's key.
 *
 * @example The example of RFC 6455 §1.3
 * ```ts
 * import assert from "node:assert/strict";
 * import { acceptKey } from "./ws_handshake.ts";
 *
 * assert.equal(acceptKey("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
 * ```
 */
export function acceptKey(key: string): string {
  return sha1Base64(key + GUID) ?? createHash("sha1").update(key + GUID).digest("base64");
}

const W = new Int32Array(80);
const BLOCKS = new Uint8Array(128);
const B64_CODES = new TextEncoder().encode(
  "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
);
const DIGEST = new Int32Array(5);
const B64_OUT = new Uint8Array(28);

/**
 * SHA-1 (FIPS 180-4) of an ASCII text of at most 119 characters, in
 * base64; undefined for anything else (the caller falls back to
 * `node:crypto`). A key plus the GUID is 60 characters: two blocks. In
 * JavaScript it costs a fraction of a `createHash` call, which crosses into
 * the runtime four times (create, update, digest, base64: ~7 µs of a join
 * storm's ~300 µs per client, measured); every WebSocket handshake makes one.
 */
export function sha1Base64(text: string): string | undefined {
  const n = text.length;
  if (n > 119) return undefined;
  BLOCKS.fill(0);
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i);
    if (c > 0x7f) return undefined;
    BLOCKS[i] = c;
  }
  BLOCKS[n] = 0x80;
  const end = n + 9 <= 64 ? 64 : 128;
  const bits = n * 8;
  BLOCKS[end - 2] = bits >>> 8;
  BLOCKS[end - 1] = bits & 0xff;
  let h0 = 0x67452301, h1 = 0xefcdab89 | 0, h2 = 0x98badcfe | 0, h3 = 0x10325476;
  let h4 = 0xc3d2e1f0 | 0;
  for (let o = 0; o < end; o += 64) {
    for (let t = 0; t < 16; t++) {
      const i = o + 4 * t;
      W[t] = (BLOCKS[i] << 24) | (BLOCKS[i + 1] << 16) | (BLOCKS[i + 2] << 8) | BLOCKS[i + 3];
    }
    for (let t = 16; t < 80; t++) {
      const x = W[t - 3] ^ W[t - 8] ^ W[t - 14] ^ W[t - 16];
      W[t] = (x << 1) | (x >>> 31);
    }
    let a = h0, b = h1, c = h2, d = h3, e = h4;
    for (let t = 0; t < 80; t++) {
      let f: number, k: number;
      if (t < 20) {
        f = (b & c) | (~b & d);
        k = 0x5a827999;
      } else if (t < 40) {
        f = b ^ c ^ d;
        k = 0x6ed9eba1;
      } else if (t < 60) {
        f = (b & c) | (b & d) | (c & d);
        k = 0x8f1bbcdc | 0;
      } else {
        f = b ^ c ^ d;
        k = 0xca62c1d6 | 0;
      }
      const next = (((a << 5) | (a >>> 27)) + f + e + k + W[t]) | 0;
      e = d;
      d = c;
      c = (b << 30) | (b >>> 2);
      b = a;
      a = next;
    }
    h0 = (h0 + a) | 0;
    h1 = (h1 + b) | 0;
    h2 = (h2 + c) | 0;
    h3 = (h3 + d) | 0;
    h4 = (h4 + e) | 0;
  }
  // 20 bytes are 27 base64 characters and one "=": written as char codes
  // and made a string once (no digest array, no string per group).
  DIGEST[0] = h0;
  DIGEST[1] = h1;
  DIGEST[2] = h2;
  DIGEST[3] = h3;
  DIGEST[4] = h4;
  for (let g = 0; g < 7; g++) {
    const v = (digestByte(3 * g) << 16) | (digestByte(3 * g + 1) << 8) | digestByte(3 * g + 2);
    B64_OUT[4 * g] = B64_CODES[v >>> 18];
    B64_OUT[4 * g + 1] = B64_CODES[(v >>> 12) & 63];
    B64_OUT[4 * g + 2] = B64_CODES[(v >>> 6) & 63];
    B64_OUT[4 * g + 3] = B64_CODES[v & 63];
  }
  B64_OUT[27] = 0x3d; // "="
  return String.fromCharCode.apply(null, B64_OUT as unknown as number[]);
}

/** Byte `i` of the digest in {@link DIGEST} (big-endian words); 0 past its 20 bytes. */
function digestByte(i: number): number {
  return i >= 20 ? 0 : (DIGEST[i >> 2] >>> (24 - 8 * (i & 3))) & 0xff;
}

/** Why an upgrade request is refused, with the answer RFC 6455 §4.2.2 asks for. */
export interface HandshakeRefusal {
  /** 400, or 426 for an unsupported version. */
  status: 400 | 426;
  /** Fields to send with the refusal. */
  headers: [string, string][];
  /** What was wrong (constant text, safe to log and to send). */
  reason: string;
}

/** A valid upgrade request's key and offered subprotocols. */
export interface HandshakeRequest {
  /** `Sec-WebSocket-Key`. */
  key: string;
  /** The subprotocols offered, in order. */
  protocols: string[];
}

const KEY = /^[A-Za-z0-9+/]{21}[AQgw]==$/;

/**
 * Checks an upgrade request: GET over HTTP/1.1, `Upgrade: websocket`,
 * `Connection: upgrade`, a 16-byte base64 key and version 13.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkUpgrade } from "./ws_handshake.ts";
 *
 * const h = new Headers({
 *   upgrade: "websocket",
 *   connection: "keep-alive, Upgrade",
 *   "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
 *   "sec-websocket-version": "13",
 *   "sec-websocket-protocol": "chat, token.abc",
 * });
 * assert.deepEqual(checkUpgrade("GET", h), {
 *   key: "dGhlIHNhbXBsZSBub25jZQ==",
 *   protocols: ["chat", "token.abc"],
 * });
 * h.set("sec-websocket-version", "8");
 * const r = checkUpgrade("GET", h);
 * assert.ok("status" in r && r.status === 426);
 * assert.deepEqual("status" in r && r.headers, [["sec-websocket-version", "13"]]);
 * ```
 */
export function checkUpgrade(
  method: string,
  headers: Headers,
  httpMinor: 0 | 1 = 1,
): HandshakeRequest | HandshakeRefusal {
  const refuse = (reason: string): HandshakeRefusal => ({ status: 400, headers: [], reason });
  if (method !== "GET") return refuse("upgrade needs GET");
  if (httpMinor !== 1) return refuse("upgrade needs HTTP/1.1");
  if (!hasToken(headers.get("upgrade"), "websocket")) return refuse("Upgrade is not websocket");
  if (!hasToken(headers.get("connection"), "upgrade")) return refuse("Connection lacks upgrade");
  const version = headers.get("sec-websocket-version");
  if (version !== "13") {
    if (version === null) return refuse("no Sec-WebSocket-Version");
    return {
      status: 426,
      headers: [["sec-websocket-version", "13"]],
      reason: "unsupported Sec-WebSocket-Version",
    };
  }
  const key = headers.get("sec-websocket-key");
  if (key === null || !KEY.test(key)) return refuse("invalid Sec-WebSocket-Key");
  const offered = headers.get("sec-websocket-protocol");
  const protocols = offered === null
    ? []
    : offered.split(",").map((p) => p.trim()).filter((p) => p !== "");
  return { key, protocols };
}
