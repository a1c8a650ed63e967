/**
 * Cluster mode: many instances, one mesh, over a Redis backplane.
 *
 * Redis is the directory: who holds each global ident (`sig:owner`), each
 * room's members in join order (`sig:room:<room>`, scored by a global
 * sequence number), and each instance's members (`sig:im:<id>`). Every claim
 * and release is one Lua script, so joins never race, and each script
 * publishes its event (`seq|kind|instance|g`) on the room's channel
 * (`sig:ev:<room>`) from inside the script: every instance that watches the
 * room sees the joins and leaves in exactly the order Redis applied them.
 *
 * The broker stays free of I/O. It sees remote members as members without a
 * local connection, and this module feeds it joins and leaves in that order
 * ({@link Broker.memberJoined}, {@link Broker.memberLeft}), which is what
 * makes each pair announced once, with the joiner as initiator, across
 * instances. Signals to a remote member are published on the holder's
 * channel (`sig:to:<id>`).
 *
 * Liveness: each instance refreshes `sig:alive:<id>` (expires after 5 s)
 * every second; every instance reaps instances whose key expired, releasing
 * their members with leave events, so survivors say `bye` within seconds.
 * When Redis comes back after an outage (even empty), each instance
 * re-registers its members, flushes the releases it could not make, and
 * re-reads the rooms it watches.
 *
 * @module
 */

import { Redis } from "ioredis";
import type { Broker, Connection, Directory } from "./broker.ts";
import { logger } from "./log.ts";

const OWNER = "sig:owner";

/** Claims a global ident and joins its room, or says why not. */
const CLAIM = `
local g, room, inst, max = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('HEXISTS', '${OWNER}', g) == 1 then return {'taken'} end
local rk = 'sig:room:' .. room
if redis.call('ZCARD', rk) >= max then return {'full'} end
local out = {'ok', 0}
for _, m in ipairs(redis.call('ZRANGE', rk, 0, -1)) do
  out[#out + 1] = m
  out[#out + 1] = redis.call('HGET', '${OWNER}', m) or ''
end
local seq = redis.call('INCR', 'sig:seq')
out[2] = seq
redis.call('HSET', '${OWNER}', g, inst)
redis.call('ZADD', rk, seq, g)
redis.call('SADD', 'sig:im:' .. inst, g)
redis.call('PUBLISH', 'sig:ev:' .. room, seq .. '|j|' .. inst .. '|' .. g)
return out
`;

/** Gives up a global ident held by this instance. */
const RELEASE = `
local g, room, inst = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', '${OWNER}', g) ~= inst then return 0 end
redis.call('HDEL', '${OWNER}', g)
redis.call('ZREM', 'sig:room:' .. room, g)
redis.call('SREM', 'sig:im:' .. inst, g)
local seq = redis.call('INCR', 'sig:seq')
redis.call('PUBLISH', 'sig:ev:' .. room, seq .. '|l|' .. inst .. '|' .. g)
return 1
`;

/** Re-registers a member this instance holds (after Redis lost it). */
const RESTORE = `
local g, room, inst = ARGV[1], ARGV[2], ARGV[3]
local owner = redis.call('HGET', '${OWNER}', g)
if owner and owner ~= inst then return 'conflict' end
local rk = 'sig:room:' .. room
if owner == inst and redis.call('ZSCORE', rk, g) then return 'kept' end
local seq = redis.call('INCR', 'sig:seq')
redis.call('HSET', '${OWNER}', g, inst)
redis.call('ZADD', rk, seq, g)
redis.call('SADD', 'sig:im:' .. inst, g)
redis.call('PUBLISH', 'sig:ev:' .. room, seq .. '|r|' .. inst .. '|' .. g)
return 'restored'
`;

/** Refreshes this instance's liveness; 1 if it was still alive. */
const HEARTBEAT = `
local existed = redis.call('EXISTS', 'sig:alive:' .. ARGV[1])
redis.call('SET', 'sig:alive:' .. ARGV[1], '1', 'PX', ARGV[2])
redis.call('SADD', 'sig:insts', ARGV[1])
return existed
`;

