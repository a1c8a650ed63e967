/**
 * The cluster's ordering logic without Redis: the sequencer driven by hand
 * through the hard orderings, then two instances with real brokers driven
 * step by step on simulated time over an in-memory stand-in for Redis (one
 * sequence counter, one event order, FIFO links), in the manner of
 * quinn-proto's test `Pair`.
 */

import assert from "node:assert/strict";
import type { Directory } from "../lib/diva/broker.ts";
import {
  type ClaimAnswer,
  type Holder,
  type RoomEvent,
  type RoomMember,
  Sequencer,
  type Sink,
} from "../lib/cluster/sequencer.ts";
import { type Harness, harness } from "./helpers/broker_harness.ts";

// ---------------------------------------------------------------------------
// The sequencer alone, with a sink that records its calls.

/** A sink that records every call; `members` is what `roomMembers` answers. */
function recorder() {
  const calls: unknown[][] = [];
  const sink: Sink & { calls: unknown[][]; members: RoomMember[] } = {
    calls,
    members: [],
    memberJoined: (room, ident, instance, conn) =>
      calls.push(["joined", room, ident, instance, conn]),
    memberLeft: (g) => calls.push(["left", g]),
    claimRefused: (conn, room, code, detail) => calls.push(["refused", conn, room, code, detail]),
    roomMembers: () => sink.members,
  };
  return sink;
}

/** Takes the calls recorded so far. */
function take(sink: { calls: unknown[][] }): unknown[][] {
  return sink.calls.splice(0);
}

const ev = (seq: number, kind: "j" | "l" | "r", instance: string, g: string): RoomEvent => ({
  seq,
  kind,
  instance,
  g,
});
const ok = (seq: number, members: Holder[] = []): ClaimAnswer => ({ kind: "ok", seq, members });
const local = (g: string): RoomMember => ({ g, instance: "", local: true });
const remote = (g: string, instance: string): RoomMember => ({ g, instance, local: false });

Deno.test("sequencer: a claim answered after its own join event completes in its turn", () => {
  const sink = recorder();
  const s = new Sequencer("me", sink);
  // First claim of the room: its events come before its answer (no snapshot yet).
  const view = s.claimStarted("r");
  s.event("r", ev(5, "j", "me", "r:alice"));
  s.event("r", ev(6, "j", "B", "r:bob"));
  assert.deepEqual(take(sink), [], "nothing applies before the view has a snapshot");
  s.claimAnswered(view, 1, "alice", ok(5, [{ g: "r:carol", instance: "B" }]));
  assert.deepEqual(take(sink), [
    ["joined", "r", "carol", "B", null],
    ["joined", "r", "alice", "me", 1],
    ["joined", "r", "bob", "B", null],
  ]);
  // A later claim on the initialized view: our join event, then a remote one,
  // arrive before the answer. Both wait, so alice2 joins before dave.
  assert.equal(s.claimStarted("r"), view, "one view per room");
  s.event("r", ev(9, "j", "me", "r:alice2"));
  s.event("r", ev(10, "j", "B", "r:dave"));
  assert.deepEqual(take(sink), [], "our own join waits for its answer, and later events behind it");
  s.claimAnswered(view, 2, "alice2", ok(9, [{ g: "r:carol", instance: "B" }]));
  assert.deepEqual(take(sink), [
    ["joined", "r", "alice2", "me", 2],
    ["joined", "r", "dave", "B", null],
  ]);
  // Answered first, event later: the join completes when its event comes.
  s.claimStarted("r");
  s.claimAnswered(view, 3, "erin", ok(11));
  assert.deepEqual(take(sink), []);
  s.event("r", ev(11, "j", "me", "r:erin"));
  assert.deepEqual(take(sink), [["joined", "r", "erin", "me", 3]]);
});

