/**
 * The client library (`lib/client/client.js`, served at `/client.js`) under
 * Deno against a real server: requests, events, errors, clean close,
 * reconnects that join the rooms again, tokens (fixed or fetched, refreshed
 * before expiry, fresh on every reconnect) and key idents proven by the
 * client itself. Sessions: asked for by default, a server without them used
 * as before (tests/resume_*_test.ts cover resuming).
 */

import assert from "node:assert/strict";
import { keyIdentOf, SignalClient, SignalError, tokenClaims } from "../lib/client/client.js";
import { CLIENT_JS } from "../lib/http/assets.ts";
import { hs256, newSecret, nowSeconds } from "./helpers/auth_harness.ts";
import { startTestServer, type TestServer } from "./helpers/browser.ts";

/** Bound on any single wait, in ms. */
const T = 5000;

/** A client that gives up quickly on dead requests, for tests. */
function connect(server: TestServer, options: ConstructorParameters<typeof SignalClient>[1] = {}) {
  return new SignalClient(server.wsUrl, { requestTimeout: T, ...options });
}

Deno.test("the served /client.js is the library file the tests import", async () => {
  const server = await startTestServer();
  try {
    const res = await fetch(`${server.url}/client.js`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /^text\/javascript/);
    assert.equal(res.headers.get("access-control-allow-origin"), "*");
    const body = await res.text();
    const file = await Deno.readTextFile(new URL("../lib/client/client.js", import.meta.url));
    assert.equal(body, file);
    assert.equal(body, CLIENT_JS);
    // A browser revalidates with the ETag and gets 304.
    const again = await fetch(`${server.url}/client.js`, {
      headers: { "if-none-match": res.headers.get("etag") ?? "" },
    });
    assert.equal(again.status, 304);
    await again.body?.cancel();
    const dts = await fetch(`${server.url}/client.d.ts`);
    assert.equal(dts.status, 200);
    assert.match(await dts.text(), /export declare class SignalClient/);
    const demo = await fetch(`${server.url}/demo?room=x`);
    assert.equal(demo.status, 200);
    assert.match(demo.headers.get("content-type") ?? "", /^text\/html/);
    assert.match(await demo.text(), /from "\/client\.js"/);
  } finally {
    await server.stop();
  }
});

Deno.test("ident, join, stun, signal, ice, ping, leave and bye", async () => {
  const server = await startTestServer(["--stun-urls", "stun:127.0.0.1:3478"]);
  const a = connect(server);
  const b = connect(server);
  try {
    const id = await a.ident();
    assert.match(id, /^[a-z]+$/);

    const aJoined = a.once("join", undefined, T);
    const ga = await a.join("room");
    assert.match(ga, /^room:[a-z]+$/);
    assert.deepEqual(await aJoined, { global: ga, room: "room", ident: ga.slice(5) });
    assert.deepEqual(a.joined, [ga]);

    const aStun = a.once("stun", undefined, T);
    const bStun = b.once("stun", undefined, T);
    const gb = await b.join("room", "bob");
    assert.equal(gb, "room:bob");
    assert.deepEqual(await aStun, { local: ga, remote: gb, initiator: false });
    assert.deepEqual(await bStun, { local: gb, remote: ga, initiator: true });

    const aSignal = a.once("signal", undefined, T);
    assert.equal(b.signal(gb, ga, { type: "offer", sdp: "v=0" }), true);
    assert.deepEqual(await aSignal, { local: ga, remote: gb, data: { type: "offer", sdp: "v=0" } });
    const bSignal = b.once("signal", undefined, T);
    a.signal(ga, gb, ["any", 1, null]);
    assert.deepEqual((await bSignal).data, ["any", 1, null]);

    assert.deepEqual(await b.ice(), [{ urls: ["stun:127.0.0.1:3478"] }]);
    await b.ping();

    const aBye = a.once("bye", undefined, T);
    const bLeft = b.once("leave", undefined, T);
    await b.leave(gb);
    assert.deepEqual(await bLeft, { global: gb });
    assert.deepEqual(await aBye, { local: ga, remote: gb });
    assert.deepEqual(b.joined, []);
    assert.equal(server.server.broker.idents, 1);
  } finally {
    await Promise.all([a.close(), b.close()]);
    await server.stop();
  }
});

