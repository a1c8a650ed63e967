/**
 * The WebSocket transport: binds upgraded sockets to protocol engines.
 *
 * For each connection it keeps the engine's state and a {@link Link} through
 * which the engine sends, closes and asks to be woken. It enforces what every
 * protocol shares: the message size (checked on arrival, before the engine
 * sees the message), slow readers (a socket whose unsent bytes stay over the
 * limit is closed with 1008), idle peers (the runtime's ping timeout) and,
 * for engines that do not refresh tokens themselves, the expiry of the token
 * a connection upgraded with (closed with 1008). An exception from an engine
 * costs that connection (1011), never the process.
 *
 * The runtime is passed in as an `upgrade` function with the shape of
 * `Deno.upgradeWebSocket`, so another implementation can stand in for Deno's.
 *
 * @module
 */

import type { Log } from "../log.ts";
import type { Engine, Link, Mount, Peer } from "./engine.ts";
import { utf8Exceeds } from "./utf8.ts";

/** WebSocket close codes the transport uses. */
export const TransportClose = {
  goingAway: 1001,
  policy: 1008,
  tooLarge: 1009,
  internal: 1011,
} as const;

/**
 * The part of the WebSocket API the transport uses: Deno's `WebSocket` and
 * the own transport's `OwnWebSocket` both have it.
 */
export interface SocketLike {
  /** 0 connecting, 1 open, 2 closing, 3 closed. */
  readonly readyState: number;
  /** Bytes handed to the socket and not yet written. */
  readonly bufferedAmount: number;
  /** How binary messages arrive. */
  binaryType: string;
  /** Sends a text frame. */
  send(data: string): void;
  /** Starts the closing handshake. */
  close(code?: number, reason?: string): void;
  /** The socket opened. */
  onopen: ((ev: Event) => void) | null;
  /** A message arrived. */
  onmessage: ((ev: MessageEvent) => void) | null;
  /** The socket closed, for any reason. */
  onclose: ((ev: CloseEvent) => void) | null;
  /** Something failed; a close follows. */
  onerror: ((ev: Event) => void) | null;
  /** A message over the size limit is arriving (own transport only; see `OwnWebSocket`). */
  ontoobig?: (() => void) | null;
}

/** What the transport asks of a runtime's upgrade. */
export interface UpgradeOptions {
  /** Seconds without a pong before the runtime drops a connection (0 = off). */
  idleTimeout: number;
  /** Largest message; a runtime that can refuses more as it arrives. */
  maxMessageBytes: number;
  /** The subprotocol to answer with, if the client offered one we speak. */
  protocol?: string;
}

/** The shape of `Deno.upgradeWebSocket`: what the transport needs of a runtime. */
export type Upgrade = (
  req: Request,
  options: UpgradeOptions,
) => { socket: SocketLike; response: Response };

/** The longest delay a timer takes (about 24.8 days). */
const MAX_TIMER_MS = 2 ** 31 - 1;

const CONNECTING = 0;
const OPEN = 1;

/** Settings of a {@link WebSocketTransport}. */
export interface TransportOptions {
  /** Largest message, in bytes; a larger one closes the connection with 1009. */
  maxMessageBytes: number;
  /** Unsent bytes a socket may hold for longer than {@link SLOW_READER_GRACE_MS}. */
  maxBufferedBytes: number;
  /** Seconds without a pong before the runtime drops a connection (0 = off). */
  idleTimeout: number;
  /** The runtime's upgrade; `Deno.upgradeWebSocket` when omitted. */
  upgrade?: Upgrade;
  /** How long after its `exp` a token still counts, in ms (the JWT clock skew). Default 0. */
  tokenSkewMs?: number;
  /** The wall clock, for token expiry. Default `Date.now`. */
  wallNow?: () => number;
}

/** Counters the transport keeps, for metrics. */
export interface TransportCounters {
  /** Sockets closed because they did not read what was sent to them. */
  slow_reader_closed: number;
  /** Connections closed with 1011 because an engine threw. */
  internal_errors: number;
  /** Connections closed with 1008 because their token expired (engines without refresh). */
  token_expired_closed: number;
}

/**
 * How long a socket's unsent queue may stay over `maxBufferedBytes` before
 * its reader counts as slow. Deno counts a frame as buffered until its write
 * completes on a later turn of the event loop, so a burst sent in one turn
 * overshoots the limit even for a reader that keeps up.
 */
export const SLOW_READER_GRACE_MS = 1000;