Deno.test("sequencer: events that arrive before the snapshot apply only past it", () => {
  const sink = recorder();
  const s = new Sequencer("me", sink);
  const view = s.claimStarted("r");
  // x joined and left, and y joined, after we subscribed, around our claim (seq 5).
  s.event("r", ev(3, "j", "B", "r:x"));
  s.event("r", ev(4, "l", "B", "r:x"));
  s.event("r", ev(5, "j", "me", "r:alice"));
  s.event("r", ev(6, "j", "B", "r:y"));
  assert.deepEqual(take(sink), []);
  // The claim's snapshot (the room before seq 5) no longer has x.
  s.claimAnswered(view, 1, "alice", ok(5, [{ g: "r:w", instance: "C" }]));
  assert.deepEqual(take(sink), [
    ["joined", "r", "w", "C", null],
    ["joined", "r", "alice", "me", 1],
    ["joined", "r", "y", "B", null],
  ], "x is never announced nor said bye to; y comes after alice");
  // Replays of covered events change nothing.
  s.event("r", ev(3, "j", "B", "r:x"));
  s.event("r", ev(6, "j", "B", "r:y"));
  assert.deepEqual(take(sink), []);
});

Deno.test("sequencer: a snapshot covers the events received and those still coming", () => {
  const sink = recorder();
  const s = new Sequencer("me", sink);
  const view = s.claimStarted("r");
  s.claimAnswered(view, 1, "alice", ok(10));
  s.event("r", ev(10, "j", "me", "r:alice"));
  s.event("r", ev(11, "j", "B", "r:bob"));
  take(sink);
  // Re-read at 13: bob is known, carol (12) and dan (13) are on their way.
  // The snapshot announces what the broker lacks.
  sink.members = [local("r:alice"), remote("r:bob", "B")];
  s.snapshot(view, 13, [
    { g: "r:alice", instance: "me" },
    { g: "r:bob", instance: "B" },
    { g: "r:carol", instance: "B" },
    { g: "r:dan", instance: "C" },
    { g: "r:lost", instance: "" },
  ], false);
  assert.deepEqual(take(sink), [
    ["joined", "r", "carol", "B", null],
    ["joined", "r", "dan", "C", null],
  ], "members without an owner and our own are not announced");
  // The events the snapshot covered arrive late: skipped; the next applies.
  s.event("r", ev(12, "j", "B", "r:carol"));
  s.event("r", ev(13, "j", "C", "r:dan"));
  s.event("r", ev(14, "l", "B", "r:bob"));
  assert.deepEqual(take(sink), [["left", "r:bob"]]);
});

Deno.test("sequencer: after Redis restarts empty, recovery re-reads and later prunes", () => {
  const sink = recorder();
  const s = new Sequencer("me", sink);
  const view = s.claimStarted("r");
  s.claimAnswered(
    view,
    1,
    "alice",
    ok(40, [
      { g: "r:bob", instance: "B" },
      { g: "r:dan", instance: "B" },
    ]),
  );
  s.event("r", ev(40, "j", "me", "r:alice"));
  take(sink);
  s.linkDown();
  assert.deepEqual(take(sink), [], "nothing was waiting");
  // Redis is back, empty: its counter starts again from 0. B re-registered
  // bob (r, seq 1) before we re-read the room: below what we applied, skipped.
  s.event("r", ev(1, "r", "B", "r:bob"));
  assert.deepEqual(take(sink), []);
  // We re-registered alice (seq 2) and re-read: nothing new; dan (B lost
  // him while Redis was away) stays until the prune.
  sink.members = [local("r:alice"), remote("r:bob", "B"), remote("r:dan", "B")];
  assert.deepEqual([...s.views()].map((v) => [v.room, v.initialized]), [["r", true]]);
  s.snapshot(view, 2, [{ g: "r:bob", instance: "B" }, { g: "r:alice", instance: "me" }], false);
  assert.deepEqual(take(sink), []);
  // The counter went backwards with Redis: events after the re-read apply.
  s.event("r", ev(2, "r", "me", "r:alice"));
  s.event("r", ev(3, "j", "C", "r:erin"));
  assert.deepEqual(take(sink), [["joined", "r", "erin", "C", null]]);
  // The prune, once every instance had time to re-register, drops dan.
  sink.members.push(remote("r:erin", "C"));
  s.snapshot(view, 3, [
    { g: "r:bob", instance: "B" },
    { g: "r:alice", instance: "me" },
    { g: "r:erin", instance: "C" },
  ], true);
  assert.deepEqual(take(sink), [["left", "r:dan"]]);
});

