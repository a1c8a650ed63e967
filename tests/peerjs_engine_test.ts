/**
 * The PeerJS engine on its own: no socket, an injected clock, every effect
 * recorded. The handshake and its every refusal, reconnection with the same
 * token, ID-TAKEN, the relay (src set by the server), the offline queue
 * (delivery on connect, expiry into EXPIRE, bounds per id and in total),
 * heartbeats and the alive timeout, garbage frames, shaping, the HTTP API,
 * metrics, a directory that answers later, and property tests against a
 * model.
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import {
  encodeRelay,
  ERROR_CODES,
  ERROR_MESSAGES,
  HANDSHAKE_MESSAGES,
} from "../lib/peerjs/codec.ts";
import {
  type DirectoryHooks,
  MemoryDirectory,
  type OfflineLimits,
  QUEUED_OVERHEAD,
} from "../lib/peerjs/directory.ts";
import { DEFAULT_PEERJS_LIMITS, MAX_BUDGET_PEERS, PeerjsClose } from "../lib/peerjs/engine.ts";
import { frameCost } from "../lib/shaping.ts";
import { type PEffect, type PHarness, pharness } from "./helpers/peerjs_harness.ts";

const utf8 = new TextEncoder();
const OPEN = { type: "OPEN" };

/** The frames sent to `to` among `effects`, parsed. */
function framesTo(effects: PEffect[], to: string): Record<string, unknown>[] {
  return effects.flatMap((e) => e.kind === "send" && e.to === to ? [JSON.parse(e.frame)] : []);
}

function closes(effects: PEffect[]): { to: string; code: number; reason: string }[] {
  return effects.flatMap((e) =>
    e.kind === "close" ? [{ to: e.to, code: e.code, reason: e.reason }] : []
  );
}

function error(msg: string): Record<string, unknown> {
  return { type: "ERROR", payload: { msg } };
}

/** Opens each of `names` holding the id of its name, effects taken. */
function peers(h: PHarness, ...names: string[]): void {
  for (const n of names) h.connect(n);
  h.take();
}

/** The single frame a step sent, to `name`, with nothing else but wakes. */
function only(h: PHarness, name: string): Record<string, unknown> {
  const effects = h.take().filter((e) => e.kind !== "wake");
  assert.equal(effects.length, 1, JSON.stringify(effects));
  const [m] = framesTo(effects, name);
  assert.ok(m !== undefined, JSON.stringify(effects));
  return m;
}

// ---------------------------------------------------------------- handshake

Deno.test("handshake: a good key and a free id get OPEN; the id is held", () => {
  const h = pharness();
  h.connect("A", "alice");
  assert.deepEqual(h.sent(), [["A", OPEN]]);
  assert.equal(h.engine.ids, 1);
  assert.equal(h.engine.connections, 1);
  assert.equal(h.conn("A").state, "open");
  assert.deepEqual(h.engine.directory.ids("peerjs"), ["alice"]);
  assert.equal(h.engine.stats.handshakes.open, 1);
});

Deno.test("handshake: a missing id, token or key gets ERROR and a close", () => {
  const cases: [string, string][] = [
    ["key=peerjs&token=t", "no id"],
    ["key=peerjs&id=a", "no token"],
    ["id=a&token=t", "no key"],
    ["key=peerjs&id=&token=t", "empty id"],
    ["key=&id=a&token=t", "empty key"],
    ["", "no query at all"],
  ];
  for (const [query, what] of cases) {
    const h = pharness();
    h.open("A", query);
    const msg = HANDSHAKE_MESSAGES["invalid-params"];
    assert.equal(msg, "No id, token, or key supplied to websocket server");
    const effects = h.take();
    assert.deepEqual(framesTo(effects, "A"), [error(msg)], what);
    assert.deepEqual(closes(effects), [{ to: "A", code: PeerjsClose.policy, reason: msg }], what);
    assert.equal(h.engine.connections, 0, what);
    assert.equal(h.engine.ids, 0, what);
    assert.equal(h.engine.stats.handshakes["invalid-params"], 1, what);
    // Frames after the refusal are ignored.
    h.relay("A", "OFFER", "b");
    assert.deepEqual(h.take(), [], what);
  }
});

Deno.test("handshake: an unknown key, an id or token too long: ERROR and a close", () => {
  const h = pharness({ keys: ["k1", "k2"], limits: { maxIdLength: 8, maxTokenLength: 4 } });
  const cases: [string, string, string, string][] = [
    ["A", "a", "tok", "peerjs"],
    ["B", "x".repeat(9), "tok", "k1"],
    ["C", "c", "toolong", "k2"],
  ];
  for (const [name, id, token, key] of cases) h.connect(name, id, token, key);
  const effects = h.take();
  const invalidKey = "Invalid key provided";
  assert.deepEqual(framesTo(effects, "A"), [error(invalidKey)]);
  assert.deepEqual(framesTo(effects, "B"), [error("Invalid id provided")]);
  assert.deepEqual(framesTo(effects, "C"), [error("Invalid token provided")]);
  assert.deepEqual(closes(effects), [
    { to: "A", code: 1008, reason: invalidKey },
    { to: "B", code: 1008, reason: "Invalid id provided" },
    { to: "C", code: 1008, reason: "Invalid token provided" },
  ]);
  // The longest allowed id and token pass, under either key.
  h.connect("D", "x".repeat(8), "tttt", "k2");
  assert.deepEqual(h.sent(), [["D", OPEN]]);
  const s = h.engine.stats.handshakes;
  assert.deepEqual([s["invalid-key"], s["invalid-id"], s["invalid-token"], s.open], [1, 1, 1, 1]);
});

Deno.test("handshake: an id held with another token gets ID-TAKEN; the holder is untouched", () => {
  const h = pharness();
  peers(h, "A", "B");
  h.connect("X", "A", "another-token");
  const effects = h.take();
  assert.deepEqual(framesTo(effects, "X"), [{ type: "ID-TAKEN", payload: { msg: "ID is taken" } }]);
  assert.deepEqual(closes(effects), [{ to: "X", code: 1008, reason: "ID is taken" }]);
  assert.equal(h.engine.stats.handshakes["id-taken"], 1);
  assert.equal(h.engine.ids, 2);
  // The holder still gets its messages.
  h.relay("B", "OFFER", "A", { n: 1 });
  assert.deepEqual(h.sent(), [["A", { type: "OFFER", src: "B", dst: "A", payload: { n: 1 } }]]);
  // The refused connection closing later changes nothing.
  h.close("X");
  assert.equal(h.engine.ids, 2);
});

