/**
 * Resumable sessions against a real server over real sockets: a grace that
 * runs out (peers get `bye`, and the metrics show nothing left), tokens that
 * are guessed, replayed or used after rotation, a half-open old socket
 * closed with 4001 after it was sent what it never read, and the client
 * library: a refused resume falls back to joining again, and what the
 * application did while away (signals, a leave) takes effect on resume.
 */

import assert from "node:assert/strict";
import { SignalClient } from "../lib/client/client.js";
import { hs256, newSecret, nowSeconds } from "./helpers/auth_harness.ts";
import { startTestServer } from "./helpers/browser.ts";
import { metric, sessionState } from "./helpers/resume_metrics.ts";
import { CutProxy } from "./helpers/resume_proxy.ts";
import { RawWsClient, WsClient } from "./helpers/ws_client.ts";

/** Bound on any single wait, in ms. */
const T = 5000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The next text frame a raw client reads, parsed (pings are skipped). */
async function nextText(c: RawWsClient): Promise<unknown[]> {
  for (;;) {
    const f = await c.readFrame();
    if (f === null) throw new Error("the connection ended");
    if (f.kind === "text") return JSON.parse(f.text);
    if (f.kind === "close") throw new Error(`closed ${f.code} ${f.reason}`);
  }
}

/** A plain DIVA client joined to `room` as `ident`, its join reply taken. */
async function member(url: string, room: string, ident: string): Promise<WsClient> {
  const c = await WsClient.connect(url);
  c.send(["join", ident, room]);
  assert.deepEqual(await c.next(), ["join", `${room}:${ident}`]);
  return c;
}

/** A raw client holding `idents` in `room` and a session; returns it and the token. */
async function rawWithSession(
  port: number,
  room: string,
  idents: string[],
): Promise<{ raw: RawWsClient; token: string }> {
  const raw = await RawWsClient.connect(port);
  for (const i of idents) await raw.send(["join", i, room]);
  await raw.send(["session"]);
  for (;;) {
    const m = await nextText(raw);
    if (m[0] === "session") return { raw, token: String(m[1]) };
  }
}

Deno.test("resume: a grace that runs out (--session-grace 1) says bye to the peers, and nothing of the session stays", async () => {
  const server = await startTestServer(["--session-grace", "1"]);
  const b = await member(server.wsUrl, "r", "b");
  const c = await member(server.wsUrl, "r", "c");
  const { raw: a, token } = await rawWithSession(server.port, "r", ["a1", "a2", "a3"]);
  try {
    assert.equal((await b.drain()).length, 4); // stun for c, a1, a2, a3
    assert.equal((await c.drain()).length, 4); // stun for b, a1, a2, a3
    assert.deepEqual(await sessionState(server.url), {
      held: 1,
      grace: 0,
      idents: 5,
      rooms: 1,
      connections: 3,
    });

    // A's TCP connection drops without a close frame; the server sees it.
    const cutAt = performance.now();
    a.close();
    await sleep(400);
    assert.deepEqual(await b.drain(), [], "no bye during the grace");
    assert.deepEqual(await sessionState(server.url), {
      held: 1,
      grace: 1,
      idents: 5,
      rooms: 1,
      connections: 2,
    });

    const byes: unknown[] = [];
    for (let i = 0; i < 3; i++) byes.push(await b.next(3 * T));
    const byeAt = performance.now() - cutAt;
    assert.deepEqual(byes, [["bye", "r:b", "r:a1"], ["bye", "r:b", "r:a2"], [
      "bye",
      "r:b",
      "r:a3",
    ]]);
    assert.deepEqual(await c.drain(), [
      ["bye", "r:c", "r:a1"],
      ["bye", "r:c", "r:a2"],
      ["bye", "r:c", "r:a3"],
    ]);
    assert.ok(byeAt >= 900 && byeAt < 3000, `bye ${byeAt.toFixed(0)} ms after the cut`);
    assert.deepEqual(await sessionState(server.url), {
      held: 0,
      grace: 0,
      idents: 2,
      rooms: 1,
      connections: 2,
    });
    const events = await metric(server.url, "signal_session_events_total");
    assert.equal(events.get('{event="expired"}'), 1);
    assert.equal(events.get('{event="detached"}'), 1);

    // Too late: the token is gone, and asking changes nothing.
    const late = await WsClient.connect(server.wsUrl);
    late.send(["resume", token]);
    const refused = await late.next() as string[];
    assert.deepEqual(refused.slice(0, 3), ["error", "resume", "forbidden"]);
    assert.ok(!refused[3].includes(token), "an error never repeats the token");
    await late.close();
    await Promise.all([b.close(), c.close()]);
    await sleep(50);
    assert.deepEqual(await sessionState(server.url), {
      held: 0,
      grace: 0,
      idents: 0,
      rooms: 0,
      connections: 0,
    });
    console.log(`grace 1 s: bye ${byeAt.toFixed(0)} ms after the cut`);
  } finally {
    a.close();
    await server.stop();
  }
});

