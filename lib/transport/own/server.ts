/**
 * Our own HTTP/1.1 and WebSocket transport on `Deno.listen` /
 * `Deno.listenTls`: {@link serve} and {@link upgradeWebSocket} take the place
 * of `Deno.serve` and `Deno.upgradeWebSocket`, with the controls those lack.
 *
 * What it guarantees:
 *
 * - **Accepting never ends the server.** A failing `accept()` (EMFILE, …) is
 *   counted, logged at most once per `logIntervalMs`, and retried after a
 *   pause doubling from 10 ms to 1 s; the server resumes once descriptors are
 *   free. `finished` only settles through `shutdown()` (or the listener being
 *   closed under it), and never rejects.
 * - **Caps.** At most `maxConnections` connections, and
 *   `maxConnectionsPerAddress` per client address (the TCP peer, or what a
 *   `trustProxy` header names, for connections from the listed proxies).
 *   Past a cap a connection gets `503` with `Retry-After`, without its
 *   request being read, and is closed after a short linger; when more than
 *   `maxRefusing` refusals are being answered, refused connections are
 *   closed without a word. Refusals are counted by reason.
 * - **Timeouts.** A request head must be complete within `headerTimeoutMs`
 *   (default 5 s) of the connection or of its first byte (slowloris), or
 *   the connection gets 408 and is closed. Idle keep-alive connections close
 *   after `keepAliveTimeoutMs`; a response write that stalls for
 *   `writeTimeoutMs` cuts the connection. Every connection's timeouts (and
 *   its WebSocket's idle ping and close) share one runtime timer, through a
 *   heap of deadlines (`timer_heap.ts`).
 * - **Limits.** Request head ≤ 16 KiB and ≤ 100 header lines (431), target
 *   ≤ 8 KiB (414), versions other than 1.x (505), any malformed head (400):
 *   never a 500, and never an exception. Bodies up to 64 KiB with a
 *   `Content-Length` are read and discarded; larger ones get 413, and a
 *   `Transfer-Encoding` gets 411. WebSocket messages are limited as a whole
 *   (fragments included) to `maxMessageBytes`, checked at each frame header
 *   before any payload is kept: a frame declaring 60 MiB costs nothing.
 * - **Memory per connection is fixed** while reading: one read buffer
 *   (`readBufferBytes`, 4 KiB), a request head, and at most one message in
 *   progress. What a client sends is never logged beyond ~100 characters.
 * - **Close means cut.** After the server sends a close frame, the TCP
 *   connection is closed when the peer answers, or after `closeTimeoutMs`
 *   (2 s) whatever it does; unsent data is dropped; `onclose` fires exactly
 *   once. A peer that vanishes, fails the protocol (1002, 1007, 1009) or
 *   does not answer an idle ping within `idleTimeout` is cut the same way.
 * - **Writes** are queued per socket and flushed with one `conn.write` per
 *   turn for everything queued in that turn; `bufferedAmount` is the bytes
 *   queued and not yet written.
 * - **Fair reads.** In Deno, a read that finds data waiting completes at
 *   once and spends the runtime's per-turn I/O budget (Tokio's cooperative
 *   budget, 128 polls); re-arming every read at once lets the same ~128
 *   sockets win every turn. Measured on this machine with 1,000 loopback
 *   sockets each kept backlogged by a sender: plain `conn.read` loops read
 *   128 sockets and starved 872 for the whole run (Jain index 0.13, and only
 *   ~20–50 MB/s in all, the runtime spinning); setImmediate or setTimeout
 *   between reads did not help. Here at most `readsPerTurn` (4) reads and
 *   writes start at once per event-loop turn and the rest queue FIFO for the
 *   next turns: in the same test every socket was read every second (Jain
 *   0.98–1.0, ~100–120 MB/s). Under the server's own load, 16 a turn still
 *   left reads pending in the runtime for seconds once the process was
 *   saturated (a read started on a socket with data waiting took up to 7 s
 *   to complete; P=500 longest wait 3–6 s, Jain 0.42–0.86), while 8, 4 and 2
 *   brought every wait under about 1 s at the same throughput (4: 0.4–1.0
 *   s). The cost is that beyond 4 a turn, reads wait their turn by one
 *   `setImmediate` hop; `readsPerTurn: 0` turns it off. A connection's
 *   first request head and its answer (the 101 of an upgrade) go at once:
 *   a handshake is one read and one write, and queued behind sockets that
 *   keep sending it made a join storm of 2,000 clients ~10 % slower.
 * - **TLS** goes through the same code (`Deno.listenTls`, ALPN http/1.1);
 *   the handshake counts against the header timeout.
 * - **Graceful shutdown** stops accepting, closes idle keep-alive
 *   connections, lets requests in progress finish and WebSockets be closed
 *   by the application, then cuts whatever is left after
 *   `shutdownTimeoutMs` and settles `finished`.
 *
 * @example
 * ```ts ignore
 * import { serve, upgradeWebSocket } from "./server.ts";
 *
 * const server = serve({ port: 8080 }, (req) => {
 *   if (req.headers.get("upgrade") !== "websocket") return new Response("hello\n");
 *   const { socket, response } = upgradeWebSocket(req, { idleTimeout: 30 });
 *   socket.onmessage = (e) => socket.send(e.data);
 *   return response;
 * });
 * await server.shutdown();
 * ```
 *
 * @module
 */

