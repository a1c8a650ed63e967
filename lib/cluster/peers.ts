/**
 * Cluster mode for PeerJS: a {@link PeerDirectory} whose ids, relay and
 * offline queue span every instance. This module is the pure half, free of
 * I/O: it keeps this instance's connections and what each is waiting for,
 * and decides what to ask of the cluster; `lib/cluster/redis_peers.ts`
 * carries those asks to Redis (scripts in `lib/cluster/peer_scripts.ts`)
 * and hands the answers and channel messages back.
 *
 * **Ids.** Redis holds, per key and id, the holder (`instance|conn|token`).
 * A claim is one script: a free id (or one held by an instance whose
 * liveness key expired) is taken, `fresh`; one held with the same token is
 * taken over, and the old holder's instance is told on its channel (or, on
 * this instance, the reply names the connection), which closes its socket;
 * one held with another token is `taken`. The claim also takes, in the same
 * script, every message that waited for the id, so those come before
 * anything relayed to the new holder afterwards; Redis keeps them until
 * this instance says it delivered them ({@link PeerLink.taken}), and a
 * release that comes first (the client left before its claim was answered)
 * puts them back at the front of the queue. Frames relayed to a claim
 * still on its way (they can overtake its reply: the channel is another
 * connection) wait for the answer, after the queued ones.
 *
 * **Relay.** A message for an id held on this instance is delivered at
 * once, with no round trip. Any other goes to Redis ({@link RELAY_PENDING}),
 * where a script publishes it on the holder's instance channel with the
 * holder's connection number, or queues it when no live instance holds the
 * id; the outcome comes back through {@link DirectoryHooks.relayed}. Every
 * relay from one instance travels on one connection, and reaches an
 * instance on one subscription, so each sender's messages arrive in order.
 * Two rules keep that true when the holder is (or becomes) local: a
 * holder on the caller's own instance is not published to but named in the
 * reply, and delivered with it; and while relays to an id are on their way
 * through Redis, later ones to it follow them there rather than overtake
 * them locally.
 *
 * **Offline queue.** In Redis, one list per key and id, bounded per id
 * ({@link OfflineLimits.maxPerId}) and in total over the cluster
 * ({@link OfflineLimits.maxBytes}, with the same accounting as in memory);
 * a queue is due `expireMs` after its first message (Redis' clock), and
 * whichever instance sweeps it first tells every sender in it
 * ({@link DirectoryHooks.expired}; the engine relays the `EXPIRE` to the
 * sender, wherever it is held).
 *
 * **Redis unavailable.** Claims are answered `unavailable` (the engine
 * refuses with 1013, try again later), relays to ids not held here are
 * refused as `full-total` (the sender is told `EXPIRE` at once) and
 * counted in {@link ClusterPeerStats.unavailable}; ids held here keep
 * talking. When Redis is back, every held id is registered again
 * ({@link ClusterPeers.registrations}); one that another instance took
 * meanwhile is closed here.
 *
 * @module
 */

import {
  type DirectoryHooks,
  type OfflineLimits,
  type PeerDirectory,
  QUEUED_OVERHEAD,
  RELAY_PENDING,
  type RelayOutcome,
} from "../peerjs/directory.ts";

/** How Redis answered a claim. */
export interface PeerClaimReply {
  /** `fresh`, `takeover` (same token) or `taken` (another token). */
  readonly outcome: "fresh" | "takeover" | "taken";
  /** The connection of this instance that held the id before a takeover, if one did. */
  readonly replaced?: number;
  /** What waited for the id ({@link waitingEntry}s), oldest first; taken by the claim. */
  readonly waiting: readonly string[];
}

/** A relay as it is asked of the cluster. */
export interface PeerRelayAsk {
  /** The key (namespace). */
  readonly key: string;
  /** The sender's id. */
  readonly src: string;
  /** The id it is for. */
  readonly dst: string;
  /** The frame, as the holder is to receive it. */
  readonly frame: string;
  /** May wait when no one holds `dst`. */
  readonly queue: boolean;
  /** What it counts against the offline bound: its length plus {@link QUEUED_OVERHEAD}. */
  readonly size: number;
}