Deno.test("reconnection: the same id and token take the session over", () => {
  const h = pharness();
  peers(h, "A", "B");
  h.connect("A2", "A", "t-A");
  const effects = h.take();
  // The old connection is closed; the new one is told OPEN.
  assert.deepEqual(closes(effects), [
    { to: "A", code: PeerjsClose.normal, reason: "taken over by a reconnection" },
  ]);
  assert.deepEqual(framesTo(effects, "A2"), [OPEN]);
  assert.equal(h.engine.stats.handshakes.takeover, 1);
  assert.equal(h.engine.ids, 2);
  assert.equal(h.engine.connections, 2);
  // Messages for A reach the new connection, and A2 relays as A.
  h.relay("B", "ANSWER", "A", "x");
  h.relay("A2", "CANDIDATE", "B", "y");
  assert.deepEqual(h.sent(), [
    ["A2", { type: "ANSWER", src: "B", dst: "A", payload: "x" }],
    ["B", { type: "CANDIDATE", src: "A", dst: "B", payload: "y" }],
  ]);
  // The old socket's close, when the transport reports it, does not release the id.
  h.close("A");
  assert.equal(h.engine.ids, 2);
  h.relay("A", "OFFER", "B");
  assert.deepEqual(h.take(), []);
  assert.deepEqual(h.engine.directory.ids("peerjs"), ["A", "B"]);
  // The new one's close does.
  h.close("A2");
  assert.deepEqual(h.engine.directory.ids("peerjs"), ["B"]);
  // And then the id is free for anyone.
  h.connect("Z", "A", "other");
  assert.deepEqual(h.sent(), [["Z", OPEN]]);
});

Deno.test("keys: each key is a namespace of its own", () => {
  const h = pharness({ keys: ["one", "two"] });
  h.connect("A1", "a", "t1", "one");
  h.connect("A2", "a", "t2", "two");
  h.connect("B1", "b", "t3", "one");
  assert.deepEqual(h.sent(), [["A1", OPEN], ["A2", OPEN], ["B1", OPEN]]);
  h.relay("B1", "OFFER", "a", 1);
  assert.deepEqual(h.sent(), [["A1", { type: "OFFER", src: "b", dst: "a", payload: 1 }]]);
  // b does not exist under "two": the message waits there.
  h.relay("A2", "OFFER", "b", 2);
  assert.deepEqual(h.sent(), []);
  assert.equal(h.engine.directory.queued, 1);
  assert.deepEqual(h.engine.directory.ids("one"), ["a", "b"]);
  assert.deepEqual(h.engine.directory.ids("two"), ["a"]);
});

Deno.test("limit: the concurrent limit refuses new ids, not reconnections", () => {
  const h = pharness({ limits: { concurrentLimit: 2 } });
  peers(h, "A", "B");
  h.connect("C");
  const msg = "Server has reached its concurrent user limit";
  const effects = h.take();
  assert.deepEqual(framesTo(effects, "C"), [error(msg)]);
  assert.deepEqual(closes(effects), [{ to: "C", code: PeerjsClose.tryAgainLater, reason: msg }]);
  assert.deepEqual(h.engine.directory.ids("peerjs"), ["A", "B"]);
  assert.equal(h.engine.stats.handshakes.limit, 1);
  // A reconnection is not a new id.
  h.connect("A2", "A", "t-A");
  assert.deepEqual(framesTo(h.take(), "A2"), [OPEN]);
  // Room is made by a close.
  h.close("B");
  h.connect("C2", "C");
  assert.deepEqual(h.sent(), [["C2", OPEN]]);
  assert.equal(h.engine.ids, 2);
});

// ---------------------------------------------------------------- relay

Deno.test("relay: every type reaches dst with src set by the server", () => {
  const h = pharness();
  peers(h, "a", "b");
  const payload = { sdp: { type: "offer", sdp: "v=0\r\n" }, connectionId: "dc_1", type: "data" };
  for (const type of ["OFFER", "ANSWER", "CANDIDATE", "LEAVE", "EXPIRE"]) {
    h.relay("a", type, "b", payload);
    assert.deepEqual(h.take(), [{
      kind: "send",
      to: "b",
      frame: JSON.stringify({ type, src: "a", dst: "b", payload }),
    }]);
  }
  assert.deepEqual(
    [...Object.entries(h.engine.stats.framesIn)],
    [["HEARTBEAT", 0], ["OFFER", 1], ["ANSWER", 1], ["CANDIDATE", 1], ["LEAVE", 1], ["EXPIRE", 1]],
  );
  assert.equal(h.engine.stats.relayed.delivered, 5);
});

Deno.test("relay: a client's src is never trusted; other fields are dropped", () => {
  const h = pharness();
  peers(h, "a", "b", "c");
  h.send("a", { type: "OFFER", src: "c", dst: "b", payload: 1, extra: "x", token: "t-c" });
  h.send("a", { type: "ANSWER", src: "a", dst: "b" });
  h.send("a", { type: "CANDIDATE", src: { id: "c" }, dst: "b", payload: null });
  assert.deepEqual(h.take(), [
    { kind: "send", to: "b", frame: '{"type":"OFFER","src":"a","dst":"b","payload":1}' },
    // An absent payload stays absent, as in peer.
    { kind: "send", to: "b", frame: '{"type":"ANSWER","src":"a","dst":"b"}' },
    { kind: "send", to: "b", frame: '{"type":"CANDIDATE","src":"a","dst":"b","payload":null}' },
  ]);
  // Two frames claimed another src; the honest one is not counted.
  assert.equal(h.engine.stats.srcOverridden, 2);
  assert.deepEqual(framesTo(h.effects, "c"), [OPEN]);
});

Deno.test("relay: to oneself, from binary UTF-8 frames, with deep or unicode payloads", () => {
  const h = pharness({ limits: { rate: 0 } });
  peers(h, "a", "b");
  h.relay("a", "CANDIDATE", "a", "self");
  assert.deepEqual(h.sent(), [["a", { type: "CANDIDATE", src: "a", dst: "a", payload: "self" }]]);
  h.raw("a", utf8.encode('{"type":"OFFER","dst":"b","payload":"é✓"}'));
  assert.deepEqual(h.sent(), [["b", { type: "OFFER", src: "a", dst: "b", payload: "é✓" }]]);
  const deep = "[".repeat(20_000) + "]".repeat(20_000);
  h.raw("a", `{"type":"OFFER","dst":"b","payload":${deep}}`);
  const [e] = h.take();
  assert.deepEqual(e, {
    kind: "send",
    to: "b",
    frame: `{"type":"OFFER","src":"a","dst":"b","payload":${deep}}`,
  });
});

Deno.test("heartbeat: not answered, counted", () => {
  const h = pharness();
  peers(h, "a");
  h.send("a", { type: "HEARTBEAT" });
  h.raw("a", utf8.encode('{"type":"HEARTBEAT","extra":1}'));
  assert.deepEqual(h.take(), []);
  assert.equal(h.engine.stats.framesIn.HEARTBEAT, 2);
});

// ---------------------------------------------------------------- offline queue