/** Releases every member of every instance whose liveness key expired. */
const REAP = `
local reaped = 0
for _, id in ipairs(redis.call('SMEMBERS', 'sig:insts')) do
  if redis.call('EXISTS', 'sig:alive:' .. id) == 0 then
    for _, g in ipairs(redis.call('SMEMBERS', 'sig:im:' .. id)) do
      local room = string.sub(g, 1, string.find(g, ':', 1, true) - 1)
      if redis.call('HGET', '${OWNER}', g) == id then redis.call('HDEL', '${OWNER}', g) end
      redis.call('ZREM', 'sig:room:' .. room, g)
      local seq = redis.call('INCR', 'sig:seq')
      redis.call('PUBLISH', 'sig:ev:' .. room, seq .. '|l|' .. id .. '|' .. g)
      reaped = reaped + 1
    end
    redis.call('DEL', 'sig:im:' .. id)
    redis.call('SREM', 'sig:insts', id)
  end
end
return reaped
`;

/** A room's members with their holders, and the sequence number they are current at. */
const SNAPSHOT = `
local out = {tonumber(redis.call('GET', 'sig:seq') or '0')}
for _, m in ipairs(redis.call('ZRANGE', 'sig:room:' .. ARGV[1], 0, -1)) do
  out[#out + 1] = m
  out[#out + 1] = redis.call('HGET', '${OWNER}', m) or ''
end
return out
`;

/** Deletes this instance's registration on a graceful stop. */
const GOODBYE = `
redis.call('DEL', 'sig:alive:' .. ARGV[1])
redis.call('SREM', 'sig:insts', ARGV[1])
redis.call('DEL', 'sig:im:' .. ARGV[1])
return 1
`;

type Reply = (string | number)[];

interface Scripts {
  sigClaim(g: string, room: string, inst: string, max: number): Promise<Reply>;
  sigRelease(g: string, room: string, inst: string): Promise<number>;
  sigRestore(g: string, room: string, inst: string): Promise<string>;
  sigHeartbeat(inst: string, ttl: number): Promise<number>;
  sigReap(): Promise<number>;
  sigSnapshot(room: string): Promise<Reply>;
  sigGoodbye(inst: string): Promise<number>;
}

/** One room event from a channel. */
interface RoomEvent {
  seq: number;
  kind: "j" | "l" | "r";
  instance: string;
  g: string;
}

/** What this instance knows of a room it watches. */
interface Watch<H> {
  /** Settles when the channel subscription is acknowledged. */
  subscribed: Promise<unknown>;
  /** False until a snapshot said where the event stream starts. */
  initialized: boolean;
  /** Highest sequence number applied. */
  applied: number;
  /** Events that arrived before the snapshot. */
  early: RoomEvent[];
  /** Local claims that succeeded, by the sequence number of their join event. */
  pending: Map<number, { conn: Connection<H>; ident: string }>;
  /** Claims whose script has not answered yet. */
  inFlight: number;
}

/** Liveness timing. */
const HEARTBEAT_MS = 1000;
const ALIVE_TTL_MS = 5000;
const PRUNE_AFTER_MS = 3000;
const COMMAND_TIMEOUT_MS = 2000;
/** Heartbeats in a row that may fail before the link is deemed dead and reopened. */
const MAX_MISSED_HEARTBEATS = 2;

/** Settings of a cluster member. */
export interface ClusterOptions {
  /** The Redis URL. */
  url: string;
  /** Most members a room may have, cluster-wide. */
  maxPeersPerRoom: number;
  /** Called whenever readiness changes. */
  onReady?: (ready: boolean) => void;
}

function randomId(): string {
  const b = crypto.getRandomValues(new Uint8Array(12));
  return Array.from(b, (x) => String.fromCharCode(0x61 + (x % 26))).join("");
}

