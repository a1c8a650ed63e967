/**
 * The I/O half of PeerJS's cluster mode: carries {@link ClusterPeers}' asks
 * to Redis and Redis' messages back. Two ioredis clients of its own
 * (commands, and this instance's channel `pj:i:<id>`), the scripts of
 * `peer_scripts.ts`, the offline queues' sweep, reaping and recovery. It
 * runs beside the DIVA backplane (`RedisBackplane`, see `redis_cluster.ts`)
 * under the same instance id, and relies on its heartbeat:
 * `sig:alive:<id>` says this instance lives, and ids are claimed only
 * while it does.
 *
 * **Liveness.** An id whose holder's `sig:alive` key expired (5 s after
 * the holder's last heartbeat) is free at once for claims, and messages for
 * it wait in its queue; every second each instance also runs the reaper
 * script, which deletes such holders. So a killed instance's ids are free
 * within about 6 s. An instance that finds itself reaped (a long pause) or
 * Redis emptied registers its ids again; one taken meanwhile is closed.
 *
 * **Offline queues** are swept every {@link SWEEP_MS} ms by every
 * instance: due queues are taken by one of them, atomically, and each
 * sender in them is told `EXPIRE` (relayed to wherever it is held). The
 * cluster-wide totals are read every second for the metrics.
 *
 * **Redis down.** Claims are answered `unavailable`, relays to ids held
 * elsewhere refused (see `peers.ts`); ids held here keep talking, and
 * `/readyz` says 503 so new clients go elsewhere.
 *
 * @module
 */

import type { Redis } from "ioredis";
import { redisClients } from "./redis_clients.ts";
import { logger } from "../log.ts";
import type { OfflineLimits } from "../peerjs/directory.ts";
import {
  claimReply,
  PEER_SCRIPTS,
  type PeerScripts,
  relayReply,
  sweepReply,
} from "./peer_scripts.ts";
import {
  ClusterPeers,
  type PeerClaimReply,
  type PeerLink,
  type PeerRelayAnswer,
  type PeerRelayAsk,
} from "./peers.ts";

const TICK_MS = 1000;
/** How often every instance looks for expired offline queues, ms. */
export const SWEEP_MS = 250;
/** Most queues one sweep takes. */
const SWEEP_MAX = 256;
/** Ticks in a row that may fail before the link is deemed dead and reopened. */
const MAX_MISSED_TICKS = 2;

/** Settings of {@link RedisPeers}. */
export interface RedisPeersOptions {
  /** Redis' URL. */
  url: string;
  /** This instance's id (the DIVA backplane's, whose heartbeat keeps it alive). */
  id: string;
}

/**
 * PeerJS ids over Redis for one instance: the {@link PeerLink} of a
 * {@link ClusterPeers}, which is the directory the engine is given.
 *
 * @example
 * ```ts ignore
 * const link = new RedisPeers({ url, id: backplane.id });
 * const engine = peerjsEngine({ directory: (hooks, limits) => link.peers.attach(hooks, limits) });
 * link.registered(true); // once the backplane's heartbeat runs
 * await link.start();
 * ```
 */
export class RedisPeers implements PeerLink {
  /** The directory (attach it to the engine). */
  readonly peers: ClusterPeers;
  readonly #options: RedisPeersOptions;
  readonly #cmd: Redis & PeerScripts;
  readonly #sub: Redis;
  readonly #log = logger("cluster");
  readonly #inFlight = new Set<Promise<unknown>>();
  #live = false;
  #registered = false;
  #stopped = false;
  #started = false;
  #connecting = false;
  #sweeping = false;
  #missedTicks = 0;
  #timer: ReturnType<typeof setInterval> | undefined;
  #sweepTimer: ReturnType<typeof setInterval> | undefined;

  /** A link; nothing connects until {@link start}. */
  constructor(options: RedisPeersOptions) {
    this.#options = options;
    this.peers = new ClusterPeers(this);
    const clients = redisClients<PeerScripts>(options.url, PEER_SCRIPTS, "peerjs", {
      up: () => this.#up(),
      down: () => this.#down(),
      message: (_channel, message) => this.peers.message(message),
    });
    this.#cmd = clients.cmd;
    this.#sub = clients.sub;
  }

  /** {@link PeerLink.live}: Redis is up and this instance's ids are registered. */
  get live(): boolean {
    return this.#live;
  }

  /** True while PeerJS's cluster side can be used. */
  get ready(): boolean {
    return this.#live;
  }

  /**
   * Whether this instance is alive in the cluster (the DIVA backplane is
   * ready, so its heartbeat keeps `sig:alive:<id>`). Claims wait for it;
   * when it comes back every held id is registered again, since the reaper
   * may have released them meanwhile.
   */
  registered(alive: boolean): void {
    this.#registered = alive;
    if (alive) this.#up();
    else this.#down();
  }