Deno.test("resume: guessed, replayed and rotated tokens are refused over a real WebSocket and change nothing", async () => {
  const server = await startTestServer();
  const b = await member(server.wsUrl, "r", "b");
  const a = await member(server.wsUrl, "r", "a");
  const open: WsClient[] = [b, a];
  try {
    assert.deepEqual(await a.drain(), [["stun", "r:a", "r:b", true]]);
    a.send(["session"]);
    const [, t0] = await a.next() as [string, string];
    assert.match(t0, /^[A-Za-z0-9_-]{32}$/);
    assert.deepEqual(await b.drain(), [["stun", "r:b", "r:a", false]]);
    const refusedWith = async (c: WsClient, token: string) => {
      c.send(["resume", token]);
      const m = await c.next() as string[];
      assert.deepEqual(m.slice(0, 3), ["error", "resume", "forbidden"], JSON.stringify(m));
      return m[3];
    };

    // Guessed, while the owner is still connected.
    const guess = await WsClient.connect(server.wsUrl);
    open.push(guess);
    await refusedWith(guess, "A".repeat(32));
    const bytes = crypto.getRandomValues(new Uint8Array(24));
    await refusedWith(
      guess,
      btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_"),
    );

    // The owner's socket closes; a fresh connection resumes with the token once.
    await a.close();
    const a2 = await WsClient.connect(server.wsUrl);
    open.push(a2);
    a2.send(["resume", t0]);
    const [kind, info] = await a2.next() as [string, { token: string; idents: string[] }];
    assert.equal(kind, "resume");
    assert.deepEqual(info.idents, ["r:a"]);
    const t1 = info.token;
    assert.notEqual(t1, t0);

    // Replayed: the spent token is refused.
    assert.match(await refusedWith(guess, t0), /no such session/);
    // Rotated by asking again: the previous token is refused, the new one is
    // not usable by the connection that holds it.
    a2.send(["session"]);
    const [, t2] = await a2.next() as [string, string];
    assert.notEqual(t2, t1);
    await refusedWith(guess, t1);
    assert.match(await refusedWith(a2, t2), /holds the session already/);

    // None of it changed anything: b heard nothing; the pair works; the
    // guesser holds nothing and cannot take a's ident.
    assert.deepEqual(await b.drain(), []);
    b.send(["signal", "r:b", "r:a", "still you?"]);
    assert.deepEqual(await a2.next(), ["signal", "r:a", "r:b", "still you?"]);
    guess.send(["join", "a", "r"]);
    assert.deepEqual((await guess.next() as string[]).slice(0, 3), [
      "error",
      "join",
      "ident-taken",
    ]);
    const events = await metric(server.url, "signal_session_events_total");
    assert.deepEqual(
      ["refused", "resumed"].map((e) => events.get(`{event="${e}"}`)),
      [5, 1],
    );
    assert.equal((await sessionState(server.url)).held, 1);
  } finally {
    await Promise.all(open.map((c) => c.close()));
    await server.stop();
  }
});