/** One upgraded socket and what the transport knows of it; the engine's {@link Link}. */
export class Socket implements Link {
  /** The engine, once chosen (at once, or on the first message of a shared path). */
  engine: Engine | undefined = undefined;
  /** The engine's state for this connection. */
  state: unknown = undefined;
  /** Set once the engine was told the connection closed. */
  ended: boolean = false;
  /** Set once the engine is final (one engine on the path, or the first message came). */
  chosen: boolean = false;
  /** The pending wake, if any. */
  wakeTimer: ReturnType<typeof setTimeout> | undefined = undefined;
  /** The pending second look at a socket over the buffer limit, if any. */
  slowTimer: ReturnType<typeof setTimeout> | undefined = undefined;
  /** The pending end of the connection's token, if it has one that expires. */
  expiryTimer: ReturnType<typeof setTimeout> | undefined = undefined;

  /** Made by {@link WebSocketTransport.accept}. */
  constructor(
    readonly ws: SocketLike,
    readonly mount: Mount,
    readonly peer: Peer,
    readonly transport: WebSocketTransport,
  ) {}

  /** {@link Link.send}. */
  send(frame: string): void {
    const ws = this.ws;
    if (ws.readyState !== OPEN) return;
    ws.send(frame);
    // A reader that does not keep up would make us buffer without end.
    if (this.slowTimer === undefined && ws.bufferedAmount > this.transport.maxBufferedBytes) {
      this.slowTimer = setTimeout(() => this.transport.checkSlowReader(this), SLOW_READER_GRACE_MS);
    }
  }

  /** {@link Link.close}. */
  close(code: number, reason: string): void {
    const ws = this.ws;
    if (ws.readyState === OPEN || ws.readyState === CONNECTING) {
      ws.close(code, reason);
    }
  }

  /** {@link Link.wake}. */
  wake(delayMs: number): void {
    clearTimeout(this.wakeTimer);
    // A longer delay would overflow the timer and fire at once; waking
    // early is harmless (the engine asks again).
    this.wakeTimer = setTimeout(() => {
      this.wakeTimer = undefined;
      this.transport.run(this, () => this.engine!.wake(this.state));
    }, Math.min(delayMs, MAX_TIMER_MS));
  }
}

/**
 * Upgrades requests on a mount and runs their connections.
 *
 * @example
 * ```ts ignore
 * const transport = new WebSocketTransport(
 *   { maxMessageBytes: 65536, maxBufferedBytes: 1 << 20, idleTimeout: 30 },
 *   logger("transport"),
 * );
 * Deno.serve((req) => transport.accept(req, { path: "/", engines: [engine] }, peer));
 * ```
 */
export class WebSocketTransport {
  /** Counters for metrics. */
  readonly counters: TransportCounters = {
    slow_reader_closed: 0,
    internal_errors: 0,
    token_expired_closed: 0,
  };
  /** The slow-reader limit, in bytes. */
  readonly maxBufferedBytes: number;
  readonly #options: TransportOptions;
  readonly #upgrade: Upgrade;
  readonly #log: Log;
  readonly #sockets = new Set<Socket>();
  #onDrained: (() => void) | undefined;
  #stopping = false;

  /** A transport with no connections. */
  constructor(options: TransportOptions, log: Log) {
    this.#options = options;
    this.maxBufferedBytes = options.maxBufferedBytes;
    this.#upgrade = options.upgrade ??
      ((req, o) =>
        Deno.upgradeWebSocket(req, { idleTimeout: o.idleTimeout, protocol: o.protocol }));
    this.#log = log;
  }

  /** Open sockets. */
  get sockets(): number {
    return this.#sockets.size;
  }

