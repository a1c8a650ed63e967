/**
 * The pure half of PeerJS's cluster mode (`lib/cluster/peers.ts`), under
 * the real PeerJS engine on every instance, against an in-memory model of
 * Redis that applies each script as it is sent (as one Redis would, in
 * order, the scripts of `peer_scripts.ts` written again in TypeScript) and
 * delivers its replies and channel messages later: each instance's replies
 * in FIFO order and its channel messages in FIFO order, but the two racing
 * each other (they travel on two connections). No Redis, no socket.
 *
 * Random interleavings check that an id is held by one connection at a
 * time and, once settled, open exactly where Redis says; that no frame is
 * delivered twice, to the wrong id, or out of its sender's order; and that,
 * once settled, every message reaches the holder of its id. Scenarios check
 * the races one by one: frames that overtake their claim's answer, a
 * takeover heard of before the claim's answer, the offline queue across
 * instances (delivery on claim, expiry, bounds, a claimant that left before
 * its answer), Redis unavailable, and registering ids again.
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import {
  ClusterPeers,
  type ExpiredQueue,
  parsePeerMessage,
  parseWaitingEntry,
  type PeerClaimReply,
  type PeerLink,
  type PeerRelayAnswer,
  type PeerRelayAsk,
  waitingEntry,
} from "../lib/cluster/peers.ts";
import { claimReply, relayReply, sweepReply } from "../lib/cluster/peer_scripts.ts";
import type { OfflineLimits, RelayOutcome } from "../lib/peerjs/directory.ts";
import { type PConn, type PeerjsEngine, peerjsEngine } from "../lib/peerjs/engine.ts";

// ---------------------------------------------------------------- the model of Redis

interface HolderRec {
  inst: string;
  conn: number;
  token: string;
}

interface QueueRec {
  due: number;
  entries: string[];
  senders: Set<string>;
  bytes: number;
}

/** Redis as the scripts of `peer_scripts.ts` use it. */
class FakeRedis {
  /** Redis' clock, ms. */
  now = 0;
  /** Instances whose `sig:alive` key exists. */
  readonly alive = new Set<string>();
  /** `key:id` → holder. */
  readonly holders = new Map<string, HolderRec>();
  /** Instance → the `key:id`s it holds. */
  readonly im = new Map<string, Set<string>>();
  /** `key:id` → its queue, in the order they were made. */
  readonly queues = new Map<string, QueueRec>();
  qn = 0;
  qbytes = 0;
  /** `inst:conn` → the queue its claim took, until it says it delivered it. */
  readonly stashes = new Map<string, { kid: string; q: QueueRec }>();
  /** Messages on each instance's channel, not yet delivered. */
  readonly channels = new Map<string, string[]>();

  publish(inst: string, msg: string): void {
    let q = this.channels.get(inst);
    if (q === undefined) this.channels.set(inst, q = []);
    q.push(msg);
  }