Deno.test("offline: messages for an id not connected are delivered, in order, when it connects", () => {
  const h = pharness();
  peers(h, "a");
  h.relay("a", "OFFER", "late", { sdp: 1 });
  h.relay("a", "CANDIDATE", "late", { c: 1 });
  h.relay("a", "CANDIDATE", "late", { c: 2 });
  // LEAVE and EXPIRE do not wait, as in peer.
  h.relay("a", "LEAVE", "late");
  h.relay("a", "EXPIRE", "late");
  assert.deepEqual(h.sent(), []);
  assert.equal(h.engine.directory.queued, 3);
  assert.deepEqual(h.engine.stats.relayed, {
    delivered: 0,
    queued: 3,
    dropped: 2,
    "full-id": 0,
    "full-total": 0,
  });
  h.advance(4999);
  assert.deepEqual(h.sent(), []);
  h.connect("L", "late");
  assert.deepEqual(h.sent(), [
    ["L", OPEN],
    ["L", { type: "OFFER", src: "a", dst: "late", payload: { sdp: 1 } }],
    ["L", { type: "CANDIDATE", src: "a", dst: "late", payload: { c: 1 } }],
    ["L", { type: "CANDIDATE", src: "a", dst: "late", payload: { c: 2 } }],
  ]);
  assert.equal(h.engine.directory.queued, 0);
  assert.equal(h.engine.directory.queuedBytes, 0);
  assert.equal(h.engine.stats.offlineDelivered, 3);
  // Nothing expires later: the queue is gone.
  h.advance(10_000);
  assert.deepEqual(h.sent(), []);
});

Deno.test("offline: a queue expires 5 s after its first message; each sender gets one EXPIRE", () => {
  const h = pharness();
  peers(h, "a", "b");
  h.relay("a", "OFFER", "x");
  h.advance(4000);
  h.relay("b", "OFFER", "x");
  h.relay("a", "CANDIDATE", "x");
  h.relay("a", "OFFER", "y");
  h.take();
  h.advance(999);
  assert.deepEqual(h.sent(), []);
  h.advance(1);
  // Queue x (first message at 0) is due at 5000, every message in it with it.
  assert.deepEqual(h.sent(), [
    ["a", { type: "EXPIRE", src: "x", dst: "a" }],
    ["b", { type: "EXPIRE", src: "x", dst: "b" }],
  ]);
  assert.equal(h.engine.directory.queued, 1);
  h.advance(3999);
  assert.deepEqual(h.sent(), []);
  h.advance(1);
  assert.deepEqual(h.sent(), [["a", { type: "EXPIRE", src: "y", dst: "a" }]]);
  assert.equal(h.engine.stats.expired.timeout, 3);
  assert.equal(h.engine.directory.queued, 0);
  // x connecting now gets nothing but OPEN.
  h.connect("X", "x");
  assert.deepEqual(h.sent(), [["X", OPEN]]);
});

Deno.test("offline: a sender that left gets no EXPIRE; a reconnected sender does", () => {
  const h = pharness();
  peers(h, "a", "b");
  h.relay("a", "OFFER", "x");
  h.relay("b", "OFFER", "x");
  h.close("a");
  h.close("b");
  h.connect("B2", "b");
  h.take();
  h.advance(5000);
  assert.deepEqual(h.sent(), []);
  // The sweep runs with the next thing the engine hears of.
  h.send("B2", { type: "HEARTBEAT" });
  assert.deepEqual(h.sent(), [["B2", { type: "EXPIRE", src: "x", dst: "b" }]]);
  assert.equal(h.engine.directory.queued, 0);
});

Deno.test("offline: a takeover gets what waited too", () => {
  const h = pharness();
  peers(h, "a", "b");
  h.close("b");
  h.relay("a", "OFFER", "b", 1);
  h.connect("B2", "b", "t-b");
  assert.deepEqual(h.sent(), [
    ["B2", OPEN],
    ["B2", { type: "OFFER", src: "a", dst: "b", payload: 1 }],
  ]);
});

Deno.test("offline: bounded per id; a message that does not fit gets EXPIRE at once", () => {
  const h = pharness({ limits: { maxOfflinePerId: 3 } });
  peers(h, "a", "b");
  for (let i = 0; i < 3; i++) h.relay("a", "CANDIDATE", "x", i);
  assert.deepEqual(h.sent(), []);
  h.relay("a", "CANDIDATE", "x", 3);
  assert.deepEqual(h.sent(), [["a", { type: "EXPIRE", src: "x", dst: "a" }]]);
  // Once per destination per expiry period, however many do not fit.
  h.relay("a", "CANDIDATE", "x", 4);
  assert.deepEqual(h.sent(), []);
  h.relay("b", "OFFER", "x");
  assert.deepEqual(h.sent(), [["b", { type: "EXPIRE", src: "x", dst: "b" }]]);
  // Another id has room of its own.
  h.relay("a", "OFFER", "y");
  assert.deepEqual(h.sent(), []);
  assert.equal(h.engine.stats.relayed["full-id"], 3);
  assert.equal(h.engine.stats.expired.full, 2);
  assert.equal(h.engine.directory.queued, 4);
  // The queue expires as usual; x connecting gets the three that fit.
  h.advance(5000);
  assert.deepEqual(h.sent(), [
    ["a", { type: "EXPIRE", src: "x", dst: "a" }],
    ["a", { type: "EXPIRE", src: "y", dst: "a" }],
  ]);
  for (let i = 0; i < 3; i++) h.relay("a", "CANDIDATE", "x", i);
  h.connect("X", "x");
  assert.deepEqual(h.sent().map(([to, m]) => [to, m.type, m.payload]), [
    ["X", "OPEN", undefined],
    ["X", "CANDIDATE", 0],
    ["X", "CANDIDATE", 1],
    ["X", "CANDIDATE", 2],
  ]);
  // A queue bound of 0 keeps nothing.
  const none = pharness({ limits: { maxOfflinePerId: 0 } });
  peers(none, "a");
  none.relay("a", "OFFER", "x");
  assert.deepEqual(none.sent(), [["a", { type: "EXPIRE", src: "x", dst: "a" }]]);
  assert.equal(none.engine.directory.queued, 0);
});

Deno.test("offline: bounded in total bytes", () => {
  const frame = encodeRelay("OFFER", "a", "x0", "p".repeat(100));
  const size = frame.length + QUEUED_OVERHEAD;
  const h = pharness({ limits: { maxOfflineBytes: 3 * size } });
  peers(h, "a");
  for (let i = 0; i < 3; i++) h.relay("a", "OFFER", `x${i}`, "p".repeat(100));
  assert.equal(h.engine.directory.queuedBytes, 3 * size);
  h.relay("a", "OFFER", "x3", "p".repeat(100));
  assert.deepEqual(h.sent(), [["a", { type: "EXPIRE", src: "x3", dst: "a" }]]);
  assert.equal(h.engine.stats.relayed["full-total"], 1);
  // Freed by a delivery.
  h.connect("X0", "x0");
  h.take();
  h.relay("a", "OFFER", "x3", "p".repeat(100));
  assert.deepEqual(h.sent(), []);
  assert.equal(h.engine.directory.queued, 3);
});

// ---------------------------------------------------------------- alive

