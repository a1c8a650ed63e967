/**
 * The server's lifecycle: serve HTTP, hand WebSocket upgrades on a mounted
 * path to the transport, and shut down gracefully. No protocol rule lives
 * here (the engines own them), nor any page (the HTTP routes do).
 *
 * @module
 */

import type { Broker, Directory } from "./diva/broker.ts";
import type { Backplane, BackplaneOptions } from "./cluster/backplane.ts";
import type { Config } from "./config.ts";
import { buildEngines } from "./engines.ts";
import { logger } from "./log.ts";
import { counterFamilies, processFamilies } from "./http/metrics.ts";
import { routes } from "./http/routes.ts";
import type { Link, MetricFamily } from "./transport/engine.ts";
import { TransportClose, WebSocketTransport } from "./transport/websocket.ts";

/** The name the server gives itself on its pages. */
export const SERVER_NAME = "DIVA signal server (Deno)";

/** A running server. */
export interface SignalServer {
  /** The port actually bound (useful with port 0). */
  readonly port: number;
  /** The DIVA broker behind it (for counts). */
  readonly broker: Broker<Link>;
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
  cluster?: (options: BackplaneOptions) => Backplane & Directory<Link>;
}

/** Counters kept by the server itself, outside the protocols. */
interface ServerCounters {
  origin_refused: number;
  upgrade_refused: number;
}

const TEXT = { "content-type": "text/plain; charset=utf-8" };

/**
 * Starts the server with `config`.
 *
 * @example
 * ```ts ignore
 * const server = startServer(config, { version: "1.0.0" });
 * // … later
 * await server.shutdown();
 * ```
 */
export function startServer(config: Config, options: StartOptions): SignalServer {
  const log = logger("server");
  const started = performance.now();
  const counters: ServerCounters = { origin_refused: 0, upgrade_refused: 0 };
  const allowed = new Set(config.allowedOrigins);
  let stopping = false;

  if (config.redisUrl !== "" && options.cluster === undefined) {
    throw new Error("cluster mode (a Redis URL) needs StartOptions.cluster");
  }
  const cluster = config.redisUrl === "" ? undefined : options.cluster!({
    url: config.redisUrl,
    maxPeersPerRoom: config.limits.maxPeersPerRoom,
    broker: () => broker,
  });
  const engines = buildEngines(config, { directory: cluster });
  const broker = engines.diva.broker;
  const backplane: Backplane | undefined = cluster;
  backplane?.start();

  const transport = new WebSocketTransport({
    maxMessageBytes: config.limits.maxFrameBytes,
    maxBufferedBytes: config.maxBufferedBytes,
    idleTimeout: config.idleTimeout,
  }, logger("transport"));

  function metrics(): MetricFamily[] {
    const out = engines.all.flatMap(({ engine }) => engine.metrics());
    out.push(...counterFamilies({ ...counters, ...transport.counters }));
    if (backplane !== undefined) {
      out.push({
        name: "signal_cluster_ready",
        type: "gauge",
        help: "1 while the cluster backplane (Redis) is usable",
        samples: [[null, backplane.ready ? 1 : 0]],
      });
    }
    out.push(...processFamilies((performance.now() - started) / 1000, Deno.memoryUsage()));
    return out;
  }

  const page = routes({
    name: SERVER_NAME,
    version: options.version,
    uptimeSeconds: () => (performance.now() - started) / 1000,
    engines: engines.all,
    notReady: () =>
      stopping
        ? "shutting down"
        : backplane !== undefined && !backplane.ready
        ? "cluster unavailable"
        : undefined,
    metrics,
  });

  function upgrade(req: Request, url: URL, info: Deno.ServeHandlerInfo): Response | undefined {
    const mount = engines.mounts.get(url.pathname);
    if (mount === undefined || req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
      return undefined;
    }
    const origin = req.headers.get("origin");
    if (allowed.size > 0 && (origin === null || !allowed.has(origin))) {
      counters.origin_refused++;
      log.info("refused origin {origin}", { origin: origin?.slice(0, 100) });
      return new Response("origin not allowed\n", { status: 403, headers: TEXT });
    }
    if (stopping) {
      counters.upgrade_refused++;
      return new Response("shutting down\n", { status: 503, headers: TEXT });
    }
    const remote = info.remoteAddr as Deno.NetAddr;
    return transport.accept(req, mount, { url, address: remote.hostname });
  }

  function handler(req: Request, info: Deno.ServeHandlerInfo): Response {
    return upgrade(req, new URL(req.url), info) ?? page(req);
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
    log.info("shutting down: closing {n} connections", { n: transport.sockets });
    // Members leave first, so peers everywhere get their bye before we go.
    transport.closeAll(TransportClose.goingAway, "server shutting down");
    await backplane?.stop();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, config.shutdownTimeout * 1000);
    });
    // The listener stays up until every client has answered the close
    // handshake (or the deadline passes): meanwhile /readyz says 503 and
    // upgrades are refused, so a load balancer can move traffic elsewhere.
    await Promise.race([transport.drained(), deadline]);
    await Promise.race([http.shutdown(), deadline]);
    clearTimeout(timer);
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
