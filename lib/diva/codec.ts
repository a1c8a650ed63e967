/**
 * The wire codec: client frames in, server messages out.
 *
 * Decoding validates the whole shape of a call (argument count, types and
 * naming rules), so the broker only ever sees well-formed calls. Calls are
 * typed as tuples: the parsed JSON array is the call, with no copy.
 *
 * @module
 */

import { globalColon, isJsonPlain, isName } from "./names.ts";
import { frameText, NOT_JSON, parseJson } from "../transport/utf8.ts";

/** A well-formed client call, exactly as it arrived on the wire. */
export type Call =
  | readonly ["ident"]
  | readonly ["join", string, string]
  | readonly ["join", string]
  | readonly ["signal", string, string, unknown]
  | readonly ["leave", string]
  | readonly ["ice"]
  | readonly ["ping"]
  | readonly ["auth", string]
  | readonly ["challenge"]
  | readonly ["prove", string, string]
  | readonly ["session"]
  | readonly ["resume", string];

/** Every call name the server knows, in the order metrics list them. */
export const CALL_NAMES = [
  "ident",
  "join",
  "signal",
  "leave",
  "ice",
  "ping",
  "auth",
  "challenge",
  "prove",
  "session",
  "resume",
] as const;

/** One of {@link CALL_NAMES}. */
export type CallName = typeof CALL_NAMES[number];

/** Every error code of the protocol, in the order PROTOCOL.md lists them. */
export const ERROR_CODES = [
  "bad-json",
  "bad-frame",
  "unknown-call",
  "bad-args",
  "no-ident",
  "ident-taken",
  "not-owner",
  "cross-room",
  "unknown-peer",
  "limit",
  "rate-limited",
  "too-large",
  "forbidden",
  "unavailable",
] as const;

/** One of {@link ERROR_CODES}. */
export type ErrorCode = typeof ERROR_CODES[number];

/** Every message type the server sends, in the order metrics list them. */
export const OUT_TYPES = [
  "ident",
  "join",
  "stun",
  "signal",
  "leave",
  "bye",
  "ice",
  "pong",
  "error",
  "auth",
  "challenge",
  "prove",
  "session",
  "resume",
] as const;

/** One of {@link OUT_TYPES}. */
export type OutType = typeof OUT_TYPES[number];

/** WebSocket close codes the protocol uses. */
export const CloseCode = {
  normal: 1000,
  goingAway: 1001,
  policy: 1008,
  tooLarge: 1009,
  internal: 1011,
} as const;

/** Why a frame could not be turned into a call. */
export interface Fault {
  /** The call's name, or `"frame"` when the frame itself is unusable. */
  readonly call: string;
  /** The protocol error code. */
  readonly code: ErrorCode;
  /** A short human-readable explanation. */
  readonly detail: string;
}

/** Longest call name echoed back in an `unknown-call` error. */
const MAX_ECHOED_NAME = 64;

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

function fault(call: string, code: ErrorCode, detail: string): Fault {
  return { call, code, detail };
}

const BAD_JSON = fault("frame", "bad-json", "frame is not valid JSON");
const BAD_UTF8 = fault("frame", "bad-json", "binary frame is not valid UTF-8");
const BAD_FRAME = fault(
  "frame",
  "bad-frame",
  "frame must be a non-empty JSON array whose first element is a string",
);

/** The `bad-args` detail for a `from` that is not a valid global ident. */
export const SIGNAL_FROM = "from is not a valid global ident";
/** The `bad-args` detail for a `to` that is not a valid global ident. */
export const SIGNAL_TO = "to is not a valid global ident";

function badArgs(call: CallName, detail: string): Fault {
  return fault(call, "bad-args", detail);
}

/** True when `x` is a {@link Fault} rather than a {@link Call}. */
export function isFault(x: Call | Fault): x is Fault {
  return !Array.isArray(x);
}

