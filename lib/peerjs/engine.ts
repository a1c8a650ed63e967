/**
 * The PeerJS signalling protocol (the `peerjs` 1.x client; the reference
 * server is `peer` 1.0.2) as a transport {@link Engine}: a pure state
 * machine, free of I/O, on an injected clock. Ids and the relay live behind
 * a {@link PeerDirectory} (`directory.ts`), so a cluster backplane can
 * replace the in-memory one without touching the rules here.
 *
 * **Inputs**, per connection and in this order: {@link PeerjsEngine.open}
 * once (the upgrade URL's query carries `key`, `id` and `token`); then any
 * number of {@link PeerjsEngine.frame}, {@link PeerjsEngine.oversize} and
 * {@link PeerjsEngine.wake}; then {@link PeerjsEngine.close} once. Calls
 * after `close` are ignored; `close` is idempotent. The directory answers
 * through {@link DirectoryHooks} (in memory: inside the call that asked).
 * {@link PeerjsEngine.http} answers the HTTP API (`http.ts`).
 *
 * **Outputs**, only through the connection's {@link Link}: `send` a text
 * frame, `close` with a code, `wake` me in so many ms (one wake serves the
 * frames waiting for budget, the alive timeout and the offline queue's
 * expiry). The engine never throws on any input, and reads the time only
 * through `now`.
 *
 * **Wire** (as `peer` 1.0.2, and where it says nothing or where we differ,
 * as decided here; every difference is marked *differs*):
 * - **Handshake**, on open: no `id`, `token` or `key` → `ERROR` "No id,
 *   token, or key supplied to websocket server" and close (1008); a key not
 *   served → `ERROR` "Invalid key provided" and close (1008); an id held
 *   with another token → `ID-TAKEN` "ID is taken" and close (1008); a free
 *   id → `OPEN`, then every message that waited for the id; the server at
 *   its concurrent limit → `ERROR` "Server has reached its concurrent user
 *   limit" and close (1013); in cluster mode, a cluster that cannot be
 *   asked → `ERROR` "Server is unavailable, try again later" and close
 *   (1013). *Differs:* refusals close with a code (1008, or 1013 at the
 *   limit or when unavailable); `peer` closes without one (the client sees
 *   1005 and ignores it: it has already acted on the message).
 * - *Differs:* **several keys**, each its own namespace: an id is unique
 *   under its key, and messages only reach ids under the sender's key.
 * - *Differs:* an id or token longer than `maxIdLength` /
 *   `maxTokenLength` (256) → `ERROR` "Invalid id provided" / "Invalid token
 *   provided" and close (1008); `peer` takes any length.
 * - **Reconnection**: the same id with the same token takes the session
 *   over, as in `peer`, and gets every message that waited. *Differs:* the
 *   new connection is sent `OPEN` (`peer` sends nothing, so a client that
 *   called `reconnect()` before the server saw its old socket close never
 *   hears `open`), and the old connection is closed (1000, "taken over by a
 *   reconnection"; `peer` leaves it open, still relaying as the id). A
 *   takeover is not held to the concurrent limit, as in `peer`.
 * - **Relay**: `OFFER`, `ANSWER`, `CANDIDATE`, `LEAVE` and `EXPIRE` go to
 *   `dst` as `{type, src, dst, payload}`, `src` always the sender's id
 *   (`peer` does the same; a client's own `src` is ignored, and counted);
 *   other fields are dropped, as in `peer`. A message to oneself is
 *   delivered.
 * - **Offline queue**: `OFFER`, `ANSWER` and `CANDIDATE` for an id no one
 *   holds wait for it (`LEAVE` and `EXPIRE` are dropped, as in `peer`). A
 *   queue expires `expireTimeout` ms after its first message, as `peer`'s
 *   does (which checks every second; we are exact): each sender with a
 *   message in it gets one `EXPIRE` with `src` the offline id, if still
 *   connected. *Differs:* queues are bounded, per id (`maxOfflinePerId`
 *   messages) and in total (`maxOfflineBytes`); a message that does not fit
 *   is not kept and its sender is told at once with `EXPIRE` (at most once
 *   per destination per `expireTimeout`), which the client reports as
 *   `peer-unavailable`, as if it had expired.
 * - **HEARTBEAT** keeps a connection alive, and is not answered. A
 *   connection that sends nothing for `aliveTimeout` ms is closed (1000,
 *   "alive timeout"), as `peer` does for missing heartbeats. *Differs:* any
 *   frame counts as a sign of life, not only `HEARTBEAT`. (Dead sockets are
 *   also found by the transport's WebSocket pings.)
 * - *Differs:* **malformed frames** (not JSON, not an object with a string
 *   `type`, a type a client may not send, a relayed message without a
 *   usable `dst`) change nothing and are answered `ERROR` with a
 *   `payload.msg` saying why (codes and texts in `codec.ts`, counted by
 *   code); the connection stays open. `peer` ignores them silently. The
 *   PeerJS client never sends one, and treats any `ERROR` as fatal, so only
 *   a broken client is affected. A binary frame holding UTF-8 JSON is text.
 *   *Differs:* a `LEAVE` without `dst` is malformed (`peer` then drops the
 *   sender's id while leaving its socket open and relaying).
 * - *Differs:* **an oversize frame** is answered `ERROR` and the transport
 *   closes the connection (1009); **a queue of frames past its bound**
 *   (shaping, below) is answered `ERROR` and closed (1008).
 *
 * **Limits** ({@link PeerjsLimits}): id and token length, the concurrent
 * limit (ids held on this instance), the offline queue per id and in total,
 * the frame size (the transport enforces it), and shaping. **Shaping**
 * works as in the other engines: each connection has a {@link Budget}; a
 * frame runs as soon as one whole token is there and pays its
 * {@link frameCost}; a message that has to wait in the offline queue pays
 * `queuedCost` more (it is kept, and answered by an `EXPIRE` later). Frames
 * over budget wait in a FIFO queue (frames sent before the handshake is
 * answered wait there too) and run in order when the budget allows; nothing
 * is dropped, and only a queue past `maxQueuedFrames` or `maxQueuedBytes`
 * closes the connection with 1008. The budget grows with what a connection
 * legitimately does: per distinct peer it delivered a message to within
 * the last `peerWindowMs` (up to {@link MAX_BUDGET_PEERS}), `ratePerPeer`
 * more a second and `burstPerPeer` more bankable. Only delivered messages
 * count, so signalling offline ids grows nothing; a new high of peers is
 * credited at once, once, so peers ageing out and coming back cannot farm
 * tokens.
 *
 * @module
 */

