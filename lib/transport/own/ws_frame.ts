/**
 * RFC 6455 framing for the server side, without I/O: {@link WsDecoder} turns
 * the bytes a client sends into messages and control events, failing with the
 * close code to send; {@link FrameBatch} builds unmasked server frames into one
 * buffer, so a connection writes once per turn instead of once per message.
 *
 * @example Decode a masked text frame
 * ```ts
 * import assert from "node:assert/strict";
 * import { WsDecoder } from "./ws_frame.ts";
 *
 * // "Hi" masked with the key 01 02 03 04, as a client must send it.
 * const frame = new Uint8Array([0x81, 0x82, 1, 2, 3, 4, 0x48 ^ 1, 0x69 ^ 2]);
 * assert.deepEqual(new WsDecoder().feed(frame), [{ type: "text", data: "Hi" }]);
 * ```
 *
 * @module
 */

/** Frame opcodes (RFC 6455 §5.2). */
export const Opcode = {
  continuation: 0x0,
  text: 0x1,
  binary: 0x2,
  close: 0x8,
  ping: 0x9,
  pong: 0xa,
} as const;

/** The close codes the decoder fails with. */
export type FailCode = 1002 | 1007 | 1009;

/** What {@link WsDecoder.feed} reports, in the order the frames arrived. */
export type WsEvent =
  | { type: "text"; data: string }
  | { type: "binary"; data: Uint8Array<ArrayBuffer> }
  | { type: "ping"; data: Uint8Array<ArrayBuffer> }
  | { type: "pong"; data: Uint8Array<ArrayBuffer> }
  /** The peer's close frame; `code` is 1005 when it carried none. */
  | { type: "close"; code: number; reason: string }
  /** The stream broke a rule: send a close frame with `code`, then cut. */
  | { type: "fail"; code: FailCode; reason: string };

/** Limits for {@link WsDecoder}. */
export interface DecoderOptions {
  /**
   * Largest message, all fragments together, in payload bytes. Checked as
   * each frame header arrives, before any of its payload is kept.
   * Default 1 MiB.
   */
  maxMessageBytes?: number;
  /** Refuse unmasked frames (RFC 6455 §5.1). Default true: clients must mask. */
  requireMask?: boolean;
}

/** Default for {@link DecoderOptions.maxMessageBytes}. */
export const DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024;

/** Whether `code` may appear in a close frame on the wire (RFC 6455 §7.4, IANA registry). */
export function isValidCloseCode(code: number): boolean {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
    (code >= 3000 && code <= 4999);
}

const enum State {
  /** Collecting the 2..14 header bytes. */
  Header,
  /** Streaming the payload of the current frame. */
  Payload,
  /** A close frame was received or the stream failed: input is ignored. */
  Done,
}

const fatalDecoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/**
 * Incremental decoder of client frames. Feed it the bytes read from the
 * socket; it unmasks them in place (the buffer passed to {@link feed} is
 * modified) and returns the events completed by those bytes. Payloads are
 * kept only as they arrive, so a frame that declares a huge length costs
 * nothing until its bytes come, and one past the limit fails at its header.
 *
 * @example Fragments, with a ping between them
 * ```ts
 * import assert from "node:assert/strict";
 * import { WsDecoder } from "./ws_frame.ts";
 *
 * const mask = [0, 0, 0, 0]; // a zero key keeps the example readable
 * const d = new WsDecoder();
 * assert.deepEqual(d.feed(new Uint8Array([0x01, 0x82, ...mask, 0x48, 0x65])), []);
 * assert.deepEqual(d.feed(new Uint8Array([0x89, 0x80, ...mask])), [
 *   { type: "ping", data: new Uint8Array() },
 * ]);
 * assert.deepEqual(d.feed(new Uint8Array([0x80, 0x81, ...mask, 0x79])), [
 *   { type: "text", data: "Hey" },
 * ]);
 * ```
 *
 * @example A header past the limit fails before its payload
 * ```ts
 * import assert from "node:assert/strict";
 * import { WsDecoder } from "./ws_frame.ts";
 *
 * const d = new WsDecoder({ maxMessageBytes: 1000 });
 * // Binary frame declaring 60 MiB (64-bit length), masked.
 * const head = new Uint8Array([0x82, 0xff, 0, 0, 0, 0, 0x03, 0xc0, 0, 0, 1, 2, 3, 4]);
 * assert.deepEqual(d.feed(head), [
 *   { type: "fail", code: 1009, reason: "message too big" },
 * ]);
 * ```
 */
