/**
 * The pure half of y-webrtc's cluster mode (`lib/cluster/topics.ts`) against
 * an in-memory model of Redis that applies each script as it is sent (as
 * one Redis would, in order) and delivers its replies and channel messages
 * later, each instance's in FIFO order but with replies and messages racing
 * each other (they travel on two connections). Random interleavings check
 * that counts settle on the truth, the limit holds cluster-wide, every
 * publish is echoed to its sender once, no subscriber sees a publisher's
 * messages twice or out of order, and, once settled, every publish reaches
 * every subscriber of the topic on every instance.
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import {
  ClusterTopics,
  parseChannelMessage,
  publishPayload,
  type SubscribeAnswer,
  type TopicLink,
  wireTopic,
} from "../lib/cluster/topics.ts";
import { decode, type PublishMessage } from "../lib/ywebrtc/codec.ts";

/** Redis as the scripts of `topic_scripts.ts` use it. */
class FakeRedis {
  /** wire → instance → count. */
  readonly counts = new Map<string, Map<string, number>>();
  /** `inst wire` → member ids. */
  readonly members = new Map<string, Set<string>>();
  /** Messages on each instance's channel, not yet delivered. */
  readonly channels = new Map<string, string[]>();

  send(inst: string, msg: string): void {
    let q = this.channels.get(inst);
    if (q === undefined) this.channels.set(inst, q = []);
    q.push(msg);
  }

  total(wire: string): number {
    let t = 0;
    for (const n of this.counts.get(wire)?.values() ?? []) t += n;
    return t;
  }

  own(wire: string, inst: string): number {
    return this.counts.get(wire)?.get(inst) ?? 0;
  }

  notify(wire: string, caller: string | undefined, seq: number): void {
    const total = this.total(wire);
    const holders = this.counts.get(wire) ?? new Map<string, number>();
    for (const [i, n] of holders) this.send(i, `c${total}|${n}|${i === caller ? seq : 0}|${wire}`);
    if (caller !== undefined && !holders.has(caller)) {
      this.send(caller, `c${total}|0|${seq}|${wire}`);
    }
  }

  subscribe(wire: string, inst: string, member: string, max: number, seq: number): SubscribeAnswer {
    const key = `${inst} ${wire}`;
    let set = this.members.get(key);
    if (!set?.has(member)) {
      if (max > 0 && this.total(wire) >= max) {
        this.send(inst, `c${this.total(wire)}|${this.own(wire, inst)}|${seq}|${wire}`);
        return { kind: "full", total: this.total(wire), own: this.own(wire, inst) };
      }
      if (set === undefined) this.members.set(key, set = new Set());
      set.add(member);
      let c = this.counts.get(wire);
      if (c === undefined) this.counts.set(wire, c = new Map());
      c.set(inst, (c.get(inst) ?? 0) + 1);
    }
    this.notify(wire, inst, seq);
    return { kind: "ok", total: this.total(wire), own: this.own(wire, inst) };
  }

  unsubscribe(wire: string, inst: string, member: string, seq: number): void {
    if (this.members.get(`${inst} ${wire}`)?.delete(member) !== true) return;
    const c = this.counts.get(wire)!;
    const n = c.get(inst)! - 1;
    if (n > 0) c.set(inst, n);
    else c.delete(inst);
    if (c.size === 0) this.counts.delete(wire);
    this.notify(wire, inst, seq);
  }

  publish(wire: string, inst: string, payload: string): void {
    for (const i of this.counts.get(wire)?.keys() ?? []) if (i !== inst) this.send(i, payload);
  }
}

/** One instance's link to the fake Redis; replies wait in a FIFO until delivered. */
class FakeLink implements TopicLink {
  live = true;
  readonly replies: (() => void)[] = [];
  constructor(readonly redis: FakeRedis, readonly inst: string, readonly max: number) {}
  subscribe(wire: string, member: string, seq: number): Promise<SubscribeAnswer> {
    const a = this.redis.subscribe(wire, this.inst, member, this.max, seq);
    return new Promise((resolve) => this.replies.push(() => resolve(a)));
  }
  unsubscribe(wire: string, member: string, seq: number): void {
    this.redis.unsubscribe(wire, this.inst, member, seq);
  }
  publish(wire: string, payload: string): void {
    this.redis.publish(wire, this.inst, payload);
  }
}

