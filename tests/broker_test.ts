/**
 * The pure broker against every rule of PROTOCOL.md: each test drives a
 * broker through a recording outbox and asserts the exact frames, in order.
 */

import assert from "node:assert/strict";
import { Broker, CloseCode, DEFAULT_LIMITS } from "../lib/diva/broker.ts";
import { type Effect, type Harness, harness } from "./helpers/broker_harness.ts";

const enc = new TextEncoder();

/** Asserts that the only thing since the last take is one error to `to`. */
function expectError(h: Harness, to: string, call: string, code: string): void {
  const sent = h.sent();
  assert.equal(sent.length, 1, `expected one error, got ${JSON.stringify(sent)}`);
  const [who, msg] = sent[0];
  assert.equal(who, to);
  assert.ok(Array.isArray(msg) && msg.length === 4, JSON.stringify(msg));
  assert.deepEqual(msg.slice(0, 3), ["error", call, code]);
  assert.equal(typeof msg[3], "string");
  assert.ok(msg[3].length > 0, "detail must say something");
}

/** The broker's state counts, to show that a failed call changed nothing. */
function counts(h: Harness): number[] {
  const b = h.broker;
  return [b.connections, b.rooms, b.idents, b.issued];
}

/** A and B (and more) each joined `room` with their lowercase name as ident. */
function joined(h: Harness, room: string, ...names: string[]): void {
  for (const n of names) {
    if (!hasConn(h, n)) h.open(n);
    h.call(n, "join", n.toLowerCase(), room);
  }
  h.take();
}

function hasConn(h: Harness, name: string): boolean {
  try {
    h.conn(name);
    return true;
  } catch {
    return false;
  }
}

function assertEmpty(h: Harness): void {
  assert.deepEqual(counts(h), [0, 0, 0, 0], "state must be empty");
}

// ---------------------------------------------------------------- worked example

Deno.test("worked example of PROTOCOL.md, frame by frame", () => {
  const h = harness();
  h.open("A");
  h.open("B");
  h.raw("A", '["ident"]');
  const [identReply] = h.take();
  assert.equal(identReply.kind, "send");
  const id = (JSON.parse((identReply as { frame: string }).frame) as string[])[1];
  assert.match(id, /^[a-z]{24}$/);
  assert.equal((identReply as { frame: string }).frame, `["ident","${id}"]`);

  h.raw("A", `["join","${id}","lobby"]`);
  assert.deepEqual(h.take(), [{ kind: "send", to: "A", frame: `["join","lobby:${id}"]` }]);

  h.raw("B", '["join","bob","lobby"]');
  assert.deepEqual(h.take(), [
    { kind: "send", to: "B", frame: '["join","lobby:bob"]' },
    { kind: "send", to: "A", frame: `["stun","lobby:${id}","lobby:bob",false]` },
    { kind: "send", to: "B", frame: `["stun","lobby:bob","lobby:${id}",true]` },
  ]);

  h.raw("B", `["signal","lobby:bob","lobby:${id}",{"type":"offer","sdp":"…"}]`);
  assert.deepEqual(h.take(), [
    {
      kind: "send",
      to: "A",
      frame: `["signal","lobby:${id}","lobby:bob",{"type":"offer","sdp":"…"}]`,
    },
  ]);

  h.close("B");
  assert.deepEqual(h.take(), [
    { kind: "send", to: "A", frame: `["bye","lobby:${id}","lobby:bob"]` },
  ]);
  h.close("A");
  assert.deepEqual(h.take(), []);
  assertEmpty(h);
});

// ---------------------------------------------------------------- join

Deno.test("join with ident: the joiner gets join, an empty room sends no stun", () => {
  const h = harness();
  h.open("A");
  h.call("A", "join", "alice", "lobby");
  assert.deepEqual(h.sent(), [["A", ["join", "lobby:alice"]]]);
  assert.deepEqual(counts(h), [1, 1, 1, 0]);
});

Deno.test("legacy join uses the ident issued by [ident]", () => {
  const h = harness();
  h.open("A");
  h.open("B");
  h.call("B", "join", "bob", "lobby");
  h.call("A", "ident");
  h.take();
  h.call("A", "ident");
  const id = (h.sent()[0][1] as string[])[1];
  h.call("A", "join", "lobby");
  assert.deepEqual(h.sent(), [
    ["A", ["join", `lobby:${id}`]],
    ["B", ["stun", "lobby:bob", `lobby:${id}`, false]],
    ["A", ["stun", `lobby:${id}`, "lobby:bob", true]],
  ]);
  // The same issued ident can be used in a second room.
  h.call("A", "join", "hall");
  assert.deepEqual(h.sent(), [["A", ["join", `hall:${id}`]]]);
  // And B can now signal it by the global ident the legacy join produced.
  h.call("B", "signal", "lobby:bob", `lobby:${id}`, "hi");
  assert.deepEqual(h.sent(), [["A", ["signal", `lobby:${id}`, "lobby:bob", "hi"]]]);
});

Deno.test("legacy join without an issued ident is no-ident and changes nothing", () => {
  const h = harness();
  h.open("A");
  h.call("A", "join", "lobby");
  expectError(h, "A", "join", "no-ident");
  assert.deepEqual(counts(h), [1, 0, 0, 0]);
  // An ident issued to another connection does not count.
  h.open("B");
  h.call("B", "ident");
  h.take();
  h.call("A", "join", "lobby");
  expectError(h, "A", "join", "no-ident");
  assert.deepEqual(counts(h), [2, 0, 0, 1]);
});

Deno.test("stun pairs go to every earlier member in join order, joiner initiates", () => {
  const h = harness();
  for (const n of ["A", "B", "C", "D"]) h.open(n);
  h.call("A", "join", "a", "r");
  h.call("B", "join", "b", "r");
  h.call("C", "join", "c", "r");
  h.take();
  h.call("D", "join", "d", "r");
  assert.deepEqual(h.sent(), [
    ["D", ["join", "r:d"]],
    ["A", ["stun", "r:a", "r:d", false]],
    ["D", ["stun", "r:d", "r:a", true]],
    ["B", ["stun", "r:b", "r:d", false]],
    ["D", ["stun", "r:d", "r:b", true]],
    ["C", ["stun", "r:c", "r:d", false]],
    ["D", ["stun", "r:d", "r:c", true]],
  ]);
});

