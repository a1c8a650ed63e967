/**
 * The HTTP and WebSocket server: moves frames between sockets and the
 * broker, serves the status, health and metrics pages, and shuts down
 * gracefully. No protocol rule lives here.
 *
 * @module
 */

import { assetResponse } from "./assets.ts";
import { Broker, CloseCode, type Connection, type Outbox } from "./broker.ts";
import type { Cluster, ClusterOptions } from "./cluster.ts";
import type { Config } from "./config.ts";
import { logger } from "./log.ts";
import { renderMetrics } from "./metrics.ts";
import { notFoundPage, statusPage } from "./pages.ts";
import { iceServers } from "./turn.ts";

/** The name the server gives itself on its pages. */
export const SERVER_NAME = "DIVA signal server (Deno)";

/** A running server. */
export interface SignalServer {
  /** The port actually bound (useful with port 0). */
  readonly port: number;
  /** The broker behind it (for counts). */
  readonly broker: Broker<WebSocket>;
  /** Stops accepting, closes every socket with 1001 and waits (bounded) for the rest. */
  shutdown(): Promise<void>;
  /** Settles when the HTTP server has stopped. */
  readonly finished: Promise<void>;
}

/** What else {@link startServer} needs. */
export interface StartOptions {
  /** The version shown on pages and in logs. */
  version: string;
  /** Called once the server listens. */
  onListen?: (addr: Deno.NetAddr) => void;
  /**
   * Makes the cluster link when `config.redisUrl` is set. Passed in, so the
   * Redis client is only loaded by instances that run in cluster mode.
   */
  cluster?: (options: ClusterOptions) => Cluster<WebSocket>;
}

/** Counters kept by the server itself, outside the protocol. */
interface ServerCounters {
  origin_refused: number;
  slow_reader_closed: number;
  upgrade_refused: number;
  internal_errors: number;
}

/**
 * How long a socket's unsent queue may stay over `maxBufferedBytes` before
 * its reader counts as slow. Deno counts a frame as buffered until its write
 * completes on a later turn of the event loop, so a burst sent in one turn
 * overshoots the limit even for a reader that keeps up.
 */
const SLOW_READER_GRACE_MS = 1000;

const TEXT = { "content-type": "text/plain; charset=utf-8" };
const HTML = { "content-type": "text/html; charset=utf-8" };

/**
 * Starts the server with `config`.
 *
 * @example
 * ```ts
 * const server = startServer(config, { version: "1.0.0" });
 * // … later
 * await server.shutdown();
 * ```
 */
