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
  /**
   * Sessions across the cluster (a directory has all of the session
   * methods, or none: then a session is its instance's alone, and a resume
   * on another instance is refused). Records that this instance holds
   * session `token` with `idents`: its socket is gone and its grace ends in
   * `graceMs`, or 0 while a socket holds it; `replaces` is the token it
   * replaces, if any. Called again whenever that changes.
   */
  sessionHeld?(token: string, idents: readonly string[], graceMs: number, replaces?: string): void;
  /** Session `token`, held here, ended (its idents are released as usual). */
  sessionEnded?(token: string): void;
  /**
   * Looks for session `token` on another instance, for the connection with
   * id `conn`: answers {@link Broker.sessionFound} or
   * {@link Broker.resumeRefused}.
   */
  lookup?(conn: number, token: string): void;
  /**
   * Moves session `token` and its `idents` (as {@link Broker.sessionFound}
   * was told them) to connection `conn` here, under the token `fresh`,
   * atomically: each ident then comes in its room's turn through
   * {@link Broker.memberMoved}, and what the old holder kept through
   * {@link Broker.sessionHandoff}; or the resume is refused
   * ({@link Broker.resumeRefused}).
   */
  take?(conn: number, token: string, fresh: string, idents: readonly string[]): void;
  /**
   * A resume of session `token`, held here, by connection `conn`: replaces
   * `token` by `fresh` (with `idents`) unless the session moved away
   * meanwhile; answers {@link Broker.sessionRotated} or
   * {@link Broker.resumeRefused}.
   */
  rotate?(conn: number, token: string, fresh: string, idents: readonly string[]): void;
  /**
   * Hands what a session that moved away kept to its new holder, the
   * connection with id `conn` on `instance` (null: nothing can be handed).
   */
  handoff?(instance: string, conn: number, handoff: Handoff | null): void;
}

/** What a session's old holder hands over to the instance it moved to. */
export interface Handoff {
  /** Frames to send after the `resume` reply, in order (see {@link Session.recent}, {@link Session.kept}). */
  readonly frames: readonly string[];
  /** Frames sent before the first of them (the reply's `from`). */
  readonly from: number;
  /** Key idents the old connection proved. */
  readonly proven: readonly string[];
  /** The ident `["ident"]` issued it, or null. */
  readonly issued: string | null;
}

/** A resume through the cluster directory, while it is under way ({@link Connection.resuming}). */
export interface Resuming {
  /** The token presented. */
  readonly token: string;
  /** True when this instance holds the session, false when it moves here. */
  readonly local: boolean;
  /** The token the connection gets ("" until drawn). */
  fresh: string;
  /** The global idents moving here, once found. */
  idents: readonly string[];
  /** Those whose move has not taken its turn yet. */
  readonly waiting: Set<string>;
  /** What the old holder handed over: undefined until it came, null if it cannot come. */
  handoff: Handoff | null | undefined;
  /** Frames sent to the connection meanwhile, in order. */
  readonly held: string[];
  /** Bytes (UTF-16 units) of `held`. */
  heldBytes: number;
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
  /**
   * Sessions: asked for, socket gone (grace began), resumed, refused, ended,
   * frames kept, and moved (resumed on another instance of the cluster).
   */
  sessions: {
    opened: number;
    detached: number;
    resumed: number;
    refused: number;
    expired: number;
    overflow: number;
    kept: number;
    moved: number;
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
  /** The instance holding a remote member ("" for a local one; a move changes it). */
  instance: string;
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
export const WAIT_STATES = ["none", "claim", "ice", "auth", "prove", "resume"] as const;

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
  /** A resume it makes through the cluster directory, while under way. */
  resuming: Resuming | undefined = undefined;
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
  /** Frames sent to it (or kept) since its last `session` or `resume` reply. */
  sent: number;
  /**
   * The last frames sent to its socket, and when: a socket that died before
   * the server noticed lost them, so a resume sends them again (bounded as
   * `kept`, and by the grace in age).
   */
  readonly recent: { at: number; frame: string }[];
  /** Bytes (UTF-16 units) of `recent`. */
  recentBytes: number;
  /** Where it moved, while its old connection still holds idents whose move has not taken its turn. */
  movedTo?: { readonly instance: string; readonly conn: number };
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
    sessions: {
      opened: 0,
      detached: 0,
      resumed: 0,
      refused: 0,
      expired: 0,
      overflow: 0,
      kept: 0,
      moved: 0,
    },
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
  /** True when the directory carries sessions across the cluster. */
  readonly #clustered: boolean;
  /** Connections resuming through the directory, by id. */
  readonly #resuming = new Map<number, Connection<H>>();
  /** Global idents on their way to a resuming connection: relays for them wait with it. */
  readonly #arriving = new Map<string, Connection<H>>();
  readonly #random = new Uint8Array(48);
  /** The letters of the ident being drawn. */
  readonly #letters = new Uint8Array(IDENT_LETTERS);
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
    const d = options.directory;
    this.#clustered = d?.sessionHeld !== undefined && d.sessionEnded !== undefined &&
      d.lookup !== undefined && d.take !== undefined && d.rotate !== undefined &&
      d.handoff !== undefined;
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
    const replaces = conn.session?.token;
    let s = conn.session;
    if (s === undefined) {
      s = {
        token: "",
        conn,
        until: -1,
        kept: [],
        keptBytes: 0,
        sent: 0,
        recent: [],
        recentBytes: 0,
      };
      conn.session = s;
    } else this.#sessions.delete(s.token);
    s.token = this.#sessionToken();
    this.#sessions.set(s.token, s);
    this.#record(s, replaces);
    this.stats.sessions.opened++;
    this.#send(conn, JSON.stringify(["session", s.token]), "session");
    // The client counts what it receives from here on.
    s.sent = 0;
    s.recent.length = 0;
    s.recentBytes = 0;
  }