Deno.test("join order after a leave: a re-joiner is the latest member", () => {
  const h = harness();
  joined(h, "r", "A", "B", "C");
  h.call("A", "leave", "r:a");
  h.call("A", "join", "a", "r");
  assert.deepEqual(h.sent(), [
    ["A", ["leave", "r:a"]],
    ["B", ["bye", "r:b", "r:a"]],
    ["C", ["bye", "r:c", "r:a"]],
    ["A", ["join", "r:a"]],
    ["B", ["stun", "r:b", "r:a", false]],
    ["A", ["stun", "r:a", "r:b", true]],
    ["C", ["stun", "r:c", "r:a", false]],
    ["A", ["stun", "r:a", "r:c", true]],
  ]);
  h.open("D");
  h.call("D", "join", "d", "r");
  const order = h.sent().filter(([to]) => to !== "D").map(([to]) => to);
  assert.deepEqual(order, ["B", "C", "A"]);
});

Deno.test("joining again with a held global ident repeats the reply, no new stun", () => {
  const h = harness();
  joined(h, "lobby", "A", "B");
  const before = counts(h);
  h.call("A", "join", "a", "lobby");
  assert.deepEqual(h.sent(), [["A", ["join", "lobby:a"]]]);
  h.call("B", "join", "b", "lobby");
  assert.deepEqual(h.sent(), [["B", ["join", "lobby:b"]]]);
  // Legacy form resolving to a held global ident is the same no-op.
  h.open("C");
  h.call("C", "ident");
  const id = (h.sent()[0][1] as string[])[1];
  h.call("C", "join", "lobby");
  assert.equal(h.sent().length, 5);
  h.call("C", "join", "lobby");
  assert.deepEqual(h.sent(), [["C", ["join", `lobby:${id}`]]]);
  h.call("C", "join", id, "lobby");
  assert.deepEqual(h.sent(), [["C", ["join", `lobby:${id}`]]]);
  assert.deepEqual(counts(h), [before[0] + 1, before[1], before[2] + 1, 1]);
});

Deno.test("ident-taken: another connection holds the global ident; nothing changes", () => {
  const h = harness();
  joined(h, "lobby", "A", "B");
  h.open("X");
  const before = counts(h);
  h.call("X", "join", "a", "lobby");
  assert.deepEqual(h.sent(), [["X", ["error", "join", "ident-taken", "lobby:a"]]]);
  assert.deepEqual(counts(h), before);
  // X holds nothing: signalling from the taken ident is not-owner.
  h.call("X", "signal", "lobby:a", "lobby:b", 1);
  expectError(h, "X", "signal", "not-owner");
  // The same ident in another room is a different global ident.
  h.call("X", "join", "a", "hall");
  assert.deepEqual(h.sent(), [["X", ["join", "hall:a"]]]);
  // Legacy join collides the same way.
  h.open("Y");
  h.call("Y", "ident");
  const id = (h.sent()[0][1] as string[])[1];
  h.open("Z");
  h.call("Z", "join", id, "lobby");
  h.take();
  h.call("Y", "join", "lobby");
  assert.deepEqual(h.sent(), [["Y", ["error", "join", "ident-taken", `lobby:${id}`]]]);
});

Deno.test("one connection holds many global idents in one room", () => {
  const h = harness();
  h.open("A");
  h.open("B");
  h.call("A", "join", "a1", "r");
  h.call("B", "join", "b", "r");
  h.take();
  h.call("A", "join", "a2", "r");
  assert.deepEqual(h.sent(), [
    ["A", ["join", "r:a2"]],
    ["A", ["stun", "r:a1", "r:a2", false]],
    ["A", ["stun", "r:a2", "r:a1", true]],
    ["B", ["stun", "r:b", "r:a2", false]],
    ["A", ["stun", "r:a2", "r:b", true]],
  ]);
  assert.equal(h.broker.idents, 3);
  // Each of A's idents signals on its own; A may signal between its own idents.
  h.call("A", "signal", "r:a2", "r:b", "x");
  h.call("A", "signal", "r:a1", "r:b", "y");
  h.call("A", "signal", "r:a1", "r:a2", "z");
  assert.deepEqual(h.sent(), [
    ["B", ["signal", "r:b", "r:a2", "x"]],
    ["B", ["signal", "r:b", "r:a1", "y"]],
    ["A", ["signal", "r:a2", "r:a1", "z"]],
  ]);
  // Leaving one keeps the other, and the other is told like any member.
  h.call("A", "leave", "r:a1");
  assert.deepEqual(h.sent(), [
    ["A", ["leave", "r:a1"]],
    ["B", ["bye", "r:b", "r:a1"]],
    ["A", ["bye", "r:a2", "r:a1"]],
  ]);
  h.call("A", "signal", "r:a2", "r:b", "still here");
  assert.deepEqual(h.sent(), [["B", ["signal", "r:b", "r:a2", "still here"]]]);
  // Closing says bye for every remaining ident, to others only.
  h.close("A");
  assert.deepEqual(h.sent(), [["B", ["bye", "r:b", "r:a2"]]]);
});

Deno.test("one connection holds global idents in many rooms", () => {
  const h = harness();
  for (const n of ["A", "B", "C"]) h.open(n);
  h.call("B", "join", "b", "r1");
  h.call("C", "join", "c", "r2");
  h.call("A", "join", "a", "r1");
  h.call("A", "join", "a", "r2");
  h.call("A", "join", "other", "r3");
  assert.deepEqual(h.sent(), [
    ["B", ["join", "r1:b"]],
    ["C", ["join", "r2:c"]],
    ["A", ["join", "r1:a"]],
    ["B", ["stun", "r1:b", "r1:a", false]],
    ["A", ["stun", "r1:a", "r1:b", true]],
    ["A", ["join", "r2:a"]],
    ["C", ["stun", "r2:c", "r2:a", false]],
    ["A", ["stun", "r2:a", "r2:c", true]],
    ["A", ["join", "r3:other"]],
  ]);
  assert.deepEqual(counts(h), [3, 3, 5, 0]);
  h.close("A");
  assert.deepEqual(h.sent(), [
    ["B", ["bye", "r1:b", "r1:a"]],
    ["C", ["bye", "r2:c", "r2:a"]],
  ]);
  assert.deepEqual(counts(h), [2, 2, 2, 0]);
});

// ---------------------------------------------------------------- signal

Deno.test("signal from an ident this connection does not hold is not-owner", () => {
  const h = harness();
  joined(h, "r", "A", "B");
  h.open("C");
  // Held by someone else.
  h.call("C", "signal", "r:a", "r:b", 1);
  expectError(h, "C", "signal", "not-owner");
  // Held by nobody.
  h.call("A", "signal", "r:nobody", "r:b", 1);
  expectError(h, "A", "signal", "not-owner");
  // Held by this connection's peer, in the right room.
  h.call("A", "signal", "r:b", "r:a", 1);
  expectError(h, "A", "signal", "not-owner");
  // Not-owner is checked before the target: even to an unknown peer.
  h.call("C", "signal", "r:a", "other:zz", 1);
  expectError(h, "C", "signal", "not-owner");
});

