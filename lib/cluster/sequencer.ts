/**
 * The cluster's ordering logic as a deterministic state machine: which claim
 * replies, room events and snapshots become which broker calls, and when.
 *
 * Redis decides the one order of every room's joins and leaves (a global
 * sequence number, `seq`); each instance must apply them to its broker in
 * exactly that order, whatever order the replies and channel messages reach
 * it in. That is all this module does. It holds no I/O, no timers, no clock
 * and no randomness: the Redis adapter (`lib/cluster/redis.ts`) talks to
 * Redis and feeds it what it heard, and tests feed it by hand
 * (`tests/cluster_sequencer_test.ts`).
 *
 * For each room this instance follows (a _view_: the room has local members
 * or claims on their way), the sequencer keeps the highest `seq` applied,
 * the events that arrived before they could be applied, the claims whose
 * script answered but whose join has not had its turn yet, and how many
 * claims have not answered.
 *
 * ## Inputs
 *
 * - {@link Sequencer.claimStarted}`(room)`: a claim for a local connection
 *   is about to be sent.
 * - {@link Sequencer.claimAnswered}`(view, conn, ident, answer)`: that claim
 *   answered: ok (with its `seq` and the room's members before it), taken,
 *   full, or failed.
 * - {@link Sequencer.claimUnavailable}`(conn, room)`: a claim could not even
 *   be sent (the link is down).
 * - {@link Sequencer.moveStarted}`(room)` and
 *   {@link Sequencer.moveAnswered}`(view, conn, ident, answer)`: the same for a
 *   global ident a resumed session moves here from another instance (the
 *   move script answers with its `m` event's `seq` and the room's members
 *   before it). A failed move has no output: the adapter refuses the resume.
 * - {@link Sequencer.event}`(room, ev)`: an event `seq|j/l/r/m|instance|g`
 *   arrived on the room's channel (`m`: the member moved to `instance`).
 * - {@link Sequencer.snapshot}`(view, seq, members, prune)`: the room's
 *   members, read at `seq` after its channel was subscribed.
 * - {@link Sequencer.linkDown}`()`: the link to Redis closed.
 * - {@link Sequencer.unwatch}`(room)`: the broker has nothing local in the
 *   room any more.
 *
 * Link up has no input of its own: it changes nothing here. Recovery is a
 * {@link Sequencer.snapshot} of every view that is `initialized` (iterate
 * {@link Sequencer.views}) with `prune` false, and, once the other instances
 * had time to re-register, again with `prune` true.
 *
 * ## Outputs
 *
 * Every output is a call on the {@link Sink} given to the constructor, made
 * synchronously from inside the input that caused it, in the order the
 * broker must see them:
 *
 * - `memberJoined(room, ident, instance, conn)`: a join took its turn. `conn`
 *   is the id of the local connection whose claim it was (its join completes
 *   now), or null for a member held by `instance`.
 * - `memberLeft(g)`: a member held elsewhere left.
 * - `memberMoved(room, ident, instance, conn)`: a member changed holder
 *   without leaving (a session resumed on another instance). `conn` is the
 *   id of the local connection taking it over, or null when it moved to
 *   `instance` (which may take it away from this instance).
 * - `claimRefused(conn, room, code, detail)`: a claim failed; the join is
 *   answered with `code`.
 *
 * and one query, `roomMembers(room)`, which a snapshot compares with.
 *
 * Two inputs also return what the adapter must do on the wire:
 * {@link Sequencer.claimStarted} returns the claim's {@link View} (subscribe
 * to the room's channel first if the adapter had none), and
 * {@link Sequencer.unwatch} returns true when the view is gone (unsubscribe).
 *
 * ## Call order
 *
 * The adapter's run loop, per room:
 *
 * 1. `claimStarted(room)`; subscribe to the room's channel if this is a new
 *    view, and send the claim only once the subscription is acknowledged, so
 *    that every event after the claim's snapshot reaches {@link Sequencer.event}.
 * 2. `claimAnswered(view, …)`, exactly once per `claimStarted`. The first ok
 *    answer of a view is its snapshot: events at or below `seq - 1` were
 *    already in the member list it carries.
 * 3. `event(room, ev)` for each channel message, in the order the channel
 *    delivered them, before, between or after the claim answers: events that
 *    arrive before the view has a snapshot wait for it; an event for this
 *    instance's own join or move waits for its answer (while a claim or move
 *    is outstanding) so it completes in its turn.
 * 4. `snapshot(view, seq, members, prune)` whenever the adapter re-reads a
 *    room. `seq` must be read in the same step as `members` (one script).
 *    Members Redis has with another holder than the broker's view (moves
 *    this instance missed while its link was down) move to that holder.
 *
 * Moves go through the same steps as claims: `moveStarted(room)` (subscribe
 * first), the move script, `moveAnswered` for each global ident in the
 * order the script moved them.
 * 5. `unwatch(room)` when the broker says so; it keeps the view while claims
 *    are outstanding or waiting for their turn.
 *
 * `linkDown()` may come at any time: claims that answered but whose join
 * events will not come any more complete at once.
 *
 * ## Re-entrancy
 *
 * Sink calls run broker code, which may call the adapter's `Directory`
 * methods, and so come back here before the input that made the sink call
 * returns. Only two inputs come that way: {@link Sequencer.claimStarted} (a
 * join queued behind the one that completed runs now) and
 * {@link Sequencer.unwatch} (a room emptied by a leave or a closed
 * connection). Both are safe at any point: the input being handled works on
 * its own copy of the events and keeps the view it started with. Every other
 * input comes from the adapter's I/O callbacks only, never re-entrantly; in
 * particular a claim is never answered (nor refused) from inside the
 * `Directory.claim` call that asked for it: the broker expects the answer
 * later.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * const calls: unknown[][] = [];
 * const seq = new Sequencer("me", {
 *   memberJoined: (...a) => calls.push(["joined", ...a]),
 *   memberLeft: (g) => calls.push(["left", g]),
 *   memberMoved: (...a) => calls.push(["moved", ...a]),
 *   claimRefused: (...a) => calls.push(["refused", ...a]),
 *   roomMembers: () => [],
 * });
 * const view = seq.claimStarted("lobby");
 * seq.event("lobby", { seq: 7, kind: "j", instance: "me", g: "lobby:alice" });
 * assert.deepEqual(calls, [], "the join waits for its claim's answer");
 * seq.claimAnswered(view, 1, "alice", { kind: "ok", seq: 7, members: [] });
 * assert.deepEqual(calls, [["joined", "lobby", "alice", "me", 1]]);
 * ```
 *
 * @module
 */

