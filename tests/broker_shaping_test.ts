/**
 * Shaping in the pure broker, on an injected clock: frames over a
 * connection's budget wait and are handled in order, budgets follow the
 * pairs a connection is part of, joins and leaves pay for their fan-out, and
 * only a sender whose queue passes its bound is closed.
 */

import assert from "node:assert/strict";
import { CloseCode, DEFAULT_LIMITS, MAX_BUDGET_PAIRS } from "../lib/diva/broker.ts";
import { frameCost } from "../lib/shaping.ts";
import { type Effect, type Harness, harness } from "./helpers/broker_harness.ts";

/** The frames sent to `to` among `effects`, parsed. */
function framesTo(effects: Effect[], to: string): unknown[][] {
  return effects.flatMap((e) =>
    e.kind === "send" && e.to === to ? [JSON.parse(e.frame) as unknown[]] : []
  );
}

function closes(effects: Effect[]): Effect[] {
  return effects.filter((e) => e.kind === "close");
}

/** `n` connections named `${prefix}0…` joined to `room`, effects taken. */
function members(h: Harness, room: string, n: number, prefix = "m"): string[] {
  const names = Array.from({ length: n }, (_, i) => `${prefix}${i}`);
  for (const name of names) {
    h.open(name);
    h.call(name, "join", name, room);
    h.take();
  }
  return names;
}

Deno.test("shaping: a burst passes at once, the rest waits and is answered in order", () => {
  const h = harness({ limits: { rate: 10, burst: 5 } });
  h.open("A");
  for (let i = 0; i < 8; i++) h.call("A", "ping");
  const first = h.take();
  assert.equal(framesTo(first, "A").length, 5);
  // The sixth frame waits; the broker asks to be woken when a token is there.
  assert.deepEqual(first.filter((e) => e.kind === "wake"), [
    { kind: "wake", to: "A", at: h.now + 100 },
  ]);
  assert.equal(h.broker.stats.framesDelayed, 3);
  assert.equal(h.conn("A").queued, 3);
  // No error: a frame over the budget is delayed, not refused.
  assert.equal(h.broker.stats.errors["rate-limited"], 0);
  h.advance(99);
  assert.deepEqual(framesTo(h.take(), "A"), []);
  h.advance(1);
  assert.deepEqual(framesTo(h.take(), "A"), [["pong"]]);
  h.advance(200);
  assert.deepEqual(framesTo(h.take(), "A"), [["pong"], ["pong"]]);
  assert.equal(h.conn("A").queued, 0);
  assert.equal(h.broker.stats.framesIn.ping, 8);
});

Deno.test("shaping: a join behind waiting frames is carried out in its turn", () => {
  const h = harness({ limits: { rate: 10, burst: 2 } });
  members(h, "r", 1, "b");
  h.open("A");
  h.call("A", "ping");
  h.call("A", "ping");
  h.call("A", "join", "a", "r");
  h.call("A", "ping");
  assert.deepEqual(framesTo(h.take(), "A"), [["pong"], ["pong"]]);
  assert.equal(h.broker.idents, 1);
  h.advance(1000);
  const effects = h.take();
  assert.deepEqual(framesTo(effects, "A"), [
    ["join", "r:a"],
    ["stun", "r:a", "r:b0", true],
    ["pong"],
  ]);
  assert.deepEqual(framesTo(effects, "b0"), [["stun", "r:b0", "r:a", false]]);
});

Deno.test("shaping: a shaped sender's signals and replies keep their order", () => {
  const h = harness({ limits: { rate: 50, burst: 3, burstPerPair: 0, ratePerPair: 0 } });
  members(h, "r", 1, "b");
  h.open("A");
  h.call("A", "join", "a", "r");
  h.take();
  for (let i = 0; i < 40; i++) {
    h.call("A", "signal", "r:a", "r:b0", i);
    if (i % 4 === 0) h.call("A", "ping");
  }
  assert.ok(h.conn("A").queued > 0);
  h.advance(5000);
  const order: unknown[] = [];
  for (const e of h.effects) {
    if (e.kind !== "send") continue;
    const m = JSON.parse(e.frame) as unknown[];
    if (e.to === "b0" && m[0] === "signal") order.push(m[3]);
    if (e.to === "A" && m[0] === "pong") order.push("pong");
  }
  const expected: unknown[] = [];
  for (let i = 0; i < 40; i++) {
    expected.push(i);
    if (i % 4 === 0) expected.push("pong");
  }
  assert.deepEqual(order, expected);
  assert.equal(h.conn("A").queued, 0);
});