function parseEvent(msg: string): RoomEvent | undefined {
  const a = msg.indexOf("|");
  const b = msg.indexOf("|", a + 1);
  const c = msg.indexOf("|", b + 1);
  if (a < 0 || b < 0 || c < 0) return undefined;
  const kind = msg.slice(a + 1, b);
  if (kind !== "j" && kind !== "l" && kind !== "r") return undefined;
  return { seq: Number(msg.slice(0, a)), kind, instance: msg.slice(b + 1, c), g: msg.slice(c + 1) };
}

/** The ident part of a global ident. */
function identOf(g: string): string {
  return g.slice(g.indexOf(":") + 1);
}

/**
 * This instance's link to the cluster: the broker's {@link Directory}, backed
 * by Redis.
 *
 * @example
 * ```ts
 * const cluster = new Cluster<WebSocket>({ url: "redis://127.0.0.1:6379", maxPeersPerRoom: 256 });
 * const broker = new Broker({ ...options, directory: cluster });
 * await cluster.start(broker);
 * ```
 */
export class Cluster<H> implements Directory<H> {
  /** This instance's id in the cluster. */
  readonly id: string = randomId();
  readonly #options: ClusterOptions;
  readonly #cmd: Redis & Scripts;
  readonly #sub: Redis;
  readonly #log = logger("cluster");
  #broker: Broker<H> | undefined;
  readonly #watches = new Map<string, Watch<H>>();
  /** Releases that could not be made while Redis was away, by global ident. */
  readonly #unreleased = new Map<string, string>();
  /** Remote instances seen missing, with when. */
  readonly #missingSince = new Map<string, number>();
  readonly #inFlight = new Set<Promise<unknown>>();
  #ready = false;
  #recovering = false;
  #stopped = false;
  #timer: ReturnType<typeof setInterval> | undefined;
  #pruneTimer: ReturnType<typeof setTimeout> | undefined;
  #missedHeartbeats = 0;

