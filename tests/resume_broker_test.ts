/**
 * The broker's side of a resume after a socket that died unnoticed (a
 * half-open TCP connection): frames it was sent since its session reply are
 * sent again after the resume reply, which says how many (`resent`) and
 * from which count (`from`), so a client that counted what it received
 * skips what it has; bounded in frames, bytes and age. And an ident issued
 * to the new connection before its resume is not leaked.
 */

import assert from "node:assert/strict";
import { type Harness, harness } from "./helpers/broker_harness.ts";

/** A (ident a) and B (ident b) in room r; A holds a session. Returns A's token. */
function pair(h: Harness): string {
  h.open("B");
  h.call("B", "join", "b", "r");
  h.open("A");
  h.call("A", "join", "a", "r");
  h.call("A", "session");
  const token = h.sent().find(([to, m]) => to === "A" && (m as string[])[0] === "session")!;
  return String((token[1] as string[])[1]);
}

type Info = { token: string; idents: string[]; from: number; resent: number };

let fresh = 0;

/** A fresh connection resumes with `token`: the reply's info and the frames that follow it. */
function resume(h: Harness, token: string): { info: Info; after: unknown[][] } {
  const name = `A${++fresh + 1}`;
  h.open(name);
  h.call(name, "resume", token);
  const toA2 = h.sent().filter(([to]) => to === name).map(([, m]) => m as unknown[]);
  assert.equal(toA2[0][0], "resume", JSON.stringify(toA2[0]));
  return { info: toA2[0][1] as Info, after: toA2.slice(1) };
}

Deno.test("resume after a half-open socket: what it was sent since its session reply comes again, counted", () => {
  const h = harness();
  const token = pair(h);
  // Sent to A's socket, which (unknown to the server) is dead.
  h.call("B", "signal", "r:b", "r:a", 1);
  h.call("A", "ping"); // A's own frames before the break still run
  h.call("B", "signal", "r:b", "r:a", 2);
  h.take();
  const { info, after } = resume(h, token);
  assert.deepEqual([info.from, info.resent], [0, 3]);
  assert.deepEqual(after, [["signal", "r:a", "r:b", 1], ["pong"], ["signal", "r:a", "r:b", 2]]);
  // The count starts again at the resume reply, re-sent frames included: a
  // second drop right now re-sends them from 0.
  h.call("B", "signal", "r:b", "r:a", 3);
  const again = resume(h, info.token);
  assert.deepEqual([again.info.from, again.info.resent], [0, 4]);
  assert.deepEqual(again.after.at(-1), ["signal", "r:a", "r:b", 3]);
});

Deno.test("resume after the server noticed: frames sent before the close, then those kept, in order", () => {
  const h = harness();
  const token = pair(h);
  h.call("B", "signal", "r:b", "r:a", "before");
  h.close("A");
  h.call("B", "signal", "r:b", "r:a", "kept");
  h.take();
  const { info, after } = resume(h, token);
  assert.deepEqual([info.from, info.resent], [0, 2]);
  assert.deepEqual(after, [["signal", "r:a", "r:b", "before"], ["signal", "r:a", "r:b", "kept"]]);
});

Deno.test("resume: what is sent again is bounded by frames, bytes and the grace in age; from says where it starts", () => {
  const h = harness({ limits: { sessionBufferFrames: 3, sessionBufferBytes: 4096, rate: 0 } });
  const token = pair(h);
  for (let i = 0; i < 5; i++) h.call("B", "signal", "r:b", "r:a", i);
  h.take();
  let r = resume(h, token);
  assert.deepEqual([r.info.from, r.info.resent], [2, 3]);
  assert.deepEqual(r.after.map((m) => m[3]), [2, 3, 4]);

  // Older than the grace (10 s): no longer kept for sending again.
  h.call("B", "signal", "r:b", "r:a", "old");
  h.advance(10_001);
  h.call("B", "signal", "r:b", "r:a", "new");
  h.take();
  r = resume(h, r.info.token);
  // 3 re-sent at the previous resume, then "old" and "new": only "new" is young enough.
  assert.deepEqual([r.info.from, r.info.resent], [4, 1]);
  assert.deepEqual(r.after, [["signal", "r:a", "r:b", "new"]]);

  // Larger than the byte bound: not kept at all (the client learns it missed it).
  h.call("B", "signal", "r:b", "r:a", "x".repeat(5000));
  h.take();
  r = resume(h, r.info.token);
  assert.deepEqual([r.info.from, r.info.resent], [2, 0]);
});

Deno.test("resume: asking for a session again starts the count afresh", () => {
  const h = harness();
  pair(h);
  h.call("B", "signal", "r:b", "r:a", "before the new token");
  h.call("A", "session");
  const reply = h.sent().find(([to, m]) => to === "A" && (m as string[])[0] === "session")!;
  const token = String((reply[1] as string[])[1]);
  h.call("B", "signal", "r:b", "r:a", "after");
  h.take();
  const { info, after } = resume(h, token);
  assert.deepEqual([info.from, info.resent], [0, 1]);
  assert.deepEqual(after, [["signal", "r:a", "r:b", "after"]]);
});

Deno.test("resume: an ident issued to the new connection before it resumed is forgotten, not leaked", () => {
  const h = harness();
  const token = pair(h);
  h.call("A", "ident"); // the session's connection has an issued ident too
  h.close("A");
  h.open("A2");
  h.call("A2", "ident");
  assert.equal(h.broker.issued, 2);
  h.call("A2", "resume", token);
  assert.equal(h.sent().find(([to]) => to === "A2")![1] instanceof Array, true);
  // The session's issued ident moved over; the one A2 had is gone.
  assert.equal(h.broker.issued, 1);
  h.close("A2");
  h.advance(20_000);
  h.close("B");
  assert.deepEqual(
    [h.broker.issued, h.broker.idents, h.broker.rooms, h.broker.sessions],
    [0, 0, 0, 0],
  );
});