Deno.test("resume: the half-open old socket is sent what peers send, then closed with 4001; the new one gets those frames again", async () => {
  const server = await startTestServer();
  // A's socket stays open but A never reads: as far as the server can tell,
  // it is alive (a half-open TCP connection looks exactly like this).
  const { raw: a, token } = await rawWithSession(server.port, "r", ["a"]);
  const b = await member(server.wsUrl, "r", "b");
  let a2: WsClient | undefined;
  try {
    assert.deepEqual(await b.next(), ["stun", "r:b", "r:a", true]);
    b.send(["signal", "r:b", "r:a", { n: 1 }]);
    await b.drain();

    a2 = await WsClient.connect(server.wsUrl);
    a2.send(["resume", token]);
    const [kind, info] = await a2.next() as [string, { idents: string[]; from: number }];
    assert.equal(kind, "resume");
    assert.deepEqual(info.idents, ["r:a"]);
    // Sent to the old socket since its session reply: sent again, from 0.
    assert.equal(info.from, 0);
    assert.deepEqual(await a2.next(), ["stun", "r:a", "r:b", false]);
    assert.deepEqual(await a2.next(), ["signal", "r:a", "r:b", { n: 1 }]);

    // The old socket: what it was sent, then 4001.
    const got: unknown[] = [];
    let close: { code: number; reason: string } | undefined;
    for (;;) {
      const f = await a.readFrame();
      if (f === null) break;
      if (f.kind === "text") got.push(JSON.parse(f.text));
      if (f.kind === "close") {
        close = { code: f.code, reason: f.reason };
        break;
      }
    }
    assert.deepEqual(got, [["stun", "r:a", "r:b", false], ["signal", "r:a", "r:b", { n: 1 }]]);
    assert.deepEqual(close, { code: 4001, reason: "session resumed elsewhere" });
    assert.deepEqual(await b.drain(), [], "b heard nothing");

    a.close();
    await sleep(100);
    assert.deepEqual(await sessionState(server.url), {
      held: 1,
      grace: 0,
      idents: 2,
      rooms: 1,
      connections: 2,
    });
    // A clean close of the new socket keeps the session for its grace too
    // (the broker is not told how a socket closed; the client library
    // leaves its idents before closing).
    await Promise.all([a2.close(), b.close()]);
    await sleep(50);
    assert.deepEqual(await sessionState(server.url), {
      held: 1,
      grace: 1,
      idents: 1,
      rooms: 1,
      connections: 0,
    });
  } finally {
    a.close();
    await a2?.close();
    await b.close();
    await server.stop();
  }
});

Deno.test("resume: SignalClient falls back to joining again when the grace has run out", async () => {
  const server = await startTestServer(["--session-grace", "1"]);
  const proxy = CutProxy.start(server.port);
  const b = await member(server.wsUrl, "r", "b");
  // It comes back only after the grace (1 s) has ended.
  const a = new SignalClient(proxy.wsUrl, {
    requestTimeout: T,
    reconnect: { initialDelay: 1500, jitter: 0 },
  });
  const log: string[] = [];
  try {
    const granted = a.once("session", undefined, T);
    assert.equal(await a.join("r", "a"), "r:a");
    assert.equal((await granted).resumable, true);
    assert.deepEqual(await b.drain(), [["stun", "r:b", "r:a", false]]);
    const t0 = performance.now();
    const at = () => `${(performance.now() - t0).toFixed(0)}`;
    a.on("session", (e) => log.push(`session ${e.resumable} ${e.detail.split(":")[0]}`));
    a.on("resume", () => log.push("resume"));
    a.on("join", (e) => log.push(`join ${e.global}`));
    a.on("leave", (e) => log.push(`leave ${e.global}`));
    const rejoined = a.once("join", undefined, 3 * T);
    const renewed = a.once("session", (e) => e.resumable, 3 * T);

    // The connection goes, both sides at once: the server's grace starts.
    proxy.sever(proxy.links[0], { server: true });
    assert.deepEqual(await b.next(3 * T), ["bye", "r:b", "r:a"]);
    const byeAt = at();
    assert.deepEqual(await b.next(3 * T), ["stun", "r:b", "r:a", false]);
    const stunAt = at();
    assert.equal((await rejoined).global, "r:a");
    await renewed;
    assert.deepEqual(log, ["session false forbidden", "session true ", "join r:a"]);
    assert.equal(a.resumable, true);
    assert.deepEqual(a.joined, ["r:a"]);

    // The new membership works.
    const got = a.once("signal", undefined, T);
    b.send(["signal", "r:b", "r:a", "hello again"]);
    assert.equal((await got).data, "hello again");
    console.log(`fallback: bye at ${byeAt} ms, stun (re-join) at ${stunAt} ms after the cut`);
  } finally {
    await a.close();
    await b.close();
    await proxy.close();
    await server.stop();
  }
});