Deno.test("refusals reject the request and are emitted as error events", async () => {
  const server = await startTestServer();
  const a = connect(server);
  const b = connect(server);
  try {
    await a.join("room", "alice");

    const taken = b.once("error", undefined, T);
    await assert.rejects(b.join("room", "alice"), (e: unknown) => {
      assert.ok(e instanceof SignalError);
      assert.equal(e.code, "ident-taken");
      assert.equal(e.detail, "room:alice");
      return true;
    });
    assert.deepEqual(await taken, {
      call: "join",
      code: "ident-taken",
      detail: "room:alice",
    });
    assert.deepEqual(b.joined, []);

    // A name with a colon breaks the naming rules: the oldest pending join gets it.
    await assert.rejects(b.join("a:b", "x"), (e: unknown) => {
      assert.ok(e instanceof SignalError);
      return e.code === "bad-args";
    });

    const notOwner = b.once("error", (e) => e.code === "not-owner", T);
    b.signal("room:alice", "room:alice", "hi");
    assert.equal((await notOwner).call, "signal");

    await assert.rejects(b.leave("room:alice"), SignalError);
    // Replies keep flowing after the refusals.
    assert.equal(await b.join("room", "bob"), "room:bob");
  } finally {
    await Promise.all([a.close(), b.close()]);
    await server.stop();
  }
});

Deno.test("close() closes cleanly, rejects pending work and never reconnects", async () => {
  const server = await startTestServer();
  const watcher = connect(server);
  const a = connect(server);
  await a.opened();
  await watcher.join("room", "watcher");
  await a.join("room", "alice");
  // With a session the server would keep alice for its grace: close() leaves first.
  if (!a.resumable) await a.once("session", undefined, T);
  assert.equal(a.resumable, true);
  const bye = watcher.once("bye", undefined, T);
  const closed = a.once("close", undefined, T);
  const pending = assert.rejects(a.ping(), /client closed/);
  await a.close();
  await pending;
  assert.deepEqual(await closed, {
    code: 1000,
    reason: "client closed",
    reconnecting: false,
    delay: 0,
  });
  assert.equal(a.state, "closed");
  await assert.rejects(a.ident(), /closed/);
  assert.equal(a.signal("room:alice", "room:bob", 1), false);
  // The server saw the close (the room got its bye) and freed the ident.
  assert.equal((await bye).remote, "room:alice");
  const b = connect(server);
  try {
    assert.equal(await b.join("room", "alice"), "room:alice");
  } finally {
    await Promise.all([b.close(), watcher.close()]);
    await server.stop();
  }
});

Deno.test("a server restart on the same port: both clients reconnect and re-join", async () => {
  let server = await startTestServer();
  const port = server.port;
  const fast = { reconnect: { initialDelay: 20, maxDelay: 200 } };
  const a = connect(server, fast);
  const b = connect(server, fast);
  try {
    const ga = await a.join("room", "alice");
    const gb = await b.join("room", "bob");

    const aDropped = a.once("close", undefined, T);
    const aBack = a.once("open", undefined, 10 * T);
    const bBack = b.once("open", undefined, 10 * T);
    const aRejoined = a.once("join", undefined, 10 * T);
    const bRejoined = b.once("join", undefined, 10 * T);
    await server.stop();
    const drop = await aDropped;
    assert.equal(drop.code, 1001);
    assert.equal(drop.reconnecting, true);
    assert.ok(drop.delay <= 20);

    server = await startTestServer(["--port", String(port)]);
    assert.deepEqual(await aBack, { reconnected: true });
    assert.deepEqual(await bBack, { reconnected: true });
    assert.equal((await aRejoined).global, ga);
    assert.equal((await bRejoined).global, gb);
    assert.deepEqual(a.joined, [ga]);
    assert.equal(server.server.broker.idents, 2);

    // The pair works again on the new server.
    const got = b.once("signal", undefined, T);
    a.signal(ga, gb, "again");
    assert.deepEqual(await got, { local: gb, remote: ga, data: "again" });
  } finally {
    await Promise.all([a.close(), b.close()]);
    await server.stop();
  }
});