/** One room event from a room's channel: `seq|kind|instance|g`. */
export interface RoomEvent {
  /** Its place in the cluster's one order. */
  seq: number;
  /**
   * `j` a join, `l` a leave, `r` a member re-registered after Redis lost it,
   * `m` a member moved to another instance (a session resumed there).
   */
  kind: "j" | "l" | "r" | "m";
  /** The instance holding the member (after the event). */
  instance: string;
  /** The global ident, `room:ident`. */
  g: string;
}

/** A member of a room as Redis has it. */
export interface Holder {
  /** The global ident, `room:ident`. */
  g: string;
  /** The instance holding it, or "" when Redis has no owner for it. */
  instance: string;
}

/** How a claim answered. */
export type ClaimAnswer =
  /** Claimed: `seq` is its join event's; `members` the room's members before it, in join order. */
  | { kind: "ok"; seq: number; members: readonly Holder[] }
  /** Someone holds the global ident. */
  | { kind: "taken" }
  /** The room is full, cluster-wide. */
  | { kind: "full" }
  /** The claim did not answer (Redis unreachable or too slow). */
  | { kind: "failed" };

/** How a move answered. */
export type MoveAnswer =
  /** Moved: `seq` is its move event's; `members` the room's members before it, in join order. */
  | { kind: "ok"; seq: number; members: readonly Holder[] }
  /** The move did not happen (the session is gone, or Redis did not answer). */
  | { kind: "failed" };

/** The error codes a refused claim answers the join with. */
export type RefusalCode = "ident-taken" | "limit" | "unavailable";

/** A member of a room as the broker sees it. */
export interface RoomMember {
  /** The global ident. */
  g: string;
  /** The holding instance ("" for a local member). */
  instance: string;
  /** True when a local connection holds it. */
  local: boolean;
}

/**
 * What the sequencer drives: the broker's cluster entry points (see
 * `Broker.memberJoined` and the rest in `lib/diva/broker.ts`, which implements
 * this interface). Connections are named by their ids.
 */
export interface Sink {
  /** A join took its turn: `conn` is the local claimant's id, or null for one on `instance`. */
  memberJoined(room: string, ident: string, instance: string, conn: number | null): void;
  /** A member held on another instance left. */
  memberLeft(g: string): void;
  /**
   * A member changed holder without leaving: `conn` is the id of the local
   * connection taking it over, or null when it is held by `instance` now.
   */
  memberMoved(room: string, ident: string, instance: string, conn: number | null): void;
  /** The claim of connection `conn` was refused: its join fails with `code`. */
  claimRefused(conn: number, room: string, code: RefusalCode, detail: string): void;
  /** The broker's members of `room`, in join order. */
  roomMembers(room: string): readonly RoomMember[];
}