Deno.test("resume: SignalClient sends the signals made while away after the resume, and a leave made while away takes effect", async () => {
  const server = await startTestServer();
  const proxy = CutProxy.start(server.port);
  const b = await member(server.wsUrl, "r", "b");
  const a = new SignalClient(proxy.wsUrl, { requestTimeout: T });
  try {
    const granted = a.once("session", undefined, T);
    await a.join("r", "a1");
    await a.join("r", "a2");
    await granted;
    assert.equal((await b.drain()).length, 2);
    const leaves: string[] = [];
    a.on("leave", (e) => leaves.push(e.global));

    const dropped = a.once("close", undefined, T);
    const resumed = a.once("resume", undefined, T);
    proxy.sever(proxy.links[0]); // half-open: the server notices nothing
    await dropped;
    assert.equal(a.signal("r:a1", "r:b", "written while away"), true);
    await a.leave("r:a2");
    assert.deepEqual(a.joined, ["r:a1"]);
    const info = await resumed;
    assert.deepEqual(info, { idents: ["r:a1", "r:a2"], missed: 0 });

    assert.deepEqual(await b.next(), ["signal", "r:b", "r:a1", "written while away"]);
    assert.deepEqual(await b.next(), ["bye", "r:b", "r:a2"]);
    await a.ping();
    assert.deepEqual(await b.drain(), []);
    assert.deepEqual(leaves, ["r:a2"], "one leave event");
    assert.deepEqual(a.joined, ["r:a1"]);
    assert.equal(server.server.broker.idents, 2);
  } finally {
    await a.close();
    await b.close();
    await proxy.close();
    await server.stop();
  }
});

Deno.test("resume: with tokenIn auth the token goes before the resume, so a protected room's idents resume", async () => {
  const secret = newSecret();
  const server = await startTestServer(["--jwt-secrets", secret, "--auth-rooms", "team-*"]);
  const proxy = CutProxy.start(server.port);
  const b = await member(server.wsUrl, "lobby", "b");
  const token = () => hs256(secret, { rooms: ["team-*"] }, { sub: "u1", exp: nowSeconds() + 600 });
  const a = new SignalClient(proxy.wsUrl, { requestTimeout: T, token, tokenIn: "auth" });
  try {
    const granted = a.once("session", undefined, T);
    await a.join("team-red", "a");
    await a.join("lobby", "a");
    await granted;
    await b.drain();
    const resumed = a.once("resume", undefined, T);
    const refused = a.once("session", (e) => !e.resumable, T).then((e) => e.detail);
    proxy.sever(proxy.links[0]);
    const outcome = await Promise.race([resumed.then(() => "resumed"), refused]);
    assert.equal(outcome, "resumed");
    assert.deepEqual((await resumed).idents.sort(), ["lobby:a", "team-red:a"]);
    assert.deepEqual(await b.drain(), []);
  } finally {
    await a.close();
    await b.close();
    await proxy.close();
    await server.stop();
  }
});

Deno.test("resume: a reply the old socket lost settles no request made since (it is re-sent, but its own request failed)", async () => {
  const server = await startTestServer();
  const proxy = CutProxy.start(server.port);
  const a = new SignalClient(proxy.wsUrl, { requestTimeout: T });
  try {
    const granted = a.once("session", undefined, T);
    await a.join("r", "a");
    await granted;
    const link = proxy.links[0];
    // The way back goes first: the reply to this request is lost.
    proxy.mute(link);
    const lost = a.ident();
    const lostFailed = assert.rejects(lost, /connection lost/);
    const until = performance.now() + T;
    while (!link.frames.some((f) => f.afterCut && f.text?.startsWith('["ident"'))) {
      assert.ok(
        performance.now() < until,
        `the muted ident reply did not reach the proxy in ${T} ms`,
      );
      await sleep(5);
    }
    const lostIdent = JSON.parse(link.frames.find((f) => f.text?.startsWith('["ident"'))!.text!)[1];
    // A request made as the new socket opens, before the resume's reply.
    const fresh = a.once("open", undefined, T).then(() => a.ident());
    const resumed = a.once("resume", undefined, T);
    proxy.sever(link);
    await lostFailed;
    const info = await resumed;
    const got = await fresh;
    assert.notEqual(got, lostIdent, "the re-sent reply answered the new request");
    assert.match(got, /^[a-z]{24}$/);
    assert.equal(info.missed, 0);
    // The re-sent reply was the one frame the client had not seen.
    const reply = (await proxy.link(1)).frames.find((f) => f.text?.startsWith('["resume"'))!;
    assert.equal((JSON.parse(reply.text!)[1] as { resent: number }).resent >= 1, true);
    await a.ping();
  } finally {
    await a.close();
    await proxy.close();
    await server.stop();
  }
});
