/**
 * Property tests: fast-check drives the broker with random interleavings of
 * calls from several connections, over a small alphabet of idents and rooms so
 * that collisions, limits and re-joins happen often.
 *
 * Two independent checks run after every step:
 * - a model of the protocol predicts every effect exactly (frames, order,
 *   closes, ICE lookups);
 * - a recorder that only watches the effects checks the invariants the
 *   protocol promises (signals reach the holder of the addressed ident and
 *   come from a holder of the sender's, stun pairs are announced once, in one
 *   room, with the later joiner as initiator).
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { Broker, type Connection } from "../lib/diva/broker.ts";
import { CALL_NAMES, ERROR_CODES, type ErrorCode } from "../lib/diva/codec.ts";
import { seededBytes } from "./helpers/broker_harness.ts";

const IDENTS = ["a", "b", "c"];
const ROOMS = ["r", "s"];
/** Global idents to signal and leave with: all combinations, plus a room nobody joins. */
const GLOBALS = [...ROOMS.flatMap((r) => IDENTS.map((i) => `${r}:${i}`)), "t:a"];
const SLOTS = 4;

type Enc = "text" | "pretty" | "binary";

/**
 * How a signal or leave picks its global idents when it runs: `own` sends from
 * (or leaves) one of the connection's own idents when it has any, and
 * `sameRoom` addresses the target in the sender's room. Without them, random
 * globals would almost always be refused as not-owner.
 */
interface Aim {
  own: boolean;
  sameRoom: boolean;
  pick: number;
}

type Action =
  | { t: "open"; slot: number }
  | { t: "close"; slot: number }
  | { t: "join"; slot: number; ident: string; room: string; enc: Enc }
  | { t: "legacy"; slot: number; room: string; enc: Enc }
  | { t: "ident"; slot: number; enc: Enc }
  | { t: "signal"; slot: number; from: string; to: string; aim: Aim; data: unknown; enc: Enc }
  | { t: "leave"; slot: number; g: string; aim: Aim; enc: Enc }
  | { t: "ping"; slot: number; enc: Enc }
  | { t: "ice"; slot: number; enc: Enc }
  | { t: "raw"; slot: number; frame: string | Uint8Array; expect: Expect }
  | { t: "huge"; slot: number; binary: boolean };

/** What a garbage frame must be answered with. */
type Expect = { code: "bad-json" | "bad-frame" | "bad-args" | "unknown-call"; call: string };

const slot = fc.integer({ min: 0, max: SLOTS - 1 });
const enc = fc.constantFrom<Enc>("text", "text", "pretty", "binary");
const ident = fc.constantFrom(...IDENTS);
const room = fc.constantFrom(...ROOMS);
const global = fc.constantFrom(...GLOBALS);
const aim: fc.Arbitrary<Aim> = fc.record({
  own: fc.oneof({ weight: 3, arbitrary: fc.constant(true) }, fc.constant(false)),
  sameRoom: fc.oneof({ weight: 3, arbitrary: fc.constant(true) }, fc.constant(false)),
  pick: fc.nat(7),
});

const utf8 = new TextEncoder();

function isJson(s: string): boolean {
  try {
    JSON.parse(s);
    return true;
  } catch {
    return false;
  }
}

