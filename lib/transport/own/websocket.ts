/**
 * The server's WebSocket object: the subset of the browser and Deno
 * `WebSocket` that the signal server uses, over a connection this transport
 * owns. Its session reads into the connection's fixed buffer, decodes with
 * {@link WsDecoder}, batches outgoing frames into one write per turn, pings
 * idle peers, and cuts the connection once a close is sent and answered, or
 * after `closeTimeoutMs` whatever the peer does.
 *
 * @module
 */

import { closeQuietly, type ConnReader } from "./conn_reader.ts";
import type { TransportCounters, TransportLogger } from "./counters.ts";
import { clip, describeError } from "./http_response.ts";
import type { TimerEntry, TimerHeap } from "./timer_heap.ts";
import { closePayload, FrameBatch, isValidCloseCode, WsDecoder, type WsEvent } from "./ws_frame.ts";

/** Input a closing or failed session still reads and drops before it cuts at once. */
const LINGER_BYTES = 64 * 1024;

/** Settings of one WebSocket (the options of `upgradeWebSocket`). */
export interface SocketOptions {
  /**
   * Seconds without input before the server pings, and then without an
   * answer before it cuts the connection (0 = off). Default 30, as Deno's.
   */
  idleTimeout?: number;
  /** Largest message, fragments included, in bytes; larger fails with 1009. Default 1 MiB. */
  maxMessageBytes?: number;
  /** How long a sent close may wait for the peer's, in ms, before the cut. Default 2000. */
  closeTimeoutMs?: number;
  /** The subprotocol to accept; must be one the client offered. */
  protocol?: string;
}

/** The `readyState` values, as on `WebSocket`. */
export const ReadyState = { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 } as const;

/** A `readyState` value. */
export type ReadyStateValue = typeof ReadyState[keyof typeof ReadyState];

/** An `on…` handler property. */
export type Handler<E extends Event> = ((this: OwnWebSocket, ev: E) => unknown) | null;

const sessions = new WeakMap<OwnWebSocket, Session>();

/**
 * A server-side WebSocket, made by `upgradeWebSocket`. Event handlers are
 * the `on…` properties only. An exception thrown by a handler does not end
 * the process (as it would with Deno's socket): it is logged and the socket
 * is closed with 1011.
 */
export class OwnWebSocket {
  /** Connection not yet open. */
  static readonly CONNECTING = 0;
  /** Open: messages flow. */
  static readonly OPEN = 1;
  /** A close was sent or received; waiting for the other side. */
  static readonly CLOSING = 2;
  /** Closed. */
  static readonly CLOSED = 3;
  /** Connection not yet open. */
  readonly CONNECTING = 0;
  /** Open: messages flow. */
  readonly OPEN = 1;
  /** A close was sent or received. */
  readonly CLOSING = 2;
  /** Closed. */
  readonly CLOSED = 3;

  /** Fired once the handshake answer is queued and messages may be sent. */
  onopen: Handler<Event> = null;
  /** Fired for each message: `data` is a string, or an ArrayBuffer (or Blob) for binary. */
  onmessage: Handler<MessageEvent> = null;
  /** Fired once, when the connection is cut, whatever the reason. */
  onclose: Handler<CloseEvent> = null;
  /**
   * Fired when a message over the size limit starts to arrive, before the
   * socket sends its close (1009): the application may still `send` a last
   * word, and may `close` with its own reason.
   */
  ontoobig: (() => void) | null = null;
  /** Fired before `onclose` when the connection fails (protocol error, I/O error, timeout). */
  onerror: Handler<Event> = null;

  /** A socket in CONNECTING state; `upgradeWebSocket` makes them. */
  constructor(options: SocketOptions = {}) {
    sessions.set(this, new Session(this, options));
  }

  /** CONNECTING, OPEN, CLOSING or CLOSED. */
  get readyState(): ReadyStateValue {
    return session(this).readyState;
  }

  /** Bytes queued by `send` (frame headers included) and not yet written to the socket. */
  get bufferedAmount(): number {
    return session(this).bufferedAmount;
  }

  /** How binary messages are delivered: "arraybuffer" (default here) or "blob". */
  get binaryType(): BinaryType {
    return session(this).binaryType;
  }

  /** Sets how binary messages are delivered. */
  set binaryType(value: BinaryType) {
    if (value === "arraybuffer" || value === "blob") session(this).binaryType = value;
  }

  /** The accepted subprotocol, or "". */
  get protocol(): string {
    return session(this).protocol;
  }