Deno.test("alive: a connection silent for the alive timeout is closed; heartbeats keep it", () => {
  const h = pharness({ limits: { aliveTimeout: 90_000, rate: 0 } });
  peers(h, "quiet", "chatty");
  for (let t = 0; t < 89_000; t += 5000) {
    h.advance(5000);
    h.send("chatty", { type: "HEARTBEAT" });
  }
  assert.deepEqual(closes(h.take()), [
    { to: "quiet", code: PeerjsClose.normal, reason: "alive timeout" },
  ]);
  assert.equal(h.engine.stats.aliveTimeouts, 1);
  assert.deepEqual(h.engine.directory.ids("peerjs"), ["chatty"]);
  // Any frame counts as a sign of life.
  h.advance(85_000);
  h.relay("chatty", "OFFER", "nobody");
  h.advance(89_999);
  assert.deepEqual(closes(h.take()), []);
  h.advance(1);
  assert.deepEqual(closes(h.take()), [{ to: "chatty", code: 1000, reason: "alive timeout" }]);
  // 0 turns it off.
  const off = pharness({ limits: { aliveTimeout: 0 } });
  peers(off, "a");
  off.advance(10_000_000);
  assert.deepEqual(off.take(), []);
});

// ---------------------------------------------------------------- garbage

const GARBAGE: [string, string | Uint8Array, string][] = [
  ["not JSON", "{type:'HEARTBEAT'}", "bad-json"],
  ["empty", "", "bad-json"],
  ["truncated", '{"type":"OFFER","dst":"b"', "bad-json"],
  ["binary not UTF-8", new Uint8Array([0x7b, 0xff, 0x7d]), "bad-json"],
  ["an array", '["OFFER","b"]', "bad-frame"],
  ["a number", "42", "bad-frame"],
  ["null", "null", "bad-frame"],
  ["a string", '"HEARTBEAT"', "bad-frame"],
  ["no type", '{"dst":"b"}', "bad-frame"],
  ["a numeric type", '{"type":1,"dst":"b"}', "bad-frame"],
  ["a null type", '{"type":null}', "bad-frame"],
  ["lower case", '{"type":"heartbeat"}', "unknown-type"],
  ["a server type", '{"type":"OPEN"}', "unknown-type"],
  ["ID-TAKEN from a client", '{"type":"ID-TAKEN","dst":"b"}', "unknown-type"],
  ["ERROR from a client", '{"type":"ERROR","payload":{"msg":"x"}}', "unknown-type"],
  ["no dst", '{"type":"OFFER","payload":{}}', "bad-dst"],
  ["a LEAVE without dst", '{"type":"LEAVE"}', "bad-dst"],
  ["a numeric dst", '{"type":"ANSWER","dst":5}', "bad-dst"],
  ["an empty dst", '{"type":"CANDIDATE","dst":""}', "bad-dst"],
  ["a null dst", '{"type":"EXPIRE","dst":null}', "bad-dst"],
  ["an array dst", '{"type":"OFFER","dst":["b"]}', "bad-dst"],
  ["a dst too long", JSON.stringify({ type: "OFFER", dst: "d".repeat(257) }), "bad-dst"],
];

Deno.test("garbage: each malformed frame gets one ERROR, changes nothing, and is counted", () => {
  const h = pharness();
  peers(h, "a", "b");
  for (const [what, frame, code] of GARBAGE) {
    h.raw("a", frame);
    assert.deepEqual(
      only(h, "a"),
      error(ERROR_MESSAGES[code as keyof typeof ERROR_MESSAGES]),
      what,
    );
    assert.equal(h.engine.ids, 2, what);
    assert.equal(h.engine.directory.queued, 0, what);
  }
  const byCode: Record<string, number> = {};
  for (const [, , code] of GARBAGE) byCode[code] = (byCode[code] ?? 0) + 1;
  for (const code of ERROR_CODES) assert.equal(h.engine.stats.errors[code], byCode[code] ?? 0);
  assert.equal(h.engine.stats.relayed.delivered, 0);
  // The connection still works.
  h.relay("a", "OFFER", "b");
  assert.deepEqual(h.sent(), [["b", { type: "OFFER", src: "a", dst: "b" }]]);
});

Deno.test("garbage: an oversize frame gets ERROR and a close with 1009", () => {
  const h = pharness({ limits: { maxFrameBytes: 100 } });
  peers(h, "a", "b");
  h.relay("a", "OFFER", "b", "é".repeat(50));
  const effects = h.take();
  assert.deepEqual(framesTo(effects, "a"), [error("Message is too large: over 100 bytes")]);
  assert.deepEqual(closes(effects), [{ to: "a", code: 1009, reason: "frame too large" }]);
  assert.deepEqual(framesTo(effects, "b"), []);
  // The transport's own check calls oversize.
  h.engine.oversize(h.conn("b"));
  assert.equal(closes(h.take()).length, 1);
  assert.equal(h.engine.connections, 0);
  assert.equal(h.engine.ids, 0);
  assert.equal(h.engine.stats.errors["too-large"], 2);
  // Late calls on closed connections do nothing.
  h.engine.oversize(h.conn("b"));
  h.engine.wake(h.conn("b"));
  h.close("b");
  assert.deepEqual(h.take(), []);
});

// ---------------------------------------------------------------- shaping

Deno.test("shaping: a burst passes at once, the rest waits and is relayed in order", () => {
  const limits = { rate: 10, burst: 5, burstPerPeer: 0, ratePerPeer: 0, aliveTimeout: 0 };
  const h = pharness({ limits });
  peers(h, "a", "b");
  for (let i = 0; i < 8; i++) h.relay("a", "CANDIDATE", "b", i);
  const first = h.take();
  assert.equal(framesTo(first, "b").length, 5);
  assert.deepEqual(first.filter((e) => e.kind === "wake"), [{
    kind: "wake",
    to: "a",
    at: h.now + 100,
  }]);
  assert.equal(h.engine.stats.framesDelayed, 3);
  assert.equal(h.conn("a").queued, 3);
  h.advance(99);
  assert.deepEqual(h.take(), []);
  h.advance(1);
  assert.deepEqual(framesTo(h.take(), "b").map((m) => m.payload), [5]);
  h.advance(10_000);
  assert.deepEqual(framesTo(h.take(), "b").map((m) => m.payload), [6, 7]);
  assert.equal(h.conn("a").queued, 0);
});

Deno.test("shaping: a queue past its bound is closed with 1008, said why, and counted", () => {
  const h = pharness({ limits: { rate: 10, burst: 5, maxQueuedFrames: 20, burstPerPeer: 0 } });
  peers(h, "a", "b");
  for (let i = 0; i < 25; i++) h.send("a", { type: "HEARTBEAT" });
  assert.deepEqual(closes(h.take()), []);
  assert.equal(h.conn("a").queued, 20);
  h.send("a", { type: "HEARTBEAT" });
  const effects = h.take();
  assert.deepEqual(framesTo(effects, "a"), [
    error("Sending faster than allowed: more than 20 frames waiting"),
  ]);
  assert.deepEqual(closes(effects), [{ to: "a", code: 1008, reason: "rate limit abuse" }]);
  assert.deepEqual(h.engine.stats.queueClosed, { frames: 1, bytes: 0 });
  assert.deepEqual(h.engine.directory.ids("peerjs"), ["b"]);
  h.advance(10_000);
  assert.deepEqual(h.take().filter((e) => e.kind === "send"), []);

  const bytes = pharness({ limits: { rate: 10, burst: 1, maxQueuedBytes: 4096 } });
  peers(bytes, "a");
  bytes.send("a", { type: "HEARTBEAT" });
  const big = JSON.stringify({ type: "HEARTBEAT", pad: "x".repeat(1500) });
  bytes.raw("a", big);
  bytes.raw("a", big);
  assert.deepEqual(closes(bytes.take()), []);
  bytes.raw("a", big);
  assert.equal(closes(bytes.take()).length, 1);
  assert.deepEqual(bytes.engine.stats.queueClosed, { frames: 0, bytes: 1 });
});

