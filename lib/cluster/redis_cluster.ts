/**
 * Cluster mode for every protocol: the DIVA backplane ({@link RedisBackplane})
 * with y-webrtc's topics ({@link RedisTopics}) and PeerJS's ids
 * ({@link RedisPeers}) beside it, under one instance id and one liveness
 * key. `main.ts` loads this module, and so ioredis, only when `--redis-url`
 * is set.
 *
 * @module
 */

import type { DirectoryHooks, OfflineLimits, PeerDirectory } from "../peerjs/directory.ts";
import type { Deliver, Refuse, TopicBus } from "../ywebrtc/bus.ts";
import type { YConn } from "../ywebrtc/engine.ts";
import { RedisBackplane, type RedisBackplaneOptions } from "./redis.ts";
import { RedisPeers } from "./redis_peers.ts";
import { RedisTopics } from "./redis_topics.ts";

/** Settings of {@link RedisCluster}. */
export interface RedisClusterOptions extends RedisBackplaneOptions {
  /** Most subscribers a y-webrtc topic may have, cluster-wide (0: no limit). */
  maxSubscribersPerTopic: number;
}

/**
 * This instance's link to the cluster: the DIVA backplane and directory,
 * the bus y-webrtc publishes fan out on ({@link ywebrtcBus}) and PeerJS's
 * directory ({@link peerjsDirectory}). Ready while all three are.
 *
 * @example
 * ```ts ignore
 * const cluster = new RedisCluster({ url, maxPeersPerRoom: 256, maxSubscribersPerTopic: 256, broker: () => broker });
 * const engines = buildEngines(config, {
 *   directory: cluster,
 *   ywebrtcBus: cluster.ywebrtcBus,
 *   peerjsDirectory: cluster.peerjsDirectory,
 * });
 * await cluster.start();
 * ```
 */
export class RedisCluster extends RedisBackplane {
  /** y-webrtc's side of the cluster. */
  readonly topics: RedisTopics<YConn>;
  /** PeerJS's side of the cluster. */
  readonly peers: RedisPeers;

  /** A cluster link; nothing connects until {@link start}. */
  constructor(options: RedisClusterOptions) {
    // Made after the backplane, which owns the id; told of its readiness from then on.
    const late: { topics?: RedisTopics<YConn>; peers?: RedisPeers } = {};
    super({
      ...options,
      onReady: (ready) => {
        // Topics and ids are registered only while the heartbeat keeps this instance alive.
        late.topics?.registered(ready);
        late.peers?.registered(ready);
        options.onReady?.(ready);
      },
    });
    late.topics = this.topics = new RedisTopics<YConn>({
      url: options.url,
      id: this.id,
      maxSubscribersPerTopic: options.maxSubscribersPerTopic,
    });
    late.peers = this.peers = new RedisPeers({ url: options.url, id: this.id });
  }

  /** The y-webrtc engine's `bus` option: this cluster's topics. */
  readonly ywebrtcBus = (deliver: Deliver<YConn>, refuse: Refuse<YConn>): TopicBus<YConn> =>
    this.topics.topics.attach(deliver, refuse);

  /** The PeerJS engine's `directory` option: this cluster's ids. */
  readonly peerjsDirectory = (hooks: DirectoryHooks, limits: OfflineLimits): PeerDirectory =>
    this.peers.peers.attach(hooks, limits);

  /** True while Redis is reachable and every protocol's registrations are made. */
  override get ready(): boolean {
    return super.ready && this.topics.ready && this.peers.ready;
  }

  /** Connects every part. */
  override async start(): Promise<void> {
    await Promise.all([super.start(), this.topics.start(), this.peers.start()]);
  }

  /** Disconnects every part, after the server's clients are gone. */
  override async stop(): Promise<void> {
    await Promise.all([this.topics.stop(), this.peers.stop(), super.stop()]);
  }
}