  /**
   * `["resume", token]`: takes over every global ident of the session's
   * connection, atomically, with no `bye` or `stun` for anyone; the old
   * socket, if still open, is closed with {@link RESUMED_ELSEWHERE}; the
   * frames the old socket may have lost (the last ones sent to it, see
   * {@link Session.recent}) and those kept during the grace follow the reply,
   * in order. The reply says how many (`resent`) and, in `from`, how many
   * frames were sent since the previous `session` or `resume` reply before
   * the first of them: a client that counted what it received skips the
   * ones it has.
   */
  #resume(conn: Connection<H>, token: string, fresh?: string): void {
    const s = this.#sessions.get(token);
    const refuse = (why: string) => {
      this.stats.sessions.refused++;
      this.#fail(conn, "resume", "forbidden", why);
    };
    if (s === undefined && this.#clustered && fresh === undefined) {
      if (conn.idents.size > 0 || conn.session !== undefined) {
        return refuse("resume on a fresh connection, before it joins or asks for a session");
      }
      // Not held here: perhaps on another instance of the cluster.
      this.#startResume(conn, token, false);
      this.#directory!.lookup!(conn.id, token);
      return;
    }
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
    if (this.#clustered && fresh === undefined) {
      // The directory agrees first: the session may be moving to another instance.
      const r = this.#startResume(conn, token, true);
      r.fresh = this.#sessionToken();
      this.#directory!.rotate!(conn.id, token, r.fresh, [...old.idents.keys()]);
      return;
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
      // The session's issued ident replaces one this connection was issued.
      if (conn.issued !== undefined) this.#issued.delete(conn.issued);
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
    s.token = fresh ?? this.#sessionToken();
    this.#sessions.set(s.token, s);
    conn.session = s;
    this.stats.sessions.resumed++;
    const resend = s.recent.map((r) => r.frame).concat(s.kept.splice(0));
    const from = s.sent - resend.length;
    s.keptBytes = 0;
    s.recent.length = 0;
    s.recentBytes = 0;
    if (wasAttached) {
      // Half-open: the old socket never learnt it was gone.
      old.final = true;
      this.#outbox.close(old.handle, RESUMED_ELSEWHERE, "session resumed elsewhere");
      old.closed = true;
      this.#connections--;
      old.queue.clear();
    } else old.closed = true;
    const idents = [...conn.idents.keys()];
    this.#send(
      conn,
      JSON.stringify(["resume", { token: s.token, idents, from, resent: resend.length }]),
      "resume",
    );
    s.sent = 0;
    s.recent.length = 0;
    s.recentBytes = 0;
    for (const f of resend) {
      this.#outbox.send(conn.handle, f);
      this.#sent(s, f);
    }
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
    this.#ended(s.token);
    this.stats.sessions[why]++;
    const conn = s.conn;
    conn.session = undefined;
    conn.detached = false;
    conn.closed = true;
    s.kept.length = 0;
    s.recent.length = 0;
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
      // A session moving away is no longer this instance's to end: the frame is lost.
      if (s.movedTo !== undefined) {
        this.stats.sessions.overflow++;
        return;
      }
      this.#endSession(s, "overflow");
      return;
    }
    s.kept.push(frame);
    s.keptBytes += frame.length;
    s.sent++;
    this.stats.sessions.kept++;
  }

  /** Notes a frame sent to a session's socket, keeping the last ones for a resume. */
  #sent(s: Session<H>, frame: string): void {
    const l = this.limits;
    const now = this.#now();
    const recent = s.recent;
    s.sent++;
    recent.push({ at: now, frame });
    s.recentBytes += frame.length;
    while (
      recent.length > 0 &&
      (recent.length > l.sessionBufferFrames || s.recentBytes > l.sessionBufferBytes ||
        recent[0].at < now - l.sessionGrace)
    ) s.recentBytes -= recent.shift()!.frame.length;
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
   * A connection with a session keeps its idents for the grace instead,
   * unless the close is `final`: the server cut it for a policy (a slow
   * reader, an oversize frame, a bug). A client that means to leave says so
   * (`leave`) before it closes.
   */
  close(conn: Connection<H>, final = false): void {
    if (conn.closed || conn.detached) return;
    if (final) conn.final = true;
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
      this.#record(s);
      return;
    }
    conn.closed = true;
    this.#connections--;
    conn.queue.clear();
    if (s !== undefined) {
      this.#sessions.delete(s.token);
      conn.session = undefined;
      this.#ended(s.token);
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
      // Its session moving to another instance, the connection takes nothing more.
      const gone = conn.closed || conn.session?.movedTo !== undefined;
      if (conn.session?.movedTo !== undefined) conn.wait = "resume";
      // The directory gave `g` to us, so a remote holder in our view is stale.
      if (stale !== undefined && stale.conn === null && !gone) this.#remove(stale);
      if (room !== undefined) room.local--;
      if (gone) {
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
    if (conn !== null && conn.session !== undefined) this.#record(conn.session);
    if (conn !== null) this.#drain(conn);
  }

  /** Cluster: a member on another instance left (or its instance died). */
  memberLeft(g: string): void {
    const m = this.#members.get(g);
    if (m === undefined || m.conn !== null) return;
    this.#remove(m);
  }

  /**
   * Cluster: a frame relayed from another instance for local member `g`
   * (or one on its way here with a resumed session: it waits with it).
   * False when `g` is neither.
   */
  deliver(g: string, frame: string): boolean {
    const m = this.#members.get(g);
    const conn = m !== undefined && m.conn !== null ? m.conn : this.#arriving.get(g);
    if (conn === undefined) return false;
    this.#send(conn, frame, "signal");
    return true;
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

  /**
   * Cluster: a member changed holder without leaving its room (a session
   * resumed on another instance): nobody hears of it. `id` is the id of the
   * local connection whose resume takes it over (in its room's turn), or
   * null when it is held by `instance` now, which may take it away from a
   * local connection: that connection's session, moving away, hands over
   * what it kept once its last ident has gone.
   */
  memberMoved(roomName: string, ident: string, instance: string, id: number | null): void {
    const g = roomName + ":" + ident;
    const m = this.#members.get(g);
    if (id !== null) {
      this.#moveIn(roomName, ident, g, m, id);
      return;
    }
    if (instance === "") return;
    if (m === undefined) {
      // Not seen here (a view that missed its join): a member like any other.
      if (this.#rooms.has(roomName)) this.memberJoined(roomName, ident, instance, null);
      return;
    }
    if (m.conn === null) {
      if (m.instance === instance) return;
      this.#forgetRemote(m);
      m.instance = instance;
      this.#rememberRemote(m);
      return;
    }
    const old = m.conn;
    const room = m.room;
    old.idents.delete(g);
    room.local--;
    this.#pairs(old, -(room.members.size - 1));
    m.conn = null;
    m.instance = instance;
    this.#rememberRemote(m);
    const s = old.session;
    if (s?.movedTo !== undefined) this.#handoffIfDone(s);
    else if (s !== undefined && !old.closed) this.#record(s);
    this.#dropIfUnwatched(room);
  }

  /** A member moves to a resuming connection here, in its room's turn. */
  #moveIn(roomName: string, ident: string, g: string, m: Member<H> | undefined, id: number) {
    const conn = this.#resuming.get(id);
    const r = conn?.resuming;
    if (conn === undefined || r === undefined || !r.waiting.delete(g)) return;
    if (this.#arriving.get(g) === conn) this.#arriving.delete(g);
    let room = this.#rooms.get(roomName);
    if (room === undefined) {
      room = { name: roomName, members: new Map(), local: 1 };
      this.#rooms.set(roomName, room);
    }
    if (m !== undefined && m.conn !== null) {
      // Held here already (cannot happen with a sound view): it stays as it is.
      room.local--;
      this.#dropIfUnwatched(room);
    } else {
      if (m === undefined) {
        m = { g, ident, room, conn, instance: "" };
        room.members.set(g, m);
        this.#members.set(g, m);
      } else {
        this.#forgetRemote(m);
        m.conn = conn;
        m.instance = "";
      }
      // The count of the move in flight becomes the member's.
      conn.idents.set(g, m);
      this.#pairs(conn, room.members.size - 1);
      // Taken for a connection that went away meanwhile: given back at once.
      if (conn.closed) this.#remove(m);
    }
    this.#resumeProgress(conn);
  }

  #rememberRemote(m: Member<H>): void {
    let set = this.#remote.get(m.instance);
    if (set === undefined) this.#remote.set(m.instance, set = new Set());
    set.add(m.g);
  }

  /**
   * Cluster: the session connection `id` asked to resume is held on another
   * instance, with `idents`. Unless the connection may not hold one of them
   * (a resume must not widen what it may do), the directory is asked to
   * move them here ({@link Directory.take}).
   */
  sessionFound(id: number, idents: readonly string[]): void {
    const conn = this.#resuming.get(id);
    const r = conn?.resuming;
    if (conn === undefined || r === undefined || r.local || r.fresh !== "") return;
    if (conn.closed) {
      this.#endResume(conn);
      return;
    }
    // Idents held in a room that needs a proof were proven by the old connection.
    const proven = new Set<string>();
    for (const g of idents) proven.add(g.slice(globalColon(g) + 1));
    for (const g of idents) {
      const colon = globalColon(g);
      const why = colon < 0
        ? `${g} is not a global ident`
        : this.#forbidden(conn, g.slice(colon + 1), g.slice(0, colon), proven);
      if (why !== undefined) return this.#refuseResume(conn, "forbidden", why);
    }
    r.fresh = this.#sessionToken();
    r.idents = idents;
    for (const g of idents) {
      const roomName = g.slice(0, globalColon(g));
      let room = this.#rooms.get(roomName);
      if (room === undefined) {
        room = { name: roomName, members: new Map(), local: 0 };
        this.#rooms.set(roomName, room);
      }
      // Counted as a claim in flight is, so the room stays followed.
      room.local++;
      r.waiting.add(g);
      this.#arriving.set(g, conn);
    }
    this.#directory!.take!(id, r.token, r.fresh, idents);
  }

  /** Cluster: the resume of connection `id` is refused (no such session, or the cluster failed). */
  resumeRefused(id: number, code: "forbidden" | "unavailable", detail: string): void {
    const conn = this.#resuming.get(id);
    if (conn !== undefined) this.#refuseResume(conn, code, detail);
  }

  /**
   * Cluster: the directory replaced the token of a session held here for
   * the resume of connection `id`: the resume completes as it would alone
   * (its checks run again: the session may have ended meanwhile).
   */
  sessionRotated(id: number): void {
    const conn = this.#resuming.get(id);
    const r = conn?.resuming;
    if (conn === undefined || r === undefined || !r.local) return;
    this.#endResume(conn);
    if (!conn.closed) this.#resume(conn, r.token, r.fresh);
    if (conn.session?.token !== r.fresh) {
      // Not resumed after all: the fresh token's record goes, the session keeps its own.
      this.#ended(r.fresh);
      const s = this.#sessions.get(r.token);
      if (s !== undefined) this.#record(s);
    }
    this.#drain(conn);
  }

  /**
   * Cluster: session `token`, held here, moved to the connection with id
   * `id` on `instance` (its idents move in their rooms' turns, through
   * {@link memberMoved}). Its token is no longer valid here, an old socket
   * still open is closed with {@link RESUMED_ELSEWHERE}, and what it kept is
   * handed over ({@link Directory.handoff}) once its last ident has gone.
   * Its grace still bounds it: an ident whose move never comes (the link
   * was lost) leaves when the grace ends.
   */
  sessionMoved(token: string, instance: string, id: number): void {
    const s = this.#sessions.get(token);
    if (s === undefined) {
      this.#directory?.handoff?.(instance, id, null);
      return;
    }
    this.#sessions.delete(token);
    this.stats.sessions.moved++;
    s.movedTo = { instance, conn: id };
    const old = s.conn;
    if (!old.detached) {
      // Half-open: the old socket never learnt it was gone. What is sent to
      // it from now on is kept for the new holder.
      old.final = true;
      this.#outbox.close(old.handle, RESUMED_ELSEWHERE, "session resumed elsewhere");
      old.detached = true;
      this.#connections--;
      old.queue.clear();
      s.until = this.#now() + this.limits.sessionGrace;
      this.#grace.add(s);
      this.#armTick();
    }
    // Frames from an old socket still open run no more.
    old.wait = "resume";
    this.#handoffIfDone(s);
  }

  /**
   * Cluster: what the old holder handed over for the resume of connection
   * `id` (null: nothing will come). The resume completes once every ident
   * has moved in too.
   */
  sessionHandoff(id: number, handoff: Handoff | null): void {
    const conn = this.#resuming.get(id);
    const r = conn?.resuming;
    if (conn === undefined || r === undefined || r.local || r.fresh === "") return;
    if (r.handoff !== undefined) return;
    r.handoff = handoff;
    this.#resumeProgress(conn);
  }

  /** Cluster: the sessions held here, with their idents and what is left of their grace (0: attached). */
  localSessions(): { token: string; idents: string[]; graceMs: number }[] {
    const now = this.#now();
    return [...this.#sessions.values()].map((s) => ({
      token: s.token,
      idents: [...s.conn.idents.keys()],
      graceMs: s.until < 0 ? 0 : Math.max(1, Math.ceil(s.until - now)),
    }));
  }

  /** A resume through the directory begins: the connection's frames wait for it. */
  #startResume(conn: Connection<H>, token: string, local: boolean): Resuming {
    const r: Resuming = {
      token,
      local,
      fresh: "",
      idents: [],
      waiting: new Set(),
      handoff: undefined,
      held: [],
      heldBytes: 0,
    };
    conn.resuming = r;
    conn.wait = "resume";
    this.#resuming.set(conn.id, conn);
    return r;
  }

  /** A resume through the directory is over: moves still counted in flight are given up. */
  #endResume(conn: Connection<H>): void {
    const r = conn.resuming;
    if (r === undefined) return;
    conn.resuming = undefined;
    this.#resuming.delete(conn.id);
    if (conn.wait === "resume") conn.wait = "none";
    for (const g of r.waiting) {
      if (this.#arriving.get(g) === conn) this.#arriving.delete(g);
      const room = this.#rooms.get(g.slice(0, globalColon(g)));
      if (room !== undefined) {
        room.local--;
        this.#dropIfUnwatched(room);
      }
    }
    r.waiting.clear();
  }

  #refuseResume(conn: Connection<H>, code: "forbidden" | "unavailable", why: string): void {
    this.#endResume(conn);
    if (conn.closed) return;
    this.stats.sessions.refused++;
    this.#fail(conn, "resume", code, why);
    this.#drain(conn);
  }

  /** Completes a resume from another instance once its idents and the handoff are in. */
  #resumeProgress(conn: Connection<H>): void {
    const r = conn.resuming!;
    if (r.waiting.size > 0) return;
    if (conn.closed) {
      this.#endResume(conn);
      return;
    }
    if (r.handoff === undefined) return;
    this.#endResume(conn);
    const h = r.handoff;
    if (h !== null) {
      for (const id of h.proven) conn.proven.add(id);
      if (h.issued !== null && !this.#issued.has(h.issued)) {
        // The session's issued ident replaces one this connection was issued.
        if (conn.issued !== undefined) this.#issued.delete(conn.issued);
        conn.issued = h.issued;
        this.#issued.set(h.issued, conn);
      }
    }
    const s: Session<H> = {
      token: r.fresh,
      conn,
      until: -1,
      kept: [],
      keptBytes: 0,
      sent: 0,
      recent: [],
      recentBytes: 0,
    };
    conn.session = s;
    this.#sessions.set(s.token, s);
    this.stats.sessions.resumed++;
    const idents = [...conn.idents.keys()];
    // Without the handoff the client is told nothing of what it may have missed.
    const info = h === null
      ? { token: s.token, idents }
      : { token: s.token, idents, from: h.from, resent: h.frames.length };
    this.#send(conn, JSON.stringify(["resume", info]), "resume");
    s.sent = 0;
    s.recent.length = 0;
    s.recentBytes = 0;
    for (const f of h?.frames ?? []) {
      this.#outbox.send(conn.handle, f);
      this.#sent(s, f);
    }
    for (const f of r.held) {
      this.#outbox.send(conn.handle, f);
      this.#sent(s, f);
    }
    if (idents.length !== r.idents.length) this.#record(s);
    this.#drain(conn);
  }

  /** Hands a moving session's frames to its new holder once its old connection holds no ident. */
  #handoffIfDone(s: Session<H>): void {
    const to = s.movedTo;
    const old = s.conn;
    if (to === undefined || old.idents.size > 0) return;
    s.movedTo = undefined;
    this.#grace.delete(s);
    const frames = s.recent.map((r) => r.frame).concat(s.kept.splice(0));
    const handoff: Handoff = {
      frames,
      from: s.sent - frames.length,
      proven: [...old.proven],
      issued: old.issued ?? null,
    };
    s.keptBytes = 0;
    s.recent.length = 0;
    s.recentBytes = 0;
    if (old.issued !== undefined) {
      this.#issued.delete(old.issued);
      old.issued = undefined;
    }
    old.session = undefined;
    old.detached = false;
    old.closed = true;
    this.#directory?.handoff?.(to.instance, to.conn, handoff);
  }

  /** Holds a frame for a connection whose resume is under way; past the session bounds, it closes. */
  #hold(conn: Connection<H>, frame: string): void {
    const r = conn.resuming!;
    const l = this.limits;
    if (
      r.held.length >= l.sessionBufferFrames || r.heldBytes + frame.length > l.sessionBufferBytes
    ) {
      this.stats.sessions.overflow++;
      this.#close(conn, CloseCode.policy, "too much waiting while the session resumes");
      return;
    }
    r.held.push(frame);
    r.heldBytes += frame.length;
  }

  /** Tells the directory what a session holds now (cluster sessions only). */
  #record(s: Session<H>, replaces?: string): void {
    if (!this.#clustered) return;
    const grace = s.until < 0 ? 0 : Math.max(1, Math.ceil(s.until - this.#now()));
    this.#directory!.sessionHeld!(s.token, [...s.conn.idents.keys()], grace, replaces);
  }

  /** Tells the directory a session held here ended (cluster sessions only). */
  #ended(token: string): void {
    if (this.#clustered) this.#directory!.sessionEnded!(token);
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
    if (conn.session !== undefined) this.#record(conn.session);
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
    const letters = this.#letters;
    let n = 0;
    while (n < IDENT_LETTERS) {
      this.#randomBytes(buf);
      for (let i = 0; i < buf.length && n < IDENT_LETTERS; i++) {
        // 234 = 9 × 26: bytes at or above it would favour the first letters.
        if (buf[i] < 234) letters[n++] = 0x61 + (buf[i] % 26);
      }
    }
    // One string from the codes, not one per letter appended.
    return String.fromCharCode.apply(null, letters as unknown as number[]);
  }

  #send(conn: Connection<H>, frame: string, type: OutType): void {
    if (conn.closed) return;
    this.stats.framesOut[type]++;
    if (conn.detached) this.#keep(conn, frame);
    else if (conn.resuming !== undefined) this.#hold(conn, frame);
    else {
      this.#outbox.send(conn.handle, frame);
      if (conn.session !== undefined) this.#sent(conn.session, frame);
    }
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
