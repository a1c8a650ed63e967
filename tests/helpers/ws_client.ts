/**
 * Test clients for the real server: a promise-based wrapper around Deno's
 * WebSocket, and a raw TCP client that does the WebSocket handshake by hand
 * so a test can misbehave in ways a browser never would (never read, never
 * answer pings, vanish without a close frame).
 *
 * @module
 */

/** A received message: parsed JSON for text frames, bytes for binary ones. */
export type Received = unknown;

/** How a WebSocket ended. */
export interface CloseInfo {
  /** The close code (1005 when none was given, 1006 when the link dropped). */
  code: number;
  /** The close reason. */
  reason: string;
}

/** Options for {@link WsClient.connect}. */
export interface ConnectOptions {
  /** Extra handshake headers (e.g. `origin`). */
  headers?: HeadersInit;
  /** An HTTP client carrying custom TLS settings (for wss with a private CA). */
  client?: Deno.HttpClient;
  /** How long the handshake may take, in ms. */
  timeoutMs?: number;
}

/** Default wait for anything a test expects, in ms. */
export const DEFAULT_TIMEOUT_MS = 5000;

/** Rejects after `ms` unless `p` settles first; always clears its timer. */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/**
 * A WebSocket client whose incoming messages queue up until a test takes
 * them with {@link WsClient.next}, so no message is ever missed or reordered.
 *
 * @example
 * ```ts
 * const a = await WsClient.connect("ws://127.0.0.1:3903/");
 * a.send(["ping"]);
 * await a.next(); // ["pong"]
 * await a.close();
 * ```
 */
export class WsClient {
  readonly #ws: WebSocket;
  readonly #queue: Received[] = [];
  readonly #waiters: ((m: Received) => void)[] = [];
  readonly #closed: Promise<CloseInfo>;