  #im(inst: string): Set<string> {
    let s = this.im.get(inst);
    if (s === undefined) this.im.set(inst, s = new Set());
    return s;
  }

  take(kid: string, stash?: string): { entries: string[]; senders: string[] } {
    const q = this.queues.get(kid);
    if (q === undefined) return { entries: [], senders: [] };
    this.queues.delete(kid);
    this.qn -= q.entries.length;
    this.qbytes -= q.bytes;
    if (stash !== undefined) this.stashes.set(stash, { kid, q });
    return { entries: q.entries, senders: [...q.senders] };
  }

  /** Puts a stash back at the front of its queue. */
  giveback(stash: string): void {
    const s = this.stashes.get(stash);
    if (s === undefined) return;
    this.stashes.delete(stash);
    const q = this.queues.get(s.kid);
    if (q === undefined) this.queues.set(s.kid, s.q);
    else {
      q.entries.unshift(...s.q.entries);
      for (const x of s.q.senders) q.senders.add(x);
      q.bytes += s.q.bytes;
      q.due = Math.min(q.due, s.q.due);
    }
    this.qn += s.q.entries.length;
    this.qbytes += s.q.bytes;
  }

  claim(key: string, id: string, inst: string, conn: number, token: string): PeerClaimReply {
    const kid = `${key}:${id}`;
    const h = this.holders.get(kid);
    let outcome: "fresh" | "takeover" = "fresh";
    let replaced: number | undefined;
    if (h !== undefined) {
      if (h.inst === inst || this.alive.has(h.inst)) {
        if (h.token !== token) return { outcome: "taken", waiting: [] };
        outcome = "takeover";
        if (h.inst === inst) replaced = h.conn;
        else this.publish(h.inst, `r${h.conn}`);
      }
      if (h.inst !== inst) this.im.get(h.inst)?.delete(kid);
    }
    this.holders.set(kid, { inst, conn, token });
    this.#im(inst).add(kid);
    return { outcome, replaced, waiting: this.take(kid, `${inst}:${conn}`).entries };
  }

  relay(ask: PeerRelayAsk, limits: OfflineLimits, inst: string): PeerRelayAnswer {
    const kid = `${ask.key}:${ask.dst}`;
    const h = this.holders.get(kid);
    if (h !== undefined) {
      if (h.inst === inst) return { local: h.conn };
      if (this.alive.has(h.inst)) {
        this.publish(h.inst, `m${h.conn}\n${ask.frame}`);
        return "delivered";
      }
    }
    if (!ask.queue) return "dropped";
    const q = this.queues.get(kid);
    const n = q?.entries.length ?? 0;
    if (n >= limits.maxPerId) return "full-id";
    if (this.qbytes + ask.size > limits.maxBytes) return "full-total";
    const rec = q ?? { due: this.now + limits.expireMs, entries: [], senders: new Set(), bytes: 0 };
    if (q === undefined) this.queues.set(kid, rec);
    rec.entries.push(waitingEntry(ask.src, ask.frame));
    rec.senders.add(ask.src);
    rec.bytes += ask.size;
    this.qn++;
    this.qbytes += ask.size;
    return "queued";
  }

  release(key: string, id: string, inst: string, conn: number): void {
    const kid = `${key}:${id}`;
    this.giveback(`${inst}:${conn}`);
    const h = this.holders.get(kid);
    if (h?.inst === inst && h.conn === conn) {
      this.holders.delete(kid);
      this.im.get(inst)?.delete(kid);
    }
  }

  restore(key: string, id: string, inst: string, conn: number, token: string) {
    const kid = `${key}:${id}`;
    const h = this.holders.get(kid);
    if (h !== undefined && h.inst !== inst && this.alive.has(h.inst)) {
      return { answer: "conflict" as const, waiting: [] };
    }
    if (h !== undefined && h.inst !== inst) this.im.get(h.inst)?.delete(kid);
    this.holders.set(kid, { inst, conn, token });
    this.#im(inst).add(kid);
    return { answer: "ok" as const, waiting: this.take(kid, `${inst}:${conn}`).entries };
  }

  sweep(): ExpiredQueue[] {
    const out: ExpiredQueue[] = [];
    for (const [kid, q] of [...this.queues]) {
      if (q.due > this.now) continue;
      const { senders } = this.take(kid);
      const c = kid.indexOf(":");
      out.push({ key: kid.slice(0, c), id: kid.slice(c + 1), senders });
    }
    return out;
  }

  reap(): void {
    for (const [inst, kids] of [...this.im]) {
      if (this.alive.has(inst)) continue;
      for (const kid of kids) {
        if (this.holders.get(kid)?.inst === inst) this.holders.delete(kid);
      }
      this.im.delete(inst);
    }
  }
}

/** One instance's link to the model; replies wait in a FIFO until delivered. */
class FakeLink implements PeerLink {
  live = true;
  readonly replies: (() => void)[] = [];
  limits: OfflineLimits | undefined;
  constructor(readonly redis: FakeRedis, readonly inst: string) {}
  #later<T>(value: T): Promise<T> {
    return new Promise((resolve) => this.replies.push(() => resolve(value)));
  }
  claim(key: string, id: string, conn: number, token: string): Promise<PeerClaimReply> {
    if (!this.live) return Promise.reject(new Error("down"));
    return this.#later(this.redis.claim(key, id, this.inst, conn, token));
  }
  release(key: string, id: string, conn: number): void {
    if (this.live) this.redis.release(key, id, this.inst, conn);
  }
  taken(_key: string, _id: string, conn: number): void {
    if (this.live) this.redis.stashes.delete(`${this.inst}:${conn}`);
  }
  relay(ask: PeerRelayAsk, limits: OfflineLimits): Promise<PeerRelayAnswer> {
    if (!this.live) return Promise.reject(new Error("down"));
    return this.#later(this.redis.relay(ask, limits, this.inst));
  }
  ids(key: string): Promise<string[]> {
    const out: string[] = [];
    for (const kid of this.redis.holders.keys()) {
      if (kid.startsWith(key + ":")) out.push(kid.slice(key.length + 1));
    }
    return Promise.resolve(out);
  }
}