/**
 * This instance's view of a room, as a handle: the adapter holds it across
 * its awaits and hands it back ({@link Sequencer.claimAnswered},
 * {@link Sequencer.snapshot}), so an answer always reaches the view that
 * asked, even if the room was dropped and followed again meanwhile.
 */
export interface View {
  /** The room. */
  readonly room: string;
  /** True once a snapshot said where the room's event stream starts. */
  readonly initialized: boolean;
}

/** A view's state. */
interface Watch extends View {
  initialized: boolean;
  /** Highest sequence number applied. */
  applied: number;
  /** Events that arrived and were not applied yet (before the snapshot, or behind our own join). */
  early: RoomEvent[];
  /** Local claims and moves that succeeded, by the sequence number of their event. */
  pending: Map<number, { conn: number; ident: string; move: boolean }>;
  /** Claims and moves that have not answered yet. */
  inFlight: number;
}

const UNAVAILABLE = "the cluster is unreachable; retry later";

/** The ident part of a global ident. */
function identOf(g: string): string {
  return g.slice(g.indexOf(":") + 1);
}

/**
 * Applies one instance's share of the cluster's room events to its broker,
 * in the cluster's order. See the module documentation for the inputs, the
 * outputs and the order of calls.
 */
export class Sequencer {
  /** This instance's id in the cluster. */
  readonly instance: string;
  readonly #sink: Sink;
  readonly #watches = new Map<string, Watch>();

  /** A sequencer for `instance` with no views; outputs go to `sink`. */
  constructor(instance: string, sink: Sink) {
    this.instance = instance;
    this.#sink = sink;
  }

  /**
   * The views, live (a view dropped while iterating is skipped, like a `Map`
   * iterator), in the order they were made.
   */
  views(): IterableIterator<View> {
    return this.#watches.values();
  }

  /**
   * A claim is about to be sent for `room`: returns the room's view (made
   * now if there was none: the adapter subscribes to the room's channel),
   * to hand back to {@link claimAnswered}.
   */
  claimStarted(room: string): View {
    let w = this.#watches.get(room);
    if (w === undefined) {
      w = { room, initialized: false, applied: 0, early: [], pending: new Map(), inFlight: 0 };
      this.#watches.set(room, w);
    }
    w.inFlight++;
    return w;
  }

  /**
   * The claim of `room:ident` for connection `conn` answered. Ok: the join
   * completes once its event's turn comes (perhaps now). Otherwise the
   * claim is refused.
   */
  claimAnswered(view: View, conn: number, ident: string, answer: ClaimAnswer): void {
    const w = view as Watch;
    const room = w.room;
    w.inFlight--;
    switch (answer.kind) {
      case "failed":
        this.#sink.claimRefused(conn, room, "unavailable", UNAVAILABLE);
        return;
      case "taken":
        this.#sink.claimRefused(conn, room, "ident-taken", room + ":" + ident);
        return;
      case "full":
        this.#sink.claimRefused(conn, room, "limit", `room ${room} is full`);
        return;
      case "ok":
        if (!w.initialized) this.#initialize(w, answer.seq - 1, answer.members);
        w.pending.set(answer.seq, { conn, ident, move: false });
        this.#pump(w);
    }
  }

  /**
   * A move of a global ident of `room` to a local connection is about to be
   * sent (a resumed session's idents come here): as {@link claimStarted}.
   */
  moveStarted(room: string): View {
    return this.claimStarted(room);
  }

  /**
   * The move of `room:ident` to connection `conn` answered. Ok: the member
   * becomes the connection's once its event's turn comes (perhaps now).
   * Failed: nothing to do here (the adapter refuses the resume).
   */
  moveAnswered(view: View, conn: number, ident: string, answer: MoveAnswer): void {
    const w = view as Watch;
    w.inFlight--;
    if (answer.kind !== "ok") return;
    if (!w.initialized) this.#initialize(w, answer.seq - 1, answer.members);
    w.pending.set(answer.seq, { conn, ident, move: true });
    this.#pump(w);
  }

  /**
   * A claim that could not be sent (the link is down): refused as
   * unavailable. Call it after `Directory.claim` returned, not from inside it.
   */
  claimUnavailable(conn: number, room: string): void {
    this.#sink.claimRefused(conn, room, "unavailable", UNAVAILABLE);
  }