  /**
   * Upgrades `req` (already checked to be a WebSocket upgrade on `mount`),
   * answering with `protocol` when given.
   */
  accept(req: Request, mount: Mount, peer: Peer, protocol?: string): Response {
    const { socket: ws, response } = this.#upgrade(req, {
      idleTimeout: this.#options.idleTimeout,
      maxMessageBytes: this.#options.maxMessageBytes,
      protocol,
    });
    ws.binaryType = "arraybuffer";
    const s = new Socket(ws, mount, peer, this);
    ws.onopen = () => {
      this.#sockets.add(s);
      if (this.#stopping) {
        s.ended = true;
        s.close(TransportClose.goingAway, "server shutting down");
      } else {
        this.#start(s, mount.engines[0]);
        this.#armExpiry(s);
      }
    };
    ws.onmessage = (e: MessageEvent<string | ArrayBuffer>) => {
      const d = e.data;
      this.#message(s, typeof d === "string" ? d : new Uint8Array(d));
    };
    ws.onclose = () => this.#closed(s);
    // A runtime that refuses an oversize message as it arrives lets the
    // engine say why before the 1009.
    if ("ontoobig" in ws) ws.ontoobig = () => this.#oversize(s);
    ws.onerror = () => {/* a close event follows */};
    return response;
  }

  /**
   * Ends every connection: each engine is told first (so peers everywhere
   * hear of the leave), then the socket is closed with `code`. Sockets that
   * open afterwards are closed at once.
   */
  closeAll(code: number, reason: string): void {
    this.#stopping = true;
    for (const s of this.#sockets) {
      this.#end(s);
      s.close(code, reason);
    }
  }

  /** Resolves once no socket is open. */
  drained(): Promise<void> {
    return new Promise((resolve) => {
      if (this.#sockets.size === 0) resolve();
      else this.#onDrained = resolve;
    });
  }

  /** Runs `step` for a socket's engine; an exception closes that connection with 1011. */
  run(s: Socket, step: () => void): void {
    if (s.ended) return;
    try {
      step();
    } catch (err) {
      this.counters.internal_errors++;
      this.#log.error("internal error, closing the connection: {error}", {
        error: err instanceof Error ? err.stack ?? err.message : String(err),
      });
      this.#end(s, true);
      s.close(TransportClose.internal, "internal error");
    }
  }

  /** The second look at a socket that went over the buffer limit. */
  checkSlowReader(s: Socket): void {
    s.slowTimer = undefined;
    const ws = s.ws;
    if (ws.readyState !== OPEN || ws.bufferedAmount <= this.maxBufferedBytes) return;
    this.counters.slow_reader_closed++;
    this.#log.info("closing slow reader with {bytes} bytes unsent", { bytes: ws.bufferedAmount });
    ws.close(TransportClose.policy, "slow reader");
    this.#end(s, true);
  }

  /**
   * Closes the connection when its token expires, unless the engine that
   * holds it for good refreshes tokens itself. Tokens valid for longer than
   * a timer can wait are looked at again then.
   */
  #armExpiry(s: Socket): void {
    const exp = s.peer.grant?.expiresAt;
    if (exp === undefined || exp === Infinity || s.ended) return;
    const wallNow = this.#options.wallNow ?? Date.now;
    const left = exp + (this.#options.tokenSkewMs ?? 0) - wallNow();
    s.expiryTimer = setTimeout(() => {
      s.expiryTimer = undefined;
      if (s.ended || (s.chosen && s.engine?.refreshesTokens)) return;
      if (left > MAX_TIMER_MS) return this.#armExpiry(s);
      this.counters.token_expired_closed++;
      this.#log.info("closing a {engine} connection: its token expired", {
        engine: s.engine?.name ?? "new",
      });
      this.#end(s, true);
      s.close(TransportClose.policy, "token expired");
    }, Math.max(0, Math.min(left, MAX_TIMER_MS)));
  }

  #start(s: Socket, engine: Engine): void {
    s.engine = engine;
    if (s.mount.engines.length === 1) s.chosen = true;
    try {
      s.state = engine.open(s, s.peer);
    } catch (err) {
      s.ended = true;
      this.counters.internal_errors++;
      this.#log.error("internal error opening a connection: {error}", { error: String(err) });
      s.close(TransportClose.internal, "internal error");
    }
  }

  #message(s: Socket, data: string | Uint8Array): void {
    if (s.ended) return;
    if (!s.chosen) {
      // A shared path: the first message says which protocol this is. The
      // first engine has held the connection since it opened; another one
      // that claims the message takes it over.
      s.chosen = true;
      const first = s.engine!;
      if (!(first.accepts?.(data) ?? true)) {
        const other = s.mount.engines.find((e) => e !== first && (e.accepts?.(data) ?? false));
        if (other !== undefined) {
          this.#end(s);
          s.ended = false;
          this.#start(s, other);
          if (s.ended) return;
        }
      }
    }
    if (utf8Exceeds(data, this.#options.maxMessageBytes)) {
      this.#oversize(s);
      return;
    }
    this.run(s, () => s.engine!.frame(s.state, data));
  }

  /** A message over the limit: the engine may say why, then the connection closes with 1009. */
  #oversize(s: Socket): void {
    if (s.ended || s.engine === undefined) return;
    this.run(s, () => s.engine!.oversize?.(s.state));
    this.#end(s, true);
    s.close(TransportClose.tooLarge, "frame too large");
  }

  /** Tells the engine, once, that the connection is over (see {@link Engine.close}). */
  #end(s: Socket, final = false): void {
    if (s.ended) return;
    s.ended = true;
    if (s.engine === undefined) return;
    try {
      s.engine.close(s.state, final);
    } catch (err) {
      this.counters.internal_errors++;
      this.#log.error("internal error closing a connection: {error}", { error: String(err) });
    }
  }

  #closed(s: Socket): void {
    clearTimeout(s.slowTimer);
    clearTimeout(s.expiryTimer);
    clearTimeout(s.wakeTimer);
    this.#end(s);
    if (this.#sockets.delete(s) && this.#sockets.size === 0) {
      const drained = this.#onDrained;
      this.#onDrained = undefined;
      drained?.();
    }
  }
}