  /** A cluster link; nothing connects until {@link start}. */
  constructor(options: ClusterOptions) {
    this.#options = options;
    const common = {
      lazyConnect: true,
      maxRetriesPerRequest: 1,
      retryStrategy: (n: number) => Math.min(100 * n, 1000),
    };
    // A Redis that stops answering without closing the connection must not
    // leave calls hanging: commands give up after COMMAND_TIMEOUT_MS.
    this.#cmd = new Redis(options.url, {
      ...common,
      enableOfflineQueue: false,
      commandTimeout: COMMAND_TIMEOUT_MS,
    }) as
      & Redis
      & Scripts;
    this.#sub = new Redis(options.url, { ...common, enableOfflineQueue: true });
    const scripts: [keyof Scripts, string][] = [
      ["sigClaim", CLAIM],
      ["sigRelease", RELEASE],
      ["sigRestore", RESTORE],
      ["sigHeartbeat", HEARTBEAT],
      ["sigReap", REAP],
      ["sigSnapshot", SNAPSHOT],
      ["sigGoodbye", GOODBYE],
    ];
    for (const [name, lua] of scripts) this.#cmd.defineCommand(name, { numberOfKeys: 0, lua });
    for (const r of [this.#cmd, this.#sub]) {
      r.on("error", (e: Error) => this.#log.debug("redis: {error}", { error: e.message }));
      r.on("close", () => this.#down());
      r.on("ready", () => this.#up());
    }
    this.#sub.on("message", (channel: string, message: string) => {
      try {
        this.#message(channel, message);
      } catch (e) {
        // One bad event must not take the instance down.
        this.#log.error("cluster event failed: {error}", { error: (e as Error).stack ?? e });
      }
    });
  }

  /** True while Redis is reachable and this instance is registered. */
  get ready(): boolean {
    return this.#ready;
  }

  /** Connects, registers this instance and starts the heartbeat. */
  async start(broker: Broker<H>): Promise<void> {
    this.#broker = broker;
    this.#timer = setInterval(() => this.#tick(), HEARTBEAT_MS);
    await Promise.allSettled([this.#cmd.connect(), this.#sub.connect()]);
    await this.#sub.subscribe(`sig:to:${this.id}`).catch(() => {});
    this.#up();
  }

  /**
   * Stops: waits for releases in flight (the broker released every member
   * when its connections closed), deletes this instance's registration and
   * disconnects.
   */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#timer);
    clearTimeout(this.#pruneTimer);
    await Promise.allSettled([...this.#inFlight]);
    if (this.#cmd.status === "ready") {
      await Promise.allSettled([...this.#unreleased].map(([g, room]) => this.#release(g, room)));
      await this.#cmd.sigGoodbye(this.id).catch(() => {});
    }
    this.#cmd.disconnect();
    this.#sub.disconnect();
    this.#setReady(false);
  }

  /** {@link Directory.claim}: runs the claim script, then waits for the join's turn. */
  claim(conn: Connection<H>, room: string, ident: string): void {
    const broker = this.#broker!;
    if (!this.#ready) {
      queueMicrotask(() =>
        broker.claimRefused(conn, room, "unavailable", "the cluster is unreachable; retry later")
      );
      return;
    }
    const w = this.#watch(room);
    w.inFlight++;
    const g = room + ":" + ident;
    this.#track((async () => {
      let reply: Reply;
      try {
        await w.subscribed;
        reply = await this.#cmd.sigClaim(g, room, this.id, this.#options.maxPeersPerRoom);
      } catch (e) {
        w.inFlight--;
        this.#log.warn("claim of {g} failed: {error}", { g, error: (e as Error).message });
        broker.claimRefused(conn, room, "unavailable", "the cluster is unreachable; retry later");
        return;
      }
      w.inFlight--;
      if (reply[0] === "taken") broker.claimRefused(conn, room, "ident-taken", g);
      else if (reply[0] === "full") {
        broker.claimRefused(conn, room, "limit", `room ${room} is full`);
      } else {
        const seq = Number(reply[1]);
        if (!w.initialized) this.#initialize(room, w, seq - 1, reply, 2);
        w.pending.set(seq, { conn, ident });
        this.#pump(room, w);
      }
    })());
  }

  /** {@link Directory.release}: releases now, or once Redis is back. */
  release(g: string, room: string): void {
    if (!this.#ready) {
      this.#unreleased.set(g, room);
      return;
    }
    this.#track(this.#release(g, room));
  }

  /** {@link Directory.relay}: publishes the frame on the holder's channel. */
  relay(instance: string, g: string, frame: string): boolean {
    if (!this.#ready) return false;
    this.#cmd.publish(`sig:to:${instance}`, g + "\n" + frame).catch(() => {});
    return true;
  }

  /** {@link Directory.unwatch}: stops following a room nothing local is in. */
  unwatch(room: string): void {
    const w = this.#watches.get(room);
    if (w === undefined || w.inFlight > 0 || w.pending.size > 0) return;
    this.#watches.delete(room);
    this.#sub.unsubscribe(`sig:ev:${room}`).catch(() => {});
  }

  async #release(g: string, room: string): Promise<void> {
    try {
      await this.#cmd.sigRelease(g, room, this.id);
      this.#unreleased.delete(g);
    } catch {
      this.#unreleased.set(g, room);
    }
  }

  #track(p: Promise<unknown>): void {
    this.#inFlight.add(p);
    p.finally(() => this.#inFlight.delete(p));
  }

  #watch(room: string): Watch<H> {
    let w = this.#watches.get(room);
    if (w === undefined) {
      w = {
        subscribed: this.#sub.subscribe(`sig:ev:${room}`),
        initialized: false,
        applied: 0,
        early: [],
        pending: new Map(),
        inFlight: 0,
      };
      w.subscribed.catch(() => {});
      this.#watches.set(room, w);
    }
    return w;
  }

  /** Takes a room's members from a script reply (`[…, g, owner, g, owner…]` from `at`). */
  #initialize(room: string, w: Watch<H>, applied: number, reply: Reply, at: number): void {
    const broker = this.#broker!;
    for (let i = at; i + 1 < reply.length; i += 2) {
      const g = String(reply[i]);
      const owner = String(reply[i + 1]);
      if (owner !== "" && owner !== this.id) broker.memberJoined(room, identOf(g), owner, null);
    }
    w.applied = applied;
    w.initialized = true;
  }

  #message(channel: string, message: string): void {
    if (channel.startsWith("sig:to:")) {
      const nl = message.indexOf("\n");
      if (nl > 0) this.#broker?.deliver(message.slice(0, nl), message.slice(nl + 1));
      return;
    }
    const room = channel.slice("sig:ev:".length);
    const w = this.#watches.get(room);
    const ev = parseEvent(message);
    if (w === undefined || ev === undefined) return;
    w.early.push(ev);
    if (w.initialized) this.#pump(room, w);
  }

  /** Applies the events that arrived, in order, skipping what a snapshot covered. */
  #pump(room: string, w: Watch<H>): void {
    const broker = this.#broker!;
    const events = w.early;
    w.early = [];
    for (let i = 0; i < events.length; i++) {
      const ev = events[i];
      if (ev.seq <= w.applied) continue;
      if (ev.kind === "j" && ev.instance === this.id && !w.pending.has(ev.seq) && w.inFlight > 0) {
        // Our own join, published before its script's reply reached us: wait
        // for the reply, so the join completes in its turn.
        w.early = events.slice(i);
        return;
      }
      w.applied = ev.seq;
      if (ev.kind === "l") {
        if (ev.instance !== this.id) broker.memberLeft(ev.g);
        continue;
      }
      const claim = w.pending.get(ev.seq);
      if (claim !== undefined) {
        w.pending.delete(ev.seq);
        broker.memberJoined(room, claim.ident, this.id, claim.conn);
      } else if (ev.instance !== this.id) {
        broker.memberJoined(room, identOf(ev.g), ev.instance, null);
      }
    }
  }

  #setReady(ready: boolean): void {
    if (this.#ready === ready) return;
    this.#ready = ready;
    this.#log.info(ready ? "cluster ready as {id}" : "cluster unavailable", { id: this.id });
    this.#options.onReady?.(ready);
  }

  #down(): void {
    if (this.#stopped) return;
    this.#setReady(false);
    // Joins whose events will not come any more complete now; what other
    // instances missed is put right when Redis is back.
    for (const [room, w] of this.#watches) {
      for (const [seq, claim] of w.pending) {
        w.pending.delete(seq);
        this.#broker!.memberJoined(room, claim.ident, this.id, claim.conn);
      }
    }
  }

  #up(): void {
    if (this.#stopped || this.#recovering) return;
    if (this.#cmd.status !== "ready" || this.#sub.status !== "ready") return;
    this.#recovering = true;
    this.#track(this.#recover().finally(() => this.#recovering = false));
  }

  /**
   * Makes Redis agree with this instance again: registers it, flushes the
   * releases it owes, re-registers its members, drops members Redis has that
   * it does not, and re-reads every watched room.
   */
  async #recover(): Promise<void> {
    const broker = this.#broker!;
    try {
      await this.#cmd.sigHeartbeat(this.id, ALIVE_TTL_MS);
      await Promise.all([...this.#unreleased].map(([g, room]) => this.#release(g, room)));
      const local = broker.localMembers();
      const mine = new Set(local.map((m) => m.g));
      for (const m of local) {
        const r = await this.#cmd.sigRestore(m.g, m.room, this.id);
        if (r === "conflict") this.#log.warn("{g} is held elsewhere after recovery", { g: m.g });
      }
      for (const g of await this.#cmd.smembers(`sig:im:${this.id}`)) {
        if (!mine.has(g)) await this.#cmd.sigRelease(g, g.slice(0, g.indexOf(":")), this.id);
      }
      for (const [room, w] of this.#watches) {
        if (!w.initialized) continue;
        await this.#resync(room, w, false);
      }
      this.#setReady(true);
      // Leaves other instances made while Redis was away reach us only if we
      // were subscribed again when they flushed them; a second look, once
      // every live instance has had time to re-register, drops the rest.
      clearTimeout(this.#pruneTimer);
      this.#pruneTimer = setTimeout(() => this.#track(this.#prune()), PRUNE_AFTER_MS);
    } catch (e) {
      this.#log.warn("recovery failed, will retry: {error}", { error: (e as Error).message });
    }
  }

  /**
   * Re-reads a room: members Redis has and this view lacks are announced as
   * joins; with `prune`, remote members Redis no longer has are dropped.
   */
  async #resync(room: string, w: Watch<H>, prune: boolean): Promise<void> {
    const broker = this.#broker!;
    const reply = await this.#cmd.sigSnapshot(room);
    const inRedis = new Set<string>();
    for (let i = 1; i + 1 < reply.length; i += 2) inRedis.add(String(reply[i]));
    const fresh: Reply = [reply[0]];
    const known = new Set<string>();
    for (const m of broker.roomMembers(room)) {
      known.add(m.g);
      if (prune && !m.local && !inRedis.has(m.g)) broker.memberLeft(m.g);
    }
    for (let i = 1; i + 1 < reply.length; i += 2) {
      if (!known.has(String(reply[i]))) fresh.push(reply[i], reply[i + 1]);
    }
    if (!this.#watches.has(room)) return;
    this.#initialize(room, w, Number(reply[0]), fresh, 1);
    this.#pump(room, w);
  }

  async #prune(): Promise<void> {
    if (!this.#ready) return;
    try {
      for (const [room, w] of [...this.#watches]) {
        if (w.initialized) await this.#resync(room, w, true);
      }
    } catch (e) {
      this.#log.debug("prune failed: {error}", { error: (e as Error).message });
    }
  }

  /** Every second: liveness, reaping dead instances, and noticing vanished ones. */
  async #tick(): Promise<void> {
    if (this.#stopped || this.#cmd.status !== "ready") return;
    if (!this.#ready) {
      // A recovery that failed while Redis stayed reachable is tried again.
      this.#up();
      return;
    }
    try {
      const alive = await this.#cmd.sigHeartbeat(this.id, ALIVE_TTL_MS);
      // Our key had expired (a long pause, or Redis restarted): re-register.
      if (alive === 0 && this.#ready) {
        this.#setReady(false);
        this.#up();
      }
      // Leaves made while this instance was not ready (during a recovery,
      // say) are owed to the cluster until they are made.
      if (this.#ready && this.#unreleased.size > 0) {
        await Promise.all([...this.#unreleased].map(([g, room]) => this.#release(g, room)));
      }
      await this.#cmd.sigReap();
      await this.#audit();
      this.#missedHeartbeats = 0;
    } catch (e) {
      this.#log.debug("heartbeat failed: {error}", { error: (e as Error).message });
      if (++this.#missedHeartbeats >= MAX_MISSED_HEARTBEATS && this.#ready) {
        // Redis holds the connection open but answers nothing: stop taking
        // new clients, and reconnect so a recovery follows once it answers.
        this.#log.warn("redis does not answer; reconnecting");
        this.#missedHeartbeats = 0;
        this.#setReady(false);
        this.#cmd.disconnect(true);
        this.#sub.disconnect(true);
      }
    }
  }

  /**
   * Remote instances this view still shows but Redis no longer knows (it
   * restarted empty while they died) are dropped after the liveness timeout.
   */
  async #audit(): Promise<void> {
    const broker = this.#broker!;
    const now = Date.now();
    for (const inst of broker.remoteInstances()) {
      const alive = await this.#cmd.exists(`sig:alive:${inst}`);
      if (alive === 1) {
        this.#missingSince.delete(inst);
        continue;
      }
      const since = this.#missingSince.get(inst);
      if (since === undefined) this.#missingSince.set(inst, now);
      else if (now - since >= ALIVE_TTL_MS) {
        this.#missingSince.delete(inst);
        this.#log.info("instance {inst} is gone; dropping its members", { inst });
        broker.instanceGone(inst);
      }
    }
  }
}