// ---------------------------------------------------------------- a cluster of engines

const EXPIRE_MS = 1000;
const PER_ID = 4;
const MAX_BYTES = 4096;

/** A client connection and everything it was sent. */
interface Client {
  readonly name: string;
  readonly k: number;
  readonly id: string;
  readonly token: string;
  conn: PConn;
  readonly got: Record<string, unknown>[];
  closed: { code: number; reason: string } | undefined;
}

interface Node {
  readonly inst: string;
  readonly link: FakeLink;
  readonly peers: ClusterPeers;
  readonly engine: PeerjsEngine;
}

const flush = async () => {
  for (let i = 0; i < 8; i++) await Promise.resolve();
};

/** `n` instances, each an engine over a {@link ClusterPeers} over one model of Redis. */
function cluster(n: number, limits: { maxPerId?: number; maxBytes?: number } = {}) {
  const redis = new FakeRedis();
  const clock = { now: 0 };
  const nodes: Node[] = [...Array(n).keys()].map((k) => {
    const inst = `i${k}`;
    redis.alive.add(inst);
    const link = new FakeLink(redis, inst);
    const peers = new ClusterPeers(link, () => clock.now);
    let ids = 0;
    const engine = peerjsEngine({
      now: () => clock.now,
      newId: () => `${inst}-${++ids}`,
      limits: {
        rate: 0,
        aliveTimeout: 0,
        expireTimeout: EXPIRE_MS,
        maxOfflinePerId: limits.maxPerId ?? PER_ID,
        maxOfflineBytes: limits.maxBytes ?? MAX_BYTES,
      },
      directory: (hooks, l) => peers.attach(hooks, l),
    });
    return { inst, link, peers, engine };
  });
  const clients: Client[] = [];
  let sent = 0;
  const api = {
    redis,
    nodes,
    clients,
    clock,
    /** Opens a connection on instance `k` for `id` with `token`. */
    connect(k: number, id: string, token = `t-${id}`): Client {
      const c: Client = {
        name: `c${clients.length}`,
        k,
        id,
        token,
        conn: undefined as unknown as PConn,
        got: [],
        closed: undefined,
      };
      const link = {
        send: (frame: string) => {
          assert.equal(c.closed, undefined, `${c.name} was sent a frame after it closed`);
          c.got.push(JSON.parse(frame));
        },
        close: (code: number, reason: string) => c.closed = { code, reason },
        wake() {},
      };
      const q = new URLSearchParams({ key: "peerjs", id, token });
      c.conn = nodes[k].engine.open(link, {
        url: new URL(`ws://x/peerjs?${q}`),
        address: "127.0.0.1",
      });
      clients.push(c);
      return c;
    },
    /** The client goes away. */
    close(c: Client): void {
      nodes[c.k].engine.close(c.conn);
      c.closed ??= { code: 1000, reason: "client" };
    },
    /** Sends `type` to `dst` from `c`, numbered; the number, or 0 when `c` is not open. */
    relay(c: Client, dst: string, type = "CANDIDATE"): number {
      if (c.conn.state === "closed") return 0;
      const seq = ++sent;
      const payload = { n: seq, from: c.name };
      nodes[c.k].engine.frame(c.conn, JSON.stringify({ type, dst, payload }));
      return seq;
    },
    /** Delivers instance `k`'s next channel message, if any. */
    message(k: number): boolean {
      const m = redis.channels.get(nodes[k].inst)?.shift();
      if (m === undefined) return false;
      nodes[k].peers.message(m);
      return true;
    },
    /** Delivers instance `k`'s next reply, if any. */
    async reply(k: number): Promise<boolean> {
      const r = nodes[k].link.replies.shift();
      if (r === undefined) return false;
      r();
      await flush();
      return true;
    },
    /** Moves both clocks on by `ms` and lets instance `k` sweep the queues. */
    sweep(k: number, ms: number): void {
      clock.now += ms;
      redis.now += ms;
      const due = redis.sweep();
      if (due.length > 0) nodes[k].peers.expire(due);
    },
    /** Delivers everything in flight, instance by instance, replies first. */
    async settle(): Promise<void> {
      for (let round = 0; round < 1000; round++) {
        let moved = false;
        for (let k = 0; k < nodes.length; k++) {
          while (await api.reply(k)) moved = true;
          while (api.message(k)) moved = true;
        }
        if (!moved) return;
      }
      throw new Error("did not settle");
    },
    /** Relayed frames `c` got (not OPEN or errors). */
    relayed(c: Client): Record<string, unknown>[] {
      return c.got.filter((m) => typeof m.src === "string");
    },
  };
  return api;
}