  /** Negotiated extensions: always "" (none are supported). */
  get extensions(): string {
    return "";
  }

  /**
   * Queues a text (string) or binary message. Throws an InvalidStateError
   * unless the socket is OPEN, as Deno's server socket does.
   */
  send(data: string | ArrayBufferLike | ArrayBufferView): void {
    session(this).send(data);
  }

  /**
   * Starts the closing handshake; the connection is cut when the peer
   * answers or after `closeTimeoutMs`. Does nothing once closing.
   */
  close(code?: number, reason?: string): void {
    session(this).close(code, reason);
  }
}

function session(socket: OwnWebSocket): Session {
  const s = sessions.get(socket);
  if (s === undefined) throw new TypeError("not a socket made by upgradeWebSocket");
  return s;
}

/** What a session leaves in `SessionIo.rest` once it used it. */
const USED = new Uint8Array(0);

/** What a session writes while it writes nothing. */
const NOTHING_OUT: Uint8Array<ArrayBuffer> = new Uint8Array(0);

/** What a session needs from the connection it takes over. */
export interface SessionIo {
  /** The connection; the session closes it. */
  conn: Deno.Conn;
  /** Its reader (shared with the HTTP phase, same buffer). */
  reader: ConnReader;
  /** Bytes the client sent after its upgrade request. */
  rest: Uint8Array;
  /** The 101 answer as a byte string (one char per byte), written before the first frame. */
  head: string;
  /** Counters to update. */
  counters: TransportCounters;
  /** Where to log. */
  log: TransportLogger;
  /** The server's timeouts (idle ping, close). */
  timers: TimerHeap;
}

/**
 * Takes over `io.conn` for `socket`: writes the 101 answer, opens the
 * socket and runs it. Resolves once the connection is cut and all its I/O
 * has settled.
 */
export function runSession(socket: OwnWebSocket, io: SessionIo): Promise<void> {
  return session(socket).run(io);
}

/** A socket whose upgrade never happened (the handler answered otherwise): it closes with 1006. */
export function abandonSession(socket: OwnWebSocket): void {
  session(socket).abandon();
}