Deno.test("a drop by the server (frame too large): the client re-joins, the peer sees bye then stun", async () => {
  const server = await startTestServer(["--max-frame-bytes", "1024"]);
  const a = connect(server, { reconnect: { initialDelay: 10, maxDelay: 100 } });
  const b = connect(server);
  try {
    const ga = await a.join("room", "alice");
    const gb = await b.join("room", "bob");

    const tooLarge = a.once("error", undefined, T);
    const dropped = a.once("close", undefined, T);
    const bye = b.once("bye", undefined, T);
    const restun = b.once("stun", undefined, 10 * T);
    const rejoined = a.once("join", undefined, 10 * T);
    a.signal(ga, gb, "x".repeat(2000));
    assert.equal((await tooLarge).code, "too-large");
    const d = await dropped;
    assert.equal(d.code, 1009);
    assert.equal(d.reconnecting, true);
    assert.deepEqual(await bye, { local: gb, remote: ga });
    assert.equal((await rejoined).global, ga);
    // Re-joining makes a the joiner: b is told to wait for its offer.
    assert.deepEqual(await restun, { local: gb, remote: ga, initiator: false });
  } finally {
    await Promise.all([a.close(), b.close()]);
    await server.stop();
  }
});

Deno.test("reconnect delays grow exponentially with jitter and stay capped", async () => {
  // A port nobody listens on: every attempt fails at once.
  const server = await startTestServer();
  const url = server.wsUrl;
  await server.stop();
  const opts = { initialDelay: 10, factor: 2, maxDelay: 80, jitter: 0.5 };
  const c = new SignalClient(url, { reconnect: opts });
  const delays: number[] = [];
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("no reconnect attempts")), 10 * T);
      c.on("close", (e) => {
        assert.equal(e.reconnecting, true);
        delays.push(e.delay);
        if (delays.length === 6) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
  } finally {
    await c.close();
  }
  delays.forEach((d, i) => {
    const base = Math.min(opts.maxDelay, opts.initialDelay * opts.factor ** i);
    assert.ok(d >= base * (1 - opts.jitter) && d <= base, `attempt ${i}: ${d} ms vs base ${base}`);
  });
});

Deno.test("close() while still connecting settles and leaves nothing behind", async () => {
  const server = await startTestServer();
  try {
    const c = connect(server);
    const queued = assert.rejects(c.join("room", "early"), /client closed/);
    assert.equal(c.state, "connecting");
    await c.close();
    await queued;
    assert.equal(c.state, "closed");
    assert.equal(server.server.broker.idents, 0);
  } finally {
    await server.stop();
  }
});

// --- tokens and key idents ------------------------------------------------

/** An HS256 secret and a token minted with it, as an application backend would. */
function issuer(secret = newSecret()) {
  return {
    secret,
    token: (claims: Record<string, unknown>, sub: string, exp = nowSeconds() + 3600) =>
      hs256(secret, claims, { sub, exp }),
  };
}