type Cluster = ReturnType<typeof cluster>;

/** Checks what must hold at every step: no frame twice, to the wrong id, or out of order. */
function checkDeliveries(cl: Cluster): void {
  const seen = new Set<number>();
  for (const c of cl.clients) {
    const last = new Map<string, number>();
    for (const m of cl.relayed(c)) {
      assert.equal(m.dst, c.id, `${c.name} (${c.id}) got a frame for ${m.dst}`);
      const p = m.payload as { n: number; from: string } | undefined;
      // An EXPIRE from the server, or a payload a scenario wrote itself.
      if (typeof p !== "object" || p === null || typeof p.n !== "number") continue;
      const sender = cl.clients.find((x) => x.name === p.from)!;
      assert.equal(m.src, sender.id, "src is the sender's id, set by the server");
      assert.ok(!seen.has(p.n), `#${p.n} delivered twice`);
      seen.add(p.n);
      assert.ok((last.get(p.from) ?? 0) < p.n, `${c.name} got ${p.from}'s frames out of order`);
      last.set(p.from, p.n);
    }
  }
}

/** Settled: every id is open at most once, exactly where Redis says it is held. */
function checkHolders(cl: Cluster): void {
  const open = cl.clients.filter((c) => c.conn.state === "open");
  const byId = new Map<string, Client[]>();
  for (const c of open) byId.set(c.id, [...byId.get(c.id) ?? [], c]);
  for (const [id, cs] of byId) {
    assert.equal(cs.length, 1, `${id} is open on ${cs.map((c) => c.name)}`);
    const h = cl.redis.holders.get(`peerjs:${id}`);
    assert.deepEqual(
      h && { inst: h.inst, conn: h.conn },
      { inst: cl.nodes[cs[0].k].inst, conn: cs[0].conn.n },
      `Redis holds ${id} where it is open`,
    );
  }
  for (const [kid, h] of cl.redis.holders) {
    const id = kid.slice("peerjs:".length);
    assert.ok(byId.has(id), `Redis holds ${id} for ${h.inst}/${h.conn}, which is not open`);
  }
  const ids = cl.nodes.reduce((a, n) => a + n.engine.ids, 0);
  assert.equal(ids, cl.redis.holders.size, "the engines count what Redis holds");
  for (const c of cl.clients) assert.notEqual(c.conn.state, "pending", `${c.name} answered`);
}

/** The queues' totals agree with the queues. */
function checkQueues(cl: Cluster): void {
  let n = 0;
  let bytes = 0;
  for (const q of cl.redis.queues.values()) {
    n += q.entries.length;
    bytes += q.bytes;
    assert.ok(q.entries.length <= PER_ID);
  }
  assert.equal(cl.redis.qn, n);
  assert.equal(cl.redis.qbytes, bytes);
  assert.ok(bytes <= MAX_BYTES);
}

// ---------------------------------------------------------------- properties

const IDS = ["a", "b", "c"];
const TOKENS = ["x", "y"];

type Op =
  | { op: "connect"; k: number; id: number; token: number }
  | { op: "close"; c: number }
  | { op: "relay"; c: number; dst: number }
  | { op: "msg" | "reply"; k: number }
  | { op: "sweep"; k: number; ms: number };

const opArb = (instances: number): fc.Arbitrary<Op> =>
  fc.oneof(
    fc.record({
      op: fc.constant("connect" as const),
      k: fc.nat(instances - 1),
      id: fc.nat(IDS.length - 1),
      token: fc.nat(TOKENS.length - 1),
    }),
    fc.record({ op: fc.constant("close" as const), c: fc.nat(20) }),
    fc.record({ op: fc.constant("relay" as const), c: fc.nat(20), dst: fc.nat(IDS.length) }),
    fc.record({ op: fc.constantFrom("msg" as const, "reply" as const), k: fc.nat(instances - 1) }),
    fc.record({ op: fc.constant("sweep" as const), k: fc.nat(instances - 1), ms: fc.nat(700) }),
  );