/**
 * How Redis answered a relay: an outcome, or `{ local }` when the holder
 * is connection `local` of this very instance (the frame is delivered
 * here, with the answer).
 */
export type PeerRelayAnswer = RelayOutcome | { readonly local: number };

/**
 * The cluster as {@link ClusterPeers} uses it. Every call is sent at once,
 * in call order, on one connection.
 */
export interface PeerLink {
  /** True while calls can be made (Redis is up and this instance is registered). */
  readonly live: boolean;
  /** Claims `id` under `key` for connection `conn` with `token`; rejects when Redis fails. */
  claim(key: string, id: string, conn: number, token: string): Promise<PeerClaimReply>;
  /**
   * Gives `id` up if connection `conn` of this instance holds it, and puts
   * back in its queue what `conn`'s claim took unless {@link taken} said
   * it was delivered.
   */
  release(key: string, id: string, conn: number): void;
  /** What connection `conn`'s claim (or registration) took from the queue was delivered. */
  taken(key: string, id: string, conn: number): void;
  /** Carries a relay to the holder's instance, or queues it; rejects when Redis fails. */
  relay(ask: PeerRelayAsk, limits: OfflineLimits): Promise<PeerRelayAnswer>;
  /** Every id held under `key`, cluster-wide. */
  ids(key: string): Promise<string[]>;
}

/** A queue that expired: every sender in it is to be told. */
export interface ExpiredQueue {
  /** The key. */
  readonly key: string;
  /** The id it waited for. */
  readonly id: string;
  /** The ids that had messages in it. */
  readonly senders: readonly string[];
}

/** An id this instance holds, as it is registered again after Redis lost it. */
export interface Registration {
  /** The key. */
  readonly key: string;
  /** The id. */
  readonly id: string;
  /** The connection that holds it. */
  readonly conn: number;
  /** Its token. */
  readonly token: string;
}

/** Counters of the cluster side, for logs and tests. */
export interface ClusterPeerStats {
  /** Relays sent to Redis (for an id not held here). */
  forwarded: number;
  /** Frames from other instances delivered here. */
  received: number;
  /** Frames that arrived before their connection's claim was answered (delivered after it). */
  early: number;
  /** Frames for a connection no longer here (it closed or was taken over meanwhile). */
  lost: number;
  /** Claims and relays refused because Redis could not be reached. */
  unavailable: number;
  /** Senders told that their queue expired, by this instance's sweeps. */
  expired: number;
}

/**
 * A message waiting in an offline queue, as stored: the sender's length
 * (UTF-16 code units), a colon, the sender, then the frame. Only this
 * module reads it back.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.equal(waitingEntry("a:b", "{}"), "3:a:b{}");
 * assert.deepEqual(parseWaitingEntry("3:a:b{}"), { src: "a:b", frame: "{}" });
 * ```
 */
export function waitingEntry(src: string, frame: string): string {
  return `${src.length}:${src}${frame}`;
}

/** The sender and frame of a {@link waitingEntry}; undefined when malformed. */
export function parseWaitingEntry(entry: string): { src: string; frame: string } | undefined {
  const colon = entry.indexOf(":");
  const n = Number(entry.slice(0, colon));
  if (colon < 1 || !Number.isInteger(n) || colon + 1 + n > entry.length) return undefined;
  return { src: entry.slice(colon + 1, colon + 1 + n), frame: entry.slice(colon + 1 + n) };
}

/**
 * A message on an instance's channel: a frame for one of its connections
 * (`m<conn>\n<frame>`), or news that another instance took over the id a
 * connection held (`r<conn>`), as `peer_scripts.ts` sends them.
 */
export type PeerChannelMessage =
  | { kind: "frame"; conn: number; frame: string }
  | { kind: "replaced"; conn: number };

