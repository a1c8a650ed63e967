/**
 * Resumable sessions in the pure broker, on an injected clock: a session is
 * opt-in; a socket that drops keeps its idents for the grace, with what
 * peers send it kept; a resume on a fresh connection takes every ident over
 * with no `bye` or `stun` for anyone; tokens are single-use; a grace that
 * runs out leaves as a close would, and nothing stays.
 */

import assert from "node:assert/strict";
import { grantFromClaims } from "../lib/auth/grant.ts";
import { matcher } from "../lib/auth/patterns.ts";
import { RESUMED_ELSEWHERE } from "../lib/diva/broker.ts";
import { type Effect, type Harness, harness } from "./helpers/broker_harness.ts";

function sentTo(effects: Effect[], to: string): unknown[][] {
  return effects.flatMap((e) =>
    e.kind === "send" && e.to === to ? [JSON.parse(e.frame) as unknown[]] : []
  );
}

/** A with three idents in room r with B and C; A asks for a session. Returns A's token. */
function setup(h: Harness): string {
  for (const n of ["B", "C"]) {
    h.open(n);
    h.call(n, "join", n.toLowerCase(), "r");
  }
  h.open("A");
  for (const i of ["a1", "a2", "a3"]) h.call("A", "join", i, "r");
  h.take();
  h.call("A", "session");
  const [reply] = sentTo(h.take(), "A");
  assert.equal(reply[0], "session");
  const token = String(reply[1]);
  assert.match(token, /^[A-Za-z0-9_-]{32}$/);
  return token;
}

Deno.test("session: a dropped socket keeps its idents; a resume takes them over with no bye or stun", () => {
  const h = harness();
  const token = setup(h);
  h.close("A");
  // Peers see nothing: no bye.
  assert.deepEqual(h.take().filter((e) => e.kind === "send"), []);
  assert.equal(h.broker.idents, 5);
  assert.equal(h.broker.sessionsInGrace, 1);
  // B signals A while it is away: the frame is kept, in order.
  h.call("B", "signal", "r:b", "r:a2", { n: 1 });
  h.call("C", "signal", "r:c", "r:a3", { n: 2 });
  assert.deepEqual(h.take().filter((e) => e.kind === "send"), []);
  h.advance(3000);
  h.open("A2");
  h.call("A2", "resume", token);
  const effects = h.take();
  const toA2 = sentTo(effects, "A2");
  assert.equal(toA2[0][0], "resume");
  const info = toA2[0][1] as { token: string; idents: string[] };
  assert.deepEqual(info.idents.sort(), ["r:a1", "r:a2", "r:a3"]);
  assert.notEqual(info.token, token, "the token rotates at each resume");
  assert.deepEqual(toA2.slice(1), [
    ["signal", "r:a2", "r:b", { n: 1 }],
    ["signal", "r:a3", "r:c", { n: 2 }],
  ]);
  // Nobody else heard anything: no bye, no stun.
  assert.deepEqual(effects.filter((e) => e.kind === "send" && e.to !== "A2"), []);
  // The new connection signals as the idents, and peers reach it.
  h.call("A2", "signal", "r:a1", "r:b", "hi");
  h.call("B", "signal", "r:b", "r:a1", "back");
  assert.deepEqual(sentTo(h.take(), "A2"), [["signal", "r:a1", "r:b", "back"]]);
  assert.equal(h.broker.connections, 3);
  assert.equal(h.broker.sessionsInGrace, 0);
  // The grace that would have run out does nothing now.
  h.advance(20_000);
  assert.deepEqual(h.take().filter((e) => e.kind === "send"), []);
});

Deno.test("session: a grace that runs out leaves as a close would, and nothing stays", () => {
  const h = harness({ limits: { sessionGrace: 5000 } });
  const token = setup(h);
  h.close("A");
  h.advance(4999);
  assert.deepEqual(h.take().filter((e) => e.kind === "send"), []);
  h.advance(1);
  const byes = h.take().filter((e) => e.kind === "send").map((e) =>
    JSON.parse((e as { frame: string }).frame)
  );
  assert.equal(byes.length, 6); // B and C each hear of a1, a2, a3
  assert.ok(byes.every((m) => m[0] === "bye"));
  assert.equal(h.broker.idents, 2);
  assert.equal(h.broker.sessions, 0);
  h.open("late");
  h.call("late", "resume", token);
  assert.deepEqual(sentTo(h.take(), "late")[0].slice(0, 3), ["error", "resume", "forbidden"]);
  for (const n of ["B", "C", "late"]) h.close(n);
  assert.deepEqual([h.broker.connections, h.broker.rooms, h.broker.idents], [0, 0, 0]);
});

