/**
 * The PeerJS wire on the real server, over plain WebSockets and fetch: the
 * URL/query handshake and its refusals, reconnection with the same token,
 * the relay with `src` set by the server, the offline queue and EXPIRE, the
 * HTTP API (description, id, peers, CORS) beside the status page, malformed
 * and oversize frames answered and counted while the process lives on, the
 * concurrent limit, and a configurable base path.
 *
 * PeerJS has no ping, so a test that needs to know its earlier frames were
 * handled sends itself a message and waits for it: one connection's frames
 * are handled in order.
 */

import assert from "node:assert/strict";
import { startTestServer, type TestServer } from "./helpers/browser.ts";
import { type CloseInfo, WsClient } from "./helpers/ws_client.ts";

async function withServer(
  args: string[],
  body: (s: TestServer) => Promise<void>,
): Promise<void> {
  const server = await startTestServer(args);
  try {
    await body(server);
  } finally {
    await server.stop();
  }
}

/** The value of a metric line, e.g. `peerjs_errors_total{code="bad-json"}`. */
async function metric(server: TestServer, line: string): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const found = text.split("\n").find((l) => l.startsWith(line + " "));
  assert.ok(found !== undefined, `no metric ${line}`);
  return Number(found.slice(line.length + 1));
}

/** The socket URL a PeerJS client builds for path "/". */
function peerUrl(server: TestServer, id: string, token: string, key = "peerjs", path = "/") {
  const q = new URLSearchParams({ key, id, token, version: "1.5.5" });
  return `ws://127.0.0.1:${server.port}${path}peerjs?${q}`;
}

/** A PeerJS connection as the client makes it, once it got OPEN. */
async function join(server: TestServer, id: string, token = `t-${id}`): Promise<WsClient> {
  const c = await WsClient.connect(peerUrl(server, id, token));
  assert.deepEqual(await c.next(), { type: "OPEN" });
  return c;
}

let barriers = 0;

/** Everything `c` (holding `id`) received before a message it sends itself now. */
async function drain(c: WsClient, id: string): Promise<unknown[]> {
  const mark = `barrier-${++barriers}`;
  c.send({ type: "CANDIDATE", dst: id, payload: mark });
  const got: unknown[] = [];
  for (;;) {
    const m = await c.next() as { payload?: unknown };
    if (m?.payload === mark) return got;
    got.push(m);
  }
}

/** Opens a socket that the server refuses: its one message and how it closed. */
async function refused(url: string): Promise<[unknown, CloseInfo]> {
  const c = await WsClient.connect(url);
  const m = await c.next();
  return [m, await c.closed()];
}