/**
 * Parses a channel message; undefined for anything else.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.deepEqual(parsePeerMessage('m12\n{"type":"OFFER"}'), {
 *   kind: "frame", conn: 12, frame: '{"type":"OFFER"}',
 * });
 * assert.deepEqual(parsePeerMessage("r7"), { kind: "replaced", conn: 7 });
 * assert.equal(parsePeerMessage("x"), undefined);
 * ```
 */
export function parsePeerMessage(msg: string): PeerChannelMessage | undefined {
  const c = msg.charCodeAt(0);
  if (c === 0x6d /* m */) {
    const nl = msg.indexOf("\n");
    if (nl < 2) return undefined;
    const conn = Number(msg.slice(1, nl));
    if (!Number.isInteger(conn)) return undefined;
    return { kind: "frame", conn, frame: msg.slice(nl + 1) };
  }
  if (c === 0x72 /* r */) {
    const conn = Number(msg.slice(1));
    if (msg.length < 2 || !Number.isInteger(conn)) return undefined;
    return { kind: "replaced", conn };
  }
  return undefined;
}

/** How long a cluster-wide id list serves discovery before it is read again, ms. */
const IDS_FRESH_MS = 1000;

/** A connection of this instance that claimed an id. */
interface Holding {
  readonly conn: number;
  readonly key: string;
  readonly id: string;
  readonly token: string;
  /** Waiting for its claim's answer, holding the id, or gone. */
  state: "pending" | "held" | "gone";
  /** Frames relayed to it that arrived before its claim was answered. */
  early: string[];
  /** Told, before its claim was answered, that another connection took the id over. */
  replaced: boolean;
  /** What waited for the id, taken by its claim, until the engine flushes it. */
  waiting: readonly string[] | undefined;
}

const NO_HOOKS: DirectoryHooks = {
  claimed() {},
  replaced() {},
  deliver() {},
  expired() {},
};

/**
 * The PeerJS ids of one instance in a cluster: a {@link PeerDirectory} over
 * a {@link PeerLink}. Made unattached; {@link attach} (the engine's
 * `directory` option) gives it the engine's hooks and limits.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const asked: string[] = [];
 * const link = {
 *   live: true,
 *   claim: () => Promise.resolve({ outcome: "fresh" as const, waiting: ["1:zhi"] }),
 *   release() {},
 *   taken() {},
 *   relay: (ask: { dst: string }) => (asked.push(ask.dst), Promise.resolve("delivered" as const)),
 *   ids: () => Promise.resolve([]),
 * };
 * const got: string[] = [];
 * const peers = new ClusterPeers(link);
 * const dir = peers.attach({
 *   claimed: (conn, outcome) => {
 *     got.push(`${conn} ${outcome}`);
 *     dir.flush(conn, "peerjs", "a");
 *   },
 *   replaced: (conn) => got.push(`${conn} replaced`),
 *   deliver: (conn, frame) => got.push(`${conn} <- ${frame}`),
 *   expired: () => {},
 *   relayed: (conn, dst, outcome) => got.push(`${conn} -> ${dst} ${outcome}`),
 * }, { expireMs: 5000, maxPerId: 8, maxBytes: 4096 });
 * dir.claim(1, "peerjs", "a", "t");
 * await Promise.resolve();
 * // Held here: delivered at once. Elsewhere: through the cluster, answered later.
 * assert.equal(dir.relay("peerjs", "a", "a", "self", false, 0), "delivered");
 * assert.equal(dir.relay("peerjs", "a", "b", "hi", true, 0), "pending");
 * await Promise.resolve();
 * // Another instance's frame for connection 1.
 * peers.message("m1\nfrom afar");
 * assert.deepEqual(got, [
 *   "1 fresh", "1 <- hi", "1 <- self", "1 -> b delivered", "1 <- from afar",
 * ]);
 * assert.deepEqual(asked, ["b"]);
 * ```
 */