Deno.test("cluster peers: random interleavings keep ids unique and frames once, in order", async () => {
  const instances = 3;
  await fc.assert(
    fc.asyncProperty(fc.array(opArb(instances), { maxLength: 150, size: "max" }), async (ops) => {
      const cl = cluster(instances);
      /**
       * Relays from open senders: number, destination, how many connections
       * existed then, and which were open for the destination then.
       */
      const sends: { n: number; dst: string; made: number; open: PConn[] }[] = [];
      for (const o of ops) {
        if (o.op === "connect") cl.connect(o.k, IDS[o.id], TOKENS[o.token]);
        else if (o.op === "close") {
          const c = cl.clients[o.c % Math.max(1, cl.clients.length)];
          if (c !== undefined) cl.close(c);
        } else if (o.op === "relay") {
          const c = cl.clients[o.c % Math.max(1, cl.clients.length)];
          // IDS.length stands for an id no one ever holds.
          const dst = IDS[o.dst] ?? "nobody";
          const open = cl.clients.filter((x) => x.id === dst && x.conn.state === "open");
          const sender = c?.conn.state === "open";
          const n = c === undefined ? 0 : cl.relay(c, dst);
          if (sender && n > 0) {
            sends.push({ n, dst, made: cl.clients.length, open: open.map((x) => x.conn) });
          }
        } else if (o.op === "msg") cl.message(o.k);
        else if (o.op === "reply") await cl.reply(o.k);
        else if (o.op === "sweep") cl.sweep(o.k, o.ms);
        // Redis never holds an id for a connection that was refused.
        for (const [kid, h] of cl.redis.holders) {
          const c = cl.clients.find((x) => x.conn.n === h.conn && cl.nodes[x.k].inst === h.inst);
          assert.ok(c !== undefined && `peerjs:${c.id}` === kid, `${kid} held by a stranger`);
          assert.ok(c.closed?.code !== 1008, `${kid} held by a refused connection`);
        }
        checkDeliveries(cl);
        checkQueues(cl);
      }
      await cl.settle();
      checkDeliveries(cl);
      checkHolders(cl);
      checkQueues(cl);

      // Nothing lost: a message for an id whose connection existed when it was
      // sent, and is still open now (so it held the id all along, in Redis),
      // reached it, unless an older session of the id was open then (it gets
      // what comes before it hears of the takeover, as a reconnecting client's
      // old socket would).
      for (const { n, dst, made, open } of sends) {
        const to = cl.clients.slice(0, made).find((c) => c.id === dst && c.conn.state === "open");
        if (to === undefined || open.some((c) => c !== to.conn)) continue;
        const got = cl.relayed(to).filter((m) => (m.payload as { n?: number })?.n === n);
        assert.equal(got.length, 1, `#${n} reached ${to.name}, which held ${dst} all along`);
      }

      // Settled: a message from every open connection to every held id arrives once.
      const open = cl.clients.filter((c) => c.conn.state === "open");
      const expected: { n: number; to: Client }[] = [];
      for (const c of open) {
        for (const to of open) expected.push({ n: cl.relay(c, to.id), to });
      }
      await cl.settle();
      for (const { n, to } of expected) {
        const got = cl.relayed(to).filter((m) =>
          (m.payload as { n?: number } | undefined)?.n === n
        );
        assert.equal(got.length, 1, `#${n} reached ${to.name} once`);
      }
      checkDeliveries(cl);

      // Whatever waited is delivered when its id connects, or expires to its senders.
      cl.sweep(0, EXPIRE_MS);
      await cl.settle();
      assert.equal(cl.redis.queues.size, 0);
      checkQueues(cl);
    }),
    { numRuns: 300 },
  );
});

// ---------------------------------------------------------------- scenarios

Deno.test("cluster peers: ID-TAKEN and takeover across instances; the old socket is closed", async () => {
  const cl = cluster(2);
  const a = cl.connect(0, "a", "t1");
  await cl.settle();
  assert.deepEqual(a.got, [{ type: "OPEN" }]);
  const x = cl.connect(1, "a", "other");
  await cl.settle();
  assert.deepEqual(x.got, [{ type: "ID-TAKEN", payload: { msg: "ID is taken" } }]);
  assert.deepEqual(x.closed, { code: 1008, reason: "ID is taken" });
  const a2 = cl.connect(1, "a", "t1");
  await cl.settle();
  assert.deepEqual(a2.got, [{ type: "OPEN" }]);
  assert.deepEqual(a.closed, { code: 1000, reason: "taken over by a reconnection" });
  assert.equal(cl.nodes[1].engine.stats.handshakes.takeover, 1);
  // The old one's close releases nothing: the new one holds the id.
  assert.equal(cl.redis.holders.get("peerjs:a")?.inst, "i1");
  checkHolders(cl);
});

