/**
 * The PeerJS signalling wire (as spoken by the `peerjs` 1.x client and the
 * `peer` 1.0.2 server): client frames in, server messages out.
 *
 * A frame is a JSON object with a string `type` (text, or binary holding
 * UTF-8 JSON). A client sends `HEARTBEAT`, and `OFFER`, `ANSWER`,
 * `CANDIDATE`, `LEAVE` and `EXPIRE` with a `dst` (the id of the peer it is
 * for) and a `payload` the server never looks into. The server sends `OPEN`,
 * `ERROR` and `ID-TAKEN` (each with `payload.msg` when it says why), and the
 * relayed messages as `{type, src, dst, payload}` with `src` set by the
 * server.
 *
 * @module
 */

import { frameText, NOT_JSON, parseJson } from "../transport/utf8.ts";

/** The message types a client may send that are relayed to `dst`. */
export const RELAY_TYPES = ["OFFER", "ANSWER", "CANDIDATE", "LEAVE", "EXPIRE"] as const;

/** One of {@link RELAY_TYPES}. */
export type RelayType = typeof RELAY_TYPES[number];

/** Every message type a client may send. */
export const IN_TYPES = ["HEARTBEAT", ...RELAY_TYPES] as const;

/** One of {@link IN_TYPES}. */
export type InType = typeof IN_TYPES[number];

/**
 * The error codes of malformed frames and refused messages, counted in the
 * metrics; the client is told the matching {@link ERROR_MESSAGES} text in
 * an `ERROR`'s `payload.msg` (PeerJS errors carry no code):
 * - `bad-json`: the frame is not JSON (or binary that is not UTF-8);
 * - `bad-frame`: JSON, but not an object with a string `type`;
 * - `unknown-type`: a `type` a client may not send (`OPEN`, `ERROR`, …);
 * - `bad-dst`: a relayed message whose `dst` is missing, not a string,
 *   empty or longer than an id may be;
 * - `too-large`: the frame is over the size limit (the connection closes
 *   with 1009);
 * - `rate-limited`: too many frames wait for the sender's budget (the
 *   connection closes with 1008).
 */
export const ERROR_CODES = [
  "bad-json",
  "bad-frame",
  "unknown-type",
  "bad-dst",
  "too-large",
  "rate-limited",
] as const;

/** One of {@link ERROR_CODES}. */
export type ErrorCode = typeof ERROR_CODES[number];

/**
 * How a handshake ended, counted in the metrics. `open` and `takeover` let
 * the connection in; every other one is answered (`ERROR`, or `ID-TAKEN`)
 * and closed:
 * - `open`: a free id, now held;
 * - `takeover`: an id held with the same token: a reconnection, which takes
 *   the session over;
 * - `id-taken`: an id held with another token;
 * - `invalid-params`: no `id`, `token` or `key` in the query;
 * - `invalid-key`: a key the server does not serve;
 * - `invalid-id`: an id longer than the server allows;
 * - `invalid-token`: a token longer than the server allows;
 * - `forbidden`: the bearer token the key carried does not grant the id;
 * - `limit`: the server holds as many ids as it may;
 * - `unavailable`: in cluster mode, the cluster (Redis) could not be asked
 *   whether the id is free.
 */
export const HANDSHAKE_OUTCOMES = [
  "open",
  "takeover",
  "id-taken",
  "invalid-params",
  "invalid-key",
  "invalid-id",
  "invalid-token",
  "forbidden",
  "limit",
  "unavailable",
] as const;

/** One of {@link HANDSHAKE_OUTCOMES}. */
export type HandshakeOutcome = typeof HANDSHAKE_OUTCOMES[number];

/**
 * The `payload.msg` of every refused handshake, word for word as `peer`
 * 1.0.2 says it where it has the case (`invalid-id`, `forbidden` and
 * `unavailable` are ours).
 */
export const HANDSHAKE_MESSAGES: Readonly<
  Record<Exclude<HandshakeOutcome, "open" | "takeover">, string>
> = {
  "id-taken": "ID is taken",
  "invalid-params": "No id, token, or key supplied to websocket server",
  "invalid-key": "Invalid key provided",
  "invalid-id": "Invalid id provided",
  "invalid-token": "Invalid token provided",
  "forbidden": "The token does not grant this id",
  "limit": "Server has reached its concurrent user limit",
  "unavailable": "Server is unavailable, try again later",
};

/** The `payload.msg` of each malformed-frame error (`too-large` and `rate-limited` add numbers). */
export const ERROR_MESSAGES: Readonly<Record<ErrorCode, string>> = {
  "bad-json": "Message is not JSON",
  "bad-frame": 'Message must be a JSON object with a string "type"',
  "unknown-type": "Unknown message type: a client sends HEARTBEAT, OFFER, ANSWER, CANDIDATE, " +
    "LEAVE or EXPIRE",
  "bad-dst": "Message needs dst: the id of the peer it is for",
  "too-large": "Message is too large",
  "rate-limited": "Sending faster than allowed",
};

