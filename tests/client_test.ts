/**
 * The client library (`lib/client/client.js`, served at `/client.js`) under
 * Deno against a real server: requests, events, errors, clean close, and
 * reconnects that join the rooms again.
 */

import assert from "node:assert/strict";
import { SignalClient, SignalError } from "../lib/client/client.js";
import { CLIENT_JS } from "../lib/http/assets.ts";
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