Deno.test("cluster peers: relays across instances carry the server's src, in order", async () => {
  const cl = cluster(2);
  const a = cl.connect(0, "a");
  const b = cl.connect(1, "b");
  await cl.settle();
  cl.nodes[0].engine.frame(a.conn, '{"type":"OFFER","dst":"b","src":"spoof","payload":1}');
  for (let i = 0; i < 5; i++) cl.relay(a, "b");
  await cl.settle();
  const got = cl.relayed(b);
  assert.deepEqual(got[0], { type: "OFFER", src: "a", dst: "b", payload: 1 });
  assert.equal(got.length, 6);
  checkDeliveries(cl);
  // The engine counted the outcomes once the cluster answered, and grew a's budget peers.
  assert.equal(cl.nodes[0].engine.stats.relayed.delivered, 6);
  assert.equal(cl.nodes[0].engine.stats.srcOverridden, 1);
  assert.equal(cl.nodes[0].peers.stats.forwarded, 6);
  assert.equal(cl.nodes[1].peers.stats.received, 6);
  // Held on the same instance: no round trip.
  const c = cl.connect(0, "c");
  await cl.settle();
  cl.relay(c, "a");
  assert.equal(cl.relayed(a).length, 1);
  assert.equal(cl.nodes[0].link.replies.length, 0);
});

Deno.test("cluster peers: frames that overtake their claim's answer wait for it", async () => {
  const cl = cluster(2);
  const a = cl.connect(0, "a");
  await cl.settle();
  cl.relay(a, "b", "OFFER"); // queued for b
  const b = cl.connect(1, "b");
  // a's next frame reaches b's instance before b's claim is answered there.
  const n = cl.relay(a, "b");
  await cl.reply(0);
  await cl.reply(0);
  assert.ok(cl.message(1));
  assert.deepEqual(b.got, []);
  assert.equal(cl.nodes[1].peers.stats.early, 1);
  await cl.reply(1);
  const got: Record<string, unknown>[] = b.got;
  assert.deepEqual(got.map((m) => m.type), ["OPEN", "OFFER", "CANDIDATE"]);
  assert.equal((got[2].payload as { n: number }).n, n);
  assert.equal(cl.nodes[1].engine.stats.offlineDelivered, 1);
});

Deno.test("cluster peers: a relay through Redis is not overtaken by a local one", async () => {
  const cl = cluster(1);
  const a = cl.connect(0, "a");
  await cl.settle();
  const b = cl.connect(0, "b");
  // b's claim is on its way: a's first frame goes through Redis, which names b here.
  cl.relay(a, "b");
  await cl.reply(0); // b's claim answered: b is held here now
  cl.relay(a, "b"); // must not overtake the first
  await cl.settle();
  assert.deepEqual(cl.relayed(b).map((m) => (m.payload as { n: number }).n), [1, 2]);
  checkDeliveries(cl);
});

Deno.test("cluster peers: a takeover heard of before the claim's answer closes after OPEN", async () => {
  const cl = cluster(2);
  const a = cl.connect(0, "a", "t");
  const a2 = cl.connect(1, "a", "t");
  // Redis applied both: a2 took over from a, whose answer has not arrived.
  assert.ok(cl.message(0));
  assert.deepEqual(a.got, []);
  await cl.settle();
  assert.deepEqual(a.got, [{ type: "OPEN" }]);
  assert.deepEqual(a.closed, { code: 1000, reason: "taken over by a reconnection" });
  assert.deepEqual(a2.got, [{ type: "OPEN" }]);
  checkHolders(cl);
});

