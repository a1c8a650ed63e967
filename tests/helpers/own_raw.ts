/**
 * Hand-made HTTP and WebSocket clients over plain TCP (or TLS), for testing
 * our own transport with exactly the bytes a test wants: malformed heads,
 * slow heads, hand-made frames (unmasked, fragmented, reserved bits, bad
 * UTF-8, huge declared lengths).
 *
 * @module
 */

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A bound on a wait, so no test can hang. */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/** A raw connection with a read buffer. */
export class RawConn {
  /** The connection. */
  readonly conn: Deno.Conn;
  #buf: Uint8Array = new Uint8Array(0);
  #closed = false;
  #eof = false;

  /** Wraps `conn`. */
  constructor(conn: Deno.Conn) {
    this.conn = conn;
  }

  /** Connects to 127.0.0.1:`port`. */
  static async connect(port: number): Promise<RawConn> {
    return new RawConn(await Deno.connect({ hostname: "127.0.0.1", port }));
  }

  /** Writes text or bytes entirely. */
  async write(data: string | Uint8Array): Promise<void> {
    const b = typeof data === "string" ? encoder.encode(data) : data;
    let off = 0;
    while (off < b.length) off += await this.conn.write(b.subarray(off));
  }

  /** Reads more bytes into the buffer; false at end of stream (or reset). */
  async fill(): Promise<boolean> {
    if (this.#eof) return false;
    const chunk = new Uint8Array(64 * 1024);
    let n: number | null;
    try {
      n = await this.conn.read(chunk);
    } catch {
      n = null;
    }
    if (n === null) {
      this.#eof = true;
      return false;
    }
    const next = new Uint8Array(this.#buf.length + n);
    next.set(this.#buf);
    next.set(chunk.subarray(0, n), this.#buf.length);
    this.#buf = next;
    return true;
  }

  /** Bytes buffered and not yet taken. */
  get buffered(): Uint8Array {
    return this.#buf;
  }

  /** Drops the first `n` buffered bytes. */
  consume(n: number): void {
    this.#buf = this.#buf.slice(n);
  }

  /** Everything until the peer closes, as text. */
  async readToEnd(timeoutMs = 5000): Promise<string> {
    await withTimeout(
      (async () => {
        while (await this.fill()) { /* keep reading */ }
      })(),
      timeoutMs,
      "the end of the stream",
    );
    const text = decoder.decode(this.#buf);
    this.#buf = new Uint8Array(0);
    return text;
  }

  /** Whether the peer closed (reads end) within `timeoutMs`, discarding data. */
  async closedWithin(timeoutMs: number): Promise<boolean> {
    try {
      await this.readToEnd(timeoutMs);
      return true;
    } catch {
      return false;
    }
  }

  /** Reads one HTTP response (head and a Content-Length body). */
  async response(timeoutMs = 5000): Promise<HttpAnswer> {
    return await withTimeout(this.#response(), timeoutMs, "an HTTP response");
  }

  async #response(): Promise<HttpAnswer> {
    let end: number;
    while ((end = indexOf(this.#buf, "\r\n\r\n")) < 0) {
      if (!await this.fill()) {
        throw new Error(`stream ended in a head: ${decoder.decode(this.#buf)}`);
      }
    }
    const lines = decoder.decode(this.#buf.subarray(0, end)).split("\r\n");
    this.consume(end + 4);
    const status = Number(lines[0].split(" ")[1]);
    const headers = new Headers();
    for (const l of lines.slice(1)) {
      const i = l.indexOf(":");
      headers.append(l.slice(0, i).trim(), l.slice(i + 1).trim());
    }
    const len = Number(headers.get("content-length") ?? "0");
    while (this.#buf.length < len) {
      if (!await this.fill()) throw new Error("stream ended in a body");
    }
    const body = decoder.decode(this.#buf.subarray(0, len));
    this.consume(len);
    return { status, headers, body, statusLine: lines[0] };
  }

  /** Closes the connection (idempotent). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.conn.close();
    } catch { /* already closed */ }
  }
}

/** An HTTP response read by {@link RawConn.response}. */
export interface HttpAnswer {
  /** Status code. */
  status: number;
  /** The first line. */
  statusLine: string;
  /** Fields. */
  headers: Headers;
  /** The body (by Content-Length). */
  body: string;
}

function indexOf(b: Uint8Array, s: string): number {
  const n = encoder.encode(s);
  outer: for (let i = 0; i + n.length <= b.length; i++) {
    for (let k = 0; k < n.length; k++) if (b[i + k] !== n[k]) continue outer;
    return i;
  }
  return -1;
}

/** Options of {@link clientFrame}. */
export interface FrameOptions {
  /** FIN bit. Default true. */
  fin?: boolean;
  /** RSV1-3 bits (0..7). Default 0. */
  rsv?: number;
  /** Mask the payload as a client must. Default true. */
  mask?: boolean;
  /** Length to declare instead of the payload's (the payload is sent as given). */
  declaredLength?: number;
}

/** A client frame with full control over its header. */
export function clientFrame(
  opcode: number,
  payload: Uint8Array | string = new Uint8Array(0),
  o: FrameOptions = {},
): Uint8Array {
  const data = typeof payload === "string" ? encoder.encode(payload) : payload;
  const len = o.declaredLength ?? data.length;
  const mask = o.mask ?? true;
  const ext = len < 126 ? 0 : len < 65536 ? 2 : 8;
  const head = new Uint8Array(2 + ext + (mask ? 4 : 0));
  head[0] = ((o.fin ?? true) ? 0x80 : 0) | ((o.rsv ?? 0) << 4) | opcode;
  head[1] = (mask ? 0x80 : 0) | (len < 126 ? len : len < 65536 ? 126 : 127);
  if (ext === 2) new DataView(head.buffer).setUint16(2, len);
  if (ext === 8) new DataView(head.buffer).setBigUint64(2, BigInt(len));
  const out = new Uint8Array(head.length + data.length);
  out.set(head);
  if (mask) {
    const key = crypto.getRandomValues(new Uint8Array(4));
    out.set(key, 2 + ext);
    for (let i = 0; i < data.length; i++) out[head.length + i] = data[i] ^ key[i & 3];
  } else {
    out.set(data, head.length);
  }
  return out;
}

/** A server frame read by {@link RawWs.frame}. */
export interface ServerFrame {
  /** Opcode. */
  opcode: number;
  /** FIN bit. */
  fin: boolean;
  /** Whether the frame was masked (a server must not mask). */
  masked: boolean;
  /** Payload. */
  payload: Uint8Array;
}

/** A WebSocket over a raw connection: hand-made frames out, parsed frames in. */
export class RawWs {
  /** The raw connection. */
  readonly raw: RawConn;
  /** The 101 answer. */
  readonly answer: HttpAnswer;

  private constructor(raw: RawConn, answer: HttpAnswer) {
    this.raw = raw;
    this.answer = answer;
  }

  /** Sends an upgrade request; resolves whatever the answer. */
  static async open(
    port: number,
    headers: Record<string, string> = {},
    path = "/",
  ): Promise<RawWs> {
    const raw = await RawConn.connect(port);
    const h: Record<string, string> = {
      host: `127.0.0.1:${port}`,
      upgrade: "websocket",
      connection: "Upgrade",
      "sec-websocket-key": btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16)))),
      "sec-websocket-version": "13",
      ...headers,
    };
    const lines = [`GET ${path} HTTP/1.1`];
    for (const [k, v] of Object.entries(h)) if (v !== "") lines.push(`${k}: ${v}`);
    await raw.write(lines.join("\r\n") + "\r\n\r\n");
    return new RawWs(raw, await raw.response());
  }

  /** Sends bytes as they are. */
  send(bytes: Uint8Array): Promise<void> {
    return this.raw.write(bytes);
  }

  /** The next server frame, or null at end of stream. */
  async frame(timeoutMs = 5000): Promise<ServerFrame | null> {
    return await withTimeout(this.#frame(), timeoutMs, "a server frame");
  }

  async #frame(): Promise<ServerFrame | null> {
    for (;;) {
      const b = this.raw.buffered;
      if (b.length >= 2) {
        let len = b[1] & 0x7f;
        let at = 2;
        if (len === 126 && b.length >= 4) [len, at] = [(b[2] << 8) | b[3], 4];
        else if (len === 127 && b.length >= 10) {
          [len, at] = [Number(new DataView(b.buffer, b.byteOffset + 2, 8).getBigUint64(0)), 10];
        }
        const masked = (b[1] & 0x80) !== 0;
        if (masked) at += 4;
        if ((b[1] & 0x7f) < 126 || at > 2) {
          if (b.length >= at + len) {
            const f = {
              opcode: b[0] & 0x0f,
              fin: (b[0] & 0x80) !== 0,
              masked,
              payload: b.slice(at, at + len),
            };
            this.raw.consume(at + len);
            return f;
          }
        }
      }
      if (!await this.raw.fill()) return null;
    }
  }

  /** Frames until a close frame (returned with its code and reason) or end of stream (null). */
  async closeFrame(timeoutMs = 5000): Promise<{ code: number; reason: string } | null> {
    for (;;) {
      const f = await this.frame(timeoutMs);
      if (f === null) return null;
      if (f.opcode === 0x8) {
        const p = f.payload;
        return {
          code: p.length >= 2 ? (p[0] << 8) | p[1] : 1005,
          reason: decoder.decode(p.subarray(2)),
        };
      }
    }
  }

  /** Closes the TCP connection. */
  close(): void {
    this.raw.close();
  }
}