const garbage: fc.Arbitrary<Action> = fc.oneof(
  // Not JSON at all.
  fc.tuple(slot, fc.string({ maxLength: 12 }).filter((s) => !isJson(s))).map((
    [slot, frame],
  ): Action => ({ t: "raw", slot, frame, expect: { code: "bad-json", call: "frame" } })),
  // Binary that is not UTF-8: 0xff never occurs in UTF-8.
  fc.tuple(slot, fc.uint8Array({ maxLength: 8 }), fc.nat(8)).map(([slot, b, at]): Action => {
    const bytes = new Uint8Array(b.length + 1);
    const i = at % (b.length + 1);
    bytes.set(b.subarray(0, i));
    bytes[i] = 0xff;
    bytes.set(b.subarray(i), i + 1);
    return { t: "raw", slot, frame: bytes, expect: { code: "bad-json", call: "frame" } };
  }),
  // JSON, but not an array starting with a string.
  fc.tuple(
    slot,
    fc.jsonValue({ maxDepth: 2 }).filter((v) =>
      !(Array.isArray(v) && v.length > 0 && typeof v[0] === "string")
    ),
    fc.boolean(),
  ).map(([slot, v, binary]): Action => ({
    t: "raw",
    slot,
    frame: binary ? utf8.encode(JSON.stringify(v)) : JSON.stringify(v),
    expect: { code: "bad-frame", call: "frame" },
  })),
  // A name that is no call.
  fc.tuple(
    slot,
    fc.string({ maxLength: 10 }).filter((s) => !(CALL_NAMES as readonly string[]).includes(s)),
    fc.array(fc.jsonValue({ maxDepth: 1 }), { maxLength: 3 }),
  ).map(([slot, name, args]): Action => ({
    t: "raw",
    slot,
    frame: JSON.stringify([name, ...args]),
    expect: { code: "unknown-call", call: name },
  })),
  // A known call with arguments of the wrong number or kind.
  fc.tuple(
    slot,
    fc.constantFrom<unknown[]>(
      ["ident", "x"],
      ["ping", 1],
      ["ice", null],
      ["join"],
      ["join", "a", "r", "x"],
      ["join", 1, "r"],
      ["join", "a:b", "r"],
      ["join", "a", ""],
      ["join", "a b"],
      ["join", "é", "r"],
      ["join", "a".repeat(257), "r"],
      ["signal", "r:a", "r:b"],
      ["signal", "r:a", "r:b", 1, 2],
      ["signal", "ra", "r:b", 1],
      ["signal", "r:a", "r:b:c", 1],
      ["signal", "r:a", 5, 1],
      ["leave"],
      ["leave", "r"],
      ["leave", "r:a", "x"],
      ["leave", null],
    ),
  ).map(([slot, call]): Action => ({
    t: "raw",
    slot,
    frame: JSON.stringify(call),
    expect: { code: "bad-args", call: call[0] as string },
  })),
);

const action: fc.Arbitrary<Action> = fc.oneof(
  { weight: 2, arbitrary: slot.map((slot): Action => ({ t: "open", slot })) },
  { weight: 2, arbitrary: slot.map((slot): Action => ({ t: "close", slot })) },
  {
    weight: 10,
    arbitrary: fc.record({ t: fc.constant("join" as const), slot, ident, room, enc }),
  },
  { weight: 2, arbitrary: fc.record({ t: fc.constant("legacy" as const), slot, room, enc }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant("ident" as const), slot, enc }) },
  {
    weight: 12,
    arbitrary: fc.record({
      t: fc.constant("signal" as const),
      slot,
      from: global,
      to: global,
      aim,
      data: fc.jsonValue({ maxDepth: 2 }),
      enc,
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({ t: fc.constant("leave" as const), slot, g: global, aim, enc }),
  },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("ping" as const), slot, enc }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("ice" as const), slot, enc }) },
  { weight: 3, arbitrary: garbage },
  {
    weight: 1,
    arbitrary: fc.record({ t: fc.constant("huge" as const), slot, binary: fc.boolean() }),
  },
);

/** One effect, in a form that compares with `deepEqual`. */
type Seen =
  | { kind: "send"; to: string; msg: unknown }
  | { kind: "close"; to: string; code: number }
  | { kind: "ice"; to: string; ident: string };

interface ModelConn {
  name: string;
  conn: Connection<string>;
  open: boolean;
  /** Global idents held, in the order they were joined. */
  held: string[];
  issued: string | undefined;
}

interface Limits {
  maxFrameBytes: number;
  maxIdentsPerConnection: number;
  maxPeersPerRoom: number;
}

/** Predicts the broker's effects from the protocol rules alone. */
class Model {
  readonly holders = new Map<string, ModelConn>();
  readonly rooms = new Map<string, string[]>();
  readonly issued = new Set<string>();

  constructor(readonly limits: Limits) {}

  send(out: Seen[], to: ModelConn, msg: unknown): void {
    if (to.open) out.push({ kind: "send", to: to.name, msg });
  }

  error(out: Seen[], c: ModelConn, call: string, code: string, detail = "*"): void {
    this.send(out, c, ["error", call, code, detail]);
  }

  join(out: Seen[], c: ModelConn, ident: string, room: string): void {
    const g = `${room}:${ident}`;
    const holder = this.holders.get(g);
    if (holder === c) return this.send(out, c, ["join", g]);
    if (holder !== undefined) return this.error(out, c, "join", "ident-taken", g);
    if (c.held.length >= this.limits.maxIdentsPerConnection) {
      return this.error(out, c, "join", "limit");
    }
    const members = this.rooms.get(room) ?? [];
    if (members.length >= this.limits.maxPeersPerRoom) return this.error(out, c, "join", "limit");
    this.send(out, c, ["join", g]);
    for (const t of members) {
      this.send(out, this.holders.get(t)!, ["stun", t, g, false]);
      this.send(out, c, ["stun", g, t, true]);
    }
    members.push(g);
    this.rooms.set(room, members);
    this.holders.set(g, c);
    c.held.push(g);
  }

