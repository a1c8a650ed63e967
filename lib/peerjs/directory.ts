/**
 * Where PeerJS ids live and how messages reach them. The engine keeps every
 * rule (who may connect, what a frame may say, budgets, limits, what the
 * client is told) and asks a {@link PeerDirectory} only to hold ids, carry
 * messages to whoever holds an id, and keep the messages for an id that is
 * not connected (the offline queue) until it connects or they expire.
 *
 * {@link MemoryDirectory} does that for one instance; in cluster mode the
 * cluster directory (`lib/cluster/peers.ts`, over Redis in
 * `lib/cluster/redis_peers.ts`) implements the same interface without
 * touching the engine: every answer that may need a round trip comes back
 * through {@link DirectoryHooks}, connections cross the seam as numbers, and
 * the engine copes with a claim answered later (frames wait meanwhile).
 * What a cluster directory must guarantee:
 * - an id is held by at most one connection in the whole cluster (a claim
 *   is atomic there: `SET key:id → instance/conn/token` if absent, or if
 *   the token matches for a takeover, which then tells the old holder's
 *   instance to call {@link DirectoryHooks.replaced});
 * - {@link PeerDirectory.relay} reaches a holder on another instance (a
 *   publish to that instance), and queues for an id held nowhere in a queue
 *   every instance sees, flushed by whichever instance the id connects to;
 * - the offline queue's expiry runs somewhere and reaches the sender
 *   wherever it is (its {@link DirectoryHooks.expired} runs on the instance
 *   that expired the queue, and the engine relays the `EXPIRE`);
 * - an instance that dies releases its ids within 10 seconds (ids held
 *   under a key with a short TTL that the live instance keeps refreshing).
 *
 * Such a directory answers two things later: a claim (always through
 * {@link DirectoryHooks.claimed}, possibly `unavailable` when the cluster
 * cannot be reached), and a relay to an id not held on this instance, for
 * which {@link PeerDirectory.relay} says {@link RELAY_PENDING} and the
 * outcome follows through {@link DirectoryHooks.relayed}
 * (`lib/cluster/peers.ts` is the Redis one).
 *
 * @module
 */

/**
 * How a claim was answered:
 * - `fresh`: the id was free and is now held by the claimant;
 * - `takeover`: the id was held with the same token: the claimant holds it
 *   now, and the old holder was told it was {@link DirectoryHooks.replaced};
 * - `taken`: the id is held with another token; nothing changed;
 * - `unavailable`: a cluster directory could not ask the cluster (Redis is
 *   unreachable); nothing changed, the client may try again later.
 */
export type ClaimOutcome = "fresh" | "takeover" | "taken" | "unavailable";

/**
 * What became of a relayed message:
 * - `delivered`: handed to the holder of `dst` (for a cluster directory:
 *   sent on to the instance that holds it);
 * - `queued`: `dst` is held nowhere; the message waits for it;
 * - `dropped`: `dst` is held nowhere and the message may not wait;
 * - `full-id`: as `queued`, but the id's queue is full: not kept;
 * - `full-total`: as `queued`, but the offline queues hold as many bytes as
 *   they may: not kept.
 */
export const RELAY_OUTCOMES = ["delivered", "queued", "dropped", "full-id", "full-total"] as const;

/** One of {@link RELAY_OUTCOMES}. */
export type RelayOutcome = typeof RELAY_OUTCOMES[number];

/**
 * What {@link PeerDirectory.relay} says when the outcome is not known yet
 * (a cluster directory sent the message on to the cluster): it follows
 * through {@link DirectoryHooks.relayed}, for the sender's connection when
 * the sender is held on this instance.
 */
export const RELAY_PENDING = "pending";

/** How the directory answers the engine. Every hook may run inside the call that caused it. */
export interface DirectoryHooks {
  /** The answer to {@link PeerDirectory.claim} for local connection `conn`. */
  claimed(conn: number, outcome: ClaimOutcome): void;
  /** Local connection `conn` held an id that a reconnection (same id and token) took over. */
  replaced(conn: number): void;
  /** A frame for local connection `conn`: a relayed message, or one that waited for it. */
  deliver(conn: number, frame: string): void;
  /** Messages from `src` that waited for `dst` under `key` expired undelivered. */
  expired(key: string, src: string, dst: string): void;
  /**
   * The outcome of a relay from local connection `conn` to `dst` that
   * {@link PeerDirectory.relay} answered {@link RELAY_PENDING}. Only
   * directories that answer later call it.
   */
  relayed?(conn: number, dst: string, outcome: RelayOutcome): void;
}

