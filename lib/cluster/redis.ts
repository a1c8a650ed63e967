/**
 * Cluster mode: many instances, one mesh, over a Redis backplane.
 *
 * Redis is the directory: who holds each global ident (`sig:owner`), each
 * room's members in join order (`sig:room:<room>`, scored by a global
 * sequence number), and each instance's members (`sig:im:<id>`). Every claim
 * and release is one Lua script (`lib/cluster/scripts.ts`), so joins never
 * race, and each script publishes its event (`seq|kind|instance|g`) on the
 * room's channel (`sig:ev:<room>`) from inside the script: every instance
 * that watches the room sees the joins and leaves in exactly the order Redis
 * applied them.
 *
 * This module is the I/O half: two ioredis clients (commands, and
 * subscriptions), the scripts, liveness, reaping and recovery. What the
 * replies and channel messages mean for the broker, and in which order they
 * apply, is the {@link Sequencer}'s (`lib/cluster/sequencer.ts`): this
 * adapter feeds it and hands it the broker, through the narrow
 * {@link ClusterBroker} interface, as its sink. Signals to a remote member
 * are published on the holder's channel (`sig:to:<id>`).
 *
 * Liveness: each instance refreshes `sig:alive:<id>` (expires after 5 s)
 * every second; every instance reaps instances whose key expired, releasing
 * their members with leave events, so survivors say `bye` within seconds.
 * When Redis comes back after an outage (even empty), each instance
 * re-registers its members, flushes the releases it could not make, and
 * re-reads the rooms it watches.
 *
 * Resumable sessions live cluster-wide too (`docs/cluster.md`): each is
 * recorded as `sig:sess:<sha256(token)>` (never the token) with its holder
 * and idents, expiring with the grace once its socket is gone. A resume of a
 * token this instance does not hold looks the record up, lets the broker
 * check the idents, subscribes to their rooms and runs the move script,
 * which moves every ident here at once and publishes one `m` event per
 * ident; the old holder learns of it on `sig:to:<id>` and hands over what it
 * kept for the session (`\x01h|<conn>|<json>`), which completes the resume.
 *
 * @module
 */

import { createHash } from "node:crypto";
import type { Redis } from "ioredis";
import { redisClients } from "./redis_clients.ts";
import type { Directory, Handoff } from "../diva/broker.ts";
import { logger } from "../log.ts";
import type { Backplane, BackplaneOptions, ClusterBroker } from "./backplane.ts";
import { type Reply, SCRIPTS, type Scripts, TOMBSTONE_MS } from "./scripts.ts";
import {
  type ClaimAnswer,
  type Holder,
  type RoomEvent,
  Sequencer,
  type View,
} from "./sequencer.ts";

/** Liveness timing. */
const HEARTBEAT_MS = 1000;
const ALIVE_TTL_MS = 5000;
const PRUNE_AFTER_MS = 3000;
/** Heartbeats in a row that may fail before the link is deemed dead and reopened. */
const MAX_MISSED_HEARTBEATS = 2;
/** How long a resume waits for the old holder's handoff before it completes without it. */
const HANDOFF_TIMEOUT_MS = 5000;
/** How long a relay for an ident that moved away is forwarded to its new holder. */
const FORWARD_MS = 10_000;

const UNAVAILABLE = "the cluster is unreachable; retry later";
const NO_SESSION = "no such session (expired, used, or never issued)";

/** The key part of a session's record: the hex SHA-256 of its token (the token is never stored). */
export function tokenHash(token: string): string {
  return createHash("sha256").update(token).digest("hex");
}

/** Settings of the Redis backplane. */
export interface RedisBackplaneOptions extends BackplaneOptions {
  /** The clock for liveness audits, in ms (default `Date.now`). Timers stay real. */
  now?: () => number;
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
  if (kind !== "j" && kind !== "l" && kind !== "r" && kind !== "m") return undefined;
  return { seq: Number(msg.slice(0, a)), kind, instance: msg.slice(b + 1, c), g: msg.slice(c + 1) };
}