export class ClusterPeers implements PeerDirectory {
  /** Counters. */
  readonly stats: ClusterPeerStats = {
    forwarded: 0,
    received: 0,
    early: 0,
    lost: 0,
    unavailable: 0,
    expired: 0,
  };
  readonly #link: PeerLink;
  readonly #now: () => number;
  #hooks: DirectoryHooks = NO_HOOKS;
  #limits: OfflineLimits = { expireMs: 5000, maxPerId: 64, maxBytes: 8 * 1024 * 1024 };
  /** Every claim of this instance not released, by connection. */
  readonly #byConn = new Map<number, Holding>();
  /** Answered claims, by `key:id` (keys hold no colon), in the order they were answered. */
  readonly #held = new Map<string, Holding>();
  /** Cluster-wide ids by key, as last read, for discovery. */
  readonly #ids = new Map<string, { at: number; ids: string[] }>();
  /** Relays on their way through Redis, by `key:dst`. */
  readonly #forwarding = new Map<string, number>();
  readonly #reading = new Set<string>();
  #queued = 0;
  #queuedBytes = 0;

  /** A directory over `link`; `now` (ms) dates the id lists discovery reads. */
  constructor(link: PeerLink, now: () => number = Date.now) {
    this.#link = link;
    this.#now = now;
  }

  /** Gives the directory the engine's hooks and limits: the shape of the engine's `directory` option. */
  attach(hooks: DirectoryHooks, limits: OfflineLimits): PeerDirectory {
    this.#hooks = hooks;
    this.#limits = limits;
    return this;
  }