Deno.test("shaping: each connection has its own budget; rate 0 turns it off", () => {
  const h = pharness({ limits: { rate: 10, burst: 3 } });
  peers(h, "a", "b", "c");
  for (let i = 0; i < 6; i++) h.relay("a", "CANDIDATE", "c", i);
  h.take();
  for (let i = 0; i < 3; i++) h.relay("b", "CANDIDATE", "c", i);
  assert.equal(h.sent().length, 3);

  const off = pharness({ limits: { rate: 0, maxQueuedFrames: 1 } });
  peers(off, "a", "b");
  for (let i = 0; i < 5000; i++) off.relay("a", "CANDIDATE", "b", i);
  assert.equal(off.sent().length, 5000);
  assert.equal(off.engine.stats.framesDelayed, 0);
});

Deno.test("shaping: a message that waits for an offline id costs queuedCost more", () => {
  const h = pharness({ limits: { queuedCost: 3, burstPerPeer: 0, ratePerPeer: 0 } });
  peers(h, "a", "b");
  const budget = h.conn("a").budget!;
  h.relay("a", "OFFER", "b");
  const before = budget.tokens;
  h.relay("a", "OFFER", "b");
  assert.equal(before - budget.tokens, 1);
  h.relay("a", "OFFER", "offline");
  assert.equal(before - budget.tokens, 1 + 1 + 3);
  const frame = JSON.stringify({ type: "OFFER", dst: "b", payload: "x".repeat(3000) });
  h.raw("a", frame);
  assert.equal(before - budget.tokens, 5 + frameCost(frame));
});

Deno.test("budget: grows per distinct peer delivered to, within the window, capped", () => {
  const limits = {
    rate: 10,
    burst: 10,
    ratePerPeer: 1,
    burstPerPeer: 20,
    peerWindowMs: 60_000,
    aliveTimeout: 0,
  };
  const h = pharness({ limits });
  const names = ["a", "p0", "p1", "p2"];
  peers(h, ...names);
  for (const p of ["p0", "p1", "p2"]) h.relay("a", "OFFER", p);
  // Signalling ids that are not connected grows nothing.
  for (let i = 0; i < 3; i++) h.relay("a", "OFFER", `offline${i}`);
  h.send("a", { type: "HEARTBEAT" }); // the next frame fits the budget
  const a = h.conn("a");
  assert.equal(a.peers, 3);
  assert.equal(a.budget!.capacity, 10 + 3 * 20);
  assert.equal(a.budget!.rate, 10 + 3);
  // Peers age out of the window, and the budget shrinks back.
  h.advance(60_000);
  h.send("a", { type: "HEARTBEAT" });
  assert.equal(a.peers, 0);
  assert.equal(a.budget!.capacity, 10);
  assert.equal(a.budget!.rate, 10);
  assert.ok(a.budget!.tokens <= 10);

  // Capped at MAX_BUDGET_PEERS: the least recent are forgotten first.
  const capped = pharness({ limits: { ...limits, rate: 1000, burst: 1000 } });
  const many = Array.from({ length: MAX_BUDGET_PEERS + 10 }, (_, i) => `q${i}`);
  peers(capped, "a", ...many);
  for (const p of many) capped.relay("a", "CANDIDATE", p);
  capped.send("a", { type: "HEARTBEAT" });
  const c = capped.conn("a");
  assert.equal(capped.engine.stats.framesDelayed, 0);
  assert.equal(c.peers, MAX_BUDGET_PEERS);
  assert.deepEqual([...c.recent.keys()], many.slice(10));
  assert.equal(c.budget!.capacity, 1000 + 20 * MAX_BUDGET_PEERS);
  assert.equal(c.budget!.rate, 1000 + MAX_BUDGET_PEERS);
});

Deno.test("budget: peers ageing out and coming back cannot farm tokens", () => {
  const limits = { rate: 1, burst: 5, burstPerPeer: 100, peerWindowMs: 1000, aliveTimeout: 0 };
  const h = pharness({ limits });
  peers(h, "a", "b");
  h.relay("a", "OFFER", "b"); // b counts from the next frame on: +100, once
  h.send("a", { type: "HEARTBEAT" });
  h.take();
  let passed = 0;
  for (let i = 0; i < 50; i++) {
    h.advance(1000); // b ages out...
    for (let k = 0; k < 200; k++) h.relay("a", "CANDIDATE", "b", k); // ...and comes back
    passed += framesTo(h.take(), "b").length;
    if (h.conn("a").state === "closed") break;
  }
  // At most the burst, one credit of 100 and the refill of 3 a second: without the
  // once-only credit, each cycle would bring 100 more.
  assert.ok(passed <= 5 + 100 + 3 * 50, `${passed} relayed`);
  assert.equal(h.conn("a").state, "closed");
  assert.equal(h.engine.stats.queueClosed.frames, 1);
});

Deno.test("budget: an honest client opening 30 data connections at once is never delayed", () => {
  const h = pharness();
  const remote = Array.from({ length: 30 }, (_, i) => `r${i}`);
  peers(h, "me", ...remote);
  const candidate = {
    candidate: { candidate: "candidate:1 1 udp 2122260223 192.0.2.2 51234 typ host", sdpMid: "0" },
    type: "data",
    connectionId: "dc_x",
  };
  for (let round = 0; round < 3; round++) {
    for (const r of remote) {
      h.relay("me", "OFFER", r, { sdp: { type: "offer", sdp: "v=0\r\n".repeat(200) } });
      h.relay(r, "ANSWER", "me", { sdp: { type: "answer", sdp: "v=0\r\n".repeat(200) } });
      for (let c = 0; c < 8; c++) {
        h.relay("me", "CANDIDATE", r, candidate);
        h.relay(r, "CANDIDATE", "me", candidate);
      }
    }
    h.advance(5000);
    h.send("me", { type: "HEARTBEAT" });
  }
  assert.equal(h.engine.stats.framesDelayed, 0);
  assert.equal(h.engine.stats.relayed.delivered, 3 * 30 * 18);
});