Deno.test("sequencer: link down completes answered claims; unanswered ones are refused", () => {
  const sink = recorder();
  const s = new Sequencer("me", sink);
  const r = s.claimStarted("r");
  const q = s.claimStarted("q");
  s.claimAnswered(r, 1, "alice", ok(7));
  s.claimStarted("r"); // bob's claim: no answer yet
  s.claimAnswered(q, 3, "carol", ok(8));
  assert.deepEqual(take(sink), []);
  assert.equal(s.unwatch("r"), false, "claims waiting keep the view");
  s.linkDown();
  assert.deepEqual(take(sink), [
    ["joined", "r", "alice", "me", 1],
    ["joined", "q", "carol", "me", 3],
  ], "joins whose events will not come complete at once");
  s.claimAnswered(r, 2, "bob", { kind: "failed" });
  assert.deepEqual(take(sink), [
    ["refused", 2, "r", "unavailable", "the cluster is unreachable; retry later"],
  ]);
  // The events did come after all (only one client closed): no second join.
  s.event("r", ev(7, "j", "me", "r:alice"));
  s.event("q", ev(8, "j", "me", "q:carol"));
  assert.deepEqual(take(sink), []);
  // While down, claims are refused before they start.
  s.claimUnavailable(4, "r");
  assert.deepEqual(take(sink), [
    ["refused", 4, "r", "unavailable", "the cluster is unreachable; retry later"],
  ]);
  assert.equal(s.unwatch("r"), true);
  assert.equal(s.unwatch("r"), false, "already gone");
  s.event("r", ev(9, "j", "B", "r:dan"));
  assert.deepEqual(take(sink), [], "rooms without a view are not followed");
});

Deno.test("sequencer: refusals say why", () => {
  const sink = recorder();
  const s = new Sequencer("me", sink);
  const v = s.claimStarted("r");
  s.claimStarted("r");
  s.claimAnswered(v, 1, "alice", { kind: "taken" });
  s.claimAnswered(v, 2, "bob", { kind: "full" });
  assert.deepEqual(take(sink), [
    ["refused", 1, "r", "ident-taken", "r:alice"],
    ["refused", 2, "r", "limit", "room r is full"],
  ]);
  assert.equal(v.initialized, false, "a refusal is no snapshot");
  assert.equal(s.unwatch("r"), true);
});

// ---------------------------------------------------------------------------
// Two instances, driven by one harness.

/** A deterministic source of numbers in [0, 1) (mulberry32). */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Simulated time: tasks run in time order, ties in the order they were scheduled. */
class Clock {
  now = 0;
  #n = 0;
  #tasks: { at: number; n: number; run: () => void }[] = [];

  at(at: number, run: () => void): void {
    this.#tasks.push({ at, n: this.#n++, run });
  }

