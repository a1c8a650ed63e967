/**
 * Room grants and key-proven idents in the pure broker, on an injected
 * clock: who may join where, what a refusal says (and hides), token expiry
 * and refresh, TURN only for grants that allow it, and challenges that are
 * single-use, bound to their connection and expiring.
 */

import assert from "node:assert/strict";
import { type Grant, grantFromClaims } from "../lib/auth/grant.ts";
import { matcher } from "../lib/auth/patterns.ts";
import { base64url, CHALLENGE_TTL_MS, proofMessage, verifyProof } from "../lib/auth/proof.ts";
import type { Access, AuthRules, Question } from "../lib/diva/broker.ts";
import { type Effect, type Harness, harness } from "./helpers/broker_harness.ts";

const RULES: AuthRules = {
  protectedRoom: matcher(["team-*", "vault"]),
  proofRoom: matcher(["keyed-*"]),
  grants: true,
};

function access(h: Harness, claims: Record<string, unknown>, ttlMs = 60_000): Access {
  return { grant: grantFromClaims(claims), expiresAt: h.now + ttlMs };
}

function sentTo(effects: Effect[], to: string): unknown[][] {
  return effects.flatMap((e) =>
    e.kind === "send" && e.to === to ? [JSON.parse(e.frame) as unknown[]] : []
  );
}

/** The question the broker asked since the last take (wakes aside). */
function askOf(h: Harness): Question {
  const asks = h.take().filter((e) => e.kind !== "wake");
  assert.equal(asks.length, 1, JSON.stringify(asks));
  assert.equal(asks[0].kind, "ask");
  return (asks[0] as { question: Question }).question;
}

function errorOf(h: Harness, to: string): unknown[] {
  const got = sentTo(h.take(), to);
  assert.equal(got.length, 1, JSON.stringify(got));
  return got[0].slice(0, 3);
}

Deno.test("grants: a protected room needs a token that grants it; open rooms stay open", () => {
  const h = harness({ auth: RULES });
  h.open("anon");
  h.call("anon", "join", "a", "team-red");
  assert.deepEqual(errorOf(h, "anon"), ["error", "join", "forbidden"]);
  h.call("anon", "join", "a", "lobby");
  assert.deepEqual(sentTo(h.take(), "anon"), [["join", "lobby:a"]]);

  h.open("member", access(h, { sub: "u1", rooms: ["team-*"] }));
  h.call("member", "join", "m", "team-red");
  assert.deepEqual(sentTo(h.take(), "member"), [["join", "team-red:m"]]);
  // A grant for team-* is no grant for vault.
  h.call("member", "join", "m", "vault");
  assert.deepEqual(errorOf(h, "member"), ["error", "join", "forbidden"]);
  assert.equal(h.broker.idents, 2);
});

Deno.test("grants: a refused join tells nothing of who is in the room", () => {
  const h = harness({ auth: RULES });
  h.open("member", access(h, { rooms: ["team-red"] }));
  h.call("member", "join", "alice", "team-red");
  h.take();
  h.open("outsider");
  // The ident is taken, but an outsider learns only that it may not join.
  h.call("outsider", "join", "alice", "team-red");
  assert.deepEqual(errorOf(h, "outsider"), ["error", "join", "forbidden"]);
  assert.equal(h.broker.stats.errors["ident-taken"], 0);
});

Deno.test("grants: idents outside the grant are refused, in any room", () => {
  const h = harness({ auth: RULES });
  h.open("A", access(h, { rooms: ["*"], idents: ["alice", "alice-*"] }));
  h.call("A", "join", "alice-phone", "lobby");
  h.call("A", "join", "bob", "lobby");
  const got = sentTo(h.take(), "A");
  assert.deepEqual(got[0], ["join", "lobby:alice-phone"]);
  assert.deepEqual(got[1].slice(0, 3), ["error", "join", "forbidden"]);
  assert.match(String(got[1][3]), /ident bob/);
});

Deno.test("grants: a grant's own limits replace the server's for its bearer", () => {
  const h = harness({ auth: RULES, limits: { maxIdentsPerConnection: 8 } });
  h.open("A", access(h, { rooms: ["*"], limits: { maxIdentsPerConnection: 1 } }));
  h.call("A", "join", "a1", "lobby");
  h.call("A", "join", "a2", "lobby");
  const got = sentTo(h.take(), "A");
  assert.deepEqual(got[1].slice(0, 3), ["error", "join", "limit"]);
});

