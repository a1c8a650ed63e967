/**
 * The server's lifecycle: serve HTTP, hand WebSocket upgrades on a mounted
 * path to the transport, and shut down gracefully. No protocol rule lives
 * here (the engines own them), nor any page (the HTTP routes do).
 *
 * @module
 */

import type { Grant } from "./auth/grant.ts";
import { type Refusal, REFUSALS, TokenError, TokenVerifier } from "./auth/jwt.ts";
import { presentedToken } from "./auth/request.ts";
import type { Broker, Directory } from "./diva/broker.ts";
import type { Backplane, BackplaneOptions } from "./cluster/backplane.ts";
import type { AuthSettings, Config } from "./config.ts";
import { buildEngines, type EngineDeps } from "./engines.ts";
import { logger } from "./log.ts";
import { DEFAULT_INTERVAL_MS, History, statusCharts } from "./http/history.ts";
import { counterFamilies, processFamilies } from "./http/metrics.ts";
import { routes } from "./http/routes.ts";
import type { Link, MetricFamily } from "./transport/engine.ts";
import {
  type OwnServer,
  serve as ownServe,
  type ServeHandlerInfo as OwnHandlerInfo,
  UpgradeError,
  upgradeWebSocket as ownUpgrade,
} from "./transport/own/server.ts";
import { TransportClose, type Upgrade, WebSocketTransport } from "./transport/websocket.ts";

/** The name the server gives itself on its pages. */
export const SERVER_NAME = "DIVA signal server (Deno)";

/** A running server. */
export interface SignalServer {
  /** The port actually bound (useful with port 0). */
  readonly port: number;
  /** The DIVA broker behind it (for counts). */
  readonly broker: Broker<Link>;
  /** The status page's charts, sampled until shutdown. */
  readonly history: History;
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
  cluster?: (
    options: BackplaneOptions,
  ) => Backplane & Directory<Link> & Pick<EngineDeps, "ywebrtcBus" | "peerjsDirectory">;
  /**
   * Milliseconds between samples of the status page's charts (default
   * 10 000: 360 samples make an hour). Tests shorten it.
   */
  historyIntervalMs?: number;
}