Deno.test("peerjs wire: OPEN, relay with src set by the server, heartbeat, status and metrics", async () => {
  await withServer([], async (server) => {
    const a = await join(server, "alice");
    const b = await join(server, "bob");
    try {
      a.send({ type: "OFFER", src: "mallory", dst: "bob", payload: { sdp: "v=0", type: "data" } });
      assert.deepEqual(await b.next(), {
        type: "OFFER",
        src: "alice",
        dst: "bob",
        payload: { sdp: "v=0", type: "data" },
      });
      b.send(new TextEncoder().encode('{"type":"ANSWER","dst":"alice","payload":{"a":1}}'));
      assert.deepEqual(await a.next(), {
        type: "ANSWER",
        src: "bob",
        dst: "alice",
        payload: { a: 1 },
      });
      a.send({ type: "HEARTBEAT" });
      assert.deepEqual(await drain(a, "alice"), []);

      const page = await (await fetch(server.url)).text();
      assert.match(page, /id="peerjs-connections">2</);
      assert.match(page, /id="peerjs-ids">2</);
      assert.match(page, /id="peerjs-queued">0</);
      assert.match(page, /ws:\/\/127\.0\.0\.1:\d+\/peerjs/);
      assert.equal(await metric(server, "peerjs_connections"), 2);
      assert.equal(await metric(server, 'peerjs_handshakes_total{outcome="open"}'), 2);
      assert.equal(await metric(server, 'peerjs_frames_in_total{type="HEARTBEAT"}'), 1);
      assert.equal(await metric(server, "peerjs_src_overridden_total"), 1);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });
});

Deno.test("peerjs wire: missing parameters, a bad key, ID-TAKEN; a reconnection takes over", async () => {
  await withServer(["--peerjs-keys", "k1,k2"], async (server) => {
    const base = `ws://127.0.0.1:${server.port}/peerjs`;
    for (const query of ["", "?key=k1&id=a", "?key=k1&token=t", "?id=a&token=t"]) {
      const [m, closed] = await refused(base + query);
      assert.deepEqual(m, {
        type: "ERROR",
        payload: { msg: "No id, token, or key supplied to websocket server" },
      }, query);
      assert.equal(closed.code, 1008, query);
    }
    const [bad, badClosed] = await refused(peerUrl(server, "a", "t", "peerjs"));
    assert.deepEqual(bad, { type: "ERROR", payload: { msg: "Invalid key provided" } });
    assert.equal(badClosed.code, 1008);

    const q = new URLSearchParams({ key: "k1", id: "a", token: "secret", version: "1.5.5" });
    const a = await WsClient.connect(`${base}?${q}`);
    assert.deepEqual(await a.next(), { type: "OPEN" });
    const [taken, takenClosed] = await refused(peerUrl(server, "a", "other", "k1"));
    assert.deepEqual(taken, { type: "ID-TAKEN", payload: { msg: "ID is taken" } });
    assert.equal(takenClosed.code, 1008);
    // The same id under another key is another id.
    const a2 = await WsClient.connect(peerUrl(server, "a", "x", "k2"));
    assert.deepEqual(await a2.next(), { type: "OPEN" });

    // The same token: the new socket takes over, the old one is closed.
    const again = await WsClient.connect(`${base}?${q}`);
    assert.deepEqual(await again.next(), { type: "OPEN" });
    assert.deepEqual(await a.closed(), { code: 1000, reason: "taken over by a reconnection" });
    again.send({ type: "OFFER", dst: "a", payload: "to myself" });
    assert.deepEqual(await again.next(), {
      type: "OFFER",
      src: "a",
      dst: "a",
      payload: "to myself",
    });
    assert.equal(await metric(server, 'peerjs_handshakes_total{outcome="takeover"}'), 1);
    assert.equal(await metric(server, 'peerjs_handshakes_total{outcome="id-taken"}'), 1);
    assert.equal(await metric(server, 'peerjs_handshakes_total{outcome="invalid-params"}'), 4);
    assert.equal(await metric(server, 'peerjs_handshakes_total{outcome="invalid-key"}'), 1);
    assert.equal(await metric(server, "peerjs_ids"), 2);
    await Promise.all([again.close(), a2.close()]);
  });
});

Deno.test("peerjs wire: a message for an id not yet connected waits, or expires into EXPIRE", async () => {
  await withServer(["--peerjs-expire-timeout", "300"], async (server) => {
    const a = await join(server, "a");
    try {
      a.send({ type: "OFFER", dst: "late", payload: { n: 1 } });
      a.send({ type: "CANDIDATE", dst: "late", payload: { n: 2 } });
      assert.deepEqual(await drain(a, "a"), []);
      const late = await WsClient.connect(peerUrl(server, "late", "t"));
      assert.deepEqual(await late.next(), { type: "OPEN" });
      assert.deepEqual(await late.next(), {
        type: "OFFER",
        src: "a",
        dst: "late",
        payload: { n: 1 },
      });
      assert.deepEqual(await late.next(), {
        type: "CANDIDATE",
        src: "a",
        dst: "late",
        payload: { n: 2 },
      });
      await late.close();

      // No one comes for "never": after 300 ms the sender is told, once.
      a.send({ type: "OFFER", dst: "never", payload: 1 });
      a.send({ type: "CANDIDATE", dst: "never", payload: 2 });
      assert.deepEqual(await a.next(), { type: "EXPIRE", src: "never", dst: "a" });
      assert.deepEqual(await drain(a, "a"), []);
      assert.equal(await metric(server, 'peerjs_expired_total{reason="timeout"}'), 1);
      assert.equal(await metric(server, "peerjs_offline_delivered_total"), 2);
      assert.equal(await metric(server, "peerjs_offline_messages"), 0);
    } finally {
      await a.close();
    }
  });
});

Deno.test("peerjs http: id, peers, description beside the status page, CORS", async () => {
  await withServer([], async (server) => {
    const origin = { origin: "https://app.example" };
    const id = await fetch(`${server.url}/peerjs/id?ts=1&version=1.5.5`, { headers: origin });
    assert.equal(id.status, 200);
    assert.equal(id.headers.get("access-control-allow-origin"), "https://app.example");
    assert.match(
      await id.text(),
      /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/,
    );
    const wrongKey = await fetch(`${server.url}/nope/id`);
    assert.equal(wrongKey.status, 401);
    await wrongKey.body?.cancel();
    const peers = await fetch(`${server.url}/peerjs/peers`, { headers: origin });
    assert.equal(peers.status, 401);
    assert.equal(peers.headers.get("access-control-allow-origin"), "https://app.example");
    await peers.body?.cancel();
    const pre = await fetch(`${server.url}/peerjs/peers`, {
      method: "OPTIONS",
      headers: { ...origin, "access-control-request-method": "GET" },
    });
    assert.equal(pre.status, 204);
    await pre.body?.cancel();

    // `/` is the status page for people and the description for PeerJS.
    const html = await fetch(server.url);
    assert.match(html.headers.get("content-type")!, /^text\/html/);
    assert.match(await html.text(), /PeerJS/);
    const json = await fetch(server.url, { headers: { accept: "application/json" } });
    assert.deepEqual(await json.json(), {
      name: "PeerJS Server",
      description: "A server side element to broker connections between PeerJS clients.",
      website: "https://peerjs.com/",
    });
    const head = await fetch(`${server.url}/?ts=1`, { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.match(head.headers.get("content-type")!, /^application\/json/);
    await head.body?.cancel();
    // Methods the API does not serve get the server's 405.
    const post = await fetch(`${server.url}/peerjs/id`, { method: "POST", body: "x" });
    assert.equal(post.status, 405);
    await post.body?.cancel();
    assert.equal(await metric(server, 'peerjs_http_requests_total{route="id"}'), 2);
    assert.equal(await metric(server, "peerjs_http_unauthorized_total"), 2);
  });
});

Deno.test("peerjs http: discovery lists the ids held when it is on", async () => {
  await withServer(["--peerjs-allow-discovery", "true"], async (server) => {
    const a = await join(server, "a");
    const b = await join(server, "b");
    try {
      const r = await fetch(`${server.url}/peerjs/peers`);
      assert.equal(r.status, 200);
      assert.deepEqual(await r.json(), ["a", "b"]);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });
});

Deno.test("peerjs wire: malformed frames get ERROR, are counted, and the process lives on", async () => {
  await withServer(["--max-frame-bytes", "1024"], async (server) => {
    const a = await join(server, "a");
    const b = await join(server, "b");
    try {
      const frames: [string | Uint8Array, string][] = [
        ["not json", "bad-json"],
        [new Uint8Array([0x7b, 0xc3, 0x28, 0x7d]), "bad-json"],
        ['["OFFER"]', "bad-frame"],
        ["null", "bad-frame"],
        ['{"dst":"b"}', "bad-frame"],
        ['{"type":"OPEN"}', "unknown-type"],
        ['{"type":"OFFER"}', "bad-dst"],
        ['{"type":"LEAVE","dst":7}', "bad-dst"],
      ];
      for (const [frame] of frames) a.send(frame);
      const replies = await drain(a, "a") as { type: string; payload: { msg: string } }[];
      assert.equal(replies.length, frames.length);
      assert.ok(replies.every((r) => r.type === "ERROR" && typeof r.payload.msg === "string"));
      // Nothing was relayed, and the connection still works.
      a.send({ type: "OFFER", dst: "b", payload: 1 });
      assert.deepEqual(await b.next(), { type: "OFFER", src: "a", dst: "b", payload: 1 });
      assert.equal(await metric(server, 'peerjs_errors_total{code="bad-json"}'), 2);
      assert.equal(await metric(server, 'peerjs_errors_total{code="bad-frame"}'), 3);
      assert.equal(await metric(server, 'peerjs_errors_total{code="unknown-type"}'), 1);
      assert.equal(await metric(server, 'peerjs_errors_total{code="bad-dst"}'), 2);

      // An oversize frame: ERROR, then the transport closes with 1009.
      a.send({ type: "OFFER", dst: "b", payload: "x".repeat(2000) });
      assert.deepEqual(await a.next(), {
        type: "ERROR",
        payload: { msg: "Message is too large: over 1024 bytes" },
      });
      assert.equal((await a.closed()).code, 1009);
      assert.equal(await metric(server, 'peerjs_errors_total{code="too-large"}'), 1);
      assert.deepEqual(await drain(b, "b"), []);
      assert.equal(await metric(server, "peerjs_ids"), 1);
      assert.equal(await metric(server, "signal_internal_errors_total"), 0);
      assert.equal((await fetch(`${server.url}/healthz`)).status, 200);
      // The id is free again.
      const again = await join(server, "a");
      await again.close();
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });
});

Deno.test("peerjs wire: the concurrent limit refuses with 1013; a base path moves everything", async () => {
  await withServer(["--peerjs-concurrent-limit", "1"], async (server) => {
    const a = await join(server, "a");
    const [m, closed] = await refused(peerUrl(server, "b", "t"));
    assert.deepEqual(m, {
      type: "ERROR",
      payload: { msg: "Server has reached its concurrent user limit" },
    });
    assert.equal(closed.code, 1013);
    await a.close();
  });
  await withServer(["--peerjs-path", "/myapp"], async (server) => {
    const c = await WsClient.connect(peerUrl(server, "a", "t", "peerjs", "/myapp/"));
    assert.deepEqual(await c.next(), { type: "OPEN" });
    await c.close();
    const id = await fetch(`${server.url}/myapp/peerjs/id`);
    assert.equal(id.status, 200);
    await id.body?.cancel();
    const description = await fetch(`${server.url}/myapp/`);
    assert.equal((await description.json()).name, "PeerJS Server");
    // Nothing PeerJS is left at the root.
    const rootId = await fetch(`${server.url}/peerjs/id`);
    assert.equal(rootId.status, 404);
    await rootId.body?.cancel();
    await assert.rejects(WsClient.connect(peerUrl(server, "a", "t")));
  });
});
