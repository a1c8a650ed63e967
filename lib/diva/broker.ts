/**
 * The room broker: every rule of the signal protocol, free of I/O.
 *
 * The broker is a deterministic state machine. It is told that a connection
 * opened, that a frame arrived on it, or that it closed, and it answers by
 * calling its {@link Outbox}: send this frame to that connection, close that
 * connection with this code, or look up ICE servers for it. Time and
 * randomness are passed in, so tests drive it exactly. The server layer only
 * moves bytes between sockets and the broker.
 *
 * Every lookup on the hot path is a single `Map` access; nothing scans all
 * rooms or connections.
 *
 * @module
 */

import type { Grant } from "../auth/grant.ts";
import { base64url, CHALLENGE_TTL_MS, isKeyIdent } from "../auth/proof.ts";
import {
  type Call,
  CALL_NAMES,
  type CallName,
  CloseCode,
  decode,
  encodeBye,
  encodeError,
  encodeIce,
  encodeIdent,
  encodeJoin,
  encodeLeave,
  encodeSignal,
  encodeStun,
  ERROR_CODES,
  type ErrorCode,
  type Fault,
  isFault,
  OUT_TYPES,
  type OutType,
  PONG,
  SIGNAL_FROM,
  SIGNAL_TO,
} from "./codec.ts";
import { globalColon } from "./names.ts";
import { Budget, frameCost, FrameQueue } from "../shaping.ts";
import { utf8Exceeds } from "../transport/utf8.ts";

export { CloseCode, OUT_TYPES, type OutType };

/** A question the broker asks the outside (verification needs asynchronous crypto). */
export type Question =
  | { readonly kind: "token"; readonly token: string }
  | {
    readonly kind: "proof";
    readonly ident: string;
    readonly challenge: string;
    readonly signature: string;
  };

/**
 * A connection's access from a verified token: the grant, and when it ends
 * on the broker's own clock (the caller converts the token's Unix `exp`).
 */
export interface Access {
  /** What the token grants. */
  readonly grant: Grant;
  /** When the token expires, on the broker's clock (Infinity for never). */
  readonly expiresAt: number;
}

/**
 * Which joins need what. Without rules every room is open to everyone, and
 * TURN credentials go to everyone who asks.
 */
export interface AuthRules {
  /** True when joining `room` needs a token granting it. */
  readonly protectedRoom: (room: string) => boolean;
  /** True when joining `room` needs an ident proven by its key on this connection. */
  readonly proofRoom: (room: string) => boolean;
  /** True when tokens are in use: TURN credentials then go only to grants that allow them. */
  readonly grants: boolean;
}

/** No rules: everything is open, as in DIVA v2. */
export const OPEN_RULES: AuthRules = {
  protectedRoom: () => false,
  proofRoom: () => false,
  grants: false,
};

/** The effects the broker asks for; the server carries them out. */
export interface Outbox<H> {
  /** Send one text frame to a connection. */
  send(to: H, frame: string): void;
  /** Close a connection with a WebSocket close code and reason. */
  close(to: H, code: number, reason: string): void;
  /**
   * Look up ICE servers for a connection (async work such as HMAC), then
   * answer with {@link Broker.iceReply} or {@link Broker.iceFailed}; the
   * connection's later frames wait until then. `ident` names the TURN user;
   * TURN entries are included only when `turn` is true.
   */
  ice(to: H, conn: Connection<H>, ident: string, turn: boolean): void;
  /**
   * Call {@link Broker.wake} for `conn` in `delayMs` milliseconds: frames wait
   * for its budget. A later request for the same connection may replace an
   * earlier one.
   */
  wake(to: H, conn: Connection<H>, delayMs: number): void;
  /**
   * Answer a question (verify a token, verify an ident proof), then call
   * {@link Broker.answer}; the connection's later frames wait until then.
   * Without it, such calls are answered `unavailable`.
   */
  ask?(to: H, conn: Connection<H>, question: Question): void;
  /**
   * Call {@link Broker.tick} in `delayMs` milliseconds: a session's grace
   * ends then. One request is pending at a time; a later one replaces it.
   * Without it, sessions are off.
   */
  schedule?(delayMs: number): void;
}

/**
 * The shared directory of a cluster (see `lib/cluster/`). Without one the
 * broker is the only authority and decides every join at once. With one, a
 * join is claimed in the directory first and completes later, through
 * {@link Broker.memberJoined} or {@link Broker.claimRefused}; members on other
 * instances appear in rooms with `conn === null`. Connections cross this seam
 * as their ids ({@link Connection.id}), never as objects; `_H` is unused and
 * kept so `Directory<H>` still names the directory of a `Broker<H>`.
 */
export interface Directory<_H = unknown> {
  /**
   * Claims `room:ident` for the connection with id `conn` across the
   * cluster; answers asynchronously, with that id.
   */
  claim(conn: number, room: string, ident: string): void;
  /** Gives up a global ident held here (a leave or a close). */
  release(g: string, room: string): void;
  /** Forwards a frame to a member on another instance; false if that cannot be done now. */
  relay(instance: string, g: string, frame: string): boolean;
  /** The room has neither local members nor pending claims any more. */
  unwatch(room: string): void;
}

/** The configurable limits of the broker. */
export interface Limits {
  /** Largest accepted frame, in bytes; a larger one closes with 1009. */
  maxFrameBytes: number;
  /** Most global idents one connection may hold at once. */
  maxIdentsPerConnection: number;
  /** Most members a room may have. */
  maxPeersPerRoom: number;
  /**
   * Sustained budget of a connection that holds no pair, in tokens per
   * second; a frame costs at least one token (see `frameCost` in
   * `lib/shaping.ts`). 0 turns shaping off.
   */
  rate: number;
  /** Tokens a connection that holds no pair may bank for a burst. */
  burst: number;
  /** Tokens per second added to the budget for each pair the connection is part of. */
  ratePerPair: number;
  /** Tokens granted, and bankable, for each pair the connection is part of. */
  burstPerPair: number;
  /** Pairs announced or ended (stun, bye) per second that one connection's joins and leaves may cause. */
  churnRate: number;
  /** Pairs announced or ended that one connection's joins and leaves may cause in a burst. */
  churnBurst: number;
  /** Frames that may wait in one connection's queue; one more closes it with 1008. */
  maxQueuedFrames: number;
  /** Bytes that may wait in one connection's queue; more closes it with 1008. */
  maxQueuedBytes: number;
  /** Milliseconds a session's idents stay held after its socket closed (0 turns sessions off). */
  sessionGrace: number;
  /** Frames kept for a session in grace; one more ends the session at once. */
  sessionBufferFrames: number;
  /** Bytes kept for a session in grace; more end the session at once. */
  sessionBufferBytes: number;
}

