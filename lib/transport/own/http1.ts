/**
 * An incremental HTTP/1.1 request-head parser without I/O (RFC 9112): push
 * the bytes read from a connection, and {@link RequestParser.next} answers
 * with the next complete request head, "more" while it is incomplete, or the
 * error status the server should answer with before closing.
 *
 * Bodies are not served: a `Content-Length` body up to a small limit is read
 * and thrown away before its head is returned (the application only serves
 * GET and HEAD), a larger one is refused with 413, and any
 * `Transfer-Encoding` is refused with 411 Length Required, since without a
 * length the end of the request cannot be found without decoding chunks.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { RequestParser } from "./http1.ts";
 *
 * const p = new RequestParser();
 * p.push(new TextEncoder().encode("GET /a?b HTTP/1.1\r\nHost: x\r\n"));
 * assert.deepEqual(p.next(), { kind: "more" });
 * p.push(new TextEncoder().encode("Accept: a\r\naccept: b\r\n\r\n"));
 * const r = p.next();
 * assert.equal(r.kind, "head");
 * if (r.kind === "head") {
 *   assert.equal(r.head.method, "GET");
 *   assert.equal(r.head.target, "/a?b");
 *   assert.deepEqual(r.head.headers, [["host", "x"], ["accept", "a"], ["accept", "b"]]);
 *   assert.equal(r.head.keepAlive, true);
 * }
 * ```
 *
 * @module
 */

/** Limits for {@link RequestParser}. */
export interface ParserLimits {
  /** Largest request head (request line, header lines, blank line), in bytes. Default 16 KiB. */
  maxHeadBytes?: number;
  /** Most header lines. Default 100. */
  maxHeaderLines?: number;
  /** Longest request target, in bytes; longer is 414. Default 8 KiB. */
  maxTargetBytes?: number;
  /** Largest `Content-Length` body read and discarded; larger is 413. Default 64 KiB. */
  maxBodyBytes?: number;
}

/** The limits {@link RequestParser} uses where none are given. */
export const DEFAULT_PARSER_LIMITS: Readonly<Required<ParserLimits>> = {
  maxHeadBytes: 16 * 1024,
  maxHeaderLines: 100,
  maxTargetBytes: 8 * 1024,
  maxBodyBytes: 64 * 1024,
};

/** A parsed request head. */
export interface RequestHead {
  /** The method, case preserved (methods are case-sensitive). */
  method: string;
  /** The request target exactly as sent. */
  target: string;
  /** The minor version: 1 for HTTP/1.1, 0 for HTTP/1.0. */
  minor: 0 | 1;
  /** Header fields in order, names lower-cased, values trimmed, as Latin-1 text. */
  headers: [string, string][];
  /** The discarded body's length (0 without one). */
  contentLength: number;
  /** Whether the connection may carry another request after this one. */
  keepAlive: boolean;
}

/** What {@link RequestParser.next} returns. */
export type ParseResult =
  | { kind: "head"; head: RequestHead }
  | { kind: "more" }
  /** The request is refused with `status`; the connection must close after the answer. */
  | { kind: "error"; status: HeadErrorStatus; reason: string };

/** Statuses the parser refuses requests with. */
export type HeadErrorStatus = 400 | 411 | 413 | 414 | 431 | 505;

const CR = 13;
const LF = 10;

/** RFC 9110 tchar. */
const TCHAR = new Uint8Array(256);
for (const c of "!#$%&'*+-.^_`|~") TCHAR[c.charCodeAt(0)] = 1;
for (let c = 0x30; c <= 0x39; c++) TCHAR[c] = 1;
for (let c = 0x41; c <= 0x5a; c++) TCHAR[c] = 1;
for (let c = 0x61; c <= 0x7a; c++) TCHAR[c] = 1;

/** Whether `b` may appear in a field value: VCHAR, SP, HTAB or obs-text. */
function isFieldByte(b: number): boolean {
  return b === 0x09 || (b >= 0x20 && b !== 0x7f);
}

/**
 * Header values joined the way RFC 9110 §5.3 combines repeated fields:
 * with ", ", in order. Returns `null` when the field is absent.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { headerValue } from "./http1.ts";
 *
 * const h: [string, string][] = [["accept", "a"], ["host", "x"], ["accept", "b"]];
 * assert.equal(headerValue(h, "accept"), "a, b");
 * assert.equal(headerValue(h, "origin"), null);
 * ```
 */