import { Budget, frameCost, FrameQueue, QUEUE_BOUNDS, type QueueBound } from "../shaping.ts";
import {
  type Engine,
  type EngineStatus,
  labelled,
  type Link,
  type MetricFamily,
  type Peer,
  type Sample,
} from "../transport/engine.ts";
import { utf8Exceeds } from "../transport/utf8.ts";
import {
  decode,
  encodeError,
  encodeRelay,
  ERROR_CODES,
  ERROR_MESSAGES,
  type ErrorCode,
  type Fault,
  HANDSHAKE_MESSAGES,
  HANDSHAKE_OUTCOMES,
  type HandshakeOutcome,
  IN_TYPES,
  type InType,
  isFault,
  type Message,
  OPEN,
} from "./codec.ts";
import {
  type ClaimOutcome,
  type DirectoryHooks,
  MemoryDirectory,
  type OfflineLimits,
  type PeerDirectory,
  RELAY_OUTCOMES,
  RELAY_PENDING,
  type RelayOutcome,
} from "./directory.ts";
import { HTTP_ROUTES, type HttpCounters, peerjsHttp } from "./http.ts";

/**
 * The limits of the PeerJS engine. The server sets the concurrent limit,
 * the expiry, the alive timeout and the offline queue's bounds from the
 * `--peerjs-*` settings, and takes the frame size, the base rate and burst
 * and the bounds of the shaping queue from the settings it shares with the
 * other engines; the rest keep their defaults.
 */