/** The members of a script reply, `[…, g, owner, g, owner…]` from `at`. */
function holders(reply: Reply, at: number): Holder[] {
  const out: Holder[] = [];
  for (let i = at; i + 1 < reply.length; i += 2) {
    out.push({ g: String(reply[i]), instance: String(reply[i + 1]) });
  }
  return out;
}

function claimAnswer(reply: Reply): ClaimAnswer {
  if (reply[0] === "taken") return { kind: "taken" };
  if (reply[0] === "full") return { kind: "full" };
  return { kind: "ok", seq: Number(reply[1]), members: holders(reply, 2) };
}

/** The per-ident answers of the move script, `['ok', seq, n, g, owner…, seq, n, …]`. */
function moveAnswers(reply: Reply): { seq: number; members: Holder[] }[] {
  const out: { seq: number; members: Holder[] }[] = [];
  let at = 1;
  while (at + 1 < reply.length) {
    const n = Number(reply[at + 1]);
    const members: Holder[] = [];
    for (let i = 0; i < n; i++) {
      members.push({ g: String(reply[at + 2 + 2 * i]), instance: String(reply[at + 3 + 2 * i]) });
    }
    out.push({ seq: Number(reply[at]), members });
    at += 2 + 2 * n;
  }
  return out;
}

/**
 * This instance's link to the cluster: a {@link Backplane} for the server,
 * and the broker's {@link Directory}, backed by Redis.
 *
 * @example
 * ```ts ignore
 * const cluster = new RedisBackplane({
 *   url: "redis://127.0.0.1:6379",
 *   maxPeersPerRoom: 256,
 *   broker: () => broker,
 * });
 * const broker = new Broker({ ...options, directory: cluster });
 * await cluster.start();
 * ```
 */
export class RedisBackplane implements Backplane, Directory {
  /** This instance's id in the cluster. */
  readonly id: string = randomId();
  readonly #options: RedisBackplaneOptions;
  readonly #now: () => number;
  readonly #cmd: Redis & Scripts;
  readonly #sub: Redis;
  readonly #log = logger("cluster");
  #broker: ClusterBroker | undefined;
  #seq: Sequencer | undefined;
  /** Channel subscriptions of the sequencer's views, by room; settle when acknowledged. */
  readonly #subscribed = new Map<string, Promise<unknown>>();
  /** Releases that could not be made while Redis was away, by global ident. */
  readonly #unreleased = new Map<string, string>();
  /** Tokens of the sessions held here, by their hash (to name them to the broker). */
  readonly #tokens = new Map<string, string>();
  /** Holders found by a resume's look-up, by the resuming connection's id. */
  readonly #found = new Map<number, string>();
  /**
   * Resumes that wait for the old holder's handoff, by connection id, with
   * the timer that gives up on it (set once the move answered; the handoff
   * may come first).
   */
  readonly #handoffs = new Map<number, ReturnType<typeof setTimeout> | undefined>();
  /** Idents that moved from here to another instance, and when: relays for them follow. */
  readonly #movedAway = new Map<string, { to: string; at: number }>();
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
  constructor(options: RedisBackplaneOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
    const clients = redisClients<Scripts>(options.url, SCRIPTS, "diva", {
      up: () => this.#up(),
      down: () => this.#down(),
      message: (channel, message) => this.#message(channel, message),
    });
    this.#cmd = clients.cmd;
    this.#sub = clients.sub;
  }

  /** True while Redis is reachable and this instance is registered. */
  get ready(): boolean {
    return this.#ready;
  }