interface Conn {
  readonly id: number;
  readonly name: string;
  readonly topics: Set<string>;
  /** Frames received: publisher name → sequence numbers, in arrival order. */
  readonly got: Map<string, number[]>;
}

const TOPICS = ["t1", "t2"];
const flush = async () => {
  for (let i = 0; i < 5; i++) await Promise.resolve();
};

/** A small cluster: `instances` buses over one fake Redis, each with `perInstance` connections. */
function cluster(instances: number, perInstance: number, max: number) {
  const redis = new FakeRedis();
  const nodes = [...Array(instances).keys()].map((k) => {
    const inst = `i${k}`;
    const link = new FakeLink(redis, inst, max);
    const topics = new ClusterTopics<Conn>(link);
    const conns = [...Array(perInstance).keys()].map((c): Conn => ({
      id: c + 1,
      name: `${inst}c${c + 1}`,
      topics: new Set(),
      got: new Map(),
    }));
    const bus = topics.attach(
      (sub, frame) => {
        const data = JSON.parse(frame).data as { from: string; n: number };
        const seen = sub.got.get(data.from) ?? [];
        seen.push(data.n);
        sub.got.set(data.from, seen);
      },
      // As the engine does: forget the topic, then unsubscribe (a no-op by then).
      (sub, topic) => {
        if (sub.topics.delete(topic)) bus.unsubscribe(topic, sub);
      },
    );
    return { inst, link, topics, bus, conns };
  });
  let sent = 0;
  /** What each publish was: publisher, topic, number. */
  const published: { from: string; topic: string; n: number }[] = [];
  const api = {
    redis,
    nodes,
    published,
    /** As the engine's subscribe: the local limit check, then the bus. */
    subscribe(k: number, c: number, topic: string) {
      const { bus, conns } = nodes[k];
      const conn = conns[c];
      if (conn.topics.has(topic) || (max > 0 && bus.count(topic) >= max)) return;
      conn.topics.add(topic);
      bus.subscribe(topic, conn);
    },
    unsubscribe(k: number, c: number, topic: string) {
      const conn = nodes[k].conns[c];
      if (conn.topics.delete(topic)) nodes[k].bus.unsubscribe(topic, conn);
    },
    publish(k: number, c: number, topic: string) {
      const conn = nodes[k].conns[c];
      if (!conn.topics.has(topic)) return;
      const n = ++sent;
      published.push({ from: conn.name, topic, n });
      const text = JSON.stringify({ type: "publish", topic, data: { from: conn.name, n } });
      nodes[k].bus.publish(topic, decode(text) as PublishMessage);
    },
    /** Delivers the next channel message of instance `k`, if any. */
    message(k: number) {
      const m = redis.channels.get(nodes[k].inst)?.shift();
      if (m !== undefined) nodes[k].topics.message(m);
    },
    /** Delivers the next reply of instance `k`, if any. */
    async reply(k: number) {
      nodes[k].link.replies.shift()?.();
      await flush();
    },
    /** Delivers everything in flight. */
    async settle() {
      for (let round = 0; round < 1000; round++) {
        let moved = false;
        for (let k = 0; k < nodes.length; k++) {
          while ((redis.channels.get(nodes[k].inst)?.length ?? 0) > 0) {
            api.message(k);
            moved = true;
          }
          while (nodes[k].link.replies.length > 0) {
            await api.reply(k);
            moved = true;
          }
        }
        if (!moved) return;
      }
      throw new Error("did not settle");
    },
  };
  return api;
}

type Op =
  | { op: "sub" | "unsub" | "pub"; k: number; c: number; t: number }
  | { op: "msg" | "reply"; k: number };

