/**
 * Auth on the other protocols of the same server: y-webrtc topics are rooms
 * (`--auth-rooms` protects them), and a PeerJS client, which builds its
 * socket URL itself, carries its bearer token as its `key` (its `token` is
 * PeerJS's own session token); the token's `idents` grant PeerJS ids.
 */

import assert from "node:assert/strict";
import { parseConfig } from "../lib/config.ts";
import { closeAll, hs256, newSecret, serve, upgrade, Ws } from "./helpers/auth_harness.ts";

Deno.test("y-webrtc: a protected topic needs a token that grants it; open topics stay open", async () => {
  const secret = newSecret();
  await using s = serve(["--jwt-secrets", secret, "--auth-rooms", "team-*"]);
  const token = await hs256(secret, { sub: "u1", rooms: ["team-red"] });
  let anon: Ws | undefined, member: Ws | undefined;
  try {
    anon = await Ws.open(`${s.ws}yjs`);
    anon.send({ type: "subscribe", topics: ["team-red", "lobby"] });
    assert.deepEqual(await anon.next(), {
      type: "error",
      code: "forbidden",
      detail: "these topics need a token that grants them; not subscribed",
      topics: ["team-red"],
    });
    // The open topic was taken; a publish to the protected one is not subscribed.
    anon.send({ type: "publish", topic: "lobby", data: 1 });
    assert.deepEqual(await anon.next(), { type: "publish", topic: "lobby", data: 1, clients: 1 });
    anon.send({ type: "publish", topic: "team-red", data: "spy" });
    assert.equal((await anon.next() as { code: string }).code, "not-subscribed");

    member = await Ws.open(`${s.ws}yjs?token=${token}`);
    member.send({ type: "subscribe", topics: ["team-red"] });
    member.send({ type: "publish", topic: "team-red", data: 2 });
    assert.deepEqual(await member.next(), {
      type: "publish",
      topic: "team-red",
      data: 2,
      clients: 1,
    });
    // The outsider heard nothing of it: its next message is the pong to a ping sent now.
    assert.deepEqual(await anon.call({ type: "ping" }), { type: "pong" });
  } finally {
    await closeAll([anon, member]);
  }
});

Deno.test("y-webrtc: with --auth-required, an upgrade without a token is refused with 401", async () => {
  const secret = newSecret();
  await using s = serve(["--jwt-secrets", secret, "--auth-required"]);
  assert.equal((await upgrade(s.port, "/yjs")).status, 401);
  const token = await hs256(secret, { rooms: ["*"] });
  assert.equal((await upgrade(s.port, `/yjs?token=${token}`)).status, 101);
});

/** A PeerJS socket URL, as the peerjs client builds it for path "/". */
function peerjsUrl(s: { ws: string }, key: string, id: string, token = "sessiontoken"): string {
  return `${s.ws}peerjs?key=${encodeURIComponent(key)}&id=${id}&token=${token}&version=1.5.5`;
}

Deno.test("PeerJS: with token keys configured, plain keys still work and its own token is not a JWT", async () => {
  const secret = newSecret();
  await using s = serve(["--jwt-secrets", secret]);
  const a = await Ws.open(peerjsUrl(s, "peerjs", "alice"));
  try {
    assert.deepEqual(await a.next(), { type: "OPEN" });
  } finally {
    await a.close();
  }
});

Deno.test("PeerJS: a bearer token as the key opens the granted ids only, in the key's namespace", async () => {
  const secret = newSecret();
  await using s = serve(["--jwt-secrets", secret, "--auth-required"]);
  const token = await hs256(secret, { sub: "u1", idents: ["alice"] });
  let a: Ws | undefined, b: Ws | undefined, c: Ws | undefined;
  try {
    // Without a token, refused before the socket opens.
    assert.equal((await upgrade(s.port, "/peerjs?key=peerjs&id=x&token=t")).status, 401);
    a = await Ws.open(peerjsUrl(s, token, "alice"));
    assert.deepEqual(await a.next(), { type: "OPEN" });
    // An id outside the grant is refused.
    b = await Ws.open(peerjsUrl(s, token, "mallory"));
    assert.deepEqual(await b.next(), {
      type: "ERROR",
      payload: { msg: "The token does not grant this id" },
    });
    assert.equal((await b.closed()).code, 1008);
    // Another bearer reaches alice: both sit in the first key's namespace.
    const other = await hs256(secret, { sub: "u2", idents: ["bob"] });
    c = await Ws.open(peerjsUrl(s, other, "bob"));
    assert.deepEqual(await c.next(), { type: "OPEN" });
    c.send({ type: "OFFER", dst: "alice", payload: { sdp: "x" } });
    assert.deepEqual(await a.next(), {
      type: "OFFER",
      src: "bob",
      dst: "alice",
      payload: { sdp: "x" },
    });
  } finally {
    await closeAll([a, b, c]);
  }
});

Deno.test("config: a true-or-false setting given bare means true", () => {
  const parse = (args: string[]) =>
    parseConfig({ args, env: () => undefined, readTextFile: () => "x".repeat(40) });
  const cmd = parse(["--jwt-secrets", "s".repeat(40), "--auth-required", "--port", "1"]);
  assert.ok(cmd.kind === "run");
  assert.equal(cmd.config.auth.required, true);
  assert.equal(cmd.config.port, 1);
  const off = parse(["--jwt-secrets", "s".repeat(40), "--auth-required", "false"]);
  assert.ok(off.kind === "run" && off.config.auth.required === false);
  const last = parse(["--jwt-secrets", "s".repeat(40), "--auth-required"]);
  assert.ok(last.kind === "run" && last.config.auth.required === true);
});
