/**
 * The options of `serve`, their defaults, and the handler types, shaped like
 * `Deno.serve`'s.
 *
 * @module
 */

import type { TrustedProxy } from "./client_address.ts";
import type { TransportLogger } from "./counters.ts";
import { DEFAULT_PARSER_LIMITS } from "./http1.ts";
import { DEFAULT_MAX_MESSAGE_BYTES } from "./ws_frame.ts";

/** What a handler learns about the connection a request came on. */
export interface ServeHandlerInfo {
  /** The TCP peer (a proxy, when there is one). */
  remoteAddr: Deno.NetAddr;
  /** The client address: the peer, or what a trusted proxy's header names. */
  clientAddress: string;
}

/** A request handler, as for `Deno.serve`. */
export type ServeHandler = (
  request: Request,
  info: ServeHandlerInfo,
) => Response | Promise<Response>;

/** Options of `serve`. Times are in milliseconds unless a name says otherwise. */
export interface ServeOptions {
  /** Port to listen on (0 picks a free one). Default 8000. */
  port?: number;
  /** Address to listen on. Default "0.0.0.0". */
  hostname?: string;
  /** PEM certificate chain: with `key`, the server speaks TLS (`Deno.listenTls`). */
  cert?: string;
  /** PEM private key of `cert`. */
  key?: string;
  /** Called once listening, with the bound address. */
  onListen?: (addr: Deno.NetAddr) => void;
  /** Answers a request whose handler threw. Default: log, then a plain 500. */
  onError?: (error: unknown) => Response | Promise<Response>;
  /** Where the transport logs. Default: warnings and errors on the console. */
  logger?: TransportLogger;

  /** Most connections at once; past it new ones get 503. Default 10,000. */
  maxConnections?: number;
  /** Most connections from one client address (0 = no cap). Default 256. */
  maxConnectionsPerAddress?: number;
  /** Believe this proxy header for the client address, from these proxies only. */
  trustProxy?: TrustedProxy;
  /** `Retry-After` of a 503 refusal, in seconds. Default 5. */
  retryAfterSeconds?: number;
  /** Refusals answered at once; past it a refused connection is closed without a word. Default 64. */
  maxRefusing?: number;

  /** Time for a request head (and its small body) from the connection or first byte. Default 5000. */
  headerTimeoutMs?: number;
  /** Time an idle keep-alive connection is kept. Default 5000. */
  keepAliveTimeoutMs?: number;
  /** Time a response write may stall before the connection is cut. Default 30,000. */
  writeTimeoutMs?: number;
  /** How long a closing connection keeps draining input so its last answer arrives. Default 1000. */
  lingerMs?: number;
  /** Time `shutdown` waits for connections to end before cutting them. Default 10,000. */
  shutdownTimeoutMs?: number;

  /** Largest request head. Default 16 KiB. */
  maxHeadBytes?: number;
  /** Most header lines. Default 100. */
  maxHeaderLines?: number;
  /** Longest request target. Default 8 KiB. */
  maxTargetBytes?: number;
  /** Largest `Content-Length` body read and discarded. Default 64 KiB. */
  maxBodyBytes?: number;

  /** Size of each connection's read buffer. Default 4 KiB (memory per idle connection). */
  readBufferBytes?: number;
  /** Reads and writes started per event-loop turn, for fairness (0 = no limit). Default 4. */
  readsPerTurn?: number;
  /** First wait after a failed `accept()`; it doubles up to `acceptBackoffMaxMs`. Default 10. */
  acceptBackoffMs?: number;
  /** Longest wait after failed `accept()`s. Default 1000. */
  acceptBackoffMaxMs?: number;
  /** At most one log line per this interval for repeated accept errors or refusals. Default 10,000. */
  logIntervalMs?: number;

  /** WebSocket defaults under each `upgradeWebSocket` call's own options. */
  webSocket?: {
    /** Largest message in bytes. Default 1 MiB. */
    maxMessageBytes?: number;
    /** Time a sent close waits for the peer's. Default 2000. */
    closeTimeoutMs?: number;
  };
}