Deno.test("cluster peers: the offline queue across instances: delivered, expired, bounded", async () => {
  const cl = cluster(2);
  const a = cl.connect(0, "a");
  await cl.settle();
  cl.relay(a, "late", "OFFER");
  cl.relay(a, "late");
  cl.relay(a, "late", "LEAVE"); // not kept, as in peer
  await cl.settle();
  assert.equal(cl.redis.qn, 2);
  assert.deepEqual(cl.nodes[0].engine.stats.relayed, {
    delivered: 0,
    queued: 2,
    dropped: 1,
    "full-id": 0,
    "full-total": 0,
  });
  const late = cl.connect(1, "late");
  await cl.settle();
  assert.deepEqual(late.got.map((m) => m.type), ["OPEN", "OFFER", "CANDIDATE"]);
  assert.equal(cl.redis.qn, 0);

  // Expiry: swept by the other instance, told to the sender wherever it is.
  cl.relay(a, "never");
  cl.relay(a, "never");
  await cl.settle();
  cl.sweep(1, EXPIRE_MS - 1);
  await cl.settle();
  assert.equal(cl.relayed(a).length, 0);
  cl.sweep(1, 1);
  await cl.settle();
  assert.deepEqual(cl.relayed(a), [{ type: "EXPIRE", src: "never", dst: "a" }]);
  assert.equal(cl.nodes[1].engine.stats.expired.timeout, 1);
  assert.equal(cl.redis.qbytes, 0);

  // Bounds: per id, then an EXPIRE at once (once per expiry period).
  for (let i = 0; i < PER_ID + 2; i++) cl.relay(a, "full");
  await cl.settle();
  assert.equal(cl.redis.queues.get("peerjs:full")?.entries.length, PER_ID);
  assert.deepEqual(cl.relayed(a).slice(1), [{ type: "EXPIRE", src: "full", dst: "a" }]);
  assert.equal(cl.nodes[0].engine.stats.relayed["full-id"], 2);
  checkQueues(cl);
});

Deno.test("cluster peers: the total bound holds across the cluster", async () => {
  const cl = cluster(2, { maxBytes: 300 });
  const a = cl.connect(0, "a");
  const b = cl.connect(1, "b");
  await cl.settle();
  cl.relay(a, "x");
  cl.relay(b, "y");
  cl.relay(b, "z");
  await cl.settle();
  assert.ok(cl.redis.qbytes <= 300);
  assert.equal(cl.redis.qn, 2);
  assert.deepEqual(cl.relayed(b), [{ type: "EXPIRE", src: "z", dst: "b" }]);
  assert.equal(cl.nodes[1].engine.stats.relayed["full-total"], 1);
});

Deno.test("cluster peers: a claimant that leaves before its answer puts the queue back", async () => {
  const cl = cluster(2);
  const a = cl.connect(0, "a");
  await cl.settle();
  cl.relay(a, "q", "OFFER");
  await cl.settle();
  const q = cl.connect(1, "q");
  cl.close(q); // the claim took the queue in Redis; the release followed it
  await cl.settle();
  assert.equal(cl.redis.holders.has("peerjs:q"), false);
  assert.equal(cl.redis.qn, 1, "the offer waits again");
  assert.equal(cl.redis.stashes.size, 0);
  const q2 = cl.connect(0, "q");
  await cl.settle();
  assert.deepEqual(q2.got.map((m) => m.type), ["OPEN", "OFFER"]);
});

Deno.test("cluster peers: Redis unavailable — claims refused with 1013, remote relays EXPIRE", async () => {
  const cl = cluster(2);
  const a = cl.connect(0, "a");
  const b = cl.connect(0, "b");
  const c = cl.connect(1, "c");
  await cl.settle();
  cl.nodes[0].link.live = false;
  const x = cl.connect(0, "x");
  assert.deepEqual(x.got, [{
    type: "ERROR",
    payload: { msg: "Server is unavailable, try again later" },
  }]);
  assert.deepEqual(x.closed, { code: 1013, reason: "Server is unavailable, try again later" });
  assert.equal(cl.nodes[0].engine.stats.handshakes.unavailable, 1);
  // Held here: still delivered. Elsewhere: the sender is told at once.
  cl.relay(a, "b");
  cl.relay(a, "c");
  assert.equal(cl.relayed(b).length, 1);
  assert.deepEqual(cl.relayed(a), [{ type: "EXPIRE", src: "c", dst: "a" }]);
  assert.equal(cl.nodes[0].peers.stats.unavailable, 2);
  // A claim whose script fails is refused the same way.
  cl.nodes[1].link.live = true;
  const failing = cl.nodes[1].link;
  failing.claim = () => Promise.reject(new Error("timeout"));
  const y = cl.connect(1, "y");
  await flush();
  assert.deepEqual(y.closed, { code: 1013, reason: "Server is unavailable, try again later" });
  assert.equal(c.closed, undefined);
});