/** Limits used where none are given. */
export const DEFAULT_LIMITS: Readonly<Limits> = {
  maxFrameBytes: 64 * 1024,
  maxIdentsPerConnection: 32,
  maxPeersPerRoom: 256,
  rate: 200,
  burst: 400,
  ratePerPair: 2,
  burstPerPair: 100,
  churnRate: 64,
  churnBurst: 1024,
  maxQueuedFrames: 1024,
  maxQueuedBytes: 1024 * 1024,
  sessionGrace: 10_000,
  sessionBufferFrames: 256,
  sessionBufferBytes: 256 * 1024,
};

/**
 * Pairs that count towards a connection's budget: past this many, more pairs
 * add nothing, so no connection can bank more than `burst + 256 × burstPerPair`.
 */
export const MAX_BUDGET_PAIRS = 256;

/** What a broker is built from. */
export interface BrokerOptions<H> {
  /** Where effects go. */
  outbox: Outbox<H>;
  /** The clock, in milliseconds. */
  now: () => number;
  /** Fills a buffer with cryptographically random bytes. */
  randomBytes: (buf: Uint8Array) => void;
  /** Limits; missing ones take {@link DEFAULT_LIMITS}. */
  limits?: Partial<Limits>;
  /** The cluster directory; absent, the broker runs alone. */
  directory?: Directory<H>;
  /** Which joins need a token or a proof; {@link OPEN_RULES} when absent. */
  auth?: AuthRules;
}

/** Running totals for metrics. */
export interface BrokerStats {
  /** Accepted frames by call. */
  framesIn: Record<CallName, number>;
  /** Frames sent by message type. */
  framesOut: Record<OutType, number>;
  /** Error replies by code. */
  errors: Record<ErrorCode, number>;
  /** Characters of relayed signal frames (bytes for ASCII payloads such as SDP). */
  bytesRelayed: number;
  /** Connections ever opened. */
  connectionsOpened: number;
  /** Frames that had to wait in a connection's queue (budget, claim or ice answer). */
  framesDelayed: number;
  /** Connections closed with 1008 because their queue passed its bound, by bound. */
  queueClosed: { frames: number; bytes: number };
  /** Sessions: asked for, socket gone (grace began), resumed, refused, ended, frames kept. */
  sessions: {
    opened: number;
    detached: number;
    resumed: number;
    refused: number;
    expired: number;
    overflow: number;
    kept: number;
  };
}

/** A global ident held by a connection, as a member of its room. */
export interface Member<H> {
  /** The global ident, `room:ident`. */
  readonly g: string;
  /** The ident part. */
  readonly ident: string;
  /** The room it is a member of. */
  readonly room: Room<H>;
  /** The holder, or null for a member held on another instance (a resume moves it). */
  conn: Connection<H> | null;
  /** The instance holding a remote member ("" for a local one). */
  readonly instance: string;
}

/** A room: its members in join order (a `Map` keeps insertion order). */
export interface Room<H> {
  /** The room's name. */
  readonly name: string;
  /** Members by global ident, in join order. */
  readonly members: Map<string, Member<H>>;
  /** Local members plus claims in flight; at zero a cluster view is dropped. */
  local: number;
}

/** Why a connection's frames wait in its queue, besides its budget. */
export const WAIT_STATES = ["none", "claim", "ice", "auth", "prove"] as const;

/** One of {@link WAIT_STATES}. */
export type WaitState = typeof WAIT_STATES[number];

/** One client connection as the broker sees it. */
export class Connection<H> {
  /** Global idents held, by global ident. */
  readonly idents: Map<string, Member<H>> = new Map();
  /** The ident most recently issued by `["ident"]`, for the legacy join. */
  issued: string | undefined = undefined;
  /** Set once the connection closed or was asked to close. */
  closed = false;
  /**
   * What the connection waits for before its next frame may run: a join
   * being claimed in the cluster directory, an `["ice"]` answer, or the
   * verification of a token or a proof.
   */
  wait: WaitState = "none";
  /** The connection's limits: the broker's, with what its grant overrides. */
  readonly limits: Readonly<Limits>;
  /** What the connection's token grants, if it presented one. */
  grant: Grant | null = null;
  /** When the token expires, on the broker's clock (Infinity without one). */
  expiresAt: number = Infinity;
  /** The wake last asked of the outbox (broker clock), or -1. */
  wakeAsked: number = -1;
  /** The pending challenge for an ident proof, and when it expires. */
  challenge: { value: string; expiresAt: number } | undefined = undefined;
  /** The session this connection holds, if it asked for one. */
  session: Session<H> | undefined = undefined;
  /** Set when its socket closed while its session keeps its idents (in grace). */
  detached: boolean = false;
  /** Set when the broker itself closed it (a policy close): its session ends with it. */
  final: boolean = false;
  /** The random TURN user of a connection that holds no ident and was issued none. */
  turnUser: string | undefined = undefined;
  /** Key idents this connection proved it holds the private key of. */
  readonly proven: Set<string> = new Set();
  /** Pairs this connection is part of: for each ident held, the other members of its room. */
  pairs: number = 0;
  /** Frames waiting to be handled, in arrival order, and the wake pending for them. */
  readonly queue: FrameQueue = new FrameQueue();
  /** @internal The frame budget; null when shaping is off. */
  readonly budget: Budget | null;
  /** @internal The budget for pairs announced and ended by joins and leaves. */
  readonly churn: Budget | null;

