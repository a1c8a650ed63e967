/**
 * The y-webrtc engine on its own: no socket, an injected clock, every effect
 * recorded. Subscriptions and fan-out, counts, every limit, shaping (delay,
 * never drop; order kept; queue bounds close), garbage frames, metrics, and
 * property tests against a model.
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { frameCost } from "../lib/shaping.ts";
import { decode, isFault, withClients } from "../lib/ywebrtc/codec.ts";
import { DEFAULT_YLIMITS, MAX_BUDGET_PEERS, YCloseCode } from "../lib/ywebrtc/engine.ts";
import { type YEffect, type YHarness, yharness } from "./helpers/ywebrtc_harness.ts";

const utf8 = new TextEncoder();

/** The frames sent to `to` among `effects`, parsed. */
function framesTo(effects: YEffect[], to: string): Record<string, unknown>[] {
  return effects.flatMap((e) => e.kind === "send" && e.to === to ? [JSON.parse(e.frame)] : []);
}

function closes(effects: YEffect[]): YEffect[] {
  return effects.filter((e) => e.kind === "close");
}

/** `n` connections named `${prefix}0…`, each subscribed to `topic`, effects taken. */
function members(h: YHarness, topic: string, n: number, prefix = "m"): string[] {
  const names = Array.from({ length: n }, (_, i) => `${prefix}${i}`);
  for (const name of names) {
    h.open(name);
    h.subscribe(name, topic);
  }
  h.take();
  return names;
}

/** The single error a frame got, as `[code, detail]`. */
function oneError(h: YHarness, name: string): Record<string, unknown> {
  const effects = h.take();
  assert.equal(effects.length, 1, JSON.stringify(effects));
  const [m] = framesTo(effects, name);
  assert.equal(m.type, "error");
  return m;
}

// ---------------------------------------------------------------- the wire

Deno.test("publish: every subscriber gets it, the sender included, with clients", () => {
  const h = yharness();
  h.open("A");
  h.open("B");
  h.open("C");
  h.open("X");
  h.subscribe("A", "r");
  h.subscribe("B", "r", "s");
  h.subscribe("C", "r");
  h.subscribe("X", "s");
  assert.deepEqual(h.take(), []);
  h.raw("B", '{"type":"publish","topic":"r","data":{"type":"announce","from":"b"}}');
  const effects = h.take();
  const frame = '{"type":"publish","topic":"r","data":{"type":"announce","from":"b"},"clients":3}';
  assert.deepEqual(effects, [
    { kind: "send", to: "A", frame },
    { kind: "send", to: "B", frame },
    { kind: "send", to: "C", frame },
  ]);
  h.publish("X", "s", { n: 1 });
  assert.deepEqual(h.sent(), [
    ["B", { type: "publish", topic: "s", data: { n: 1 }, clients: 2 }],
    ["X", { type: "publish", topic: "s", data: { n: 1 }, clients: 2 }],
  ]);
  assert.equal(h.engine.stats.publishes, 2);
  assert.equal(h.engine.stats.deliveries, 5);
  assert.equal(h.engine.topics, 2);
  assert.equal(h.engine.subscriptions, 5);
  assert.equal(h.engine.count("r"), 3);
});

Deno.test("publish: the sender's text travels unchanged, only clients is added", () => {
  const h = yharness();
  h.open("A");
  h.subscribe("A", "r");
  const text = '{ "data" : {"big":1e400,"neg":-0,"u":"\\u00e9"}, "topic":"r","type":"publish" }\n';
  h.raw("A", text);
  const [e] = h.take();
  assert.deepEqual(e, {
    kind: "send",
    to: "A",
    frame: '{ "data" : {"big":1e400,"neg":-0,"u":"\\u00e9"}, "topic":"r","type":"publish" ,' +
      '"clients":1}',
  });
  // A clients field of the sender's is replaced, in its place.
  h.raw("A", '{"type":"publish","clients":99,"topic":"r","x":[1]}');
  assert.deepEqual(h.take(), [{
    kind: "send",
    to: "A",
    frame: '{"type":"publish","clients":1,"topic":"r","x":[1]}',
  }]);
  // A binary frame holding UTF-8 JSON is text; the answer is text.
  h.raw("A", utf8.encode('{"type":"publish","topic":"r","data":"é"}'));
  assert.deepEqual(h.take(), [{
    kind: "send",
    to: "A",
    frame: '{"type":"publish","topic":"r","data":"é","clients":1}',
  }]);
});

Deno.test("ping: answered with pong, as text and as binary", () => {
  const h = yharness();
  h.open("A");
  h.raw("A", '{"type":"ping"}');
  h.raw("A", utf8.encode(' {"type":"ping","extra":true}'));
  assert.deepEqual(h.take(), [
    { kind: "send", to: "A", frame: '{"type":"pong"}' },
    { kind: "send", to: "A", frame: '{"type":"pong"}' },
  ]);
  assert.equal(h.engine.stats.framesIn.ping, 2);
});