export interface PeerjsLimits {
  /** Largest frame, in bytes (the transport enforces it; the engine checks too). */
  maxFrameBytes: number;
  /** Longest id, in UTF-16 code units. */
  maxIdLength: number;
  /** Longest token, in UTF-16 code units. */
  maxTokenLength: number;
  /** Ids this instance may hold at once (`peer`'s `concurrent_limit`). */
  concurrentLimit: number;
  /** Ms the messages for an offline id wait, from the first (`peer`'s `expire_timeout`). */
  expireTimeout: number;
  /** Ms a connection may stay silent before it is closed; 0 = never (`peer`'s `alive_timeout`). */
  aliveTimeout: number;
  /** Messages that may wait for one offline id. */
  maxOfflinePerId: number;
  /** Bytes that may wait for offline ids, in total (each message counts 64 bytes more). */
  maxOfflineBytes: number;
  /** Sustained budget of a connection that signals no one, in tokens a second; 0 turns shaping off. */
  rate: number;
  /** Tokens a connection that signals no one may bank. */
  burst: number;
  /** Tokens a second added per distinct peer the connection delivered to recently. */
  ratePerPeer: number;
  /** Tokens granted, and bankable, per distinct peer the connection delivered to recently. */
  burstPerPeer: number;
  /** How long a peer delivered to counts as recent, in ms. */
  peerWindowMs: number;
  /** Tokens a message costs more when it has to wait for an offline id. */
  queuedCost: number;
  /** Frames that may wait in one connection's queue; one more closes it with 1008. */
  maxQueuedFrames: number;
  /** Bytes that may wait in one connection's queue; more closes it with 1008. */
  maxQueuedBytes: number;
}

/**
 * Limits used where none are given: `peer` 1.0.2's defaults where it has
 * them. A PeerJS client sends a heartbeat every 5 s and, per connection it
 * makes or answers, one offer or answer and a handful of candidates: the
 * base burst covers dozens of connections opened at once.
 */
export const DEFAULT_PEERJS_LIMITS: Readonly<PeerjsLimits> = {
  maxFrameBytes: 64 * 1024,
  maxIdLength: 256,
  maxTokenLength: 256,
  concurrentLimit: 5000,
  expireTimeout: 5000,
  aliveTimeout: 90_000,
  maxOfflinePerId: 64,
  maxOfflineBytes: 8 * 1024 * 1024,
  rate: 200,
  burst: 400,
  ratePerPeer: 2,
  burstPerPeer: 16,
  peerWindowMs: 60_000,
  queuedCost: 1,
  maxQueuedFrames: 1024,
  maxQueuedBytes: 1024 * 1024,
};

/** Distinct peers past this many add nothing to a connection's budget. */
export const MAX_BUDGET_PEERS = 64;

/** Destinations a connection remembers having been told are full (see the module notes). */
const MAX_REFUSED_REMEMBERED = 32;

/** WebSocket close codes the engine uses. */
export const PeerjsClose = {
  normal: 1000,
  policy: 1008,
  tooLarge: 1009,
  tryAgainLater: 1013,
} as const;

/** Where a connection is: waiting for its claim, holding its id, or gone. */
export type PConnState = "pending" | "open" | "closed";

/** One client connection as the engine sees it. */
export class PConn {
  /** Waiting for the directory's answer, holding its id, or gone. */
  state: PConnState = "pending";
  /** Frames waiting to be handled, in arrival order. */
  readonly queue: FrameQueue = new FrameQueue();
  /** When the connection last sent a frame (or opened), in ms. */
  lastSeen: number;
  /** Distinct peers it delivered to recently, as last fitted. */
  peers: number = 0;
  /** @internal The frame budget; null when shaping is off. */
  readonly budget: Budget | null;
  /** @internal The highest per-peer grant credited so far. */
  granted: number = 0;
  /** @internal Peers delivered to: id → when last, least recent first. */
  readonly recent: Map<string, number> = new Map();
  /** @internal When the pending wake is due, or -1. */
  wakeAt: number = -1;
  /** @internal The latest time a message it left in the offline queue may expire, or -1. */
  expiryWatch: number = -1;
  /** @internal Destinations it was told were full: id → until when not to tell again. */
  readonly refused: Map<string, number> = new Map();

  /** Made by {@link PeerjsEngine.open}. */
  constructor(
    readonly n: number,
    readonly link: Link,
    readonly peer: Peer,
    readonly key: string,
    readonly id: string,
    readonly token: string,
    limits: PeerjsLimits,
    now: number,
  ) {
    this.lastSeen = now;
    this.budget = limits.rate > 0 ? new Budget(limits.rate, limits.burst, now) : null;
  }

  /** Frames waiting in the queue. */
  get queued(): number {
    return this.queue.length;
  }
}