  /** Connects, listens on this instance's channel and starts the sweep and the reaper. */
  async start(): Promise<void> {
    this.#started = true;
    this.#timer = setInterval(() => this.#track(this.#tick()), TICK_MS);
    this.#sweepTimer = setInterval(() => this.#sweep(), SWEEP_MS);
    await Promise.allSettled([this.#cmd.connect(), this.#sub.connect()]);
    this.#up();
  }

  /** Stops: releases this instance's ids in Redis (its clients are gone) and disconnects. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#timer);
    clearInterval(this.#sweepTimer);
    await Promise.allSettled([...this.#inFlight]);
    if (this.#cmd.status === "ready") {
      await this.#cmd.pjGoodbye(this.#options.id).catch(() => {});
    }
    this.#cmd.disconnect();
    this.#sub.disconnect();
    this.#live = false;
  }

  /** {@link PeerLink.claim}. */
  claim(key: string, id: string, conn: number, token: string): Promise<PeerClaimReply> {
    const p = this.#cmd.pjClaim(key, id, this.#options.id, conn, token).then(claimReply);
    this.#track(p.catch((e: Error) => this.#failed("claim", e)));
    return p;
  }

  /** {@link PeerLink.release}. */
  release(key: string, id: string, conn: number): void {
    this.#track(
      this.#cmd.pjRelease(key, id, this.#options.id, conn)
        .catch((e: Error) => this.#failed("release", e)),
    );
  }

  /** {@link PeerLink.taken}. */
  taken(_key: string, _id: string, conn: number): void {
    this.#track(
      this.#cmd.pjTaken(this.#options.id, conn).catch((e: Error) => this.#failed("taken", e)),
    );
  }

  /** {@link PeerLink.relay}. */
  relay(ask: PeerRelayAsk, limits: OfflineLimits): Promise<PeerRelayAnswer> {
    return this.#cmd.pjRelay(
      ask.key,
      ask.src,
      ask.dst,
      ask.frame,
      ask.queue ? 1 : 0,
      ask.src.length,
      ask.size,
      limits.maxPerId,
      limits.maxBytes,
      limits.expireMs,
      this.#options.id,
    ).then(relayReply);
  }

  /** {@link PeerLink.ids}. */
  ids(key: string): Promise<string[]> {
    return this.#cmd.hkeys(`pj:h:${key}`);
  }

  #failed(what: string, e: Error): void {
    this.#log.debug("peerjs {what} failed: {error}", { what, error: e.message });
  }

  #track(p: Promise<unknown>): void {
    this.#inFlight.add(p);
    p.finally(() => this.#inFlight.delete(p));
  }

  #down(): void {
    if (this.#stopped || !this.#live) return;
    this.#live = false;
    this.#log.info("peerjs cluster ids unavailable");
  }

  #up(): void {
    const can = () =>
      !this.#stopped && this.#started && !this.#live && this.#registered &&
      this.#cmd.status === "ready" && this.#sub.status === "ready";
    if (this.#connecting || !can()) return;
    // The channel must listen before anything is claimed, or this instance
    // would miss what is sent to it meanwhile.
    this.#connecting = true;
    this.#track(
      this.#sub.subscribe(`pj:i:${this.#options.id}`).then(async () => {
        if (!can()) return;
        await this.#resync();
        if (!can()) return;
        this.#live = true;
        this.#log.info("peerjs cluster ids ready as {id}", { id: this.#options.id });
      }).catch((e: Error) => this.#failed("registration", e))
        .finally(() => this.#connecting = false),
    );
  }

  /**
   * Makes Redis hold exactly this instance's ids: what it holds there but
   * not here is given up, what it holds here is registered again (one that
   * another instance took meanwhile is closed here).
   */
  async #resync(): Promise<void> {
    const id = this.#options.id;
    const regs = this.peers.registrations();
    await this.#cmd.pjPrune(id, ...regs.map((r) => `${r.key}:${r.id}`));
    await Promise.all(regs.map(async (r) => {
      const reply = await this.#cmd.pjRestore(r.key, r.id, id, r.conn, r.token);
      const ok = reply[0] === "ok";
      this.peers.restored(r, ok ? "ok" : "conflict", ok ? reply.slice(1).map(String) : []);
    }));
  }

  /** Takes the offline queues that are due, and has their senders told. */
  #sweep(): void {
    if (!this.#live || this.#sweeping) return;
    this.#sweeping = true;
    this.#track(
      this.#cmd.pjSweep(SWEEP_MAX).then((reply) => {
        if (reply.length > 0) this.peers.expire(sweepReply(reply));
      }).catch((e: Error) => this.#failed("sweep", e)).finally(() => this.#sweeping = false),
    );
  }

  /** Every second: reaping dead instances, the queues' totals, and noticing being reaped. */
  async #tick(): Promise<void> {
    if (this.#stopped || this.#cmd.status !== "ready") return;
    if (!this.#live) {
      this.#up();
      return;
    }
    try {
      await this.#cmd.pjReap();
      const [n, bytes] = await this.#cmd.mget("pj:qn", "pj:qbytes");
      this.peers.counted(Number(n ?? 0), Number(bytes ?? 0));
      if (this.peers.registrations().length > 0) {
        const held = await this.#cmd.sismember("pj:insts", this.#options.id);
        if (held === 0 && this.#live) {
          this.#log.info("this instance's PeerJS ids were lost; registering them again");
          await this.#resync();
        }
      }
      this.#missedTicks = 0;
    } catch (e) {
      this.#log.debug("peerjs tick failed: {error}", { error: (e as Error).message });
      if (++this.#missedTicks >= MAX_MISSED_TICKS && this.#live) {
        // Redis holds the connection open but answers nothing: reconnect, so
        // that everything is registered again once it answers.
        this.#log.warn("redis does not answer (peerjs); reconnecting");
        this.#missedTicks = 0;
        this.#live = false;
        this.#cmd.disconnect(true);
        this.#sub.disconnect(true);
      }
    }
  }
}
