/**
 * The seam between a transport and a protocol engine.
 *
 * An engine owns one wire protocol (DIVA, y-webrtc, PeerJS) and nothing
 * else: it is told that a connection opened, that a message arrived on it,
 * that a wake it asked for came due, and that it closed. It answers through
 * the connection's {@link Link}: send this frame, close with this code, wake
 * me in so many milliseconds. The transport moves bytes, enforces what every
 * protocol shares (message size, slow readers, idle peers) and knows no
 * protocol rule.
 *
 * Call order, per connection: `open` once; then any number of `frame` and
 * `wake`, in the order they happen; then `close` once, whatever ended the
 * connection (the engine asking, the peer leaving, the server stopping).
 * An engine may call its link's `close` from inside `open`, `frame` or
 * `wake`; the transport calls `close` on the engine afterwards, never from
 * inside the call that asked.
 *
 * @module
 */

import type { Grant } from "../auth/grant.ts";
import type { PresentedToken } from "../auth/request.ts";

/** What an engine may ask of the transport for one connection. */
export interface Link {
  /** Sends one text frame. */
  send(frame: string): void;
  /** Closes the connection with a WebSocket close code and reason. */
  close(code: number, reason: string): void;
  /** Calls {@link Engine.wake} for this connection in `delayMs` ms, replacing an earlier request. */
  wake(delayMs: number): void;
}

/** Where a connection comes from, as far as an engine may need it. */
export interface Peer {
  /** The URL the client upgraded on (its query carries protocol parameters such as PeerJS's). */
  readonly url: URL;
  /** The client's address (the proxy's, unless a trusted proxy names another). */
  readonly address: string;
  /** What the token the client upgraded with grants, when it presented one. */
  readonly grant?: Grant;
}

/** One sample of a metric: its labels (none for a plain value) and value. */
export type Sample = readonly [labels: Readonly<Record<string, string>> | null, value: number];

/**
 * One sample per key of a counter record, labelled `label="<key>"`, in the
 * order of `keys` (an `as const` vocabulary, so every key is exported even
 * at zero).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { labelled } from "./engine.ts";
 *
 * assert.deepEqual(labelled("reason", ["expired", "bad"] as const, { expired: 2, bad: 0 }), [
 *   [{ reason: "expired" }, 2],
 *   [{ reason: "bad" }, 0],
 * ]);
 * ```
 */
export function labelled<K extends string>(
  label: string,
  keys: readonly K[],
  values: Record<K, number>,
): Sample[] {
  return keys.map((k) => [{ [label]: k }, values[k]] as const);
}

/** The Prometheus metric types the server exports. */
export const METRIC_TYPES = ["counter", "gauge"] as const;

/** One of {@link METRIC_TYPES}. */
export type MetricType = typeof METRIC_TYPES[number];

/** A metric family as the metrics page renders it. */
export interface MetricFamily {
  /** The full metric name, e.g. `signal_rooms`. */
  readonly name: string;
  /** Counter or gauge. */
  readonly type: MetricType;
  /** One line of help. */
  readonly help: string;
  /** The samples. */
  readonly samples: readonly Sample[];
}

/** What the status page shows of an engine: counts only, never names or payloads. */
export interface EngineStatus {
  /** The protocol's name for people, e.g. "DIVA signal protocol". */
  readonly title: string;
  /** How a client connects, as plain text (the page escapes it); `{ws}` stands for the URL. */
  readonly connect: string;
  /** Counts with an HTML id and a label, e.g. `["rooms", "Rooms", 3]`. */
  readonly counts: readonly (readonly [id: string, label: string, value: number])[];
}

/**
 * A protocol engine. `C` is its per-connection state, which the transport
 * keeps and hands back.
 */
export interface Engine<C = unknown> {
  /** A short name used in metrics and logs, e.g. `diva`. */
  readonly name: string;
  /**
   * For an engine that shares a path with others: true when `first`, the
   * connection's first message, belongs to this protocol.
   */
  accepts?(first: string | Uint8Array): boolean;
  /**
   * True when the engine itself ends a connection whose token expires (and
   * may take a refreshed token on the connection, as DIVA's `["auth"]`
   * does). For any other engine the transport closes the connection with
   * 1008 `token expired` when the token it upgraded with expires.
   */
  readonly refreshesTokens?: boolean;
  /** A connection opened (or, on a shared path, sent its first message). */
  open(link: Link, peer: Peer): C;
  /** A message arrived (already checked against the size limit). */
  frame(conn: C, data: string | Uint8Array): void;
  /**
   * A message over the size limit arrived: the engine may say why in its own
   * words; the transport then closes the connection with 1009.
   */
  oversize?(conn: C): void;
  /** A wake the engine asked for came due. */
  wake(conn: C): void;
  /**
   * The connection closed, for any reason. Called once. `final` is true when
   * the server cut it for a policy (a slow reader, an oversize frame, a bug):
   * an engine that keeps state past a socket (sessions) drops it then; any
   * other close (the client's, or a drop) it may survive.
   */
  close(conn: C, final?: boolean): void;
  /** Open connections the engine holds. */
  readonly connections: number;
  /** The engine's metrics. */
  metrics(): MetricFamily[];
  /** The engine's part of the status page. */
  status(): EngineStatus;
  /**
   * The engine's own HTTP routes, asked before the server's for every request
   * that is not a WebSocket upgrade: a response, or `undefined` to pass.
   */
  http?(req: Request): Response | undefined;
}

/** Where engines are mounted: a path, and the engines that share it. */
export interface Mount {
  /** The URL path that upgrades to this mount, e.g. `/` or `/peerjs`. */
  readonly path: string;
  /**
   * Where a bearer token is on an upgrade of this path, when it is not where
   * browsers usually put it (`?token=` or the `jwt` subprotocol): PeerJS's
   * `token` is its own session token, so its bearer token rides in `key`.
   */
  readonly token?: (req: Request, url: URL) => PresentedToken | undefined;
  /**
   * The first engine takes every connection when it opens. When several
   * share the path, the first message may move the connection to another:
   * if the first engine's {@link Engine.accepts} refuses the message and
   * another's accepts it, the first engine is told the connection closed and
   * the other opens it.
   */
  readonly engines: readonly Engine[];
}