/** Running totals for metrics. */
export interface PeerjsStats {
  /** Connections ever opened. */
  connectionsOpened: number;
  /** How handshakes ended, by outcome. */
  handshakes: Record<HandshakeOutcome, number>;
  /** Well-formed frames handled, by type. */
  framesIn: Record<InType, number>;
  /** What became of relayed messages, by outcome. */
  relayed: Record<RelayOutcome, number>;
  /** Messages handed over from the offline queue when their id connected. */
  offlineDelivered: number;
  /** `EXPIRE`s the server made: for a queue that expired, or a message that did not fit. */
  expired: { timeout: number; full: number };
  /** Relayed messages whose client-supplied `src` was not the sender's id (it was replaced). */
  srcOverridden: number;
  /** Error replies, by code. */
  errors: Record<ErrorCode, number>;
  /** Frames that had to wait in their connection's queue. */
  framesDelayed: number;
  /** Connections closed with 1008 because their queue passed its bound, by bound. */
  queueClosed: Record<QueueBound, number>;
  /** Connections closed for saying nothing for `aliveTimeout`. */
  aliveTimeouts: number;
  /** The HTTP API's answers. */
  http: HttpCounters;
}

/** What the engine is built from. */
export interface PeerjsOptions {
  /** The keys served (`peer`'s `key`; several allowed); `["peerjs"]` when omitted. */
  keys?: readonly string[];
  /** The base path clients give as `path`, starting and ending with `/`; `/` when omitted. */
  path?: string;
  /** Answer `<key>/peers` (`peer`'s `allow_discovery`); off when omitted. */
  allowDiscovery?: boolean;
  /** Origins the HTTP API's CORS answers are for; any when omitted or empty. */
  corsOrigins?: readonly string[];
  /** Limits; missing ones take {@link DEFAULT_PEERJS_LIMITS}. */
  limits?: Partial<PeerjsLimits>;
  /** The clock, in ms (passed in: the engine reads no clock of its own). */
  now: () => number;
  /** Makes the ids `<key>/id` hands out (randomness is passed in too). */
  newId: () => string;
  /** Makes the directory, given its hooks; a {@link MemoryDirectory} when omitted. */
  directory?: (hooks: DirectoryHooks, limits: OfflineLimits) => PeerDirectory;
}

/** The PeerJS engine: an {@link Engine} with its counts. */
export interface PeerjsEngine extends Engine<PConn> {
  /** The limits in force. */
  readonly limits: Readonly<PeerjsLimits>;
  /** Running totals. */
  readonly stats: PeerjsStats;
  /** Ids held by this instance's connections. */
  readonly ids: number;
  /** The directory (ids, relay, offline queue). */
  readonly directory: PeerDirectory;
  /** The WebSocket path clients of the base path connect to (`<path>peerjs`). */
  readonly wsPath: string;
  /** A connection opened: the handshake is answered at once or when the directory answers. */
  open(link: Link, peer: Peer): PConn;
  /** A message arrived on `conn`. Never throws; frames over budget wait in order. */
  frame(conn: PConn, data: string | Uint8Array): void;
  /** A message over the size limit arrived: an `ERROR`, then close with 1009. */
  oversize(conn: PConn): void;
  /** The connection's wake came due (early, late or twice is harmless). */
  wake(conn: PConn): void;
  /** The connection closed: its id is released. Idempotent. */
  close(conn: PConn): void;
  /** The HTTP API. */
  http(req: Request): Response | undefined;
}

/** The WebSocket path under a base path, as the client builds it. */
export function peerjsWsPath(base: string): string {
  return `${base}peerjs`;
}

function counters<K extends string>(keys: readonly K[]): Record<K, number> {
  const o = {} as Record<K, number>;
  for (const k of keys) o[k] = 0;
  return o;
}

/**
 * Makes the PeerJS engine.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const engine = peerjsEngine({ now: () => 0, newId: () => crypto.randomUUID() });
 * const sent: Record<string, string[]> = { a: [], b: [] };
 * const connect = (id: string) =>
 *   engine.open(
 *     { send: (f) => sent[id].push(f), close() {}, wake() {} },
 *     { url: new URL(`ws://x/peerjs?key=peerjs&id=${id}&token=t-${id}`), address: "::1" },
 *   );
 * const a = connect("a");
 * connect("b");
 * engine.frame(a, '{"type":"OFFER","dst":"b","src":"spoofed","payload":{"sdp":"v=0"}}');
 * assert.deepEqual(sent.a, ['{"type":"OPEN"}']);
 * assert.deepEqual(sent.b, [
 *   '{"type":"OPEN"}',
 *   '{"type":"OFFER","src":"a","dst":"b","payload":{"sdp":"v=0"}}',
 * ]);
 * engine.close(a);
 * assert.equal(engine.ids, 1);
 * ```
 */