  signal(out: Seen[], c: ModelConn, from: string, to: string, data: unknown): void {
    if (this.holders.get(from) !== c) return this.error(out, c, "signal", "not-owner");
    if (from.split(":")[0] !== to.split(":")[0]) {
      return this.error(out, c, "signal", "cross-room");
    }
    const target = this.holders.get(to);
    if (target === undefined) return this.error(out, c, "signal", "unknown-peer");
    this.send(out, target, ["signal", to, from, data]);
  }

  leave(out: Seen[], c: ModelConn, g: string): void {
    if (this.holders.get(g) !== c) return this.error(out, c, "leave", "not-owner");
    this.send(out, c, ["leave", g]);
    this.remove(out, g);
  }

  remove(out: Seen[], g: string): void {
    const c = this.holders.get(g)!;
    this.holders.delete(g);
    c.held.splice(c.held.indexOf(g), 1);
    const room = g.slice(0, g.indexOf(":"));
    const members = this.rooms.get(room)!.filter((m) => m !== g);
    if (members.length === 0) this.rooms.delete(room);
    else this.rooms.set(room, members);
    for (const t of members) this.send(out, this.holders.get(t)!, ["bye", t, g]);
  }

  close(out: Seen[], c: ModelConn): void {
    if (!c.open) return;
    c.open = false;
    for (const g of [...c.held]) this.remove(out, g);
    if (c.issued !== undefined) this.issued.delete(c.issued);
    c.issued = undefined;
  }
}

/** Watches effects only and checks the protocol's promises about them. */
class Recorder {
  /** Global idents each handle holds, as told by join/leave replies. */
  readonly holds = new Map<string, Set<string>>();
  /** When each held global ident joined (first join reply). */
  readonly joinedAt = new Map<string, number>();
  /** Announced pairs still standing: key → initiator seen, non-initiator seen. */
  readonly pairs = new Map<string, { init: boolean; other: boolean; step: number }>();
  #clock = 0;

  held(h: string): Set<string> {
    let s = this.holds.get(h);
    if (s === undefined) this.holds.set(h, s = new Set());
    return s;
  }

  gone(g: string): void {
    this.joinedAt.delete(g);
    for (const k of [...this.pairs.keys()]) {
      if (k.split("|").includes(g)) this.pairs.delete(k);
    }
  }

  closed(h: string): void {
    for (const g of this.held(h)) this.gone(g);
    this.holds.delete(h);
  }

