/**
 * One HTTP/1.1 connection: reads request heads under a deadline, builds a
 * `Request`, calls the handler, writes the `Response` (length or chunked),
 * keeps the connection alive for sequential and pipelined requests, and
 * hands it to a WebSocket session when the handler upgrades.
 *
 * Each connection has one timer whose meaning follows its phase: waiting
 * idle for the next request, reading a head, writing an answer, lingering
 * before the close. Whatever the phase, the connection ends when it fires.
 *
 * @module
 */

import type { Admission } from "./admission.ts";
import { clientAddress, isTrusted } from "./client_address.ts";
import { closeQuietly, ConnReader, writeAll } from "./conn_reader.ts";
import type { TransportCounters, TransportLogger } from "./counters.ts";
import { headerValue, type ParserLimits, type RequestHead, RequestParser } from "./http1.ts";
import {
  chunk,
  clip,
  describeError,
  type Framing,
  headerEntries,
  LAST_CHUNK,
  plainResponse,
  responseHead,
  responseHeadText,
} from "./http_response.ts";
import type { ServeHandler, Settings } from "./options.ts";
import type { ReadScheduler } from "./read_scheduler.ts";
import type { TimerEntry, TimerHeap } from "./timer_heap.ts";
import {
  registerRequest,
  type RequestOrigin,
  responseFields,
  UpgradeError,
  upgradeFor,
} from "./upgrade.ts";
import { abandonSession, runSession } from "./websocket.ts";

/** What every connection of one server shares. */
export interface ConnEnv {
  /** The server's settings. */
  settings: Settings;
  /** Its counters. */
  counters: TransportCounters;
  /** Its logger. */
  log: TransportLogger;
  /** The head parser's limits, resolved once (a parser per connection copies them). */
  parserLimits: ParserLimits;
  /** Its read turns. */
  scheduler: ReadScheduler;
  /** Its connections' timeouts. */
  timers: TimerHeap;
  /** Its connection caps. */
  admission: Admission;
  /** The application. */
  handler: ServeHandler;
  /** "http" or "https". */
  scheme: "http" | "https";
  /** `host:port` for requests without a Host field (HTTP/1.0). */
  fallbackHost: string;
  /** True once the server is shutting down. */
  stopping(): boolean;
  /** The current `date` field value. */
  date(): string;
}

type Phase = "idle" | "head" | "busy" | "writing" | "linger" | "websocket";

/** Methods `Request` refuses to carry. */
const FORBIDDEN_METHODS = new Set(["CONNECT", "TRACE", "TRACK"]);

const HOST = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+)(:\d{1,5})?$/;

const TEXT = { "content-type": "text/plain; charset=utf-8" };

/**
 * Serves one accepted connection until it ends. `done` settles once the
 * connection is closed and none of its I/O is pending.
 */
export class HttpConnection {
  /** Settles when the connection has ended. */
  readonly done: Promise<void>;
  readonly #env: ConnEnv;
  readonly #conn: Deno.Conn;
  readonly #reader: ConnReader;
  readonly #peer: Deno.NetAddr;
  #address: string | undefined;
  #phase: Phase = "head";
  /** The one timeout, whatever the phase (see the module doc). */
  readonly #timer: TimerEntry = { deadline: 0, slot: -1, fire: () => this.#expire() };
  #closed = false;
  /** The WebSocket session, once the connection was upgraded; settles when it ends. */
  #session: Promise<void> | undefined;
  /** No byte of a next request has arrived (a shutdown may close the connection now). */
  #quiet = true;

  /**
   * Starts serving `conn`, counted in the caps under `address` (undefined
   * for a trusted proxy until a request names its client).
   */
  constructor(env: ConnEnv, conn: Deno.Conn, address: string | undefined) {
    this.#env = env;
    this.#conn = conn;
    this.#peer = conn.remoteAddr as Deno.NetAddr;
    this.#address = address;
    this.#reader = new ConnReader(conn, env.settings.readBufferBytes, env.scheduler);
    this.done = this.#run();
  }