export function peerjsEngine(options: PeerjsOptions): PeerjsEngine {
  const limits: Readonly<PeerjsLimits> = { ...DEFAULT_PEERJS_LIMITS, ...options.limits };
  const now = options.now;
  const keys = new Set(options.keys ?? ["peerjs"]);
  const firstKey = [...keys][0] ?? "peerjs";
  const base = options.path ?? "/";
  const stats: PeerjsStats = {
    connectionsOpened: 0,
    handshakes: counters(HANDSHAKE_OUTCOMES),
    framesIn: counters(IN_TYPES),
    relayed: counters(RELAY_OUTCOMES),
    offlineDelivered: 0,
    expired: { timeout: 0, full: 0 },
    srcOverridden: 0,
    errors: counters(ERROR_CODES),
    framesDelayed: 0,
    queueClosed: counters(QUEUE_BOUNDS),
    aliveTimeouts: 0,
    http: { requests: counters(HTTP_ROUTES), unauthorized: 0 },
  };
  const conns = new Map<number, PConn>();
  let connections = 0;
  let ids = 0;
  let nextN = 1;

  const hooks: DirectoryHooks = { claimed, replaced, deliver, expired, relayed };
  const offline: OfflineLimits = {
    expireMs: limits.expireTimeout,
    maxPerId: limits.maxOfflinePerId,
    maxBytes: limits.maxOfflineBytes,
  };
  const directory = options.directory?.(hooks, offline) ?? new MemoryDirectory(hooks, offline);

  // ------------------------------------------------------------ answers

  function fail(conn: PConn, code: ErrorCode, detail?: string): void {
    stats.errors[code]++;
    if (conn.state !== "closed") {
      const msg = ERROR_MESSAGES[code];
      conn.link.send(encodeError(detail === undefined ? msg : `${msg}: ${detail}`));
    }
  }

  function closeWith(conn: PConn, code: number, reason: string): void {
    conn.link.close(code, reason);
    close(conn);
  }

  /** Ends a handshake that does not let the connection in. */
  function refuse(conn: PConn, outcome: Exclude<HandshakeOutcome, "open" | "takeover">): void {
    stats.handshakes[outcome]++;
    const msg = HANDSHAKE_MESSAGES[outcome];
    conn.link.send(encodeError(msg, outcome === "id-taken" ? "ID-TAKEN" : "ERROR"));
    closeWith(
      conn,
      outcome === "limit" || outcome === "unavailable"
        ? PeerjsClose.tryAgainLater
        : PeerjsClose.policy,
      msg,
    );
  }

  /** Lets a connection in: `OPEN`, what waited for its id, then its own waiting frames. */
  function admit(conn: PConn, outcome: "open" | "takeover"): void {
    stats.handshakes[outcome]++;
    conn.state = "open";
    ids++;
    conn.link.send(OPEN);
    stats.offlineDelivered += directory.flush(conn.n, conn.key, conn.id);
    drain(conn);
  }

  // ------------------------------------------------------------ directory hooks

  function claimed(n: number, outcome: ClaimOutcome): void {
    const conn = conns.get(n);
    // A closed connection released its claim; a directory answers no more.
    if (conn === undefined || conn.state !== "pending") return;
    switch (outcome) {
      case "taken":
        refuse(conn, "id-taken");
        return;
      case "unavailable":
        refuse(conn, "unavailable");
        return;
      case "fresh":
        if (ids >= limits.concurrentLimit) {
          directory.release(n, conn.key, conn.id);
          refuse(conn, "limit");
          return;
        }
        admit(conn, "open");
        return;
      case "takeover":
        admit(conn, "takeover");
        return;
    }
  }

  function replaced(n: number): void {
    const conn = conns.get(n);
    if (conn === undefined || conn.state !== "open") return;
    closeWith(conn, PeerjsClose.normal, "taken over by a reconnection");
  }

  function deliver(n: number, frame: string): void {
    const conn = conns.get(n);
    if (conn !== undefined && conn.state === "open") conn.link.send(frame);
  }

  function relayed(n: number, dst: string, outcome: RelayOutcome): void {
    stats.relayed[outcome]++;
    const conn = conns.get(n);
    if (conn !== undefined && conn.state === "open") relayEffects(conn, dst, outcome, now());
  }

  function expired(key: string, src: string, dst: string): void {
    stats.expired.timeout++;
    directory.relay(key, dst, src, encodeRelay("EXPIRE", dst, src, undefined), false, now());
  }

  // ------------------------------------------------------------ wakes

  /** Asks for a wake at `at` unless one is pending no later. */
  function arm(conn: PConn, at: number): void {
    if (conn.state === "closed") return;
    if (conn.wakeAt >= 0 && conn.wakeAt <= at) return;
    conn.wakeAt = at;
    const ms = at - now();
    conn.link.wake(ms > 0 ? ms : 0);
  }

  /** Arms what the connection still waits for besides its frame queue. */
  function rearm(conn: PConn, at: number): void {
    if (limits.aliveTimeout > 0) arm(conn, conn.lastSeen + limits.aliveTimeout);
    if (conn.expiryWatch > at) {
      const due = directory.nextDue;
      if (due >= 0 && due <= conn.expiryWatch) arm(conn, due);
      else conn.expiryWatch = -1;
    } else conn.expiryWatch = -1;
  }

  // ------------------------------------------------------------ shaping

  /**
   * Brings the budget in line with the distinct peers delivered to within
   * the window: rate and capacity follow the count; a new high is credited
   * once.
   */
  function fit(conn: PConn, budget: Budget, at: number): void {
    const horizon = at - limits.peerWindowMs;
    for (const [p, t] of conn.recent) {
      if (t > horizon) break;
      conn.recent.delete(p);
    }
    const n = conn.recent.size;
    if (n === conn.peers) return;
    conn.peers = n;
    const grant = limits.burstPerPeer * n;
    const credit = grant > conn.granted ? grant - conn.granted : 0;
    if (credit > 0) conn.granted = grant;
    budget.resize(at, limits.rate + limits.ratePerPeer * n, limits.burst + grant, credit);
  }

  /** Remembers a peer delivered to, most recent last. */
  function touch(conn: PConn, dst: string, at: number): void {
    const recent = conn.recent;
    recent.delete(dst);
    recent.set(dst, at);
    if (recent.size > MAX_BUDGET_PEERS) recent.delete(recent.keys().next().value!);
  }

  /** Handles one frame if the budget allows it now: 0, or the ms to wait before trying again. */
  function step(conn: PConn, data: string | Uint8Array): number {
    const budget = conn.budget;
    const at = now();
    if (budget !== null) {
      fit(conn, budget, at);
      if (!budget.ready(at)) return budget.waitMs(at);
      budget.charge(frameCost(data));
    }
    dispatch(conn, decode(data, limits.maxIdLength), at);
    return 0;
  }

  /** Puts a frame at the end of the queue; false if that closed the connection. */
  function enqueue(conn: PConn, data: string | Uint8Array): boolean {
    const bound = conn.queue.push(data, limits);
    if (bound === undefined) {
      stats.framesDelayed++;
      return true;
    }
    stats.queueClosed[bound]++;
    const max = bound === "frames"
      ? `${limits.maxQueuedFrames} frames`
      : `${limits.maxQueuedBytes} bytes`;
    fail(conn, "rate-limited", `more than ${max} waiting`);
    closeWith(conn, PeerjsClose.policy, "rate limit abuse");
    return false;
  }

  /** Handles waiting frames in order until one must wait, the queue is empty or the connection is not open. */
  function drain(conn: PConn): void {
    const wait = conn.queue.drain((data) => step(conn, data), () => conn.state === "open");
    if (wait > 0) arm(conn, now() + wait);
  }

  // ------------------------------------------------------------ messages

  function dispatch(conn: PConn, m: Message | Fault, at: number): void {
    if (isFault(m)) {
      fail(conn, m.code);
      return;
    }
    stats.framesIn[m.type]++;
    if (m.type === "HEARTBEAT") return;
    if (m.claimedSrc !== undefined && m.claimedSrc !== conn.id) stats.srcOverridden++;
    const frame = encodeRelay(m.type, conn.id, m.dst, m.payload);
    const queue = m.type !== "LEAVE" && m.type !== "EXPIRE";
    const outcome = directory.relay(conn.key, conn.id, m.dst, frame, queue, at);
    // A cluster directory answers later, through `relayed`.
    if (outcome === RELAY_PENDING) return;
    stats.relayed[outcome]++;
    relayEffects(conn, m.dst, outcome, at);
  }

  /** What a relay's outcome means for its sender: budget, expiry watch, or an `EXPIRE` now. */
  function relayEffects(conn: PConn, dst: string, outcome: RelayOutcome, at: number): void {
    switch (outcome) {
      case "delivered":
        touch(conn, dst, at);
        return;
      case "queued": {
        conn.budget?.charge(limits.queuedCost);
        const latest = at + limits.expireTimeout;
        if (latest > conn.expiryWatch) conn.expiryWatch = latest;
        const due = directory.nextDue;
        if (due >= 0) arm(conn, due);
        return;
      }
      case "full-id":
      case "full-total":
        refusedExpire(conn, dst, at);
        return;
      case "dropped":
        return;
    }
  }

  /** Tells a sender at once that its message for `dst` could not be kept, once per expiry period. */
  function refusedExpire(conn: PConn, dst: string, at: number): void {
    const until = conn.refused.get(dst);
    if (until !== undefined && until > at) return;
    conn.refused.delete(dst);
    conn.refused.set(dst, at + limits.expireTimeout);
    if (conn.refused.size > MAX_REFUSED_REMEMBERED) {
      conn.refused.delete(conn.refused.keys().next().value!);
    }
    stats.expired.full++;
    conn.link.send(encodeRelay("EXPIRE", dst, conn.id, undefined));
  }

  // ------------------------------------------------------------ the engine's inputs

  function open(link: Link, peer: Peer): PConn {
    const at = now();
    directory.sweep(at);
    connections++;
    stats.connectionsOpened++;
    const q = peer.url.searchParams;
    const id = q.get("id") ?? "";
    const token = q.get("token") ?? "";
    const given = q.get("key") ?? "";
    // A key that carried a verified bearer token joins the first key's
    // namespace, so the bearers of different tokens can reach each other.
    const key = peer.grant !== undefined && !keys.has(given) ? firstKey : given;
    const conn = new PConn(nextN++, link, peer, key, id, token, limits, at);
    conns.set(conn.n, conn);
    if (id === "" || token === "" || key === "") refuse(conn, "invalid-params");
    else if (!keys.has(key)) refuse(conn, "invalid-key");
    else if (peer.grant !== undefined && !peer.grant.ident(id)) refuse(conn, "forbidden");
    else if (id.length > limits.maxIdLength) refuse(conn, "invalid-id");
    else if (token.length > limits.maxTokenLength) refuse(conn, "invalid-token");
    else {
      directory.claim(conn.n, key, id, token);
      if (limits.aliveTimeout > 0) arm(conn, at + limits.aliveTimeout);
    }
    return conn;
  }

  function frame(conn: PConn, data: string | Uint8Array): void {
    if (conn.state === "closed") return;
    const at = now();
    directory.sweep(at);
    conn.lastSeen = at;
    if (utf8Exceeds(data, limits.maxFrameBytes)) {
      oversize(conn);
      return;
    }
    if (conn.state === "open" && conn.queue.length === 0) {
      const wait = step(conn, data);
      if (wait === 0) return;
      if (enqueue(conn, data)) arm(conn, at + wait);
      return;
    }
    // Behind waiting frames, or before the handshake is answered.
    enqueue(conn, data);
  }

  function oversize(conn: PConn): void {
    if (conn.state === "closed") return;
    fail(conn, "too-large", `over ${limits.maxFrameBytes} bytes`);
    closeWith(conn, PeerjsClose.tooLarge, "frame too large");
  }

  function wake(conn: PConn): void {
    conn.wakeAt = -1;
    if (conn.state === "closed") return;
    const at = now();
    directory.sweep(at);
    if (limits.aliveTimeout > 0 && at - conn.lastSeen >= limits.aliveTimeout) {
      stats.aliveTimeouts++;
      closeWith(conn, PeerjsClose.normal, "alive timeout");
      return;
    }
    drain(conn);
    rearm(conn, at);
  }

  function close(conn: PConn): void {
    if (conn.state === "closed") return;
    const was = conn.state;
    conn.state = "closed";
    connections--;
    conns.delete(conn.n);
    conn.queue.clear();
    if (was === "open") ids--;
    // Gives the id up, or cancels a claim still pending; a no-op otherwise.
    if (conn.key !== "" && conn.id !== "") directory.release(conn.n, conn.key, conn.id);
  }

  const http = peerjsHttp({
    path: base,
    keys,
    allowDiscovery: options.allowDiscovery ?? false,
    corsOrigins: options.corsOrigins ?? [],
    newId: options.newId,
    ids: (key) => directory.ids(key),
    counters: stats.http,
  });

  const engine: PeerjsEngine = {
    name: "peerjs",
    limits,
    stats,
    directory,
    wsPath: peerjsWsPath(base),
    get ids() {
      return ids;
    },
    get connections() {
      return connections;
    },
    open,
    frame,
    oversize,
    wake,
    close,
    http,
    metrics: (): MetricFamily[] => peerjsMetrics(engine),
    status: (): EngineStatus => ({
      title: "PeerJS",
      connect: `Give PeerJS this server's host and port, with path "${base}" and a key it ` +
        `serves: new Peer(id, { host, port, path: "${base}", key }) connects to {ws}.`,
      counts: [
        ["peerjs-connections", "Connections", connections],
        ["peerjs-ids", "Ids", ids],
        ["peerjs-queued", "Messages waiting for an id", directory.queued],
      ],
    }),
  };
  return engine;
}

