/**
 * y-webrtc in cluster mode against a real redis-server and real server
 * processes: a publish reaches the topic's subscribers on every instance,
 * with `clients` counting all of them; the subscriber limit counts the whole
 * cluster; a killed instance's subscribers stop counting; Redis going away
 * and coming back empty loses nothing that matters; and two real Yjs docs
 * (y-webrtc's own `WebrtcProvider`), signalling through different instances,
 * sync.
 *
 * Counts travel through Redis, so a test that needs one waits for it with
 * probes: publishes whose echo shows the sender's count, skipped by every
 * reader (see {@link YClient.counted}). Every wait is bounded.
 */

import assert from "node:assert/strict";
import { startRedis } from "./helpers/redis.ts";
import { type ServerProcess, startServerProcess, waitForStatus } from "./helpers/server_process.ts";
import { WsClient } from "./helpers/ws_client.ts";
import { YjsPeer } from "./helpers/yjs_peers.ts";

const REDIS_MISSING = (() => {
  try {
    new Deno.Command("redis-server", { args: ["--version"], stdout: "null" }).outputSync();
    return false;
  } catch {
    return true;
  }
})();

if (REDIS_MISSING && Deno.env.get("CI")) {
  throw new Error("redis-server is not installed, and CI must run the cluster tests");
}

type Msg = Record<string, unknown>;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function isProbe(m: Msg): boolean {
  const d = m.data as Msg | undefined;
  return m.type === "publish" && typeof d === "object" && d !== null && "probe" in d;
}

/** A y-webrtc connection that can wait for a topic's count, skipping the probes that does. */
class YClient {
  readonly #c: WsClient;
  readonly #held: Msg[] = [];
  static #probes = 0;

  private constructor(c: WsClient) {
    this.#c = c;
  }

  /** Connects to `server`'s `/yjs`. */
  static async open(server: ServerProcess): Promise<YClient> {
    const c = new YClient(await WsClient.connect(`ws://127.0.0.1:${server.port}/yjs`));
    opened.push(c);
    return c;
  }

  /** Connects and subscribes `topics`, once the server has handled the subscribe. */
  static async subscribed(server: ServerProcess, ...topics: string[]): Promise<YClient> {
    const c = await YClient.open(server);
    c.send({ type: "subscribe", topics });
    await c.pong();
    return c;
  }

  send(m: Msg | string): void {
    this.#c.send(m);
  }

  publish(topic: string, data: unknown): void {
    this.send({ type: "publish", topic, data });
  }

  /** The next message that is not a probe. */
  async next(ms = 5000): Promise<Msg> {
    for (;;) {
      const m = this.#held.shift() ?? (await this.#c.next(ms)) as Msg;
      if (!isProbe(m)) return m;
    }
  }

  /** Sends a ping and expects the pong next: nothing else was pending. */
  async pong(): Promise<void> {
    this.send({ type: "ping" });
    assert.deepEqual(await this.next(), { type: "pong" });
  }