Deno.test("flood: 10x the sustained rate is closed within seconds; others are answered at once", () => {
  const h = pharness();
  peers(h, "f", "g", "sink");
  let closedAt = -1;
  for (let ms = 0; ms < 10_000; ms++) {
    if (closedAt < 0) {
      h.relay("f", "CANDIDATE", "sink", ms);
      h.relay("f", "CANDIDATE", "sink", ms);
    }
    if (ms % 100 === 0) {
      h.relay("g", "CANDIDATE", "sink", "g");
      assert.deepEqual(framesTo(h.take(), "sink").at(-1)?.payload, "g");
    }
    if (closedAt < 0 && h.conn("f").state === "closed") closedAt = ms;
    h.advance(1);
  }
  assert.ok(closedAt > 0 && closedAt < 10_000, `closed after ${closedAt} ms`);
  assert.equal(h.engine.stats.queueClosed.frames, 1);
});

// ---------------------------------------------------------------- a directory that answers later

/** A memory directory whose claims are answered when the test says so, as a cluster's would be. */
class LaterDirectory extends MemoryDirectory {
  readonly pending: { conn: number; answer: () => void }[] = [];
  override claim(conn: number, key: string, id: string, token: string): void {
    this.pending.push({ conn, answer: () => super.claim(conn, key, id, token) });
  }
  override release(conn: number, key: string, id: string): void {
    // A pending claim is cancelled: no answer comes for it.
    const i = this.pending.findIndex((p) => p.conn === conn);
    if (i >= 0) this.pending.splice(i, 1);
    super.release(conn, key, id);
  }
  answer(): void {
    this.pending.shift()!.answer();
  }
}

function later(): { dir: () => LaterDirectory; directory: PHarnessDirectory } {
  let made: LaterDirectory | undefined;
  return {
    dir: () => made!,
    directory: (hooks, limits) => made = new LaterDirectory(hooks, limits),
  };
}

type PHarnessDirectory = (hooks: DirectoryHooks, limits: OfflineLimits) => MemoryDirectory;

Deno.test("later directory: frames wait for the claim's answer, then run in order", () => {
  const l = later();
  const h = pharness({ directory: l.directory });
  h.connect("b");
  l.dir().answer();
  h.connect("a");
  h.take();
  h.relay("a", "OFFER", "b", 1);
  h.send("a", { type: "HEARTBEAT" });
  h.relay("a", "CANDIDATE", "b", 2);
  h.raw("a", "garbage");
  assert.deepEqual(h.sent(), []);
  assert.equal(h.conn("a").state, "pending");
  assert.equal(h.conn("a").queued, 4);
  l.dir().answer();
  assert.deepEqual(h.sent(), [
    ["a", OPEN],
    ["b", { type: "OFFER", src: "a", dst: "b", payload: 1 }],
    ["b", { type: "CANDIDATE", src: "a", dst: "b", payload: 2 }],
    ["a", error("Message is not JSON")],
  ]);
  assert.equal(h.conn("a").queued, 0);
});

Deno.test("later directory: a refusal drops the waiting frames; a close cancels the claim", () => {
  const l = later();
  const h = pharness({ directory: l.directory });
  h.connect("b");
  l.dir().answer();
  h.connect("x", "b", "wrong");
  h.relay("x", "OFFER", "b");
  h.take();
  l.dir().answer();
  const effects = h.take();
  assert.deepEqual(framesTo(effects, "x"), [{ type: "ID-TAKEN", payload: { msg: "ID is taken" } }]);
  assert.deepEqual(framesTo(effects, "b"), []);
  // A connection that goes away before its answer never holds the id.
  h.connect("c");
  h.close("c");
  assert.equal(l.dir().pending.length, 0);
  assert.deepEqual(h.engine.directory.ids("peerjs"), ["b"]);
  assert.equal(h.engine.connections, 1);
  // A pending connection is held to the alive timeout too.
  h.connect("d");
  h.advance(DEFAULT_PEERJS_LIMITS.aliveTimeout);
  assert.deepEqual(closes(h.take()), [
    { to: "b", code: 1000, reason: "alive timeout" },
    { to: "d", code: 1000, reason: "alive timeout" },
  ]);
});

// ---------------------------------------------------------------- HTTP

Deno.test("http: description, id and peers under /, by key, with CORS", async () => {
  let n = 0;
  const h = pharness({ keys: ["peerjs", "k2"], newId: () => `id-${++n}` });
  const get = (path: string, init?: RequestInit) =>
    h.engine.http(new Request(`http://x${path}`, init));
  // `/` is the status page's unless the request is PeerJS's.
  assert.equal(get("/"), undefined);
  assert.equal(get("/", { headers: { accept: "text/html" } }), undefined);
  for (
    const r of [
      get("/", { headers: { accept: "application/json" } }),
      get("/?ts=1&version=1.5.5"),
      get("/?key=peerjs"),
    ]
  ) {
    assert.equal(r?.status, 200);
    assert.equal(r.headers.get("content-type"), "application/json; charset=utf-8");
    assert.deepEqual(await r.json(), {
      name: "PeerJS Server",
      description: "A server side element to broker connections between PeerJS clients.",
      website: "https://peerjs.com/",
    });
  }
  const id = get("/peerjs/id?ts=1&version=1.5.5", { headers: { origin: "https://app.example" } })!;
  assert.equal(id.status, 200);
  assert.equal(id.headers.get("content-type"), "text/html; charset=utf-8");
  assert.equal(id.headers.get("access-control-allow-origin"), "https://app.example");
  assert.equal(id.headers.get("vary"), "Origin");
  assert.equal(await id.text(), "id-1");
  assert.equal(await get("/k2/id")!.text(), "id-2");
  const bad = get("/nope/id", { headers: { origin: "https://app.example" } })!;
  assert.equal(bad.status, 401);
  assert.equal(bad.headers.get("access-control-allow-origin"), "https://app.example");
  await bad.body?.cancel();
  // Discovery is off by default.
  const peersOff = get("/peerjs/peers")!;
  assert.equal(peersOff.status, 401);
  await peersOff.body?.cancel();
  // HEAD: no body. Preflight: 204 with what was asked. Other methods: not ours.
  const head = get("/peerjs/id", { method: "HEAD" })!;
  assert.equal(head.status, 200);
  assert.equal(head.body, null);
  const pre = get("/peerjs/id", {
    method: "OPTIONS",
    headers: { origin: "https://o.example", "access-control-request-headers": "x-a" },
  })!;
  assert.equal(pre.status, 204);
  assert.equal(pre.headers.get("access-control-allow-origin"), "https://o.example");
  assert.equal(pre.headers.get("access-control-allow-methods"), "GET,HEAD");
  assert.equal(pre.headers.get("access-control-allow-headers"), "x-a");
  assert.equal(get("/peerjs/id", { method: "POST", body: "x" }), undefined);
  // Paths that are not the API's.
  for (const p of ["/peerjs", "/peerjs/", "/peerjs/id/x", "/a/b/id", "/healthz", "/metrics"]) {
    assert.equal(get(p), undefined, p);
  }
  assert.deepEqual(h.engine.stats.http, {
    requests: { description: 3, id: 4, peers: 1, preflight: 1 },
    unauthorized: 2,
  });
});