  observe(step: number, sender: string, effects: Seen[]): void {
    for (const e of effects) {
      if (e.kind === "close") {
        this.closed(e.to);
        continue;
      }
      if (e.kind !== "send") continue;
      const msg = e.msg as unknown[];
      switch (msg[0]) {
        case "join": {
          const g = msg[1] as string;
          if (!this.held(e.to).has(g)) {
            this.held(e.to).add(g);
            this.joinedAt.set(g, ++this.#clock);
          }
          break;
        }
        case "leave":
          this.held(e.to).delete(msg[1] as string);
          this.gone(msg[1] as string);
          break;
        case "bye": {
          const [own, goneG] = [msg[1] as string, msg[2] as string];
          assert.ok(this.held(e.to).has(own), `bye to ${e.to} for ${own} it does not hold`);
          for (const s of this.holds.values()) s.delete(goneG);
          this.gone(goneG);
          break;
        }
        case "signal": {
          const [to, from] = [msg[1] as string, msg[2] as string];
          assert.ok(this.held(e.to).has(to), `signal for ${to} delivered to ${e.to}`);
          assert.ok(this.held(sender).has(from), `signal from ${from} sent by ${sender}`);
          assert.equal(to.split(":")[0], from.split(":")[0], "signal crossed rooms");
          break;
        }
        case "stun": {
          const [own, peer, init] = [msg[1] as string, msg[2] as string, msg[3] as boolean];
          assert.ok(this.held(e.to).has(own), `stun to ${e.to} for ${own} it does not hold`);
          assert.equal(own.split(":")[0], peer.split(":")[0], "stun pair spans rooms");
          assert.notEqual(own, peer);
          const key = [own, peer].sort().join("|");
          const p = this.pairs.get(key) ?? { init: false, other: false, step };
          assert.equal(p.step, step, `pair ${key} announced again`);
          if (init) {
            assert.ok(!p.init, `pair ${key} announced twice`);
            p.init = true;
            assert.ok(
              this.joinedAt.get(own)! > this.joinedAt.get(peer)!,
              `initiator ${own} is not the later joiner`,
            );
          } else {
            assert.ok(!p.other, `pair ${key} announced twice`);
            p.other = true;
          }
          this.pairs.set(key, p);
          break;
        }
      }
    }
    for (const [key, p] of this.pairs) {
      if (p.step === step) assert.ok(p.init && p.other, `pair ${key} told to one side only`);
    }
  }
}

function aimAt(c: ModelConn, from: string, to: string, aim: Aim): [string, string] {
  const f = aim.own && c.held.length > 0 ? c.held[aim.pick % c.held.length] : from;
  const t = aim.sameRoom ? f.slice(0, f.indexOf(":")) + to.slice(to.indexOf(":")) : to;
  return [f, t];
}

function encode(call: unknown[], e: Enc): string | Uint8Array {
  if (e === "pretty") return JSON.stringify(call, null, 2);
  const text = JSON.stringify(call);
  return e === "binary" ? utf8.encode(text) : text;
}

function byteLength(f: string | Uint8Array): number {
  return typeof f === "string" ? utf8.encode(f).length : f.byteLength;
}

/** Replaces error details (free text) by "*", except where PROTOCOL.md fixes them. */
function normalise(e: Seen): Seen {
  if (e.kind !== "send") return e;
  const m = e.msg as unknown[];
  if (m[0] !== "error") return e;
  assert.equal(m.length, 4);
  assert.equal(typeof m[3], "string");
  assert.ok((m[3] as string).length > 0);
  return m[2] === "ident-taken" ? e : { ...e, msg: [m[0], m[1], m[2], "*"] };
}

const limitsArb = fc.record({
  maxFrameBytes: fc.integer({ min: 200, max: 2000 }),
  maxIdentsPerConnection: fc.integer({ min: 1, max: 4 }),
  maxPeersPerRoom: fc.integer({ min: 1, max: 4 }),
});

/** How often each reply type and error code was seen, to show the runs reach every rule. */
type Coverage = Map<string, number>;

function count(coverage: Coverage, effects: Seen[]): void {
  for (const e of effects) {
    const key = e.kind !== "send"
      ? e.kind
      : (e.msg as string[])[0] === "error"
      ? `error:${(e.msg as string[])[2]}`
      : (e.msg as string[])[0];
    coverage.set(key, (coverage.get(key) ?? 0) + 1);
  }
}

function run(limits: Limits, actions: Action[], coverage: Coverage = new Map()): void {
  const effects: Seen[] = [];
  const broker = new Broker<string>({
    outbox: {
      send: (to, frame) => effects.push({ kind: "send", to, msg: JSON.parse(frame) }),
      close: (to, code) => effects.push({ kind: "close", to, code }),
      // The server answers later; answering at once (re-entrantly) keeps the model simple.
      ice: (to, conn, ident) => {
        effects.push({ kind: "ice", to, ident });
        broker.iceReply(conn, []);
      },
      wake() {},
    },
    now: () => 0,
    randomBytes: seededBytes(7),
    limits: { ...limits, rate: 0 },
  });
  const model = new Model(limits);
  const recorder = new Recorder();
  const slots: (ModelConn | undefined)[] = new Array(SLOTS);
  let gen = 0;

  const openSlot = (i: number): ModelConn => {
    const name = `c${i}.${gen++}`;
    const c: ModelConn = { name, conn: broker.open(name), open: true, held: [], issued: undefined };
    slots[i] = c;
    return c;
  };

  actions.forEach((a, step) => {
    effects.length = 0;
    const expected: Seen[] = [];
    if (a.t === "open") {
      if (slots[a.slot]?.open) return;
      openSlot(a.slot);
      assert.deepEqual(effects, []);
      return;
    }
    const c = slots[a.slot] ?? openSlot(a.slot);
    if (a.t === "close") {
      broker.close(c.conn);
      model.close(expected, c);
      assert.deepEqual(effects, expected, `step ${step}: close`);
      recorder.observe(step, c.name, effects);
      recorder.closed(c.name);
      return;
    }
    let frame: string | Uint8Array;
    let from = "";
    let to = "";
    switch (a.t) {
      case "join":
        frame = encode(["join", a.ident, a.room], a.enc);
        break;
      case "legacy":
        frame = encode(["join", a.room], a.enc);
        break;
      case "ident":
      case "ping":
      case "ice":
        frame = encode([a.t], a.enc);
        break;
      case "signal":
        [from, to] = aimAt(c, a.from, a.to, a.aim);
        frame = encode(["signal", from, to, a.data], a.enc);
        break;
      case "leave":
        [from] = aimAt(c, a.g, a.g, a.aim);
        frame = encode(["leave", from], a.enc);
        break;
      case "raw":
        frame = a.frame;
        break;
      case "huge": {
        const text = `["ping"${" ".repeat(limits.maxFrameBytes)}]`;
        frame = a.binary ? utf8.encode(text) : text;
        break;
      }
    }
    broker.frame(c.conn, frame);

    if (!c.open) {
      assert.deepEqual(effects, [], `step ${step}: a closed connection got answers`);
      return;
    }
    if (byteLength(frame) > limits.maxFrameBytes) {
      model.error(expected, c, "frame", "too-large");
      expected.push({ kind: "close", to: c.name, code: 1009 });
      model.close(expected, c);
    } else {
      switch (a.t) {
        case "join":
          model.join(expected, c, a.ident, a.room);
          break;
        case "legacy":
          if (c.issued === undefined) model.error(expected, c, "join", "no-ident");
          else model.join(expected, c, c.issued, a.room);
          break;
        case "ident": {
          // The id is random: take it from what was sent, after checking it.
          const got = effects[0];
          assert.equal(got?.kind, "send");
          const id = (got as { msg: unknown[] }).msg[1] as string;
          assert.match(id, /^[a-z]{24}$/);
          assert.ok(!model.issued.has(id), "issued ident is not unique");
          if (c.issued !== undefined) model.issued.delete(c.issued);
          c.issued = id;
          model.issued.add(id);
          model.send(expected, c, ["ident", id]);
          break;
        }
        case "ping":
          model.send(expected, c, ["pong"]);
          break;
        case "ice": {
          // The TURN user is the first global ident held, else the issued ident.
          let who = c.held[0] ?? c.issued;
          if (who === undefined) {
            const got = effects[0] as { ident?: string } | undefined;
            who = got?.ident ?? "";
            assert.match(who, /^[a-z]{24}$/);
          }
          expected.push({ kind: "ice", to: c.name, ident: who });
          model.send(expected, c, ["ice", []]);
          break;
        }
        case "signal":
          // What the sender put on the wire: JSON has no -0, for one.
          model.signal(expected, c, from, to, JSON.parse(JSON.stringify(a.data)));
          break;
        case "leave":
          model.leave(expected, c, from);
          break;
        case "raw":
          model.error(expected, c, a.expect.call, a.expect.code);
          break;
        case "huge":
          throw new Error("a huge frame must be too large");
      }
    }
    assert.deepEqual(effects.map(normalise), expected, `step ${step}: ${JSON.stringify(a)}`);
    count(coverage, effects);
    recorder.observe(step, c.name, effects);
    assert.equal(broker.idents, model.holders.size);
    assert.equal(broker.rooms, model.rooms.size);
    assert.equal(broker.issued, model.issued.size);
  });

  for (const c of slots) {
    if (c === undefined || !c.open) continue;
    effects.length = 0;
    const expected: Seen[] = [];
    broker.close(c.conn);
    model.close(expected, c);
    assert.deepEqual(effects, expected);
    recorder.observe(actions.length, c.name, effects);
    recorder.closed(c.name);
  }
  assert.equal(broker.connections, 0);
  assert.equal(broker.rooms, 0);
  assert.equal(broker.idents, 0);
  assert.equal(broker.issued, 0);
  assert.equal(recorder.pairs.size, 0);
}

/**
 * The error codes the random traffic above cannot produce; every other code of
 * {@link ERROR_CODES} must be reached, so a new code goes in one of the two.
 */
const UNREACHED_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  // `run` turns rate limiting off (`rate: 0`); the shaping property covers it.
  "rate-limited",
  // No auth is configured and no action sends auth, prove, session or resume:
  // refusals of a token, a proof, a room or a resume token never happen.
  "forbidden",
  // No action sends auth, challenge, prove or session (refused as unavailable
  // without auth or sessions), the ICE lookup always answers, and there is no
  // cluster to be unreachable.
  "unavailable",
]);