export class WsDecoder {
  readonly #max: number;
  readonly #requireMask: boolean;
  #state = State.Header;
  // The frame head, the mask and a control frame's payload share one
  // buffer: every connection has a decoder, and each buffer of its own
  // would be one more object for the garbage collector to copy.
  readonly #scratch = new Uint8Array(14 + 4 + 125);
  readonly #head = this.#scratch.subarray(0, 14);
  #headLen = 0;
  // Current frame.
  #fin = false;
  #opcode = 0;
  #remaining = 0;
  #masked = false;
  readonly #mask = this.#scratch.subarray(14, 18);
  #maskPhase = 0;
  // Current data message (possibly fragmented).
  #msgOpcode = 0;
  #msgBytes = 0;
  #text = "";
  #textDecoder: TextDecoder | undefined;
  #parts: Uint8Array[] = [];
  // Current control frame's payload (at most 125 bytes).
  readonly #ctrl = this.#scratch.subarray(18);
  #ctrlLen = 0;

  /** A decoder with the given limits. */
  constructor(options: DecoderOptions = {}) {
    this.#max = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    this.#requireMask = options.requireMask ?? true;
  }

  /** True once a close frame was decoded or the stream failed; later bytes are ignored. */
  get done(): boolean {
    return this.#state === State.Done;
  }

  /** Payload bytes of the unfinished message held so far (for memory accounting). */
  get pendingBytes(): number {
    return this.#msgBytes;
  }