import { Admission } from "./admission.ts";
import { AcceptBackoff, LogThrottle } from "./backoff.ts";
import { isTrusted, normalizeAddress } from "./client_address.ts";
import { newCounters, type TransportCounters } from "./counters.ts";
import { type ConnEnv, HttpConnection, refuseConnection } from "./http_conn.ts";
import { clip, describeError } from "./http_response.ts";
import { resolveOptions, type ServeHandler, type ServeOptions } from "./options.ts";
import { ReadScheduler } from "./read_scheduler.ts";
import { TimerHeap } from "./timer_heap.ts";

export { UpgradeError, upgradeWebSocket, type WebSocketUpgrade } from "./upgrade.ts";
export {
  type Handler,
  OwnWebSocket,
  ReadyState,
  type ReadyStateValue,
  type SocketOptions,
} from "./websocket.ts";
export type { TrustedProxy } from "./client_address.ts";
export type { ServeHandler, ServeHandlerInfo, ServeOptions } from "./options.ts";
export type { TransportCounters, TransportLogger } from "./counters.ts";

/** A running server, like `Deno.HttpServer`. */
export interface OwnServer extends AsyncDisposable {
  /** The address actually bound (the port is real even when 0 was asked). */
  readonly addr: Deno.NetAddr;
  /** Settles (never rejects) once the server has stopped and every connection is gone. */
  readonly finished: Promise<void>;
  /** Live counters (read-only to callers). */
  readonly counters: Readonly<TransportCounters>;
  /** Open connections (HTTP and WebSocket), refusals not included. */
  readonly connections: number;
  /**
   * Stops accepting, closes idle connections, waits for the rest to end,
   * at most `shutdownTimeoutMs`, then cuts them. Resolves when all are gone.
   */
  shutdown(): Promise<void>;
  /** Keeps the process alive while the server listens (the default). */
  ref(): void;
  /** Lets the process exit even though the server listens. */
  unref(): void;
}

/**
 * Listens and serves `handler`, like `Deno.serve(options, handler)`. Throws
 * at once if the address cannot be bound.
 */