Deno.test("unsubscribe: stops deliveries, lowers counts, forgets an empty topic", () => {
  const h = yharness();
  members(h, "r", 3);
  h.send("m1", { type: "unsubscribe", topics: ["r"] });
  assert.deepEqual(h.take(), []);
  assert.equal(h.engine.count("r"), 2);
  h.publish("m0", "r", 1);
  assert.deepEqual(h.sent().map(([to, m]) => [to, m.clients]), [["m0", 2], ["m2", 2]]);
  // The unsubscribed connection may no longer publish there.
  h.publish("m1", "r", 1);
  assert.equal(oneError(h, "m1").code, "not-subscribed");
  h.send("m0", { type: "unsubscribe", topics: ["r"] });
  h.send("m2", { type: "unsubscribe", topics: ["r", "never-held"] });
  assert.deepEqual(h.take(), []);
  assert.equal(h.engine.topics, 0);
  assert.equal(h.engine.subscriptions, 0);
});

Deno.test("subscribe: twice is once; re-subscribing after unsubscribe works", () => {
  const h = yharness();
  h.open("A");
  h.subscribe("A", "r", "r");
  h.subscribe("A", "r");
  assert.deepEqual(h.take(), []);
  assert.equal(h.engine.subscriptions, 1);
  assert.equal(h.engine.count("r"), 1);
  h.send("A", { type: "unsubscribe", topics: ["r"] });
  h.subscribe("A", "r");
  assert.equal(h.engine.subscriptions, 1);
  h.publish("A", "r");
  assert.deepEqual(h.sent().map(([to, m]) => [to, m.clients]), [["A", 1]]);
});

Deno.test("close: a connection leaves every topic and gets nothing more", () => {
  const h = yharness();
  members(h, "r", 2);
  h.subscribe("m0", "s", "t");
  h.close("m0");
  h.close("m0");
  assert.equal(h.engine.connections, 1);
  assert.equal(h.engine.topics, 1);
  assert.equal(h.engine.subscriptions, 1);
  h.publish("m1", "r");
  assert.deepEqual(h.sent().map(([to, m]) => [to, m.clients]), [["m1", 1]]);
  // Frames after close are ignored.
  h.raw("m0", '{"type":"ping"}');
  assert.deepEqual(h.take(), []);
});

Deno.test("publish: to a topic not subscribed is refused, unless allowed", () => {
  const h = yharness();
  members(h, "r", 2);
  h.open("X");
  h.publish("X", "r", { to: "someone" });
  assert.deepEqual(oneError(h, "X"), {
    type: "error",
    code: "not-subscribed",
    detail: "subscribe to a topic before publishing to it",
    topics: ["r"],
  });
  h.publish("X", "nobody-here");
  assert.equal(oneError(h, "X").code, "not-subscribed");
  assert.equal(h.engine.stats.errors["not-subscribed"], 2);
  assert.equal(h.engine.stats.publishes, 0);
  assert.equal(h.engine.topics, 1);

  const open = yharness({ allowUnsubscribedPublish: true });
  members(open, "r", 2);
  open.open("X");
  open.publish("X", "r", 1);
  // As the reference server: the subscribers get it, the sender (not one) does not.
  assert.deepEqual(open.sent().map(([to, m]) => [to, m.clients]), [["m0", 2], ["m1", 2]]);
  open.publish("X", "empty");
  assert.deepEqual(open.take(), []);
});

// ---------------------------------------------------------------- limits

Deno.test("limit: topics per connection", () => {
  const h = yharness({ limits: { maxTopicsPerConnection: 3 } });
  h.open("A");
  h.subscribe("A", "a", "b");
  h.subscribe("A", "b", "c", "d", "e");
  assert.deepEqual(oneError(h, "A"), {
    type: "error",
    code: "topic-limit",
    detail: "at most 3 topics per connection; not subscribed",
    topics: ["d", "e"],
  });
  assert.deepEqual([...h.conn("A").topics], ["a", "b", "c"]);
  assert.equal(h.engine.stats.errors["topic-limit"], 1);
  // A topic already held is no new topic.
  h.subscribe("A", "a");
  assert.deepEqual(h.take(), []);
  // Room is made by an unsubscribe.
  h.send("A", { type: "unsubscribe", topics: ["a"] });
  h.subscribe("A", "d");
  assert.deepEqual(h.take(), []);
  assert.deepEqual([...h.conn("A").topics], ["b", "c", "d"]);
});

Deno.test("limit: subscribers per topic", () => {
  const h = yharness({ limits: { maxSubscribersPerTopic: 2 } });
  members(h, "r", 2);
  h.open("C");
  h.subscribe("C", "r", "s");
  assert.deepEqual(oneError(h, "C"), {
    type: "error",
    code: "topic-full",
    detail: "at most 2 subscribers per topic; not subscribed",
    topics: ["r"],
  });
  assert.deepEqual([...h.conn("C").topics], ["s"]);
  assert.equal(h.engine.count("r"), 2);
  // A refused subscriber cannot publish there either.
  h.publish("C", "r");
  assert.equal(oneError(h, "C").code, "not-subscribed");
  h.close("m0");
  h.subscribe("C", "r");
  assert.deepEqual(h.take(), []);
  assert.equal(h.engine.count("r"), 2);
});