/** A `HEARTBEAT`. */
export interface HeartbeatMessage {
  /** Always `HEARTBEAT`. */
  readonly type: "HEARTBEAT";
}

/** A message for another peer. */
export interface RelayMessage {
  /** Which one. */
  readonly type: RelayType;
  /** The id it is for. */
  readonly dst: string;
  /** The client's payload, never looked into (`undefined` when absent). */
  readonly payload: unknown;
  /** The `src` the client claimed, if any (the server never uses it). */
  readonly claimedSrc: unknown;
}

/** A well-formed client message. */
export type Message = HeartbeatMessage | RelayMessage;

/** Why a frame could not be turned into a message. */
export interface Fault {
  /** Always `fault`: no client message has this type after decoding. */
  readonly type: "fault";
  /** The error code. */
  readonly code: ErrorCode;
}

/** True when `m` is a {@link Fault}. */
export function isFault(m: Message | Fault): m is Fault {
  return m.type === "fault";
}

const fault = (code: ErrorCode): Fault => ({ type: "fault", code });
const BAD_JSON = fault("bad-json");
const BAD_FRAME = fault("bad-frame");
const UNKNOWN_TYPE = fault("unknown-type");
const BAD_DST = fault("bad-dst");
const HEARTBEAT: HeartbeatMessage = { type: "HEARTBEAT" };

/**
 * Decodes one frame into a message, or the fault that says why it is none.
 * `maxIdLength` bounds `dst`. Never throws.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.deepEqual(decode('{"type":"OFFER","dst":"b","payload":{"sdp":"v=0"}}', 64), {
 *   type: "OFFER",
 *   dst: "b",
 *   payload: { sdp: "v=0" },
 *   claimedSrc: undefined,
 * });
 * const f = decode('{"type":"OFFER"}', 64);
 * assert.ok(isFault(f) && f.code === "bad-dst");
 * ```
 */
export function decode(frame: string | Uint8Array, maxIdLength: number): Message | Fault {
  const text = frameText(frame);
  if (text === undefined) return BAD_JSON;
  const v = parseJson(text);
  if (v === NOT_JSON) return BAD_JSON;
  if (typeof v !== "object" || v === null || Array.isArray(v)) return BAD_FRAME;
  const o = v as Record<string, unknown>;
  const type = o.type;
  if (typeof type !== "string") return BAD_FRAME;
  switch (type) {
    case "HEARTBEAT":
      return HEARTBEAT;
    case "OFFER":
    case "ANSWER":
    case "CANDIDATE":
    case "LEAVE":
    case "EXPIRE": {
      const dst = o.dst;
      if (typeof dst !== "string" || dst === "" || dst.length > maxIdLength) return BAD_DST;
      return { type, dst, payload: o.payload, claimedSrc: o.src };
    }
    default:
      return UNKNOWN_TYPE;
  }
}

/** The server's welcome: the id is held, the client may signal. */
export const OPEN = '{"type":"OPEN"}';

/**
 * A message as relayed: `src` is the sender's id as the server knows it.
 * The key order is `peer` 1.0.2's; an absent payload stays absent.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.equal(
 *   encodeRelay("ANSWER", "a", "b", { sdp: "v=0" }),
 *   '{"type":"ANSWER","src":"a","dst":"b","payload":{"sdp":"v=0"}}',
 * );
 * assert.equal(encodeRelay("EXPIRE", "b", "a", undefined), '{"type":"EXPIRE","src":"b","dst":"a"}');
 * ```
 */
export function encodeRelay(type: RelayType, src: string, dst: string, payload: unknown): string {
  return JSON.stringify({ type, src, dst, payload });
}

/**
 * An `ERROR` (or another server message that says why, such as
 * `ID-TAKEN`) with `payload.msg`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.equal(encodeError("Invalid key provided"),
 *   '{"type":"ERROR","payload":{"msg":"Invalid key provided"}}');
 * assert.equal(encodeError("ID is taken", "ID-TAKEN"),
 *   '{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}');
 * ```
 */
export function encodeError(msg: string, type: "ERROR" | "ID-TAKEN" = "ERROR"): string {
  return JSON.stringify({ type, payload: { msg } });
}

/** What `GET <path>` answers, word for word as `peer` 1.0.2. */
export const DESCRIPTION: Readonly<{ name: string; description: string; website: string }> = {
  name: "PeerJS Server",
  description: "A server side element to broker connections between PeerJS clients.",
  website: "https://peerjs.com/",
};
