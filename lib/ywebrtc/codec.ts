/**
 * The y-webrtc signalling wire: client frames in, server messages out.
 *
 * A frame is a JSON object with a string `type` (text, or binary holding
 * UTF-8 JSON). The client sends `subscribe` and `unsubscribe` with a
 * `topics` array, `publish` with a `topic` (the rest of the message is the
 * client's and travels unchanged) and `ping`. The server sends `pong`, the
 * publishes of a topic with `clients` set to its subscriber count, and
 * `error` replies, which a y-webrtc client ignores (it only acts on
 * `publish`).
 *
 * Decoding checks the shape of a frame; the topics inside a subscribe are
 * checked one by one by the engine, because a bad entry spoils only itself.
 *
 * @module
 */

import { frameText, NOT_JSON, parseJson } from "../transport/utf8.ts";

/** The message types a client may send. */
export const IN_TYPES = ["subscribe", "unsubscribe", "publish", "ping"] as const;

/** One of {@link IN_TYPES}. */
export type InType = typeof IN_TYPES[number];

/**
 * Every error code, in the order of the protocol notes in the engine:
 * - `bad-json`: the frame is not JSON (or binary that is not UTF-8);
 * - `bad-frame`: JSON, but not an object with a string `type`;
 * - `unknown-type`: a `type` the server does not know;
 * - `bad-topic`: `topics` is not an array, or holds entries that are not
 *   strings or are too long (they are ignored, the rest is carried out), or
 *   a publish's `topic` is not a string;
 * - `not-subscribed`: a publish to a topic the sender has not subscribed;
 * - `topic-limit`: the connection holds as many topics as it may;
 * - `topic-full`: the topic has as many subscribers as it may;
 * - `too-large`: the frame is over the size limit (the connection closes
 *   with 1009);
 * - `rate-limited`: too many frames wait for the sender's budget (the
 *   connection closes with 1008).
 */
export const ERROR_CODES = [
  "bad-json",
  "bad-frame",
  "unknown-type",
  "bad-topic",
  "not-subscribed",
  "topic-limit",
  "topic-full",
  "forbidden",
  "too-large",
  "rate-limited",
] as const;

/** One of {@link ERROR_CODES}. */
export type ErrorCode = typeof ERROR_CODES[number];

/** A `subscribe` or `unsubscribe`: `topics` is an array, not yet checked entry by entry. */
export interface TopicsMessage {
  /** Which of the two. */
  readonly type: "subscribe" | "unsubscribe";
  /** The entries as sent. */
  readonly topics: readonly unknown[];
}

/** A `publish`: its topic, and the message as parsed and as sent. */
export interface PublishMessage {
  /** Always `publish`. */
  readonly type: "publish";
  /** The topic. */
  readonly topic: string;
  /** The parsed message (the engine never changes it). */
  readonly value: Readonly<Record<string, unknown>>;
  /** The message's JSON text exactly as it arrived (decoded from UTF-8 when binary). */
  readonly text: string;
}

/** A `ping`. */
export interface PingMessage {
  /** Always `ping`. */
  readonly type: "ping";
}

/** A well-formed client message. */
export type Message = TopicsMessage | PublishMessage | PingMessage;

/** Why a frame could not be turned into a message. */
export interface Fault {
  /** Always `fault`: no client message has this type after decoding. */
  readonly type: "fault";
  /** The error code. */
  readonly code: ErrorCode;
  /** A short explanation for people. */
  readonly detail: string;
}

/** True when `m` is a {@link Fault}. */
export function isFault(m: Message | Fault): m is Fault {
  return m.type === "fault";
}

const fault = (code: ErrorCode, detail: string): Fault => ({ type: "fault", code, detail });

const BAD_UTF8 = fault("bad-json", "binary frame is not UTF-8");
const BAD_JSON = fault("bad-json", "frame is not JSON");
const BAD_FRAME = fault("bad-frame", 'frame must be a JSON object with a string "type"');
const UNKNOWN_TYPE = fault(
  "unknown-type",
  "type must be subscribe, unsubscribe, publish or ping",
);
const BAD_TOPICS = fault("bad-topic", "topics must be an array of strings");
const BAD_PUBLISH_TOPIC = fault("bad-topic", "a publish needs a string topic");
const PING: PingMessage = { type: "ping" };

/**
 * Decodes one frame into a message, or the fault that says why it is none.
 * Never throws.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.deepEqual(decode('{"type":"subscribe","topics":["a"]}'), {
 *   type: "subscribe",
 *   topics: ["a"],
 * });
 * const f = decode("[1]");
 * assert.ok(isFault(f) && f.code === "bad-frame");
 * ```
 */
export function decode(frame: string | Uint8Array): Message | Fault {
  const text = frameText(frame);
  if (text === undefined) return BAD_UTF8;
  const v = parseJson(text);
  if (v === NOT_JSON) return BAD_JSON;
  if (typeof v !== "object" || v === null || Array.isArray(v)) return BAD_FRAME;
  const o = v as Record<string, unknown>;
  const type = o.type;
  if (typeof type !== "string") return BAD_FRAME;
  switch (type) {
    case "publish":
      if (typeof o.topic !== "string") return BAD_PUBLISH_TOPIC;
      return { type, topic: o.topic, value: o, text };
    case "subscribe":
    case "unsubscribe":
      if (!Array.isArray(o.topics)) return BAD_TOPICS;
      return { type, topics: o.topics };
    case "ping":
      return PING;
    default:
      return UNKNOWN_TYPE;
  }
}

/** JSON's insignificant whitespace. */
function isJsonSpace(c: number): boolean {
  return c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;
}

/**
 * The publish as delivered: the sender's message with `clients` set to
 * `clients`. When the message has no `clients` of its own, the field is
 * appended to the sender's own text, so the payload is neither serialised
 * again nor changed (re-encoding would turn `1e400` into `null`); otherwise
 * the message is serialised with the field replaced, as the reference server
 * does.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const m = decode('{"type":"publish","topic":"t","data":{"x":1e400}} ');
 * assert.ok(!isFault(m) && m.type === "publish");
 * assert.equal(withClients(m, 2), '{"type":"publish","topic":"t","data":{"x":1e400},"clients":2}');
 * const c = decode('{"type":"publish","topic":"t","clients":9}');
 * assert.ok(!isFault(c) && c.type === "publish");
 * assert.equal(withClients(c, 1), '{"type":"publish","topic":"t","clients":1}');
 * ```
 */
export function withClients(m: PublishMessage, clients: number): string {
  if (!Object.hasOwn(m.value, "clients")) {
    const t = m.text;
    let end = t.length - 1;
    while (end > 0 && isJsonSpace(t.charCodeAt(end))) end--;
    // A parsed object with a `topic` ends with `}` and has a member before it.
    if (t.charCodeAt(end) === 0x7d) return t.slice(0, end) + ',"clients":' + clients + "}";
  }
  return JSON.stringify({ ...m.value, clients });
}

/** The answer to a `ping`. */
export const PONG = '{"type":"pong"}';

/**
 * An error reply. `topics`, when given, lists the topics the error is about.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.equal(encodeError("bad-json", "frame is not JSON"),
 *   '{"type":"error","code":"bad-json","detail":"frame is not JSON"}');
 * ```
 */
export function encodeError(code: ErrorCode, detail: string, topics?: readonly string[]): string {
  const base = '{"type":"error","code":"' + code + '","detail":' + JSON.stringify(detail);
  return topics === undefined ? base + "}" : base + ',"topics":' + JSON.stringify(topics) + "}";
}