Deno.test("signal to a peer in another room is cross-room, held or not", () => {
  const h = harness();
  h.open("A");
  h.open("B");
  h.call("A", "join", "a", "r1");
  h.call("B", "join", "b", "r2");
  h.take();
  h.call("A", "signal", "r1:a", "r2:b", 1);
  expectError(h, "A", "signal", "cross-room");
  h.call("A", "signal", "r1:a", "r2:nobody", 1);
  expectError(h, "A", "signal", "cross-room");
  // A room whose name starts with the sender's room is still another room.
  h.call("B", "join", "b", "r1x");
  h.take();
  h.call("A", "signal", "r1:a", "r1x:b", 1);
  expectError(h, "A", "signal", "cross-room");
  h.call("A", "signal", "r1:a", "r:b", 1);
  expectError(h, "A", "signal", "cross-room");
  // Even when the same connection holds the target in its room.
  h.call("A", "join", "a", "r2");
  h.take();
  h.call("A", "signal", "r1:a", "r2:a", 1);
  expectError(h, "A", "signal", "cross-room");
});

Deno.test("signal to a global ident nobody holds is unknown-peer", () => {
  const h = harness();
  joined(h, "r", "A", "B");
  h.call("A", "signal", "r:a", "r:c", 1);
  expectError(h, "A", "signal", "unknown-peer");
  h.call("B", "leave", "r:b");
  h.take();
  h.call("A", "signal", "r:a", "r:b", 1);
  expectError(h, "A", "signal", "unknown-peer");
  // A peer that was closed is gone too.
  h.open("C");
  h.call("C", "join", "c", "r");
  h.close("C");
  h.take();
  h.call("A", "signal", "r:a", "r:c", 1);
  expectError(h, "A", "signal", "unknown-peer");
});

const DATA: [string, unknown][] = [
  ["object", { type: "offer", sdp: "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n" }],
  ["string", "hello"],
  ["empty string", ""],
  ["integer", 42],
  ["negative float", -1.5e-7],
  ["zero", 0],
  ["true", true],
  ["false", false],
  ["null", null],
  ["empty array", []],
  ["empty object", {}],
  ["nested", { a: [1, { b: [null, { c: "d" }] }], e: { f: { g: [[[]]] } } }],
  ["unicode", { text: 'grüße 日本 😀 \u2028 \u0000 \t"\\' }],
  ["candidate", { candidate: "candidate:1 1 udp 2122260223 10.0.0.1 54321 typ host" }],
  ["keys with quotes", { 'k"ey': "v\\al", "]": "[" }],
];

for (const [label, data] of DATA) {
  Deno.test(`signal relays data unchanged: ${label}`, () => {
    const h = harness();
    joined(h, "r", "A", "B");
    h.call("A", "signal", "r:a", "r:b", data);
    const [e, ...rest] = h.take();
    assert.deepEqual(rest, []);
    assert.equal(e.kind, "send");
    assert.equal((e as { to: string }).to, "B");
    const frame = (e as { frame: string }).frame;
    assert.deepEqual(JSON.parse(frame), ["signal", "r:b", "r:a", data]);
    // Binary frames relay the same, as text.
    h.raw("A", enc.encode(JSON.stringify(["signal", "r:a", "r:b", data])));
    const [e2] = h.take();
    assert.deepEqual(JSON.parse((e2 as { frame: string }).frame), ["signal", "r:b", "r:a", data]);
  });
}

Deno.test("signal relays non-compact JSON frames (whitespace anywhere) unchanged", () => {
  const h = harness();
  joined(h, "r", "A", "B");
  const frames = [
    '[ "signal" , "r:a" , "r:b" , { "type" : "offer" , "sdp" : "x y" } ]',
    '["signal","r:a","r:b", {"type":"answer"}]',
    '["signal","r:a","r:b",{"type":"answer"} ]',
    '\n\t["signal","r:a","r:b",{"type":"answer"}]\r\n',
    '["signal", "r:a", "r:b", [1, 2 ,3]]',
    '["signal","r:a","r:b",\n"str"\n]',
    '["signal","r:a","r:b",1e3]',
    '["signal","r:a","r:b",{"a":"]"}]',
    '["signal","r:a","r:b","\\u0041\\n"]',
    '["signal","r\\u003aa","r:b",1]',
    '["signal","r:a","r:\\u0062",2]',
  ];
  for (const f of frames) {
    h.raw("A", f);
    const sent = h.sent();
    const p = JSON.parse(f) as unknown[];
    assert.deepEqual(sent, [["B", ["signal", "r:b", "r:a", p[3]]]], f);
  }
});

Deno.test("signal works for names containing quote and backslash", () => {
  const h = harness();
  h.open("A");
  h.open("B");
  const room = 'r"\\m';
  h.call("A", "join", 'a"1', room);
  h.call("B", "join", "b\\2", room);
  assert.deepEqual(h.sent(), [
    ["A", ["join", `${room}:a"1`]],
    ["B", ["join", `${room}:b\\2`]],
    ["A", ["stun", `${room}:a"1`, `${room}:b\\2`, false]],
    ["B", ["stun", `${room}:b\\2`, `${room}:a"1`, true]],
  ]);
  h.call("A", "signal", `${room}:a"1`, `${room}:b\\2`, { sdp: 'x"\\' });
  assert.deepEqual(h.sent(), [["B", ["signal", `${room}:b\\2`, `${room}:a"1`, { sdp: 'x"\\' }]]]);
  h.call("B", "signal", `${room}:b\\2`, `${room}:a"1`, '"]');
  assert.deepEqual(h.sent(), [["A", ["signal", `${room}:a"1`, `${room}:b\\2`, '"]']]]);
  h.close("B");
  assert.deepEqual(h.sent(), [["A", ["bye", `${room}:a"1`, `${room}:b\\2`]]]);
});

// ---------------------------------------------------------------- leave and close

Deno.test("leave: the leaver gets leave, every remaining member gets bye", () => {
  const h = harness();
  joined(h, "r", "A", "B", "C");
  h.call("B", "leave", "r:b");
  assert.deepEqual(h.sent(), [
    ["B", ["leave", "r:b"]],
    ["A", ["bye", "r:a", "r:b"]],
    ["C", ["bye", "r:c", "r:b"]],
  ]);
  assert.deepEqual(counts(h), [3, 1, 2, 0]);
  // Leaving again: B no longer holds it.
  h.call("B", "leave", "r:b");
  expectError(h, "B", "leave", "not-owner");
  // The last members leaving remove the room.
  h.call("A", "leave", "r:a");
  h.call("C", "leave", "r:c");
  assert.deepEqual(h.sent(), [
    ["A", ["leave", "r:a"]],
    ["C", ["bye", "r:c", "r:a"]],
    ["C", ["leave", "r:c"]],
  ]);
  assert.deepEqual(counts(h), [3, 0, 0, 0]);
});