class Session {
  readonly #socket: OwnWebSocket;
  readonly #idleMs: number;
  readonly #maxMessage: number | undefined;
  readonly #closeTimeoutMs: number;
  readonly protocol: string;
  readyState: ReadyStateValue = ReadyState.CONNECTING;
  binaryType: BinaryType = "arraybuffer";
  #io: SessionIo | undefined;
  readonly #batch = new FrameBatch();
  #inflight = 0;
  /** A write is under way: from waiting for its turn to its last byte written. */
  #writing = false;
  /** The batch being written, and how much of it is written. */
  #out: Uint8Array<ArrayBuffer> = NOTHING_OUT;
  #off = 0;
  /** Called once the write under way is done (the session's end waits for it). */
  #writeIdle: (() => void) | undefined;
  #flushQueued = false;
  // The write path is callbacks bound once, not an async function: an
  // async frame and its promises per flush were the largest item of a
  // join storm's garbage after the handshake.
  readonly #flushNow = () => {
    this.#flushQueued = false;
    if (!this.#writing && this.#batch.byteLength > 0 && !this.#ended) {
      this.#writing = true;
      this.#nextWrite();
    }
  };
  readonly #writeBatch = () => {
    try {
      if (this.#ended) return this.#writeDone();
      const io = this.#io!;
      // The batch is taken once the turn comes, so what was queued while
      // waiting goes in the same write.
      this.#out = this.#batch.take();
      this.#off = 0;
      this.#inflight = this.#out.length;
      // The 101 (and what came with it) was the handshake's last write.
      io.reader.takeTurns();
      io.conn.write(this.#out).then(this.#onWritten, this.#onWriteFailed);
    } catch (e) {
      this.#writeCrashed(e);
    }
  };
  readonly #writeRest = () => {
    try {
      this.#io!.conn.write(this.#out.subarray(this.#off)).then(
        this.#onWritten,
        this.#onWriteFailed,
      );
    } catch (e) {
      this.#writeCrashed(e);
    }
  };
  readonly #onWritten = (n: number) => {
    try {
      this.#off += n;
      this.#inflight -= n;
      if (this.#off < this.#out.length) {
        const reader = this.#io!.reader;
        if (reader.acquire()) this.#writeRest();
        else reader.waitTurnThen(this.#writeRest);
        return;
      }
      this.#batch.recycle(this.#out);
      this.#out = NOTHING_OUT;
      this.#nextWrite();
    } catch (e) {
      this.#writeCrashed(e);
    }
  };
  readonly #onWriteFailed = (e: unknown) => {
    try {
      this.#out = NOTHING_OUT;
      if (!this.#ended) {
        this.#fireError(`write failed: ${clip(e)}`);
        this.#cut(1006, "", false);
      }
      this.#writeDone();
    } catch (e2) {
      this.#writeCrashed(e2);
    }
  };
  #closeSent = false;
  /** The peer sent its close: nothing more is to come from it. */
  #peerClosed = false;
  /** Cut the connection as soon as the queue is written (our close answered theirs, or a failure). */
  #cutAfterFlush = false;
  #ended = false;
  /** How the socket ends when it is cut after the flush. */
  #end: { code: number; reason: string; wasClean: boolean } | undefined;
  /** A close asked for while CONNECTING, sent right after the 101. */
  #earlyClose: { code?: number; reason?: string } | undefined;
  #lastInput = 0;
  #pingSentAt = -1;
  readonly #idleTimer: TimerEntry = { deadline: 0, slot: -1, fire: () => this.#idleCheck() };
  readonly #closeTimer: TimerEntry = { deadline: 0, slot: -1, fire: () => this.#closeExpired() };
  #cutResolve: (() => void) | undefined;
  readonly #cutDone: Promise<void> = new Promise((r) => (this.#cutResolve = r));

  constructor(socket: OwnWebSocket, options: SocketOptions) {
    this.#socket = socket;
    this.#idleMs = (options.idleTimeout ?? 30) * 1000;
    this.#maxMessage = options.maxMessageBytes;
    this.#closeTimeoutMs = options.closeTimeoutMs ?? 2000;
    this.protocol = options.protocol ?? "";
  }

  get bufferedAmount(): number {
    return this.#batch.byteLength + this.#inflight;
  }

  send(data: string | ArrayBufferLike | ArrayBufferView): void {
    if (this.readyState !== ReadyState.OPEN) {
      throw new DOMException("readyState not OPEN", "InvalidStateError");
    }
    if (typeof data === "string") this.#batch.text(data);
    else if (ArrayBuffer.isView(data)) {
      this.#batch.binary(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    } else if (data instanceof ArrayBuffer || data instanceof SharedArrayBuffer) {
      this.#batch.binary(new Uint8Array(data));
    } else {
      throw new TypeError("send takes a string, an ArrayBuffer or a view");
    }
    this.#queueFlush();
  }

  close(code?: number, reason?: string): void {
    // Unlike a browser, a server may send the registered codes (1001, 1008, 1011…).
    if (code !== undefined && !isValidCloseCode(code)) {
      throw new DOMException(`close code ${code} may not be sent`, "InvalidAccessError");
    }
    try {
      closePayload(code, reason); // validates the reason's length
    } catch (e) {
      throw new DOMException((e as Error).message, "SyntaxError");
    }
    if (this.readyState === ReadyState.CONNECTING) {
      this.#earlyClose = { code, reason };
      this.readyState = ReadyState.CLOSING;
      return;
    }
    if (this.readyState !== ReadyState.OPEN) return;
    this.readyState = ReadyState.CLOSING;
    this.#sendClose(code, reason);
  }

  abandon(): void {
    if (this.#ended) return;
    this.#ended = true;
    this.readyState = ReadyState.CLOSED;
    this.#fire("onclose", new CloseEvent("close", { code: 1006, reason: "", wasClean: false }));
  }

  async run(io: SessionIo): Promise<void> {
    if (this.#ended) {
      closeQuietly(io.conn);
      return;
    }
    this.#io = io;
    io.counters.wsOpened++;
    this.#lastInput = performance.now();
    this.#batch.rawText(io.head);
    let chunk: Uint8Array | null = io.rest;
    // Both are used once: the session keeps `io` for its whole life.
    io.head = "";
    io.rest = USED;
    if (this.#earlyClose !== undefined) {
      this.#sendClose(this.#earlyClose.code, this.#earlyClose.reason);
    } else {
      this.readyState = ReadyState.OPEN;
      this.#queueFlush();
      this.#fire("onopen", new Event("open"));
    }
    if (this.#idleMs > 0) this.#armIdle(this.#idleMs);
    const decoder = new WsDecoder({ maxMessageBytes: this.#maxMessage });
    let dropped = 0;
    while (!this.#ended) {
      if (chunk.length > 0) {
        this.#lastInput = performance.now();
        this.#pingSentAt = -1;
        for (const ev of decoder.feed(chunk)) {
          this.#handle(ev);
          if (this.#ended) break;
        }
      }
      // After the peer's close nothing more is read: it may send nothing
      // after it (RFC 6455 §5.5.1), and a read still pending when our echo
      // is written and the connection cut would fail and build an error
      // object, for every connection that ends normally.
      if (this.#ended || this.#peerClosed) break;
      chunk = await io.reader.read();
      // After a close or a failure, what else the peer sends is read and
      // dropped until it closes or the close timer cuts: closing a socket
      // with unread input sends a reset, which can destroy our close frame
      // (and the last words before it) on its way to the peer. A peer that
      // keeps sending past LINGER_BYTES is cut at once.
      if (chunk !== null && decoder.done) {
        dropped += chunk.length;
        chunk = new Uint8Array(0);
        if (dropped > LINGER_BYTES) {
          const e = this.#end ?? { code: 1006, reason: "", wasClean: false };
          this.#cut(e.code, e.reason, false);
          break;
        }
      }
      if (chunk === null) {
        if (!this.#ended) {
          const err = io.reader.error;
          if (err !== undefined && !this.#ended) this.#fireError(`read failed: ${clip(err)}`);
          // A failed session reports the code it failed with.
          const e = this.#end ?? { code: 1006, reason: "", wasClean: false };
          this.#cut(e.code, e.reason, false);
        }
        break;
      }
    }
    // Wait until the connection is cut and the last write has settled, so
    // no I/O outlives the session.
    await this.#cutDone;
    if (this.#writing) await new Promise<void>((resolve) => (this.#writeIdle = resolve));
  }

  #handle(ev: WsEvent): void {
    switch (ev.type) {
      case "text":
      case "binary": {
        if (this.readyState !== ReadyState.OPEN) return;
        let data: string | ArrayBuffer | Blob;
        if (ev.type === "text") data = ev.data;
        else if (this.binaryType === "blob") data = new Blob([ev.data]);
        else data = ev.data.buffer;
        this.#fire("onmessage", new MessageEvent("message", { data }));
        return;
      }
      case "ping":
        if (!this.#closeSent) {
          this.#batch.pong(ev.data);
          this.#queueFlush();
        }
        return;
      case "pong":
        return;
      case "close": {
        if (this.#closeSent) {
          // The answer to our close: the handshake is complete.
          this.#cut(ev.code, ev.reason, true);
          return;
        }
        this.readyState = ReadyState.CLOSING;
        this.#end = { code: ev.code, reason: ev.reason, wasClean: true };
        this.#peerClosed = true;
        this.#cutAfterFlush = true;
        // Echo the peer's code and reason, as browsers and Deno do.
        this.#sendClose(ev.code === 1005 ? undefined : ev.code, ev.reason);
        return;
      }
      case "fail": {
        const c = this.#io!.counters;
        if (ev.code === 1002) c.wsProtocolErrors++;
        else if (ev.code === 1007) c.wsInvalidData++;
        else c.wsTooBig++;
        this.#io!.log.debug("websocket failed with {code}: {reason}", {
          code: ev.code,
          reason: ev.reason,
        });
        const tooBig = this.#socket.ontoobig;
        if (ev.code === 1009 && typeof tooBig === "function" && !this.#closeSent) {
          try {
            tooBig.call(this.#socket);
          } catch (e) {
            this.#io!.log.error("ontoobig failed: {error}", { error: clip(e) });
          }
        }
        this.#fireError(ev.reason);
        if (this.#ended) return;
        this.readyState = ReadyState.CLOSING;
        this.#end = { code: ev.code, reason: ev.reason, wasClean: false };
        // No cut right after the flush: the peer may still be sending (the
        // rest of an oversize frame), and a close with unread input resets
        // the connection, losing the close frame. Input is drained until the
        // peer closes, or the close timer cuts.
        if (!this.#closeSent) this.#sendClose(ev.code, ev.reason);
        else this.#queueFlush();
        return;
      }
    }
  }

  #sendClose(code: number | undefined, reason: string | undefined): void {
    this.#closeSent = true;
    this.#batch.close(code, reason);
    this.#queueFlush();
    // Whatever the peer does, the connection is cut by then.
    const timers = this.#io!.timers;
    if (!timers.armed(this.#closeTimer)) timers.set(this.#closeTimer, this.#closeTimeoutMs);
  }

  #closeExpired(): void {
    if (this.#ended) return;
    this.#io!.counters.wsCloseTimeouts++;
    this.#cut(this.#end?.code ?? 1006, this.#end?.reason ?? "", false);
  }

  #queueFlush(): void {
    if (this.#flushQueued || this.#writing || this.#io === undefined) return;
    this.#flushQueued = true;
    // One write for everything queued in this turn.
    queueMicrotask(this.#flushNow);
  }

  /**
   * Writes the next batch, or ends the write when nothing is queued. Writes
   * take turns with reads: a write's completion spends the runtime's I/O
   * budget too, and unlimited ones starved sockets.
   */
  #nextWrite(): void {
    if (this.#ended || this.#batch.byteLength === 0) return this.#writeDone();
    const reader = this.#io!.reader;
    if (reader.acquire()) this.#writeBatch();
    else reader.waitTurnThen(this.#writeBatch);
  }

  #writeDone(): void {
    this.#inflight = 0;
    this.#writing = false;
    this.#out = NOTHING_OUT;
    const idle = this.#writeIdle;
    this.#writeIdle = undefined;
    idle?.();
    if (this.#cutAfterFlush && !this.#ended) {
      const e = this.#end ?? { code: 1006, reason: "", wasClean: false };
      this.#cut(e.code, e.reason, e.wasClean);
    }
  }

  /** A bug in the write path costs this socket, never the process or the other sockets. */
  #writeCrashed(e: unknown): void {
    this.#io?.log.error("websocket write failed: {error}", { error: describeError(e) });
    if (!this.#ended) this.#cut(1011, "", false);
    if (this.#writing) {
      this.#cutAfterFlush = false;
      this.#writeDone();
    }
  }

  #armIdle(ms: number): void {
    this.#io!.timers.set(this.#idleTimer, Math.max(1, ms));
  }

  #idleCheck(): void {
    if (this.#ended) return;
    const now = performance.now();
    if (this.#pingSentAt >= 0) {
      const waited = now - this.#pingSentAt;
      if (waited >= this.#idleMs) {
        this.#io!.counters.wsPingTimeouts++;
        this.#fireError("no answer to ping");
        if (this.#ended) return;
        // Say why (1001, as Deno does), then cut once that is written, or by
        // the close timer: the peer is not expected to answer.
        this.readyState = ReadyState.CLOSING;
        this.#end = { code: 1006, reason: "", wasClean: false };
        this.#cutAfterFlush = true;
        if (!this.#closeSent) this.#sendClose(1001, "idle timeout");
        else this.#queueFlush();
        return;
      }
      this.#armIdle(this.#idleMs - waited);
      return;
    }
    const quiet = now - this.#lastInput;
    if (quiet < this.#idleMs) {
      // Input arrived since the timer was set: look again when it would be due.
      this.#armIdle(this.#idleMs - quiet);
      return;
    }
    if (this.readyState === ReadyState.OPEN || this.readyState === ReadyState.CLOSING) {
      this.#pingSentAt = now;
      this.#batch.ping();
      this.#queueFlush();
    }
    this.#armIdle(this.#idleMs);
  }

  /** Ends the socket now: closes the connection, drops unsent data, fires close once. */
  #cut(code: number, reason: string, wasClean: boolean): void {
    if (this.#ended) return;
    this.#ended = true;
    this.readyState = ReadyState.CLOSED;
    const io = this.#io!;
    io.timers.clear(this.#idleTimer);
    io.timers.clear(this.#closeTimer);
    this.#batch.clear();
    closeQuietly(io.conn);
    io.counters.wsClosed++;
    this.#cutResolve!();
    this.#fire("onclose", new CloseEvent("close", { code, reason, wasClean }));
  }

  #fireError(message: string): void {
    this.#fire("onerror", new ErrorEvent("error", { message }));
  }

  #fire(name: "onopen" | "onmessage" | "onclose" | "onerror", ev: Event): void {
    const handler = this.#socket[name] as Handler<Event>;
    if (handler === null || typeof handler !== "function") return;
    try {
      handler.call(this.#socket, ev);
    } catch (e) {
      const io = this.#io;
      if (io === undefined) return;
      io.counters.wsHandlerErrors++;
      io.log.error("websocket {event} handler threw: {error}", {
        event: name,
        error: describeError(e),
      });
      if (name !== "onclose" && !this.#ended && this.readyState === ReadyState.OPEN) {
        this.readyState = ReadyState.CLOSING;
        this.#sendClose(1011, "internal error");
      }
    }
  }
}
