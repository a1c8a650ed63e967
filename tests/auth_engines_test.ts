/**
 * Auth on the other protocols of the same server: y-webrtc topics are rooms
 * (`--auth-rooms` protects them), and a PeerJS client, which builds its
 * socket URL itself, carries its bearer token as its `key` (its `token` is
 * PeerJS's own session token); the token's `idents` grant PeerJS ids.
 */

import assert from "node:assert/strict";
import { parseConfig } from "../lib/config.ts";
import {
  closeAll,
  hs256,
  metrics,
  newSecret,
  nowSeconds,
  sample,
  serve,
  T,
  upgrade,
  Ws,
} from "./helpers/auth_harness.ts";

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

Deno.test("expiry: y-webrtc and PeerJS connections close with 1008 when their token expires", async () => {
  const secret = newSecret();
  await using s = serve([
    "--jwt-secrets",
    secret,
    "--jwt-clock-skew",
    "0",
    "--auth-rooms",
    "team-*",
  ]);
  // One expiry for all: 1–2 s ahead; one token good for an hour beside it.
  const exp = nowSeconds() + 2;
  const short = await hs256(secret, { rooms: ["team-*"], idents: ["*"] }, { sub: "u1", exp });
  const long = await hs256(secret, { rooms: ["team-*"], idents: ["*"] }, { sub: "u2" });
  let yShared: Ws | undefined, yPath: Ws | undefined, yLong: Ws | undefined, pj: Ws | undefined;
  try {
    // y-webrtc on its own path, and on the root it shares with DIVA.
    yPath = await Ws.open(`${s.ws}yjs?token=${short}`);
    yShared = await Ws.open(`${s.ws}?token=${short}`);
    yLong = await Ws.open(`${s.ws}yjs?token=${long}`);
    for (const y of [yPath, yShared, yLong]) {
      y.send({ type: "subscribe", topics: ["team-red"] });
      assert.deepEqual(await y.call({ type: "ping" }), { type: "pong" });
    }
    pj = await Ws.open(peerjsUrl(s, short, "alice"));
    assert.deepEqual(await pj.next(), { type: "OPEN" });

    for (const w of [yPath, yShared, pj]) {
      assert.deepEqual(await w.closed(), { code: 1008, reason: "token expired" });
    }
    assert.ok(Date.now() >= exp * 1000);
    // The holder of a token still valid is untouched and now alone in the topic.
    yLong.send({ type: "publish", topic: "team-red", data: 1 });
    assert.deepEqual(await yLong.next(T), {
      type: "publish",
      topic: "team-red",
      data: 1,
      clients: 1,
    });
    const m = await metrics(s.http);
    assert.equal(sample(m.body, "signal_token_expired_closed_total"), 3);
  } finally {
    await closeAll([yShared, yPath, yLong, pj]);
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