  /** Runs the next task; false when there is none. */
  step(): boolean {
    if (this.#tasks.length === 0) return false;
    let next = 0;
    for (let i = 1; i < this.#tasks.length; i++) {
      const t = this.#tasks[i];
      const b = this.#tasks[next];
      if (t.at < b.at || (t.at === b.at && t.n < b.n)) next = i;
    }
    const [task] = this.#tasks.splice(next, 1);
    this.now = Math.max(this.now, task.at);
    task.run();
    return true;
  }

  /** Runs tasks until none is left (or one is due after `until`). */
  drive(until = Infinity): void {
    for (let i = 0; i < 1_000_000; i++) {
      if (this.#tasks.length === 0) return;
      if (Math.min(...this.#tasks.map((t) => t.at)) > until) break;
      this.step();
    }
    if (until !== Infinity) this.now = Math.max(this.now, until);
  }
}

/** One direction of one connection: messages arrive in the order sent, each after a latency. */
class Wire {
  #last = 0;
  constructor(readonly clock: Clock, readonly latency: () => number) {}

  send(run: () => void): void {
    const at = Math.max(this.clock.now + this.latency(), this.#last);
    this.#last = at;
    this.clock.at(at, run);
  }
}

/**
 * The part of Redis the scripts use, in memory: one sequence counter, owners,
 * rooms in join order, channels. Each operation is atomic, as a script is.
 */
class MiniRedis {
  seq = 0;
  readonly owner = new Map<string, string>();
  readonly rooms = new Map<string, string[]>();
  readonly channels = new Map<string, Set<Node>>();
  /** Every room event ever published, in order. */
  readonly log: RoomEvent[] = [];

  #publish(room: string, e: RoomEvent): void {
    this.log.push(e);
    for (const node of this.channels.get(room) ?? []) {
      node.subDown.send(() => {
        node.seen.add(e.seq);
        node.seq.event(room, e);
      });
    }
  }

  #members(room: string): Holder[] {
    return (this.rooms.get(room) ?? []).map((g) => ({ g, instance: this.owner.get(g) ?? "" }));
  }

  claim(g: string, room: string, inst: string, max: number): ClaimAnswer {
    if (this.owner.has(g)) return { kind: "taken" };
    const members = this.#members(room);
    if (members.length >= max) return { kind: "full" };
    const seq = ++this.seq;
    this.owner.set(g, inst);
    this.rooms.set(room, [...(this.rooms.get(room) ?? []), g]);
    this.#publish(room, { seq, kind: "j", instance: inst, g });
    return { kind: "ok", seq, members };
  }

  release(g: string, room: string, inst: string): void {
    if (this.owner.get(g) !== inst) return;
    this.owner.delete(g);
    this.rooms.set(room, (this.rooms.get(room) ?? []).filter((m) => m !== g));
    this.#publish(room, { seq: ++this.seq, kind: "l", instance: inst, g });
  }

  restore(g: string, room: string, inst: string): void {
    if (this.owner.has(g)) return;
    this.owner.set(g, inst);
    this.rooms.set(room, [...(this.rooms.get(room) ?? []), g]);
    this.#publish(room, { seq: ++this.seq, kind: "r", instance: inst, g });
  }

  snapshot(room: string): { seq: number; members: Holder[] } {
    return { seq: this.seq, members: this.#members(room) };
  }

  subscribe(room: string, node: Node): void {
    let set = this.channels.get(room);
    if (set === undefined) this.channels.set(room, set = new Set());
    set.add(node);
  }

  unsubscribe(room: string, node: Node): void {
    this.channels.get(room)?.delete(node);
  }

  /** A restart without persistence: everything is gone, the counter too. */
  restart(): void {
    this.seq = 0;
    this.owner.clear();
    this.rooms.clear();
    this.channels.clear();
  }
}

/**
 * One instance: a real broker, its sequencer, and a stand-in for the Redis
 * adapter (subscribe, then claim; releases; relays; recovery) over two
 * connections to {@link MiniRedis}, each a pair of {@link Wire}s.
 */
class Node implements Directory<string> {
  readonly h: Harness;
  readonly seq: Sequencer;
  readonly cmdUp: Wire;
  readonly cmdDown: Wire;
  readonly subUp: Wire;
  readonly subDown: Wire;
  /** Rooms subscribed, with the claims waiting for the subscription's acknowledgement. */
  readonly subs = new Map<string, { acked: boolean; waiting: (() => void)[] }>();
  readonly unreleased = new Map<string, string>();
  up = true;
  /** Sequence numbers of the room events received. */
  readonly seen = new Set<number>();
  /** Claims answered ok. */
  answered = 0;
  /** Claims answered ok after their own join event had arrived. */
  answeredAfterEvent = 0;

  constructor(
    readonly id: string,
    readonly pair: Pair,
    latency: () => number,
  ) {
    const clock = pair.clock;
    this.cmdUp = new Wire(clock, latency);
    this.cmdDown = new Wire(clock, latency);
    this.subUp = new Wire(clock, latency);
    this.subDown = new Wire(clock, latency);
    this.h = harness({ directory: this });
    this.seq = new Sequencer(id, this.h.broker);
  }

  /** A command: runs at Redis when it arrives; its answer comes back on the same connection. */
  #command<T>(atRedis: () => T, answered: (t: T) => void = () => {}): void {
    this.cmdUp.send(() => {
      const t = atRedis();
      this.cmdDown.send(() => answered(t));
    });
  }

  #subscribe(room: string): { acked: boolean; waiting: (() => void)[] } {
    let sub = this.subs.get(room);
    if (sub === undefined) {
      const s = { acked: false, waiting: [] as (() => void)[] };
      this.subs.set(room, s);
      this.subUp.send(() => {
        this.pair.redis.subscribe(room, this);
        this.subDown.send(() => {
          s.acked = true;
          for (const f of s.waiting.splice(0)) f();
        });
      });
      sub = s;
    }
    return sub;
  }

  claim(conn: number, room: string, ident: string): void {
    if (!this.up) {
      this.pair.clock.at(this.pair.clock.now, () => this.seq.claimUnavailable(conn, room));
      return;
    }
    const sub = this.#subscribe(room);
    const view = this.seq.claimStarted(room);
    const g = room + ":" + ident;
    const redis = this.pair.redis;
    const send = () =>
      this.#command(() => redis.claim(g, room, this.id, 256), (answer) => {
        if (answer.kind === "ok") this.answered++;
        if (answer.kind === "ok" && this.seen.has(answer.seq)) this.answeredAfterEvent++;
        this.seq.claimAnswered(view, conn, ident, answer);
      });
    if (sub.acked) send();
    else sub.waiting.push(send);
  }