  /** Connects, registers this instance and starts the heartbeat. */
  async start(): Promise<void> {
    this.#broker = this.#options.broker();
    this.#seq = new Sequencer(this.id, this.#broker);
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
    for (const t of this.#handoffs.values()) clearTimeout(t);
    this.#handoffs.clear();
    await Promise.allSettled([...this.#inFlight]);
    if (this.#cmd.status === "ready") {
      await Promise.allSettled([...this.#unreleased].map(([g, room]) => this.#release(g, room)));
      await this.#cmd.sigGoodbye(this.id).catch(() => {});
    }
    this.#cmd.disconnect();
    this.#sub.disconnect();
    this.#setReady(false);
  }

  /** {@link Directory.claim}: runs the claim script; the sequencer completes the join in turn. */
  claim(conn: number, room: string, ident: string): void {
    const seq = this.#seq!;
    if (!this.#ready) {
      queueMicrotask(() => seq.claimUnavailable(conn, room));
      return;
    }
    const subscribed = this.#subscribe(room);
    const view = seq.claimStarted(room);
    const g = room + ":" + ident;
    this.#track((async () => {
      let reply: Reply;
      try {
        await subscribed;
        reply = await this.#cmd.sigClaim(g, room, this.id, this.#options.maxPeersPerRoom);
      } catch (e) {
        this.#log.warn("claim of {g} failed: {error}", { g, error: (e as Error).message });
        seq.claimAnswered(view, conn, ident, { kind: "failed" });
        return;
      }
      seq.claimAnswered(view, conn, ident, claimAnswer(reply));
    })());
  }

  /** Subscribes to a room's channel, once; settles when acknowledged. */
  #subscribe(room: string): Promise<unknown> {
    let subscribed = this.#subscribed.get(room);
    if (subscribed === undefined) {
      subscribed = this.#sub.subscribe(`sig:ev:${room}`);
      subscribed.catch(() => {});
      this.#subscribed.set(room, subscribed);
    }
    return subscribed;
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
    if (this.#seq?.unwatch(room) !== true) return;
    this.#subscribed.delete(room);
    this.#sub.unsubscribe(`sig:ev:${room}`).catch(() => {});
  }

  /**
   * {@link Directory.sessionHeld}: records (or updates) the session's
   * record. While Redis is away nothing is written: recovery records every
   * session held here.
   */
  sessionHeld(token: string, idents: readonly string[], graceMs: number, replaces?: string): void {
    const h = tokenHash(token);
    const known = this.#tokens.has(h);
    this.#tokens.set(h, token);
    let prev = "";
    if (replaces !== undefined) {
      prev = tokenHash(replaces);
      this.#tokens.delete(prev);
    }
    if (!this.#ready) return;
    const mode = known ? "set" : "new";
    this.#track(
      this.#cmd.sigSessPut(h, this.id, idents.join(" "), graceMs, mode, prev).catch((e) =>
        this.#log.debug("session record failed: {error}", { error: (e as Error).message })
      ),
    );
  }

  /** {@link Directory.sessionEnded}: drops the session's record (or recovery does). */
  sessionEnded(token: string): void {
    const h = tokenHash(token);
    this.#tokens.delete(h);
    if (!this.#ready) return;
    this.#track(this.#cmd.sigSessDrop(h, this.id).catch(() => {}));
  }

  /** {@link Directory.lookup}: finds a session held on another instance. */
  lookup(conn: number, token: string): void {
    const broker = this.#broker!;
    if (!this.#ready) {
      queueMicrotask(() => broker.resumeRefused(conn, "unavailable", UNAVAILABLE));
      return;
    }
    this.#track((async () => {
      let reply: Reply;
      try {
        reply = await this.#cmd.sigSessPeek(tokenHash(token), this.id);
      } catch {
        broker.resumeRefused(conn, "unavailable", UNAVAILABLE);
        return;
      }
      if (reply[0] !== "ok") {
        broker.resumeRefused(conn, "forbidden", NO_SESSION);
        return;
      }
      this.#found.set(conn, String(reply[1]));
      const idents = String(reply[2]);
      broker.sessionFound(conn, idents === "" ? [] : idents.split(" "));
      this.#found.delete(conn);
    })());
  }

  /**
   * {@link Directory.take}: moves the session found by {@link lookup} here:
   * subscribes to its rooms, runs the move script, hands the sequencer one
   * answer per ident, and waits (bounded) for the old holder's handoff.
   */
  take(conn: number, token: string, fresh: string, idents: readonly string[]): void {
    const seq = this.#seq!;
    const broker = this.#broker!;
    const holder = this.#found.get(conn);
    this.#found.delete(conn);
    if (!this.#ready || holder === undefined) {
      queueMicrotask(() => broker.resumeRefused(conn, "unavailable", UNAVAILABLE));
      return;
    }
    const moves = idents.map((g) => {
      const colon = g.indexOf(":");
      const room = g.slice(0, colon);
      const subscribed = this.#subscribe(room);
      return { room, ident: g.slice(colon + 1), subscribed, view: seq.moveStarted(room) };
    });
    const freshHash = tokenHash(fresh);
    this.#handoffs.set(conn, undefined);
    this.#track((async () => {
      let reply: Reply;
      try {
        await Promise.all(moves.map((m) => m.subscribed));
        reply = await this.#cmd.sigSessMove(
          tokenHash(token),
          freshHash,
          this.id,
          holder,
          idents.join(" "),
          conn,
          TOMBSTONE_MS,
        );
      } catch (e) {
        this.#log.warn("a session move failed: {error}", { error: (e as Error).message });
        this.#handoffs.delete(conn);
        for (const m of moves) seq.moveAnswered(m.view, conn, m.ident, { kind: "failed" });
        broker.resumeRefused(conn, "unavailable", UNAVAILABLE);
        return;
      }
      if (reply[0] !== "ok") {
        this.#handoffs.delete(conn);
        for (const m of moves) seq.moveAnswered(m.view, conn, m.ident, { kind: "failed" });
        const why = reply[0] === "changed" ? "the session changed meanwhile; retry" : NO_SESSION;
        broker.resumeRefused(conn, "forbidden", why);
        return;
      }
      this.#tokens.set(freshHash, fresh);
      if (this.#handoffs.has(conn) && !this.#stopped) {
        this.#handoffs.set(
          conn,
          setTimeout(() => {
            this.#handoffs.delete(conn);
            broker.sessionHandoff(conn, null);
          }, HANDOFF_TIMEOUT_MS),
        );
      }
      const answers = moveAnswers(reply);
      moves.forEach((m, i) => {
        const a = answers[i];
        seq.moveAnswered(m.view, conn, m.ident, { kind: "ok", seq: a.seq, members: a.members });
      });
    })());
  }

  /**
   * {@link Directory.rotate}: a resume of a session held here: its record
   * is replaced by the fresh token's, unless it moved away meanwhile. While
   * Redis is away the resume goes ahead (recovery records the session).
   */
  rotate(conn: number, token: string, fresh: string, idents: readonly string[]): void {
    const broker = this.#broker!;
    const h = tokenHash(token);
    const freshHash = tokenHash(fresh);
    if (!this.#ready) {
      this.#tokens.delete(h);
      this.#tokens.set(freshHash, fresh);
      queueMicrotask(() => broker.sessionRotated(conn));
      return;
    }
    this.#track((async () => {
      let ok: number;
      try {
        ok = await this.#cmd.sigSessRotate(h, freshHash, this.id, idents.join(" "));
      } catch {
        broker.resumeRefused(conn, "unavailable", UNAVAILABLE);
        return;
      }
      if (ok !== 1) {
        broker.resumeRefused(conn, "forbidden", NO_SESSION);
        return;
      }
      this.#tokens.delete(h);
      this.#tokens.set(freshHash, fresh);
      broker.sessionRotated(conn);
    })());
  }

  /** {@link Directory.handoff}: what a moved session kept, to its new holder, behind earlier relays. */
  handoff(instance: string, conn: number, handoff: Handoff | null): void {
    // Also while recovering: a move missed while the link was down is found then.
    if (this.#cmd.status !== "ready") return;
    const msg = `\x01h|${conn}|${JSON.stringify(handoff)}`;
    this.#cmd.publish(`sig:to:${instance}`, msg).catch(() => {});
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

  #message(channel: string, message: string): void {
    if (channel.startsWith("sig:to:")) {
      if (message.charCodeAt(0) === 1) {
        this.#control(message);
        return;
      }
      const nl = message.indexOf("\n");
      if (nl <= 0) return;
      const g = message.slice(0, nl);
      const frame = message.slice(nl + 1);
      if (this.#broker?.deliver(g, frame) === false) this.#forward(g, frame);
      return;
    }
    const ev = parseEvent(message);
    if (ev === undefined) return;
    if (ev.kind === "m" && ev.instance !== this.id) {
      this.#movedAway.set(ev.g, { to: ev.instance, at: this.#now() });
    }
    this.#seq?.event(channel.slice("sig:ev:".length), ev);
  }

  /**
   * A relay for an ident not held here: if it moved away lately (the sender
   * had not heard yet), it goes on to its new holder, once.
   */
  #forward(g: string, frame: string): void {
    const moved = this.#movedAway.get(g);
    if (moved === undefined || moved.to === this.id || !this.#ready) return;
    this.#cmd.publish(`sig:to:${moved.to}`, `\x01f|${g}\n${frame}`).catch(() => {});
  }

  /**
   * Session messages on this instance's channel: `m` (the move script: a
   * session held here moved), `h` (the old holder's handoff for a resume
   * made here) and `f` (a relay forwarded by an instance an ident moved from).
   */
  #control(message: string): void {
    const broker = this.#broker;
    if (broker === undefined) return;
    const kind = message[1];
    const body = message.slice(3);
    if (kind === "m") {
      const [h, to, conn] = body.split("|");
      const token = this.#tokens.get(h);
      this.#tokens.delete(h);
      if (token !== undefined) broker.sessionMoved(token, to, Number(conn));
      else this.handoff(to, Number(conn), null);
    } else if (kind === "h") {
      const bar = body.indexOf("|");
      const conn = Number(body.slice(0, bar));
      if (!this.#handoffs.has(conn)) return;
      clearTimeout(this.#handoffs.get(conn));
      this.#handoffs.delete(conn);
      let handoff: Handoff | null = null;
      try {
        handoff = JSON.parse(body.slice(bar + 1)) as Handoff;
      } catch {
        this.#log.warn("a session handoff could not be read");
      }
      broker.sessionHandoff(conn, handoff);
    } else if (kind === "f") {
      const nl = body.indexOf("\n");
      if (nl > 0) broker.deliver(body.slice(0, nl), body.slice(nl + 1));
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
    this.#seq?.linkDown();
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
      await this.#recoverSessions();
      const local = broker.localMembers();
      const mine = new Set(local.map((m) => m.g));
      for (const m of local) {
        const r = await this.#cmd.sigRestore(m.g, m.room, this.id);
        if (r === "conflict") this.#log.warn("{g} is held elsewhere after recovery", { g: m.g });
      }
      for (const g of await this.#cmd.smembers(`sig:im:${this.id}`)) {
        if (!mine.has(g)) await this.#cmd.sigRelease(g, g.slice(0, g.indexOf(":")), this.id);
      }
      // The live iterator, as views may go while we wait on Redis.
      for (const view of this.#seq!.views()) {
        if (!view.initialized) continue;
        await this.#resync(view, false);
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
   * Records every session held here again (Redis may have lost them), drops
   * records of sessions that ended while Redis was away, and hands over the
   * sessions that moved away meanwhile (their tombstone says where).
   */
  async #recoverSessions(): Promise<void> {
    const broker = this.#broker!;
    const mine = new Set<string>();
    for (const s of broker.localSessions()) {
      const h = tokenHash(s.token);
      mine.add(h);
      this.#tokens.set(h, s.token);
      const r = await this.#cmd.sigSessPut(
        h,
        this.id,
        s.idents.join(" "),
        s.graceMs,
        "restore",
        "",
      );
      if (r[0] === "moved") {
        this.#tokens.delete(h);
        broker.sessionMoved(s.token, String(r[1]), Number(r[2]));
      }
    }
    for (const h of await this.#cmd.smembers(`sig:ss:${this.id}`)) {
      if (!mine.has(h) && !this.#tokens.has(h)) await this.#cmd.sigSessDrop(h, this.id);
    }
  }

  /** Re-reads a room and hands the snapshot to the sequencer. */
  async #resync(view: View, prune: boolean): Promise<void> {
    const reply = await this.#cmd.sigSnapshot(view.room);
    this.#seq!.snapshot(view, Number(reply[0]), holders(reply, 1), prune);
  }

  async #prune(): Promise<void> {
    if (!this.#ready) return;
    try {
      for (const view of [...this.#seq!.views()]) {
        if (view.initialized) await this.#resync(view, true);
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
      const old = this.#now() - FORWARD_MS;
      for (const [g, m] of this.#movedAway) if (m.at < old) this.#movedAway.delete(g);
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
    const now = this.#now();
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
