/**
 * The cluster's ordering logic without Redis: the sequencer driven by hand
 * through the hard orderings, then two instances with real brokers driven
 * step by step on simulated time over an in-memory stand-in for Redis (one
 * sequence counter, one event order, FIFO links), in the manner of
 * quinn-proto's test `Pair`.
 */

import assert from "node:assert/strict";
import type { Directory, Handoff } from "../lib/diva/broker.ts";
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
    memberMoved: (room, ident, instance, conn) =>
      calls.push(["moved", room, ident, instance, conn]),
    claimRefused: (conn, room, code, detail) => calls.push(["refused", conn, room, code, detail]),
    roomMembers: () => sink.members,
  };
  return sink;
}

/** Takes the calls recorded so far. */
function take(sink: { calls: unknown[][] }): unknown[][] {
  return sink.calls.splice(0);
}

const ev = (seq: number, kind: "j" | "l" | "r" | "m", instance: string, g: string): RoomEvent => ({
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

Deno.test("sequencer: a move here completes in its room's turn, like a claim", () => {
  const sink = recorder();
  const s = new Sequencer("me", sink);
  // The view is new: the move's own event and a later join arrive before its answer.
  const view = s.moveStarted("r");
  s.event("r", ev(8, "m", "me", "r:x"));
  s.event("r", ev(9, "j", "C", "r:new"));
  assert.deepEqual(take(sink), [], "nothing before the answer gives the snapshot");
  // The answer: x (held by A until seq 8) and b were there before.
  s.moveAnswered(view, 4, "x", {
    kind: "ok",
    seq: 8,
    members: [{ g: "r:b", instance: "B" }, { g: "r:x", instance: "A" }],
  });
  assert.deepEqual(take(sink), [
    ["joined", "r", "b", "B", null],
    ["joined", "r", "x", "A", null],
    ["moved", "r", "x", "me", 4],
    ["joined", "r", "new", "C", null],
  ], "x is known as A's, then becomes connection 4's, then the joiner meets it here");
  // A second move on the initialized view: its event waits for its answer,
  // and a remote join behind it waits too.
  s.moveStarted("r");
  s.event("r", ev(11, "m", "me", "r:y"));
  s.event("r", ev(12, "j", "A", "r:late"));
  assert.deepEqual(take(sink), []);
  s.moveAnswered(view, 4, "y", { kind: "ok", seq: 11, members: [] });
  assert.deepEqual(take(sink), [
    ["moved", "r", "y", "me", 4],
    ["joined", "r", "late", "A", null],
  ]);
  // A failed move is no output (the adapter refuses the resume) and keeps no view.
  const q = s.moveStarted("q");
  s.moveAnswered(q, 5, "z", { kind: "failed" });
  assert.deepEqual(take(sink), []);
  assert.equal(s.unwatch("q"), true);
});

Deno.test("sequencer: moves elsewhere apply in order with joins and leaves", () => {
  const sink = recorder();
  const s = new Sequencer("me", sink);
  const view = s.claimStarted("r");
  s.claimAnswered(view, 1, "alice", ok(3, [{ g: "r:x", instance: "A" }]));
  s.event("r", ev(3, "j", "me", "r:alice"));
  take(sink);
  // x moves A → B, then leaves; a member of ours moves away; events of a
  // move that arrive before the view's snapshot wait for it (see above).
  s.event("r", ev(4, "m", "B", "r:x"));
  s.event("r", ev(5, "m", "C", "r:alice"));
  s.event("r", ev(6, "l", "B", "r:x"));
  assert.deepEqual(take(sink), [
    ["moved", "r", "x", "B", null],
    ["moved", "r", "alice", "C", null],
    ["left", "r:x"],
  ]);
});

Deno.test("sequencer: link down completes a move that answered; recovery catches up moves missed", () => {
  const sink = recorder();
  const s = new Sequencer("me", sink);
  const view = s.moveStarted("r");
  s.moveAnswered(view, 7, "x", { kind: "ok", seq: 20, members: [{ g: "r:x", instance: "A" }] });
  assert.deepEqual(take(sink), [["joined", "r", "x", "A", null]]);
  // Redis goes away before the move's own event reached us: it completes now.
  s.linkDown();
  assert.deepEqual(take(sink), [["moved", "r", "x", "me", 7]]);
  s.event("r", ev(20, "m", "me", "r:x"));
  assert.deepEqual(take(sink), [], "and not twice if the event comes after all");
  // Meanwhile b moved from B to C, and our d moved to A, and we missed both:
  // the re-read after recovery moves them without a leave or a join.
  sink.members = [local("r:x"), remote("r:b", "B"), local("r:d")];
  s.snapshot(view, 30, [
    { g: "r:x", instance: "me" },
    { g: "r:b", instance: "C" },
    { g: "r:d", instance: "A" },
    { g: "r:e", instance: "A" },
  ], false);
  assert.deepEqual(take(sink), [
    ["moved", "r", "b", "C", null],
    ["moved", "r", "d", "A", null],
    ["joined", "r", "e", "A", null],
  ]);
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

/** A session record: holder, idents; a tombstone says where it moved. */
interface SessionRecord {
  i: string;
  g: string;
  moved?: number;
}

/**
 * The part of Redis the scripts use, in memory: one sequence counter, owners,
 * rooms in join order, session records, channels. Each operation is atomic,
 * as a script is. (Session records are keyed by the token itself here; the
 * real scripts never see a token, only its hash.)
 */
class MiniRedis {
  seq = 0;
  readonly owner = new Map<string, string>();
  readonly rooms = new Map<string, string[]>();
  readonly channels = new Map<string, Set<Node>>();
  readonly sessions = new Map<string, SessionRecord>();
  /** The instances, for messages on their own channel (`sig:to:<id>`). */
  nodes = new Map<string, Node>();
  /** Every room event ever published, in order. */
  readonly log: RoomEvent[] = [];

  #publish(room: string, e: RoomEvent): void {
    this.log.push(e);
    for (const node of this.channels.get(room) ?? []) {
      // A message on its way when the node's link drops is lost.
      const epoch = node.epoch;
      node.subDown.send(() => {
        if (node.epoch !== epoch) return;
        node.seen.add(e.seq);
        if (e.kind === "m" && e.instance !== node.id) node.movedAway.set(e.g, e.instance);
        node.seq.event(room, e);
      });
    }
  }

  /** SESS_PUT. */
  sessPut(
    h: string,
    inst: string,
    idents: string,
    mode: "new" | "set" | "restore",
    prev: string,
  ): { kind: "ok" | "no" } | { kind: "moved"; to: string; conn: number } {
    if (prev !== "") {
      const p = this.sessions.get(prev);
      if (p?.i === inst && p.moved === undefined) this.sessions.delete(prev);
    }
    const r = this.sessions.get(h);
    if (r?.moved !== undefined) {
      return mode === "restore" && r.i !== inst
        ? { kind: "moved", to: r.i, conn: r.moved }
        : { kind: "no" };
    }
    if (mode === "new" && r !== undefined) return { kind: "no" };
    if (mode === "set" && r?.i !== inst) return { kind: "no" };
    if (mode === "restore" && r !== undefined && r.i !== inst) return { kind: "no" };
    this.sessions.set(h, { i: inst, g: idents });
    return { kind: "ok" };
  }

  /** SESS_DROP. */
  sessDrop(h: string, inst: string): void {
    const r = this.sessions.get(h);
    if (r?.i === inst && r.moved === undefined) this.sessions.delete(h);
  }

  /** SESS_PEEK. */
  sessPeek(h: string, inst: string): { holder: string; idents: string[] } | undefined {
    const r = this.sessions.get(h);
    if (r === undefined || r.moved !== undefined || r.i === inst) return undefined;
    return { holder: r.i, idents: r.g === "" ? [] : r.g.split(" ") };
  }

  /** SESS_MOVE: moves every ident, publishes `m` events, then tells the old holder. */
  sessMove(
    h: string,
    fresh: string,
    to: string,
    holder: string,
    idents: string,
    conn: number,
  ): { seq: number; members: Holder[] }[] | "gone" | "changed" {
    const r = this.sessions.get(h);
    if (r === undefined || r.moved !== undefined || r.i !== holder || r.i === to) return "gone";
    if (r.g !== idents) return "changed";
    const gs = idents === "" ? [] : idents.split(" ");
    if (gs.some((g) => this.owner.get(g) !== holder)) return "changed";
    const out: { seq: number; members: Holder[] }[] = [];
    for (const g of gs) {
      const room = g.slice(0, g.indexOf(":"));
      const members = this.#members(room);
      const seq = ++this.seq;
      out.push({ seq, members });
      this.owner.set(g, to);
      this.#publish(room, { seq, kind: "m", instance: to, g });
    }
    this.sessions.set(h, { i: to, g: "", moved: conn });
    this.sessions.set(fresh, { i: to, g: idents });
    const old = this.nodes.get(holder)!;
    const epoch = old.epoch;
    old.subDown.send(() => {
      if (old.epoch === epoch) old.notice(h, to, conn);
    });
    return out;
  }

  /** SESS_ROTATE. */
  sessRotate(h: string, fresh: string, inst: string, idents: string): boolean {
    const r = this.sessions.get(h);
    if (r !== undefined && (r.i !== inst || r.moved !== undefined)) return false;
    this.sessions.delete(h);
    this.sessions.set(fresh, { i: inst, g: idents });
    return true;
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

  /**
   * A restart: subscriptions are gone; without persistence everything is,
   * the counter too.
   */
  restart(persistent = false): void {
    this.channels.clear();
    if (persistent) return;
    this.seq = 0;
    this.owner.clear();
    this.rooms.clear();
    this.sessions.clear();
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
  /** The link is open (it is, while recovering, before `up`). */
  linked = true;
  /** Relays forwarded here by an instance an ident had moved from. */
  forwarded = 0;
  /** Move scripts answered ok. */
  moved = 0;
  /** Connections whose move answered. */
  readonly movedFor = new Set<number>();
  /** Handoffs that arrived before their move's answer. */
  earlyHandoffs = 0;
  /** Sequence numbers of the room events received. */
  readonly seen = new Set<number>();
  /** Claims answered ok. */
  answered = 0;
  /** Claims answered ok after their own join event had arrived. */
  answeredAfterEvent = 0;
  /** Bumped when the link drops: what was on its way to this node is lost. */
  epoch = 0;
  /** Tokens of the sessions held here (the stand-in keys records by token). */
  readonly tokens = new Set<string>();
  /** Holders found by a resume's look-up, by connection id. */
  readonly found = new Map<number, string>();
  /** Resumes waiting for the old holder's handoff, by connection id. */
  readonly handoffs = new Set<number>();
  /** Idents that moved from here, and where to (relays for them follow). */
  readonly movedAway = new Map<string, string>();

  constructor(
    readonly id: string,
    readonly pair: Pair,
    latency: () => number,
    subLatency: () => number = latency,
  ) {
    const clock = pair.clock;
    this.cmdUp = new Wire(clock, latency);
    this.cmdDown = new Wire(clock, latency);
    this.subUp = new Wire(clock, latency);
    this.subDown = new Wire(clock, subLatency);
    // Each instance its own randomness, as real ones (tokens differ).
    this.h = harness({ directory: this, seed: 0x9e3779b9 + id.charCodeAt(0) });
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
    this.cmdUp.send(() => to.subDown.send(() => to.receive(g, frame, false)));
    return true;
  }

  /** A relay arrived: delivered here, or forwarded once to where `g` moved. */
  receive(g: string, frame: string, forwarded: boolean): void {
    if (forwarded) this.forwarded++;
    if (this.h.broker.deliver(g, frame) || forwarded || !this.up) return;
    const next = this.movedAway.get(g);
    if (next === undefined || next === this.id) return;
    const to = this.pair.nodes.get(next)!;
    this.cmdUp.send(() => to.subDown.send(() => to.receive(g, frame, true)));
  }

  sessionHeld(token: string, idents: readonly string[], _grace: number, replaces?: string): void {
    const known = this.tokens.has(token);
    this.tokens.add(token);
    if (replaces !== undefined) this.tokens.delete(replaces);
    if (!this.up) return;
    const redis = this.pair.redis;
    const mode = known ? "set" : "new";
    this.#command(() => redis.sessPut(token, this.id, idents.join(" "), mode, replaces ?? ""));
  }

  sessionEnded(token: string): void {
    this.tokens.delete(token);
    if (this.up) this.#command(() => this.pair.redis.sessDrop(token, this.id));
  }

  lookup(conn: number, token: string): void {
    const broker = this.h.broker;
    if (!this.up) {
      this.pair.clock.at(this.pair.clock.now, () => broker.resumeRefused(conn, "unavailable", ""));
      return;
    }
    this.#command(() => this.pair.redis.sessPeek(token, this.id), (found) => {
      if (found === undefined) return broker.resumeRefused(conn, "forbidden", "no such session");
      this.found.set(conn, found.holder);
      broker.sessionFound(conn, found.idents);
    });
  }

  take(conn: number, token: string, fresh: string, idents: readonly string[]): void {
    const broker = this.h.broker;
    const holder = this.found.get(conn);
    this.found.delete(conn);
    if (!this.up || holder === undefined) {
      this.pair.clock.at(this.pair.clock.now, () => broker.resumeRefused(conn, "unavailable", ""));
      return;
    }
    const moves = idents.map((g) => {
      const room = g.slice(0, g.indexOf(":"));
      const sub = this.#subscribe(room);
      return { room, ident: g.slice(room.length + 1), sub, view: this.seq.moveStarted(room) };
    });
    const redis = this.pair.redis;
    // The handoff may come before the move's answer does.
    this.handoffs.add(conn);
    const send = () =>
      this.#command(
        () => redis.sessMove(token, fresh, this.id, holder, idents.join(" "), conn),
        (answer) => {
          if (typeof answer === "string") {
            this.handoffs.delete(conn);
            for (const m of moves) this.seq.moveAnswered(m.view, conn, m.ident, { kind: "failed" });
            broker.resumeRefused(conn, "forbidden", answer);
            return;
          }
          this.tokens.add(fresh);
          this.moved++;
          this.movedFor.add(conn);
          this.pair.clock.at(this.pair.clock.now + 5000, () => {
            if (this.handoffs.delete(conn)) broker.sessionHandoff(conn, null);
          });
          moves.forEach((m, i) =>
            this.seq.moveAnswered(m.view, conn, m.ident, { kind: "ok", ...answer[i] })
          );
        },
      );
    // The move is sent once every room's channel is subscribed.
    let left = moves.length;
    const one = () => {
      if (--left === 0) send();
    };
    if (left === 0) send();
    for (const m of moves) {
      if (m.sub.acked) one();
      else m.sub.waiting.push(one);
    }
  }

  rotate(conn: number, token: string, fresh: string, idents: readonly string[]): void {
    const broker = this.h.broker;
    const done = () => {
      this.tokens.delete(token);
      this.tokens.add(fresh);
      broker.sessionRotated(conn);
    };
    if (!this.up) {
      this.pair.clock.at(this.pair.clock.now, done);
      return;
    }
    this.#command(
      () => this.pair.redis.sessRotate(token, fresh, this.id, idents.join(" ")),
      (ok) => {
        if (ok) done();
        else broker.resumeRefused(conn, "forbidden", "no such session");
      },
    );
  }

  handoff(instance: string, conn: number, handoff: Handoff | null): void {
    if (!this.linked) return;
    const to = this.pair.nodes.get(instance)!;
    this.cmdUp.send(() =>
      to.subDown.send(() => {
        if (!to.handoffs.delete(conn)) return;
        if (!to.movedFor.has(conn)) to.earlyHandoffs++;
        to.h.broker.sessionHandoff(conn, handoff);
      })
    );
  }

  /** The move script's message on this node's channel: a session held here moved. */
  notice(token: string, to: string, conn: number): void {
    if (!this.tokens.delete(token)) return this.handoff(to, conn, null);
    this.h.broker.sessionMoved(token, to, conn);
  }

  unwatch(room: string): void {
    if (!this.seq.unwatch(room)) return;
    this.subs.delete(room);
    this.subUp.send(() => this.pair.redis.unsubscribe(room, this));
  }

  /** Redis closed the connections. */
  down(): void {
    this.up = false;
    this.linked = false;
    this.epoch++;
    this.seq.linkDown();
  }

  /**
   * Redis is back: subscribe again, flush the releases owed, re-register the
   * local members, re-read every view, then be ready; the prune follows.
   */
  recover(pruneAfterMs: number): void {
    const redis = this.pair.redis;
    this.linked = true;
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
    const sessions = this.h.broker.localSessions();
    this.#command(() => {
      for (const [g, room] of owed) redis.release(g, room, this.id);
      const moved: [string, string, number][] = [];
      for (const s of sessions) {
        const r = redis.sessPut(s.token, this.id, s.idents.join(" "), "restore", "");
        if (r.kind === "moved") moved.push([s.token, r.to, r.conn]);
      }
      for (const m of mine) redis.restore(m.g, m.room, this.id);
      return moved;
    }, (moved) => {
      for (const [token, to, conn] of moved) {
        this.tokens.delete(token);
        this.h.broker.sessionMoved(token, to, conn);
      }
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

  constructor(
    latency: (node: string) => () => number,
    ids = ["A", "B"],
    subLatency?: (node: string) => () => number,
  ) {
    for (const id of ids) this.nodes.set(id, new Node(id, this, latency(id), subLatency?.(id)));
    this.redis.nodes = this.nodes;
  }

  get a(): Node {
    return this.nodes.get("A")!;
  }

  get b(): Node {
    return this.nodes.get("B")!;
  }

  get c(): Node {
    return this.nodes.get("C")!;
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

// ---------------------------------------------------------------------------
// Sessions resumed on another instance: the move, on simulated time.

type Frame = [string, ...unknown[]];

/**
 * Three instances. On A: pa in room r, and x in rooms r and q with a
 * session; on B: pb in r; on C: pc in r and qc in q. Returns x's token.
 */
function sessionSetup(pair: Pair): string {
  const joins: [Node, string, string][] = [
    [pair.a, "pa", "r"],
    [pair.b, "pb", "r"],
    [pair.c, "pc", "r"],
    [pair.c, "qc", "q"],
  ];
  for (const [node, name, room] of joins) {
    node.h.open(name);
    node.h.call(name, "join", name, room);
    pair.drive();
  }
  pair.a.h.open("x");
  pair.a.h.call("x", "join", "x", "r");
  pair.a.h.call("x", "join", "x", "q");
  pair.a.h.call("x", "session");
  pair.drive();
  const got = pair.take("x") as Frame[];
  assert.deepEqual(got.slice(0, -1), [
    ["join", "r:x"],
    ["stun", "r:x", "r:pa", true],
    ["stun", "r:x", "r:pb", true],
    ["stun", "r:x", "r:pc", true],
    ["join", "q:x"],
    ["stun", "q:x", "q:qc", true],
  ]);
  const [kind, token] = got.at(-1)!;
  assert.equal(kind, "session");
  for (const p of ["pa", "pb", "pc", "qc"]) pair.take(p);
  return String(token);
}

/** The frames after a resume reply that a client which received `had` frames since its session reply has not seen. */
function unseen(frames: Frame[], had: number): { info: Record<string, unknown>; rest: Frame[] } {
  assert.equal(frames[0]?.[0], "resume", `a resume reply first: ${JSON.stringify(frames)}`);
  const info = frames[0][1] as Record<string, unknown>;
  const from = typeof info.from === "number" ? info.from : had;
  return { info, rest: frames.slice(1 + Math.max(0, had - from)) };
}

const PEERS = ["pa", "pb", "pc", "qc"];

Deno.test("pair: a session resumed on another instance moves there with no bye or stun", () => {
  const pair = new Pair(() => () => 3, ["A", "B", "C"]);
  const token = setupAndCut(pair);
  // During the gap, peers on B and C signal x: A keeps the frames.
  pair.b.h.call("pb", "signal", "r:pb", "r:x", { gap: 1 });
  pair.c.h.call("qc", "signal", "q:qc", "q:x", { gap: 2 });
  pair.drive();
  // The reconnect lands on B.
  pair.b.h.open("x2");
  pair.b.h.call("x2", "resume", token);
  pair.drive();
  const { info, rest } = unseen(pair.take("x2") as Frame[], 0);
  assert.deepEqual((info.idents as string[]).toSorted(), ["q:x", "r:x"]);
  assert.notEqual(info.token, token);
  assert.deepEqual(rest, [
    ["signal", "r:x", "r:pb", { gap: 1 }],
    ["signal", "q:x", "q:qc", { gap: 2 }],
  ]);
  for (const p of PEERS) assert.deepEqual(pair.take(p), [], `${p} heard nothing`);
  assert.equal(pair.redis.owner.get("r:x"), "B");
  assert.equal(pair.redis.owner.get("q:x"), "B");
  assert.equal(pair.a.h.broker.stats.sessions.moved, 1);
  assert.equal(pair.b.h.broker.stats.sessions.resumed, 1);
  // Signals both ways, to and from every instance.
  const peers = [[pair.a, "pa", "r"], [pair.b, "pb", "r"], [pair.c, "qc", "q"]] as const;
  for (const [node, p, room] of peers) {
    pair.b.h.call("x2", "signal", `${room}:x`, `${room}:${p}`, "to " + p);
    node.h.call(p, "signal", `${room}:${p}`, `${room}:x`, "from " + p);
  }
  pair.drive();
  assert.deepEqual(pair.take("pa"), [["signal", "r:pa", "r:x", "to pa"]]);
  assert.deepEqual(pair.take("pb"), [["signal", "r:pb", "r:x", "to pb"]]);
  assert.deepEqual(pair.take("qc"), [["signal", "q:qc", "q:x", "to qc"]]);
  assert.deepEqual((pair.take("x2") as Frame[]).toSorted(), [
    ["signal", "q:x", "q:qc", "from qc"],
    ["signal", "r:x", "r:pa", "from pa"],
    ["signal", "r:x", "r:pb", "from pb"],
  ]);
  // The used token is refused everywhere, the old holder included.
  for (const node of [pair.a, pair.c]) {
    node.h.open("replay" + node.id);
    node.h.call("replay" + node.id, "resume", token);
  }
  pair.drive();
  for (const id of ["A", "C"]) {
    const [[kind, call, code]] = pair.take("replay" + id) as Frame[];
    assert.deepEqual([kind, call, code], ["error", "resume", "forbidden"]);
  }
  // The fresh token moves the session on again, B → C, and back to the
  // holder's own instance works as on one server.
  pair.b.h.close("x2");
  pair.c.h.open("x3");
  pair.c.h.call("x3", "resume", info.token);
  pair.drive();
  // x2 received 5 frames after its resume reply: the resume says which are new.
  const again = unseen(pair.take("x3") as Frame[], 5);
  assert.deepEqual(again.rest, []);
  for (const p of PEERS) assert.deepEqual(pair.take(p), []);
  pair.c.h.close("x3");
  pair.c.h.open("x4");
  pair.c.h.call("x4", "resume", again.info.token);
  pair.drive();
  assert.equal((pair.take("x4") as Frame[])[0][0], "resume");
  assert.equal(pair.redis.owner.get("r:x"), "C");
  // Leaving is a leave as ever: bye everywhere, once.
  pair.c.h.call("x4", "leave", "r:x");
  pair.drive();
  assert.deepEqual(pair.take("pa"), [["bye", "r:pa", "r:x"]]);
  assert.deepEqual(pair.take("pb"), [["bye", "r:pb", "r:x"]]);
  assert.deepEqual(pair.take("pc"), [["bye", "r:pc", "r:x"]]);
  assert.equal(pair.a.h.broker.connections, 2, "pa and the replay on A");
});

/** {@link sessionSetup}, then x's socket on A closes (its grace begins). */
function setupAndCut(pair: Pair): string {
  const token = sessionSetup(pair);
  pair.a.h.close("x");
  pair.drive();
  for (const p of PEERS) assert.deepEqual(pair.take(p), [], "a drop is no bye");
  return token;
}

/** Every instance's view of room `room`: each member's holder ("" for its own local members, named). */
function holders(pair: Pair, room: string): Record<string, Record<string, string>> {
  const out: Record<string, Record<string, string>> = {};
  for (const [id, node] of pair.nodes) {
    const view: Record<string, string> = {};
    for (const m of node.h.broker.roomMembers(room)) view[m.g] = m.local ? id : m.instance;
    out[id] = view;
  }
  return out;
}

Deno.test("pair: a move racing a join, signals and the resume itself, on random schedules", () => {
  let joinFirst = 0;
  let moveFirst = 0;
  let forwarded = 0;
  for (let seed = 1; seed <= 80; seed++) {
    const rnd = random(seed);
    const pair = new Pair(() => () => 1 + Math.floor(rnd() * 15), ["A", "B", "C"]);
    const token = setupAndCut(pair);
    const t0 = pair.clock.now;
    const at = (run: () => void, ms = 40) => pair.clock.at(t0 + Math.floor(rnd() * ms), run);
    // A newcomer joins r somewhere, peers on A, B and C signal x, and the
    // client resumes on B or C, all at random moments (a resume takes a few
    // round trips: the join's window is wider).
    const joiner = pair.nodes.get("ABC"[Math.floor(rnd() * 3)])!;
    joiner.h.open("n");
    at(() => joiner.h.call("n", "join", "n", "r"), 120);
    at(() => pair.a.h.call("pa", "signal", "r:pa", "r:x", "from pa"));
    at(() => pair.b.h.call("pb", "signal", "r:pb", "r:x", "from pb"));
    at(() => pair.c.h.call("qc", "signal", "q:qc", "q:x", "from qc"));
    const to = pair.nodes.get(rnd() < 0.5 ? "B" : "C")!;
    to.h.open("x2");
    at(() => to.h.call("x2", "resume", token));
    pair.drive();
    const where = `seed ${seed}, n on ${joiner.id}, resumed on ${to.id}`;
    // The resumed client: its reply, then each frame once; what came
    // before the move came through the old holder's handoff.
    const { info, rest } = unseen(pair.take("x2") as Frame[], 0);
    assert.deepEqual((info.idents as string[]).toSorted(), ["q:x", "r:x"], where);
    assert.deepEqual(
      rest.map((f) => JSON.stringify(f)).toSorted(),
      [
        ["signal", "q:x", "q:qc", "from qc"],
        ["signal", "r:x", "r:pa", "from pa"],
        ["signal", "r:x", "r:pb", "from pb"],
        ["stun", "r:x", "r:n", false],
      ].map((f) => JSON.stringify(f)).toSorted(),
      where,
    );
    // The newcomer meets everyone once, x included, wherever x was then.
    const [join, ...stuns] = pair.take("n") as Frame[];
    assert.deepEqual(join, ["join", "r:n"], where);
    assert.deepEqual(
      stuns.map((f) => f[2]).toSorted(),
      ["r:pa", "r:pb", "r:pc", "r:x"],
      where,
    );
    assert.ok(stuns.every((f) => f[0] === "stun" && f[3] === true), where);
    // The peers: one stun for the newcomer, nothing else (no bye, no stun for x).
    for (const p of ["pa", "pb", "pc"]) {
      assert.deepEqual(pair.take(p), [["stun", `r:${p}`, "r:n", false]], `${where}: ${p}`);
    }
    assert.deepEqual(pair.take("qc"), [], where);
    // Redis and every instance agree: x is held on the instance it resumed on.
    assert.equal(pair.redis.owner.get("r:x"), to.id, where);
    for (const [id, view] of Object.entries(holders(pair, "r"))) {
      assert.equal(view["r:x"], to.id, `${where}: ${id}'s view`);
    }
    assert.equal(pair.a.h.broker.sessions, 0, where);
    const log = pair.redis.log;
    const j = log.find((e) => e.g === "r:n")!.seq;
    const m = log.find((e) => e.kind === "m" && e.g === "r:x")!.seq;
    if (j < m) joinFirst++;
    else moveFirst++;
    for (const node of pair.nodes.values()) forwarded += node.forwarded;
  }
  // The schedules covered both orders of the join and the move, and relays
  // that reached the old holder after the move (forwarded to the new one).
  assert.ok(joinFirst > 10 && moveFirst > 10, `join first ${joinFirst}, move first ${moveFirst}`);
  assert.ok(forwarded > 0, `forwarded ${forwarded}`);
});

Deno.test("pair: Redis restarts, keeping its data, while a move's events are on their way", () => {
  // Answers are fast and channel messages slow: the move's answer reaches B
  // while its events and the old holder's notice are still on their way.
  const pair = new Pair(() => () => 2, ["A", "B", "C"], () => () => 30);
  const token = setupAndCut(pair);
  pair.b.h.call("pb", "signal", "r:pb", "r:x", "in the gap");
  pair.drive();
  pair.b.h.open("x2");
  pair.b.h.call("x2", "resume", token);
  // Bounded: step() is false when no task is left, and a periodic task could
  // keep it true forever.
  for (let i = 0; pair.b.moved === 0; i++) {
    assert.ok(i < 100_000 && pair.clock.step(), "the move never happened");
  }
  // Every link drops: the events and the notice are lost.
  for (const node of pair.nodes.values()) node.down();
  pair.redis.restart(true);
  assert.equal(pair.redis.owner.get("r:x"), "B", "the move happened");
  // Redis is back: A learns of the move from the tombstone and the owners,
  // C from its re-read of the rooms; B completes once A hands over.
  for (const node of pair.nodes.values()) node.recover(3000);
  pair.drive();
  const { info, rest } = unseen(pair.take("x2") as Frame[], 0);
  assert.deepEqual((info.idents as string[]).toSorted(), ["q:x", "r:x"]);
  assert.deepEqual(rest, [["signal", "r:x", "r:pb", "in the gap"]], "the handoff came");
  for (const p of PEERS) assert.deepEqual(pair.take(p), [], `${p} heard nothing`);
  for (const [id, view] of Object.entries(holders(pair, "r"))) {
    assert.equal(view["r:x"], "B", `${id}'s view`);
  }
  // And it works: signals both ways across instances.
  pair.b.h.call("x2", "signal", "r:x", "r:pa", 1);
  pair.a.h.call("pa", "signal", "r:pa", "r:x", 2);
  pair.c.h.call("qc", "signal", "q:qc", "q:x", 3);
  pair.drive();
  assert.deepEqual(pair.take("pa"), [["signal", "r:pa", "r:x", 1]]);
  assert.deepEqual((pair.take("x2") as Frame[]).toSorted(), [
    ["signal", "q:x", "q:qc", 3],
    ["signal", "r:x", "r:pa", 2],
  ]);
});

Deno.test("pair: a resume refused on the way changes nothing; a closed resumer gives the idents back", () => {
  const pair = new Pair(() => () => 3, ["A", "B", "C"]);
  const token = setupAndCut(pair);
  // A guessed token, and a connection that is not fresh, are refused.
  pair.b.h.open("guess");
  pair.b.h.call("guess", "resume", "A".repeat(32));
  pair.c.h.open("busy");
  pair.c.h.call("busy", "join", "busy", "q");
  pair.c.h.call("busy", "resume", token);
  pair.drive();
  assert.deepEqual((pair.take("guess") as Frame[])[0].slice(0, 3), [
    "error",
    "resume",
    "forbidden",
  ]);
  assert.deepEqual((pair.take("busy") as Frame[]).at(-1)!.slice(0, 3), [
    "error",
    "resume",
    "forbidden",
  ]);
  pair.take("qc");
  // Two resumes of one token race from B and C: one wins.
  pair.b.h.open("x2");
  pair.c.h.open("x3");
  pair.b.h.call("x2", "resume", token);
  pair.c.h.call("x3", "resume", token);
  pair.drive();
  const won = [pair.take("x2"), pair.take("x3")] as Frame[][];
  assert.deepEqual(won.map((f) => f[0][0]).toSorted(), ["error", "resume"]);
  for (const p of PEERS) assert.deepEqual(pair.take(p), [], `${p} heard nothing`);
  // The winner's socket closes before it resumes again elsewhere; a resumer
  // that closes mid-way gives the idents back: peers say bye once, everywhere.
  const [winner, node] = won[0][0][0] === "resume" ? ["x2", pair.b] : ["x3", pair.c];
  const fresh = (won[0][0][0] === "resume" ? won[0] : won[1])[0][1] as { token: string };
  node.h.close(winner);
  pair.drive();
  pair.a.h.open("x4");
  pair.a.h.call("x4", "resume", fresh.token);
  // Bounded: step() is false when no task is left, and a periodic task could
  // keep it true forever.
  for (let i = 0; pair.a.moved === 0; i++) {
    assert.ok(i < 100_000 && pair.clock.step(), "the move never happened");
  }
  pair.a.h.close("x4");
  pair.drive();
  assert.deepEqual(pair.take("pa"), [["bye", "r:pa", "r:x"]]);
  assert.deepEqual(pair.take("pb"), [["bye", "r:pb", "r:x"]]);
  assert.deepEqual(pair.take("pc"), [["bye", "r:pc", "r:x"]]);
  assert.deepEqual(pair.take("qc"), [["bye", "q:qc", "q:x"]]);
  assert.equal(pair.redis.owner.has("r:x"), false);
  for (const n of pair.nodes.values()) assert.equal(n.h.broker.sessions, 0);
});

Deno.test("pair: the old holder's handoff may arrive before the move's own answer", () => {
  // B's commands are slow, channel messages fast: A hears of the move and
  // hands over before B reads the move script's reply.
  const pair = new Pair((id) => () => id === "B" ? 40 : 2, ["A", "B", "C"], () => () => 2);
  const token = setupAndCut(pair);
  pair.c.h.call("qc", "signal", "q:qc", "q:x", "kept");
  pair.drive();
  pair.b.h.open("x2");
  pair.b.h.call("x2", "resume", token);
  pair.drive();
  assert.equal(pair.b.earlyHandoffs, 1);
  const { rest } = unseen(pair.take("x2") as Frame[], 0);
  assert.deepEqual(rest, [["signal", "q:x", "q:qc", "kept"]]);
  for (const p of PEERS) assert.deepEqual(pair.take(p), [], `${p} heard nothing`);
});