/** The bounds and expiry of the offline queue. */
export interface OfflineLimits {
  /** Ms a queue waits for its id, from its first message; then every sender in it is told. */
  expireMs: number;
  /** Messages one offline id may have waiting. */
  maxPerId: number;
  /**
   * Bytes all offline queues may hold: each message counts its length plus
   * {@link QUEUED_OVERHEAD}.
   */
  maxBytes: number;
}

/** Bytes a waiting message counts beyond its length, for what keeping it costs. */
export const QUEUED_OVERHEAD = 64;

/** The ids of one instance or a cluster, with the relay and the offline queue. */
export interface PeerDirectory {
  /**
   * Claims `id` under `key` with `token` for local connection `conn`. The
   * answer is {@link DirectoryHooks.claimed}, now or later.
   */
  claim(conn: number, key: string, id: string, token: string): void;
  /**
   * Gives `id` up if `conn` holds it (a close, or a claim the engine
   * refused); cancels a claim of `conn` still pending, so no answer comes.
   * Anything else is a no-op.
   */
  release(conn: number, key: string, id: string): void;
  /**
   * Hands what waited for `id` to `conn`, its holder, oldest first, through
   * {@link DirectoryHooks.deliver}; returns how many were handed over here.
   */
  flush(conn: number, key: string, id: string): number;
  /**
   * Carries `frame` from `src` to the holder of `dst` under `key`; when no
   * one holds `dst`, keeps it for `dst` if `queue` is set. A directory
   * that must ask elsewhere says {@link RELAY_PENDING} and answers through
   * {@link DirectoryHooks.relayed}.
   */
  relay(
    key: string,
    src: string,
    dst: string,
    frame: string,
    queue: boolean,
    now: number,
  ): RelayOutcome | typeof RELAY_PENDING;
  /**
   * Expires every queue due at `now`: once per sender and queue,
   * {@link DirectoryHooks.expired}. Returns {@link PeerDirectory.nextDue}.
   */
  sweep(now: number): number;
  /** When the next queue expires (ms, the engine's clock), or -1 when none waits. */
  readonly nextDue: number;
  /** The ids held under `key`, oldest first (for discovery). */
  ids(key: string): string[];
  /** Messages waiting for offline ids. */
  readonly queued: number;
  /** Bytes they count (see {@link OfflineLimits.maxBytes}). */
  readonly queuedBytes: number;
}

interface Holder {
  conn: number;
  readonly token: string;
}

interface Waiting {
  readonly key: string;
  readonly id: string;
  /** When the first message came: the queue expires `expireMs` later. */
  readonly since: number;
  readonly messages: { readonly src: string; readonly frame: string }[];
  bytes: number;
}

/**
 * The directory of a single instance: ids in maps, the offline queues in
 * a map kept in the order they were made (the order they expire in).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const got: string[] = [];
 * const dir = new MemoryDirectory({
 *   claimed: (conn, outcome) => got.push(`${conn} ${outcome}`),
 *   replaced: (conn) => got.push(`${conn} replaced`),
 *   deliver: (conn, frame) => got.push(`${conn} <- ${frame}`),
 *   expired: (key, src, dst) => got.push(`${src} -> ${dst} expired`),
 * }, { expireMs: 5000, maxPerId: 8, maxBytes: 4096 });
 * dir.claim(1, "peerjs", "a", "t1");
 * assert.equal(dir.relay("peerjs", "a", "b", "hi", true, 0), "queued");
 * dir.claim(2, "peerjs", "b", "t2");
 * assert.equal(dir.flush(2, "peerjs", "b"), 1);
 * dir.claim(3, "peerjs", "b", "t2"); // the same token: a reconnection
 * assert.deepEqual(got, ["1 fresh", "2 fresh", "2 <- hi", "2 replaced", "3 takeover"]);
 * ```
 */