Deno.test("leave of an ident held by another connection, or by nobody, is not-owner", () => {
  const h = harness();
  joined(h, "r", "A", "B");
  const before = counts(h);
  h.call("A", "leave", "r:b");
  expectError(h, "A", "leave", "not-owner");
  h.call("A", "leave", "r:zz");
  expectError(h, "A", "leave", "not-owner");
  h.call("A", "leave", "other:a");
  expectError(h, "A", "leave", "not-owner");
  assert.deepEqual(counts(h), before);
  // B is untouched: it can still be signalled.
  h.call("A", "signal", "r:a", "r:b", 0);
  assert.deepEqual(h.sent(), [["B", ["signal", "r:b", "r:a", 0]]]);
});

Deno.test("after leave, joining again announces the pairs again", () => {
  const h = harness();
  joined(h, "r", "A", "B");
  h.call("A", "leave", "r:a");
  h.take();
  h.call("A", "join", "a", "r");
  assert.deepEqual(h.sent(), [
    ["A", ["join", "r:a"]],
    ["B", ["stun", "r:b", "r:a", false]],
    ["A", ["stun", "r:a", "r:b", true]],
  ]);
  // And another connection can take an ident that was left.
  h.call("A", "leave", "r:a");
  h.take();
  h.open("C");
  h.call("C", "join", "a", "r");
  assert.deepEqual(h.sent(), [
    ["C", ["join", "r:a"]],
    ["B", ["stun", "r:b", "r:a", false]],
    ["C", ["stun", "r:a", "r:b", true]],
  ]);
});

Deno.test("close: every remaining member gets bye, in join order, and the room goes", () => {
  const h = harness();
  joined(h, "r", "A", "B", "C");
  h.close("A");
  assert.deepEqual(h.sent(), [
    ["B", ["bye", "r:b", "r:a"]],
    ["C", ["bye", "r:c", "r:a"]],
  ]);
  h.close("C");
  assert.deepEqual(h.sent(), [["B", ["bye", "r:b", "r:c"]]]);
  h.close("B");
  assert.deepEqual(h.take(), []);
  assertEmpty(h);
  // Close is idempotent.
  h.close("B");
  assert.deepEqual(h.take(), []);
  assertEmpty(h);
});

Deno.test("frames after close are ignored", () => {
  const h = harness();
  joined(h, "r", "A", "B");
  h.close("A");
  h.take();
  const stats = JSON.stringify(h.broker.stats);
  for (
    const f of [
      '["ping"]',
      '["join","a","r"]',
      '["signal","r:a","r:b",1]',
      "junk",
      enc.encode('["ident"]'),
      "x".repeat(DEFAULT_LIMITS.maxFrameBytes + 1),
    ]
  ) h.raw("A", f);
  assert.deepEqual(h.take(), []);
  assert.equal(JSON.stringify(h.broker.stats), stats);
  assert.deepEqual(counts(h), [1, 1, 1, 0]);
  // An ice answer arriving after the close goes nowhere.
  h.broker.iceReply(h.conn("A"), [{ urls: "stun:x" }]);
  assert.deepEqual(h.take(), []);
});

// ---------------------------------------------------------------- ping, ice, ident

Deno.test("ping is answered with pong", () => {
  const h = harness();
  h.open("A");
  h.raw("A", '["ping"]');
  assert.deepEqual(h.take(), [{ kind: "send", to: "A", frame: '["pong"]' }]);
  h.raw("A", enc.encode('["ping"]'));
  assert.deepEqual(h.take(), [{ kind: "send", to: "A", frame: '["pong"]' }]);
});

Deno.test("ice asks the outbox with a held ident, else the issued one, else a random one", () => {
  const h = harness();
  h.open("A");
  h.call("A", "ice");
  const [first] = h.take();
  assert.equal(first.kind, "ice");
  const random = (first as { ident: string }).ident;
  assert.match(random, /^[a-z]{24}$/);
  assert.equal(h.broker.issued, 0, "a random TURN user is not an issued ident");
  h.broker.iceReply(h.conn("A"), []);
  assert.deepEqual(h.sent(), [["A", ["ice", []]]]);

  h.call("A", "ident");
  const id = (h.sent()[0][1] as string[])[1];
  h.call("A", "ice");
  assert.deepEqual(h.take(), [{ kind: "ice", to: "A", ident: id }]);
  h.broker.iceReply(h.conn("A"), []);
  h.take();

  h.call("A", "join", "alice", "lobby");
  h.call("A", "join", "alias", "hall");
  h.take();
  h.call("A", "ice");
  // The global ident: the same ident in two rooms has two TURN users.
  assert.deepEqual(h.take(), [{ kind: "ice", to: "A", ident: "lobby:alice" }]);

  const servers = [
    { urls: ["stun:stun.example.org:3478"] },
    { urls: "turn:t.example.org", username: "1:alice", credential: "c2VjcmV0" },
  ];
  h.broker.iceReply(h.conn("A"), servers);
  assert.deepEqual(h.take(), [{ kind: "send", to: "A", frame: JSON.stringify(["ice", servers]) }]);
  // An answer with no call pending goes nowhere.
  h.broker.iceReply(h.conn("A"), []);
  assert.deepEqual(h.sent(), []);
});

Deno.test("ice: later frames wait for the answer, so replies keep the order of calls", () => {
  const h = harness();
  joined(h, "r", "B");
  h.open("A");
  h.call("A", "join", "a", "r");
  h.take();
  h.call("A", "ice");
  h.call("A", "ping");
  h.call("A", "signal", "r:a", "r:b", 1);
  h.call("A", "ice");
  h.call("A", "ping");
  assert.deepEqual(h.take(), [{ kind: "ice", to: "A", ident: "r:a" }]);
  h.broker.iceReply(h.conn("A"), [{ urls: "stun:one" }]);
  assert.deepEqual(h.take(), [
    { kind: "send", to: "A", frame: '["ice",[{"urls":"stun:one"}]]' },
    { kind: "send", to: "A", frame: '["pong"]' },
    { kind: "send", to: "B", frame: '["signal","r:b","r:a",1]' },
    { kind: "ice", to: "A", ident: "r:a" },
  ]);
  // A failed lookup answers unavailable, and the rest runs.
  h.broker.iceFailed(h.conn("A"));
  assert.deepEqual(h.sent().map(([to, m]) => [to, (m as string[]).slice(0, 3)]), [
    ["A", ["error", "ice", "unavailable"]],
    ["A", ["pong"]],
  ]);
  // An answer given from inside Outbox.ice (re-entrantly) works the same.
  const sent: string[] = [];
  const b = new Broker<number>({
    outbox: {
      send: (_to, f) => sent.push(f),
      close() {},
      ice: (_to, conn) => b.iceReply(conn, []),
      wake() {},
    },
    now: () => 0,
    randomBytes: (buf) => crypto.getRandomValues(buf),
  });
  const c = b.open(1);
  b.frame(c, '["ice"]');
  b.frame(c, '["ping"]');
  b.frame(c, '["ice"]');
  b.frame(c, '["ping"]');
  assert.deepEqual(sent, ['["ice",[]]', '["pong"]', '["ice",[]]', '["pong"]']);
  assert.equal(c.queued, 0);
});