Deno.test("shaping: a sender at the sustained rate is never delayed", () => {
  const h = harness({ limits: { rate: 50, burst: 2 } });
  h.open("A");
  for (let i = 0; i < 2000; i++) {
    h.raw("A", '["ping"]');
    h.advance(20);
  }
  const effects = h.take();
  assert.equal(effects.length, 2000);
  assert.ok(effects.every((e) => e.kind === "send" && e.frame === '["pong"]'));
  assert.equal(h.broker.stats.framesDelayed, 0);
});

Deno.test("shaping: a queue past its frame bound is closed with 1008, said why, and counted", () => {
  const h = harness({ limits: { rate: 10, burst: 5, burstPerPair: 0, maxQueuedFrames: 20 } });
  members(h, "r", 1, "b");
  h.open("A");
  h.call("A", "join", "a", "r");
  h.take();
  for (let i = 0; i < 24; i++) h.call("A", "ping");
  let effects = h.take();
  assert.deepEqual(closes(effects), []);
  // 4 pongs (the join took a token), 20 waiting: the next frame is one too many.
  assert.equal(h.conn("A").queued, 20);
  h.call("A", "ping");
  effects = h.take();
  const toA = framesTo(effects, "A");
  assert.deepEqual(toA.at(-1)!.slice(0, 3), ["error", "frame", "rate-limited"]);
  assert.deepEqual(closes(effects), [{
    kind: "close",
    to: "A",
    code: CloseCode.policy,
    reason: "rate limit abuse",
  }]);
  // Closing released the ident: b0 got bye, and nothing of A is left.
  assert.deepEqual(framesTo(effects, "b0"), [["bye", "r:b0", "r:a"]]);
  assert.deepEqual(h.broker.stats.queueClosed, { frames: 1, bytes: 0 });
  assert.equal(h.broker.connections, 1);
  assert.equal(h.broker.idents, 1);
  // A wake that was still pending does nothing.
  h.advance(10_000);
  assert.deepEqual(h.take().filter((e) => e.kind === "send"), []);
});

Deno.test("shaping: a queue past its byte bound is closed too", () => {
  const h = harness({ limits: { rate: 10, burst: 1, maxQueuedBytes: 4096 } });
  h.open("A");
  h.call("A", "ping");
  const big = JSON.stringify(["ping", "x".repeat(1500)]);
  h.raw("A", big);
  h.raw("A", big);
  assert.deepEqual(closes(h.take()), []);
  h.raw("A", big);
  assert.equal(closes(h.take()).length, 1);
  assert.deepEqual(h.broker.stats.queueClosed, { frames: 0, bytes: 1 });
});

Deno.test("shaping: a client that slows down after a burst stays open and loses nothing", () => {
  const h = harness({ limits: { rate: 10, burst: 5, maxQueuedFrames: 10 } });
  h.open("A");
  for (let round = 0; round < 50; round++) {
    for (let i = 0; i < 8; i++) h.raw("A", '["ping"]');
    h.advance(1000);
  }
  const effects = h.take();
  assert.deepEqual(closes(effects), []);
  assert.equal(framesTo(effects, "A").length, 400);
  assert.equal(h.broker.connections, 1);
});

Deno.test("shaping: rate 0 turns it off", () => {
  const h = harness({ limits: { rate: 0, burst: 1, maxQueuedFrames: 1 } });
  h.open("A");
  for (let i = 0; i < 5000; i++) h.raw("A", '["ping"]');
  const effects = h.take();
  assert.equal(effects.length, 5000);
  assert.ok(effects.every((e) => e.kind === "send" && e.frame === '["pong"]'));
});

Deno.test("shaping: each connection has its own budget", () => {
  const h = harness({ limits: { rate: 10, burst: 3 } });
  h.open("A");
  h.open("B");
  for (let i = 0; i < 6; i++) h.raw("A", '["ping"]');
  h.take();
  for (let i = 0; i < 3; i++) h.raw("B", '["ping"]');
  assert.deepEqual(h.sent(), [["B", ["pong"]], ["B", ["pong"]], ["B", ["pong"]]]);
});

// ---------------------------------------------------------------- budgets follow pairs