Deno.test("property: random call sequences keep every protocol promise", () => {
  const coverage: Coverage = new Map();
  fc.assert(
    fc.property(
      limitsArb,
      fc.array(action, { minLength: 10, maxLength: 80, size: "max" }),
      (limits, actions) => {
        run(limits, actions, coverage);
      },
    ),
    { numRuns: 200 },
  );
  // The generators must actually reach every rule, or the property proves little.
  const rules = [
    "ident",
    "join",
    "stun",
    "signal",
    "leave",
    "bye",
    "pong",
    "ice",
    "close",
    ...ERROR_CODES.filter((c) => !UNREACHED_CODES.has(c)).map((c) => `error:${c}`),
  ];
  for (const r of rules) assert.ok((coverage.get(r) ?? 0) > 0, `no run reached ${r}`);
  // The exclusions are honest: no run produced them.
  for (const c of UNREACHED_CODES) {
    assert.equal(
      coverage.get(`error:${c}`) ?? 0,
      0,
      `a run reached ${c}: drop it from UNREACHED_CODES`,
    );
  }
});

Deno.test("property: with roomy limits, long sequences end with an empty broker", () => {
  const roomy = { maxFrameBytes: 64 * 1024, maxIdentsPerConnection: 32, maxPeersPerRoom: 256 };
  fc.assert(
    fc.property(fc.array(action, { minLength: 50, maxLength: 200 }), (actions) => {
      run(roomy, actions);
    }),
    { numRuns: 100 },
  );
});