  /**
   * An event arrived on `room`'s channel. Applied now if its turn has come;
   * kept until the view's snapshot, or until this instance's own claim
   * answers, otherwise. Events of rooms without a view are ignored.
   */
  event(room: string, ev: RoomEvent): void {
    const w = this.#watches.get(room);
    if (w === undefined) return;
    w.early.push(ev);
    if (w.initialized) this.#pump(w);
  }

  /**
   * The view's room as Redis had it at `seq` (read after the channel was
   * subscribed). Members the broker lacks are announced as joins (unless
   * this instance holds them); members Redis has with another holder than
   * the broker's move to it (a move this instance missed); with `prune`,
   * remote members Redis no longer has leave. The view then applies events
   * after `seq` only (`seq` may be
   * lower than what it applied: Redis restarted and counts from 0 again).
   * When the room has no view any more, only the pruning happens.
   */
  snapshot(view: View, seq: number, members: readonly Holder[], prune: boolean): void {
    const w = view as Watch;
    const sink = this.#sink;
    const inRedis = new Set<string>();
    for (const m of members) inRedis.add(m.g);
    const known = new Map<string, RoomMember>();
    for (const m of sink.roomMembers(w.room)) {
      known.set(m.g, m);
      if (prune && !m.local && !inRedis.has(m.g)) sink.memberLeft(m.g);
    }
    for (const m of members) {
      const k = known.get(m.g);
      if (k === undefined || m.instance === "" || m.instance === this.instance) continue;
      if (k.local || k.instance !== m.instance) {
        sink.memberMoved(w.room, identOf(m.g), m.instance, null);
      }
    }
    const fresh = members.filter((m) => !known.has(m.g));
    if (!this.#watches.has(w.room)) return;
    this.#initialize(w, seq, fresh);
    this.#pump(w);
  }

  /**
   * The link to Redis closed: claims and moves that answered but wait for
   * their event complete now (the events will not come); what other
   * instances missed is put right by recovery.
   */
  linkDown(): void {
    for (const [room, w] of this.#watches) {
      for (const [seq, claim] of w.pending) {
        w.pending.delete(seq);
        if (claim.move) this.#sink.memberMoved(room, claim.ident, this.instance, claim.conn);
        else this.#sink.memberJoined(room, claim.ident, this.instance, claim.conn);
      }
    }
  }

  /**
   * The broker has nothing local in `room` any more: drops the view, unless
   * claims are outstanding or waiting for their turn. True when it was
   * dropped (the adapter unsubscribes from the room's channel).
   */
  unwatch(room: string): boolean {
    const w = this.#watches.get(room);
    if (w === undefined || w.inFlight > 0 || w.pending.size > 0) return false;
    this.#watches.delete(room);
    return true;
  }

  /** Announces a snapshot's members held elsewhere and starts the view's stream after `applied`. */
  #initialize(w: Watch, applied: number, members: readonly Holder[]): void {
    for (const m of members) {
      if (m.instance !== "" && m.instance !== this.instance) {
        this.#sink.memberJoined(w.room, identOf(m.g), m.instance, null);
      }
    }
    w.applied = applied;
    w.initialized = true;
  }

  /** Applies the events that arrived, in order, skipping what a snapshot covered. */
  #pump(w: Watch): void {
    const sink = this.#sink;
    const me = this.instance;
    const events = w.early;
    w.early = [];
    for (let i = 0; i < events.length; i++) {
      const ev = events[i];
      if (ev.seq <= w.applied) continue;
      if (
        (ev.kind === "j" || ev.kind === "m") && ev.instance === me && !w.pending.has(ev.seq) &&
        w.inFlight > 0
      ) {
        // Our own join or move, published before its script's reply reached
        // us: wait for the reply, so it completes in its turn.
        w.early = events.slice(i);
        return;
      }
      w.applied = ev.seq;
      if (ev.kind === "l") {
        if (ev.instance !== me) sink.memberLeft(ev.g);
        continue;
      }
      const claim = w.pending.get(ev.seq);
      if (claim !== undefined) {
        w.pending.delete(ev.seq);
        if (claim.move) sink.memberMoved(w.room, claim.ident, me, claim.conn);
        else sink.memberJoined(w.room, claim.ident, me, claim.conn);
      } else if (ev.instance === me) {
        continue;
      } else if (ev.kind === "m") {
        sink.memberMoved(w.room, identOf(ev.g), ev.instance, null);
      } else {
        sink.memberJoined(w.room, identOf(ev.g), ev.instance, null);
      }
    }
  }
}