export function serve(options: ServeOptions, handler: ServeHandler): OwnServer {
  const s = resolveOptions(options);
  const log = s.logger;
  const tls = s.cert !== undefined && s.key !== undefined;
  const listener: Deno.Listener = tls
    ? Deno.listenTls({
      port: s.port,
      hostname: s.hostname,
      cert: s.cert!,
      key: s.key!,
      alpnProtocols: ["http/1.1"],
    })
    : Deno.listen({ port: s.port, hostname: s.hostname, transport: "tcp" });
  const addr = listener.addr as Deno.NetAddr;
  const counters = newCounters();
  const admission = new Admission({
    maxConnections: s.maxConnections,
    maxPerAddress: s.maxConnectionsPerAddress,
  });
  const scheduler = new ReadScheduler({ readsPerTurn: s.readsPerTurn });
  const timers = new TimerHeap({
    onError: (e) => log.error("a connection timeout failed: {error}", { error: describeError(e) }),
  });
  const connections = new Set<HttpConnection>();
  const refusing = new Set<Deno.Conn>();
  const pending = new Set<Promise<void>>();
  let stopping = false;
  let dateSecond = -1;
  let dateText = "";
  const hostForUrl = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;

  const env: ConnEnv = {
    settings: s,
    counters,
    log,
    // The settings object holds every option: spread per connection, it was
    // a kilobyte of garbage for four numbers.
    parserLimits: {
      maxHeadBytes: s.maxHeadBytes,
      maxHeaderLines: s.maxHeaderLines,
      maxTargetBytes: s.maxTargetBytes,
      maxBodyBytes: s.maxBodyBytes,
    },
    scheduler,
    timers,
    admission,
    handler,
    scheme: tls ? "https" : "http",
    fallbackHost: `${hostForUrl}:${addr.port}`,
    stopping: () => stopping,
    date() {
      const now = Date.now();
      const sec = Math.floor(now / 1000);
      if (sec !== dateSecond) {
        dateSecond = sec;
        dateText = new Date(now).toUTCString();
      }
      return dateText;
    },
  };

  let onEmpty: (() => void) | undefined;
  function track(p: Promise<void>): void {
    pending.add(p);
    p.finally(() => {
      pending.delete(p);
      if (pending.size === 0) onEmpty?.();
    });
  }

  const refusalLog = new LogThrottle(s.logIntervalMs);
  function refuse(conn: Deno.Conn, why: "total" | "address", peer: string): void {
    if (why === "total") counters.refusedTotal++;
    else counters.refusedAddress++;
    const t = refusalLog.take(performance.now());
    if (t.log) {
      log.warn("refused a connection from {peer} ({why} cap); {more} more since the last report", {
        peer: clip(peer),
        why,
        more: t.suppressed,
      });
    }
    if (refusing.size >= s.maxRefusing) {
      counters.refusedSilently++;
      try {
        conn.close();
      } catch { /* already closed */ }
      return;
    }
    refusing.add(conn);
    track(
      refuseConnection(conn, s.retryAfterSeconds, s.lingerMs, scheduler).finally(() =>
        refusing.delete(conn)
      ),
    );
  }

  function admit(conn: Deno.Conn): void {
    const peer = normalizeAddress((conn.remoteAddr as Deno.NetAddr).hostname);
    const key = isTrusted(peer, s.trustProxy) ? undefined : peer;
    const why = stopping ? "total" : admission.admit(key);
    if (why !== undefined) return refuse(conn, why, peer);
    const c = new HttpConnection(env, conn, key);
    connections.add(c);
    track(c.done.finally(() => connections.delete(c)));
  }

  let backoffTimer: ReturnType<typeof setTimeout> | undefined;
  let wakeBackoff: (() => void) | undefined;
  async function acceptLoop(): Promise<void> {
    const backoff = new AcceptBackoff({
      initialMs: s.acceptBackoffMs,
      maxMs: s.acceptBackoffMaxMs,
    });
    const errorLog = new LogThrottle(s.logIntervalMs);
    while (!stopping) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch (e) {
        if (stopping || e instanceof Deno.errors.BadResource) return;
        if (e instanceof Deno.errors.Interrupted) return;
        counters.acceptErrors++;
        const delay = backoff.failure();
        const t = errorLog.take(performance.now());
        if (t.log) {
          log.warn(
            "accept failed: {error}; retrying in {delay} ms ({more} more failures since the last report)",
            { error: clip(e instanceof Error ? e.message : e, 200), delay, more: t.suppressed },
          );
        }
        await new Promise<void>((resolve) => {
          wakeBackoff = resolve;
          backoffTimer = setTimeout(resolve, delay);
        });
        backoffTimer = wakeBackoff = undefined;
        continue;
      }
      backoff.success();
      counters.accepted++;
      try {
        // Signalling is small frames, each waited for: never hold one back
        // for Nagle's algorithm (Deno.serve does the same).
        if ("setNoDelay" in conn) (conn as Deno.TcpConn).setNoDelay(true);
        admit(conn);
      } catch (e) {
        // A bug here must cost one connection, never the loop.
        log.error("admitting a connection failed: {error}", { error: describeError(e) });
        try {
          conn.close();
        } catch { /* already closed */ }
      }
    }
  }

  let resolveFinished!: () => void;
  const finished = new Promise<void>((resolve) => (resolveFinished = resolve));
  const accepting = acceptLoop().catch((e) => {
    log.error("accept loop failed: {error}", { error: describeError(e) });
  }).then(() => {
    // The listener went away without shutdown(): stop like shutdown would.
    if (!stopping) void shutdown();
  });

  let shutdownPromise: Promise<void> | undefined;
  async function stopAll(): Promise<void> {
    stopping = true;
    try {
      listener.close();
    } catch { /* closed already */ }
    clearTimeout(backoffTimer);
    wakeBackoff?.();
    log.info("shutting down: {n} connections open", { n: connections.size });
    for (const c of connections) c.stop();
    await accepting;
    if (pending.size > 0) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        onEmpty = resolve;
        timer = setTimeout(resolve, s.shutdownTimeoutMs);
      });
      clearTimeout(timer);
      onEmpty = undefined;
    }
    // Past the bound: cut what is left, and wait for its I/O to settle.
    for (const c of connections) c.cut();
    for (const conn of refusing) {
      try {
        conn.close();
      } catch { /* closed already */ }
    }
    await Promise.allSettled([...pending]);
    resolveFinished();
  }
  function shutdown(): Promise<void> {
    shutdownPromise ??= stopAll();
    return shutdownPromise;
  }

  s.onListen?.(addr);
  return {
    addr,
    finished,
    counters,
    get connections() {
      return connections.size;
    },
    shutdown,
    ref: () => listener.ref(),
    unref: () => listener.unref(),
    [Symbol.asyncDispose]: shutdown,
  };
}