Deno.test("session: a token works once; guessed, replayed and rotated tokens change nothing", () => {
  const h = harness();
  const token = setup(h);
  h.close("A");
  h.open("guess");
  h.call("guess", "resume", "A".repeat(32));
  assert.deepEqual(sentTo(h.take(), "guess")[0].slice(0, 3), ["error", "resume", "forbidden"]);
  h.open("A2");
  h.call("A2", "resume", token);
  const fresh = (sentTo(h.take(), "A2")[0][1] as { token: string }).token;
  // Replayed: the used token is gone.
  h.open("replay");
  h.call("replay", "resume", token);
  assert.deepEqual(sentTo(h.take(), "replay")[0].slice(0, 3), ["error", "resume", "forbidden"]);
  // Asking for a session again rotates the token: the previous one is gone too.
  h.call("A2", "session");
  const rotated = String(sentTo(h.take(), "A2")[0][1]);
  assert.notEqual(rotated, fresh);
  h.call("replay", "resume", fresh);
  assert.deepEqual(sentTo(h.take(), "replay")[0].slice(0, 3), ["error", "resume", "forbidden"]);
  assert.equal(h.broker.stats.sessions.refused, 3);
  assert.equal(h.conn("A2").idents.size, 3);
});

Deno.test("session: a half-open socket is closed with 4001 when its session resumes elsewhere", () => {
  const h = harness();
  const token = setup(h);
  // A's socket is still open as far as the server knows (the network dropped it silently).
  h.open("A2");
  h.call("A2", "resume", token);
  const effects = h.take();
  assert.deepEqual(effects.filter((e) => e.kind === "close"), [
    { kind: "close", to: "A", code: RESUMED_ELSEWHERE, reason: "session resumed elsewhere" },
  ]);
  assert.deepEqual(effects.filter((e) => e.kind === "send" && e.to !== "A2"), []);
  // The transport's close of the old socket later leaves nothing behind.
  h.close("A");
  assert.equal(h.broker.idents, 5);
  assert.deepEqual(h.take().filter((e) => e.kind === "send"), []);
});

Deno.test("session: without one, a close leaves at once as before; a broker close ends it", () => {
  const h = harness();
  h.open("B");
  h.call("B", "join", "b", "r");
  h.open("A");
  h.call("A", "join", "a", "r");
  h.take();
  h.close("A");
  assert.deepEqual(sentTo(h.take(), "B"), [["bye", "r:b", "r:a"]]);
  // A connection the broker closes (here: a frame too large) has no grace.
  const t = harness({ limits: { maxFrameBytes: 64 } });
  t.open("B");
  t.call("B", "join", "b", "r");
  t.open("A");
  t.call("A", "join", "a", "r");
  t.call("A", "session");
  t.take();
  t.raw("A", "x".repeat(100));
  assert.deepEqual(sentTo(t.take(), "B"), [["bye", "r:b", "r:a"]]);
  assert.equal(t.broker.sessions, 0);
});

Deno.test("session: what is kept is bounded; past the bound the session ends with bye", () => {
  const h = harness({ limits: { sessionBufferFrames: 3, rate: 0 } });
  setup(h);
  h.close("A");
  for (let i = 0; i < 3; i++) h.call("B", "signal", "r:b", "r:a1", i);
  assert.deepEqual(h.take().filter((e) => e.kind === "send"), []);
  h.call("B", "signal", "r:b", "r:a1", 3);
  const effects = h.take();
  assert.equal(sentTo(effects, "B").filter((m) => m[0] === "bye").length, 3);
  assert.equal(h.broker.stats.sessions.overflow, 1);
  assert.equal(h.broker.idents, 2);
});

Deno.test("session: grace 0 turns sessions off", () => {
  const h = harness({ limits: { sessionGrace: 0 } });
  h.open("A");
  h.call("A", "session");
  assert.deepEqual(sentTo(h.take(), "A")[0].slice(0, 3), ["error", "session", "unavailable"]);
});

Deno.test("session: a resume does not widen what the new connection may do", () => {
  const rules = { protectedRoom: matcher(["team-*"]), proofRoom: () => false, grants: true };
  const h = harness({ auth: rules });
  h.open("A", { grant: grantFromClaims({ sub: "u1", rooms: ["team-red"] }), expiresAt: Infinity });
  h.call("A", "join", "a", "team-red");
  h.call("A", "session");
  const token = String(sentTo(h.take(), "A").at(-1)![1]);
  h.close("A");
  // A connection with no token cannot take over a protected room's ident.
  h.open("thief");
  h.call("thief", "resume", token);
  assert.deepEqual(sentTo(h.take(), "thief")[0].slice(0, 3), ["error", "resume", "forbidden"]);
  assert.equal(h.broker.sessionsInGrace, 1);
  // The owner, with its token, can.
  h.open("A2", { grant: grantFromClaims({ sub: "u1", rooms: ["team-*"] }), expiresAt: Infinity });
  h.call("A2", "resume", token);
  assert.equal(sentTo(h.take(), "A2")[0][0], "resume");
});

Deno.test("session: a close the transport calls final (slow reader, bug) has no grace", () => {
  const h = harness();
  setup(h);
  h.broker.close(h.conn("A"), true);
  const byes = sentTo(h.take(), "B").filter((m) => m[0] === "bye");
  assert.equal(byes.length, 3);
  assert.equal(h.broker.sessions, 0);
  assert.equal(h.broker.sessionsInGrace, 0);
});
