/**
 * Cluster mode for y-webrtc: a {@link TopicBus} whose topics span every
 * instance. This module is the pure half, free of I/O: it keeps the local
 * subscribers, a cache of each topic's cluster-wide count, and decides what
 * to ask of the cluster; `lib/cluster/redis_topics.ts` carries those asks
 * to Redis (scripts in `lib/cluster/topic_scripts.ts`) and hands the
 * answers and channel messages back.
 *
 * **Membership.** Redis holds, per topic, which instance has how many
 * subscribers, and which of its connections they are. Each local subscribe
 * and unsubscribe is one script, sent at once and in call order on one
 * connection; a subscribe is refused there when the topic is full
 * cluster-wide, and the engine takes it back ({@link Refuse}). Every change
 * is announced, from inside the script, to each instance that holds the
 * topic (on its own channel), with the topic's total and that instance's
 * own count as Redis has them: the receiver's remote count is `total - own`,
 * and {@link ClusterTopics.count} is the live local count plus that, with no
 * round trip. An instance with no local subscriber left is no longer a
 * holder, so it stops receiving the topic's traffic: there is no per-topic
 * channel to leave.
 *
 * **Publishing.** The publish is delivered to the local subscribers (the
 * sender's echo among them, so exactly once) with `clients` set to the
 * cached cluster count, and the same frame goes to Redis, where a script
 * forwards it to every other instance that holds the topic at that moment.
 * Each publisher's frames travel on one connection and reach each instance
 * on one subscription, so they arrive in order. When the cache knows that no
 * other instance holds the topic, nothing is sent: count messages and
 * publishes reach an instance in Redis order, so anything this instance
 * hears from a new remote subscriber comes after the news of it.
 *
 * **Freshness.** Until this instance has heard about a topic from Redis
 * (one round trip after its first local subscriber), the count is the local
 * one and publishes are always forwarded. Count messages that were on their
 * way before the topic's latest local (re)start are told apart by the
 * sequence number of the script that caused them, and ignored.
 *
 * @module
 */

import type { Deliver, Refuse, TopicBus } from "../ywebrtc/bus.ts";
import { type PublishMessage, withClients } from "../ywebrtc/codec.ts";

/** What a subscriber must have for the cluster: a number unique on its instance. */
export interface Member {
  /** The connection's id on this instance. */
  readonly id: number;
}

/** How a subscribe script was answered. */
export interface SubscribeAnswer {
  /** `ok` (counted) or `full` (the topic is full cluster-wide: not counted). */
  readonly kind: "ok" | "full";
  /** The topic's subscribers cluster-wide after the script. */
  readonly total: number;
  /** This instance's subscribers of the topic in Redis after the script. */
  readonly own: number;
}

/**
 * The cluster as {@link ClusterTopics} uses it. Topics cross it as their
 * wire form (see {@link wireTopic}); every call is sent at once, in call
 * order.
 */
export interface TopicLink {
  /** True while calls can be made (Redis is up and this instance is registered). */
  readonly live: boolean;
  /**
   * Counts `member` in `wire` unless the topic is full; `seq` comes back on
   * the count message the script sends this instance.
   */
  subscribe(wire: string, member: string, seq: number): Promise<SubscribeAnswer>;
  /** Stops counting `member` in `wire`. */
  unsubscribe(wire: string, member: string, seq: number): void;
  /** Hands `payload` to every other instance that holds `wire`. */
  publish(wire: string, payload: string): void;
}

/** Counters of the cluster side, for logs and tests. */
export interface ClusterTopicStats {
  /** Publishes forwarded to Redis. */
  forwarded: number;
  /** Publishes not forwarded because no other instance held the topic. */
  keptLocal: number;
  /**
   * Publishes that could reach only this instance's subscribers because
   * Redis was unavailable.
   */
  unavailable: number;
  /** Publishes from other instances delivered here. */
  received: number;
  /** Subscriptions taken back because the topic was full cluster-wide. */
  refused: number;
}

/** A topic with local subscribers. */
interface TopicState<S> {
  readonly topic: string;
  readonly wire: string;
  /** Local subscribers, each with the sequence number of its subscribe script. */
  readonly subs: Map<S, number>;
  /** Subscribers on other instances, as of the last count message. */
  remote: number;
  /** False until a count message newer than the topic's local start arrived. */
  known: boolean;
  /** The sequence number whose count message makes the topic known; 0 once it is. */
  awaiting: number;
}

/**
 * A topic as it crosses the cluster: its JSON text, so that any string
 * (lone surrogates included) is one Redis key and never holds a newline.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.equal(wireTopic("room"), '"room"');
 * assert.equal(wireTopic("a\nb"), '"a\\nb"');
 * ```
 */