  release(g: string, room: string): void {
    if (!this.up) this.unreleased.set(g, room);
    else this.#command(() => this.pair.redis.release(g, room, this.id));
  }

  relay(instance: string, g: string, frame: string): boolean {
    if (!this.up) return false;
    const to = this.pair.nodes.get(instance)!;
    this.cmdUp.send(() => to.subDown.send(() => to.h.broker.deliver(g, frame)));
    return true;
  }

  unwatch(room: string): void {
    if (!this.seq.unwatch(room)) return;
    this.subs.delete(room);
    this.subUp.send(() => this.pair.redis.unsubscribe(room, this));
  }

  /** Redis closed the connections. */
  down(): void {
    this.up = false;
    this.seq.linkDown();
  }

  /**
   * Redis is back: subscribe again, flush the releases owed, re-register the
   * local members, re-read every view, then be ready; the prune follows.
   */
  recover(pruneAfterMs: number): void {
    const redis = this.pair.redis;
    for (const [room, s] of this.subs) {
      s.acked = false;
      this.subUp.send(() => {
        redis.subscribe(room, this);
        this.subDown.send(() => s.acked = true);
      });
    }
    const owed = [...this.unreleased];
    this.unreleased.clear();
    const mine = this.h.broker.localMembers();
    this.#command(() => {
      for (const [g, room] of owed) redis.release(g, room, this.id);
      for (const m of mine) redis.restore(m.g, m.room, this.id);
    }, () => {
      this.#resyncAll(false, () => {
        this.up = true;
        this.pair.clock.at(this.pair.clock.now + pruneAfterMs, () => this.#resyncAll(true));
      });
    });
  }

  #resyncAll(prune: boolean, then: () => void = () => {}): void {
    const views = [...this.seq.views()];
    const next = (i: number): void => {
      if (i === views.length) return then();
      if (!views[i].initialized) return next(i + 1);
      this.#command(() => this.pair.redis.snapshot(views[i].room), (s) => {
        this.seq.snapshot(views[i], s.seq, s.members, prune);
        next(i + 1);
      });
    };
    next(0);
  }
}

/** Two instances, "A" and "B", on one {@link MiniRedis}, driven by one clock. */
class Pair {
  readonly clock = new Clock();
  readonly redis = new MiniRedis();
  readonly nodes = new Map<string, Node>();
  /** Every frame each client received, in order. */
  readonly #received = new Map<string, unknown[]>();

  constructor(latency: (node: string) => () => number) {
    for (const id of ["A", "B"]) this.nodes.set(id, new Node(id, this, latency(id)));
  }

  get a(): Node {
    return this.nodes.get("A")!;
  }

  get b(): Node {
    return this.nodes.get("B")!;
  }

  /** Runs every task due until `until` (all of them by default). */
  drive(until?: number): void {
    this.clock.drive(until);
  }

  /** Every frame `client` received so far. */
  received(client: string): unknown[] {
    for (const node of this.nodes.values()) {
      for (const [to, frame] of node.h.sent()) {
        const list = this.#received.get(to) ?? [];
        list.push(frame);
        this.#received.set(to, list);
      }
    }
    return this.#received.get(client) ?? [];
  }