Deno.test("token: a string goes in the jwt subprotocol (or the query, or an auth frame) and opens protected rooms", async () => {
  const iss = issuer();
  const server = await startTestServer(["--jwt-secrets", iss.secret, "--auth-rooms", "team-*"]);
  const token = await iss.token({ rooms: ["team-*"] }, "u1");
  const anon = connect(server);
  const clients = [anon];
  try {
    await assert.rejects(anon.join("team-a", "anon"), (e: unknown) => {
      assert.ok(e instanceof SignalError);
      return e.code === "forbidden";
    });
    for (const tokenIn of [undefined, "protocol", "query", "auth"] as const) {
      const c = connect(server, { token, tokenIn });
      clients.push(c);
      const auth = tokenIn === "auth" ? c.once("auth", undefined, T) : undefined;
      const ident = `u-${tokenIn ?? "default"}`;
      assert.equal(await c.join("team-a", ident), `team-a:${ident}`);
      if (auth) assert.deepEqual((await auth).sub, "u1");
      // The expiry is known either way: decoded from the token, or from the reply.
      assert.equal(c.tokenExpiry, tokenClaims(token)!.exp);
    }
    // A token is a subprotocol: the server answered jwt (a browser insists).
    const seen: string[] = [];
    class Spy extends WebSocket {
      constructor(url: string | URL, protocols?: string | string[] | WebSocketOptions) {
        super(url, protocols);
        seen.push(String(url), JSON.stringify(protocols));
        this.addEventListener("open", () => seen.push(this.protocol));
      }
    }
    const spy = connect(server, { token, WebSocket: Spy });
    clients.push(spy);
    await spy.opened();
    assert.deepEqual(seen, [server.wsUrl, JSON.stringify(["jwt", token]), "jwt"]);
    // A manual auth call hands over another token at once.
    assert.deepEqual(await spy.auth(await iss.token({ rooms: ["team-*"] }, "u1", 2_000_000_000)), {
      sub: "u1",
      exp: 2_000_000_000,
    });
    assert.equal(spy.tokenExpiry, 2_000_000_000);

    // A token function whose tokens last years is not called again and again
    // (a timer longer than 24.8 days would fire at once).
    let calls = 0;
    const longLived = connect(server, {
      token: () => (calls++, iss.token({ rooms: ["team-*"] }, "u2", 2_000_000_000)),
    });
    clients.push(longLived);
    await longLived.opened();
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(calls, 1);
  } finally {
    await Promise.all(clients.map((c) => c.close()));
    await server.stop();
  }
});

Deno.test("token: a function is refreshed before expiry and the socket outlives the first token; a fixed one ends", async () => {
  const iss = issuer();
  const server = await startTestServer([
    "--jwt-secrets",
    iss.secret,
    "--jwt-clock-skew",
    "0",
    "--auth-rooms",
    "team-*",
  ]);
  // Every token lives 2 s (1–2 s from when it is minted, in whole seconds).
  let calls = 0;
  const fresh = () => {
    calls++;
    return iss.token({ rooms: ["team-*"] }, "renewing", nowSeconds() + 2);
  };
  const renewing = connect(server, { token: fresh });
  const fixed = connect(server, {
    token: await iss.token({ rooms: ["team-*"] }, "fixed", nowSeconds() + 2),
  });
  const closes: unknown[] = [];
  renewing.on("close", (e) => closes.push(e));
  try {
    assert.equal(await renewing.join("team-a", "r"), "team-a:r");
    assert.equal(await fixed.join("team-a", "f"), "team-a:f");
    const firstExp = renewing.tokenExpiry!;
    assert.equal(typeof firstExp, "number");

    // The fixed token runs out: the server says why and closes; the client stops.
    const fixedErr = fixed.once("error", undefined, 3 * T);
    const fixedClose = await fixed.once("close", undefined, 3 * T);
    assert.deepEqual(await fixedErr, {
      call: "auth",
      code: "forbidden",
      detail: "the token expired; send a fresh one with auth",
    });
    assert.deepEqual(fixedClose, {
      code: 1008,
      reason: "token expired",
      reconnecting: false,
      delay: 0,
    });
    assert.equal(fixed.state, "closed");

    // Meanwhile the function's tokens were sent ahead of each expiry; by now
    // the first one has expired, and the socket is the same open one.
    while (Date.now() < firstExp * 1000 + 100) {
      const a = await renewing.once("auth", undefined, 3 * T);
      assert.equal(a.sub, "renewing");
      assert.ok(a.exp! >= firstExp);
    }
    assert.ok(calls >= 2, `${calls} calls`);
    assert.deepEqual(closes, []);
    assert.equal(renewing.state, "open");
    await renewing.ping();
    assert.deepEqual(renewing.joined, ["team-a:r"]);
    assert.equal(server.server.broker.idents, 1);
  } finally {
    await Promise.all([renewing.close(), fixed.close()]);
    await server.stop();
  }
});