export function startServer(config: Config, options: StartOptions): SignalServer {
  const log = logger("server");
  const started = performance.now();
  /** Open sockets and their broker connections. */
  const sockets = new Map<WebSocket, Connection<WebSocket>>();
  const counters: ServerCounters = {
    origin_refused: 0,
    slow_reader_closed: 0,
    upgrade_refused: 0,
    internal_errors: 0,
  };
  const allowed = new Set(config.allowedOrigins);
  let stopping = false;
  /** Called when the last socket has closed during a shutdown. */
  let onDrained: (() => void) | undefined;
  /** Sockets over the buffer limit, with the timer that looks at them again. */
  const overLimit = new Map<WebSocket, ReturnType<typeof setTimeout>>();
  /** Sockets whose queued frames wait for their budget, with the timer that wakes them. */
  const wakes = new Map<WebSocket, ReturnType<typeof setTimeout>>();

  function checkSlowReader(ws: WebSocket): void {
    overLimit.delete(ws);
    if (ws.readyState !== WebSocket.OPEN || ws.bufferedAmount <= config.maxBufferedBytes) return;
    counters.slow_reader_closed++;
    log.info("closing slow reader with {bytes} bytes unsent", { bytes: ws.bufferedAmount });
    ws.close(CloseCode.policy, "slow reader");
    const conn = sockets.get(ws);
    if (conn !== undefined) broker.close(conn);
  }

  function deliver(ws: WebSocket, frame: string): void {
    if (ws.readyState !== WebSocket.OPEN) return;
    ws.send(frame);
    // A reader that does not keep up would make us buffer without end.
    if (ws.bufferedAmount > config.maxBufferedBytes && !overLimit.has(ws)) {
      overLimit.set(ws, setTimeout(() => checkSlowReader(ws), SLOW_READER_GRACE_MS));
    }
  }

  function closeSocket(ws: WebSocket, code: number, reason: string): void {
    if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) {
      ws.close(code, reason);
    }
  }

  function internalError(ws: WebSocket, conn: Connection<WebSocket>, err: unknown): void {
    counters.internal_errors++;
    log.error("internal error, closing the connection: {error}", {
      error: err instanceof Error ? err.stack ?? err.message : String(err),
    });
    try {
      broker.close(conn);
    } catch { /* already reported */ }
    closeSocket(ws, CloseCode.internal, "internal error");
  }

  const outbox: Outbox<WebSocket> = {
    send: deliver,
    close: closeSocket,
    wake(ws, conn, delayMs) {
      clearTimeout(wakes.get(ws));
      wakes.set(
        ws,
        setTimeout(() => {
          wakes.delete(ws);
          try {
            broker.wake(conn);
          } catch (err) {
            internalError(ws, conn, err);
          }
        }, delayMs),
      );
    },
    ice(ws, conn, ident) {
      iceServers(config, ident, Date.now() / 1000).then(
        (list) => broker.iceReply(conn, list),
        (e) => {
          log.error("ice lookup failed: {error}", { error: String(e) });
          broker.iceFailed(conn);
        },
      ).catch((err) => internalError(ws, conn, err));
    },
  };

  if (config.redisUrl !== "" && options.cluster === undefined) {
    throw new Error("cluster mode (a Redis URL) needs StartOptions.cluster");
  }
  const cluster = config.redisUrl === "" ? undefined : options.cluster!({
    url: config.redisUrl,
    maxPeersPerRoom: config.limits.maxPeersPerRoom,
  });
  const broker = new Broker<WebSocket>({
    directory: cluster,
    outbox,
    now: () => performance.now(),
    randomBytes: (b) => crypto.getRandomValues(b),
    limits: config.limits,
  });
  cluster?.start(broker);

  function upgrade(req: Request): Response {
    const origin = req.headers.get("origin");
    if (allowed.size > 0 && (origin === null || !allowed.has(origin))) {
      counters.origin_refused++;
      log.info("refused origin {origin}", { origin });
      return new Response("origin not allowed\n", { status: 403, headers: TEXT });
    }
    if (stopping) {
      counters.upgrade_refused++;
      return new Response("shutting down\n", { status: 503, headers: TEXT });
    }
    const { socket, response } = Deno.upgradeWebSocket(req, {
      idleTimeout: config.idleTimeout,
    });
    socket.binaryType = "arraybuffer";
    let conn: Connection<WebSocket> | undefined;
    socket.onopen = () => {
      if (stopping) {
        socket.close(CloseCode.goingAway, "server shutting down");
        return;
      }
      conn = broker.open(socket);
      sockets.set(socket, conn);
    };
    socket.onmessage = (e: MessageEvent<string | ArrayBuffer>) => {
      if (conn === undefined) return;
      const d = e.data;
      try {
        broker.frame(conn, typeof d === "string" ? d : new Uint8Array(d));
      } catch (err) {
        // A bug must cost one connection, never the process (an exception
        // escaping an event handler would end it).
        internalError(socket, conn, err);
      }
    };
    socket.onclose = () => {
      clearTimeout(overLimit.get(socket));
      overLimit.delete(socket);
      clearTimeout(wakes.get(socket));
      wakes.delete(socket);
      sockets.delete(socket);
      if (conn !== undefined) broker.close(conn);
      if (stopping && sockets.size === 0) onDrained?.();
    };
    socket.onerror = () => {/* a close event follows */};
    return response;
  }

  function page(req: Request, url: URL): Response {
    const path = url.pathname;
    switch (path) {
      case "/": {
        const ws = `${url.protocol === "https:" ? "wss" : "ws"}://${url.host}${config.path || "/"}`;
        return new Response(
          statusPage({
            name: SERVER_NAME,
            version: options.version,
            uptimeSeconds: (performance.now() - started) / 1000,
            connections: broker.connections,
            rooms: broker.rooms,
            idents: broker.idents,
            wsUrl: ws,
          }),
          { headers: HTML },
        );
      }
      case "/healthz":
        return new Response("ok\n", { headers: TEXT });
      case "/readyz":
        if (stopping) return new Response("shutting down\n", { status: 503, headers: TEXT });
        if (cluster !== undefined && !cluster.ready) {
          return new Response("cluster unavailable\n", { status: 503, headers: TEXT });
        }
        return new Response("ready\n", { headers: TEXT });
      case "/metrics":
        return new Response(
          renderMetrics({
            stats: broker.stats,
            connections: broker.connections,
            rooms: broker.rooms,
            idents: broker.idents,
            server: { ...counters },
            gauges: cluster === undefined ? {} : { cluster_ready: cluster.ready ? 1 : 0 },
            uptimeSeconds: (performance.now() - started) / 1000,
            memory: Deno.memoryUsage(),
          }),
          { headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" } },
        );
      case "/robots.txt":
        return new Response("User-agent: *\nDisallow: /\n", { headers: TEXT });
      case "/client.js":
      case "/client.d.ts":
      case "/demo":
        return assetResponse(req, path)!;
      default:
        void req;
        return new Response(notFoundPage(path), { status: 404, headers: HTML });
    }
  }

  function handler(req: Request): Response {
    const url = new URL(req.url);
    const isWsPath = url.pathname === "/" || (config.path !== "" && url.pathname === config.path);
    if (isWsPath && req.headers.get("upgrade")?.toLowerCase() === "websocket") {
      return upgrade(req);
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      return new Response("method not allowed\n", {
        status: 405,
        headers: { ...TEXT, allow: "GET, HEAD" },
      });
    }
    const res = page(req, url);
    // HEAD answers like GET, without the body.
    return req.method === "HEAD"
      ? new Response(null, { status: res.status, headers: res.headers })
      : res;
  }

  let bound: Deno.NetAddr | undefined;
  const serveOptions = {
    port: config.port,
    hostname: config.host,
    onListen(addr: Deno.NetAddr) {
      bound = addr;
      log.info("listening on {scheme}://{host}:{port} (version {version})", {
        scheme: config.tlsCert ? "https" : "http",
        host: addr.hostname,
        port: addr.port,
        version: options.version,
      });
      options.onListen?.(addr);
    },
    onError(e: unknown) {
      log.error("request failed: {error}", { error: String(e) });
      return new Response("internal error\n", { status: 500, headers: TEXT });
    },
  };
  const http = config.tlsCert
    ? Deno.serve({
      ...serveOptions,
      cert: Deno.readTextFileSync(config.tlsCert),
      key: Deno.readTextFileSync(config.tlsKey),
    }, handler)
    : Deno.serve(serveOptions, handler);

  let shutdownPromise: Promise<void> | undefined;
  async function shutdown(): Promise<void> {
    stopping = true;
    log.info("shutting down: closing {n} connections", { n: sockets.size });
    // Members leave first, so peers everywhere get their bye before we go.
    for (const [ws, conn] of sockets) {
      broker.close(conn);
      outbox.close(ws, CloseCode.goingAway, "server shutting down");
    }
    await cluster?.stop();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, config.shutdownTimeout * 1000);
    });
    // The listener stays up until every client has answered the close
    // handshake (or the deadline passes): meanwhile /readyz says 503 and
    // upgrades are refused, so a load balancer can move traffic elsewhere.
    const drained = new Promise<void>((resolve) => {
      onDrained = resolve;
      if (sockets.size === 0) resolve();
    });
    await Promise.race([drained, deadline]);
    await Promise.race([http.shutdown(), deadline]);
    clearTimeout(timer);
    for (const t of overLimit.values()) clearTimeout(t);
    overLimit.clear();
    for (const t of wakes.values()) clearTimeout(t);
    wakes.clear();
    log.info("stopped");
  }

  return {
    get port() {
      return bound?.port ?? (http.addr as Deno.NetAddr).port;
    },
    broker,
    shutdown() {
      shutdownPromise ??= shutdown();
      return shutdownPromise;
    },
    finished: http.finished,
  };
}