export function wireTopic(topic: string): string {
  return JSON.stringify(topic);
}

/**
 * The payload of a forwarded publish: `p`, the wire topic, a newline, the
 * frame as delivered.
 */
export function publishPayload(wire: string, frame: string): string {
  return "p" + wire + "\n" + frame;
}

/**
 * A message on an instance's channel: a forwarded publish, or a topic's
 * counts (`c<total>|<own>|<seq>|<wire>`, as `topic_scripts.ts` sends them).
 */
export type ChannelMessage =
  | { kind: "publish"; wire: string; frame: string }
  | { kind: "count"; wire: string; total: number; own: number; seq: number };

/**
 * Parses a channel message; undefined for anything else.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.deepEqual(parseChannelMessage('c3|1|7|"t"'), {
 *   kind: "count", wire: '"t"', total: 3, own: 1, seq: 7,
 * });
 * assert.deepEqual(parseChannelMessage(publishPayload('"t"', "{}")), {
 *   kind: "publish", wire: '"t"', frame: "{}",
 * });
 * assert.equal(parseChannelMessage("x"), undefined);
 * ```
 */
export function parseChannelMessage(msg: string): ChannelMessage | undefined {
  if (msg.charCodeAt(0) === 0x70 /* p */) {
    const nl = msg.indexOf("\n");
    if (nl < 0) return undefined;
    return { kind: "publish", wire: msg.slice(1, nl), frame: msg.slice(nl + 1) };
  }
  if (msg.charCodeAt(0) !== 0x63 /* c */) return undefined;
  const a = msg.indexOf("|");
  const b = msg.indexOf("|", a + 1);
  const c = msg.indexOf("|", b + 1);
  if (a < 0 || b < 0 || c < 0) return undefined;
  const total = Number(msg.slice(1, a));
  const own = Number(msg.slice(a + 1, b));
  const seq = Number(msg.slice(b + 1, c));
  if (!Number.isInteger(total) || !Number.isInteger(own) || !Number.isInteger(seq)) {
    return undefined;
  }
  return { kind: "count", wire: msg.slice(c + 1), total, own, seq };
}

/**
 * The y-webrtc topics of one instance in a cluster: a {@link TopicBus} over
 * a {@link TopicLink}. Made unattached; {@link attach} (the engine's `bus`
 * option) gives it the engine's delivery.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { decode, type PublishMessage } from "../ywebrtc/codec.ts";
 * const forwarded: string[] = [];
 * const link = {
 *   live: true,
 *   subscribe: () => Promise.resolve({ kind: "ok" as const, total: 1, own: 1 }),
 *   unsubscribe() {},
 *   publish: (_wire: string, payload: string) => void forwarded.push(payload),
 * };
 * const topics = new ClusterTopics<{ id: number }>(link);
 * const got: string[] = [];
 * const bus = topics.attach((_sub, frame) => got.push(frame), () => {});
 * const a = { id: 1 };
 * bus.subscribe("t", a);
 * // Redis counted it (the subscribe was script 1): "t" has 3 subscribers, 1 here.
 * topics.message('c3|1|1|"t"');
 * assert.equal(bus.count("t"), 3);
 * bus.publish("t", decode('{"type":"publish","topic":"t"}') as PublishMessage);
 * assert.deepEqual(got, ['{"type":"publish","topic":"t","clients":3}']);
 * assert.deepEqual(forwarded, ['p"t"\n{"type":"publish","topic":"t","clients":3}']);
 * // A publish from elsewhere reaches the local subscriber.
 * topics.message('p"t"\n{"x":1}');
 * assert.equal(got[1], '{"x":1}');
 * ```
 */
export class ClusterTopics<S extends Member> implements TopicBus<S> {
  /** Counters. */
  readonly stats: ClusterTopicStats = {
    forwarded: 0,
    keptLocal: 0,
    unavailable: 0,
    received: 0,
    refused: 0,
  };
  readonly #link: TopicLink;
  readonly #topics = new Map<string, TopicState<S>>();
  readonly #byWire = new Map<string, TopicState<S>>();
  #deliver: Deliver<S> = () => {};
  #refuse: Refuse<S> = () => {};
  #version = 0;
  #seq = 0;

  /** Topics over `link`; nothing is delivered until {@link attach}. */
  constructor(link: TopicLink) {
    this.#link = link;
  }

  /**
   * Gives the bus the engine's delivery and refusal and returns it: the
   * shape of the y-webrtc engine's `bus` option.
   */
  attach(deliver: Deliver<S>, refuse: Refuse<S>): TopicBus<S> {
    this.#deliver = deliver;
    this.#refuse = refuse;
    return this;
  }

  /** See {@link TopicBus.version}. */
  get version(): number {
    return this.#version;
  }