Deno.test("limit: topic length; non-string topics are ignored and said so", () => {
  const h = yharness({ limits: { maxTopicLength: 8 } });
  h.open("A");
  h.send("A", { type: "subscribe", topics: ["ok", "x".repeat(9), 7, null, { a: 1 }, ["r"], ""] });
  assert.deepEqual(oneError(h, "A"), {
    type: "error",
    code: "bad-topic",
    detail: "5 entries of topics ignored: a topic is a string of at most 8 characters",
  });
  assert.deepEqual([...h.conn("A").topics], ["ok", ""]);
  h.send("A", { type: "unsubscribe", topics: [1, "ok"] });
  assert.equal(
    oneError(h, "A").detail,
    "1 entry of topics ignored: a topic is a string of at most 8 characters",
  );
  assert.deepEqual([...h.conn("A").topics], [""]);
  assert.equal(h.engine.stats.errors["bad-topic"], 2);
});

Deno.test("limit: an oversize frame is said so and closed with 1009", () => {
  const h = yharness({ limits: { maxFrameBytes: 100 } });
  members(h, "r", 2);
  h.raw("m0", JSON.stringify({ type: "publish", topic: "r", data: "é".repeat(50) }));
  const effects = h.take();
  assert.deepEqual(framesTo(effects, "m0"), [{
    type: "error",
    code: "too-large",
    detail: "frame exceeds 100 bytes",
  }]);
  assert.deepEqual(closes(effects), [{
    kind: "close",
    to: "m0",
    code: YCloseCode.tooLarge,
    reason: "frame too large",
  }]);
  assert.equal(h.engine.count("r"), 1);
  // The transport's own check calls oversize.
  h.engine.oversize(h.conn("m1"));
  assert.equal(closes(h.take()).length, 1);
  assert.equal(h.engine.connections, 0);
  assert.equal(h.engine.topics, 0);
  assert.equal(h.engine.stats.errors["too-large"], 2);
});

// ---------------------------------------------------------------- garbage

const GARBAGE: [string, string | Uint8Array, string][] = [
  ["not JSON", "{type:'ping'}", "bad-json"],
  ["empty", "", "bad-json"],
  ["truncated", '{"type":"publish","topic":"r"', "bad-json"],
  ["binary not UTF-8", new Uint8Array([0x7b, 0xff, 0x7d]), "bad-json"],
  ["an array", '["ping"]', "bad-frame"],
  ["a number", "42", "bad-frame"],
  ["null", "null", "bad-frame"],
  ["a string", '"ping"', "bad-frame"],
  ["no type", '{"topics":["r"]}', "bad-frame"],
  ["a numeric type", '{"type":1}', "bad-frame"],
  ["a null type", '{"type":null,"topic":"r"}', "bad-frame"],
  ["an unknown type", '{"type":"join","topics":["r"]}', "unknown-type"],
  ["pong from a client", '{"type":"pong"}', "unknown-type"],
  ["topics missing", '{"type":"subscribe"}', "bad-topic"],
  ["topics a string", '{"type":"subscribe","topics":"r"}', "bad-topic"],
  ["topics an object", '{"type":"unsubscribe","topics":{"0":"r"}}', "bad-topic"],
  ["publish without topic", '{"type":"publish","data":{}}', "bad-topic"],
  ["publish to a numeric topic", '{"type":"publish","topic":5}', "bad-topic"],
  ["publish to an array topic", '{"type":"publish","topic":["r"]}', "bad-topic"],
];

Deno.test("garbage: each malformed frame gets one error, changes nothing, and is counted", () => {
  const h = yharness();
  members(h, "r", 2);
  for (const [what, frame, code] of GARBAGE) {
    h.raw("m0", frame);
    const m = oneError(h, "m0");
    assert.equal(m.code, code, what);
    assert.equal(typeof m.detail, "string");
    assert.equal(h.engine.topics, 1, what);
    assert.equal(h.engine.subscriptions, 2, what);
  }
  const byCode: Record<string, number> = {};
  for (const [, , code] of GARBAGE) byCode[code] = (byCode[code] ?? 0) + 1;
  for (const [code, n] of Object.entries(byCode)) {
    assert.equal(h.engine.stats.errors[code as keyof typeof h.engine.stats.errors], n, code);
  }
  assert.equal(h.engine.stats.publishes, 0);
  // The connection still works.
  h.publish("m0", "r");
  assert.equal(h.take().length, 2);
});

Deno.test("garbage: huge arrays are handled once, within the frame's cost", () => {
  const h = yharness({ limits: { maxTopicsPerConnection: 4, rate: 0 } });
  h.open("A");
  const numbers = JSON.stringify({ type: "subscribe", topics: Array(20_000).fill(0) });
  assert.ok(numbers.length < DEFAULT_YLIMITS.maxFrameBytes);
  h.raw("A", numbers);
  assert.equal(
    oneError(h, "A").detail,
    "20000 entries of topics ignored: a topic is a string of at most 512 characters",
  );
  assert.equal(h.engine.subscriptions, 0);
  const names = Array.from({ length: 6000 }, (_, i) => `t${i}`);
  h.send("A", { type: "subscribe", topics: names });
  const m = oneError(h, "A");
  assert.equal(m.code, "topic-limit");
  assert.equal((m.topics as string[]).length, 5996);
  assert.equal(h.engine.subscriptions, 4);
  h.send("A", { type: "unsubscribe", topics: names });
  assert.deepEqual(h.take(), []);
  assert.equal(h.engine.subscriptions, 0);
  // Nested arrays cost their nesting.
  const bomb = '{"type":"subscribe","topics":' + "[".repeat(4000) + "]".repeat(4000) + "}";
  assert.ok(frameCost(bomb) > 400);
  h.raw("A", bomb);
  assert.equal(
    oneError(h, "A").detail,
    "1 entry of topics ignored: a topic is a string of at most 512 characters",
  );
  assert.equal(h.engine.subscriptions, 0);
});

