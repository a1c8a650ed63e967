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
  return createHash("sha1").update(key + GUID).digest("base64");
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