export function headerValue(headers: readonly [string, string][], name: string): string | null {
  let out: string | null = null;
  for (const [n, v] of headers) {
    if (n === name) out = out === null ? v : `${out}, ${v}`;
  }
  return out;
}

/** Whether the comma-separated `value` lists `token` (case-insensitive). */
export function hasToken(value: string | null, token: string): boolean {
  if (value === null) return false;
  for (const part of value.split(",")) {
    if (part.trim().toLowerCase() === token) return true;
  }
  return false;
}

/** What an emptied parser holds: no allocation per connection or per head. */
const NO_BYTES = new Uint8Array(0);

/** Room of the parser's own buffer when bytes must be kept across reads. */
const OWN_BUFFER_BYTES = 4096;

/**
 * Parses requests from a byte stream, one head at a time. The caller may
 * reuse its read buffer: a pushed chunk is parsed where it lies, and only
 * bytes still unparsed when {@link RequestParser.next} returns (a head split
 * across reads, pipelined requests) are copied into the parser's own buffer.
 * A head that arrives in one read, the usual case, is never copied. At most
 * one head (plus one read's worth of pipelined bytes) is held: the caller
 * stops reading while it serves a request.
 *
 * @example Errors carry the status to answer
 * ```ts
 * import assert from "node:assert/strict";
 * import { RequestParser } from "./http1.ts";
 *
 * const refuse = (text: string, limits = {}) => {
 *   const p = new RequestParser(limits);
 *   p.push(new TextEncoder().encode(text));
 *   const r = p.next();
 *   return r.kind === "error" ? r.status : r.kind;
 * };
 * assert.equal(refuse("GET / HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n"), 400);
 * assert.equal(refuse("GET / HTTP/2.0\r\n\r\n"), 505);
 * assert.equal(refuse("GET /aaaa HTTP/1.1\r\n\r\n", { maxTargetBytes: 3 }), 414);
 * assert.equal(refuse("GET / HTTP/1.1\r\nHost: x\r\nX: yyyy", { maxHeadBytes: 20 }), 431);
 * assert.equal(refuse("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"), 411);
 * ```
 */
export class RequestParser {
  readonly #limits: Required<ParserLimits>;
  /** The bytes being parsed: the caller's chunk (borrowed) or the parser's own buffer. */
  #buf: Uint8Array = NO_BYTES;
  /** `#buf` is the caller's chunk, valid only until `next()` returns. */
  #borrowed = false;
  #start = 0;
  #end = 0;
  /** Where the search for the blank line resumes. */
  #scan = 0;
  /** A head waiting for its body to be discarded. */
  #pending: RequestHead | undefined;
  #skip = 0;
  #failed = false;

  /** A parser with the given limits (see {@link DEFAULT_PARSER_LIMITS}). */
  constructor(limits: ParserLimits = {}) {
    this.#limits = { ...DEFAULT_PARSER_LIMITS, ...limits };
  }

  /** Bytes held and not yet consumed. */
  get buffered(): number {
    return this.#end - this.#start;
  }

  /** True while no byte of a next request has arrived and no body is being discarded. */
  get idle(): boolean {
    return this.#end === this.#start && this.#pending === undefined;
  }