  /** Made by {@link Broker.open}. */
  constructor(
    readonly id: number,
    readonly handle: H,
    brokerLimits: Limits,
    now: number,
    access?: Access,
  ) {
    const limits = access === undefined
      ? brokerLimits
      : { ...brokerLimits, ...access.grant.limits };
    this.limits = limits;
    if (access !== undefined) {
      this.grant = access.grant;
      this.expiresAt = access.expiresAt;
    }
    if (limits.rate > 0) {
      this.budget = new Budget(limits.rate, limits.burst, now);
      this.churn = new Budget(limits.churnRate, limits.churnBurst, now);
    } else {
      this.budget = null;
      this.churn = null;
    }
  }

  /** Frames waiting in the queue. */
  get queued(): number {
    return this.queue.length;
  }
}

/**
 * A resumable session: who holds it, its current token, and, while its
 * socket is gone, when its grace ends and the frames kept for it.
 */
export interface Session<H> {
  /** The current resume token (random, single-use: replaced at each resume). */
  token: string;
  /** The connection that holds it. */
  conn: Connection<H>;
  /** When the grace ends (broker clock), or -1 while a socket holds it. */
  until: number;
  /** Frames sent to it while in grace, in order. */
  readonly kept: string[];
  /** Bytes (UTF-16 units) of `kept`. */
  keptBytes: number;
}

/** Random bytes in a session token: 192 bits. */
const SESSION_TOKEN_BYTES = 24;

/** The close code for a socket whose session was resumed on another connection. */
export const RESUMED_ELSEWHERE = 4001;

/** Letters in an issued ident: 24 × log2(26) ≈ 112 bits of randomness. */
const IDENT_LETTERS = 24;

function counters<K extends string>(keys: readonly K[]): Record<K, number> {
  const o = {} as Record<K, number>;
  for (const k of keys) o[k] = 0;
  return o;
}

/**
 * The room broker.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const sent: [number, string][] = [];
 * const broker = new Broker<number>({
 *   outbox: { send: (to, f) => sent.push([to, f]), close() {}, ice() {}, wake() {} },
 *   now: () => Date.now(),
 *   randomBytes: (b) => crypto.getRandomValues(b),
 * });
 * const a = broker.open(1);
 * const b = broker.open(2);
 * broker.frame(a, '["join","alice","lobby"]');
 * broker.frame(b, '["join","bob","lobby"]');
 * assert.deepEqual(sent, [
 *   [1, '["join","lobby:alice"]'],
 *   [2, '["join","lobby:bob"]'],
 *   [1, '["stun","lobby:alice","lobby:bob",false]'],
 *   [2, '["stun","lobby:bob","lobby:alice",true]'],
 * ]);
 * broker.close(b);
 * assert.deepEqual(sent.at(-1), [1, '["bye","lobby:alice","lobby:bob"]']);
 * broker.close(a);
 * assert.equal(broker.rooms, 0);
 * ```
 */
export class Broker<H> {
  /** The limits in force. */
  readonly limits: Readonly<Limits>;
  /** Running totals for metrics. */
  readonly stats: BrokerStats = {
    framesIn: counters(CALL_NAMES),
    framesOut: counters(OUT_TYPES),
    errors: counters(ERROR_CODES),
    bytesRelayed: 0,
    connectionsOpened: 0,
    framesDelayed: 0,
    queueClosed: { frames: 0, bytes: 0 },
    sessions: { opened: 0, detached: 0, resumed: 0, refused: 0, expired: 0, overflow: 0, kept: 0 },
  };

  readonly #outbox: Outbox<H>;
  readonly #now: () => number;
  readonly #randomBytes: (buf: Uint8Array) => void;
  readonly #members = new Map<string, Member<H>>();
  readonly #rooms = new Map<string, Room<H>>();
  readonly #issued = new Map<string, Connection<H>>();
  readonly #directory: Directory<H> | undefined;
  readonly #auth: AuthRules;
  /** Remote members by instance, to drop them all when an instance dies. */
  readonly #remote = new Map<string, Set<string>>();
  /** Sessions by their current token. */
  readonly #sessions = new Map<string, Session<H>>();
  /**
   * Sessions in grace, in the order their grace began: with one grace for
   * all, that is the order they end in, so expiring is a walk from the front.
   */
  readonly #grace = new Set<Session<H>>();
  /** When the pending tick is due (broker clock), or -1. */
  #tickAt = -1;
  /** Connections whose join the directory is claiming, by id (one claim each at a time). */
  readonly #claiming = new Map<number, Connection<H>>();
  readonly #random = new Uint8Array(48);
  #connections = 0;
  #nextId = 1;

  /** A broker with no connections. */
  constructor(options: BrokerOptions<H>) {
    this.#outbox = options.outbox;
    this.#now = options.now;
    this.#randomBytes = options.randomBytes;
    this.limits = { ...DEFAULT_LIMITS, ...options.limits };
    this.#directory = options.directory;
    this.#auth = options.auth ?? OPEN_RULES;
  }

  /** Open connections. */
  get connections(): number {
    return this.#connections;
  }

  /** Rooms with at least one member. */
  get rooms(): number {
    return this.#rooms.size;
  }

  /** Global idents held. */
  get idents(): number {
    return this.#members.size;
  }

  /** Idents issued by `["ident"]` and not yet forgotten. */
  get issued(): number {
    return this.#issued.size;
  }