/**
 * Decodes one frame (text, or binary holding UTF-8 JSON) into a call.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.deepEqual(decode('["join","bob","lobby"]'), ["join", "bob", "lobby"]);
 * const f = decode('["join","a:b","lobby"]');
 * assert.ok(isFault(f) && f.code === "bad-args");
 * ```
 */
export function decode(frame: string | Uint8Array): Call | Fault {
  const text = frameText(frame);
  if (text === undefined) return BAD_UTF8;
  const v = parseJson(text);
  if (v === NOT_JSON) return BAD_JSON;
  if (!Array.isArray(v) || v.length === 0 || typeof v[0] !== "string") return BAD_FRAME;
  const n = v.length;
  switch (v[0]) {
    case "signal":
      if (n !== 4) return badArgs("signal", 'expected ["signal", from, to, data]');
      // The naming rules of from and to are left to the broker: a global ident
      // found in its index is valid, so it checks names only when a lookup
      // misses, and the hot path skips two character scans.
      if (typeof v[1] !== "string") return badArgs("signal", SIGNAL_FROM);
      if (typeof v[2] !== "string") return badArgs("signal", SIGNAL_TO);
      return v as unknown as Call;
    case "join":
      if (n === 3) {
        if (!isName(v[1])) return badArgs("join", "ident breaks the naming rules");
        if (!isName(v[2])) return badArgs("join", "room breaks the naming rules");
        return v as unknown as Call;
      }
      if (n === 2) {
        if (!isName(v[1])) return badArgs("join", "room breaks the naming rules");
        return v as unknown as Call;
      }
      return badArgs("join", 'expected ["join", ident, room] or ["join", room]');
    case "leave":
      if (n !== 2 || globalColon(v[1]) < 0) {
        return badArgs("leave", 'expected ["leave", "room:ident"]');
      }
      return v as unknown as Call;
    case "ident":
    case "ice":
    case "ping":
    case "challenge":
    case "session":
      if (n !== 1) return badArgs(v[0], `expected ["${v[0]}"] with no arguments`);
      return v as unknown as Call;
    case "auth":
      if (n !== 2 || typeof v[1] !== "string" || v[1] === "") {
        return badArgs("auth", 'expected ["auth", token]');
      }
      return v as unknown as Call;
    case "resume":
      if (n !== 2 || typeof v[1] !== "string" || v[1] === "" || v[1].length > 256) {
        return badArgs("resume", 'expected ["resume", token]');
      }
      return v as unknown as Call;
    case "prove":
      if (n !== 3 || !isName(v[1]) || typeof v[2] !== "string" || v[2].length > 256) {
        return badArgs("prove", 'expected ["prove", ident, signature]');
      }
      return v as unknown as Call;
    default: {
      const name = (v[0] as string).slice(0, MAX_ECHOED_NAME);
      return fault(name, "unknown-call", "no such call");
    }
  }
}

/**
 * The relayed frame `["signal", to, from, data]`. `data` is copied as the
 * sender's own JSON text instead of being serialised again, so it reaches the
 * receiver exactly as sent (re-encoding would turn `1e400` into `null` and
 * `-0` into `0`) and costs no stringify.
 */
export function encodeSignal(raw: string | Uint8Array, call: Call & { 0: "signal" }): string {
  const from = call[1];
  const to = call[2];
  if (isJsonPlain(from) && isJsonPlain(to)) {
    if (typeof raw === "string") {
      // The compact layout every client library sends: `data` starts right
      // after a known prefix, so no scan is needed.
      const start = compactDataStart(raw, from, to);
      if (start > 0) return '["signal","' + to + '","' + from + '",' + raw.slice(start);
    }
    // A binary frame only gets here after it decoded, so this cannot throw.
    const data = rawSignalData(typeof raw === "string" ? raw : utf8.decode(raw));
    return '["signal","' + to + '","' + from + '",' + data + "]";
  }
  const data = rawSignalData(typeof raw === "string" ? raw : utf8.decode(raw));
  return '["signal",' + JSON.stringify(to) + "," + JSON.stringify(from) + "," + data + "]";
}