Deno.test("token: every reconnect asks the function for a fresh token and re-joins with it", async () => {
  const iss = issuer();
  const server = await startTestServer([
    "--jwt-secrets",
    iss.secret,
    "--auth-rooms",
    "team-*",
    "--max-frame-bytes",
    "1024",
    "--turn-secret",
    "turn-secret-for-the-test",
    "--turn-urls",
    "turn:127.0.0.1:3478",
  ]);
  let calls = 0;
  const failures: string[] = [];
  const c = connect(server, {
    reconnect: { initialDelay: 10, maxDelay: 50 },
    token: () => {
      calls++;
      // The second attempt fails (the backend is down): the client retries.
      if (calls === 2) return Promise.reject(new Error("backend unavailable"));
      return iss.token({ rooms: ["team-*"], turn: true }, `conn-${calls}`);
    },
  });
  c.on("error", (e) => failures.push(`${e.call}:${e.code}`));
  try {
    assert.equal(await c.join("team-a", "alice"), "team-a:alice");
    // The TURN user names the subject of the token this connection presented.
    const first = await c.ice();
    assert.match(first[0].username!, /:conn-1\/team-a:alice$/);

    const rejoined = c.once("join", undefined, 10 * T);
    c.signal("team-a:alice", "team-a:alice", "x".repeat(2000)); // too large: the server drops us
    assert.equal((await rejoined).global, "team-a:alice");
    const again = await c.ice();
    assert.match(again[0].username!, /:conn-3\/team-a:alice$/);
    assert.equal(calls, 3);
    assert.deepEqual(failures, ["frame:too-large", "auth:no-token"]);
  } finally {
    await c.close();
    await server.stop();
  }
});

Deno.test("keys: the client makes or takes an Ed25519 key and proves its key ident before joining, after reconnects too", async () => {
  const server = await startTestServer(["--proof-rooms", "keyed-*", "--max-frame-bytes", "1024"]);
  const pair = await SignalClient.generateKeyPair();
  const owner = connect(server, { keyPair: pair, reconnect: { initialDelay: 10, maxDelay: 50 } });
  const made = connect(server, { keyPair: true });
  const squatter = connect(server);
  try {
    await owner.opened();
    const ident = owner.keyIdent!;
    assert.match(ident, /^[A-Za-z0-9_-]{43}$/);
    assert.equal(ident, await keyIdentOf(pair.publicKey));
    assert.equal(ident, await SignalClient.keyIdentOf(pair.publicKey));
    await made.opened();
    assert.notEqual(made.keyIdent, ident);

    // Without the key the ident is refused in a proof room.
    await assert.rejects(squatter.join("keyed-room", ident), (e: unknown) => {
      assert.ok(e instanceof SignalError);
      return e.code === "forbidden";
    });
    const proofs: string[] = [];
    owner.on("prove", (e) => proofs.push(e.ident));
    assert.equal(await owner.join("keyed-room", ident), `keyed-room:${ident}`);
    assert.equal(await owner.join("keyed-other", ident), `keyed-other:${ident}`);
    assert.deepEqual(proofs, [ident], "one proof per connection");
    assert.equal(await made.join("keyed-room", made.keyIdent), `keyed-room:${made.keyIdent}`);

    // Dropped by the server: the new connection proves again before re-joining.
    const back = new Promise<void>((resolve) => {
      let n = 0;
      owner.on("join", () => ++n === 2 && resolve());
    });
    owner.signal(`keyed-room:${ident}`, `keyed-room:${ident}`, "x".repeat(2000));
    await back;
    assert.deepEqual(proofs, [ident, ident]);
    assert.deepEqual(owner.joined.sort(), [`keyed-other:${ident}`, `keyed-room:${ident}`]);
    assert.equal(server.server.broker.idents, 3);
    // Joining with any other ident needs no proof.
    assert.equal(await owner.join("lobby", "plain"), "lobby:plain");
    assert.equal(proofs.length, 2);
  } finally {
    await Promise.all([owner.close(), made.close(), squatter.close()]);
    await server.stop();
  }
});