Deno.test("ident ids are 24 lowercase letters and unique", () => {
  const h = harness({ limits: { rate: 0 } });
  h.open("A");
  const seen = new Set<string>();
  for (let i = 0; i < 2000; i++) {
    h.raw("A", '["ident"]');
    const sent = h.sent();
    assert.equal(sent.length, 1);
    const [to, msg] = sent[0] as [string, string[]];
    assert.equal(to, "A");
    assert.equal(msg.length, 2);
    assert.equal(msg[0], "ident");
    assert.match(msg[1], /^[a-z]{24}$/);
    assert.ok(!seen.has(msg[1]), "duplicate ident");
    seen.add(msg[1]);
  }
  // Repeated idents replace the legacy one rather than piling up.
  assert.equal(h.broker.issued, 1);
  // With the real random source, too.
  const sent: string[] = [];
  const r = new Broker<number>({
    outbox: { send: (_to, f) => sent.push(f), close() {}, ice() {}, wake() {} },
    now: () => 0,
    randomBytes: (b) => crypto.getRandomValues(b),
  });
  const conns = Array.from({ length: 50 }, (_, i) => r.open(i));
  for (const c of conns) r.frame(c, '["ident"]');
  const ids = sent.map((f) => (JSON.parse(f) as string[])[1]);
  assert.equal(new Set(ids).size, 50);
  for (const id of ids) assert.match(id, /^[a-z]{24}$/);
  assert.equal(r.issued, 50);
  for (const c of conns) r.close(c);
  assert.equal(r.issued, 0);
});

Deno.test("ident stays unique when the random source repeats itself", () => {
  // A source that replays the same bytes twice, then moves on: the broker must
  // notice the clash with an ident it already issued and draw again.
  let calls = 0;
  const sent: string[] = [];
  const b = new Broker<string>({
    outbox: { send: (_to, f) => sent.push(f), close() {}, ice() {}, wake() {} },
    now: () => 0,
    randomBytes: (buf) => {
      const fill = calls < 2 ? 7 : 7 + calls;
      calls++;
      for (let i = 0; i < buf.length; i++) buf[i] = (fill + i) & 0xff;
    },
  });
  const a = b.open("A");
  const c = b.open("B");
  b.frame(a, '["ident"]');
  b.frame(c, '["ident"]');
  const [x, y] = sent.map((f) => (JSON.parse(f) as string[])[1]);
  assert.match(x, /^[a-z]{24}$/);
  assert.match(y, /^[a-z]{24}$/);
  assert.notEqual(x, y);
});

Deno.test("ident letters skip biased bytes instead of wrapping them", () => {
  // Bytes ≥ 234 would over-represent a..z's first letters; the first fill is
  // all such bytes, so the ident must come entirely from later fills.
  let calls = 0;
  const sent: string[] = [];
  const b = new Broker<string>({
    outbox: { send: (_to, f) => sent.push(f), close() {}, ice() {}, wake() {} },
    now: () => 0,
    randomBytes: (buf) => {
      buf.fill(calls++ === 0 ? 250 : 233);
    },
  });
  b.frame(b.open("A"), '["ident"]');
  assert.deepEqual(JSON.parse(sent[0]), ["ident", "z".repeat(24)]);
});

Deno.test("a repeated [ident] replaces the ident the legacy join uses", () => {
  const h = harness();
  h.open("A");
  h.call("A", "ident");
  const first = (h.sent()[0][1] as string[])[1];
  h.call("A", "ident");
  const second = (h.sent()[0][1] as string[])[1];
  assert.notEqual(first, second);
  assert.equal(h.broker.issued, 1);
  h.call("A", "join", "lobby");
  assert.deepEqual(h.sent(), [["A", ["join", `lobby:${second}`]]]);
  h.call("A", "ice");
  assert.deepEqual(h.take(), [{ kind: "ice", to: "A", ident: `lobby:${second}` }]);
  h.close("A");
  // The answer comes after the close and goes nowhere.
  h.broker.iceReply(h.conn("A"), []);
  assert.deepEqual(h.take(), []);
  assertEmpty(h);
});

// ---------------------------------------------------------------- error codes

Deno.test("bad-json: text that is not JSON, and binary that is not UTF-8", () => {
  const h = harness();
  joined(h, "r", "A");
  const before = counts(h);
  for (
    const f of [
      "",
      " ",
      "[",
      '["ping"',
      "ping",
      "['ping']",
      '["ping",]',
      "[1 2]",
      "NaN",
      "undefined",
      '["ping"]x',
      '["ping"]["ping"]',
      '\uFEFF["ping"]',
    ]
  ) {
    h.raw("A", f);
    expectError(h, "A", "frame", "bad-json");
  }
  for (
    const bytes of [
      new Uint8Array([0xff]),
      new Uint8Array([0x5b, 0x22, 0xc3, 0x28, 0x22, 0x5d]), // ["\xc3(" — broken sequence
      new Uint8Array([0x5b, 0x22, 0xed, 0xa0, 0x80, 0x22, 0x5d]), // encoded surrogate
      new Uint8Array([0x5b, 0x22, 0xc0, 0xaf, 0x22, 0x5d]), // overlong "/"
      new Uint8Array([0x5b, 0x22, 0xe2, 0x82]), // truncated
      new Uint8Array(),
      enc.encode("{not json"),
    ]
  ) {
    h.raw("A", bytes);
    expectError(h, "A", "frame", "bad-json");
  }
  assert.deepEqual(counts(h), before);
});