  /** See {@link PeerDirectory.claim}: answered once Redis has, or `unavailable` at once. */
  claim(conn: number, key: string, id: string, token: string): void {
    if (!this.#link.live) {
      this.stats.unavailable++;
      this.#hooks.claimed(conn, "unavailable");
      return;
    }
    const h: Holding = {
      conn,
      key,
      id,
      token,
      state: "pending",
      early: [],
      replaced: false,
      waiting: undefined,
    };
    this.#byConn.set(conn, h);
    this.#link.claim(key, id, conn, token).then(
      (reply) => this.#answered(h, reply),
      () => this.#failed(h),
    );
  }

  /** See {@link PeerDirectory.release}: a release follows a claim still on its way, in order. */
  release(conn: number, key: string, id: string): void {
    const h = this.#byConn.get(conn);
    if (h === undefined || h.key !== key || h.id !== id) return;
    this.#byConn.delete(conn);
    const was = h.state;
    h.state = "gone";
    if (was === "held") {
      const k = kid(key, id);
      if (this.#held.get(k) === h) this.#held.delete(k);
    }
    // What its claim took and it never got goes back to the queue, in Redis.
    // Not live: Redis is told when it is back (what is not registered again is pruned).
    if (this.#link.live) this.#link.release(key, id, conn);
  }

  /** See {@link PeerDirectory.flush}: what the claim took from the queue, then what came early. */
  flush(conn: number, key: string, id: string): number {
    const h = this.#byConn.get(conn);
    if (h === undefined || h.state !== "held" || h.key !== key || h.id !== id) return 0;
    const waiting = h.waiting ?? [];
    const early = h.early;
    h.waiting = undefined;
    h.early = [];
    let n = 0;
    for (const e of waiting) {
      const m = parseWaitingEntry(e);
      if (m === undefined) continue;
      n++;
      this.#hooks.deliver(conn, m.frame);
    }
    for (const frame of early) this.#hooks.deliver(conn, frame);
    if (waiting.length > 0 && this.#link.live) this.#link.taken(key, id, conn);
    return n;
  }

  /**
   * See {@link PeerDirectory.relay}: delivered at once to an id held here;
   * otherwise {@link RELAY_PENDING}, with the outcome through
   * {@link DirectoryHooks.relayed} when the sender is held here.
   */
  relay(
    key: string,
    src: string,
    dst: string,
    frame: string,
    queue: boolean,
    _now: number,
  ): RelayOutcome | typeof RELAY_PENDING {
    const k = kid(key, dst);
    const h = this.#held.get(k);
    // Behind relays to `dst` still on their way through Redis, never ahead of them.
    if (h !== undefined && !this.#forwarding.has(k)) {
      this.#hooks.deliver(h.conn, frame);
      return "delivered";
    }
    if (!this.#link.live) {
      this.stats.unavailable++;
      return queue ? "full-total" : "dropped";
    }
    const sender = this.#held.get(kid(key, src))?.conn;
    this.#forward({ key, src, dst, frame, queue, size: frame.length + QUEUED_OVERHEAD }, sender);
    return RELAY_PENDING;
  }

  /** See {@link PeerDirectory.sweep}: the cluster sweeps its queues itself (see {@link expire}). */
  sweep(_now: number): number {
    return -1;
  }

  /** See {@link PeerDirectory.nextDue}: never, here (see {@link sweep}). */
  get nextDue(): number {
    return -1;
  }

  /**
   * See {@link PeerDirectory.ids}: the cluster's ids as read at most a
   * second ago (the first call reads them, and meanwhile answers with this
   * instance's), with this instance's own.
   */
  ids(key: string): string[] {
    const local: string[] = [];
    for (const h of this.#held.values()) if (h.key === key) local.push(h.id);
    const cached = this.#ids.get(key);
    if (
      (cached === undefined || this.#now() - cached.at >= IDS_FRESH_MS) &&
      this.#link.live && !this.#reading.has(key)
    ) {
      this.#reading.add(key);
      this.#link.ids(key).then(
        (ids) => this.#ids.set(key, { at: this.#now(), ids }),
        () => {},
      ).finally(() => this.#reading.delete(key));
    }
    if (cached === undefined) return local;
    const all = new Set(cached.ids);
    for (const id of local) all.add(id);
    return [...all];
  }

  /** See {@link PeerDirectory.queued}: cluster-wide, as last read ({@link counted}). */
  get queued(): number {
    return this.#queued;
  }

  /** See {@link PeerDirectory.queuedBytes}: cluster-wide, as last read ({@link counted}). */
  get queuedBytes(): number {
    return this.#queuedBytes;
  }

  // ------------------------------------------------------------ from the link

  /** A message on this instance's channel (see {@link parsePeerMessage}). */
  message(msg: string): void {
    const m = parsePeerMessage(msg);
    if (m === undefined) return;
    if (m.kind === "replaced") {
      this.#replace(m.conn);
      return;
    }
    const h = this.#byConn.get(m.conn);
    if (h === undefined || h.state === "gone") {
      this.stats.lost++;
      return;
    }
    if (h.state === "pending") {
      this.stats.early++;
      h.early.push(m.frame);
      return;
    }
    this.stats.received++;
    this.#hooks.deliver(m.conn, m.frame);
  }

  /** Queues a sweep found due: each sender in them is told, once per queue. */
  expire(queues: readonly ExpiredQueue[]): void {
    for (const q of queues) {
      for (const src of new Set(q.senders)) {
        this.stats.expired++;
        this.#hooks.expired(q.key, src, q.id);
      }
    }
  }

  /** The offline queues' cluster-wide totals, as Redis last said. */
  counted(messages: number, bytes: number): void {
    this.#queued = Math.max(0, messages);
    this.#queuedBytes = Math.max(0, bytes);
  }

  /** Every id held here, for registering them again (after Redis lost or reaped them). */
  registrations(): Registration[] {
    const out: Registration[] = [];
    for (const h of this.#held.values()) {
      out.push({ key: h.key, id: h.id, conn: h.conn, token: h.token });
    }
    return out;
  }

  /**
   * How registering `reg` again went: `ok` (with what waited for the id
   * meanwhile, delivered now), or `conflict` (another instance holds it
   * now: the connection is closed here).
   */
  restored(reg: Registration, answer: "ok" | "conflict", waiting: readonly string[]): void {
    const h = this.#byConn.get(reg.conn);
    // Gone meanwhile: its release followed the registration, and gave back what it took.
    if (h === undefined || h.state !== "held") return;
    if (answer === "conflict") {
      this.#replace(reg.conn);
      return;
    }
    for (const e of waiting) {
      const m = parseWaitingEntry(e);
      if (m !== undefined) this.#hooks.deliver(reg.conn, m.frame);
    }
    if (waiting.length > 0 && this.#link.live) this.#link.taken(reg.key, reg.id, reg.conn);
  }

  // ------------------------------------------------------------ internals

  #answered(h: Holding, reply: PeerClaimReply): void {
    // A takeover from a connection of this instance: the old one goes first.
    if (reply.replaced !== undefined && reply.replaced !== h.conn) this.#replace(reply.replaced);
    // Released while the claim was on its way: the release followed it, and
    // gave back to the queue what the claim took.
    if (h.state === "gone") return;
    if (reply.outcome === "taken") {
      this.#byConn.delete(h.conn);
      h.state = "gone";
      this.#hooks.claimed(h.conn, "taken");
      return;
    }
    const k = kid(h.key, h.id);
    const before = this.#held.get(k);
    if (before !== undefined && before !== h) this.#replace(before.conn);
    h.state = "held";
    h.waiting = reply.waiting.length > 0 ? reply.waiting : undefined;
    this.#held.set(k, h);
    this.#hooks.claimed(h.conn, reply.outcome);
    // The engine flushed (it let the connection in) or released (it refused).
    if (h.state === "held") {
      if (h.early.length > 0 || h.waiting !== undefined) this.flush(h.conn, h.key, h.id);
      if (h.replaced) this.#replace(h.conn);
    }
  }

  #failed(h: Holding): void {
    // The script may have run: whatever Redis holds for it is given up.
    if (this.#link.live) this.#link.release(h.key, h.id, h.conn);
    if (h.state !== "pending") return;
    this.#byConn.delete(h.conn);
    h.state = "gone";
    this.stats.unavailable++;
    this.#hooks.claimed(h.conn, "unavailable");
  }

  /** Connection `conn` no longer holds its id (another took it over): the engine closes it. */
  #replace(conn: number): void {
    const h = this.#byConn.get(conn);
    if (h === undefined) return;
    if (h.state === "pending") {
      h.replaced = true;
      return;
    }
    if (h.state !== "held") return;
    this.#byConn.delete(conn);
    h.state = "gone";
    const k = kid(h.key, h.id);
    if (this.#held.get(k) === h) this.#held.delete(k);
    this.#hooks.replaced(conn);
  }

  /** Sends a relay to Redis; its outcome goes to `sender`'s `relayed` hook. */
  #forward(ask: PeerRelayAsk, sender: number | undefined): void {
    this.stats.forwarded++;
    const k = kid(ask.key, ask.dst);
    this.#forwarding.set(k, (this.#forwarding.get(k) ?? 0) + 1);
    const done = () => {
      const n = this.#forwarding.get(k)! - 1;
      if (n > 0) this.#forwarding.set(k, n);
      else this.#forwarding.delete(k);
    };
    this.#link.relay(ask, this.#limits).then(
      (answer) => {
        done();
        let outcome: RelayOutcome;
        if (typeof answer === "string") outcome = answer;
        else {
          // Held here: delivered now, in order with this instance's other relays.
          const h = this.#byConn.get(answer.local);
          if (h !== undefined && h.state === "held") {
            this.#hooks.deliver(h.conn, ask.frame);
            outcome = "delivered";
          } else {
            this.stats.lost++;
            outcome = "dropped";
          }
        }
        if (sender !== undefined) this.#hooks.relayed?.(sender, ask.dst, outcome);
      },
      () => {
        done();
        this.stats.unavailable++;
        const outcome = ask.queue ? "full-total" : "dropped";
        if (sender !== undefined) this.#hooks.relayed?.(sender, ask.dst, outcome);
      },
    );
  }
}

function kid(key: string, id: string): string {
  return key + ":" + id;
}