Deno.test("http: discovery lists the ids of a key; a base path and an origin allowlist", async () => {
  const h = pharness({
    keys: ["k1", "k2"],
    path: "/myapp/",
    allowDiscovery: true,
    corsOrigins: ["https://ok.example"],
  });
  h.connect("A", "a", "t", "k1");
  h.connect("B", "b", "t", "k1");
  h.connect("C", "a", "t", "k2");
  const get = (path: string, init?: RequestInit) =>
    h.engine.http(new Request(`http://x${path}`, init));
  assert.equal(h.engine.wsPath, "/myapp/peerjs");
  const list = get("/myapp/k1/peers", { headers: { origin: "https://ok.example" } })!;
  assert.equal(list.status, 200);
  assert.equal(list.headers.get("access-control-allow-origin"), "https://ok.example");
  assert.deepEqual(await list.json(), ["a", "b"]);
  const other = get("/myapp/k2/peers", { headers: { origin: "https://evil.example" } })!;
  assert.equal(other.headers.get("access-control-allow-origin"), null);
  assert.deepEqual(await other.json(), ["a"]);
  // Under a base path, the path itself is the description's; without its slash only for PeerJS.
  assert.equal(get("/myapp/")?.status, 200);
  assert.equal(get("/myapp"), undefined);
  assert.equal(get("/myapp", { headers: { accept: "application/json" } })?.status, 200);
  assert.equal(get("/"), undefined);
  assert.equal(get("/?ts=1"), undefined);
  assert.equal(get("/peerjs/id"), undefined);
  assert.equal(get("/myapp/k1/id")?.status, 200);
});

// ---------------------------------------------------------------- metrics and status

Deno.test("metrics and status: prefixed names, counts, errors by code", () => {
  const h = pharness();
  peers(h, "a", "b");
  h.relay("a", "OFFER", "b");
  h.relay("a", "OFFER", "offline");
  h.raw("a", "nope");
  h.connect("x", "a", "wrong");
  const families = new Map(h.engine.metrics().map((f) => [f.name, f]));
  for (const name of families.keys()) assert.ok(name.startsWith("peerjs_"), name);
  const value = (name: string, label?: string) =>
    families.get(name)!.samples.find(([l]) =>
      label === undefined || Object.values(l ?? {})[0] === label
    )![1];
  assert.equal(value("peerjs_connections"), 2);
  assert.equal(value("peerjs_ids"), 2);
  assert.equal(value("peerjs_offline_messages"), 1);
  assert.ok(value("peerjs_offline_bytes") > 0);
  assert.equal(value("peerjs_connections_opened_total"), 3);
  assert.equal(value("peerjs_handshakes_total", "open"), 2);
  assert.equal(value("peerjs_handshakes_total", "id-taken"), 1);
  assert.equal(value("peerjs_relayed_total", "delivered"), 1);
  assert.equal(value("peerjs_relayed_total", "queued"), 1);
  assert.equal(value("peerjs_errors_total", "bad-json"), 1);
  assert.equal(value("peerjs_frames_in_total", "OFFER"), 2);
  for (
    const n of [
      "peerjs_frames_delayed_total",
      "peerjs_queue_closed_total",
      "peerjs_expired_total",
      "peerjs_src_overridden_total",
      "peerjs_offline_delivered_total",
      "peerjs_alive_timeouts_total",
      "peerjs_http_requests_total",
      "peerjs_http_unauthorized_total",
    ]
  ) assert.ok(families.has(n), n);
  const status = h.engine.status();
  assert.ok(status.connect.includes("{ws}"));
  assert.deepEqual(status.counts, [
    ["peerjs-connections", "Connections", 2],
    ["peerjs-ids", "Ids", 2],
    ["peerjs-queued", "Messages waiting for an id", 1],
  ]);
});

// ---------------------------------------------------------------- properties

const IDS = ["a", "b", "c", "d"];
const TOKENS = ["x", "y"];
const SLOTS = 4;
const RELAYS = ["OFFER", "ANSWER", "CANDIDATE", "LEAVE", "EXPIRE"] as const;
const EXPIRE_MS = 1000;
const PER_ID = 3;
const LIMIT = 4; // the ticker holds one of them

type Action =
  | { t: "connect"; slot: number; id: string; token: string }
  | { t: "close"; slot: number }
  | {
    t: "relay";
    slot: number;
    type: typeof RELAYS[number];
    dst: string;
    payload: unknown;
    src: string | undefined;
    binary: boolean;
  }
  | { t: "heartbeat"; slot: number }
  | { t: "garbage"; slot: number; frame: string | Uint8Array; code: string }
  | { t: "advance"; ms: number };

const slot = fc.integer({ min: 0, max: SLOTS - 1 });
const action: fc.Arbitrary<Action> = fc.oneof(
  {
    weight: 3,
    arbitrary: fc.record({
      t: fc.constant("connect" as const),
      slot,
      id: fc.constantFrom(...IDS),
      token: fc.constantFrom(...TOKENS),
    }),
  },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("close" as const), slot }) },
  {
    weight: 6,
    arbitrary: fc.record({
      t: fc.constant("relay" as const),
      slot,
      type: fc.constantFrom(...RELAYS),
      dst: fc.constantFrom(...IDS, "a", "b"),
      payload: fc.option(fc.jsonValue({ maxDepth: 2 }), { nil: undefined }),
      src: fc.option(fc.constantFrom(...IDS, "zz"), { nil: undefined }),
      binary: fc.boolean(),
    }),
  },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("heartbeat" as const), slot }) },
  {
    weight: 1,
    arbitrary: fc.tuple(slot, fc.constantFrom(...GARBAGE)).map((
      [slot, [, frame, code]],
    ): Action => ({ t: "garbage", slot, frame, code })),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      t: fc.constant("advance" as const),
      ms: fc.integer({ min: 0, max: 1500 }),
    }),
  },
);

type Out = [string, unknown] | ["close", string, number];

/** The model: ids held with their tokens, the offline queues in the order they were made. */
class Model {
  now = 0;
  /** id → [connection name, token]. */
  readonly holders = new Map<string, [string, string]>();
  /** Open connection name → its id. */
  readonly open = new Map<string, string>();
  /** Connection name → dst → until when a full queue is not reported again. */
  readonly refused = new Map<string, Map<string, number>>();
  readonly queues: { id: string; since: number; messages: { src: string; m: unknown }[] }[] = [];

  connect(name: string, id: string, token: string): Out[] {
    const h = this.holders.get(id);
    const out: Out[] = [];
    if (h !== undefined && h[1] !== token) {
      return [[name, { type: "ID-TAKEN", payload: { msg: "ID is taken" } }], ["close", name, 1008]];
    }
    if (h !== undefined) {
      out.push(["close", h[0], 1000]);
      this.open.delete(h[0]);
    } else if (this.holders.size >= LIMIT) {
      return [[name, error(HANDSHAKE_MESSAGES.limit)], ["close", name, 1013]];
    }
    this.holders.set(id, [name, token]);
    this.open.set(name, id);
    this.refused.set(name, new Map());
    out.push([name, OPEN]);
    const i = this.queues.findIndex((q) => q.id === id);
    if (i >= 0) {
      for (const w of this.queues[i].messages) out.push([name, w.m]);
      this.queues.splice(i, 1);
    }
    return out;
  }