/** The engine's counts and counters as metric families (the `peerjs_` names). */
export function peerjsMetrics(engine: PeerjsEngine): MetricFamily[] {
  const s = engine.stats;
  const one = (v: number): Sample[] => [[null, v]];
  return [
    {
      name: "peerjs_connections",
      type: "gauge",
      help: "Open PeerJS connections",
      samples: one(engine.connections),
    },
    {
      name: "peerjs_ids",
      type: "gauge",
      help: "PeerJS ids held by this instance's connections",
      samples: one(engine.ids),
    },
    {
      name: "peerjs_offline_messages",
      type: "gauge",
      help: "Messages waiting for an id that is not connected",
      samples: one(engine.directory.queued),
    },
    {
      name: "peerjs_offline_bytes",
      type: "gauge",
      help: "Bytes counted for messages waiting for an id that is not connected",
      samples: one(engine.directory.queuedBytes),
    },
    {
      name: "peerjs_connections_opened_total",
      type: "counter",
      help: "PeerJS connections accepted by the transport",
      samples: one(s.connectionsOpened),
    },
    {
      name: "peerjs_handshakes_total",
      type: "counter",
      help: "Handshakes by outcome (open and takeover let the connection in)",
      samples: labelled("outcome", HANDSHAKE_OUTCOMES, s.handshakes),
    },
    {
      name: "peerjs_frames_in_total",
      type: "counter",
      help: "Well-formed client frames by type",
      samples: labelled("type", IN_TYPES, s.framesIn),
    },
    {
      name: "peerjs_relayed_total",
      type: "counter",
      help: "Relayed messages by outcome",
      samples: labelled("outcome", RELAY_OUTCOMES, s.relayed),
    },
    {
      name: "peerjs_offline_delivered_total",
      type: "counter",
      help: "Waiting messages delivered when their id connected",
      samples: one(s.offlineDelivered),
    },
    {
      name: "peerjs_expired_total",
      type: "counter",
      help: "EXPIRE messages made by the server: a queue expired, or a message did not fit",
      samples: labelled("reason", ["timeout", "full"] as const, s.expired),
    },
    {
      name: "peerjs_src_overridden_total",
      type: "counter",
      help: "Relayed messages whose client-supplied src was not the sender's id",
      samples: one(s.srcOverridden),
    },
    {
      name: "peerjs_errors_total",
      type: "counter",
      help: "ERROR replies to malformed or refused frames, by code",
      samples: labelled("code", ERROR_CODES, s.errors),
    },
    {
      name: "peerjs_frames_delayed_total",
      type: "counter",
      help: "Client frames that waited in their connection's queue",
      samples: one(s.framesDelayed),
    },
    {
      name: "peerjs_queue_closed_total",
      type: "counter",
      help: "Connections closed with 1008 because their queue of waiting frames passed its bound",
      samples: labelled("bound", QUEUE_BOUNDS, s.queueClosed),
    },
    {
      name: "peerjs_alive_timeouts_total",
      type: "counter",
      help: "Connections closed for sending nothing within the alive timeout",
      samples: one(s.aliveTimeouts),
    },
    {
      name: "peerjs_http_requests_total",
      type: "counter",
      help: "PeerJS HTTP API requests answered, by route",
      samples: labelled("route", HTTP_ROUTES, s.http.requests),
    },
    {
      name: "peerjs_http_unauthorized_total",
      type: "counter",
      help: "PeerJS HTTP API requests answered 401 (unknown key, or discovery off)",
      samples: one(s.http.unauthorized),
    },
  ];
}