Deno.test("bad-frame: JSON that is not a non-empty array starting with a string", () => {
  const h = harness();
  h.open("A");
  for (
    const f of [
      "{}",
      '{"0":"ping"}',
      "[]",
      "[1]",
      "[null]",
      "[true]",
      '[["ping"]]',
      '[{"call":"ping"}]',
      '"ping"',
      "null",
      "42",
      "true",
    ]
  ) {
    h.raw("A", f);
    expectError(h, "A", "frame", "bad-frame");
    h.raw("A", enc.encode(f));
    expectError(h, "A", "frame", "bad-frame");
  }
});

Deno.test("unknown-call: the first element names no call", () => {
  const h = harness();
  h.open("A");
  for (
    const name of ["nope", "", "PING", "Ping", "stun", "bye", "error", "pong", " ping", "join "]
  ) {
    h.call("A", name);
    expectError(h, "A", name, "unknown-call");
  }
  h.call("A", "subscribe", "r", 1, { x: 2 });
  expectError(h, "A", "subscribe", "unknown-call");
  // The echoed name is bounded so a huge name is not reflected whole.
  const long = "x".repeat(10_000);
  h.call("A", long);
  const [[, msg]] = h.sent() as [string, string[]][];
  assert.equal(msg[0], "error");
  assert.equal(msg[2], "unknown-call");
  assert.ok(long.startsWith(msg[1]) && msg[1].length > 0 && msg[1].length <= 256);
});

Deno.test("bad-args: wrong argument count or type for each call", () => {
  const h = harness();
  joined(h, "r", "A", "B");
  const before = counts(h);
  const cases: unknown[][] = [
    ["ident", "x"],
    ["ident", null],
    ["join"],
    ["join", "a", "r", "x"],
    ["join", 1, "r"],
    ["join", "a", 1],
    ["join", null],
    ["join", ["r"]],
    ["join", { room: "r" }],
    ["signal"],
    ["signal", "r:a"],
    ["signal", "r:a", "r:b"],
    ["signal", "r:a", "r:b", 1, 2],
    ["signal", 1, "r:b", 1],
    ["signal", "r:a", null, 1],
    ["leave"],
    ["leave", "r:a", "x"],
    ["leave", 5],
    ["ice", "x"],
    ["ice", {}],
    ["ping", 1],
    ["ping", "pong"],
  ];
  for (const c of cases) {
    h.call("A", ...c);
    expectError(h, "A", c[0] as string, "bad-args");
  }
  assert.deepEqual(counts(h), before);
});

/** Names that break the naming rules, with why. */
const BAD_NAMES: [string, unknown][] = [
  ["empty", ""],
  ["257 characters", "a".repeat(257)],
  ["a colon", "a:b"],
  ["a space", "a b"],
  ["a tab", "a\tb"],
  ["a newline", "a\n"],
  ["NUL", "a\u0000"],
  ["DEL", "a\u007f"],
  ["non-ASCII", "grüße"],
  ["an emoji", "😀"],
  ["a number", 5],
  ["null", null],
  ["true", true],
  ["an array", ["a"]],
  ["an object", { a: 1 }],
];

for (const [why, bad] of BAD_NAMES) {
  Deno.test(`bad-args: a name with ${why} is refused in every call`, () => {
    const h = harness();
    joined(h, "r", "A", "B");
    h.call("A", "ident");
    h.take();
    const before = counts(h);
    const g = typeof bad === "string" ? bad : null;
    const cases: unknown[][] = [
      ["join", bad, "r"],
      ["join", "a", bad],
      ["join", bad],
      ["signal", "r:a", "r:b", bad], // data may be anything: this one is fine
      ["signal", g === null ? bad : `r:${g}`, "r:b", 1],
      ["signal", "r:a", g === null ? bad : `r:${g}`, 1],
      ["signal", g === null ? bad : `${g}:a`, "r:b", 1],
      ["leave", g === null ? bad : `r:${g}`],
      ["leave", g === null ? bad : `${g}:a`],
    ];
    for (const c of cases) {
      h.call("A", ...c);
      if (c[0] === "signal" && c[3] === bad) {
        assert.deepEqual(h.sent(), [["B", ["signal", "r:b", "r:a", bad]]]);
        continue;
      }
      expectError(h, "A", c[0] as string, "bad-args");
    }
    assert.deepEqual(counts(h), before);
  });
}

Deno.test("names: 256 characters and every printable ASCII character but ':' are fine", () => {
  const h = harness();
  h.open("A");
  h.open("B");
  const long = "i".repeat(256);
  const room = "R".repeat(256);
  h.call("A", "join", long, room);
  assert.deepEqual(h.sent(), [["A", ["join", `${room}:${long}`]]]);
  let printable = "";
  for (let c = 0x21; c <= 0x7e; c++) if (c !== 0x3a) printable += String.fromCharCode(c);
  h.call("B", "join", printable, room);
  assert.deepEqual(h.sent(), [
    ["B", ["join", `${room}:${printable}`]],
    ["A", ["stun", `${room}:${long}`, `${room}:${printable}`, false]],
    ["B", ["stun", `${room}:${printable}`, `${room}:${long}`, true]],
  ]);
  h.call("B", "signal", `${room}:${printable}`, `${room}:${long}`, printable);
  assert.deepEqual(h.sent(), [["A", [
    "signal",
    `${room}:${long}`,
    `${room}:${printable}`,
    printable,
  ]]]);
  h.call("A", "leave", `${room}:${long}`);
  assert.deepEqual(h.sent(), [
    ["A", ["leave", `${room}:${long}`]],
    ["B", ["bye", `${room}:${printable}`, `${room}:${long}`]],
  ]);
});

Deno.test("bad-args: malformed global idents in signal and leave", () => {
  const h = harness();
  joined(h, "r", "A", "B");
  const bad = [
    "ra",
    ":a",
    "r:",
    ":",
    "r:a:b",
    "r::a",
    `${"r".repeat(257)}:a`,
    `r:${"a".repeat(257)}`,
    "r :a",
    "r:ä",
  ];
  for (const g of bad) {
    h.call("A", "signal", g, "r:b", 1);
    expectError(h, "A", "signal", "bad-args");
    h.call("A", "signal", "r:a", g, 1);
    expectError(h, "A", "signal", "bad-args");
    h.call("A", "leave", g);
    expectError(h, "A", "leave", "bad-args");
  }
  // The longest valid global ident is 256 + 1 + 256 characters.
  const big = `${"r".repeat(256)}:${"a".repeat(256)}`;
  h.call("A", "leave", big);
  expectError(h, "A", "leave", "not-owner");
});

// ---------------------------------------------------------------- limits