Deno.test("grants: TURN only for a grant that allows it, once grants are in use", () => {
  const h = harness({ auth: RULES, recordTurn: true });
  h.open("anon");
  h.open("plain", access(h, { sub: "u1" }));
  h.open("relay", access(h, { sub: "u2", turn: true }));
  for (const c of ["anon", "plain", "relay"]) h.call(c, "ice");
  const asked = h.take().filter((e) => e.kind === "ice") as { to: string; turn?: boolean }[];
  assert.deepEqual(asked.map((e) => [e.to, e.turn]), [
    ["anon", false],
    ["plain", false],
    ["relay", true],
  ]);
  // Without grants in use, everyone gets TURN, as before.
  const open = harness({ recordTurn: true });
  open.open("anon");
  open.call("anon", "ice");
  assert.equal((open.take()[0] as { turn?: boolean }).turn, true);
});

Deno.test("grants: the TURN user names the token's subject and the global ident", () => {
  const h = harness({ auth: RULES });
  h.open("A", access(h, { sub: "user-7", rooms: ["*"], turn: true }));
  h.call("A", "join", "alice", "team-red");
  h.take();
  h.call("A", "ice");
  assert.deepEqual(h.take(), [{ kind: "ice", to: "A", ident: "user-7/team-red:alice" }]);
});

Deno.test("expiry: a token that runs out closes the connection with 1008, said why", () => {
  const h = harness({ auth: RULES });
  h.open("B");
  h.call("B", "join", "b", "lobby");
  h.open("A", access(h, { sub: "u1", rooms: ["*"] }, 5000));
  h.call("A", "join", "a", "lobby");
  h.take();
  h.advance(4999);
  assert.deepEqual(h.take().filter((e) => e.kind !== "wake"), []);
  h.advance(1);
  const effects = h.take();
  assert.deepEqual(sentTo(effects, "A")[0].slice(0, 3), ["error", "auth", "forbidden"]);
  assert.deepEqual(effects.filter((e) => e.kind === "close"), [
    { kind: "close", to: "A", code: 1008, reason: "token expired" },
  ]);
  assert.deepEqual(sentTo(effects, "B"), [["bye", "lobby:b", "lobby:a"]]);
});

Deno.test("expiry: a fresh token in an auth call keeps the connection, and shaping wakes still come", () => {
  const h = harness({ auth: RULES, limits: { rate: 10, burst: 2, burstPerPair: 0 } });
  h.open("A", access(h, { sub: "u1", rooms: ["*"] }, 5000));
  h.call("A", "auth", "the-fresh-token");
  const q = askOf(h);
  assert.deepEqual(q, { kind: "token", token: "the-fresh-token" });
  // Frames after the call wait for its answer.
  h.call("A", "ping");
  assert.deepEqual(h.take(), []);
  h.broker.answer(h.conn("A"), q, access(h, { sub: "u1", exp: 2_000_000_000 }, 60_000));
  const got = sentTo(h.take(), "A");
  assert.deepEqual(got, [["auth", { sub: "u1", exp: 2_000_000_000 }], ["pong"]]);
  // Budget-shaped frames still run on time, and the old expiry is gone.
  for (let i = 0; i < 4; i++) h.call("A", "ping");
  h.advance(10_000);
  const later = h.take();
  assert.equal(later.filter((e) => e.kind === "close").length, 0);
  assert.equal(sentTo(later, "A").filter((m) => m[0] === "pong").length, 4);
  h.advance(60_000);
  assert.equal(h.take().filter((e) => e.kind === "close").length, 1);
});

Deno.test("refresh: a refused or foreign token changes nothing", () => {
  const h = harness({ auth: RULES });
  h.open("A", access(h, { sub: "u1", rooms: ["team-red"] }));
  h.call("A", "auth", "x");
  const q = askOf(h);
  h.broker.answer(h.conn("A"), q, "the token has expired");
  assert.deepEqual(errorOf(h, "A"), ["error", "auth", "forbidden"]);
  h.call("A", "auth", "y");
  const q2 = askOf(h);
  h.broker.answer(h.conn("A"), q2, access(h, { sub: "someone-else", rooms: ["*"] }));
  assert.deepEqual(errorOf(h, "A"), ["error", "auth", "forbidden"]);
  // Still the old grant: team-red only.
  h.call("A", "join", "a", "team-blue");
  assert.deepEqual(errorOf(h, "A"), ["error", "join", "forbidden"]);
});

// ---------------------------------------------------------------- key-proven idents