Deno.test("accepts: objects are y-webrtc, arrays are not", () => {
  const { engine } = yharness();
  assert.equal(engine.accepts!('{"type":"subscribe","topics":[]}'), true);
  assert.equal(engine.accepts!(' \n{"type":"ping"}'), true);
  assert.equal(engine.accepts!(utf8.encode('\t{"type":"ping"}')), true);
  assert.equal(engine.accepts!('["join","a","r"]'), false);
  assert.equal(engine.accepts!(utf8.encode('["ping"]')), false);
  assert.equal(engine.accepts!("hello"), false);
  assert.equal(engine.accepts!(new Uint8Array(0)), false);
});

// ---------------------------------------------------------------- shaping

Deno.test("shaping: a burst passes at once, the rest waits and is answered in order", () => {
  const h = yharness({ limits: { rate: 10, burst: 5 } });
  h.open("A");
  for (let i = 0; i < 8; i++) h.send("A", { type: "ping" });
  const first = h.take();
  assert.equal(framesTo(first, "A").length, 5);
  assert.deepEqual(first.filter((e) => e.kind === "wake"), [{
    kind: "wake",
    to: "A",
    at: h.now + 100,
  }]);
  assert.equal(h.engine.stats.framesDelayed, 3);
  assert.equal(h.conn("A").queued, 3);
  assert.equal(h.engine.stats.errors["rate-limited"], 0);
  h.advance(99);
  assert.deepEqual(h.take(), []);
  h.advance(1);
  assert.deepEqual(framesTo(h.take(), "A"), [{ type: "pong" }]);
  h.advance(200);
  assert.equal(framesTo(h.take(), "A").length, 2);
  assert.equal(h.conn("A").queued, 0);
  assert.equal(h.engine.stats.framesIn.ping, 8);
});

Deno.test("shaping: a shaped sender's publishes and replies keep their order", () => {
  const h = yharness({
    limits: { rate: 50, burst: 3, burstPerTopic: 0, burstPerPeer: 0, ratePerPeer: 0 },
  });
  members(h, "r", 1, "b");
  h.open("A");
  h.subscribe("A", "r");
  const sent: unknown[] = [];
  for (let i = 0; i < 40; i++) {
    h.publish("A", "r", i);
    sent.push(i);
    if (i % 4 === 0) {
      h.send("A", { type: "ping" });
      sent.push("pong");
    }
  }
  assert.ok(h.conn("A").queued > 0);
  // A subscribe behind waiting frames takes effect in its turn.
  h.subscribe("A", "late");
  assert.equal(h.conn("A").topics.has("late"), false);
  h.advance(5000);
  assert.equal(h.conn("A").topics.has("late"), true);
  const got = framesTo(h.effects, "A").map((m) => m.type === "pong" ? "pong" : m.data);
  assert.deepEqual(got, sent);
  assert.deepEqual(framesTo(h.effects, "b0").map((m) => m.data), sent.filter((x) => x !== "pong"));
  assert.equal(h.conn("A").queued, 0);
});

Deno.test("shaping: a sender at the sustained rate is never delayed", () => {
  const h = yharness({ limits: { rate: 50, burst: 2 } });
  h.open("A");
  for (let i = 0; i < 2000; i++) {
    h.raw("A", '{"type":"ping"}');
    h.advance(20);
  }
  const effects = h.take();
  assert.equal(effects.length, 2000);
  assert.equal(h.engine.stats.framesDelayed, 0);
});

Deno.test("shaping: a queue past its frame bound is closed with 1008, said why, and counted", () => {
  const h = yharness({
    limits: { rate: 10, burst: 5, burstPerTopic: 0, burstPerPeer: 0, maxQueuedFrames: 20 },
  });
  members(h, "r", 1, "b");
  h.open("A");
  h.subscribe("A", "r");
  h.take();
  for (let i = 0; i < 24; i++) h.send("A", { type: "ping" });
  assert.deepEqual(closes(h.take()), []);
  assert.equal(h.conn("A").queued, 20);
  h.send("A", { type: "ping" });
  const effects = h.take();
  assert.deepEqual(framesTo(effects, "A").at(-1), {
    type: "error",
    code: "rate-limited",
    detail: "sending faster than allowed: more than 20 frames waiting",
  });
  assert.deepEqual(closes(effects), [{
    kind: "close",
    to: "A",
    code: YCloseCode.policy,
    reason: "rate limit abuse",
  }]);
  assert.deepEqual(h.engine.stats.queueClosed, { frames: 1, bytes: 0 });
  assert.equal(h.engine.connections, 1);
  assert.equal(h.engine.count("r"), 1);
  // A wake still pending does nothing.
  h.advance(10_000);
  assert.deepEqual(h.take().filter((e) => e.kind === "send"), []);
});

