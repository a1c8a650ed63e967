/**
 * The y-webrtc wire on the real server, over plain WebSockets: both URLs,
 * the root shared with DIVA (the first frame picks the protocol), fan-out
 * with `clients`, malformed frames answered as the engine defines (the
 * process survives, the connection stays usable, metrics count them), the
 * size limit, and the status page.
 */

import assert from "node:assert/strict";
import { startTestServer, type TestServer } from "./helpers/browser.ts";
import { WsClient } from "./helpers/ws_client.ts";

/** Sends a ping and returns everything received before its pong. */
async function drain(c: WsClient): Promise<unknown[]> {
  c.send({ type: "ping" });
  const got: unknown[] = [];
  for (;;) {
    const m = await c.next() as { type?: string };
    if (m?.type === "pong") return got;
    got.push(m);
  }
}

/** The value of a metric line, e.g. `ywebrtc_errors_total{code="bad-json"}`. */
async function metric(server: TestServer, line: string): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const found = text.split("\n").find((l) => l.startsWith(line + " "));
  assert.ok(found !== undefined, `no metric ${line}`);
  return Number(found.slice(line.length + 1));
}

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

Deno.test("y-webrtc wire: pub/sub with clients on /yjs and on /, side by side with DIVA", async () => {
  await withServer([], async (server) => {
    const a = await WsClient.connect(`${server.wsUrl}yjs`);
    const b = await WsClient.connect(server.wsUrl);
    const diva = await WsClient.connect(server.wsUrl);
    try {
      a.send({ type: "subscribe", topics: ["room", 7] });
      assert.deepEqual((await drain(a)).map((m) => (m as { code: string }).code), ["bad-topic"]);
      b.send({ type: "subscribe", topics: ["room"] });
      assert.deepEqual(await drain(b), []);
      // The root still speaks DIVA to a client whose first frame is an array.
      diva.send(["ping"]);
      assert.deepEqual(await diva.next(), ["pong"]);

      const text = '{"type":"publish","topic":"room","data":{"type":"announce","from":"x"}}';
      b.send(new TextEncoder().encode(text));
      const expected = {
        type: "publish",
        topic: "room",
        data: { type: "announce", from: "x" },
        clients: 2,
      };
      assert.deepEqual(await a.next(), expected);
      assert.deepEqual(await b.next(), expected);

      a.send({ type: "unsubscribe", topics: ["room"] });
      b.send({ type: "publish", topic: "room", data: 1 });
      assert.deepEqual(await b.next(), { type: "publish", topic: "room", data: 1, clients: 1 });
      assert.deepEqual(await drain(a), []);

      const page = await (await fetch(server.url)).text();
      assert.match(page, /id="ywebrtc-connections">2</);
      assert.match(page, /id="ywebrtc-topics">1</);
      assert.match(page, /id="ywebrtc-subscriptions">1</);
      assert.match(page, /ws:\/\/127\.0\.0\.1:\d+\/yjs/);
      assert.equal(await metric(server, "ywebrtc_connections"), 2);
      assert.equal(await metric(server, "ywebrtc_deliveries_total"), 3);
    } finally {
      await Promise.all([a.close(), b.close(), diva.close()]);
    }
  });
});