const opArb = (instances: number, perInstance: number): fc.Arbitrary<Op> =>
  fc.oneof(
    fc.record({
      op: fc.constantFrom("sub" as const, "unsub" as const, "pub" as const),
      k: fc.nat(instances - 1),
      c: fc.nat(perInstance - 1),
      t: fc.nat(TOPICS.length - 1),
    }),
    fc.record({ op: fc.constantFrom("msg" as const, "reply" as const), k: fc.nat(instances - 1) }),
  );

Deno.test("cluster topics: random interleavings settle on the truth, once and in order", async () => {
  const instances = 3;
  const per = 3;
  await fc.assert(
    fc.asyncProperty(
      fc.array(opArb(instances, per), { maxLength: 120 }),
      fc.constantFrom(0, 2, 4),
      async (ops, max) => {
        const cl = cluster(instances, per, max);
        for (const o of ops) {
          if (o.op === "msg") cl.message(o.k);
          else if (o.op === "reply") await cl.reply(o.k);
          else if (o.op === "sub") cl.subscribe(o.k, o.c, TOPICS[o.t]);
          else if (o.op === "unsub") cl.unsubscribe(o.k, o.c, TOPICS[o.t]);
          else if (o.op === "pub") cl.publish(o.k, o.c, TOPICS[o.t]);
          // The limit holds cluster-wide in Redis at every step.
          for (const t of TOPICS) {
            if (max > 0) assert.ok(cl.redis.total(wireTopic(t)) <= max, `${t} over ${max}`);
          }
        }
        await cl.settle();

        // Counts settle on the truth: local subscribers everywhere, as Redis has them.
        for (const t of TOPICS) {
          const truth = cl.nodes.reduce(
            (a, n) => a + n.conns.filter((c) => c.topics.has(t)).length,
            0,
          );
          assert.equal(cl.redis.total(wireTopic(t)), truth, `${t}: Redis agrees with the conns`);
          for (const n of cl.nodes) {
            const local = n.conns.filter((c) => c.topics.has(t)).length;
            assert.equal(n.bus.count(t), local > 0 ? truth : 0, `${n.inst} counts ${t}`);
          }
        }

        // Settled: a publish from every subscriber reaches every subscriber once.
        const before = cl.published.length;
        for (let k = 0; k < instances; k++) {
          for (let c = 0; c < per; c++) for (const t of TOPICS) cl.publish(k, c, t);
        }
        await cl.settle();
        const all = cl.nodes.flatMap((n) => n.conns);
        for (const p of cl.published.slice(before)) {
          for (const conn of all) {
            const times = (conn.got.get(p.from) ?? []).filter((n) => n === p.n).length;
            assert.equal(times, conn.topics.has(p.topic) ? 1 : 0, `${conn.name} got #${p.n}`);
          }
        }

        // Always: echoed once, never twice, in each publisher's order.
        for (const p of cl.published) {
          const sender = all.find((c) => c.name === p.from)!;
          assert.equal(sender.got.get(p.from)!.filter((n) => n === p.n).length, 1, "echo once");
        }
        for (const conn of all) {
          for (const [from, ns] of conn.got) {
            for (let i = 1; i < ns.length; i++) {
              assert.ok(ns[i] > ns[i - 1], `${conn.name} got ${from}'s in order: ${ns}`);
            }
          }
        }
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("cluster topics: a topic full elsewhere is taken back and says so", async () => {
  const cl = cluster(2, 2, 2);
  cl.subscribe(0, 0, "t1");
  cl.subscribe(0, 1, "t1");
  await cl.settle();
  assert.equal(cl.nodes[0].bus.count("t1"), 2);
  // Instance 1 has never heard of t1: it admits, Redis refuses, the engine takes it back.
  cl.subscribe(1, 0, "t1");
  assert.equal(cl.nodes[1].bus.count("t1"), 1);
  await cl.settle();
  assert.equal(cl.nodes[1].conns[0].topics.has("t1"), false);
  assert.equal(cl.nodes[1].bus.count("t1"), 0);
  assert.equal(cl.nodes[1].topics.stats.refused, 1);
  assert.equal(cl.redis.total(wireTopic("t1")), 2);
});

Deno.test("cluster topics: a topic held nowhere else is not sent to Redis", async () => {
  const cl = cluster(2, 2, 0);
  cl.subscribe(0, 0, "t1");
  // Not yet heard from Redis: forwarded, in case another instance holds it.
  cl.publish(0, 0, "t1");
  assert.equal(cl.nodes[0].topics.stats.forwarded, 1);
  await cl.settle();
  cl.publish(0, 0, "t1");
  assert.equal(cl.nodes[0].topics.stats.keptLocal, 1);
  // Another instance joins: the news arrives before anything it publishes.
  cl.subscribe(1, 0, "t1");
  cl.publish(1, 0, "t1");
  cl.message(0);
  assert.equal(cl.nodes[0].bus.count("t1"), 2);
  cl.message(0);
  assert.deepEqual(cl.nodes[0].conns[0].got.get("i1c1"), [3]);
});

Deno.test("cluster topics: count messages from before a topic's restart are ignored", async () => {
  const cl = cluster(2, 1, 0);
  cl.subscribe(1, 0, "t1");
  await cl.settle();
  cl.subscribe(0, 0, "t1");
  cl.unsubscribe(0, 0, "t1");
  cl.subscribe(0, 0, "t1");
  // The first two messages (total 2, then 1 after leaving) are older than the restart.
  cl.message(0);
  assert.equal(cl.nodes[0].bus.count("t1"), 1);
  cl.message(0);
  assert.equal(cl.nodes[0].bus.count("t1"), 1);
  cl.message(0);
  assert.equal(cl.nodes[0].bus.count("t1"), 2);
});

Deno.test("cluster topics: while Redis is away, publishes stay local and are counted", async () => {
  const cl = cluster(2, 2, 0);
  cl.subscribe(0, 0, "t1");
  cl.subscribe(1, 0, "t1");
  await cl.settle();
  const link = cl.nodes[0].link;
  link.live = false;
  cl.subscribe(0, 1, "t1");
  cl.publish(0, 0, "t1");
  assert.equal(cl.nodes[0].topics.stats.unavailable, 1);
  assert.equal(cl.nodes[0].conns[1].got.get("i0c1")?.length, 1, "local subscribers still get it");
  // Back: everything is registered again at once, and counts follow.
  link.live = true;
  const { seq, topics } = cl.nodes[0].topics.registrations();
  assert.deepEqual([...topics], [[wireTopic("t1"), ["1", "2"]]]);
  const set = cl.redis.members.get(`i0 ${wireTopic("t1")}`)!;
  set.clear();
  for (const m of topics.get(wireTopic("t1"))!) set.add(m);
  cl.redis.counts.get(wireTopic("t1"))!.set("i0", 2);
  cl.redis.notify(wireTopic("t1"), "i0", seq);
  await cl.settle();
  assert.equal(cl.nodes[0].bus.count("t1"), 3);
  assert.equal(cl.nodes[1].bus.count("t1"), 3);
});

Deno.test("cluster topics: wire forms round-trip", () => {
  const wire = wireTopic("a\nb\ud800|c");
  assert.ok(!wire.includes("\n"));
  assert.deepEqual(parseChannelMessage(publishPayload(wire, '{"x":"\\n"}')), {
    kind: "publish",
    wire,
    frame: '{"x":"\\n"}',
  });
  assert.deepEqual(parseChannelMessage(`c5|2|9|${wire}`), {
    kind: "count",
    wire,
    total: 5,
    own: 2,
    seq: 9,
  });
  assert.equal(parseChannelMessage("c5|2|"), undefined);
  assert.equal(parseChannelMessage("cx|2|3|w"), undefined);
  assert.equal(parseChannelMessage("p-no-newline"), undefined);
});