  /**
   * Consumes `chunk` (unmasking it in place) and returns the events it
   * completes. After a `close` or `fail` event nothing more is returned.
   */
  feed(chunk: Uint8Array): WsEvent[] {
    const out: WsEvent[] = [];
    let at = 0;
    while (at < chunk.length && this.#state !== State.Done) {
      if (this.#state === State.Header) {
        at = this.#readHeader(chunk, at, out);
      } else {
        const n = Math.min(this.#remaining, chunk.length - at);
        this.#payload(chunk.subarray(at, at + n), out);
        at += n;
      }
      if (this.#state === State.Payload && this.#remaining === 0) this.#endFrame(out);
    }
    return out;
  }

  /** Collects header bytes from `chunk[at..]`; returns the new position. */
  #readHeader(chunk: Uint8Array, at: number, out: WsEvent[]): number {
    const h = this.#head;
    while (at < chunk.length) {
      const need = this.#headLen < 2 ? 2 : headerLength(h);
      if (this.#headLen >= need) break;
      h[this.#headLen++] = chunk[at++];
      if (this.#headLen === 2) {
        const why = this.#checkFirstBytes(h[0], h[1]);
        if (why !== undefined) {
          this.#fail(out, 1002, why);
          return at;
        }
      }
    }
    if (this.#headLen < 2 || this.#headLen < headerLength(h)) return at;
    this.#startFrame(out);
    return at;
  }

  /** Rules that the first two header bytes alone decide. */
  #checkFirstBytes(b0: number, b1: number): string | undefined {
    const fin = (b0 & 0x80) !== 0;
    const opcode = b0 & 0x0f;
    if ((b0 & 0x70) !== 0) return "reserved bits set";
    if ((b1 & 0x80) === 0 && this.#requireMask) return "unmasked client frame";
    if (opcode >= 0x8) {
      if (opcode > 0xa) return "unknown opcode";
      if (!fin) return "fragmented control frame";
      if ((b1 & 0x7f) > 125) return "control frame over 125 bytes";
      return undefined;
    }
    if (opcode > 0x2) return "unknown opcode";
    if (opcode === Opcode.continuation && this.#msgOpcode === 0) {
      return "continuation without a message";
    }
    if (opcode !== Opcode.continuation && this.#msgOpcode !== 0) {
      return "new message inside a fragmented one";
    }
    return undefined;
  }

  #startFrame(out: WsEvent[]): void {
    const h = this.#head;
    this.#fin = (h[0] & 0x80) !== 0;
    this.#opcode = h[0] & 0x0f;
    this.#masked = (h[1] & 0x80) !== 0;
    let len = h[1] & 0x7f;
    let at = 2;
    if (len === 126) {
      len = (h[2] << 8) | h[3];
      at = 4;
    } else if (len === 127) {
      const hi = ((h[2] << 24) | (h[3] << 16) | (h[4] << 8) | h[5]) >>> 0;
      const lo = ((h[6] << 24) | (h[7] << 16) | (h[8] << 8) | h[9]) >>> 0;
      if (hi >= 0x80000000) return this.#fail(out, 1002, "length has the top bit set");
      // Past 2^53 the number is imprecise, but any such length is over the limit.
      len = hi * 0x100000000 + lo;
      at = 10;
    }
    if (this.#masked) {
      this.#mask.set(h.subarray(at, at + 4));
      this.#maskPhase = 0;
    }
    if (this.#opcode < 0x8) {
      if (this.#opcode !== Opcode.continuation) this.#beginMessage(this.#opcode);
      if (len > this.#max - this.#msgBytes) {
        return this.#fail(out, 1009, "message too big");
      }
    } else {
      this.#ctrlLen = 0;
    }
    this.#remaining = len;
    this.#headLen = 0;
    this.#state = State.Payload;
  }

  #beginMessage(opcode: number): void {
    this.#msgOpcode = opcode;
    this.#msgBytes = 0;
    this.#text = "";
    this.#parts = [];
    this.#textDecoder = undefined;
  }

  /** Handles `bytes`, a piece of the current frame's payload. */
  #payload(bytes: Uint8Array, out: WsEvent[]): void {
    if (this.#masked) {
      unmask(bytes, this.#mask, this.#maskPhase);
      this.#maskPhase = (this.#maskPhase + bytes.length) & 3;
    }
    this.#remaining -= bytes.length;
    if (this.#opcode >= 0x8) {
      this.#ctrl.set(bytes, this.#ctrlLen);
      this.#ctrlLen += bytes.length;
      return;
    }
    this.#msgBytes += bytes.length;
    if (this.#msgOpcode === Opcode.binary) {
      // The caller reuses its buffer: keep a copy.
      if (bytes.length > 0) this.#parts.push(bytes.slice());
      return;
    }
    // Text: a whole unfragmented message in one piece decodes in one call;
    // otherwise a streaming decoder validates as the bytes come.
    const whole = this.#fin && this.#remaining === 0 && this.#textDecoder === undefined &&
      this.#text === "";
    try {
      if (whole) {
        this.#text = fatalDecoder.decode(bytes);
      } else {
        this.#textDecoder ??= new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
        this.#text += this.#textDecoder.decode(bytes, { stream: true });
      }
    } catch {
      this.#fail(out, 1007, "invalid UTF-8 in a text message");
    }
  }

  #endFrame(out: WsEvent[]): void {
    this.#state = State.Header;
    switch (this.#opcode) {
      case Opcode.ping:
        out.push({ type: "ping", data: this.#ctrl.slice(0, this.#ctrlLen) });
        return;
      case Opcode.pong:
        out.push({ type: "pong", data: this.#ctrl.slice(0, this.#ctrlLen) });
        return;
      case Opcode.close:
        return this.#endClose(out);
    }
    if (!this.#fin) return;
    if (this.#msgOpcode === Opcode.text) {
      if (this.#textDecoder !== undefined) {
        try {
          this.#text += this.#textDecoder.decode();
        } catch {
          return this.#fail(out, 1007, "invalid UTF-8 in a text message");
        }
      }
      out.push({ type: "text", data: this.#text });
    } else {
      out.push({ type: "binary", data: concat(this.#parts, this.#msgBytes) });
    }
    this.#msgOpcode = 0;
    this.#msgBytes = 0;
    this.#text = "";
    this.#parts = [];
    this.#textDecoder = undefined;
  }

  #endClose(out: WsEvent[]): void {
    const p = this.#ctrl.subarray(0, this.#ctrlLen);
    if (p.length === 0) {
      out.push({ type: "close", code: 1005, reason: "" });
    } else if (p.length === 1) {
      return this.#fail(out, 1002, "close payload of one byte");
    } else {
      const code = (p[0] << 8) | p[1];
      if (!isValidCloseCode(code)) return this.#fail(out, 1002, "invalid close code");
      let reason: string;
      try {
        reason = fatalDecoder.decode(p.subarray(2));
      } catch {
        return this.#fail(out, 1007, "invalid UTF-8 in the close reason");
      }
      out.push({ type: "close", code, reason });
    }
    this.#finish();
  }

  #fail(out: WsEvent[], code: FailCode, reason: string): void {
    out.push({ type: "fail", code, reason });
    this.#finish();
  }

  #finish(): void {
    this.#state = State.Done;
    this.#parts = [];
    this.#text = "";
    this.#textDecoder = undefined;
    this.#msgBytes = 0;
  }
}

/** The full header length that the first two bytes announce. */
function headerLength(h: Uint8Array): number {
  const len7 = h[1] & 0x7f;
  const ext = len7 === 126 ? 2 : len7 === 127 ? 8 : 0;
  return 2 + ext + ((h[1] & 0x80) !== 0 ? 4 : 0);
}

function concat(parts: Uint8Array[], total: number): Uint8Array<ArrayBuffer> {
  if (parts.length === 1 && parts[0].byteLength === parts[0].buffer.byteLength) {
    return parts[0] as Uint8Array<ArrayBuffer>;
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

const maskWord = new Uint32Array(1);
const maskWordBytes = new Uint8Array(maskWord.buffer);

/**
 * XORs `data` in place with the 4-byte `mask`, starting `phase` bytes into
 * it. Words are XORed 32 bits at a time where the buffer is aligned, which is
 * several times faster than a byte loop on large payloads.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { unmask } from "./ws_frame.ts";
 *
 * const data = new Uint8Array([1 ^ 0xa, 2 ^ 0xb, 3 ^ 0xc]);
 * unmask(data, new Uint8Array([0xa, 0xb, 0xc, 0xd]), 0);
 * assert.deepEqual(data, new Uint8Array([1, 2, 3]));
 * ```
 */
export function unmask(data: Uint8Array, mask: Uint8Array, phase: number): void {
  const n = data.length;
  let i = 0;
  if (n >= 64) {
    while (((data.byteOffset + i) & 3) !== 0) {
      data[i] ^= mask[(phase + i) & 3];
      i++;
    }
    const words = (n - i) >>> 2;
    for (let k = 0; k < 4; k++) maskWordBytes[k] = mask[(phase + i + k) & 3];
    const m = maskWord[0];
    const w = new Uint32Array(data.buffer, data.byteOffset + i, words);
    for (let k = 0; k < words; k++) w[k] ^= m;
    i += words * 4;
  }
  for (; i < n; i++) data[i] ^= mask[(phase + i) & 3];
}

const encoder = new TextEncoder();

/** Bytes of the header of an unmasked frame with `n` payload bytes. */
function serverHeaderLength(n: number): number {
  return n < 126 ? 2 : n < 65536 ? 4 : 10;
}

function writeHeader(out: Uint8Array, at: number, b0: number, n: number): number {
  out[at] = b0;
  if (n < 126) {
    out[at + 1] = n;
    return at + 2;
  }
  if (n < 65536) {
    out[at + 1] = 126;
    out[at + 2] = n >>> 8;
    out[at + 3] = n & 0xff;
    return at + 4;
  }
  out[at + 1] = 127;
  const hi = Math.floor(n / 0x100000000);
  for (let k = 0; k < 4; k++) out[at + 2 + k] = (hi >>> (24 - 8 * k)) & 0xff;
  for (let k = 0; k < 4; k++) out[at + 6 + k] = (n >>> (24 - 8 * k)) & 0xff;
  return at + 10;
}

/**
 * The payload of a close frame: the code, then the reason in UTF-8. Throws a
 * RangeError for a code that may not be sent or a reason over 123 bytes.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { closePayload } from "./ws_frame.ts";
 *
 * assert.deepEqual(closePayload(1000, "ok"), new Uint8Array([0x03, 0xe8, 0x6f, 0x6b]));
 * assert.deepEqual(closePayload(), new Uint8Array());
 * ```
 */
export function closePayload(code?: number, reason = ""): Uint8Array<ArrayBuffer> {
  if (code === undefined) {
    if (reason !== "") throw new RangeError("a close reason needs a code");
    return new Uint8Array(0);
  }
  if (!isValidCloseCode(code)) throw new RangeError(`close code ${code} may not be sent`);
  const text = encoder.encode(reason);
  if (text.length > 123) throw new RangeError("close reason over 123 bytes");
  const out = new Uint8Array(2 + text.length);
  out[0] = code >>> 8;
  out[1] = code & 0xff;
  out.set(text, 2);
  return out;
}

/** The empty buffer of a batch holding nothing (one for all: nothing is ever written into it). */
const NO_BYTES: Uint8Array<ArrayBuffer> = new Uint8Array(0);

/** The smallest buffer a batch allocates. */
const MIN_BATCH_BYTES = 512;

/** The largest written batch buffer a {@link FrameBatch} keeps for the next one. */
export const RETAINED_BATCH_BYTES = 4096;

/**
 * Server frames (unmasked, FIN set) appended into one growing buffer, handed
 * out whole by {@link take} for a single write. Text is UTF-8-encoded straight
 * into the buffer.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { FrameBatch } from "./ws_frame.ts";
 *
 * const b = new FrameBatch();
 * b.text("hi");
 * b.binary(new Uint8Array([7]));
 * b.close(1000);
 * assert.equal(b.byteLength, 4 + 3 + 4);
 * assert.deepEqual(
 *   b.take(),
 *   new Uint8Array([0x81, 2, 0x68, 0x69, 0x82, 1, 7, 0x88, 2, 0x03, 0xe8]),
 * );
 * assert.equal(b.byteLength, 0);
 * ```
 */
export class FrameBatch {
  #buf: Uint8Array<ArrayBuffer> = NO_BYTES;
  #len = 0;

  /** Bytes appended and not yet taken. */
  get byteLength(): number {
    return this.#len;
  }

  /** Appends a text frame; returns the bytes it added. */
  text(data: string): number {
    // UTF-8 needs between length and 3 × length bytes; reserve the header
    // for the upper bound and move the payload if the real one is shorter.
    const max = data.length * 3;
    const headMax = serverHeaderLength(max);
    const start = this.#len;
    this.#reserve(headMax + max);
    const { written } = encoder.encodeInto(data, this.#buf.subarray(start + headMax));
    const head = serverHeaderLength(written);
    if (head !== headMax) {
      this.#buf.copyWithin(start + head, start + headMax, start + headMax + written);
    }
    writeHeader(this.#buf, start, 0x80 | Opcode.text, written);
    this.#len = start + head + written;
    return head + written;
  }

  /** Appends a binary frame; returns the bytes it added. */
  binary(data: Uint8Array): number {
    return this.#frame(Opcode.binary, data);
  }

  /** Appends a ping (payload at most 125 bytes); returns the bytes it added. */
  ping(data: Uint8Array = new Uint8Array(0)): number {
    return this.#frame(Opcode.ping, checkControl(data));
  }

  /** Appends a pong (payload at most 125 bytes); returns the bytes it added. */
  pong(data: Uint8Array = new Uint8Array(0)): number {
    return this.#frame(Opcode.pong, checkControl(data));
  }

  /** Appends a close frame (see {@link closePayload}); returns the bytes it added. */
  close(code?: number, reason?: string): number {
    return this.#frame(Opcode.close, closePayload(code, reason));
  }

  /**
   * Appends a byte string (one char per byte, as HTTP heads are), such as
   * the handshake answer: written straight into the batch, no bytes made
   * for it first.
   */
  rawText(text: string): number {
    const n = text.length;
    this.#reserve(n);
    const buf = this.#buf;
    const at = this.#len;
    for (let i = 0; i < n; i++) buf[at + i] = text.charCodeAt(i);
    this.#len += n;
    return n;
  }

  /**
   * The bytes of the last {@link take} are written: their buffer holds the
   * next batch if nothing was appended since and it is at most
   * {@link RETAINED_BATCH_BYTES}. A socket that writes one batch at a time
   * then allocates nothing per frame; an idle one keeps a small buffer.
   */
  recycle(written: Uint8Array<ArrayBuffer>): void {
    if (this.#buf === NO_BYTES && written.buffer.byteLength <= RETAINED_BATCH_BYTES) {
      this.#buf = new Uint8Array(written.buffer);
    }
  }

  /** Hands out the bytes appended so far and starts afresh. */
  take(): Uint8Array<ArrayBuffer> {
    const out = this.#buf.subarray(0, this.#len);
    // The taken bytes belong to the caller until written: never reuse them.
    this.#buf = NO_BYTES;
    this.#len = 0;
    return out;
  }

  /** Forgets everything appended (the connection was cut). */
  clear(): void {
    this.#buf = NO_BYTES;
    this.#len = 0;
  }

  #frame(opcode: number, data: Uint8Array): number {
    const n = data.length;
    const size = serverHeaderLength(n) + n;
    this.#reserve(size);
    const at = writeHeader(this.#buf, this.#len, 0x80 | opcode, n);
    this.#buf.set(data, at);
    this.#len += size;
    return size;
  }

  #reserve(extra: number): void {
    const need = this.#len + extra;
    if (need <= this.#buf.length) return;
    // A written batch's buffer holds the next one (see recycle), so a
    // socket allocates when it starts and when its batches grow. Starting
    // at MIN_BATCH_BYTES, not at the first frame's size, spares the
    // doublings of a socket's first bursts (a DIVA join: the 101, then its
    // answer and up to nine stuns), at most a few hundred bytes kept.
    const next = new Uint8Array(Math.max(need, this.#buf.length * 2, MIN_BATCH_BYTES));
    next.set(this.#buf.subarray(0, this.#len));
    this.#buf = next;
  }
}

function checkControl(data: Uint8Array): Uint8Array {
  if (data.length > 125) throw new RangeError("control frame payload over 125 bytes");
  return data;
}
