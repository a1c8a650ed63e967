/**
 * HTTP/1.1 response heads and chunked framing as bytes, without I/O.
 *
 * @module
 */

/** Reason phrases for the statuses a signal server answers with. */
const REASONS: Record<number, string> = {
  101: "Switching Protocols",
  200: "OK",
  201: "Created",
  204: "No Content",
  206: "Partial Content",
  301: "Moved Permanently",
  302: "Found",
  304: "Not Modified",
  307: "Temporary Redirect",
  308: "Permanent Redirect",
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  408: "Request Timeout",
  411: "Length Required",
  413: "Content Too Large",
  414: "URI Too Long",
  426: "Upgrade Required",
  429: "Too Many Requests",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  501: "Not Implemented",
  502: "Bad Gateway",
  503: "Service Unavailable",
  505: "HTTP Version Not Supported",
};

/** The reason phrase for `status` ("" when unknown, which HTTP allows). */
export function reasonPhrase(status: number): string {
  return REASONS[status] ?? "";
}

/**
 * Hop-by-hop and framing fields the transport writes itself; an
 * application's values for them are dropped.
 */
const OWN_FIELDS = new Set([
  "connection",
  "content-length",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "upgrade",
]);

/** How a response body is delimited. */
export type Framing =
  | { kind: "length"; length: number }
  | { kind: "chunked" }
  /** No body and no length field (1xx, 204, 304, or HEAD without a known length). */
  | { kind: "none" };

/** What {@link responseHead} writes. */
export interface HeadOptions {
  /** Status code. */
  status: number;
  /** Reason phrase; the standard one when empty. */
  statusText?: string;
  /** Application fields; framing and hop-by-hop ones are replaced. */
  headers: Iterable<[string, string]>;
  /** Body framing. */
  framing: Framing;
  /** Adds `connection: close`. */
  close: boolean;
  /** Extra fields written verbatim after the application's (e.g. upgrade fields). */
  extra?: readonly [string, string][];
  /** The `date` field value; none when omitted. */
  date?: string;
}

const encoder = new TextEncoder();

/**
 * The bytes of a response head, ending with the blank line. Field names and
 * values come from a `Headers` object or the transport itself, so they
 * cannot hold CR or LF; they are byte strings, written one byte per char.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { responseHead } from "./http_response.ts";
 *
 * const head = responseHead({
 *   status: 404,
 *   headers: [["content-type", "text/plain"], ["content-length", "99"]],
 *   framing: { kind: "length", length: 3 },
 *   close: true,
 * });
 * assert.equal(
 *   new TextDecoder().decode(head),
 *   "HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\n" +
 *     "content-length: 3\r\nconnection: close\r\n\r\n",
 * );
 * ```
 */
export function responseHead(o: HeadOptions): Uint8Array<ArrayBuffer> {
  return latin1(responseHeadText(o));
}

/**
 * {@link responseHead} as a byte string (one char per byte), for a caller
 * that copies it into a buffer of its own.
 */
export function responseHeadText(o: HeadOptions): string {
  const reason = o.statusText || reasonPhrase(o.status);
  let s = `HTTP/1.1 ${o.status} ${reason}\r\n`;
  if (o.date !== undefined) s += `date: ${o.date}\r\n`;
  for (const [name, value] of o.headers) {
    const n = name.toLowerCase();
    if (OWN_FIELDS.has(n) || (n === "date" && o.date !== undefined)) continue;
    s += `${n}: ${value}\r\n`;
  }
  for (const [name, value] of o.extra ?? []) s += `${name}: ${value}\r\n`;
  if (o.framing.kind === "length") s += `content-length: ${o.framing.length}\r\n`;
  else if (o.framing.kind === "chunked") s += "transfer-encoding: chunked\r\n";
  if (o.close) s += "connection: close\r\n";
  return s + "\r\n";
}

/**
 * A byte string's bytes. HTTP fields are ByteStrings (chars up to U+00FF,
 * as `Headers` keeps them): UTF-8 would send é (0xE9) as two bytes.
 */
export function latin1(text: string): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}

/** The fields of `headers` in order, with every `set-cookie` kept separate. */
export function headerEntries(headers: Headers): [string, string][] {
  const out: [string, string][] = [];
  for (const [n, v] of headers) {
    if (n !== "set-cookie") out.push([n, v]);
  }
  for (const c of headers.getSetCookie()) out.push(["set-cookie", c]);
  return out;
}

/**
 * One chunk of a chunked body (RFC 9112 §7.1): size in hex, data, CRLF.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { chunk, LAST_CHUNK } from "./http_response.ts";
 *
 * const text = (b: Uint8Array) => new TextDecoder().decode(b);
 * assert.equal(text(chunk(new TextEncoder().encode("hello world!"))), "c\r\nhello world!\r\n");
 * assert.equal(text(LAST_CHUNK), "0\r\n\r\n");
 * ```
 */
export function chunk(data: Uint8Array): Uint8Array<ArrayBuffer> {
  const size = encoder.encode(data.length.toString(16) + "\r\n");
  const out = new Uint8Array(size.length + data.length + 2);
  out.set(size);
  out.set(data, size.length);
  out[out.length - 2] = 13;
  out[out.length - 1] = 10;
  return out;
}

/** The end of a chunked body (no trailers). */
export const LAST_CHUNK: Uint8Array = encoder.encode("0\r\n\r\n");

/**
 * A complete short answer the transport makes itself (errors, refusals):
 * plain text, with a length, closing the connection.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { plainResponse } from "./http_response.ts";
 *
 * const text = new TextDecoder().decode(plainResponse(503, "busy\n", [["retry-after", "5"]]));
 * assert.ok(text.startsWith("HTTP/1.1 503 Service Unavailable\r\n"));
 * assert.ok(text.includes("\r\nretry-after: 5\r\n"));
 * assert.ok(text.endsWith("connection: close\r\n\r\nbusy\n"));
 * ```
 */
export function plainResponse(
  status: number,
  body: string,
  headers: readonly [string, string][] = [],
): Uint8Array<ArrayBuffer> {
  const b = encoder.encode(body);
  const head = responseHead({
    status,
    headers: [["content-type", "text/plain; charset=utf-8"], ...headers],
    framing: { kind: "length", length: b.length },
    close: true,
  });
  const out = new Uint8Array(head.length + b.length);
  out.set(head);
  out.set(b, head.length);
  return out;
}

/**
 * Cuts a value for a log line, so nothing a client sent is logged unbounded.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { clip } from "./http_response.ts";
 *
 * assert.equal(clip("abc"), "abc");
 * assert.equal(clip("x".repeat(150)), "x".repeat(100) + "…(150 chars)");
 * ```
 */
export function clip(value: unknown, max = 100): string {
  const s = String(value);
  return s.length <= max ? s : `${s.slice(0, max)}…(${s.length} chars)`;
}

/**
 * An error for a log line: its message cut to ~100 characters (it may quote
 * a request) and at most ten stack frames (code locations only).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { describeError } from "./http_response.ts";
 *
 * const text = describeError(new Error("bad " + "u".repeat(5000)));
 * assert.ok(text.startsWith("Error: bad uuu"));
 * assert.ok(text.length < 2000);
 * ```
 */
export function describeError(e: unknown): string {
  if (!(e instanceof Error)) return clip(e);
  const frames = (e.stack ?? "").split("\n").filter((l) => /^\s+at /.test(l)).slice(0, 10);
  return [`${e.name}: ${clip(e.message)}`, ...frames.map((f) => clip(f, 200))].join("\n");
}