  /** Closes the connection now, whatever it is doing. */
  cut(): void {
    this.#env.timers.clear(this.#timer);
    if (this.#closed) return;
    this.#closed = true;
    closeQuietly(this.#conn);
  }

  /** The server is stopping: an idle connection closes now, a busy one after its answer. */
  stop(): void {
    if ((this.#phase === "idle" || this.#phase === "head") && this.#quiet) this.cut();
  }

  async #run(): Promise<void> {
    try {
      await this.#serve();
      // An upgraded connection runs on here, in a frame that holds none of
      // the handshake (request, response, parser): a suspended async
      // function keeps every local alive, and each connection's handshake
      // objects would live as long as it does.
      if (this.#session !== undefined) await this.#session;
    } catch (e) {
      this.#env.log.error("connection failed: {error}", { error: describeError(e) });
    } finally {
      this.cut();
      this.#env.admission.release(this.#address);
      this.#reader.release();
    }
  }

  #arm(ms: number): void {
    this.#env.timers.set(this.#timer, ms);
  }

  #disarm(): void {
    this.#env.timers.clear(this.#timer);
  }

  #expire(): void {
    const c = this.#env.counters;
    switch (this.#phase) {
      case "idle":
        c.idleTimeouts++;
        break;
      case "head": {
        c.headerTimeouts++;
        // Best effort: the 408 is tiny and goes out with the close.
        this.#conn.write(plainResponse(408, "request head timed out\n")).then(
          () => this.cut(),
          () => this.cut(),
        );
        this.#phase = "linger";
        this.#arm(this.#env.settings.lingerMs);
        return;
      }
      case "writing":
        c.writeTimeouts++;
        break;
    }
    this.cut();
  }

  async #serve(): Promise<void> {
    const env = this.#env;
    const s = env.settings;
    const parser = new RequestParser(env.parserLimits);
    this.#phase = "head";
    this.#arm(s.headerTimeoutMs);
    for (;;) {
      let r = parser.next();
      this.#quiet = parser.idle;
      while (r.kind === "more") {
        if (this.#phase === "idle" && !parser.idle) {
          this.#phase = "head";
          this.#arm(s.headerTimeoutMs);
        }
        const bytes = await this.#reader.read();
        if (bytes === null || this.#closed) return;
        parser.push(bytes);
        this.#quiet = false;
        r = parser.next();
      }
      this.#quiet = false;
      this.#disarm();
      this.#phase = "busy";
      if (r.kind === "error") {
        env.counters.badRequests++;
        env.counters.requests++;
        env.log.debug("bad request from {peer}: {status} {reason}", {
          peer: this.#peer.hostname,
          status: r.status,
          reason: r.reason,
        });
        await this.#answerAndClose(plainResponse(r.status, `${r.reason}\n`));
        return;
      }
      const keepAlive = await this.#request(r.head, parser);
      if (!keepAlive || this.#closed) return;
      if (env.stopping()) return;
      // Only a connection's first request is read without waiting a turn.
      this.#reader.takeTurns();
      this.#phase = "idle";
      this.#arm(s.keepAliveTimeoutMs);
    }
  }

  /** Serves one request; returns whether the connection may carry another. */
  async #request(head: RequestHead, parser: RequestParser): Promise<boolean> {
    const env = this.#env;
    env.counters.requests++;
    const trust = env.settings.trustProxy;
    // Every request through a trusted proxy names its client: a proxy's
    // kept-alive connection carries requests of many clients in turn.
    if (trust !== undefined && isTrusted(this.#peer.hostname, trust)) {
      const named = headerValue(head.headers, trust.header.toLowerCase());
      if (!await this.#moveTo(clientAddress(this.#peer.hostname, named, trust))) return false;
    }
    const request = this.#makeRequest(head);
    if (request instanceof Uint8Array) {
      env.counters.badRequests++;
      await this.#answerAndClose(request);
      return false;
    }
    const origin: RequestOrigin = {
      minor: head.minor,
      socketDefaults: {
        maxMessageBytes: env.settings.webSocket.maxMessageBytes,
        closeTimeoutMs: env.settings.webSocket.closeTimeoutMs,
      },
    };
    registerRequest(request, origin);
    const response = await this.#callHandler(request);
    if (this.#closed) {
      if (origin.socket !== undefined) abandonSession(origin.socket);
      return false;
    }
    const socket = upgradeFor(request, response);
    if (socket !== undefined) {
      this.#session = this.#upgrade(socket, response, parser.takeRest());
      return false;
    }
    if (origin.socket !== undefined) abandonSession(origin.socket);
    const close = !head.keepAlive || env.stopping() ||
      /(^|,)\s*close\s*(,|$)/i.test(response.headers.get("connection") ?? "");
    const ok = await this.#respond(response, request.method === "HEAD", close, head.minor);
    if (!ok) return false;
    if (close) {
      await this.#linger();
      return false;
    }
    return true;
  }

  /**
   * Counts this proxied connection under the client's address; answers 503
   * and returns false when that address is at its cap.
   */
  async #moveTo(address: string): Promise<boolean> {
    const env = this.#env;
    if (env.admission.move(this.#address, address) === undefined) {
      this.#address = address;
      return true;
    }
    env.counters.refusedAddress++;
    await this.#answerAndClose(
      plainResponse(503, "too many connections from your address\n", [
        ["retry-after", String(env.settings.retryAfterSeconds)],
      ]),
    );
    return false;
  }

  /** The `Request` for `head`, or the bytes of the error answer. */
  #makeRequest(head: RequestHead): Request | Uint8Array {
    const env = this.#env;
    if (FORBIDDEN_METHODS.has(head.method.toUpperCase())) {
      return plainResponse(501, "method not implemented\n");
    }
    let url: string;
    const t = head.target;
    if (t.startsWith("/")) {
      const host = headerValue(head.headers, "host") ?? env.fallbackHost;
      if (!HOST.test(host)) return plainResponse(400, "malformed Host\n");
      url = `${env.scheme}://${host}${t}`;
    } else if (/^https?:\/\//i.test(t)) {
      url = t;
    } else {
      return plainResponse(400, "unsupported request target form\n");
    }
    try {
      const headers = fieldRecord(head.headers) as HeadersInit;
      return new Request(url, { method: head.method, headers });
    } catch {
      return plainResponse(400, "malformed request\n");
    }
  }