Deno.test("limit: idents per connection", () => {
  const h = harness({ limits: { maxIdentsPerConnection: 2 } });
  h.open("A");
  h.call("A", "join", "a", "r1");
  h.call("A", "join", "a", "r2");
  h.take();
  const before = counts(h);
  h.call("A", "join", "a", "r3");
  expectError(h, "A", "join", "limit");
  h.call("A", "join", "b", "r1");
  expectError(h, "A", "join", "limit");
  assert.deepEqual(counts(h), before);
  // Re-joining a held ident at the limit is still the harmless no-op.
  h.call("A", "join", "a", "r1");
  assert.deepEqual(h.sent(), [["A", ["join", "r1:a"]]]);
  // The limit is per connection: another connection is not affected.
  h.open("B");
  h.call("B", "join", "b", "r3");
  assert.deepEqual(h.sent(), [["B", ["join", "r3:b"]]]);
  // Leaving frees a slot.
  h.call("A", "leave", "r2:a");
  h.call("A", "join", "a", "r3");
  assert.deepEqual(h.sent(), [
    ["A", ["leave", "r2:a"]],
    ["A", ["join", "r3:a"]],
    ["B", ["stun", "r3:b", "r3:a", false]],
    ["A", ["stun", "r3:a", "r3:b", true]],
  ]);
});

Deno.test("limit: peers per room", () => {
  const h = harness({ limits: { maxPeersPerRoom: 2 } });
  joined(h, "r", "A", "B");
  h.open("C");
  const before = counts(h);
  h.call("C", "join", "c", "r");
  expectError(h, "C", "join", "limit");
  assert.deepEqual(counts(h), before);
  // A second ident of a member counts too.
  h.call("A", "join", "a2", "r");
  expectError(h, "A", "join", "limit");
  // Members re-joining a full room are answered as usual.
  h.call("A", "join", "a", "r");
  assert.deepEqual(h.sent(), [["A", ["join", "r:a"]]]);
  // A taken ident is reported as taken, not as a full room.
  h.call("C", "join", "b", "r");
  expectError(h, "C", "join", "ident-taken");
  // Other rooms are not full.
  h.call("C", "join", "c", "s");
  assert.deepEqual(h.sent(), [["C", ["join", "s:c"]]]);
  // A place frees up when someone goes.
  h.close("B");
  h.take();
  h.call("C", "join", "c", "r");
  assert.deepEqual(h.sent(), [
    ["C", ["join", "r:c"]],
    ["A", ["stun", "r:a", "r:c", false]],
    ["C", ["stun", "r:c", "r:a", true]],
  ]);
});

// ---------------------------------------------------------------- too-large

/** A frame of exactly `bytes` UTF-8 bytes that names an unknown call. */
function sizedFrame(bytes: number, fill: string): string {
  const fillBytes = enc.encode(fill).length;
  const base = '["x",""]';
  const n = Math.floor((bytes - base.length) / fillBytes);
  const pad = bytes - base.length - n * fillBytes;
  const f = `["x","${fill.repeat(n)}${"a".repeat(pad)}"]`;
  assert.equal(enc.encode(f).length, bytes);
  return f;
}

for (
  const [label, fill] of [
    ["ASCII", "a"],
    ["2-byte UTF-8", "é"],
    ["3-byte UTF-8", "€"],
    ["4-byte UTF-8 (surrogate pairs)", "😀"],
  ]
) {
  Deno.test(`too-large counts bytes, not characters: ${label}`, () => {
    const max = 300;
    const h = harness({ limits: { maxFrameBytes: max } });
    joined(h, "r", "A", "B");
    // Exactly at the limit: accepted (an unknown call, not too-large).
    h.raw("A", sizedFrame(max, fill));
    expectError(h, "A", "x", "unknown-call");
    h.raw("A", enc.encode(sizedFrame(max, fill)));
    expectError(h, "A", "x", "unknown-call");
    // One byte over: error, then close with 1009.
    h.raw("A", sizedFrame(max + 1, fill));
    const effects = h.take();
    assert.equal(effects.length, 3, JSON.stringify(effects));
    assert.equal(effects[0].kind, "send");
    const err = JSON.parse((effects[0] as { frame: string }).frame);
    assert.deepEqual(err.slice(0, 3), ["error", "frame", "too-large"]);
    assert.equal((effects[0] as Effect & { kind: "send" }).to, "A");
    assert.deepEqual(effects[1], {
      kind: "close",
      to: "A",
      code: CloseCode.tooLarge,
      reason: (effects[1] as { reason: string }).reason,
    });
    assert.equal(CloseCode.tooLarge, 1009);
    // The closed connection is gone: the others get bye.
    assert.deepEqual(effects[2], { kind: "send", to: "B", frame: '["bye","r:b","r:a"]' });
    assert.deepEqual(counts(h), [1, 1, 1, 0]);
    h.raw("A", '["ping"]');
    assert.deepEqual(h.take(), []);
  });
}

Deno.test("too-large: binary frames count their byte length, even when not UTF-8", () => {
  const h = harness({ limits: { maxFrameBytes: 100 } });
  h.open("A");
  h.open("B");
  h.raw("A", new Uint8Array(100).fill(0xff));
  expectError(h, "A", "frame", "bad-json");
  h.raw("A", new Uint8Array(101).fill(0x20));
  const effects = h.take();
  assert.equal(effects.length, 2);
  assert.deepEqual(JSON.parse((effects[0] as { frame: string }).frame).slice(0, 3), [
    "error",
    "frame",
    "too-large",
  ]);
  assert.equal((effects[1] as { code: number }).code, 1009);
  // A huge text frame never gets parsed.
  h.raw("B", `["ping"${" ".repeat(1000)}]`);
  const e2 = h.take();
  assert.equal((e2[1] as { code: number }).code, 1009);
  assertEmpty(h);
  assert.equal(h.broker.stats.errors["too-large"], 2);
  assert.equal(h.broker.stats.framesIn.ping, 0);
});

Deno.test("too-large applies with the default limit of 64 KiB", () => {
  const h = harness();
  joined(h, "r", "A", "B");
  const data = "x".repeat(DEFAULT_LIMITS.maxFrameBytes - 40);
  h.call("A", "signal", "r:a", "r:b", data);
  assert.deepEqual(h.sent(), [["B", ["signal", "r:b", "r:a", data]]]);
  h.call("A", "signal", "r:a", "r:b", data + "x".repeat(41));
  const effects = h.take();
  assert.equal(effects.filter((e) => e.kind === "close").length, 1);
  assert.equal((effects.find((e) => e.kind === "close") as { code: number }).code, 1009);
});

// ---------------------------------------------------------------- binary frames

