/**
 * A TCP proxy in front of the signal server that a test can sever, to drop
 * a client's connection the way a network does: no WebSocket close frame.
 *
 * Every accepted connection is one {@link ProxyLink}: a client-facing socket
 * and a server-facing one, with bytes copied both ways. {@link CutProxy.sever}
 * closes the client-facing side at once and stops forwarding; the
 * server-facing side stays open and silent (nothing more is written to it),
 * so the server keeps a half-open connection and notices nothing until its
 * idle timeout. The proxy goes on reading it, and parses what the server
 * sends (frames it believes it delivered, a close frame), so a test can see
 * what went into the void. `sever(link, { server: true })` closes the
 * server-facing side too, abruptly, as when a client's host vanishes.
 * {@link CutProxy.mute} first stops only what the server sends (recorded,
 * not forwarded), so replies to requests made just before a cut are lost.
 *
 * @module
 */

/** A frame the server sent towards the client, as the proxy read it. */
export interface ServerFrame {
  /** `text`, `binary`, `close`, `ping`, `pong` or `continuation`. */
  kind: string;
  /** The text of a text frame. */
  text?: string;
  /** The code of a close frame (1005 when it has none). */
  code?: number;
  /** The reason of a close frame. */
  reason?: string;
  /** True when the frame arrived after the link was muted or severed (it never reached the client). */
  afterCut: boolean;
  /** When its last byte arrived (`performance.now()`). */
  at: number;
}

/** One proxied connection. */
export interface ProxyLink {
  /** The socket to the client. */
  readonly client: Deno.TcpConn;
  /** The socket to the server. */
  readonly server: Deno.TcpConn;
  /** When it was severed (`performance.now()`), or -1. */
  severedAt: number;
  /** When what the server sends stopped being forwarded (`performance.now()`), or -1. */
  mutedAt: number;
  /** Every frame the server sent on this link, in order. */
  readonly frames: ServerFrame[];
  /** Resolves once the server side has ended (the server closed its TCP connection). */
  readonly serverEnded: Promise<void>;
}

const decoder = new TextDecoder();

/** Copies a client's TCP connection to the server and back, until severed. */
export class CutProxy {
  /** The links, in the order their clients connected. */
  readonly links: ProxyLink[] = [];
  readonly #listener: Deno.TcpListener;
  readonly #target: number;
  readonly #pumps: Promise<void>[] = [];
  readonly #accepting: Promise<void>;
  #closed = false;
  #onLink: (() => void)[] = [];

  private constructor(listener: Deno.TcpListener, target: number) {
    this.#listener = listener;
    this.#target = target;
    this.#accepting = this.#accept();
  }

  /** Listens on 127.0.0.1 (a free port) and forwards to `127.0.0.1:targetPort`. */
  static start(targetPort: number): CutProxy {
    return new CutProxy(Deno.listen({ hostname: "127.0.0.1", port: 0 }), targetPort);
  }

  /** The proxy's port. */
  get port(): number {
    return this.#listener.addr.port;
  }

  /** `ws://127.0.0.1:<port>/`. */
  get wsUrl(): string {
    return `ws://127.0.0.1:${this.port}/`;
  }