async function keyPair(): Promise<{ ident: string; sign(challenge: string): Promise<string> }> {
  const keys = await crypto.subtle.generateKey({ name: "Ed25519" }, true, [
    "sign",
    "verify",
  ]) as CryptoKeyPair;
  const ident = base64url(new Uint8Array(await crypto.subtle.exportKey("raw", keys.publicKey)));
  return {
    ident,
    async sign(challenge) {
      const sig = await crypto.subtle.sign(
        "Ed25519",
        keys.privateKey,
        proofMessage(challenge, ident),
      );
      return base64url(new Uint8Array(sig));
    },
  };
}

/** Answers every proof question with the real verification. */
async function answerProofs(h: Harness, name: string): Promise<void> {
  for (const e of h.effects) {
    if (e.kind !== "ask" || e.to !== name || e.question.kind !== "proof") continue;
    const q = e.question;
    h.broker.answer(h.conn(name), q, await verifyProof(q.ident, q.challenge, q.signature));
  }
}

function challengeOf(h: Harness, name: string): string {
  const got = sentTo(h.take(), name);
  assert.equal(got[0][0], "challenge");
  return String(got[0][1]);
}

Deno.test("proofs: a proven key ident may join a proof room; squatting it without the key fails", async () => {
  const h = harness({ auth: RULES });
  const owner = await keyPair();
  h.open("squatter");
  h.call("squatter", "join", owner.ident, "keyed-room");
  assert.deepEqual(errorOf(h, "squatter"), ["error", "join", "forbidden"]);

  h.open("owner");
  h.call("owner", "challenge");
  const c = challengeOf(h, "owner");
  assert.match(c, /^[A-Za-z0-9_-]{43}$/);
  h.call("owner", "prove", owner.ident, await owner.sign(c));
  await answerProofs(h, "owner");
  h.call("owner", "join", owner.ident, "keyed-room");
  assert.deepEqual(sentTo(h.take(), "owner"), [
    ["prove", owner.ident],
    ["join", `keyed-room:${owner.ident}`],
  ]);
  // Rooms that need no proof do not care.
  h.call("squatter", "join", "anyone", "lobby");
  assert.deepEqual(sentTo(h.take(), "squatter"), [["join", "lobby:anyone"]]);
});

Deno.test("proofs: a challenge works once, on its own connection, before it expires", async () => {
  const h = harness({ auth: RULES });
  const k = await keyPair();
  h.open("A");
  h.open("B");
  h.call("A", "challenge");
  const c = challengeOf(h, "A");
  const sig = await k.sign(c);
  // Replayed on another connection: B has no such challenge.
  h.call("B", "prove", k.ident, sig);
  assert.deepEqual(errorOf(h, "B"), ["error", "prove", "forbidden"]);
  h.call("B", "challenge");
  challengeOf(h, "B");
  // B's own challenge is another one: A's signature does not prove anything there.
  h.call("B", "prove", k.ident, sig);
  await answerProofs(h, "B");
  assert.deepEqual(errorOf(h, "B"), ["error", "prove", "forbidden"]);
  // A uses its challenge once...
  h.call("A", "prove", k.ident, sig);
  await answerProofs(h, "A");
  assert.deepEqual(sentTo(h.take(), "A"), [["prove", k.ident]]);
  // ...and a second use of the same proof finds no challenge.
  h.call("A", "prove", k.ident, sig);
  assert.deepEqual(errorOf(h, "A"), ["error", "prove", "forbidden"]);
  // An expired challenge is refused.
  h.call("A", "challenge");
  const late = challengeOf(h, "A");
  h.advance(CHALLENGE_TTL_MS + 1);
  h.call("A", "prove", k.ident, await k.sign(late));
  assert.deepEqual(errorOf(h, "A"), ["error", "prove", "forbidden"]);
});

Deno.test("proofs: only key idents can be proven", () => {
  const h = harness({ auth: RULES });
  h.open("A");
  h.call("A", "challenge");
  h.take();
  h.call("A", "prove", "alice", "c2ln");
  assert.deepEqual(errorOf(h, "A"), ["error", "prove", "bad-args"]);
});

Deno.test("grants: a broker without rules behaves as DIVA v2", () => {
  const h = harness();
  h.open("A");
  h.call("A", "join", "a", "team-red");
  h.call("A", "join", "b", "keyed-x");
  assert.deepEqual(sentTo(h.take(), "A"), [["join", "team-red:a"], ["join", "keyed-x:b"]]);
  // Nothing to verify with: an auth call is answered, not left hanging.
  const plain = harness();
  const grant: Grant = grantFromClaims({ sub: "x" });
  plain.open("A", { grant, expiresAt: Infinity });
  plain.call("A", "ice");
  assert.equal(plain.take()[0].kind, "ice");
});