Deno.test("property: shaping delays and never drops, keeps order, and closes only a full queue", () => {
  const step = fc.record({
    wait: fc.constantFrom(0, 0, 0, 1, 10, 50, 100, 1000),
    frames: fc.integer({ min: 0, max: 30 }),
  });
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 50 }),
      fc.integer({ min: 1, max: 20 }),
      fc.integer({ min: 1, max: 40 }),
      fc.array(step, { maxLength: 60 }),
      (rate, burst, maxQueuedFrames, steps) => {
        let now = 0;
        let wakeAt = -1;
        const effects: Seen[] = [];
        const broker = new Broker<string>({
          outbox: {
            send: (to, frame) => effects.push({ kind: "send", to, msg: JSON.parse(frame) }),
            close: (to, code) => effects.push({ kind: "close", to, code }),
            ice() {},
            wake: (_to, _c, ms) => {
              assert.ok(ms > 0);
              wakeAt = now + ms;
            },
          },
          now: () => now,
          randomBytes: seededBytes(),
          limits: { rate, burst, maxQueuedFrames },
        });
        const conn = broker.open("A");
        let sent = 0;
        let answered = 0;
        let closed = false;
        /** Checks what the broker did since the last look: pongs in order, or the close. */
        const look = () => {
          for (const e of effects.splice(0)) {
            assert.ok(!closed, "nothing after the close");
            if (e.kind === "close") {
              assert.equal(e.code, 1008);
              closed = true;
              continue;
            }
            const msg = (e as { msg: unknown[] }).msg;
            if (msg[0] === "error") {
              // The only error is the one that explains the close.
              assert.deepEqual(msg.slice(0, 3), ["error", "frame", "rate-limited"]);
              continue;
            }
            assert.deepEqual(msg, ["pong"]);
            answered++;
          }
        };
        const advance = (ms: number) => {
          const end = now + ms;
          while (wakeAt >= 0 && wakeAt <= end) {
            now = Math.max(now, wakeAt);
            wakeAt = -1;
            broker.wake(conn);
            look();
          }
          now = end;
        };
        for (const s of steps) {
          advance(s.wait);
          for (let i = 0; i < s.frames && !closed; i++) {
            const waiting = sent - answered;
            broker.frame(conn, '["ping"]');
            sent++;
            look();
            // Closed exactly when the queue was already full.
            assert.equal(closed, waiting >= maxQueuedFrames && conn.queued === 0);
            // The budget never pays for more than its burst plus what it earned (a
            // frame may go on the last fraction of a token).
            assert.ok(answered <= burst + (rate * now) / 1000 + 1);
          }
          if (closed) break;
        }
        if (!closed) {
          // Nothing was dropped: given time, every frame is answered.
          advance(1000 * (sent / rate + 1));
          assert.equal(answered, sent);
          assert.equal(conn.queued, 0);
        }
        assert.equal(broker.connections, closed ? 0 : 1);
        broker.close(conn);
        assert.equal(broker.connections, 0);
      },
    ),
    { numRuns: 200 },
  );
});