  /** A connection opened; `handle` is what the outbox is given to reach it. */
  open(handle: H, access?: Access): Connection<H> {
    this.#connections++;
    this.stats.connectionsOpened++;
    const conn = new Connection(this.#nextId++, handle, this.limits, this.#now(), access);
    this.#rearm(conn);
    return conn;
  }

  /**
   * A frame arrived on `conn`. Never throws on any input. A frame the
   * connection's budget cannot pay for yet, or that arrives while earlier
   * frames wait, joins the connection's queue and is handled in order later.
   */
  frame(conn: Connection<H>, data: string | Uint8Array): void {
    if (conn.closed) return;
    if (utf8Exceeds(data, this.limits.maxFrameBytes)) {
      this.tooLarge(conn);
      return;
    }
    if (conn.queue.length === 0 && conn.wait === "none") {
      const wait = this.#step(conn, data);
      if (wait === 0) return;
      if (!this.#enqueue(conn, data)) return;
      this.#schedule(conn, wait);
      return;
    }
    this.#enqueue(conn, data);
  }

  /**
   * A frame over `maxFrameBytes` arrived (found here, or by a transport that
   * checks sizes as bytes arrive): `too-large`, then close with 1009.
   */
  tooLarge(conn: Connection<H>): void {
    if (conn.closed) return;
    this.#fail(conn, "frame", "too-large", `frame exceeds ${this.limits.maxFrameBytes} bytes`);
    this.#close(conn, CloseCode.tooLarge, "frame too large");
  }

  /**
   * The connection's wake came due: handles the frames its budget now pays
   * for. Calling it early, late or more than once is harmless.
   */
  wake(conn: Connection<H>): void {
    if (conn.closed) return;
    conn.queue.wakeAt = -1;
    conn.wakeAsked = -1;
    if (this.#now() >= conn.expiresAt) {
      this.#fail(conn, "auth", "forbidden", "the token expired; send a fresh one with auth");
      this.#close(conn, CloseCode.policy, "token expired");
      return;
    }
    this.#drain(conn);
    this.#rearm(conn);
  }

  /**
   * Handles one frame if the budgets allow it now. Returns 0 when it was
   * handled, or how many ms to wait before trying it again.
   */
  #step(conn: Connection<H>, data: string | Uint8Array): number {
    const budget = conn.budget;
    if (budget === null) {
      this.#dispatch(conn, data, decode(data));
      return 0;
    }
    const now = this.#now();
    if (!budget.ready(now)) return budget.waitMs(now);
    const call = decode(data);
    // Joins and leaves announce or end pairs: they also need churn budget.
    if (!isFault(call) && (call[0] === "join" || call[0] === "leave")) {
      if (!conn.churn!.ready(now)) return conn.churn!.waitMs(now);
    }
    budget.charge(frameCost(data));
    this.#dispatch(conn, data, call);
    return 0;
  }

  /** Puts a frame at the end of the queue; false if that closed the connection. */
  #enqueue(conn: Connection<H>, data: string | Uint8Array): boolean {
    const bound = conn.queue.push(data, this.limits);
    if (bound === undefined) {
      this.stats.framesDelayed++;
      return true;
    }
    this.stats.queueClosed[bound]++;
    const max = bound === "frames"
      ? `${this.limits.maxQueuedFrames} frames`
      : `${this.limits.maxQueuedBytes} bytes`;
    this.#fail(
      conn,
      "frame",
      "rate-limited",
      `sending faster than allowed: more than ${max} waiting`,
    );
    this.#close(conn, CloseCode.policy, "rate limit abuse");
    return false;
  }

  /** Asks the outbox for a wake in `ms`, unless an earlier one is pending. */
  #schedule(conn: Connection<H>, ms: number): void {
    conn.queue.schedule(this.#now(), ms);
    this.#rearm(conn);
  }

  /**
   * Asks the outbox for one wake, at the earliest of what the connection
   * waits for: its budget, or its token's expiry. (The outbox keeps one wake
   * per connection, a later request replacing an earlier one.)
   */
  #rearm(conn: Connection<H>): void {
    let at = conn.queue.wakeAt;
    if (conn.expiresAt < Infinity && (at < 0 || conn.expiresAt < at)) at = conn.expiresAt;
    if (at < 0 || at === conn.wakeAsked || conn.closed) return;
    conn.wakeAsked = at;
    this.#outbox.wake(conn.handle, conn, Math.max(0, Math.ceil(at - this.#now())));
  }

  /**
   * Handles waiting frames in order until one must wait (for its budget, a
   * claim or an ice answer) or the queue is empty. An ice answer given from
   * inside Outbox.ice lands here while the frame that asked is still at the
   * head; the loop already running goes on.
   */
  #drain(conn: Connection<H>): void {
    const wait = conn.queue.drain(
      (data) => this.#step(conn, data),
      () => conn.wait === "none" && !conn.closed,
    );
    if (wait > 0) this.#schedule(conn, wait);
  }

  #dispatch(conn: Connection<H>, data: string | Uint8Array, call: Call | Fault): void {
    if (isFault(call)) {
      this.#fail(conn, call.call, call.code, call.detail);
      return;
    }
    this.stats.framesIn[call[0]]++;
    switch (call[0]) {
      case "signal":
        this.#signal(conn, call, data);
        return;
      case "join":
        if (call.length === 3) this.#join(conn, call[1], call[2]);
        else if (conn.issued === undefined) {
          this.#fail(conn, "join", "no-ident", 'legacy join needs an ident from ["ident"] first');
        } else this.#join(conn, conn.issued, call[1]);
        return;
      case "leave":
        this.#leave(conn, call[1]);
        return;
      case "ident":
        this.#ident(conn);
        return;
      case "ice":
        // Later frames wait for the answer, so replies keep the order of calls.
        conn.wait = "ice";
        this.#outbox.ice(conn.handle, conn, this.#iceIdent(conn), this.#mayTurn(conn));
        return;
      case "ping":
        this.#send(conn, PONG, "pong");
        return;
      case "auth":
        this.#ask(conn, "auth", { kind: "token", token: call[1] });
        return;
      case "challenge":
        this.#challenge(conn);
        return;
      case "prove":
        this.#prove(conn, call[1], call[2]);
        return;
      case "session":
        this.#session(conn);
        return;
      case "resume":
        this.#resume(conn, call[1]);
        return;
    }
  }

  /** Sessions held (attached or in grace). */
  get sessions(): number {
    return this.#sessions.size;
  }

  /** Sessions whose socket is gone and whose grace runs. */
  get sessionsInGrace(): number {
    return this.#grace.size;
  }

  /** A fresh session token. */
  #sessionToken(): string {
    const b = new Uint8Array(SESSION_TOKEN_BYTES);
    this.#randomBytes(b);
    return base64url(b);
  }

  /** `["session"]`: a session for this connection, or a fresh token for the one it has. */
  #session(conn: Connection<H>): void {
    if (this.limits.sessionGrace <= 0 || this.#outbox.schedule === undefined) {
      this.#fail(conn, "session", "unavailable", "sessions are off on this server");
      return;
    }
    let s = conn.session;
    if (s === undefined) {
      s = { token: "", conn, until: -1, kept: [], keptBytes: 0 };
      conn.session = s;
    } else this.#sessions.delete(s.token);
    s.token = this.#sessionToken();
    this.#sessions.set(s.token, s);
    this.stats.sessions.opened++;
    this.#send(conn, JSON.stringify(["session", s.token]), "session");
  }

  /**
   * `["resume", token]`: takes over every global ident of the session's
   * connection, atomically, with no `bye` or `stun` for anyone; the old
   * socket, if still open, is closed with {@link RESUMED_ELSEWHERE}; the
   * frames kept during the grace follow the reply, in order.
   */
  #resume(conn: Connection<H>, token: string): void {
    const s = this.#sessions.get(token);
    const refuse = (why: string) => {
      this.stats.sessions.refused++;
      this.#fail(conn, "resume", "forbidden", why);
    };
    if (s === undefined) return refuse("no such session (expired, used, or never issued)");
    if (s.conn === conn) return refuse("this connection holds the session already");
    if (conn.idents.size > 0 || conn.session !== undefined) {
      return refuse("resume on a fresh connection, before it joins or asks for a session");
    }
    const old = s.conn;
    // A resume must not widen what the new connection may do.
    for (const m of old.idents.values()) {
      const why = this.#forbidden(conn, m.ident, m.room.name, old.proven);
      if (why !== undefined) return refuse(why);
    }
    this.#sessions.delete(token);
    this.#grace.delete(s);
    const wasAttached = !old.detached && !old.closed;
    // The idents move as they are: rooms, pairs and peers see nothing.
    for (const m of old.idents.values()) {
      m.conn = conn;
      conn.idents.set(m.g, m);
    }
    old.idents.clear();
    for (const id of old.proven) conn.proven.add(id);
    if (old.issued !== undefined) {
      this.#issued.set(old.issued, conn);
      conn.issued = old.issued;
      old.issued = undefined;
    }
    const pairs = old.pairs;
    old.pairs = 0;
    this.#pairs(conn, pairs);
    old.session = undefined;
    s.conn = conn;
    s.until = -1;
    s.token = this.#sessionToken();
    this.#sessions.set(s.token, s);
    conn.session = s;
    this.stats.sessions.resumed++;
    const kept = s.kept.splice(0);
    s.keptBytes = 0;
    if (wasAttached) {
      // Half-open: the old socket never learnt it was gone.
      old.final = true;
      this.#outbox.close(old.handle, RESUMED_ELSEWHERE, "session resumed elsewhere");
      old.closed = true;
      this.#connections--;
      old.queue.clear();
    } else old.closed = true;
    const idents = [...conn.idents.keys()];
    this.#send(conn, JSON.stringify(["resume", { token: s.token, idents }]), "resume");
    for (const f of kept) this.#outbox.send(conn.handle, f);
  }

  /**
   * The time a tick was asked for came: sessions whose grace ran out end
   * now, as a close would have (their idents leave, and peers get `bye`).
   */
  tick(): void {
    this.#tickAt = -1;
    const now = this.#now();
    for (const s of this.#grace) {
      if (s.until > now) break;
      this.#endSession(s, "expired");
    }
    this.#armTick();
  }

  /** Ends every session in grace at once (a graceful shutdown: peers get their `bye`). */
  endSessions(): void {
    for (const s of [...this.#grace]) this.#endSession(s, "expired");
  }

  #armTick(): void {
    const first = this.#grace.values().next();
    if (first.done) return;
    const at = first.value.until;
    if (this.#tickAt >= 0 && this.#tickAt <= at) return;
    this.#tickAt = at;
    this.#outbox.schedule!(Math.max(0, Math.ceil(at - this.#now())));
  }

  /** A session in grace ends: its idents leave their rooms, and nothing of it stays. */
  #endSession(s: Session<H>, why: "expired" | "overflow"): void {
    this.#grace.delete(s);
    this.#sessions.delete(s.token);
    this.stats.sessions[why]++;
    const conn = s.conn;
    conn.session = undefined;
    conn.detached = false;
    conn.closed = true;
    s.kept.length = 0;
    for (const m of conn.idents.values()) this.#remove(m);
    if (conn.issued !== undefined) {
      this.#issued.delete(conn.issued);
      conn.issued = undefined;
    }
  }

  /** Keeps a frame for a session in grace; past its bounds, the session ends. */
  #keep(conn: Connection<H>, frame: string): void {
    const s = conn.session!;
    const l = this.limits;
    if (
      s.kept.length >= l.sessionBufferFrames || s.keptBytes + frame.length > l.sessionBufferBytes
    ) {
      this.#endSession(s, "overflow");
      return;
    }
    s.kept.push(frame);
    s.keptBytes += frame.length;
    this.stats.sessions.kept++;
  }

  /** True when the connection may have TURN credentials. */
  #mayTurn(conn: Connection<H>): boolean {
    return !this.#auth.grants || conn.grant?.turn === true;
  }

  /** Asks the outbox a question; later frames wait for {@link Broker.answer}. */
  #ask(conn: Connection<H>, call: "auth" | "prove", q: Question): void {
    if (this.#outbox.ask === undefined) {
      this.#fail(conn, call, "unavailable", "this server does not verify tokens or proofs");
      return;
    }
    conn.wait = call;
    this.#outbox.ask(conn.handle, conn, q);
  }

  /** `["challenge"]`: a fresh, single-use challenge for an ident proof. */
  #challenge(conn: Connection<H>): void {
    const bytes = new Uint8Array(32);
    this.#randomBytes(bytes);
    const value = base64url(bytes);
    conn.challenge = { value, expiresAt: this.#now() + CHALLENGE_TTL_MS };
    this.#send(conn, JSON.stringify(["challenge", value]), "challenge");
  }

  /** `["prove", ident, signature]`: checks the form and the challenge, then asks. */
  #prove(conn: Connection<H>, ident: string, signature: string): void {
    if (!isKeyIdent(ident)) {
      this.#fail(conn, "prove", "bad-args", "ident is not a key ident (43 base64url characters)");
      return;
    }
    const c = conn.challenge;
    // A challenge is used once, whatever the outcome.
    conn.challenge = undefined;
    if (c === undefined || this.#now() > c.expiresAt) {
      this.#fail(conn, "prove", "forbidden", 'no fresh challenge: ask ["challenge"] first');
      return;
    }
    this.#ask(conn, "prove", { kind: "proof", ident, challenge: c.value, signature });
  }

  /**
   * Answers the connection's pending question: for a token, the access it
   * gives (or why not); for a proof, whether it holds. The frames that
   * waited behind it run next.
   */
  answer(conn: Connection<H>, question: Question, result: Access | boolean | string): void {
    if (conn.closed) return;
    if (question.kind === "token") {
      if (conn.wait !== "auth") return;
      if (typeof result === "object") {
        const grant = result.grant;
        if (conn.grant !== null && conn.grant.subject !== grant.subject) {
          this.#fail(conn, "auth", "forbidden", "a fresh token must have the same subject");
        } else {
          conn.grant = grant;
          conn.expiresAt = result.expiresAt;
          const exp = grant.expiresAt === Infinity ? null : Math.floor(grant.expiresAt / 1000);
          this.#send(conn, JSON.stringify(["auth", { sub: grant.subject, exp }]), "auth");
          this.#rearm(conn);
        }
      } else {
        const why = typeof result === "string" ? result : "the token was refused";
        this.#fail(conn, "auth", "forbidden", why);
      }
    } else {
      if (conn.wait !== "prove") return;
      if (result === true) {
        conn.proven.add(question.ident);
        this.#send(conn, JSON.stringify(["prove", question.ident]), "prove");
      } else this.#fail(conn, "prove", "forbidden", "the signature does not prove the ident");
    }
    conn.wait = "none";
    this.#drain(conn);
  }

  /**
   * Answers the connection's pending `["ice"]` call once the transport has the
   * ICE servers; the frames that waited behind it run next.
   */
  iceReply(conn: Connection<H>, servers: readonly unknown[]): void {
    if (conn.closed || conn.wait !== "ice") return;
    this.#send(conn, encodeIce(servers), "ice");
    conn.wait = "none";
    this.#drain(conn);
  }

  /** The ICE servers could not be had: the pending `["ice"]` call gets `unavailable`. */
  iceFailed(conn: Connection<H>): void {
    if (conn.closed || conn.wait !== "ice") return;
    this.#fail(conn, "ice", "unavailable", "ICE servers cannot be had right now; retry later");
    conn.wait = "none";
    this.#drain(conn);
  }

  /**
   * A connection closed, for any reason: each of its global idents leaves its
   * room (remaining members get `bye`) and nothing of it stays. Idempotent.
   */
  close(conn: Connection<H>): void {
    if (conn.closed || conn.detached) return;
    const s = conn.session;
    if (s !== undefined && !conn.final && this.limits.sessionGrace > 0) {
      // Its idents stay held for the grace; what peers send it is kept.
      conn.detached = true;
      this.#connections--;
      conn.queue.clear();
      conn.wait = "none";
      s.until = this.#now() + this.limits.sessionGrace;
      this.#grace.add(s);
      this.stats.sessions.detached++;
      this.#armTick();
      return;
    }
    conn.closed = true;
    this.#connections--;
    conn.queue.clear();
    if (s !== undefined) {
      this.#sessions.delete(s.token);
      conn.session = undefined;
    }
    for (const m of conn.idents.values()) this.#remove(m);
    if (conn.issued !== undefined) {
      this.#issued.delete(conn.issued);
      conn.issued = undefined;
    }
  }

  #signal(conn: Connection<H>, call: Call & { 0: "signal" }, raw: string | Uint8Array): void {
    const from = call[1];
    const to = call[2];
    const sender = this.#members.get(from);
    const target = this.#members.get(to);
    // Every held global ident is a valid one: names are checked only on a miss.
    if (sender === undefined && globalColon(from) < 0) {
      this.#fail(conn, "signal", "bad-args", SIGNAL_FROM);
      return;
    }
    if (target === undefined && globalColon(to) < 0) {
      this.#fail(conn, "signal", "bad-args", SIGNAL_TO);
      return;
    }
    if (sender === undefined || sender.conn !== conn) {
      this.#fail(conn, "signal", "not-owner", `${from} is not held by this connection`);
      return;
    }
    const room = sender.room.name;
    if (to.charCodeAt(room.length) !== 0x3a || !to.startsWith(room)) {
      this.#fail(conn, "signal", "cross-room", `${to} is not in room ${room}`);
      return;
    }
    if (target === undefined) {
      this.#fail(conn, "signal", "unknown-peer", `${to} is not held by anyone`);
      return;
    }
    const frame = encodeSignal(raw, call);
    if (target.conn !== null) this.#send(target.conn, frame, "signal");
    else if (this.#directory!.relay(target.instance, to, frame)) this.stats.framesOut.signal++;
    else {
      this.#fail(conn, "signal", "unavailable", "the cluster is unreachable; retry later");
      return;
    }
    this.stats.bytesRelayed += frame.length;
  }

  #join(conn: Connection<H>, ident: string, roomName: string): void {
    const g = roomName + ":" + ident;
    const held = this.#members.get(g);
    if (held !== undefined && held.conn === conn) {
      this.#send(conn, encodeJoin(g), "join");
      return;
    }
    // Before anything that would tell an outsider who is in the room.
    const why = this.#forbidden(conn, ident, roomName);
    if (why !== undefined) {
      this.#fail(conn, "join", "forbidden", why);
      return;
    }
    if (held !== undefined) {
      this.#fail(conn, "join", "ident-taken", g);
      return;
    }
    const maxIdents = conn.limits.maxIdentsPerConnection;
    if (conn.idents.size >= maxIdents) {
      this.#fail(conn, "join", "limit", `at most ${maxIdents} idents per connection`);
      return;
    }
    let room = this.#rooms.get(roomName);
    if (room !== undefined && room.members.size >= this.limits.maxPeersPerRoom) {
      this.#fail(conn, "join", "limit", `room ${roomName} is full`);
      return;
    }
    if (room === undefined) {
      room = { name: roomName, members: new Map(), local: 0 };
      this.#rooms.set(roomName, room);
    }
    if (this.#directory !== undefined) {
      room.local++;
      conn.wait = "claim";
      this.#claiming.set(conn.id, conn);
      this.#directory.claim(conn.id, roomName, ident);
      return;
    }
    this.#add(room, ident, g, conn, "");
  }

  /** Why `conn` may not join `room` as `ident`, or undefined when it may. */
  #forbidden(
    conn: Connection<H>,
    ident: string,
    room: string,
    proven: Set<string> = conn.proven,
  ): string | undefined {
    const grant = conn.grant;
    if (this.#auth.protectedRoom(room) && (grant === null || !grant.room(room))) {
      return grant === null
        ? `room ${room} needs a token that grants it`
        : `the token does not grant room ${room}`;
    }
    if (grant !== null && !grant.ident(ident)) return `the token does not grant ident ${ident}`;
    if (this.#auth.proofRoom(room) && !proven.has(ident)) {
      return `room ${room} needs an ident proven by its key on this connection`;
    }
    return undefined;
  }

  /**
   * Adds a member and announces it: a local joiner gets its `join` reply and
   * one `stun` (as initiator) per member already there; every local member
   * already there gets one `stun` (not initiator) for the joiner.
   */
  #add(room: Room<H>, ident: string, g: string, conn: Connection<H> | null, instance: string) {
    const m: Member<H> = { g, ident, room, conn, instance };
    if (conn !== null) this.#send(conn, encodeJoin(g), "join");
    for (const t of room.members.values()) {
      if (t.conn !== null) {
        this.#send(t.conn, encodeStun(t.g, g, false), "stun");
        this.#pairs(t.conn, 1);
      }
      if (conn !== null) this.#send(conn, encodeStun(g, t.g, true), "stun");
    }
    if (conn !== null) {
      const announced = room.members.size;
      conn.churn?.charge(announced);
      this.#pairs(conn, announced);
    }
    room.members.set(g, m);
    this.#members.set(g, m);
    if (conn !== null) {
      room.local++;
      conn.idents.set(g, m);
    } else {
      let set = this.#remote.get(instance);
      if (set === undefined) this.#remote.set(instance, set = new Set());
      set.add(g);
    }
  }

  /**
   * Cluster: a join took effect, in the cluster's order of joins. `id` is
   * the id of the local connection that claimed it (its join completes now),
   * or null for a member on `instance`. Announces the pairs as a local join
   * would. An id with no claim outstanding is ignored.
   */
  memberJoined(roomName: string, ident: string, instance: string, id: number | null): void {
    const conn = id === null ? null : this.#claimant(id);
    if (conn === undefined) return;
    const g = roomName + ":" + ident;
    let room = this.#rooms.get(roomName);
    const stale = this.#members.get(g);
    if (conn !== null) {
      conn.wait = "none";
      // The directory gave `g` to us, so a remote holder in our view is stale.
      if (stale !== undefined && stale.conn === null && !conn.closed) this.#remove(stale);
      if (room !== undefined) room.local--;
      if (conn.closed) {
        // Claimed for a connection that is gone: give it back at once.
        this.#directory?.release(g, roomName);
        if (room !== undefined) this.#dropIfUnwatched(room);
        return;
      }
    } else if (stale !== undefined) return;
    if (room === undefined) {
      room = { name: roomName, members: new Map(), local: 0 };
      this.#rooms.set(roomName, room);
    }
    this.#add(room, ident, g, conn, instance);
    if (conn !== null) this.#drain(conn);
  }

  /** Cluster: a member on another instance left (or its instance died). */
  memberLeft(g: string): void {
    const m = this.#members.get(g);
    if (m === undefined || m.conn !== null) return;
    this.#remove(m);
  }

  /** Cluster: a frame relayed from another instance for local member `g`. */
  deliver(g: string, frame: string): void {
    const m = this.#members.get(g);
    if (m !== undefined && m.conn !== null) this.#send(m.conn, frame, "signal");
  }

  /** Cluster: every member held by `instance` left (the instance died). */
  instanceGone(instance: string): void {
    const set = this.#remote.get(instance);
    if (set === undefined) return;
    for (const g of set) this.memberLeft(g);
  }

  /**
   * Cluster: the claim of the connection with id `id` was refused; its join
   * fails with `code`. An id with no claim outstanding is ignored.
   */
  claimRefused(id: number, roomName: string, code: ErrorCode, detail: string): void {
    const conn = this.#claimant(id);
    if (conn === undefined) return;
    conn.wait = "none";
    const room = this.#rooms.get(roomName);
    if (room !== undefined) {
      room.local--;
      this.#dropIfUnwatched(room);
    }
    if (conn.closed) return;
    this.#fail(conn, "join", code, detail);
    this.#drain(conn);
  }

  /** The connection whose claim answered (closed or not), no longer claiming. */
  #claimant(id: number): Connection<H> | undefined {
    const conn = this.#claiming.get(id);
    this.#claiming.delete(id);
    return conn;
  }

  /** Cluster: the members of a room as this instance sees them, in join order. */
  roomMembers(roomName: string): { g: string; instance: string; local: boolean }[] {
    const room = this.#rooms.get(roomName);
    if (room === undefined) return [];
    return [...room.members.values()].map((m) => ({
      g: m.g,
      instance: m.instance,
      local: m.conn !== null,
    }));
  }

  /** Cluster: every global ident held by local connections, room by room in join order. */
  localMembers(): { g: string; room: string }[] {
    const out: { g: string; room: string }[] = [];
    for (const room of this.#rooms.values()) {
      for (const m of room.members.values()) {
        if (m.conn !== null) out.push({ g: m.g, room: room.name });
      }
    }
    return out;
  }

  /** Cluster: instances holding members this instance sees. */
  remoteInstances(): string[] {
    return [...this.#remote.keys()];
  }

  /**
   * Drops a room once nothing local is in it or on its way in. Alone, that
   * means empty; in a cluster, the remote members this instance no longer
   * needs to see go too.
   */
  #dropIfUnwatched(room: Room<H>): void {
    if (room.local > 0) return;
    for (const m of room.members.values()) {
      this.#members.delete(m.g);
      this.#forgetRemote(m);
    }
    room.members.clear();
    if (this.#rooms.get(room.name) === room) this.#rooms.delete(room.name);
    this.#directory?.unwatch(room.name);
  }

  #forgetRemote(m: Member<H>): void {
    const set = this.#remote.get(m.instance);
    if (set === undefined) return;
    set.delete(m.g);
    if (set.size === 0) this.#remote.delete(m.instance);
  }

  #leave(conn: Connection<H>, g: string): void {
    const m = this.#members.get(g);
    if (m === undefined || m.conn !== conn) {
      this.#fail(conn, "leave", "not-owner", `${g} is not held by this connection`);
      return;
    }
    this.#send(conn, encodeLeave(g), "leave");
    conn.churn?.charge(m.room.members.size - 1);
    this.#remove(m);
  }

  /**
   * Takes a member out of every index and says `bye` to the rest of the room
   * (the local rest: other instances tell their own members).
   */
  #remove(m: Member<H>): void {
    const room = m.room;
    room.members.delete(m.g);
    this.#members.delete(m.g);
    if (m.conn !== null) {
      m.conn.idents.delete(m.g);
      room.local--;
      this.#directory?.release(m.g, room.name);
      this.#pairs(m.conn, -room.members.size);
    } else this.#forgetRemote(m);
    for (const t of room.members.values()) {
      if (t.conn !== null) {
        this.#send(t.conn, encodeBye(t.g, m.g), "bye");
        this.#pairs(t.conn, -1);
      }
    }
    this.#dropIfUnwatched(room);
  }

  /**
   * `conn` became part of `delta` more pairs (or fewer, when negative). Its
   * frame budget follows: each new pair brings `burstPerPair` tokens at once
   * and `ratePerPair` more a second, up to {@link MAX_BUDGET_PAIRS} pairs.
   */
  #pairs(conn: Connection<H>, delta: number): void {
    const before = conn.pairs < MAX_BUDGET_PAIRS ? conn.pairs : MAX_BUDGET_PAIRS;
    conn.pairs += delta;
    const budget = conn.budget;
    if (budget === null || conn.closed) return;
    const n = conn.pairs < MAX_BUDGET_PAIRS ? conn.pairs : MAX_BUDGET_PAIRS;
    if (n === before) return;
    const l = conn.limits;
    budget.resize(
      this.#now(),
      l.rate + l.ratePerPair * n,
      l.burst + l.burstPerPair * n,
      n > before ? (n - before) * l.burstPerPair : 0,
    );
  }

  #ident(conn: Connection<H>): void {
    let id = this.#randomIdent();
    while (this.#issued.has(id)) id = this.#randomIdent();
    if (conn.issued !== undefined) this.#issued.delete(conn.issued);
    conn.issued = id;
    this.#issued.set(id, conn);
    this.#send(conn, encodeIdent(id), "ident");
  }

  /**
   * The user a TURN credential is made out to: the first global ident the
   * connection holds, else the ident `["ident"]` issued it, else a random
   * one drawn once for the connection; behind the token's subject and a `/`
   * when it has a token.
   */
  #iceIdent(conn: Connection<H>): string {
    let user: string | undefined;
    // The global ident, so the same ident in two rooms has two TURN users.
    for (const m of conn.idents.values()) {
      user = m.g;
      break;
    }
    // A random user is drawn once per connection, so its credentials can be reused.
    user ??= conn.issued ?? (conn.turnUser ??= this.#randomIdent());
    // With a token, the user names its subject too, so coturn's logs trace back to it.
    const sub = conn.grant?.subject;
    return sub ? `${sub}/${user}` : user;
  }

  /** 24 lowercase letters, drawn without modulo bias. */
  #randomIdent(): string {
    const buf = this.#random;
    let s = "";
    while (s.length < IDENT_LETTERS) {
      this.#randomBytes(buf);
      for (let i = 0; i < buf.length && s.length < IDENT_LETTERS; i++) {
        // 234 = 9 × 26: bytes at or above it would favour the first letters.
        if (buf[i] < 234) s += String.fromCharCode(0x61 + (buf[i] % 26));
      }
    }
    return s;
  }

  #send(conn: Connection<H>, frame: string, type: OutType): void {
    if (conn.closed) return;
    this.stats.framesOut[type]++;
    if (conn.detached) this.#keep(conn, frame);
    else this.#outbox.send(conn.handle, frame);
  }

  #fail(conn: Connection<H>, call: string, code: ErrorCode, detail: string): void {
    this.stats.errors[code]++;
    this.#send(conn, encodeError(call, code, detail), "error");
  }

  #close(conn: Connection<H>, code: number, reason: string): void {
    // A connection the broker closes (abuse, too large, expired token) has
    // no grace: its session ends with it.
    conn.final = true;
    this.#outbox.close(conn.handle, code, reason);
    this.close(conn);
  }
}