  /** The frames `client` received since the last call for it. */
  take(client: string): unknown[] {
    return this.received(client).splice(0);
  }
}

Deno.test("pair: concurrent joins on two instances pair everyone once, in Redis order", () => {
  let answeredAfterEvent = 0;
  let answeredBeforeEvent = 0;
  for (let seed = 1; seed <= 60; seed++) {
    const rnd = random(seed);
    const pair = new Pair(() => () => 1 + Math.floor(rnd() * 20));
    const clients = ["a0", "b0", "a1", "b1", "a2", "b2", "a3"];
    for (const name of clients) {
      const node = name[0] === "a" ? pair.a : pair.b;
      node.h.open(name);
      // Each client joins once, at a random time; a3 joins twice (two idents).
      pair.clock.at(Math.floor(rnd() * 30), () => node.h.call(name, "join", name, "r"));
    }
    pair.clock.at(Math.floor(rnd() * 30), () => pair.a.h.call("a3", "join", "a3x", "r"));
    pair.drive();
    const order = pair.redis.rooms.get("r")!;
    assert.equal(order.length, 8);
    const owner = (g: string) => g.slice(2).replace(/x$/, "");
    const expected = new Map<string, unknown[]>(clients.map((c) => [c, []]));
    order.forEach((g, k) => {
      // The joiner: its join, then one stun per earlier member, as initiator;
      // every earlier member that is not the joiner's own connection: one stun.
      const own = expected.get(owner(g))!;
      own.push(["join", g]);
      for (const e of order.slice(0, k)) own.push(["stun", g, e, true]);
      for (const e of order.slice(0, k)) expected.get(owner(e))!.push(["stun", e, g, false]);
    });
    for (const c of clients) {
      const got = pair.received(c);
      // One connection's two idents interleave; compare each ident's own stream.
      for (const g of order.filter((g) => owner(g) === c)) {
        const mine = (f: unknown) => (f as string[])[1] === g;
        assert.deepEqual(got.filter(mine), expected.get(c)!.filter(mine), `seed ${seed}, ${g}`);
      }
      assert.equal(got.length, expected.get(c)!.length, `seed ${seed}, ${c}: nothing more`);
    }
    for (const node of pair.nodes.values()) {
      answeredAfterEvent += node.answeredAfterEvent;
      answeredBeforeEvent += node.answered - node.answeredAfterEvent;
    }
  }
  // The schedules covered both orders of a claim's answer and its own event.
  assert.ok(answeredAfterEvent > 20, `answers after their event: ${answeredAfterEvent}`);
  assert.ok(answeredBeforeEvent > 20, `answers before their event: ${answeredBeforeEvent}`);
});

