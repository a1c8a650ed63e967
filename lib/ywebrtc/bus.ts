/**
 * Where y-webrtc publishes fan out. The engine keeps every rule (what may be
 * subscribed, who may publish, budgets, limits) and asks a {@link TopicBus}
 * only to keep subscriptions, count them and deliver. {@link MemoryBus} does
 * that for one instance; in cluster mode `ClusterTopics`
 * (`lib/cluster/topics.ts`, over Redis) implements the same interface,
 * counting subscribers across instances and handing each publish to the
 * instances that hold subscribers. Such a bus learns only after a round
 * trip that a topic was full cluster-wide, and hands the subscription back
 * through {@link Refuse}.
 *
 * @module
 */

import { type PublishMessage, withClients } from "./codec.ts";

/** Hands one delivered frame to a local subscriber. */
export type Deliver<S> = (sub: S, frame: string) => void;

/**
 * Takes back a subscription the bus accepted: a cluster bus learns only
 * after a round trip that a topic was already full cluster-wide. The engine
 * drops the topic from the subscriber's and answers `topic-full`, as it
 * would have at once on a single instance.
 */
export type Refuse<S> = (sub: S, topic: string) => void;

/** Subscriptions and fan-out of topics, for subscribers of type `S`. */
export interface TopicBus<S> {
  /**
   * A number that changes whenever any topic's subscriber count changes, so
   * budgets that follow counts are refitted only when something moved.
   */
  readonly version: number;
  /** Topics with at least one local subscriber. */
  readonly topics: number;
  /** Adds `sub` to `topic` (the engine has checked the limits; adding twice is a no-op). */
  subscribe(topic: string, sub: S): void;
  /** Takes `sub` out of `topic`; a topic left empty is forgotten. */
  unsubscribe(topic: string, sub: S): void;
  /** Subscribers of `topic`: every one the bus knows of (cluster-wide for a backplane). */
  count(topic: string): number;
  /**
   * Delivers `message` to every subscriber of `topic`, with `clients` set to
   * the topic's subscriber count; returns the local deliveries made.
   */
  publish(topic: string, message: PublishMessage): number;
}

/**
 * The bus of a single instance: a map from topic to its subscribers, in
 * subscription order.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { decode, type PublishMessage } from "./codec.ts";
 * const got: [string, string][] = [];
 * const bus = new MemoryBus<string>((sub, frame) => got.push([sub, frame]));
 * bus.subscribe("t", "a");
 * bus.subscribe("t", "b");
 * const m = decode('{"type":"publish","topic":"t"}') as PublishMessage;
 * assert.equal(bus.publish("t", m), 2);
 * assert.deepEqual(got.map(([s]) => s), ["a", "b"]);
 * assert.equal(got[0][1], '{"type":"publish","topic":"t","clients":2}');
 * bus.unsubscribe("t", "a");
 * bus.unsubscribe("t", "b");
 * assert.equal(bus.topics, 0);
 * ```
 */
export class MemoryBus<S> implements TopicBus<S> {
  readonly #deliver: Deliver<S>;
  readonly #topics = new Map<string, Set<S>>();
  #version = 0;

  /** An empty bus that hands frames to `deliver`. */
  constructor(deliver: Deliver<S>) {
    this.#deliver = deliver;
  }

  /** See {@link TopicBus.version}. */
  get version(): number {
    return this.#version;
  }

  /** See {@link TopicBus.topics}. */
  get topics(): number {
    return this.#topics.size;
  }

  /** See {@link TopicBus.subscribe}. */
  subscribe(topic: string, sub: S): void {
    let set = this.#topics.get(topic);
    if (set === undefined) this.#topics.set(topic, set = new Set());
    if (set.has(sub)) return;
    set.add(sub);
    this.#version++;
  }

  /** See {@link TopicBus.unsubscribe}. */
  unsubscribe(topic: string, sub: S): void {
    const set = this.#topics.get(topic);
    if (set === undefined || !set.delete(sub)) return;
    this.#version++;
    if (set.size === 0) this.#topics.delete(topic);
  }

  /** See {@link TopicBus.count}. */
  count(topic: string): number {
    return this.#topics.get(topic)?.size ?? 0;
  }

  /** See {@link TopicBus.publish}. */
  publish(topic: string, message: PublishMessage): number {
    const set = this.#topics.get(topic);
    if (set === undefined) return 0;
    const frame = withClients(message, set.size);
    // A delivery never changes subscriptions, so the set can be walked as is.
    for (const sub of set) this.#deliver(sub, frame);
    return set.size;
  }
}