/** True when some key to verify tokens with is configured. */
function keyed(a: AuthSettings): boolean {
  return a.secrets.length > 0 || a.publicKeys.length > 0 || a.jwksUrl !== "";
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
  /** Verifies tokens, once its keys are imported; absent when no key is configured. */
  const verifier: Promise<TokenVerifier> | undefined = keyed(config.auth)
    ? TokenVerifier.create({
      secrets: config.auth.secrets,
      publicKeys: config.auth.publicKeys,
      jwksUrl: config.auth.jwksUrl,
      audience: config.auth.audience,
      issuer: config.auth.issuer,
      clockSkew: config.auth.clockSkew,
    })
    : undefined;
  verifier?.catch((e) => log.error("token keys cannot be used: {error}", { error: String(e) }));
  const authRefused = Object.fromEntries(REFUSALS.map((r) => [r, 0])) as Record<Refusal, number>;
  const engines = buildEngines(config, {
    verifier,
    directory: cluster,
    ywebrtcBus: cluster?.ywebrtcBus,
    peerjsDirectory: cluster?.peerjsDirectory,
  });
  const broker = engines.diva.broker;
  const backplane: Backplane | undefined = cluster;
  backplane?.start();

  const own = config.transport === "own";
  /** The own transport's server, once it listens (for its counters). */
  let ownServer: OwnServer | undefined;
  const upgradeRuntime: Upgrade | undefined = own
    ? (req, o) =>
      ownUpgrade(req, {
        idleTimeout: o.idleTimeout,
        maxMessageBytes: o.maxMessageBytes,
        protocol: o.protocol,
      })
    : undefined;
  const transport = new WebSocketTransport({
    upgrade: upgradeRuntime,
    maxMessageBytes: config.limits.maxFrameBytes,
    maxBufferedBytes: config.maxBufferedBytes,
    idleTimeout: config.idleTimeout,
    tokenSkewMs: config.auth.clockSkew * 1000,
  }, logger("transport"));

  function metrics(): MetricFamily[] {
    const out = engines.all.flatMap(({ engine }) => engine.metrics());
    out.push(...counterFamilies({ ...counters, ...transport.counters }));
    if (verifier !== undefined) {
      out.push({
        name: "signal_auth_refused_total",
        type: "counter",
        help: "WebSocket upgrades refused for their token, by reason",
        samples: REFUSALS.map((r) => [{ reason: r }, authRefused[r]] as const),
      });
    }
    out.push({
      name: "signal_connection_cap",
      type: "gauge",
      help: "Configured cap on open connections, all engines together (0 = no cap: Deno transport)",
      samples: [[null, own ? config.maxConnections : 0]],
    });
    if (ownServer !== undefined) {
      out.push({
        name: "signal_transport_connections",
        type: "gauge",
        help: "Open TCP connections, HTTP and WebSocket (own transport)",
        samples: [[null, ownServer.connections]],
      });
      for (const [k, v] of Object.entries(ownServer.counters)) {
        const name = k.replace(/[A-Z]/g, (c) => "_" + c.toLowerCase());
        out.push({
          name: `signal_transport_${name}_total`,
          type: "counter",
          help: `Own transport: ${name.replaceAll("_", " ")}`,
          samples: [[null, v]],
        });
      }
    }
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

  // The status page's charts: one sample of the metrics every interval, in
  // fixed-size rings (the timer starts once the listener exists, below).
  const history = new History({
    charts: statusCharts({
      engines: engines.all.map(({ engine }) => engine),
      instances: backplane === undefined ? undefined : () => 1 + broker.remoteInstances().length,
    }),
    intervalMs: options.historyIntervalMs ?? DEFAULT_INTERVAL_MS,
  });
  const sample = () => {
    try {
      history.sample(metrics());
    } catch (e) {
      log.error("sampling the status charts failed: {error}", { error: String(e) });
    }
  };

  const page = routes({
    metricsToken: config.metricsToken,
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
    history,
  });

  function upgrade(
    req: Request,
    url: URL,
    address: string,
  ): Response | Promise<Response> | undefined {
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
    const presented = (mount.token ?? presentedToken)(req, url);
    const accept = (grant?: Grant): Response => {
      try {
        return transport.accept(req, mount, { url, address, grant }, presented?.protocol);
      } catch (e) {
        // A malformed upgrade is the client's mistake: 400 or 426, never 500.
        if (e instanceof UpgradeError) {
          counters.upgrade_refused++;
          return e.response();
        }
        throw e;
      }
    };
    // Without keys, tokens are not looked at (and a `jwt` subprotocol is still answered).
    if (verifier === undefined || (presented?.token ?? "") === "" && !config.auth.required) {
      return accept();
    }
    return verifier.then((v) => v.verify(presented?.token)).then(accept, (e: unknown) => {
      const reason: Refusal = e instanceof TokenError ? e.reason : "unavailable";
      authRefused[reason]++;
      log.debug("refused an upgrade: {reason}", { reason });
      // The reason, never the token.
      const status = reason === "unavailable" ? 503 : 401;
      return new Response(`token refused: ${reason}\n`, {
        status,
        headers: { ...TEXT, "www-authenticate": 'Bearer realm="signal"' },
      });
    });
  }

  function handler(
    req: Request,
    info: Deno.ServeHandlerInfo | OwnHandlerInfo,
  ): Response | Promise<Response> {
    const address = "clientAddress" in info
      ? info.clientAddress
      : (info.remoteAddr as Deno.NetAddr).hostname;
    return upgrade(req, new URL(req.url), address) ?? page(req);
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
  const tls = config.tlsCert
    ? { cert: Deno.readTextFileSync(config.tlsCert), key: Deno.readTextFileSync(config.tlsKey) }
    : {};
  const http = own
    ? ownServer = ownServe({
      ...serveOptions,
      ...tls,
      logger: logger("transport"),
      maxConnections: config.maxConnections,
      maxConnectionsPerAddress: config.maxConnectionsPerAddress,
      trustProxy: config.trustProxyHeader === ""
        ? undefined
        : { header: config.trustProxyHeader, proxies: config.trustedProxies },
      headerTimeoutMs: config.headerTimeout * 1000,
      shutdownTimeoutMs: Math.max(1, config.shutdownTimeout) * 1000,
      webSocket: { maxMessageBytes: config.limits.maxFrameBytes },
    }, handler)
    : Deno.serve({ ...serveOptions, ...tls }, handler);

  // The first sample, then one every interval; the timer keeps no process alive.
  sample();
  const sampler = setInterval(sample, history.intervalMs);
  Deno.unrefTimer(sampler);

  let shutdownPromise: Promise<void> | undefined;
  async function shutdown(): Promise<void> {
    stopping = true;
    clearInterval(sampler);
    log.info("shutting down: closing {n} connections", { n: transport.sockets });
    // Members leave first, so peers everywhere get their bye before we go.
    transport.closeAll(TransportClose.goingAway, "server shutting down");
    // Sessions in grace end too, so their peers hear of it before we go.
    engines.diva.stop();
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
    history,
    shutdown() {
      shutdownPromise ??= shutdown();
      return shutdownPromise;
    },
    finished: http.finished,
  };
}