  close(name: string): void {
    const id = this.open.get(name);
    if (id === undefined) return;
    this.open.delete(name);
    if (this.holders.get(id)?.[0] === name) this.holders.delete(id);
  }

  relay(name: string, type: string, dst: string, payload: unknown): Out[] {
    const src = this.open.get(name)!;
    const m = JSON.parse(JSON.stringify({ type, src, dst, payload }));
    const h = this.holders.get(dst);
    if (h !== undefined) return [[h[0], m]];
    if (type === "LEAVE" || type === "EXPIRE") return [];
    let q = this.queues.find((q) => q.id === dst);
    if ((q?.messages.length ?? 0) >= PER_ID) {
      const refused = this.refused.get(name)!;
      if ((refused.get(dst) ?? -1) > this.now) return [];
      refused.set(dst, this.now + EXPIRE_MS);
      return [[name, { type: "EXPIRE", src: dst, dst: src }]];
    }
    if (q === undefined) this.queues.push(q = { id: dst, since: this.now, messages: [] });
    q.messages.push({ src, m });
    return [];
  }

  advance(ms: number): Out[] {
    this.now += ms;
    const out: Out[] = [];
    while (this.queues.length > 0 && this.queues[0].since + EXPIRE_MS <= this.now) {
      const q = this.queues.shift()!;
      for (const src of new Set(q.messages.map((w) => w.src))) {
        const h = this.holders.get(src);
        if (h !== undefined) out.push([h[0], { type: "EXPIRE", src: q.id, dst: src }]);
      }
    }
    return out;
  }

  get queued(): number {
    return this.queues.reduce((n, q) => n + q.messages.length, 0);
  }
}

function outs(effects: PEffect[]): Out[] {
  return effects.flatMap((e): Out[] =>
    e.kind === "send"
      ? [[e.to, JSON.parse(e.frame)]]
      : e.kind === "close"
      ? [["close", e.to, e.code]]
      : []
  );
}

Deno.test("property: every effect is what the model predicts (shaping off)", () => {
  fc.assert(
    fc.property(fc.array(action, { minLength: 1, maxLength: 80, size: "max" }), (actions) => {
      const h = pharness({
        start: 0,
        limits: {
          rate: 0,
          aliveTimeout: 0,
          expireTimeout: EXPIRE_MS,
          maxOfflinePerId: PER_ID,
          concurrentLimit: LIMIT,
        },
      });
      const model = new Model();
      // The ticker makes the engine sweep after every advance, as any frame would.
      h.connect("ticker", "ticker", "t");
      model.connect("ticker", "ticker", "t");
      const gen = new Array(SLOTS).fill(0);
      const name = (s: number) => `s${s}.${gen[s]}`;
      h.take();
      for (const a of actions) {
        let expected: Out[] = [];
        switch (a.t) {
          case "connect": {
            // The slot's previous client (if any) goes away first.
            if (gen[a.slot] > 0) h.close(name(a.slot));
            model.close(name(a.slot));
            gen[a.slot]++;
            h.connect(name(a.slot), a.id, a.token);
            expected = model.connect(name(a.slot), a.id, a.token);
            break;
          }
          case "close":
            if (gen[a.slot] === 0) continue;
            h.close(name(a.slot));
            model.close(name(a.slot));
            break;
          case "relay": {
            if (gen[a.slot] === 0) continue;
            const m = { type: a.type, dst: a.dst, payload: a.payload, src: a.src };
            const text = JSON.stringify(m);
            h.raw(name(a.slot), a.binary ? utf8.encode(text) : text);
            if (model.open.has(name(a.slot))) {
              expected = model.relay(name(a.slot), a.type, a.dst, a.payload);
            }
            break;
          }
          case "heartbeat":
            if (gen[a.slot] === 0) continue;
            h.send(name(a.slot), { type: "HEARTBEAT" });
            break;
          case "garbage":
            if (gen[a.slot] === 0) continue;
            h.raw(name(a.slot), a.frame);
            if (model.open.has(name(a.slot))) {
              expected = [[name(a.slot), error(ERROR_MESSAGES[a.code as "bad-json"])]];
            }
            break;
          case "advance":
            h.advance(a.ms);
            h.engine.wake(h.conn("ticker"));
            expected = model.advance(a.ms);
            break;
        }
        assert.deepEqual(outs(h.take()), expected, JSON.stringify(a));
        assert.equal(h.engine.ids, model.holders.size);
        assert.equal(h.engine.connections, model.open.size);
        assert.equal(h.engine.directory.queued, model.queued);
        assert.deepEqual(
          h.engine.directory.ids("peerjs").sort(),
          [...model.holders.keys()].sort(),
        );
      }
    }),
    { numRuns: 300 },
  );
});

Deno.test("property: shaping delays but never drops or reorders; only a queue past its bound closes", () => {
  type Step = { slot: number; kind: "relay" | "heartbeat" | "advance"; ms: number };
  const step: fc.Arbitrary<Step> = fc.record({
    slot: fc.integer({ min: 0, max: 2 }),
    kind: fc.constantFrom("relay", "relay", "relay", "heartbeat", "advance"),
    ms: fc.integer({ min: 0, max: 500 }),
  });
  fc.assert(
    fc.property(
      fc.array(step, { maxLength: 300, size: "max" }),
      fc.integer({ min: 1, max: 30 }),
      fc.integer({ min: 1, max: 20 }),
      fc.integer({ min: 4, max: 40 }),
      (steps, rate, burst, maxQueuedFrames) => {
        const h = pharness({
          limits: { rate, burst, burstPerPeer: 1, maxQueuedFrames, aliveTimeout: 0 },
        });
        const names = ["p0", "p1", "p2"];
        peers(h, "sink", ...names);
        const sent = new Map(names.map((n) => [n, [] as string[]]));
        let seq = 0;
        for (const s of steps) {
          const n = names[s.slot];
          if (s.kind === "advance") {
            h.advance(s.ms);
            continue;
          }
          if (h.conn(n).state === "closed") continue;
          if (s.kind === "heartbeat") h.send(n, { type: "HEARTBEAT" });
          else {
            const id = `${n}#${seq++}`;
            // Half to the sink, half to an id that is never connected.
            h.relay(n, "CANDIDATE", seq % 2 === 0 ? "sink" : "nowhere", id);
            if (seq % 2 === 0) sent.get(n)!.push(id);
          }
        }
        h.advance(1_000_000);
        const closed = closes(h.effects);
        for (const e of closed) assert.equal(e.code, PeerjsClose.policy);
        assert.equal(
          closed.length,
          h.engine.stats.queueClosed.frames + h.engine.stats.queueClosed.bytes,
        );
        for (const n of names) {
          const got = framesTo(h.effects, "sink").flatMap((m) =>
            m.src === n ? [String(m.payload)] : []
          );
          const want = sent.get(n)!;
          if (h.conn(n).state === "closed") assert.deepEqual(got, want.slice(0, got.length));
          else assert.deepEqual(got, want);
        }
      },
    ),
    { numRuns: 200 },
  );
});