Deno.test("binary frames holding UTF-8 JSON are treated exactly like text frames", () => {
  const h = harness();
  h.open("A");
  h.open("B");
  const bin = (v: unknown) => enc.encode(JSON.stringify(v));
  h.raw("A", bin(["ident"]));
  const id = (h.sent()[0][1] as string[])[1];
  h.raw("A", bin(["join", "lobby"]));
  h.raw("B", bin(["join", "bob", "lobby"]));
  assert.deepEqual(h.sent(), [
    ["A", ["join", `lobby:${id}`]],
    ["B", ["join", "lobby:bob"]],
    ["A", ["stun", `lobby:${id}`, "lobby:bob", false]],
    ["B", ["stun", "lobby:bob", `lobby:${id}`, true]],
  ]);
  h.raw("B", bin(["signal", "lobby:bob", `lobby:${id}`, { sdp: "grüße 😀" }]));
  const [e] = h.take();
  assert.equal(e.kind, "send");
  assert.equal(typeof (e as { frame: string }).frame, "string");
  assert.deepEqual(JSON.parse((e as { frame: string }).frame), [
    "signal",
    `lobby:${id}`,
    "lobby:bob",
    { sdp: "grüße 😀" },
  ]);
  h.raw("A", bin(["ice"]));
  assert.deepEqual(h.take(), [{ kind: "ice", to: "A", ident: `lobby:${id}` }]);
  h.broker.iceReply(h.conn("A"), []);
  h.take();
  h.raw("A", bin(["nope"]));
  expectError(h, "A", "nope", "unknown-call");
  h.raw("A", bin(["join"]));
  expectError(h, "A", "join", "bad-args");
  h.raw("A", bin(["leave", `lobby:${id}`]));
  assert.deepEqual(h.sent(), [
    ["A", ["leave", `lobby:${id}`]],
    ["B", ["bye", "lobby:bob", `lobby:${id}`]],
  ]);
  // A binary frame is its bytes: a subarray view counts only its own bytes.
  const buf = enc.encode('xx["ping"]yy');
  h.raw("A", buf.subarray(2, 10));
  assert.deepEqual(h.sent(), [["A", ["pong"]]]);
});

// ---------------------------------------------------------------- stats

Deno.test("stats count accepted calls, sent frames by type, errors by code and relayed bytes", () => {
  const h = harness({ limits: { maxFrameBytes: 200, maxPeersPerRoom: 2 } });
  h.open("A");
  h.open("B");
  h.open("C");
  h.call("A", "ident"); // ident
  h.call("A", "join", "r"); // join
  h.call("B", "join", "b", "r"); // join + 2 stun
  h.call("C", "join", "c", "r"); // limit
  h.call("B", "signal", "r:b", "r:zz", 1); // unknown-peer
  h.call("B", "ping");
  h.call("B", "ice");
  h.broker.iceReply(h.conn("B"), []);
  h.raw("C", "nope"); // bad-json
  h.raw("C", "{}"); // bad-frame
  h.call("C", "what"); // unknown-call
  h.call("C", "join"); // bad-args
  h.call("C", "signal", "r:c", "r:b", 0); // not-owner
  h.call("C", "join", "b", "r"); // ident-taken
  const a = (h.sent()[0][1] as string[])[1];
  h.call("B", "signal", "r:b", `r:${a}`, { x: 1 });
  h.call("A", "signal", `r:${a}`, "r:b", "hello");
  const relayed = h.take().filter((e) => e.kind === "send" && e.frame.startsWith('["signal"'));
  h.call("B", "leave", "r:b"); // leave + bye
  h.call("C", "join", "c", "s");
  h.call("C", "signal", "s:c", `r:${a}`, 1); // cross-room
  h.call("C", "join", "lobby"); // no-ident
  h.raw("C", "x".repeat(201)); // too-large + close
  h.close("A");
  h.close("B");
  const s = h.broker.stats;
  assert.deepEqual(s.framesIn, {
    ident: 1,
    join: 6,
    signal: 5,
    leave: 1,
    ice: 1,
    ping: 1,
    auth: 0,
    challenge: 0,
    prove: 0,
    session: 0,
    resume: 0,
  });
  assert.deepEqual(s.framesOut, {
    ident: 1,
    join: 3,
    stun: 2,
    signal: 2,
    leave: 1,
    bye: 1,
    ice: 1,
    pong: 1,
    error: 11,
    auth: 0,
    challenge: 0,
    prove: 0,
    session: 0,
    resume: 0,
  });
  assert.deepEqual(s.errors, {
    "bad-json": 1,
    "bad-frame": 1,
    "unknown-call": 1,
    "bad-args": 1,
    "no-ident": 1,
    "ident-taken": 1,
    "not-owner": 1,
    "cross-room": 1,
    "unknown-peer": 1,
    limit: 1,
    "rate-limited": 0,
    "too-large": 1,
    forbidden: 0,
    unavailable: 0,
  });
  assert.equal(relayed.length, 2);
  assert.equal(
    s.bytesRelayed,
    relayed.reduce((n, e) => n + (e as { frame: string }).frame.length, 0),
  );
  assert.equal(s.connectionsOpened, 3);
  assertEmpty(h);
});

// ---------------------------------------------------------------- emptiness

Deno.test("state is empty after all connections close", () => {
  const h = harness({ limits: { maxIdentsPerConnection: 8 } });
  const names = ["A", "B", "C", "D", "E"];
  for (const n of names) {
    h.open(n);
    h.call(n, "ident");
    h.call(n, "join", "lobby");
    h.call(n, "join", n, "r1");
    h.call(n, "join", n, `own-${n}`);
    h.call(n, "join", `${n}2`, "r1");
    h.call(n, "signal", `r1:${n}`, "r1:A", "x");
    h.call(n, "ice");
  }
  h.call("A", "leave", "r1:A2");
  assert.ok(h.broker.rooms > 0 && h.broker.idents > 0 && h.broker.issued === 5);
  for (const n of ["C", "A", "E", "B", "D"]) h.close(n);
  assertEmpty(h);
  // And the names can all be used again from scratch.
  h.open("F");
  h.call("F", "join", "A", "r1");
  assert.deepEqual(h.sent().at(-1), ["F", ["join", "r1:A"]]);
  h.close("F");
  assertEmpty(h);
});

Deno.test("connections closed by the broker (too-large, abuse) leave no state", () => {
  const h = harness({ limits: { maxFrameBytes: 64, rate: 10, burst: 2, maxQueuedFrames: 8 } });
  h.open("A");
  h.call("A", "ident");
  h.call("A", "join", "r");
  h.raw("A", "x".repeat(65));
  h.open("B");
  h.call("B", "ident");
  h.call("B", "join", "r");
  for (let i = 0; i < 100; i++) h.raw("B", '["ping"]');
  assert.ok(h.take().some((e) => e.kind === "close" && e.to === "B" && e.code === 1008));
  assertEmpty(h);
});
