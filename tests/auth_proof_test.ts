/**
 * Key-proven idents on the real server: the squatting attack on a proof
 * room fails and the key's owner gets in; captured proofs are worth nothing
 * on another connection, twice, or after their challenge; and in a cluster
 * (a real redis-server, two `main.ts` processes) a proof made on one
 * instance keeps a squatter on the other out while signals cross.
 */

import assert from "node:assert/strict";
import { closeAll, keyIdent, proveOn, serve, Ws } from "./helpers/auth_harness.ts";
import { startRedis } from "./helpers/redis.ts";
import { type ServerProcess, startServerProcess } from "./helpers/server_process.ts";

function isError(m: unknown, call: string, code: string): boolean {
  return Array.isArray(m) && m[0] === "error" && m[1] === call && m[2] === code;
}

Deno.test("proofs: squatting a key ident in a proof room fails; its owner proves and joins", async () => {
  await using s = serve(["--proof-rooms", "keyed-*"]);
  const victim = await keyIdent();
  const mallory = await keyIdent();
  const owner = await Ws.open(s.ws);
  const attacker = await Ws.open(s.ws);
  try {
    // Mallory is there first, with the victim's public ident and no proof.
    let r = await attacker.call(["join", victim.ident, "keyed-room"]) as string[];
    assert.ok(isError(r, "join", "forbidden"), JSON.stringify(r));
    assert.equal(r[3], "room keyed-room needs an ident proven by its key on this connection");
    // A proof of her own key proves nothing about the victim's.
    await proveOn(attacker, mallory);
    r = await attacker.call(["join", victim.ident, "keyed-room"]) as string[];
    assert.ok(isError(r, "join", "forbidden"));
    // A made-up signature for the victim's ident.
    const c = await attacker.call(["challenge"]) as string[];
    r = await attacker.call(["prove", victim.ident, "A".repeat(86)]) as string[];
    assert.ok(isError(r, "prove", "forbidden"), JSON.stringify(r));
    // A signature by her key over the victim's ident and her challenge.
    await attacker.call(["challenge"]);
    r = await attacker.call(["prove", victim.ident, await mallory.prove(c[1])]) as string[];
    assert.ok(isError(r, "prove", "forbidden"));
    // Idents that are not keys cannot be proven at all.
    await attacker.call(["challenge"]);
    assert.ok(isError(await attacker.call(["prove", "alice", "x"]), "prove", "bad-args"));
    assert.ok(isError(await attacker.call(["join", "alice", "keyed-room"]), "join", "forbidden"));
    assert.equal(s.server.broker.idents, 0);

    // The owner proves and joins.
    await proveOn(owner, victim);
    assert.deepEqual(await owner.call(["join", victim.ident, "keyed-room"]), [
      "join",
      `keyed-room:${victim.ident}`,
    ]);
    // Mallory may join with her own proven key; the pair is announced.
    assert.deepEqual(await attacker.call(["join", mallory.ident, "keyed-room"]), [
      "join",
      `keyed-room:${mallory.ident}`,
    ]);
    assert.equal((await attacker.next() as string[])[0], "stun");
    assert.deepEqual(await owner.next(), [
      "stun",
      `keyed-room:${victim.ident}`,
      `keyed-room:${mallory.ident}`,
      false,
    ]);
    // Outside proof rooms a key ident is a name like any other.
    assert.deepEqual(await attacker.call(["join", victim.ident, "lobby"]), [
      "join",
      `lobby:${victim.ident}`,
    ]);
  } finally {
    await closeAll([owner, attacker]);
  }
});