  /** See {@link TopicBus.topics}. */
  get topics(): number {
    return this.#topics.size;
  }

  /** See {@link TopicBus.subscribe}: counted locally at once, in Redis one round trip later. */
  subscribe(topic: string, sub: S): void {
    let st = this.#topics.get(topic);
    if (st === undefined) {
      const wire = wireTopic(topic);
      st = { topic, wire, subs: new Map(), remote: 0, known: false, awaiting: -1 };
      this.#topics.set(topic, st);
      this.#byWire.set(wire, st);
    }
    if (st.subs.has(sub)) return;
    const seq = ++this.#seq;
    // A topic (re)started here ignores count messages older than its first script.
    if (st.awaiting === -1) st.awaiting = seq;
    st.subs.set(sub, seq);
    this.#version++;
    if (!this.#link.live) return; // registered with the rest when the link is back
    this.#link.subscribe(st.wire, String(sub.id), seq).then(
      (answer) => this.#answered(topic, sub, seq, answer),
      () => {}, // the link resyncs after a failure; the subscription stays
    );
  }

  /** See {@link TopicBus.unsubscribe}. */
  unsubscribe(topic: string, sub: S): void {
    const st = this.#topics.get(topic);
    if (st === undefined || !st.subs.delete(sub)) return;
    this.#version++;
    if (st.subs.size === 0) this.#forget(st);
    if (this.#link.live) this.#link.unsubscribe(st.wire, String(sub.id), ++this.#seq);
  }

  /** See {@link TopicBus.count}: local subscribers plus the others Redis last reported. */
  count(topic: string): number {
    const st = this.#topics.get(topic);
    return st === undefined ? 0 : st.subs.size + st.remote;
  }

  /** See {@link TopicBus.publish}: local deliveries now, the other instances through Redis. */
  publish(topic: string, message: PublishMessage): number {
    const st = this.#topics.get(topic);
    const local = st === undefined ? 0 : st.subs.size;
    const frame = withClients(message, local + (st?.remote ?? 0));
    if (st !== undefined) { for (const sub of st.subs.keys()) this.#deliver(sub, frame); }
    if (st !== undefined && st.known && st.remote === 0) this.stats.keptLocal++;
    else if (!this.#link.live) this.stats.unavailable++;
    else {
      this.stats.forwarded++;
      const wire = st?.wire ?? wireTopic(topic);
      this.#link.publish(wire, publishPayload(wire, frame));
    }
    return local;
  }

  /** A message on this instance's channel (see {@link parseChannelMessage}). */
  message(msg: string): void {
    const m = parseChannelMessage(msg);
    if (m === undefined) return;
    const st = this.#byWire.get(m.wire);
    if (st === undefined) return;
    if (m.kind === "publish") {
      this.stats.received++;
      for (const sub of st.subs.keys()) this.#deliver(sub, m.frame);
      return;
    }
    if (st.awaiting !== 0) {
      // Older than the topic's local start: the counts it carries may be gone.
      if (m.seq === 0 || m.seq < st.awaiting) return;
      st.awaiting = 0;
    }
    this.#counted(st, m.total, m.own);
  }

  /**
   * Every local subscription by wire topic, for registering them again
   * (after Redis came back); their counts are unknown until Redis answers.
   * Returns the sequence number the registration is to carry.
   */
  registrations(): { seq: number; topics: Map<string, string[]> } {
    const seq = ++this.#seq;
    const topics = new Map<string, string[]>();
    for (const st of this.#topics.values()) {
      // Forwarded again until Redis says who else holds it now.
      st.awaiting = seq;
      st.known = false;
      topics.set(st.wire, [...st.subs.keys()].map((s) => String(s.id)));
    }
    return { seq, topics };
  }

  #answered(topic: string, sub: S, seq: number, answer: SubscribeAnswer): void {
    const st = this.#topics.get(topic);
    if (st === undefined || st.subs.get(sub) !== seq) return; // gone or subscribed anew since
    if (answer.kind === "full") {
      this.stats.refused++;
      st.subs.delete(sub);
      this.#version++;
      if (st.subs.size === 0) this.#forget(st);
      else if (st.awaiting === seq) this.#counted(st, answer.total, answer.own);
      this.#refuse(sub, topic);
      return;
    }
    // The answer may overtake its own count message, never a later one:
    // it is used only while that message is awaited.
    if (st.awaiting === seq) this.#counted(st, answer.total, answer.own);
  }

  #counted(st: TopicState<S>, total: number, own: number): void {
    const remote = Math.max(0, total - own);
    st.known = true;
    if (remote === st.remote) return;
    st.remote = remote;
    this.#version++;
  }

  #forget(st: TopicState<S>): void {
    this.#topics.delete(st.topic);
    this.#byWire.delete(st.wire);
  }
}