Deno.test("shaping: a queue past its byte bound is closed too", () => {
  const h = yharness({ limits: { rate: 10, burst: 1, maxQueuedBytes: 4096 } });
  h.open("A");
  h.send("A", { type: "ping" });
  const big = JSON.stringify({ type: "ping", pad: "x".repeat(1500) });
  h.raw("A", big);
  h.raw("A", big);
  assert.deepEqual(closes(h.take()), []);
  h.raw("A", big);
  assert.equal(closes(h.take()).length, 1);
  assert.deepEqual(h.engine.stats.queueClosed, { frames: 0, bytes: 1 });
});

Deno.test("shaping: a client that slows down after a burst stays open and loses nothing", () => {
  const h = yharness({ limits: { rate: 10, burst: 5, maxQueuedFrames: 10 } });
  h.open("A");
  for (let round = 0; round < 50; round++) {
    for (let i = 0; i < 8; i++) h.raw("A", '{"type":"ping"}');
    h.advance(1000);
  }
  const effects = h.take();
  assert.deepEqual(closes(effects), []);
  assert.equal(framesTo(effects, "A").length, 400);
});

Deno.test("shaping: rate 0 turns it off", () => {
  const h = yharness({ limits: { rate: 0, maxQueuedFrames: 1 } });
  h.open("A");
  for (let i = 0; i < 5000; i++) h.raw("A", '{"type":"ping"}');
  assert.equal(h.take().length, 5000);
  assert.equal(h.engine.stats.framesDelayed, 0);
});

Deno.test("shaping: each connection has its own budget", () => {
  const h = yharness({ limits: { rate: 10, burst: 3 } });
  h.open("A");
  h.open("B");
  for (let i = 0; i < 6; i++) h.raw("A", '{"type":"ping"}');
  h.take();
  for (let i = 0; i < 3; i++) h.raw("B", '{"type":"ping"}');
  assert.deepEqual(h.sent().map(([to]) => to), ["B", "B", "B"]);
});

Deno.test("shaping: a nesting bomb passes once, then its debt delays the sender alone", () => {
  const h = yharness({ limits: { rate: 200, burst: 400 } });
  h.open("A");
  h.open("B");
  const bomb = '{"type":"ping","x":' + "[".repeat(30_000) + "]".repeat(30_000) + "}";
  h.raw("A", bomb);
  assert.equal(h.sent().length, 1); // a pong, or an error if the parser refuses the depth
  const debt = frameCost(bomb) - 400;
  h.raw("A", bomb);
  h.raw("A", '{"type":"ping"}');
  assert.deepEqual(h.sent(), []);
  h.raw("B", '{"type":"ping"}');
  assert.deepEqual(h.sent(), [["B", { type: "pong" }]]);
  h.advance((debt * 1000) / 200 + 4);
  assert.deepEqual(h.sent(), []);
  h.advance(1);
  assert.equal(h.sent().length, 1);
  assert.equal(h.conn("A").queued, 1);
});

// ---------------------------------------------------------------- budgets follow what a connection takes part in

Deno.test("budget: grows per topic held and per subscriber shared, and shrinks back", () => {
  const limits = {
    rate: 10,
    burst: 10,
    ratePerTopic: 3,
    burstPerTopic: 20,
    ratePerPeer: 1,
    burstPerPeer: 50,
    receiversPerToken: 0,
  };
  const h = yharness({ limits });
  members(h, "r", 3, "b");
  h.open("A");
  h.subscribe("A", "r", "s");
  // The next frame fits A's budget to 2 topics and 3 shared subscribers.
  h.send("A", { type: "ping" });
  h.take();
  const a = h.conn("A");
  assert.equal(a.peers, 3);
  assert.equal(a.budget!.capacity, 10 + 2 * 20 + 3 * 50);
  assert.equal(a.budget!.rate, 10 + 2 * 3 + 3 * 1);
  // 10 + 40 + 150 tokens, less the subscribe and the ping: 198 more frames pass at once.
  for (let i = 0; i < 199; i++) h.send("A", { type: "ping" });
  assert.equal(framesTo(h.take(), "A").length, 198);
  assert.equal(a.queued, 1);
  // Every subscriber already there shares one more peer.
  h.send("b0", { type: "ping" });
  assert.equal(h.conn("b0").peers, 3);
  assert.equal(h.conn("b0").budget!.capacity, 10 + 20 + 3 * 50);
  // Leaving takes it back.
  h.advance(1000);
  h.send("A", { type: "unsubscribe", topics: ["r", "s"] });
  h.send("A", { type: "ping" });
  h.take();
  assert.equal(a.peers, 0);
  assert.equal(a.budget!.capacity, 10);
  assert.ok(a.budget!.tokens <= 10);
});

Deno.test("budget: subscribing and unsubscribing cannot farm tokens", () => {
  const limits = { rate: 1, burst: 5, burstPerTopic: 100, burstPerPeer: 100, receiversPerToken: 0 };
  const h = yharness({ limits });
  members(h, "r", 1, "b");
  h.open("A");
  h.subscribe("A", "r");
  h.send("A", { type: "ping" }); // fitted: +100 per topic, +100 per peer, once
  h.send("A", { type: "unsubscribe", topics: ["r"] });
  h.take();
  let passed = 0;
  for (let i = 0; i < 50; i++) {
    h.subscribe("A", "r");
    h.send("A", { type: "unsubscribe", topics: ["r"] });
    h.send("A", { type: "ping" });
    passed += framesTo(h.take(), "A").length;
  }
  // Without the once-only credit, each cycle would bring 200 tokens; the bucket is 5.
  assert.ok(passed <= 5, `${passed} pongs`);
  assert.ok(h.conn("A").queued > 100);
});