Deno.test("proofs: a captured proof is useless on another connection, a second time, or for a newer challenge", async () => {
  await using s = serve(["--proof-rooms", "keyed-*"]);
  const victim = await keyIdent();
  const owner = await Ws.open(s.ws);
  const thief = await Ws.open(s.ws);
  try {
    // What an eavesdropper saw of the owner's proof.
    const captured = await proveOn(owner, victim);

    // Replayed as is: the thief's connection has no challenge.
    let r = await thief.call(captured) as string[];
    assert.ok(isError(r, "prove", "forbidden"), JSON.stringify(r));
    assert.equal(r[3], 'no fresh challenge: ask ["challenge"] first');
    // Replayed after asking a challenge: it was signed over another one.
    await thief.call(["challenge"]);
    r = await thief.call(captured) as string[];
    assert.ok(isError(r, "prove", "forbidden"));
    assert.equal(r[3], "the signature does not prove the ident");
    assert.ok(isError(await thief.call(["join", victim.ident, "keyed-x"]), "join", "forbidden"));

    // On its own connection the challenge is spent: a replay there fails too.
    assert.ok(isError(await owner.call(captured), "prove", "forbidden"));
    // A fresh challenge replaces an unused one: the older one proves nothing.
    const first = await owner.call(["challenge"]) as string[];
    await owner.call(["challenge"]);
    assert.ok(isError(
      await owner.call(["prove", victim.ident, await victim.prove(first[1])]),
      "prove",
      "forbidden",
    ));
    // A proof stays with its connection: the owner's second socket must prove again.
    const second = await Ws.open(s.ws);
    try {
      assert.ok(isError(
        await second.call(["join", victim.ident, "keyed-x"]),
        "join",
        "forbidden",
      ));
      await proveOn(second, victim);
      assert.deepEqual(await second.call(["join", victim.ident, "keyed-x"]), [
        "join",
        `keyed-x:${victim.ident}`,
      ]);
    } finally {
      await second.close();
    }
    // The first connection's proof still holds (failed attempts took nothing away).
    assert.deepEqual(await owner.call(["join", victim.ident, "keyed-y"]), [
      "join",
      `keyed-y:${victim.ident}`,
    ]);
    assert.equal(s.server.broker.idents, 1);
  } finally {
    await closeAll([owner, thief]);
  }
});

const REDIS_MISSING = (() => {
  try {
    new Deno.Command("redis-server", { args: ["--version"], stdout: "null" }).outputSync();
    return false;
  } catch {
    return true;
  }
})();
if (REDIS_MISSING && Deno.env.get("CI")) {
  throw new Error("redis-server is not installed, and CI must run the cluster tests");
}

Deno.test({
  name:
    "proofs: across two cluster instances a proof on A keeps a squatter on B out; signals cross",
  ignore: REDIS_MISSING,
  async fn() {
    const redis = await startRedis();
    const servers: ServerProcess[] = [];
    const sockets: Ws[] = [];
    const open = async (s: ServerProcess) => {
      const ws = await Ws.open(s.url);
      sockets.push(ws);
      return ws;
    };
    try {
      for (let i = 0; i < 2; i++) {
        servers.push(
          await startServerProcess(["--redis-url", redis.url, "--proof-rooms", "keyed-*"]),
        );
      }
      const [A, B] = servers;
      const alice = await keyIdent();
      const bob = await keyIdent();
      const room = "keyed-cluster";

      const a = await open(A);
      await proveOn(a, alice);
      assert.deepEqual(await a.call(["join", alice.ident, room]), [
        "join",
        `${room}:${alice.ident}`,
      ]);

      // The squatter on B: no proof, then a proof of another key, then a replay.
      const squatter = await open(B);
      assert.ok(isError(await squatter.call(["join", alice.ident, room]), "join", "forbidden"));
      const captured = await proveOn(a, alice);
      await squatter.call(["challenge"]);
      assert.ok(isError(await squatter.call(captured), "prove", "forbidden"));
      assert.ok(isError(await squatter.call(["join", alice.ident, room]), "join", "forbidden"));
      // The room on A heard nothing of it.
      assert.deepEqual(await a.drain(), []);

      // Bob proves his own key on B and joins: the pair crosses instances.
      const b = await open(B);
      await proveOn(b, bob);
      assert.deepEqual(await b.call(["join", bob.ident, room]), ["join", `${room}:${bob.ident}`]);
      const ga = `${room}:${alice.ident}`;
      const gb = `${room}:${bob.ident}`;
      assert.deepEqual(await b.next(), ["stun", gb, ga, true]);
      assert.deepEqual(await a.next(), ["stun", ga, gb, false]);
      b.send(["signal", gb, ga, { type: "offer", sdp: "v=0" }]);
      assert.deepEqual(await a.next(), ["signal", ga, gb, { type: "offer", sdp: "v=0" }]);
      a.send(["signal", ga, gb, { type: "answer" }]);
      assert.deepEqual(await b.next(), ["signal", gb, ga, { type: "answer" }]);

      // Alice's ident is held on A: even a proven holder of her key on B gets ident-taken.
      const alice2 = await open(B);
      await proveOn(alice2, alice);
      assert.ok(isError(await alice2.call(["join", alice.ident, room]), "join", "ident-taken"));
      assert.deepEqual(await squatter.drain(), []);
    } finally {
      await closeAll(sockets);
      for (const s of servers) await s.stop();
      await redis.stop();
    }
  },
});