Deno.test("budget: each pair a connection becomes part of brings burstPerPair tokens", () => {
  const limits = { rate: 10, burst: 10, ratePerPair: 1, burstPerPair: 50 };
  const h = harness({ limits });
  members(h, "r", 3, "b");
  h.open("A");
  h.call("A", "join", "a", "r");
  h.take();
  assert.equal(h.conn("A").pairs, 3);
  // 10 + 3 × 50 tokens, less the join: 159 more frames pass at once.
  for (let i = 0; i < 160; i++) h.call("A", "ping");
  assert.equal(framesTo(h.take(), "A").length, 159);
  assert.equal(h.conn("A").queued, 1);
  // Every member already there has one more pair, and its budget grew with it.
  for (const b of ["b0", "b1", "b2"]) assert.equal(h.conn(b).pairs, 3);
  assert.equal(h.conn("b0").budget!.capacity, 10 + 3 * 50);
  assert.equal(h.conn("b0").budget!.rate, 10 + 3 * 1);
  // A leave takes the pairs back, on both sides.
  h.advance(1000);
  h.call("A", "leave", "r:a");
  h.take();
  assert.equal(h.conn("A").pairs, 0);
  assert.equal(h.conn("b0").pairs, 2);
  assert.equal(h.conn("A").budget!.capacity, 10);
  assert.ok(h.conn("A").budget!.tokens <= 10);
});

Deno.test("budget: idents of one connection in one room count both ends of their pairs", () => {
  const h = harness();
  h.open("A");
  for (const i of ["1", "2", "3"]) h.call("A", "join", `a_${i}`, "r");
  assert.equal(h.conn("A").pairs, 6);
  h.open("B");
  for (const i of ["1", "2", "3"]) h.call("B", "join", `b_${i}`, "r");
  assert.equal(h.conn("A").pairs, 15);
  assert.equal(h.conn("B").pairs, 15);
  h.close("B");
  assert.equal(h.conn("A").pairs, 6);
});

Deno.test("budget: pairs past MAX_BUDGET_PAIRS add nothing", () => {
  const l = { rate: 10, burst: 10, ratePerPair: 1, burstPerPair: 2, maxPeersPerRoom: 400 };
  const h = harness({ limits: { ...l, churnBurst: 100_000 } });
  members(h, "r", MAX_BUDGET_PAIRS + 20, "b");
  const b = h.conn("b0");
  assert.equal(b.pairs, MAX_BUDGET_PAIRS + 19);
  assert.equal(b.budget!.capacity, 10 + 2 * MAX_BUDGET_PAIRS);
  assert.equal(b.budget!.rate, 10 + MAX_BUDGET_PAIRS);
});

Deno.test("budget: a client joining a room of 255 trickles to every peer and leaves, never delayed", () => {
  const h = harness();
  members(h, "big", 254);
  h.open("A");
  h.call("A", "join", "a", "big");
  h.take();
  // 40 frames for each of the 254 new pairs, within one second.
  const data = { candidate: "candidate:1 1 udp 2122260223 192.0.2.2 51234 typ host", sdpMid: "0" };
  for (let k = 0; k < 40; k++) {
    for (let i = 0; i < 254; i++) h.call("A", "signal", "big:a", `big:m${i}`, data);
    h.advance(25);
  }
  h.call("A", "leave", "big:a");
  const effects = h.take();
  assert.equal(h.broker.stats.framesDelayed, 0);
  assert.equal(effects.filter((e) => e.kind === "wake").length, 0);
  assert.equal(h.broker.stats.framesOut.signal, 40 * 254);
  assert.equal(h.broker.stats.framesOut.bye, 254);
});

// ---------------------------------------------------------------- what a frame costs

Deno.test("cost: a frame pays for its bytes and its nesting", () => {
  assert.equal(frameCost('["ping"]'), 1);
  assert.equal(frameCost(new TextEncoder().encode('["ping"]')), 1);
  const candidate = JSON.stringify([
    "signal",
    "r:a",
    "r:b",
    { type: "candidate", candidate: { candidate: "candidate:1 1 udp 1 192.0.2.2 1 typ host" } },
  ]);
  assert.equal(frameCost(candidate), 1);
  assert.equal(frameCost("x".repeat(5000)), 1 + 4);
  const bomb = "[".repeat(32 * 1024) + "]".repeat(32 * 1024);
  assert.equal(frameCost(bomb), 1 + 64 + Math.floor((32 * 1024 - 1) / 8));
  assert.equal(frameCost(new TextEncoder().encode(bomb)), frameCost(bomb));
  assert.equal(frameCost("{".repeat(80)), 1 + 10);
});