/** {@link ServeOptions} with every default filled in. */
export type Settings =
  & Required<
    Omit<ServeOptions, "cert" | "key" | "onListen" | "onError" | "trustProxy" | "webSocket">
  >
  & Pick<ServeOptions, "cert" | "key" | "onListen" | "onError" | "trustProxy">
  & { webSocket: Required<NonNullable<ServeOptions["webSocket"]>> };

/** A logger writing warnings and errors to the console. */
export const CONSOLE_LOGGER: TransportLogger = {
  debug() {},
  info() {},
  warn: (m, p) => console.warn(m, p ?? ""),
  error: (m, p) => console.error(m, p ?? ""),
};

/**
 * Fills in the defaults; throws a RangeError for a value out of range.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { resolveOptions } from "./options.ts";
 *
 * const s = resolveOptions({ port: 0, headerTimeoutMs: 100 });
 * assert.equal(s.headerTimeoutMs, 100);
 * assert.equal(s.maxHeadBytes, 16 * 1024);
 * assert.throws(() => resolveOptions({ readBufferBytes: 10 }), RangeError);
 * ```
 */
export function resolveOptions(o: ServeOptions): Settings {
  const s: Settings = {
    port: o.port ?? 8000,
    hostname: o.hostname ?? "0.0.0.0",
    cert: o.cert,
    key: o.key,
    onListen: o.onListen,
    onError: o.onError,
    logger: o.logger ?? CONSOLE_LOGGER,
    maxConnections: o.maxConnections ?? 10_000,
    maxConnectionsPerAddress: o.maxConnectionsPerAddress ?? 256,
    trustProxy: o.trustProxy,
    retryAfterSeconds: o.retryAfterSeconds ?? 5,
    maxRefusing: o.maxRefusing ?? 64,
    headerTimeoutMs: o.headerTimeoutMs ?? 5000,
    keepAliveTimeoutMs: o.keepAliveTimeoutMs ?? 5000,
    writeTimeoutMs: o.writeTimeoutMs ?? 30_000,
    lingerMs: o.lingerMs ?? 1000,
    shutdownTimeoutMs: o.shutdownTimeoutMs ?? 10_000,
    maxHeadBytes: o.maxHeadBytes ?? DEFAULT_PARSER_LIMITS.maxHeadBytes,
    maxHeaderLines: o.maxHeaderLines ?? DEFAULT_PARSER_LIMITS.maxHeaderLines,
    maxTargetBytes: o.maxTargetBytes ?? DEFAULT_PARSER_LIMITS.maxTargetBytes,
    maxBodyBytes: o.maxBodyBytes ?? DEFAULT_PARSER_LIMITS.maxBodyBytes,
    readBufferBytes: o.readBufferBytes ?? 4 * 1024,
    readsPerTurn: o.readsPerTurn ?? 4,
    acceptBackoffMs: o.acceptBackoffMs ?? 10,
    acceptBackoffMaxMs: o.acceptBackoffMaxMs ?? 1000,
    logIntervalMs: o.logIntervalMs ?? 10_000,
    webSocket: {
      maxMessageBytes: o.webSocket?.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES,
      closeTimeoutMs: o.webSocket?.closeTimeoutMs ?? 2000,
    },
  };
  if ((s.cert === undefined) !== (s.key === undefined)) {
    throw new RangeError("cert and key go together");
  }
  if (s.readBufferBytes < 1024) throw new RangeError("readBufferBytes under 1024");
  if (s.maxConnections < 1) throw new RangeError("maxConnections under 1");
  for (
    const k of [
      "headerTimeoutMs",
      "keepAliveTimeoutMs",
      "writeTimeoutMs",
      "shutdownTimeoutMs",
    ] as const
  ) {
    if (!(s[k] > 0)) throw new RangeError(`${k} must be positive`);
  }
  return s;
}