// --- sessions -------------------------------------------------------------

Deno.test("sessions: a server without them (--session-grace 0) is used as before: a drop re-joins", async () => {
  const server = await startTestServer(["--session-grace", "0", "--max-frame-bytes", "1024"]);
  const a = connect(server, { reconnect: { initialDelay: 10, maxDelay: 100 } });
  const b = connect(server);
  const errors: string[] = [];
  a.on("error", (e) => errors.push(`${e.call}:${e.code}`));
  try {
    const refused = a.once("session", undefined, T);
    const ga = await a.join("room", "alice");
    const gb = await b.join("room", "bob");
    const s = await refused;
    assert.equal(s.resumable, false);
    assert.match(s.detail, /^unavailable: /);
    assert.equal(a.resumable, false);

    const bye = b.once("bye", undefined, T);
    const restun = b.once("stun", undefined, 10 * T);
    const rejoined = a.once("join", undefined, 10 * T);
    a.signal(ga, gb, "x".repeat(2000)); // too large: the server drops a
    assert.deepEqual(await bye, { local: gb, remote: ga });
    assert.equal((await rejoined).global, ga);
    assert.deepEqual(await restun, { local: gb, remote: ga, initiator: false });
    // The probe is no error of the application's.
    assert.deepEqual(errors, ["frame:too-large"]);
  } finally {
    await Promise.all([a.close(), b.close()]);
    await server.stop();
  }
});

Deno.test("sessions: session: false never asks for one", async () => {
  const server = await startTestServer();
  const a = connect(server, { session: false });
  try {
    await a.join("room", "alice");
    await a.ping();
    assert.equal(a.resumable, false);
    assert.equal(server.server.broker.stats.framesIn.session, 0);
    assert.equal(server.server.broker.sessions, 0);
  } finally {
    await a.close();
    await server.stop();
  }
});

Deno.test("sessions: a server that knows no session call (unknown-call) is used as before", async () => {
  // A DIVA v2 server as far as this test goes: joins, and unknown-call for the rest.
  const frames: unknown[][] = [];
  const sockets: WebSocket[] = [];
  const fake = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const { socket, response } = Deno.upgradeWebSocket(req);
    sockets.push(socket);
    socket.onmessage = (e) => {
      const m = JSON.parse(String(e.data)) as string[];
      frames.push(m);
      if (m[0] === "join") socket.send(JSON.stringify(["join", `${m[2]}:${m[1]}`]));
      else socket.send(JSON.stringify(["error", m[0], "unknown-call", `no call ${m[0]}`]));
    };
    return response;
  });
  const a = new SignalClient(`ws://127.0.0.1:${fake.addr.port}/`, {
    requestTimeout: T,
    reconnect: { initialDelay: 10, maxDelay: 50 },
  });
  const errors: unknown[] = [];
  a.on("error", (e) => errors.push(e));
  try {
    const probe = a.once("session", undefined, T);
    assert.equal(await a.join("room", "alice"), "room:alice");
    assert.deepEqual(await probe, { resumable: false, detail: "unknown-call: no call session" });
    assert.equal(a.resumable, false);
    // Dropped: it joins again (no resume: it has no session).
    const rejoined = a.once("join", undefined, T);
    sockets[0].close(1011, "gone");
    assert.equal((await rejoined).global, "room:alice");
    assert.deepEqual(frames.map((f) => f[0]), ["session", "join", "session", "join"]);
    assert.deepEqual(errors, []);
  } finally {
    await a.close();
    await fake.shutdown();
  }
});