Deno.test("cluster peers: registering again after Redis lost everything", async () => {
  const cl = cluster(2);
  const a = cl.connect(0, "a");
  const b = cl.connect(0, "b");
  const other = cl.connect(1, "o");
  await cl.settle();
  // Redis restarts empty; meanwhile another instance claims b.
  cl.redis.holders.clear();
  cl.redis.im.clear();
  const b2 = cl.connect(1, "b", "another");
  await cl.settle();
  assert.deepEqual(b2.got, [{ type: "OPEN" }]);
  cl.relay(other, "a"); // queued: a is not registered yet
  await cl.settle();
  assert.deepEqual(cl.nodes[0].peers.registrations().map((r) => r.id), ["a", "b"]);
  for (const [k, node] of cl.nodes.entries()) {
    for (const r of node.peers.registrations()) {
      const got = cl.redis.restore(r.key, r.id, `i${k}`, r.conn, r.token);
      node.peers.restored(r, got.answer, got.waiting);
    }
  }
  // a is back, with what waited for it; b lost to the other instance.
  assert.equal(cl.relayed(a).length, 1);
  assert.deepEqual(b.closed, { code: 1000, reason: "taken over by a reconnection" });
  assert.equal(cl.redis.holders.get("peerjs:a")?.inst, "i0");
  checkHolders(cl);
});

Deno.test("cluster peers: a dead instance's ids are free, and messages for them wait", async () => {
  const cl = cluster(2);
  const a = cl.connect(0, "a");
  const b = cl.connect(1, "b", "tb");
  await cl.settle();
  cl.redis.alive.delete("i1"); // its liveness key expired
  cl.relay(a, "b");
  await cl.settle();
  assert.equal(cl.relayed(b).length, 0);
  assert.equal(cl.redis.qn, 1);
  const b2 = cl.connect(0, "b", "someone-else");
  await cl.settle();
  assert.deepEqual(b2.got.map((m) => m.type), ["OPEN", "CANDIDATE"]);
  cl.redis.reap();
  assert.equal(cl.redis.im.has("i1"), false);
  assert.equal(cl.redis.holders.get("peerjs:b")?.inst, "i0");
});

Deno.test("cluster peers: discovery lists the cluster's ids", async () => {
  const cl = cluster(2);
  cl.connect(0, "a");
  cl.connect(1, "b");
  await cl.settle();
  // First call: this instance's own, while the cluster's are read.
  assert.deepEqual(cl.nodes[0].peers.ids("peerjs"), ["a"]);
  await flush();
  assert.deepEqual(cl.nodes[0].peers.ids("peerjs").sort(), ["a", "b"]);
});

Deno.test("cluster peers: wire forms round-trip", () => {
  const src = "a:b\nc\ud83d\ude00";
  const entry = waitingEntry(src, '{"x":1}');
  assert.deepEqual(parseWaitingEntry(entry), { src, frame: '{"x":1}' });
  assert.equal(parseWaitingEntry("x:y"), undefined);
  assert.equal(parseWaitingEntry("9:ab"), undefined);
  assert.deepEqual(parsePeerMessage("m3\nA\nB"), { kind: "frame", conn: 3, frame: "A\nB" });
  assert.equal(parsePeerMessage("m\nx"), undefined);
  assert.equal(parsePeerMessage("r"), undefined);
  assert.deepEqual(claimReply(["takeover", "4", "1:ax"]), {
    outcome: "takeover",
    replaced: 4,
    waiting: ["1:ax"],
  });
  assert.deepEqual(claimReply(["fresh", ""]), {
    outcome: "fresh",
    replaced: undefined,
    waiting: [],
  });
  assert.deepEqual(claimReply(["taken", ""]), { outcome: "taken", waiting: [] });
  assert.deepEqual(relayReply("s12"), { local: 12 });
  const outcomes: RelayOutcome[] = ["delivered", "queued", "dropped", "full-id", "full-total"];
  for (const o of outcomes) assert.equal(relayReply(o), o);
  assert.deepEqual(sweepReply(["peerjs:a:b", 2, "x", "y", "k2:c", 0]), [
    { key: "peerjs", id: "a:b", senders: ["x", "y"] },
    { key: "k2", id: "c", senders: [] },
  ]);
});