Deno.test("budget: shared subscribers past MAX_BUDGET_PEERS add nothing", () => {
  const h = yharness({ limits: { maxSubscribersPerTopic: 400, ratePerPeer: 1, burstPerPeer: 2 } });
  members(h, "r", MAX_BUDGET_PEERS + 20, "b");
  h.send("b0", { type: "ping" });
  const b = h.conn("b0");
  assert.equal(b.peers, MAX_BUDGET_PEERS + 19);
  const l = DEFAULT_YLIMITS;
  assert.equal(b.budget!.capacity, l.burst + l.burstPerTopic + 2 * MAX_BUDGET_PEERS);
  assert.equal(b.budget!.rate, l.rate + l.ratePerTopic + MAX_BUDGET_PEERS);
});

Deno.test("cost: a publish pays for its fan-out", () => {
  const h = yharness({ limits: { receiversPerToken: 32, maxSubscribersPerTopic: 100 } });
  members(h, "r", 65);
  const b = h.conn("m0").budget!;
  h.send("m0", { type: "ping" });
  const before = b.tokens;
  h.publish("m0", "r", 1);
  // 1 for the frame, 2 for the 64 receivers beyond the sender.
  assert.equal(before - b.tokens, 1 + 2);
  assert.equal(h.take().length, 1 + 65);
});

Deno.test("budget: an honest client joining a room of 34 answers everyone, never delayed", () => {
  const h = yharness();
  const peers = members(h, "room", 33);
  h.open("N");
  h.subscribe("N", "room");
  h.publish("N", "room", { type: "announce", from: "n" });
  // Every peer offers and trickles 10 candidates; the newcomer answers each
  // and trickles as many, all within a second, all published to the room.
  const signal = {
    type: "signal",
    token: 1,
    signal: {
      type: "candidate",
      candidate: {
        candidate: "candidate:1 1 udp 2122260223 192.0.2.2 51234 typ host",
        sdpMid: "0",
      },
    },
  };
  for (let k = 0; k < 11; k++) {
    for (const p of peers) {
      h.publish(p, "room", { ...signal, to: "n", from: p });
      h.publish("N", "room", { ...signal, to: p, from: "n" });
    }
    h.advance(90);
  }
  assert.equal(h.engine.stats.framesDelayed, 0);
  assert.equal(h.take().filter((e) => e.kind === "wake").length, 0);
  assert.equal(h.engine.stats.publishes, 1 + 2 * 11 * 33);
});

Deno.test("flood: 10x the sustained rate is closed within seconds; others are answered at once", () => {
  const h = yharness();
  h.open("F");
  h.open("G");
  h.subscribe("F", "r");
  h.subscribe("G", "r");
  h.take();
  let closedAt = -1;
  for (let ms = 0; ms < 10_000; ms++) {
    if (closedAt < 0) {
      h.publish("F", "r", ms);
      h.publish("F", "r", ms);
    }
    if (ms % 100 === 0) {
      h.send("G", { type: "ping" });
      assert.deepEqual(framesTo(h.take(), "G").at(-1), { type: "pong" });
    }
    assert.ok(h.conn("F").queued <= DEFAULT_YLIMITS.maxQueuedFrames);
    if (closedAt < 0 && h.conn("F").closed) closedAt = ms;
    h.advance(1);
  }
  assert.ok(closedAt > 0 && closedAt < 10_000, `closed after ${closedAt} ms`);
  assert.equal(h.engine.stats.queueClosed.frames, 1);
});

// ---------------------------------------------------------------- metrics and status

Deno.test("metrics and status: prefixed names, counts, errors by code", () => {
  const h = yharness();
  members(h, "r", 2);
  h.publish("m0", "r");
  h.raw("m0", "nope");
  const families = new Map(h.engine.metrics().map((f) => [f.name, f]));
  for (const name of families.keys()) assert.ok(name.startsWith("ywebrtc_"), name);
  const value = (name: string, label?: string) =>
    families.get(name)!.samples.find(([l]) =>
      label === undefined || Object.values(l ?? {})[0] === label
    )![1];
  assert.equal(value("ywebrtc_connections"), 2);
  assert.equal(value("ywebrtc_topics"), 1);
  assert.equal(value("ywebrtc_subscriptions"), 2);
  assert.equal(value("ywebrtc_publishes_total"), 1);
  assert.equal(value("ywebrtc_deliveries_total"), 2);
  assert.equal(value("ywebrtc_errors_total", "bad-json"), 1);
  assert.equal(value("ywebrtc_frames_in_total", "subscribe"), 2);
  for (
    const n of ["ywebrtc_frames_delayed_total", "ywebrtc_queue_closed_total"]
  ) assert.ok(families.has(n), n);
  const status = h.engine.status();
  assert.ok(status.connect.includes("{ws}"));
  assert.deepEqual(status.counts, [
    ["ywebrtc-connections", "Connections", 2],
    ["ywebrtc-topics", "Topics", 1],
    ["ywebrtc-subscriptions", "Subscriptions", 2],
  ]);
});