  /** Appends bytes read from the connection. */
  push(chunk: Uint8Array): void {
    if (this.#failed || chunk.length === 0) return;
    // Discarded body bytes are dropped at once instead of being kept.
    if (this.#skip > 0 && this.#end === this.#start) {
      const n = Math.min(this.#skip, chunk.length);
      this.#skip -= n;
      chunk = chunk.subarray(n);
      if (chunk.length === 0) return;
    }
    if (this.#end === this.#start) {
      // Nothing held: parse the chunk where it lies.
      this.#buf = chunk;
      this.#borrowed = true;
      this.#start = this.#scan = 0;
      this.#end = chunk.length;
      return;
    }
    if (this.#borrowed) this.#keep();
    const need = this.#end + chunk.length;
    if (need > this.#buf.length) {
      const live = this.#end - this.#start;
      if (live + chunk.length <= this.#buf.length) {
        this.#buf.copyWithin(0, this.#start, this.#end);
      } else {
        const next = new Uint8Array(Math.max(this.#buf.length * 2, live + chunk.length));
        next.set(this.#buf.subarray(this.#start, this.#end));
        this.#buf = next;
      }
      this.#scan -= this.#start;
      this.#start = 0;
      this.#end = live;
    }
    this.#buf.set(chunk, this.#end);
    this.#end += chunk.length;
  }

  /**
   * Takes the bytes held past the last head returned (for a connection that
   * switches protocols) and empties the parser.
   */
  takeRest(): Uint8Array {
    const out = this.#end > this.#start ? this.#buf.slice(this.#start, this.#end) : NO_BYTES;
    this.#start = this.#end = this.#scan = 0;
    // The connection speaks another protocol now: free the head buffer.
    this.#buf = NO_BYTES;
    this.#borrowed = false;
    return out;
  }

  /** The next request head, "more" while incomplete, or the error to answer. */
  next(): ParseResult {
    const r = this.#next();
    // The caller reads into its chunk again once this returns: keep what is left.
    if (this.#borrowed) this.#keep();
    return r;
  }

  #next(): ParseResult {
    if (this.#failed) return { kind: "more" };
    if (this.#pending !== undefined) {
      this.#discard();
      if (this.#skip > 0) return { kind: "more" };
      const head = this.#pending;
      this.#pending = undefined;
      return { kind: "head", head };
    }
    const r = this.#parseHead();
    if (r.kind === "error") {
      this.#failed = true;
      return r;
    }
    if (r.kind === "more") return r;
    if (r.head.contentLength === 0) return r;
    this.#pending = r.head;
    this.#skip = r.head.contentLength;
    return this.#next();
  }

  /** Stops borrowing: the unparsed bytes move into the parser's own buffer. */
  #keep(): void {
    this.#borrowed = false;
    const live = this.#end - this.#start;
    if (live === 0) {
      this.#buf = NO_BYTES;
      this.#start = this.#end = this.#scan = 0;
      return;
    }
    const own = new Uint8Array(Math.max(OWN_BUFFER_BYTES, live));
    own.set(this.#buf.subarray(this.#start, this.#end));
    this.#buf = own;
    this.#scan -= this.#start;
    this.#start = 0;
    this.#end = live;
  }

  #discard(): void {
    const n = Math.min(this.#skip, this.#end - this.#start);
    this.#skip -= n;
    this.#start += n;
    this.#scan = this.#start;
  }

  #parseHead(): ParseResult {
    const b = this.#buf;
    // RFC 9112 §2.2: empty lines before the request line are ignored.
    while (this.#start + 1 < this.#end && b[this.#start] === CR && b[this.#start + 1] === LF) {
      this.#start += 2;
    }
    if (this.#scan < this.#start) this.#scan = this.#start;
    const end = this.#findBlankLine();
    if (end < 0) {
      const held = this.#end - this.#start;
      const lf = b.indexOf(LF, this.#start);
      if ((lf < 0 || lf >= this.#end) && held > this.#limits.maxTargetBytes + 32) {
        return error(414, "request line too long");
      }
      if (held > this.#limits.maxHeadBytes) return error(431, "request head too large");
      return { kind: "more" };
    }
    if (end + 4 - this.#start > this.#limits.maxHeadBytes) {
      return error(431, "request head too large");
    }
    const r = parseHead(byteString(b.subarray(this.#start, end)), this.#limits);
    this.#start = end + 4;
    this.#scan = this.#start;
    return r;
  }

  /** Index of the CR of the first CRLFCRLF at or after the scan point, or -1. */
  #findBlankLine(): number {
    const b = this.#buf;
    for (let i = this.#scan; i + 3 < this.#end; i++) {
      if (b[i + 3] !== LF) continue;
      if (b[i] === CR && b[i + 1] === LF && b[i + 2] === CR) return i;
    }
    this.#scan = Math.max(this.#start, this.#end - 3);
    return -1;
  }
}

function error(status: HeadErrorStatus, reason: string): ParseResult {
  return { kind: "error", status, reason };
}

/**
 * The bytes as a byte string (one char per byte, ISO-8859-1), as `Headers`
 * takes them. Built in JavaScript: a `TextDecoder` call is an op, about a
 * microsecond each, and a head has a dozen fields; "latin1" there is
 * windows-1252 too, which maps 0x80–0x9f above U+00FF.
 */
function byteString(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 4096) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 4096) as unknown as number[]);
  }
  return s;
}

/**
 * Parses a head without its final CRLFCRLF, as a byte string: one string for
 * the whole head, and each field a slice of it (slicing a string allocates
 * less than a view per line and a string per view).
 */
function parseHead(text: string, limits: Required<ParserLimits>): ParseResult {
  let lines = 1;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === LF) {
      // A bare LF is refused: RFC 9112 §2.2 allows it, and refusing it
      // closes a door to request smuggling through lenient proxies.
      if (i === 0 || text.charCodeAt(i - 1) !== CR) return error(400, "bare LF in the head");
      lines++;
    } else if (c === CR && i + 1 < text.length && text.charCodeAt(i + 1) !== LF) {
      return error(400, "bare CR in the head");
    }
  }
  if (lines - 1 > limits.maxHeaderLines) return error(431, "too many header lines");

  let lineEnd = text.indexOf("\r\n");
  if (lineEnd < 0) lineEnd = text.length;
  const sp1 = text.indexOf(" ");
  const sp2 = sp1 < 0 || sp1 >= lineEnd ? -1 : text.indexOf(" ", sp1 + 1);
  if (sp1 <= 0 || sp1 >= lineEnd || sp2 < 0 || sp2 >= lineEnd) {
    return error(400, "malformed request line");
  }
  const sp3 = text.indexOf(" ", sp2 + 1);
  if (sp3 >= 0 && sp3 < lineEnd) return error(400, "malformed request line");
  for (let i = 0; i < sp1; i++) {
    if (!TCHAR[text.charCodeAt(i)]) return error(400, "malformed method");
  }
  const targetLen = sp2 - sp1 - 1;
  if (targetLen === 0) return error(400, "empty request target");
  if (targetLen > limits.maxTargetBytes) return error(414, "request target too long");
  for (let i = sp1 + 1; i < sp2; i++) {
    const c = text.charCodeAt(i);
    if (c <= 0x20 || c >= 0x7f) return error(400, "malformed request target");
  }
  const m = /^HTTP\/(\d)\.(\d)$/.exec(text.slice(sp2 + 1, lineEnd));
  if (m === null) return error(400, "malformed HTTP version");
  if (m[1] !== "1") return error(505, "HTTP version not supported");
  const minor = m[2] === "0" ? 0 : 1;

  const headers: [string, string][] = [];
  let from = lineEnd + 2;
  while (from <= text.length && lineEnd < text.length) {
    let to = text.indexOf("\r\n", from);
    if (to < 0) to = text.length;
    lineEnd = to;
    const first = text.charCodeAt(from);
    if (from < to && (first === 0x20 || first === 0x09)) {
      return error(400, "obsolete line folding");
    }
    const colon = text.indexOf(":", from);
    if (colon <= from || colon >= to) return error(400, "malformed header line");
    for (let i = from; i < colon; i++) {
      if (!TCHAR[text.charCodeAt(i)]) return error(400, "malformed header name");
    }
    let vs = colon + 1;
    let ve = to;
    while (vs < ve && (text.charCodeAt(vs) === 0x20 || text.charCodeAt(vs) === 0x09)) vs++;
    while (ve > vs && (text.charCodeAt(ve - 1) === 0x20 || text.charCodeAt(ve - 1) === 0x09)) ve--;
    for (let i = vs; i < ve; i++) {
      if (!isFieldByte(text.charCodeAt(i))) {
        return error(400, "control character in a header value");
      }
    }
    headers.push([text.slice(from, colon).toLowerCase(), text.slice(vs, ve)]);
    from = to + 2;
  }

  let contentLength = 0;
  let hosts = 0;
  let te = false;
  let cl: string | undefined;
  for (const [n, v] of headers) {
    if (n === "host") hosts++;
    else if (n === "transfer-encoding") te = true;
    else if (n === "content-length") {
      // Repeated identical values are one length (RFC 9112 §6.3); any
      // disagreement is an attempt at request smuggling.
      for (const part of v.split(",")) {
        const p = part.trim();
        if (!/^\d{1,15}$/.test(p)) return error(400, "malformed Content-Length");
        if (cl !== undefined && cl !== p) return error(400, "conflicting Content-Length");
        cl = p;
      }
    }
  }
  if (minor === 1 && hosts !== 1) return error(400, hosts === 0 ? "no Host" : "several Host");
  if (hosts > 1) return error(400, "several Host");
  if (te) {
    if (cl !== undefined) return error(400, "Transfer-Encoding with Content-Length");
    return error(411, "Transfer-Encoding is not accepted; send Content-Length");
  }
  if (cl !== undefined) {
    contentLength = Number(cl);
    if (contentLength > limits.maxBodyBytes) return error(413, "request body too large");
  }
  const connection = headerValue(headers, "connection");
  const keepAlive = minor === 1
    ? !hasToken(connection, "close")
    : hasToken(connection, "keep-alive");
  return {
    kind: "head",
    head: {
      method: text.slice(0, sp1),
      target: text.slice(sp1 + 1, sp2),
      minor,
      headers,
      contentLength,
      keepAlive,
    },
  };
}