  /** Probes `topic` until the echo shows `n` subscribers; how long it took, ms. */
  async counted(topic: string, n: number, ms = 10_000): Promise<number> {
    const start = Date.now();
    let last: unknown;
    while (Date.now() - start < ms) {
      const probe = `${++YClient.#probes}`;
      this.publish(topic, { probe });
      for (;;) {
        const m = (await this.#c.next(5000)) as Msg;
        if (!isProbe(m)) {
          this.#held.push(m);
          continue;
        }
        if ((m.data as Msg).probe !== probe) continue;
        last = m.clients;
        break;
      }
      if (last === n) return Date.now() - start;
      await sleep(100);
    }
    throw new Error(`${topic}: ${n} subscribers not seen within ${ms} ms (last ${last})`);
  }

  close(): Promise<unknown> {
    return this.#c.close();
  }
}

const opened: YClient[] = [];

async function closeAll(): Promise<void> {
  for (const c of opened.splice(0)) await c.close().catch(() => {});
}

/** Runs `fn` with Redis and `n` instances, stopping everything afterwards. */
async function withCluster(
  n: number,
  fn: (servers: ServerProcess[], redis: Awaited<ReturnType<typeof startRedis>>) => Promise<void>,
  extra: string[] = [],
): Promise<void> {
  const redis = await startRedis();
  const servers: ServerProcess[] = [];
  try {
    for (let i = 0; i < n; i++) {
      servers.push(await startServerProcess(["--redis-url", redis.url, ...extra]));
    }
    await fn(servers, redis);
  } finally {
    await closeAll();
    for (const s of servers) await s.stop("SIGKILL");
    await redis.stop();
  }
}

const opts = { ignore: REDIS_MISSING, sanitizeResources: true, sanitizeOps: true };

Deno.test(
  "y-webrtc cluster: a publish reaches every instance, once, in order, with cluster-wide clients",
  opts,
  async () => {
    await withCluster(2, async ([s1, s2]) => {
      const a = await YClient.subscribed(s1, "t");
      const b = await YClient.subscribed(s2, "t");
      await a.counted("t", 2);
      await b.counted("t", 2);

      // Many publishes from A: each reaches B once and in order, and A's echo once.
      const n = 200;
      for (let i = 0; i < n; i++) a.publish("t", { i });
      for (let i = 0; i < n; i++) {
        assert.deepEqual(await b.next(), { type: "publish", topic: "t", data: { i }, clients: 2 });
      }
      for (let i = 0; i < n; i++) {
        assert.deepEqual(await a.next(), { type: "publish", topic: "t", data: { i }, clients: 2 });
      }
      await a.pong();
      await b.pong();

      // And back, with the sender's text unchanged.
      b.send('{"type":"publish","topic":"t","data":{"x":1e400},"extra":[1,"two"]}');
      assert.deepEqual(await a.next(), {
        type: "publish",
        topic: "t",
        data: { x: Infinity }, // 1e400 as sent: not re-encoded (that would make it null)
        extra: [1, "two"],
        clients: 2,
      });
      assert.deepEqual((await b.next()).extra, [1, "two"]);

      // A third subscriber on B counts everywhere; gone, it stops counting.
      const c = await YClient.subscribed(s2, "t");
      await a.counted("t", 3);
      await c.counted("t", 3);
      a.publish("t", "hello");
      for (const x of [a, b, c]) {
        assert.deepEqual(await x.next(), {
          type: "publish",
          topic: "t",
          data: "hello",
          clients: 3,
        });
      }
      await c.close();
      await a.counted("t", 2);
      // Unsubscribed on B: A's publishes no longer reach it.
      b.send({ type: "unsubscribe", topics: ["t"] });
      await a.counted("t", 1);
      a.publish("t", "alone");
      assert.deepEqual(await a.next(), { type: "publish", topic: "t", data: "alone", clients: 1 });
      await b.pong();
      await a.pong();
    });
  },
);

Deno.test(
  "y-webrtc cluster: the subscriber limit counts the whole cluster",
  opts,
  async () => {
    await withCluster(2, async ([s1, s2]) => {
      const a1 = await YClient.subscribed(s1, "full");
      const b1 = await YClient.subscribed(s2, "full");
      await a1.counted("full", 2);
      await b1.counted("full", 2);

      // Both instances know the topic is full: refused at once.
      for (const s of [s1, s2]) {
        const x = await YClient.open(s);
        x.send({ type: "subscribe", topics: ["full"] });
        const e = await x.next();
        assert.equal(e.code, "topic-full");
        assert.deepEqual(e.topics, ["full"]);
        await x.pong();
      }

      // An instance with no subscriber of a full topic learns it from Redis:
      // the subscribe is taken back one round trip later.
      const a2 = await YClient.subscribed(s1, "late");
      a1.send({ type: "subscribe", topics: ["late"] });
      await a1.pong();
      await a1.counted("late", 2);
      const c = await YClient.open(s2);
      c.send({ type: "subscribe", topics: ["late"] });
      const e = await c.next();
      assert.equal(e.type, "error");
      assert.equal(e.code, "topic-full");
      assert.deepEqual(e.topics, ["late"]);
      c.publish("late", "let me in");
      assert.equal((await c.next()).code, "not-subscribed");
      await a1.counted("late", 2);
      await a2.pong(); // nothing from c reached the topic

      // A place frees up: the next subscribe on B gets it, and counts.
      a2.send({ type: "unsubscribe", topics: ["late"] });
      await a1.counted("late", 1);
      c.send({ type: "subscribe", topics: ["late"] });
      await c.pong();
      await c.counted("late", 2);
      await a1.counted("late", 2);
    }, ["--yjs-max-subscribers", "2"]);
  },
);

Deno.test(
  "y-webrtc cluster: a killed instance's subscribers stop counting within 10 s; a stopped one's at once",
  opts,
  async () => {
    await withCluster(3, async ([s1, s2, s3]) => {
      const a = await YClient.subscribed(s1, "k");
      await YClient.subscribed(s2, "k");
      await YClient.subscribed(s2, "k");
      await YClient.subscribed(s3, "k");
      await a.counted("k", 4);

      const killed = Date.now();
      await s2.stop("SIGKILL");
      await a.counted("k", 2, 10_000);
      assert.ok(Date.now() - killed < 10_000);

      assert.equal(await s3.stop("SIGTERM"), 0);
      // The stopping instance unsubscribes its clients as it closes them.
      assert.ok(await a.counted("k", 1, 3000) < 3000);
      a.publish("k", "still here");
      assert.deepEqual(await a.next(), {
        type: "publish",
        topic: "k",
        data: "still here",
        clients: 1,
      });
    });
  },
);

Deno.test(
  "y-webrtc cluster: Redis restarts empty — local publishes go on, then counts and relays come back",
  opts,
  async () => {
    await withCluster(2, async ([s1, s2], redis) => {
      const a = await YClient.subscribed(s1, "r");
      const a2 = await YClient.subscribed(s1, "r");
      const b = await YClient.subscribed(s2, "r");
      await a.counted("r", 3);
      await b.counted("r", 3);

      await redis.down();
      await waitForStatus(s1.port, "/readyz", 503);
      await waitForStatus(s2.port, "/readyz", 503);
      // Same-instance subscribers still hear each other; B cannot be reached.
      a.publish("r", "during");
      assert.equal((await a2.next()).data, "during");
      assert.equal((await a.next()).data, "during");
      // Subscriptions made meanwhile are registered once Redis is back.
      const late = await YClient.subscribed(s2, "r");

      await redis.up();
      await waitForStatus(s1.port, "/readyz", 200);
      await waitForStatus(s2.port, "/readyz", 200);
      await a.counted("r", 4);
      await late.counted("r", 4);
      b.publish("r", "after");
      for (const x of [a, a2, b, late]) {
        assert.deepEqual(await x.next(), {
          type: "publish",
          topic: "r",
          data: "after",
          clients: 4,
        });
      }
      await b.pong(); // "during" never reached B
    });
  },
);

Deno.test(
  "y-webrtc cluster: two Yjs docs signalling through different instances sync",
  opts,
  async () => {
    await withCluster(2, async ([s1, s2]) => {
      const peers: YjsPeer[] = [];
      try {
        const room = "cluster-room";
        const a = await YjsPeer.start({ url: `ws://127.0.0.1:${s1.port}/yjs`, room });
        peers.push(a);
        const b = await YjsPeer.start({ url: `ws://127.0.0.1:${s2.port}/yjs`, room });
        peers.push(b);
        await a.insert(0, "hello");
        await b.waitForText("hello");
        await b.insert(5, " cluster");
        await a.waitForText("hello cluster");
        await a.until(() => a.webrtcPeers.length === 1, "a to connect to b");
        await b.until(() => b.webrtcPeers.length === 1, "b to connect to a");
      } finally {
        await Promise.all(peers.map((p) => p.stop()));
      }
    });
  },
);
