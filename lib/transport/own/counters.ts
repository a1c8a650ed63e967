/**
 * What the transport counts and how it logs: plain numbers anyone may read,
 * and a logger interface shaped like LogTape's, so the server's own logger
 * can be passed in as it is.
 *
 * @module
 */

/** Counters kept by a running transport; read them for metrics. */
export interface TransportCounters {
  /** Connections accepted from the listener. */
  accepted: number;
  /** `accept()` calls that failed (EMFILE and the like); the loop backs off and goes on. */
  acceptErrors: number;
  /** Connections refused because the total cap was reached. */
  refusedTotal: number;
  /** Connections (or proxied requests) refused because their address was at its cap. */
  refusedAddress: number;
  /** Refusals closed without a 503, because too many refusals were being answered. */
  refusedSilently: number;
  /** Requests answered (any status). */
  requests: number;
  /** Requests refused by the parser (4xx/5xx before the handler). */
  badRequests: number;
  /** Connections cut because a request head did not arrive in time. */
  headerTimeouts: number;
  /** Idle keep-alive connections closed. */
  idleTimeouts: number;
  /** Connections cut because a response write stalled. */
  writeTimeouts: number;
  /** Handler exceptions (answered 500 through `onError`). */
  handlerErrors: number;
  /** Upgrade requests refused (400 or 426). */
  upgradeRefused: number;
  /** WebSockets opened. */
  wsOpened: number;
  /** WebSockets closed, however they ended. */
  wsClosed: number;
  /** WebSockets failed with 1002 (protocol error). */
  wsProtocolErrors: number;
  /** WebSockets failed with 1007 (invalid UTF-8). */
  wsInvalidData: number;
  /** WebSockets failed with 1009 (message over the limit). */
  wsTooBig: number;
  /** WebSockets cut because the peer did not answer our close in time. */
  wsCloseTimeouts: number;
  /** WebSockets cut because the peer did not answer a ping in time. */
  wsPingTimeouts: number;
  /** Exceptions thrown by WebSocket event handlers (the socket is closed with 1011). */
  wsHandlerErrors: number;
}

/** Counters all at zero. */
export function newCounters(): TransportCounters {
  return {
    accepted: 0,
    acceptErrors: 0,
    refusedTotal: 0,
    refusedAddress: 0,
    refusedSilently: 0,
    requests: 0,
    badRequests: 0,
    headerTimeouts: 0,
    idleTimeouts: 0,
    writeTimeouts: 0,
    handlerErrors: 0,
    upgradeRefused: 0,
    wsOpened: 0,
    wsClosed: 0,
    wsProtocolErrors: 0,
    wsInvalidData: 0,
    wsTooBig: 0,
    wsCloseTimeouts: 0,
    wsPingTimeouts: 0,
    wsHandlerErrors: 0,
  };
}

/**
 * Where the transport logs: a message template with `{name}` placeholders
 * and its values. Any value that came from a client is cut to about 100
 * characters before it gets here.
 */
export interface TransportLogger {
  /** Detail for debugging (bad requests, protocol errors). */
  debug(message: string, properties?: Record<string, unknown>): void;
  /** Normal events (listening, shutdown). */
  info(message: string, properties?: Record<string, unknown>): void;
  /** Trouble the transport works around (accept errors, refusals). */
  warn(message: string, properties?: Record<string, unknown>): void;
  /** Failures (handler exceptions). */
  error(message: string, properties?: Record<string, unknown>): void;
}

/** A logger that drops everything. */
export const SILENT_LOGGER: TransportLogger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
};