/**
 * Where `data` starts in a frame laid out exactly as
 * `["signal","<from>","<to>",<data>]` (ending in `]`), or 0 for any other
 * layout. Only the quotes and commas are looked at: the frame already parsed
 * as that call, and `from` and `to` hold no `"` or `\`, so a string token
 * whose closing quote sits right after as many characters as the parsed name
 * has can hold no escape (each escape makes the text longer than its value):
 * its text is the name itself.
 */
function compactDataStart(raw: string, from: string, to: string): number {
  const f = 11 + from.length; // closing quote of from
  const t = f + 3 + to.length; // closing quote of to
  if (
    raw.charCodeAt(f) !== 0x22 || raw.charCodeAt(f + 1) !== 0x2c ||
    raw.charCodeAt(f + 2) !== 0x22 ||
    raw.charCodeAt(t) !== 0x22 || raw.charCodeAt(t + 1) !== 0x2c ||
    raw.charCodeAt(raw.length - 1) !== 0x5d || !raw.startsWith('["signal","')
  ) return 0;
  return t + 2;
}

/** True for the four whitespace characters JSON allows between tokens. */
function isJsonSpace(c: number): boolean {
  return c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;
}

/**
 * The JSON text of the fourth element of `raw`. Only called after `raw`
 * parsed as `["signal", from, to, data]`, so it is enough to step over the
 * opening bracket and three strings with their commas; what is left before
 * the closing bracket is `data`.
 */
function rawSignalData(raw: string): string {
  let i = 0;
  while (isJsonSpace(raw.charCodeAt(i))) i++;
  i++; // [
  for (let k = 0; k < 3; k++) {
    while (isJsonSpace(raw.charCodeAt(i))) i++;
    i++; // opening quote
    for (let c = raw.charCodeAt(i); c !== 0x22; c = raw.charCodeAt(i)) i += c === 0x5c ? 2 : 1;
    i++; // closing quote
    while (isJsonSpace(raw.charCodeAt(i))) i++;
    i++; // ,
  }
  while (isJsonSpace(raw.charCodeAt(i))) i++;
  let end = raw.length - 1;
  while (isJsonSpace(raw.charCodeAt(end))) end--;
  end--; // ]
  while (isJsonSpace(raw.charCodeAt(end))) end--;
  return raw.slice(i, end + 1);
}

/** `["ident", id]` for an issued ident (lowercase letters, never escaped). */
export function encodeIdent(id: string): string {
  return '["ident","' + id + '"]';
}

/** `["join", globalIdent]`. */
export function encodeJoin(g: string): string {
  return isJsonPlain(g) ? '["join","' + g + '"]' : JSON.stringify(["join", g]);
}

/** `["stun", own, peer, initiator]`: announces a new pair to one side. */
export function encodeStun(own: string, peer: string, initiator: boolean): string {
  if (isJsonPlain(own) && isJsonPlain(peer)) {
    return '["stun","' + own + '","' + peer + (initiator ? '",true]' : '",false]');
  }
  return JSON.stringify(["stun", own, peer, initiator]);
}

/** `["leave", globalIdent]`: confirms a leave to the leaver. */
export function encodeLeave(g: string): string {
  return JSON.stringify(["leave", g]);
}

/** `["bye", own, gone]`: tells a remaining member that a peer left. */
export function encodeBye(own: string, gone: string): string {
  if (isJsonPlain(own) && isJsonPlain(gone)) return '["bye","' + own + '","' + gone + '"]';
  return JSON.stringify(["bye", own, gone]);
}

/** `["pong"]`. */
export const PONG = '["pong"]';

/** `["error", call, code, detail]`. */
export function encodeError(call: string, code: ErrorCode, detail: string): string {
  return JSON.stringify(["error", call, code, detail]);
}

/** `["ice", iceServers]`. */
export function encodeIce(servers: readonly unknown[]): string {
  return JSON.stringify(["ice", servers]);
}