Deno.test("cost: a nesting bomb passes once, then its debt delays the sender alone", () => {
  const h = harness({ limits: { rate: 200, burst: 400 } });
  h.open("A");
  h.open("B");
  const bomb = "[".repeat(32 * 1024) + "]".repeat(32 * 1024);
  h.raw("A", bomb);
  assert.deepEqual(h.sent()[0][1], [
    "error",
    "frame",
    "bad-frame",
    "frame must be a non-empty JSON array whose first element is a string",
  ]);
  // The debt: cost - 400 tokens, repaid at 200 a second; one whole token lets the next go.
  const debt = frameCost(bomb) - 400;
  h.raw("A", bomb);
  h.raw("A", '["ping"]');
  assert.deepEqual(h.sent(), []);
  assert.equal(h.conn("A").queued, 2);
  // Another connection is not affected.
  h.raw("B", '["ping"]');
  assert.deepEqual(h.sent(), [["B", ["pong"]]]);
  h.advance((debt * 1000) / 200 + 4);
  assert.deepEqual(h.sent(), []);
  h.advance(1);
  assert.equal(h.sent().length, 1);
  assert.equal(h.conn("A").queued, 1);
});

// ---------------------------------------------------------------- churn

Deno.test("churn: join/leave in a room of 255 cannot amplify, and the churner is closed", () => {
  const h = harness();
  members(h, "big", 254);
  h.open("X");
  h.take();
  const effects: Effect[] = [];
  // 190 frames a second, alternating join and leave, for 10 s.
  let sent = 0;
  let closedAt = -1;
  const start = h.now;
  for (let i = 0; i < 1900 && closedAt < 0; i++) {
    h.call("X", ...(i % 2 === 0 ? ["join", "x", "big"] : ["leave", "big:x"]));
    sent++;
    h.advance(1000 / 190);
    effects.push(...h.take());
    if (closes(effects).length > 0) closedAt = h.now - start;
  }
  const toMembers = effects.filter((e) => e.kind === "send" && e.to !== "X").length;
  const seconds = (h.now - start) / 1000;
  // Before shaping, each join/leave pair sent 2 × 254 stun + 254 bye: 73,000 frames a second.
  const bound = 2 * (DEFAULT_LIMITS.churnBurst + DEFAULT_LIMITS.churnRate * seconds) + 2 * 254;
  assert.ok(toMembers <= bound, `${toMembers} frames to members in ${seconds} s`);
  assert.ok(closedAt > 0 && closedAt < 10_000, `closed after ${closedAt} ms`);
  assert.deepEqual(closes(effects).map((e) => e.kind === "close" && e.to), ["X"]);
  console.log(
    `churn: ${sent} frames in ${closedAt} ms caused ${toMembers} frames to members ` +
      `(${(toMembers / seconds).toFixed(0)}/s); without shaping: ${(sent / 2) * 3 * 254}`,
  );
});

Deno.test("churn: a join waits for churn budget and is then carried out, not refused", () => {
  const h = harness({ limits: { churnRate: 10, churnBurst: 5 } });
  members(h, "r", 8, "b");
  h.open("A");
  h.call("A", "join", "a1", "r");
  h.call("A", "join", "a2", "r");
  let effects = h.take();
  assert.deepEqual(framesTo(effects, "A").map((m) => m[0]), ["join", ...Array(8).fill("stun")]);
  // The first join announced 8 pairs on a budget of 5: the second waits for
  // one whole token, 0.4 s.
  assert.equal(h.conn("A").queued, 1);
  h.advance(399);
  assert.deepEqual(framesTo(h.take(), "A"), []);
  h.advance(1);
  effects = h.take();
  assert.deepEqual(framesTo(effects, "A")[0], ["join", "r:a2"]);
  assert.equal(h.broker.stats.errors.limit, 0);
});

// ---------------------------------------------------------------- a flood

Deno.test("flood: 10× the sustained rate is closed within seconds; others are answered at once", () => {
  const h = harness();
  h.open("F");
  h.open("G");
  let closedAt = -1;
  let gPongs = 0;
  let gPings = 0;
  // F sends 2,000 pings a second (10× the rate) for 10 s; G pings every 100 ms.
  for (let ms = 0; ms < 10_000; ms++) {
    if (closedAt < 0) {
      h.call("F", "ping");
      h.call("F", "ping");
    }
    if (ms % 100 === 0) {
      h.call("G", "ping");
      gPings++;
      // G's pong comes in the same instant: F's queue does not hold it up.
      const g = framesTo(h.take(), "G");
      assert.deepEqual(g, [["pong"]]);
      gPongs++;
    }
    assert.ok(h.conn("F").queued <= DEFAULT_LIMITS.maxQueuedFrames);
    if (closedAt < 0 && h.conn("F").closed) closedAt = ms;
    h.advance(0.5);
    h.advance(0.5);
  }
  assert.equal(gPongs, gPings);
  assert.ok(closedAt > 0 && closedAt < 10_000, `closed after ${closedAt} ms`);
  assert.equal(h.broker.stats.queueClosed.frames, 1);
  console.log(`flood: closed after ${closedAt} ms`);
});