Deno.test("y-webrtc wire: malformed frames get their error, the connection lives on, metrics count", async () => {
  await withServer([], async (server) => {
    const c = await WsClient.connect(`${server.wsUrl}yjs`);
    const other = await WsClient.connect(`${server.wsUrl}yjs`);
    try {
      const frames: [string | Uint8Array, string][] = [
        ["not json", "bad-json"],
        ["{", "bad-json"],
        [new Uint8Array([0x7b, 0xc3, 0x28, 0x7d]), "bad-json"],
        ['["ping"]', "bad-frame"],
        ["null", "bad-frame"],
        ['{"topics":[]}', "bad-frame"],
        ['{"type":"hello"}', "unknown-type"],
        ['{"type":"subscribe","topics":"room"}', "bad-topic"],
        ['{"type":"publish"}', "bad-topic"],
        ['{"type":"publish","topic":"elsewhere","data":{}}', "not-subscribed"],
        [JSON.stringify({ type: "subscribe", topics: Array(5000).fill({}) }), "bad-topic"],
      ];
      for (const [frame, _] of frames) c.send(frame);
      const replies = await drain(c) as { type: string; code: string; detail: string }[];
      assert.deepEqual(replies.map((r) => r.code), frames.map(([, code]) => code));
      assert.ok(replies.every((r) => r.type === "error" && typeof r.detail === "string"));
      // Nothing changed: the connection holds no topic, and still works.
      c.send({ type: "subscribe", topics: ["room"] });
      other.send({ type: "subscribe", topics: ["room"] });
      assert.deepEqual(await drain(other), []);
      c.send({ type: "publish", topic: "room", n: 1 });
      assert.deepEqual(await other.next(), { type: "publish", topic: "room", n: 1, clients: 2 });
      assert.equal(await metric(server, 'ywebrtc_errors_total{code="bad-json"}'), 3);
      assert.equal(await metric(server, 'ywebrtc_errors_total{code="bad-frame"}'), 3);
      assert.equal(await metric(server, 'ywebrtc_errors_total{code="unknown-type"}'), 1);
      assert.equal(await metric(server, 'ywebrtc_errors_total{code="bad-topic"}'), 3);
      assert.equal(await metric(server, 'ywebrtc_errors_total{code="not-subscribed"}'), 1);
      assert.equal(await metric(server, "ywebrtc_subscriptions"), 2);
      assert.equal(await metric(server, "signal_internal_errors_total"), 0);
    } finally {
      await Promise.all([c.close(), other.close()]);
    }
  });
});

Deno.test("y-webrtc wire: an oversize frame gets too-large and close 1009; others are unaffected", async () => {
  await withServer(["--max-frame-bytes", "1024"], async (server) => {
    const c = await WsClient.connect(`${server.wsUrl}yjs`);
    const other = await WsClient.connect(server.wsUrl);
    try {
      other.send({ type: "subscribe", topics: ["room"] });
      c.send({ type: "subscribe", topics: ["room"] });
      assert.deepEqual(await drain(c), []);
      c.send({ type: "publish", topic: "room", data: "x".repeat(2000) });
      assert.deepEqual(await c.next(), {
        type: "error",
        code: "too-large",
        detail: "frame exceeds 1024 bytes",
      });
      assert.equal((await c.closed()).code, 1009);
      assert.deepEqual(await drain(other), []);
      assert.equal(await metric(server, 'ywebrtc_errors_total{code="too-large"}'), 1);
      assert.equal(await metric(server, "ywebrtc_connections"), 1);
    } finally {
      await Promise.all([c.close(), other.close()]);
    }
  });
});

Deno.test("y-webrtc wire: on /, a first frame that is neither protocol goes to DIVA", async () => {
  await withServer([], async (server) => {
    const c = await WsClient.connect(server.wsUrl);
    try {
      c.send("hello");
      const reply = await c.next() as unknown[];
      assert.deepEqual(reply.slice(0, 3), ["error", "frame", "bad-json"]);
      assert.equal(await metric(server, "ywebrtc_connections"), 0);
    } finally {
      await c.close();
    }
  });
});

Deno.test("y-webrtc wire: --path keeps DIVA on its path, and /yjs shared when it is that path", async () => {
  for (const [path, divaOnYjs] of [["/signal", false], ["/yjs", true]] as const) {
    await withServer(["--path", path], async (server) => {
      const onPath = await WsClient.connect(server.wsUrl + path.slice(1));
      const yjs = await WsClient.connect(`${server.wsUrl}yjs`);
      const root = await WsClient.connect(server.wsUrl);
      try {
        onPath.send(["ping"]);
        assert.deepEqual(await onPath.next(), ["pong"]);
        yjs.send(["ping"]);
        const reply = await yjs.next();
        if (divaOnYjs) assert.deepEqual(reply, ["pong"]);
        else assert.equal((reply as { code: string }).code, "bad-frame");
        root.send({ type: "ping" });
        assert.deepEqual(await root.next(), { type: "pong" });
      } finally {
        await Promise.all([onPath.close(), yjs.close(), root.close()]);
      }
    });
  }
});