Deno.test("codec: withClients matches the reference server's output when re-parsed", () => {
  for (
    const text of [
      '{"type":"publish","topic":"a"}',
      '{"type":"publish","topic":"a","data":{"to":"x","signal":{"sdp":"v=0\\r\\n"}}}',
      ' {"topic":"a","type":"publish","clients":"7"}\t',
      '{"type":"publish","topic":"a","__proto__":{"x":1}}',
    ]
  ) {
    const m = decode(text);
    assert.ok(!isFault(m) && m.type === "publish");
    const reference = JSON.parse(text);
    reference.clients = 3;
    assert.deepEqual(JSON.parse(withClients(m, 3)), reference);
  }
});

// ---------------------------------------------------------------- properties

const TOPICS = ["a", "b", "c", "toolong"];
const SLOTS = 4;

type Entry = string | number | null;
type Action =
  | { t: "close"; slot: number }
  | { t: "subscribe" | "unsubscribe"; slot: number; topics: Entry[]; binary: boolean }
  | { t: "publish"; slot: number; topic: Entry; data: unknown; binary: boolean }
  | { t: "ping"; slot: number; binary: boolean }
  | { t: "garbage"; slot: number; frame: string | Uint8Array; code: string };

const slot = fc.integer({ min: 0, max: SLOTS - 1 });
const entry: fc.Arbitrary<Entry> = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(...TOPICS) },
  fc.constant(null),
  fc.integer(),
);
const action: fc.Arbitrary<Action> = fc.oneof(
  { weight: 1, arbitrary: fc.record({ t: fc.constant("close" as const), slot }) },
  {
    weight: 3,
    arbitrary: fc.record({
      t: fc.constant("subscribe" as const),
      slot,
      topics: fc.array(entry, { maxLength: 4 }),
      binary: fc.boolean(),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      t: fc.constant("unsubscribe" as const),
      slot,
      topics: fc.array(entry, { maxLength: 4 }),
      binary: fc.boolean(),
    }),
  },
  {
    weight: 4,
    arbitrary: fc.record({
      t: fc.constant("publish" as const),
      slot,
      topic: entry,
      data: fc.jsonValue({ maxDepth: 2 }),
      binary: fc.boolean(),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({ t: fc.constant("ping" as const), slot, binary: fc.boolean() }),
  },
  {
    weight: 1,
    arbitrary: fc.tuple(slot, fc.constantFrom(...GARBAGE)).map((
      [slot, [, frame, code]],
    ): Action => ({ t: "garbage", slot, frame, code })),
  },
);

/** The model: topics as ordered subscriber lists, connections as topic lists. */
class Model {
  readonly topics = new Map<string, string[]>();
  readonly held = new Map<string, string[]>();
  constructor(
    readonly maxTopics: number,
    readonly maxSubscribers: number,
    readonly maxLen: number,
  ) {}

  subscribe(c: string, topics: Entry[]): Record<string, unknown>[] {
    const held = this.held.get(c)!;
    let bad = 0;
    const limit: string[] = [];
    const full: string[] = [];
    for (const t of topics) {
      if (typeof t !== "string" || t.length > this.maxLen) bad++;
      else if (held.includes(t)) continue;
      else if (held.length >= this.maxTopics) limit.push(t);
      else if ((this.topics.get(t)?.length ?? 0) >= this.maxSubscribers) full.push(t);
      else {
        held.push(t);
        const subs = this.topics.get(t) ?? [];
        subs.push(c);
        this.topics.set(t, subs);
      }
    }
    const out: Record<string, unknown>[] = [];
    if (bad > 0) out.push({ type: "error", code: "bad-topic" });
    if (limit.length > 0) out.push({ type: "error", code: "topic-limit", topics: limit });
    if (full.length > 0) out.push({ type: "error", code: "topic-full", topics: full });
    return out;
  }

  unsubscribe(c: string, topics: Entry[]): Record<string, unknown>[] {
    const held = this.held.get(c)!;
    let bad = 0;
    for (const t of topics) {
      if (typeof t !== "string") {
        bad++;
        continue;
      }
      const i = held.indexOf(t);
      if (i < 0) continue;
      held.splice(i, 1);
      const subs = this.topics.get(t)!;
      subs.splice(subs.indexOf(c), 1);
      if (subs.length === 0) this.topics.delete(t);
    }
    return bad > 0 ? [{ type: "error", code: "bad-topic" }] : [];
  }

  close(c: string): void {
    this.unsubscribe(c, [...this.held.get(c)!]);
    this.held.delete(c);
  }

  get subscriptions(): number {
    let n = 0;
    for (const h of this.held.values()) n += h.length;
    return n;
  }
}

/** Sends without detail fields, for comparison with the model. */
function withoutDetail(sent: [string, Record<string, unknown>][]): [string, unknown][] {
  return sent.map(([to, m]) => {
    const { detail: _, ...rest } = m;
    return [to, rest];
  });
}

Deno.test("property: every effect is what the model predicts (shaping off)", () => {
  fc.assert(
    fc.property(fc.array(action, { minLength: 1, maxLength: 80, size: "max" }), (actions) => {
      const limits = {
        rate: 0,
        maxTopicsPerConnection: 2,
        maxSubscribersPerTopic: 3,
        maxTopicLength: 3,
      };
      const h = yharness({ limits });
      const model = new Model(2, 3, 3);
      const gen = new Array(SLOTS).fill(0);
      const name = (s: number) => `s${s}.${gen[s]}`;
      const open = (s: number) => {
        h.open(name(s));
        model.held.set(name(s), []);
      };
      for (let s = 0; s < SLOTS; s++) open(s);
      const frame = (m: unknown, binary: boolean) =>
        binary ? utf8.encode(JSON.stringify(m)) : JSON.stringify(m);
      for (const a of actions) {
        const c = name(a.slot);
        let expected: [string, unknown][];
        switch (a.t) {
          case "close":
            // The client goes away, and a new one takes its slot.
            h.close(c);
            model.close(c);
            gen[a.slot]++;
            open(a.slot);
            expected = [];
            break;
          case "subscribe":
          case "unsubscribe":
            h.raw(c, frame({ type: a.t, topics: a.topics }, a.binary));
            expected = model[a.t](c, a.topics).map((m) => [c, m]);
            break;
          case "publish": {
            const m = { type: "publish", topic: a.topic, data: a.data };
            h.raw(c, frame(m, a.binary));
            if (typeof a.topic !== "string") expected = [[c, { type: "error", code: "bad-topic" }]];
            else if (!model.held.get(c)!.includes(a.topic)) {
              expected = [[c, { type: "error", code: "not-subscribed", topics: [a.topic] }]];
            } else {
              const subs = model.topics.get(a.topic)!;
              // What the receivers parse is what the sender sent, with clients.
              const parsed = JSON.parse(JSON.stringify(m));
              expected = subs.map((s) => [s, { ...parsed, clients: subs.length }]);
            }
            break;
          }
          case "ping":
            h.raw(c, frame({ type: "ping" }, a.binary));
            expected = [[c, { type: "pong" }]];
            break;
          case "garbage":
            h.raw(c, a.frame);
            expected = [[c, { type: "error", code: a.code }]];
            break;
        }
        const effects = h.take();
        assert.ok(effects.every((e) => e.kind === "send"), JSON.stringify(effects));
        assert.deepEqual(
          withoutDetail(effects.map((e) => [e.to, JSON.parse((e as { frame: string }).frame)])),
          expected,
        );
        assert.equal(h.engine.topics, model.topics.size);
        assert.equal(h.engine.subscriptions, model.subscriptions);
        assert.equal(h.engine.connections, model.held.size);
        for (const [t, subs] of model.topics) assert.equal(h.engine.count(t), subs.length);
      }
    }),
    { numRuns: 300 },
  );
});

Deno.test("property: shaping delays but never drops or reorders; only a queue past its bound closes", () => {
  type Step = { slot: number; kind: "ping" | "publish" | "advance"; ms: number };
  const step: fc.Arbitrary<Step> = fc.record({
    slot: fc.integer({ min: 0, max: 2 }),
    kind: fc.constantFrom("ping", "publish", "publish", "publish", "publish", "advance"),
    ms: fc.integer({ min: 0, max: 500 }),
  });
  fc.assert(
    fc.property(
      fc.array(step, { maxLength: 300, size: "max" }),
      fc.integer({ min: 1, max: 30 }),
      fc.integer({ min: 1, max: 20 }),
      fc.integer({ min: 4, max: 40 }),
      (steps, rate, burst, maxQueuedFrames) => {
        const h = yharness({
          limits: { rate, burst, burstPerPeer: 1, burstPerTopic: 1, maxQueuedFrames },
        });
        const names = ["p0", "p1", "p2"];
        for (const n of names) {
          h.open(n);
          h.subscribe(n, "r");
        }
        const sent = new Map(names.map((n) => [n, [] as string[]]));
        let seq = 0;
        for (const s of steps) {
          const n = names[s.slot];
          if (s.kind === "advance") {
            h.advance(s.ms);
            continue;
          }
          if (h.conn(n).closed) continue;
          if (s.kind === "ping") {
            h.send(n, { type: "ping" });
            sent.get(n)!.push("pong");
          } else {
            const id = `${n}#${seq++}`;
            h.publish(n, "r", id);
            sent.get(n)!.push(id);
          }
        }
        h.advance(1_000_000);
        const closed = closes(h.effects);
        for (const e of closed) assert.equal((e as { code: number }).code, YCloseCode.policy);
        assert.equal(
          closed.length,
          h.engine.stats.queueClosed.frames + h.engine.stats.queueClosed.bytes,
        );
        for (const n of names) {
          // What a connection got of its own: its pongs and its publishes' echoes, in order.
          const own = framesTo(h.effects, n).flatMap((m) =>
            m.type === "pong"
              ? ["pong"]
              : m.type === "publish" && String(m.data).startsWith(n + "#")
              ? [String(m.data)]
              : []
          );
          const want = sent.get(n)!;
          if (h.conn(n).closed) assert.deepEqual(own, want.slice(0, own.length));
          else assert.deepEqual(own, want);
          // Others' publishes arrive in their sender's order too.
          for (const other of names) {
            if (other === n) continue;
            const theirs = framesTo(h.effects, n).flatMap((m) =>
              m.type === "publish" && String(m.data).startsWith(other + "#") ? [String(m.data)] : []
            );
            const wanted = sent.get(other)!.filter((x) => x !== "pong");
            assert.deepEqual(theirs, wanted.slice(0, theirs.length));
          }
        }
      },
    ),
    { numRuns: 200 },
  );
});
