/**
 * Cluster mode for both protocols: the DIVA backplane ({@link RedisBackplane})
 * with y-webrtc's topics ({@link RedisTopics}) beside it, under one instance
 * id and one liveness key. `main.ts` loads this module, and so ioredis, only
 * when `--redis-url` is set.
 *
 * @module
 */

import type { Deliver, Refuse, TopicBus } from "../ywebrtc/bus.ts";
import type { YConn } from "../ywebrtc/engine.ts";
import { RedisBackplane, type RedisBackplaneOptions } from "./redis.ts";
import { RedisTopics } from "./redis_topics.ts";

/** Settings of {@link RedisCluster}. */
export interface RedisClusterOptions extends RedisBackplaneOptions {
  /** Most subscribers a y-webrtc topic may have, cluster-wide (0: no limit). */
  maxSubscribersPerTopic: number;
}

/**
 * This instance's link to the cluster: the DIVA backplane and directory,
 * and the bus y-webrtc publishes fan out on ({@link ywebrtcBus}). Ready
 * while both halves are.
 *
 * @example
 * ```ts ignore
 * const cluster = new RedisCluster({ url, maxPeersPerRoom: 256, maxSubscribersPerTopic: 256, broker: () => broker });
 * const engines = buildEngines(config, { directory: cluster, ywebrtcBus: cluster.ywebrtcBus });
 * await cluster.start();
 * ```
 */
export class RedisCluster extends RedisBackplane {
  /** y-webrtc's side of the cluster. */
  readonly topics: RedisTopics<YConn>;

  /** A cluster link; nothing connects until {@link start}. */
  constructor(options: RedisClusterOptions) {
    // Made after the backplane, which owns the id; told of its readiness from then on.
    const late: { topics?: RedisTopics<YConn> } = {};
    super({
      ...options,
      onReady: (ready) => {
        // Topics are registered only while the heartbeat keeps this instance alive.
        late.topics?.registered(ready);
        options.onReady?.(ready);
      },
    });
    late.topics = this.topics = new RedisTopics<YConn>({
      url: options.url,
      id: this.id,
      maxSubscribersPerTopic: options.maxSubscribersPerTopic,
    });
  }

  /** The y-webrtc engine's `bus` option: this cluster's topics. */
  readonly ywebrtcBus = (deliver: Deliver<YConn>, refuse: Refuse<YConn>): TopicBus<YConn> =>
    this.topics.topics.attach(deliver, refuse);

  /** True while Redis is reachable and both protocols' registrations are made. */
  override get ready(): boolean {
    return super.ready && this.topics.ready;
  }

  /** Connects both halves. */
  override async start(): Promise<void> {
    await Promise.all([super.start(), this.topics.start()]);
  }

  /** Disconnects both halves, after the server's clients are gone. */
  override async stop(): Promise<void> {
    await Promise.all([this.topics.stop(), super.stop()]);
  }
}
