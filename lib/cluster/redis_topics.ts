/**
 * The I/O half of y-webrtc's cluster mode: carries {@link ClusterTopics}'
 * asks to Redis and Redis' messages back. Two ioredis clients of its own
 * (commands, and this instance's channel `yws:i:<id>`), the scripts of
 * `topic_scripts.ts`, reaping and recovery. It runs beside the DIVA
 * backplane (`RedisBackplane`, see `redis_cluster.ts`) under the same
 * instance id, and relies on its heartbeat: `sig:alive:<id>` says this
 * instance lives, and a topic registration is made only while it does.
 *
 * **Liveness.** Every second each instance runs the reaper script, which
 * forgets the subscribers of every instance whose `sig:alive` key expired
 * (5 s after its last heartbeat) and tells the topics' other holders their
 * new counts: a killed instance's subscribers stop counting within about
 * 6 s. An instance that finds itself reaped (a long pause) or Redis emptied
 * registers its subscribers again.
 *
 * **Redis down.** Local work goes on: subscribes and unsubscribes are kept
 * locally and registered again, all at once, when Redis is back; publishes
 * reach this instance's subscribers only, and are counted in
 * `stats.unavailable` (a y-webrtc client ignores error replies, so none is
 * sent; `/readyz` says 503 meanwhile so new clients go elsewhere). Counts
 * of the other instances stay as last reported until Redis tells again.
 *
 * @module
 */

import type { Redis } from "ioredis";
import { redisClients } from "./redis_clients.ts";
import { logger } from "../log.ts";
import { TOPIC_SCRIPTS, type TopicScripts } from "./topic_scripts.ts";
import { ClusterTopics, type Member, type SubscribeAnswer, type TopicLink } from "./topics.ts";

const TICK_MS = 1000;
/** Ticks in a row that may fail before the link is deemed dead and reopened. */
const MAX_MISSED_TICKS = 2;

/** Settings of {@link RedisTopics}. */
export interface RedisTopicsOptions {
  /** Redis' URL. */
  url: string;
  /** This instance's id (the DIVA backplane's, so its liveness key counts). */
  id: string;
  /** Most subscribers a topic may have cluster-wide (0: no limit). */
  maxSubscribersPerTopic: number;
}

/**
 * y-webrtc topics over Redis for one instance: the {@link TopicLink} of a
 * {@link ClusterTopics}, which is the bus the engine is given.
 *
 * @example
 * ```ts ignore
 * const link = new RedisTopics<YConn>({ url, id: backplane.id, maxSubscribersPerTopic: 256 });
 * const engine = ywebrtcEngine({
 *   now: () => performance.now(),
 *   bus: (deliver, refuse) => link.topics.attach(deliver, refuse),
 * });
 * link.registered(true); // once the backplane's heartbeat runs
 * await link.start();
 * ```
 */
export class RedisTopics<S extends Member> implements TopicLink {
  /** The bus (attach it to the engine). */
  readonly topics: ClusterTopics<S>;
  readonly #options: RedisTopicsOptions;
  readonly #cmd: Redis & TopicScripts;
  readonly #sub: Redis;
  readonly #log = logger("cluster");
  readonly #inFlight = new Set<Promise<unknown>>();
  #live = false;
  #registered = false;
  #dirty = false;
  #stopped = false;
  #started = false;
  #connecting = false;
  #missedTicks = 0;
  #timer: ReturnType<typeof setInterval> | undefined;

  /** A link; nothing connects until {@link start}. */
  constructor(options: RedisTopicsOptions) {
    this.#options = options;
    this.topics = new ClusterTopics<S>(this);
    const clients = redisClients<TopicScripts>(options.url, TOPIC_SCRIPTS, "topics", {
      up: () => this.#up(),
      down: () => this.#down(),
      message: (_channel, message) => this.topics.message(message),
    });
    this.#cmd = clients.cmd;
    this.#sub = clients.sub;
  }

  /** {@link TopicLink.live}: Redis is up and this instance's subscribers are registered. */
  get live(): boolean {
    return this.#live;
  }

  /** True while y-webrtc's cluster side can be used. */
  get ready(): boolean {
    return this.#live;
  }

  /**
   * Whether this instance is alive in the cluster (the DIVA backplane is
   * ready, so its heartbeat keeps `sig:alive:<id>`). Registrations wait for
   * it; when it comes back they are all made again, since the reaper may
   * have taken them meanwhile.
   */
  registered(alive: boolean): void {
    this.#registered = alive;
    if (alive) this.#up();
    else this.#down();
  }