Deno.test("pair: one ident claimed on both instances at once; leaves and relays cross", () => {
  // A's answers are slow and its channel fast; B the other way round.
  const pair = new Pair((id) => id === "A" ? () => 10 : () => 3);
  pair.a.h.open("a");
  pair.b.h.open("b");
  pair.a.h.open("x1");
  pair.b.h.open("x2");
  pair.a.h.call("a", "join", "a", "r");
  pair.drive();
  pair.b.h.call("b", "join", "b", "r");
  pair.drive();
  assert.deepEqual(pair.take("a"), [["join", "r:a"], ["stun", "r:a", "r:b", false]]);
  assert.deepEqual(pair.take("b"), [["join", "r:b"], ["stun", "r:b", "r:a", true]]);
  // Both claim r:x at the same moment: B's claim reaches Redis first.
  pair.a.h.call("x1", "join", "x", "r");
  pair.b.h.call("x2", "join", "x", "r");
  pair.drive();
  assert.deepEqual(pair.take("x1"), [["error", "join", "ident-taken", "r:x"]]);
  assert.deepEqual(pair.take("x2"), [
    ["join", "r:x"],
    ["stun", "r:x", "r:a", true],
    ["stun", "r:x", "r:b", true],
  ]);
  assert.deepEqual(pair.take("a"), [["stun", "r:a", "r:x", false]]);
  assert.deepEqual(pair.take("b"), [["stun", "r:b", "r:x", false]]);
  // A signal crosses instances.
  pair.a.h.call("a", "signal", "r:a", "r:x", { sdp: 1 });
  pair.drive();
  assert.deepEqual(pair.take("x2"), [["signal", "r:x", "r:a", { sdp: 1 }]]);
  // x2 leaves: both rooms say bye. While A has not heard, the ident is
  // still taken there; once it has, x1 takes it.
  pair.b.h.call("x2", "leave", "r:x");
  pair.drive(pair.clock.now + 4);
  pair.a.h.call("x1", "join", "x", "r");
  pair.drive();
  assert.deepEqual(pair.take("x2"), [["leave", "r:x"]]);
  assert.deepEqual(pair.take("x1"), [["error", "join", "ident-taken", "r:x"]]);
  assert.deepEqual(pair.take("a"), [["bye", "r:a", "r:x"]]);
  assert.deepEqual(pair.take("b"), [["bye", "r:b", "r:x"]]);
  pair.a.h.call("x1", "join", "x", "r");
  pair.drive();
  assert.deepEqual(pair.take("x1"), [
    ["join", "r:x"],
    ["stun", "r:x", "r:a", true],
    ["stun", "r:x", "r:b", true],
  ]);
  assert.deepEqual(pair.take("a"), [["stun", "r:a", "r:x", false]]);
  assert.deepEqual(pair.take("b"), [["stun", "r:b", "r:x", false]]);
  // Everyone closes: Redis and both brokers end empty.
  for (const [node, names] of [[pair.a, ["a", "x1"]], [pair.b, ["b", "x2"]]] as const) {
    for (const n of names) node.h.close(n);
  }
  pair.drive();
  assert.deepEqual(pair.redis.rooms.get("r"), []);
  assert.equal(pair.a.h.broker.idents + pair.b.h.broker.idents, 0);
  assert.deepEqual([...pair.a.seq.views(), ...pair.b.seq.views()], []);
});

Deno.test("pair: Redis restarts empty — recovery restores membership without repeats", () => {
  const rnd = random(7);
  const pair = new Pair(() => () => 1 + Math.floor(rnd() * 10));
  for (const [node, name] of [[pair.a, "a"], [pair.b, "b"], [pair.b, "c"]] as const) {
    node.h.open(name);
    node.h.call(name, "join", name, "r");
    pair.drive();
  }
  for (const c of ["a", "b", "c"]) pair.take(c);
  // Redis dies: both instances lose the link; c leaves while it is away.
  pair.a.down();
  pair.b.down();
  pair.redis.restart();
  pair.b.h.close("c");
  assert.deepEqual(pair.take("b"), [["bye", "r:b", "r:c"]], "same instance: told at once");
  // A join while down is refused at once.
  pair.a.h.open("late");
  pair.a.h.call("late", "join", "late", "r");
  pair.drive();
  assert.deepEqual(pair.take("late"), [[
    "error",
    "join",
    "unavailable",
    "the cluster is unreachable; retry later",
  ]]);
  // Redis is back: both recover at once, then prune 3 s later.
  pair.a.recover(3000);
  pair.b.recover(3000);
  pair.drive(pair.clock.now + 1000);
  assert.ok(pair.a.up && pair.b.up);
  assert.deepEqual(pair.redis.rooms.get("r")!.toSorted(), ["r:a", "r:b"]);
  assert.deepEqual(pair.take("a"), [], "no stun repeated, and c lingers until the prune");
  assert.deepEqual(pair.take("b"), []);
  pair.drive();
  assert.deepEqual(pair.take("a"), [["bye", "r:a", "r:c"]], "the prune drops c");
  // A new joiner meets everyone once.
  pair.a.h.call("late", "join", "late", "r");
  pair.drive();
  const [join, ...stuns] = pair.take("late");
  assert.deepEqual(join, ["join", "r:late"]);
  assert.deepEqual(stuns.map(String).toSorted(), ["stun,r:late,r:a,true", "stun,r:late,r:b,true"]);
  assert.deepEqual(pair.take("a"), [["stun", "r:a", "r:late", false]]);
  assert.deepEqual(pair.take("b"), [["stun", "r:b", "r:late", false]]);
});