export class MemoryDirectory implements PeerDirectory {
  readonly #hooks: DirectoryHooks;
  readonly #limits: OfflineLimits;
  readonly #keys = new Map<string, Map<string, Holder>>();
  /** By `key + " " + id` (keys hold no space); in the order they were made. */
  readonly #waiting = new Map<string, Waiting>();
  #queued = 0;
  #bytes = 0;

  /** An empty directory answering through `hooks`. */
  constructor(hooks: DirectoryHooks, limits: OfflineLimits) {
    this.#hooks = hooks;
    this.#limits = limits;
  }

  #holders(key: string): Map<string, Holder> {
    let m = this.#keys.get(key);
    if (m === undefined) this.#keys.set(key, m = new Map());
    return m;
  }

  /** See {@link PeerDirectory.claim}. */
  claim(conn: number, key: string, id: string, token: string): void {
    const holders = this.#holders(key);
    const h = holders.get(id);
    if (h === undefined) {
      holders.set(id, { conn, token });
      this.#hooks.claimed(conn, "fresh");
    } else if (h.token !== token) {
      this.#hooks.claimed(conn, "taken");
    } else {
      const old = h.conn;
      h.conn = conn;
      if (old !== conn) this.#hooks.replaced(old);
      this.#hooks.claimed(conn, "takeover");
    }
  }

  /** See {@link PeerDirectory.release}. */
  release(conn: number, key: string, id: string): void {
    const holders = this.#keys.get(key);
    if (holders?.get(id)?.conn !== conn) return;
    holders.delete(id);
    if (holders.size === 0) this.#keys.delete(key);
  }

  /** See {@link PeerDirectory.flush}. */
  flush(conn: number, key: string, id: string): number {
    const k = key + " " + id;
    const w = this.#waiting.get(k);
    if (w === undefined || this.#keys.get(key)?.get(id)?.conn !== conn) return 0;
    this.#drop(k, w);
    for (const m of w.messages) this.#hooks.deliver(conn, m.frame);
    return w.messages.length;
  }

  /** See {@link PeerDirectory.relay}. */
  relay(
    key: string,
    src: string,
    dst: string,
    frame: string,
    queue: boolean,
    now: number,
  ): RelayOutcome {
    const h = this.#keys.get(key)?.get(dst);
    if (h !== undefined) {
      this.#hooks.deliver(h.conn, frame);
      return "delivered";
    }
    if (!queue) return "dropped";
    const k = key + " " + dst;
    let w = this.#waiting.get(k);
    if ((w?.messages.length ?? 0) >= this.#limits.maxPerId) return "full-id";
    const size = frame.length + QUEUED_OVERHEAD;
    if (this.#bytes + size > this.#limits.maxBytes) return "full-total";
    if (w === undefined) {
      this.#waiting.set(k, w = { key, id: dst, since: now, messages: [], bytes: 0 });
    }
    w.messages.push({ src, frame });
    w.bytes += size;
    this.#queued++;
    this.#bytes += size;
    return "queued";
  }

  /** See {@link PeerDirectory.sweep}. */
  sweep(now: number): number {
    let due: Waiting[] | undefined;
    for (const [k, w] of this.#waiting) {
      if (now - w.since < this.#limits.expireMs) break;
      this.#drop(k, w);
      (due ??= []).push(w);
    }
    // Told once the maps are consistent: a hook may relay again.
    if (due !== undefined) {
      for (const w of due) {
        for (const src of new Set(w.messages.map((m) => m.src))) {
          this.#hooks.expired(w.key, src, w.id);
        }
      }
    }
    return this.nextDue;
  }

  /** See {@link PeerDirectory.nextDue}. */
  get nextDue(): number {
    for (const w of this.#waiting.values()) return w.since + this.#limits.expireMs;
    return -1;
  }

  /** See {@link PeerDirectory.ids}. */
  ids(key: string): string[] {
    return [...this.#keys.get(key)?.keys() ?? []];
  }

  /** See {@link PeerDirectory.queued}. */
  get queued(): number {
    return this.#queued;
  }

  /** See {@link PeerDirectory.queuedBytes}. */
  get queuedBytes(): number {
    return this.#bytes;
  }

  #drop(k: string, w: Waiting): void {
    this.#waiting.delete(k);
    this.#queued -= w.messages.length;
    this.#bytes -= w.bytes;
  }
}