  /** Resolves with the `n`th link (0-based) once its client has connected. */
  async link(n: number): Promise<ProxyLink> {
    while (this.links.length <= n) {
      await new Promise<void>((resolve) => this.#onLink.push(resolve));
    }
    return this.links[n];
  }

  /**
   * Cuts a link: the client-facing socket is closed (no close frame) and
   * nothing more is forwarded either way. The server-facing socket stays
   * open and silent unless `server` is true, which closes it too.
   */
  sever(link: ProxyLink, options: { server?: boolean } = {}): void {
    if (link.severedAt < 0) link.severedAt = performance.now();
    close(link.client);
    if (options.server) close(link.server);
  }

  /** Stops forwarding what the server sends on a link (it is still read and recorded). */
  mute(link: ProxyLink): void {
    if (link.mutedAt < 0) link.mutedAt = performance.now();
  }

  /** Closes the listener and every socket, and waits for the copying to end. */
  async close(): Promise<void> {
    this.#closed = true;
    try {
      this.#listener.close();
    } catch { /* already closed */ }
    await this.#accepting;
    for (const l of this.links) {
      close(l.client);
      close(l.server);
    }
    await Promise.all(this.#pumps);
  }

  async #accept(): Promise<void> {
    for (;;) {
      let client: Deno.TcpConn;
      try {
        client = await this.#listener.accept();
      } catch {
        return; // the listener closed
      }
      if (this.#closed) {
        close(client);
        return;
      }
      let server: Deno.TcpConn;
      try {
        server = await Deno.connect({ hostname: "127.0.0.1", port: this.#target });
      } catch {
        close(client);
        continue;
      }
      client.setNoDelay(true);
      server.setNoDelay(true);
      let ended!: () => void;
      const link: ProxyLink = {
        client,
        server,
        severedAt: -1,
        mutedAt: -1,
        frames: [],
        serverEnded: new Promise<void>((r) => ended = r),
      };
      this.links.push(link);
      this.#pumps.push(this.#up(link), this.#down(link).finally(ended));
      for (const wake of this.#onLink.splice(0)) wake();
    }
  }

  /** Client to server. A client that closes normally closes the server side too. */
  async #up(link: ProxyLink): Promise<void> {
    const buf = new Uint8Array(64 * 1024);
    for (;;) {
      const n = await read(link.client, buf);
      if (n === null || link.severedAt >= 0) break;
      if (!await writeAll(link.server, buf.subarray(0, n))) break;
    }
    // Severed: the server side stays as it is (half-open) until the server
    // closes it. Otherwise the client went away: so does the server side.
    if (link.severedAt < 0) close(link.server);
  }

  /** Server to client, parsing the frames; after a cut, read and recorded only. */
  async #down(link: ProxyLink): Promise<void> {
    const buf = new Uint8Array(64 * 1024);
    const parser = new FrameParser();
    for (;;) {
      const n = await read(link.server, buf);
      if (n === null) break;
      const chunk = buf.subarray(0, n);
      const cut = link.severedAt >= 0 || link.mutedAt >= 0;
      for (const f of parser.push(chunk)) {
        link.frames.push({ ...f, afterCut: cut, at: performance.now() });
      }
      if (!cut && !await writeAll(link.client, chunk)) {
        if (link.severedAt < 0) break;
      }
    }
    close(link.server);
    if (link.severedAt < 0) close(link.client);
  }
}

/** Parses what a server sends on a WebSocket connection: the HTTP head, then frames. */
class FrameParser {
  #buf: Uint8Array = new Uint8Array(0);
  #head = true;

  /** Adds bytes; returns the frames they complete. */
  push(chunk: Uint8Array): Omit<ServerFrame, "afterCut" | "at">[] {
    const b = new Uint8Array(this.#buf.length + chunk.length);
    b.set(this.#buf);
    b.set(chunk, this.#buf.length);
    this.#buf = b;
    const out: Omit<ServerFrame, "afterCut" | "at">[] = [];
    if (this.#head) {
      const end = indexOfHeadEnd(this.#buf);
      if (end < 0) return out;
      this.#buf = this.#buf.slice(end + 4);
      this.#head = false;
    }
    for (;;) {
      const f = this.#next();
      if (f === undefined) return out;
      out.push(f);
    }
  }

  #next(): Omit<ServerFrame, "afterCut" | "at"> | undefined {
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
    // A server's frames are never masked (RFC 6455 §5.1).
    if (b.length < at + len) return undefined;
    const payload = b.slice(at, at + len);
    this.#buf = b.slice(at + len);
    switch (opcode) {
      case 0x1:
        return { kind: "text", text: decoder.decode(payload) };
      case 0x8:
        return {
          kind: "close",
          code: payload.length >= 2 ? (payload[0] << 8) | payload[1] : 1005,
          reason: decoder.decode(payload.subarray(2)),
        };
      default:
        return {
          kind:
            ({ 0: "continuation", 2: "binary", 9: "ping", 10: "pong" } as Record<number, string>)[
              opcode
            ] ?? `opcode-${opcode}`,
        };
    }
  }
}

function indexOfHeadEnd(b: Uint8Array): number {
  for (let i = 0; i + 3 < b.length; i++) {
    if (b[i] === 13 && b[i + 1] === 10 && b[i + 2] === 13 && b[i + 3] === 10) return i;
  }
  return -1;
}

async function read(conn: Deno.Conn, buf: Uint8Array): Promise<number | null> {
  try {
    return await conn.read(buf);
  } catch {
    return null; // closed here (severed) or reset by the other end
  }
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<boolean> {
  try {
    let off = 0;
    while (off < data.length) off += await conn.write(data.subarray(off));
    return true;
  } catch {
    return false;
  }
}

function close(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch { /* already closed */ }
}