  /** Connects, listens on this instance's channel and starts the reaper. */
  async start(): Promise<void> {
    this.#started = true;
    this.#timer = setInterval(() => this.#track(this.#tick()), TICK_MS);
    await Promise.allSettled([this.#cmd.connect(), this.#sub.connect()]);
    this.#up();
  }

  /** Stops: forgets this instance's subscribers in Redis (its clients are gone) and disconnects. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#timer);
    await Promise.allSettled([...this.#inFlight]);
    if (this.#cmd.status === "ready") {
      await this.#cmd.ywsGoodbye(this.#options.id).catch(() => {});
    }
    this.#cmd.disconnect();
    this.#sub.disconnect();
    this.#live = false;
  }

  /** {@link TopicLink.subscribe}. */
  subscribe(wire: string, member: string, seq: number): Promise<SubscribeAnswer> {
    const p = this.#cmd.ywsSubscribe(wire, this.#options.id, member, this.#max(), seq).then(
      ([kind, total, own]): SubscribeAnswer => ({
        kind: kind === "full" ? "full" : "ok",
        total: Number(total),
        own: Number(own),
      }),
      (e: Error) => {
        this.#failed("subscribe", e);
        throw e;
      },
    );
    this.#track(p.catch(() => {}));
    return p;
  }

  /** {@link TopicLink.unsubscribe}. */
  unsubscribe(wire: string, member: string, seq: number): void {
    this.#track(
      this.#cmd.ywsUnsubscribe(wire, this.#options.id, member, seq)
        .catch((e: Error) => this.#failed("unsubscribe", e)),
    );
  }

  /** {@link TopicLink.publish}. */
  publish(wire: string, payload: string): void {
    this.#cmd.ywsPublish(wire, this.#options.id, payload).catch((e: Error) => {
      this.topics.stats.unavailable++;
      this.#log.debug("publish to other instances failed: {error}", { error: e.message });
    });
  }

  #max(): number {
    return this.#options.maxSubscribersPerTopic;
  }

  /** A registration may not have been made: register everything again at the next tick. */
  #failed(what: string, e: Error): void {
    this.#dirty = true;
    this.#log.debug("topic {what} failed: {error}", { what, error: e.message });
  }

  #track(p: Promise<unknown>): void {
    this.#inFlight.add(p);
    p.finally(() => this.#inFlight.delete(p));
  }

  #down(): void {
    if (this.#stopped || !this.#live) return;
    this.#live = false;
    this.#log.info("y-webrtc cluster topics unavailable");
  }

  #up(): void {
    const can = () =>
      !this.#stopped && this.#started && !this.#live && this.#registered &&
      this.#cmd.status === "ready" && this.#sub.status === "ready";
    if (this.#connecting || !can()) return;
    // The channel must listen before anything is registered, or this
    // instance would miss what is sent to it meanwhile (subscribing again
    // is harmless, and says when Redis has it).
    this.#connecting = true;
    this.#track(
      this.#sub.subscribe(`yws:i:${this.#options.id}`).then(() => {
        if (!can()) return;
        this.#resync();
        this.#live = true;
        this.#log.info("y-webrtc cluster topics ready as {id}", { id: this.#options.id });
      }).catch(() => {}).finally(() => this.#connecting = false),
    );
  }

  /**
   * Makes Redis hold exactly this instance's subscribers: every command is
   * sent at once, in order, so later subscribes and unsubscribes follow it.
   */
  #resync(): void {
    this.#dirty = false;
    const id = this.#options.id;
    const { seq, topics } = this.topics.registrations();
    const fail = (e: Error) => this.#failed("registration", e);
    this.#track(this.#cmd.ywsPrune(id, ...topics.keys()).catch(fail));
    for (const [wire, members] of topics) {
      this.#track(this.#cmd.ywsRestore(wire, id, seq, ...members).catch(fail));
    }
  }

  /** Every second: registrations owed, reaping dead instances, and noticing being reaped. */
  async #tick(): Promise<void> {
    if (this.#stopped || this.#cmd.status !== "ready") return;
    if (!this.#live) {
      this.#up();
      return;
    }
    try {
      if (this.#dirty) this.#resync();
      await this.#cmd.ywsReap();
      if (this.topics.topics > 0) {
        const held = await this.#cmd.sismember("yws:insts", this.#options.id);
        if (held === 0 && this.#live) {
          this.#log.info("this instance's y-webrtc subscribers were lost; registering them again");
          this.#resync();
        }
      }
      this.#missedTicks = 0;
    } catch (e) {
      this.#log.debug("topic tick failed: {error}", { error: (e as Error).message });
      if (++this.#missedTicks >= MAX_MISSED_TICKS && this.#live) {
        // Redis holds the connection open but answers nothing: reconnect, so
        // that everything is registered again once it answers.
        this.#log.warn("redis does not answer (topics); reconnecting");
        this.#missedTicks = 0;
        this.#live = false;
        this.#cmd.disconnect(true);
        this.#sub.disconnect(true);
      }
    }
  }
}