  async #callHandler(request: Request): Promise<Response> {
    const env = this.#env;
    try {
      const res = await env.handler(request, {
        remoteAddr: this.#peer,
        clientAddress: this.#address ?? this.#peer.hostname,
      });
      if (!(res instanceof Response)) throw new TypeError("the handler did not return a Response");
      return res;
    } catch (e) {
      if (e instanceof UpgradeError) {
        env.counters.upgradeRefused++;
        env.log.debug("upgrade refused: {reason}", { reason: e.message });
        return e.response();
      }
      env.counters.handlerErrors++;
      const onError = env.settings.onError;
      try {
        if (onError !== undefined) {
          const res = await onError(e);
          if (res instanceof Response) return res;
        } else {
          env.log.error("request handler failed: {error}", { error: describeError(e) });
        }
      } catch (e2) {
        env.log.error("onError failed: {error}", { error: describeError(e2) });
      }
      return new Response("internal error\n", { status: 500, headers: TEXT });
    }
  }

  /** Starts the WebSocket session; the promise settles when it ends. */
  #upgrade(
    socket: Parameters<typeof runSession>[0],
    response: Response,
    rest: Uint8Array,
  ): Promise<void> {
    const head = responseHeadText({
      status: 101,
      headers: responseFields(response),
      framing: { kind: "none" },
      close: false,
      extra: [["upgrade", "websocket"], ["connection", "Upgrade"]],
    });
    this.#phase = "websocket";
    this.#disarm();
    return runSession(socket, {
      conn: this.#conn,
      reader: this.#reader,
      rest,
      head,
      counters: this.#env.counters,
      log: this.#env.log,
      timers: this.#env.timers,
    }).finally(() => {
      this.#closed = true;
    });
  }

  /** Writes `response`; returns false when the connection broke meanwhile. */
  async #respond(
    response: Response,
    isHead: boolean,
    close: boolean,
    minor: 0 | 1,
  ): Promise<boolean> {
    const status = response.status;
    const headers = headerEntries(response.headers);
    const base = {
      status,
      statusText: response.statusText,
      headers,
      close,
      date: this.#env.date(),
      // An HTTP/1.0 client assumes a close unless told otherwise.
      extra: minor === 0 && !close ? [["connection", "keep-alive"]] as [string, string][] : [],
    };
    const body = response.body;
    if (isHead || status === 204 || status === 304 || body === null) {
      if (body !== null) body.cancel().catch(() => {});
      let framing: Framing = { kind: "length", length: 0 };
      if (status === 204 || status === 304) framing = { kind: "none" };
      else if (isHead) {
        // A HEAD answer announces the GET's length when the application set it.
        const cl = response.headers.get("content-length");
        if (cl !== null && /^\d{1,15}$/.test(cl)) framing = { kind: "length", length: Number(cl) };
        else if (body !== null) framing = { kind: "none" };
      }
      return await this.#write(responseHead({ ...base, framing }));
    }
    const reader = body.getReader();
    try {
      const first = await reader.read();
      if (first.done) {
        return await this.#write(responseHead({ ...base, framing: { kind: "length", length: 0 } }));
      }
      // A body made from a string or bytes is all there at once: a length
      // can be sent. A real stream goes chunked (or close-delimited for 1.0).
      const secondRead = reader.read();
      const second = await settledNow(secondRead);
      if (second !== undefined && second.done) {
        const head = responseHead({
          ...base,
          framing: { kind: "length", length: first.value.length },
        });
        return await this.#write(concat(head, first.value));
      }
      const chunked = minor === 1;
      const head = responseHead({
        ...base,
        extra: [],
        close: close || !chunked,
        framing: chunked ? { kind: "chunked" } : { kind: "none" },
      });
      const frame = (b: Uint8Array) => (chunked ? chunk(b) : b);
      if (!await this.#write(concat(head, frame(first.value)))) return false;
      let next = second ?? await secondRead;
      while (!next.done) {
        if (next.value.length > 0 && !await this.#write(frame(next.value))) return false;
        next = await reader.read();
      }
      if (!chunked) {
        await this.#linger();
        return false;
      }
      return await this.#write(LAST_CHUNK);
    } catch (e) {
      // The body stream failed midway: the answer cannot be completed.
      this.#env.log.warn("response body failed: {error}", { error: clip(e, 500) });
      reader.cancel().catch(() => {});
      this.cut();
      return false;
    }
  }

  /** Writes `bytes` under the write deadline; false when the connection broke. */
  async #write(bytes: Uint8Array): Promise<boolean> {
    if (this.#closed) return false;
    const previous = this.#phase;
    this.#phase = "writing";
    this.#arm(this.#env.settings.writeTimeoutMs);
    try {
      await writeAll(this.#conn, bytes);
      return true;
    } catch {
      this.cut();
      return false;
    } finally {
      this.#disarm();
      if (this.#phase === "writing") this.#phase = previous;
    }
  }

  /** Sends a complete answer, then closes after a short linger. */
  async #answerAndClose(bytes: Uint8Array): Promise<void> {
    if (await this.#write(bytes)) await this.#linger();
  }

  /**
   * Closes gracefully: ends our side, then drains what the client still
   * sends for a moment, so the kernel does not reset the connection (and
   * destroy our last answer) because of unread input.
   */
  async #linger(): Promise<void> {
    if (this.#closed) return;
    try {
      await this.#conn.closeWrite();
    } catch {
      this.cut();
      return;
    }
    this.#phase = "linger";
    this.#arm(this.#env.settings.lingerMs);
    let drained = 0;
    while (!this.#closed && drained < 64 * 1024) {
      const bytes = await this.#reader.read();
      if (bytes === null) break;
      drained += bytes.length;
    }
    this.cut();
  }
}

/**
 * The fields as a record, repeated ones combined as RFC 9110 §5.3 does (with
 * ", "; `cookie` with "; ", RFC 9113 §8.2.3). A record converts into the
 * request's `Headers` about a fifth faster than a list of pairs, which goes
 * through the iterator protocol twice per field. A plain object keeps fast
 * properties (one without a prototype is a dictionary from the start); a
 * field named `__proto__` would set its prototype instead, so a request
 * with one goes in as a list, combined the same way.
 */
function fieldRecord(
  fields: readonly [string, string][],
): Record<string, string> | [string, string][] {
  const r: Record<string, string> = {};
  for (const [n, v] of fields) {
    if (n === "__proto__") return combined(fields);
    const prev = Object.hasOwn(r, n) ? r[n] : undefined;
    r[n] = prev === undefined ? v : joinField(n, prev, v);
  }
  return r;
}

function combined(fields: readonly [string, string][]): [string, string][] {
  const m = new Map<string, string>();
  for (const [n, v] of fields) {
    const prev = m.get(n);
    m.set(n, prev === undefined ? v : joinField(n, prev, v));
  }
  return [...m];
}

function joinField(name: string, a: string, b: string): string {
  return `${a}${name === "cookie" ? "; " : ", "}${b}`;
}

/** The promise's result if it settles before the next macrotask, else undefined. */
async function settledNow<T>(p: Promise<T>): Promise<T | undefined> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const later = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), 0);
  });
  try {
    return await Promise.race([p, later]);
  } finally {
    clearTimeout(timer);
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/**
 * Answers a refused connection with 503 and `Retry-After`, without reading
 * its request, then lingers briefly so the answer is not lost to a reset.
 * Resolves once the connection is closed.
 */
export async function refuseConnection(
  conn: Deno.Conn,
  retryAfterSeconds: number,
  lingerMs: number,
  scheduler: ReadScheduler,
): Promise<void> {
  const timer = setTimeout(() => closeQuietly(conn), lingerMs);
  try {
    await writeAll(
      conn,
      plainResponse(503, "server busy, retry later\n", [[
        "retry-after",
        String(retryAfterSeconds),
      ]]),
    );
    await conn.closeWrite();
    const reader = new ConnReader(conn, 4096, scheduler);
    let drained = 0;
    while (drained < 64 * 1024) {
      const bytes = await reader.read();
      if (bytes === null) break;
      drained += bytes.length;
    }
  } catch {
    // The client left first: nothing to answer.
  } finally {
    clearTimeout(timer);
    closeQuietly(conn);
  }
}