  private constructor(ws: WebSocket) {
    this.#ws = ws;
    ws.binaryType = "arraybuffer";
    ws.onmessage = (e: MessageEvent<string | ArrayBuffer>) => {
      const m = typeof e.data === "string" ? JSON.parse(e.data) : new Uint8Array(e.data);
      const w = this.#waiters.shift();
      if (w !== undefined) w(m);
      else this.#queue.push(m);
    };
    this.#closed = new Promise((resolve) => {
      ws.addEventListener("close", (e) => resolve({ code: e.code, reason: e.reason }));
    });
  }

  /** Opens a WebSocket and resolves once it is open. */
  static async connect(url: string, options: ConnectOptions = {}): Promise<WsClient> {
    const ws = new WebSocket(url, { headers: options.headers, client: options.client });
    const client = new WsClient(ws);
    const opened = new Promise<void>((resolve, reject) => {
      ws.onopen = () => resolve();
      ws.onerror = (e) =>
        reject(new Error(`cannot connect to ${url}: ${(e as ErrorEvent).message}`));
    });
    try {
      await withTimeout(opened, options.timeoutMs ?? DEFAULT_TIMEOUT_MS, `open ${url}`);
    } catch (e) {
      // Let the failed socket finish closing, or the test leaks it.
      await withTimeout(client.#closed, DEFAULT_TIMEOUT_MS, "failed socket to close");
      throw e;
    }
    ws.onerror = () => {/* the close event that follows says what happened */};
    return client;
  }

  /** The socket's `readyState`. */
  get readyState(): number {
    return this.#ws.readyState;
  }

  /** Sends a value as JSON text, or a string or bytes exactly as given. */
  send(message: unknown): void {
    if (typeof message === "string" || message instanceof Uint8Array) this.#ws.send(message);
    else this.#ws.send(JSON.stringify(message));
  }

  /** The next message received, waiting at most `timeoutMs`. */
  next(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Received> {
    const queued = this.#queue.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    let waiter!: (m: Received) => void;
    const p = new Promise<Received>((resolve) => {
      waiter = resolve;
      this.#waiters.push(resolve);
    });
    return withTimeout(p, timeoutMs, "the next message").catch((e) => {
      const i = this.#waiters.indexOf(waiter);
      if (i >= 0) this.#waiters.splice(i, 1);
      throw e;
    });
  }

  /**
   * Everything received before a `["pong"]` answering a ping sent now: the
   * server handles one connection's frames in order, so this shows exactly
   * what is pending without waiting on a clock.
   */
  async drain(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Received[]> {
    this.send(["ping"]);
    const got: Received[] = [];
    for (;;) {
      const m = await this.next(timeoutMs);
      if (Array.isArray(m) && m.length === 1 && m[0] === "pong") return got;
      got.push(m);
    }
  }

  /** Messages received and not yet taken. */
  get pending(): number {
    return this.#queue.length;
  }

  /** Resolves with the close code and reason once the socket is closed. */
  closed(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<CloseInfo> {
    return withTimeout(this.#closed, timeoutMs, "the socket to close");
  }

  /** Closes the socket (if still open) and waits until it is closed. */
  async close(code = 1000, reason = ""): Promise<CloseInfo> {
    if (this.#ws.readyState === WebSocket.CONNECTING || this.#ws.readyState === WebSocket.OPEN) {
      this.#ws.close(code, reason);
    }
    return await this.closed();
  }
}

/** The answer to a hand-made WebSocket handshake. */
export interface Handshake {
  /** The HTTP status code (101 when upgraded). */
  status: number;
  /** Response headers, lower-cased names. */
  headers: Map<string, string>;
}

/** Options for {@link RawWsClient.connect}. */
export interface RawConnectOptions {
  /** Request path. */
  path?: string;
  /** `Origin` header, if any. */
  origin?: string;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A frame read by {@link RawWsClient.readFrame}. */
export type RawFrame =
  | { kind: "text"; text: string }
  | { kind: "binary"; bytes: Uint8Array }
  | { kind: "close"; code: number; reason: string }
  | { kind: "ping" | "pong"; bytes: Uint8Array };

/**
 * A WebSocket client over a plain TCP connection, speaking just enough of
 * RFC 6455 to handshake, send masked text frames and parse what comes back.
 * It never reads or answers anything unless told to, which is the point.
 */
export class RawWsClient {
  /** The TCP connection. */
  readonly conn: Deno.TcpConn;
  /** The server's answer to the handshake. */
  readonly handshake: Handshake;
  #buf: Uint8Array;
  #closed = false;

  private constructor(conn: Deno.TcpConn, handshake: Handshake, rest: Uint8Array) {
    this.conn = conn;
    this.handshake = handshake;
    this.#buf = rest;
  }

  /**
   * Connects to `127.0.0.1:port` and sends an upgrade request; resolves with
   * the client whatever the status, so a test can check a refusal too.
   */
  static async connect(port: number, options: RawConnectOptions = {}): Promise<RawWsClient> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    try {
      const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
      const lines = [
        `GET ${options.path ?? "/"} HTTP/1.1`,
        `Host: 127.0.0.1:${port}`,
        "Upgrade: websocket",
        "Connection: Upgrade",
        `Sec-WebSocket-Key: ${key}`,
        "Sec-WebSocket-Version: 13",
      ];
      if (options.origin !== undefined) lines.push(`Origin: ${options.origin}`);
      await writeAll(conn, encoder.encode(lines.join("\r\n") + "\r\n\r\n"));
      let buf: Uint8Array = new Uint8Array(0);
      let end = -1;
      while (end < 0) {
        const chunk = await readSome(conn);
        if (chunk === null) throw new Error("connection closed during the handshake");
        buf = concat(buf, chunk);
        end = indexOfCrlfCrlf(buf);
      }
      const head = decoder.decode(buf.subarray(0, end)).split("\r\n");
      const status = Number(head[0].split(" ")[1]);
      const headers = new Map<string, string>();
      for (const line of head.slice(1)) {
        const i = line.indexOf(":");
        if (i > 0) headers.set(line.slice(0, i).trim().toLowerCase(), line.slice(i + 1).trim());
      }
      return new RawWsClient(conn, { status, headers }, buf.slice(end + 4));
    } catch (e) {
      conn.close();
      throw e;
    }
  }

  /** Sends one masked text frame (as a browser would). */
  async sendText(text: string): Promise<void> {
    await writeAll(this.conn, maskedFrame(0x1, encoder.encode(text)));
  }

  /** Sends a value as JSON in one masked text frame. */
  send(message: unknown): Promise<void> {
    return this.sendText(JSON.stringify(message));
  }

  /** Reads the next frame, or null at end of stream. Pings are returned, never answered. */
  async readFrame(): Promise<RawFrame | null> {
    for (;;) {
      const frame = this.#parse();
      if (frame !== undefined) return frame;
      const chunk = await readSome(this.conn);
      if (chunk === null) return null;
      this.#buf = concat(this.#buf, chunk);
    }
  }

  /** Reads frames until a close frame or end of stream; returns the close, if any. */
  async readUntilClose(): Promise<{ code: number; reason: string } | null> {
    for (;;) {
      const f = await this.readFrame();
      if (f === null) return null;
      if (f.kind === "close") return { code: f.code, reason: f.reason };
    }
  }

  /** Drops the TCP connection without a close frame. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.conn.close();
    } catch {
      // Already closed by a failed read or write.
    }
  }

  #parse(): RawFrame | undefined {
    const b = this.#buf;
    if (b.length < 2) return undefined;
    const opcode = b[0] & 0x0f;
    let len = b[1] & 0x7f;
    let at = 2;
    if (len === 126) {
      if (b.length < 4) return undefined;
      len = (b[2] << 8) | b[3];
      at = 4;
    } else if (len === 127) {
      if (b.length < 10) return undefined;
      len = Number(new DataView(b.buffer, b.byteOffset + 2, 8).getBigUint64(0));
      at = 10;
    }
    // Server frames are never masked (RFC 6455 §5.1).
    if (b.length < at + len) return undefined;
    const payload = b.slice(at, at + len);
    this.#buf = b.slice(at + len);
    switch (opcode) {
      case 0x1:
        return { kind: "text", text: decoder.decode(payload) };
      case 0x2:
        return { kind: "binary", bytes: payload };
      case 0x8: {
        const code = payload.length >= 2 ? (payload[0] << 8) | payload[1] : 1005;
        return { kind: "close", code, reason: decoder.decode(payload.subarray(2)) };
      }
      case 0x9:
        return { kind: "ping", bytes: payload };
      case 0xa:
        return { kind: "pong", bytes: payload };
      default:
        throw new Error(`unexpected opcode ${opcode}`);
    }
  }
}

/** A client-to-server frame: FIN set, masked with a random key. */
function maskedFrame(opcode: number, payload: Uint8Array): Uint8Array {
  const n = payload.length;
  const headLen = n < 126 ? 2 : n < 65536 ? 4 : 10;
  const out = new Uint8Array(headLen + 4 + n);
  out[0] = 0x80 | opcode;
  if (n < 126) out[1] = 0x80 | n;
  else if (n < 65536) {
    out[1] = 0x80 | 126;
    out[2] = n >> 8;
    out[3] = n & 0xff;
  } else {
    out[1] = 0x80 | 127;
    new DataView(out.buffer).setBigUint64(2, BigInt(n));
  }
  const mask = crypto.getRandomValues(new Uint8Array(4));
  out.set(mask, headLen);
  for (let i = 0; i < n; i++) out[headLen + 4 + i] = payload[i] ^ mask[i & 3];
  return out;
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await conn.write(data.subarray(off));
}

async function readSome(conn: Deno.Conn): Promise<Uint8Array | null> {
  const buf = new Uint8Array(16 * 1024);
  const n = await conn.read(buf);
  return n === null ? null : buf.subarray(0, n);
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

function indexOfCrlfCrlf(b: Uint8Array): number {
  for (let i = 0; i + 3 < b.length; i++) {
    if (b[i] === 13 && b[i + 1] === 10 && b[i + 2] === 13 && b[i + 3] === 10) return i;
  }
  return -1;
}
