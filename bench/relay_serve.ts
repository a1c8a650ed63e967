/**
 * What every bare relay transport shares: the limits they are all given,
 * the result and options types, the read-stats printer, and the wiring of a
 * WHATWG-shaped socket (Deno's or the own transport's) to {@link RelayCore}.
 *
 * @module
 */

import type { RelayCore } from "./relay_core.ts";

/** The transports a bare relay can run on. */
export const TRANSPORTS = ["deno", "own", "node", "node-deno", "workers"] as const;

/** A transport of {@link TRANSPORTS}. */
export type Transport = typeof TRANSPORTS[number];

/** The limits every candidate that has them is given, alike. */
export const LIMITS = {
  /** Largest message (own: `maxMessageBytes`; ws: `maxPayload`). */
  maxMessageBytes: 1024 * 1024,
  /** Time for a request head (own: `headerTimeoutMs`; node: `headersTimeout`). */
  headerTimeoutMs: 5000,
} as const;

/** A running bare relay. */
export interface BareRelay {
  /** The port bound. */
  readonly port: number;
  /** Stops listening and closes every socket. */
  shutdown(): Promise<void>;
}

/** How to start a bare relay. */
export interface BareRelayOptions {
  host: string;
  /** 0 picks a free one. */
  port: number;
  /** Default `deno`. */
  transport?: Transport;
  /** Print per-socket read counts once a second. */
  readStats?: boolean;
  /** Worker isolates (`workers` only). Default 1. */
  workers?: number;
  /** The own transport's `readsPerTurn` (`own` only). Default: the transport's (4). */
  readsPerTurn?: number;
}

/** Prints {@link RelayCore.takeReadStats} to stderr every second; returns the stop. */
export function readStatsTimer(core: RelayCore, label = "", extra?: () => string): () => void {
  const timer = setInterval(() => {
    const r = core.takeReadStats();
    if (r.sockets === 0) return;
    console.error(
      `read stats${label}: ${r.sockets} sockets, ${r.readFrom} read from, ` +
        `${r.sockets - r.readFrom} not read at all, ${r.frames} frames in 1 s` +
        (extra?.() ?? ""),
    );
  }, 1000);
  return () => clearInterval(timer);
}

/** Serves the bare relay on `Deno.serve` (optionally with `reusePort`), for one isolate. */
export function serveOnDeno(
  core: RelayCore,
  o: { host: string; port: number; reusePort?: boolean; ready?: () => boolean },
  onListen?: (port: number) => void,
): Deno.HttpServer<Deno.NetAddr> {
  function handler(req: Request): Response {
    if (o.ready !== undefined && !o.ready()) return new Response("starting\n", { status: 503 });
    if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
      return new Response("bare relay\n");
    }
    const { socket, response } = Deno.upgradeWebSocket(req, { idleTimeout: 0 });
    wireWebSocket(core, socket);
    return response;
  }
  return Deno.serve({
    hostname: o.host,
    port: o.port,
    reusePort: o.reusePort,
    onListen: (addr) => onListen?.(addr.port),
  }, handler);
}

/** Feeds a WHATWG-shaped socket (Deno's or the own transport's) to `core`. */
export function wireWebSocket(
  core: RelayCore,
  socket: {
    onopen: unknown;
    onmessage: unknown;
    onclose: unknown;
    onerror: unknown;
    send(s: string): void;
    close(code?: number, reason?: string): void;
  },
): void {
  let conn: ReturnType<RelayCore["open"]> | undefined;
  socket.onopen = () => conn = core.open(socket);
  socket.onmessage = (e: MessageEvent<string | ArrayBuffer>) => {
    if (conn !== undefined && typeof e.data === "string") core.message(conn, e.data);
  };
  socket.onclose = () => {
    if (conn !== undefined) core.close(conn);
  };
  socket.onerror = () => {/* a close event follows */};
}
