/**
 * Our own transport's WebSockets over real sockets: Deno's `WebSocket`
 * client for the ordinary paths, hand-made frames for fragments, control
 * frames, protocol errors and limits, and Chromium for a browser's view.
 *
 * @module
 */

import assert from "node:assert/strict";
import { browserMissing, launchBrowser } from "./helpers/browser.ts";
import { clientFrame, RawWs, withTimeout } from "./helpers/own_raw.ts";
import { eventually, type OwnTestServer, startOwn } from "./helpers/own_server.ts";
import { serve, upgradeWebSocket } from "../lib/transport/own/server.ts";

const encoder = new TextEncoder();

/** A Deno WebSocket client, open, with its messages queued. */
async function client(
  t: OwnTestServer,
  protocols?: string[],
): Promise<{
  ws: WebSocket;
  next(): Promise<string | ArrayBuffer>;
  closed: Promise<CloseEvent>;
}> {
  const ws = new WebSocket(`ws://127.0.0.1:${t.port}/`, protocols);
  ws.binaryType = "arraybuffer";
  const queue: (string | ArrayBuffer)[] = [];
  const waiters: ((m: string | ArrayBuffer) => void)[] = [];
  ws.onmessage = (e) => {
    const w = waiters.shift();
    if (w) w(e.data);
    else queue.push(e.data);
  };
  const closed = new Promise<CloseEvent>((resolve) => ws.addEventListener("close", resolve));
  await withTimeout(
    new Promise<void>((resolve, reject) => {
      ws.onopen = () => resolve();
      ws.onerror = (e) => reject(new Error((e as ErrorEvent).message));
    }),
    5000,
    "the socket to open",
  );
  ws.onerror = () => {};
  return {
    ws,
    closed,
    next: () =>
      withTimeout(
        queue.length > 0
          ? Promise.resolve(queue.shift()!)
          : new Promise<string | ArrayBuffer>((r) => waiters.push(r)),
        5000,
        "a message",
      ),
  };
}

Deno.test("Deno's WebSocket: text and binary echo, client-initiated close", async () => {
  await using t = startOwn();
  const c = await client(t);
  c.ws.send("héllo ✓");
  assert.equal(await c.next(), "héllo ✓");
  c.ws.send(new Uint8Array([0, 1, 2, 255]));
  assert.deepEqual(new Uint8Array(await c.next() as ArrayBuffer), new Uint8Array([0, 1, 2, 255]));
  const big = "z".repeat(100_000);
  c.ws.send(big);
  assert.equal(await c.next(), big);
  c.ws.close(1000, "bye");
  const e = await withTimeout(c.closed, 5000, "close");
  assert.deepEqual([e.code, e.wasClean], [1000, true]);
  await eventually("the server sees the close", () => t.side.closes.length === 1);
  assert.deepEqual(t.side.closes, [{ code: 1000, reason: "bye", wasClean: true }]);
  assert.equal(t.server.counters.wsOpened, 1);
  assert.equal(t.server.counters.wsClosed, 1);
});

Deno.test("server-initiated close: the client gets the code and reason, the server a clean close", async () => {
  await using t = startOwn();
  const c = await client(t);
  c.ws.send("close-me");
  const e = await withTimeout(c.closed, 5000, "close");
  assert.deepEqual([e.code, e.reason, e.wasClean], [4000, "asked", true]);
  await eventually("the server sees the close", () => t.side.closes.length === 1);
  assert.deepEqual(t.side.closes, [{ code: 4000, reason: "asked", wasClean: true }]);
});

Deno.test("subprotocol: one the client offered is echoed", async () => {
  await using t = startOwn({}, { protocol: "token.abc" });
  const c = await client(t, ["chat", "token.abc"]);
  assert.equal(c.ws.protocol, "token.abc");
  assert.equal(t.side.opened[0].protocol, "token.abc");
  c.ws.close();
  await c.closed;
});

Deno.test("the 101 carries the accept key, and the fields the application added to it", async () => {
  await using server = serve({ port: 0, hostname: "127.0.0.1" }, (req) => {
    const { socket, response } = upgradeWebSocket(req, { protocol: "p2" });
    socket.onopen = () => socket.close(1000, "seen");
    if (new URL(req.url).pathname === "/extra") {
      response.headers.set("x-app", "yes");
      response.headers.append("set-cookie", "a=1");
      response.headers.append("set-cookie", "b=2");
    }
    return response;
  });
  const key = "dGhlIHNhbXBsZSBub25jZQ==";
  for (const path of ["/", "/extra"]) {
    const raw = await RawWs.open(
      server.addr.port,
      { "sec-websocket-key": key, "sec-websocket-protocol": "p1, p2" },
      path,
    );
    try {
      const a = raw.answer;
      assert.equal(a.status, 101, path);
      // RFC 6455 §1.3's own example key and answer.
      assert.equal(a.headers.get("sec-websocket-accept"), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", path);
      assert.equal(a.headers.get("sec-websocket-protocol"), "p2", path);
      assert.equal(a.headers.get("upgrade"), "websocket", path);
      assert.equal(a.headers.get("x-app"), path === "/extra" ? "yes" : null, path);
      assert.deepEqual(a.headers.getSetCookie(), path === "/extra" ? ["a=1", "b=2"] : [], path);
      const close = await raw.frame();
      assert.equal(close?.opcode, 8, path);
    } finally {
      raw.close();
    }
  }
});

Deno.test("frames sent in one turn go out together; bufferedAmount counts them", async () => {
  await using t = startOwn();
  const raw = await RawWs.open(t.port);
  try {
    await raw.send(clientFrame(0x1, "burst:50"));
    for (let i = 0; i < 50; i++) {
      assert.equal(new TextDecoder().decode((await raw.frame())!.payload), `m${i}`);
    }
    const last = new TextDecoder().decode((await raw.frame())!.payload);
    // 50 frames of 4 or 5 bytes were queued and not yet written when it was read.
    assert.equal(last, `buffered:${10 * 4 + 40 * 5}`);
    await eventually("the queue drains", () => t.side.opened[0].bufferedAmount === 0);
  } finally {
    raw.close();
  }
});

Deno.test("fragmented messages with control frames between fragments", async () => {
  await using t = startOwn();
  const raw = await RawWs.open(t.port);
  try {
    assert.equal(raw.answer.status, 101);
    assert.equal(raw.answer.headers.get("upgrade"), "websocket");
    // "héllo" split inside the two-byte é, with a ping between fragments.
    const text = encoder.encode("héllo");
    await raw.send(clientFrame(0x1, text.subarray(0, 2), { fin: false }));
    await raw.send(clientFrame(0x9, "are you there"));
    await raw.send(clientFrame(0x0, text.subarray(2, 4), { fin: false }));
    await raw.send(clientFrame(0xa, "unsolicited pong"));
    await raw.send(clientFrame(0x0, text.subarray(4), { fin: true }));
    const pong = await raw.frame();
    assert.equal(pong?.opcode, 0xa);
    assert.equal(pong?.masked, false);
    assert.equal(new TextDecoder().decode(pong!.payload), "are you there");
    const echo = await raw.frame();
    assert.deepEqual([echo?.opcode, new TextDecoder().decode(echo!.payload)], [0x1, "héllo"]);
    // Binary in three fragments, the first one empty.
    await raw.send(clientFrame(0x2, new Uint8Array(0), { fin: false }));
    await raw.send(clientFrame(0x0, new Uint8Array([1, 2]), { fin: false }));
    await raw.send(clientFrame(0x0, new Uint8Array([3]), { fin: true }));
    const bin = await raw.frame();
    assert.deepEqual([bin?.opcode, [...bin!.payload]], [0x2, [1, 2, 3]]);
    // All of it in one write works as well (several frames per read).
    await raw.send(
      new Uint8Array([
        ...clientFrame(0x1, "a", { fin: false }),
        ...clientFrame(0x9, ""),
        ...clientFrame(0x0, "b"),
      ]),
    );
    assert.equal((await raw.frame())?.opcode, 0xa);
    assert.equal(new TextDecoder().decode((await raw.frame())!.payload), "ab");
    // The client's close is answered and the connection cut.
    await raw.send(clientFrame(0x8, new Uint8Array([0x03, 0xe8])));
    assert.deepEqual(await raw.closeFrame(), { code: 1000, reason: "" });
    assert.equal(await raw.frame(), null);
  } finally {
    raw.close();
  }
});

/** Sends `bytes` after the handshake; expects a close frame with `code` and then the cut. */
async function expectFailure(
  t: OwnTestServer,
  bytes: Uint8Array[],
  code: number,
  what: string,
): Promise<void> {
  const raw = await RawWs.open(t.port);
  try {
    assert.equal(raw.answer.status, 101, what);
    for (const b of bytes) await raw.send(b);
    const close = await raw.closeFrame(3000);
    assert.equal(close?.code, code, what);
    assert.equal(await raw.frame(3000), null, `${what}: the connection is cut`);
  } finally {
    raw.close();
  }
}

Deno.test("protocol errors fail with 1002, bad UTF-8 with 1007, and the connection is cut", async () => {
  await using t = startOwn();
  const f = clientFrame;
  const cases: [string, Uint8Array[], number][] = [
    ["unmasked frame", [f(0x1, "hi", { mask: false })], 1002],
    ["RSV1 set", [f(0x1, "hi", { rsv: 4 })], 1002],
    ["RSV3 set", [f(0x2, "hi", { rsv: 1 })], 1002],
    ["unknown data opcode", [f(0x3, "hi")], 1002],
    ["unknown control opcode", [f(0xb, "hi")], 1002],
    ["continuation without a start", [f(0x0, "hi")], 1002],
    ["new message inside a fragmented one", [f(0x1, "a", { fin: false }), f(0x1, "b")], 1002],
    ["fragmented ping", [f(0x9, "a", { fin: false })], 1002],
    ["ping over 125 bytes", [f(0x9, "p".repeat(126))], 1002],
    ["close with one byte", [f(0x8, new Uint8Array([3]))], 1002],
    ["close with code 1005", [f(0x8, new Uint8Array([0x03, 0xed]))], 1002],
    ["close with code 999", [f(0x8, new Uint8Array([0x03, 0xe7]))], 1002],
    ["invalid UTF-8", [f(0x1, new Uint8Array([0x68, 0xff, 0x69]))], 1007],
    ["truncated UTF-8 at the end", [f(0x1, new Uint8Array([0x68, 0xc3]))], 1007],
    [
      "invalid UTF-8 across fragments",
      [f(0x1, new Uint8Array([0xce, 0xba]), { fin: false }), f(0x0, new Uint8Array([0xed, 0xa0]))],
      1007,
    ],
    ["invalid UTF-8 in a close reason", [f(0x8, new Uint8Array([0x03, 0xe8, 0xff]))], 1007],
  ];
  for (const [what, bytes, code] of cases) await expectFailure(t, bytes, code, what);
  await eventually("every failure is counted", () => t.side.closes.length === cases.length);
  assert.equal(t.server.counters.wsProtocolErrors, 12);
  assert.equal(t.server.counters.wsInvalidData, 4);
  assert.ok(t.side.closes.every((c) => !c.wasClean));
  assert.equal(t.side.errors.length, cases.length);
});

Deno.test("a message over the limit fails with 1009 at its header, declared or by fragments", async () => {
  await using t = startOwn({}, { socket: { maxMessageBytes: 1024 * 1024 } });
  // A header declaring 60 MiB, and no payload at all: the answer comes at once.
  await expectFailure(
    t,
    [clientFrame(0x2, new Uint8Array(0), { declaredLength: 60 << 20 })],
    1009,
    "declared",
  );
  // Fragments of 400 KiB: the third would pass 1 MiB, and fails at its header.
  const piece = new Uint8Array(400 * 1024);
  await expectFailure(
    t,
    [
      clientFrame(0x2, piece, { fin: false }),
      clientFrame(0x0, piece, { fin: false }),
      clientFrame(0x0, new Uint8Array(0), { fin: false, declaredLength: 400 * 1024 }),
    ],
    1009,
    "accumulated",
  );
  // Exactly the limit is fine.
  const raw = await RawWs.open(t.port);
  try {
    await raw.send(clientFrame(0x2, new Uint8Array(1024 * 1024)));
    assert.equal((await raw.frame())?.payload.length, 1024 * 1024);
  } finally {
    raw.close();
  }
  assert.equal(t.server.counters.wsTooBig, 2);
});

Deno.test("a flood behind a 60 MiB header is cut, not buffered: RSS stays flat", async () => {
  await using t = startOwn({}, { socket: { maxMessageBytes: 1024 * 1024 } });
  const raw = await RawWs.open(t.port);
  const before = Deno.memoryUsage().rss;
  let sent = 0;
  try {
    await raw.send(clientFrame(0x2, new Uint8Array(0), { declaredLength: 60 << 20 }));
    // Keep sending the declared payload until the server cuts the connection.
    const chunk = new Uint8Array(1 << 20);
    try {
      while (sent < 60 << 20) {
        await raw.send(chunk);
        sent += chunk.length;
      }
    } catch {
      // Broken pipe or reset: the cut.
    }
    assert.ok(sent < 60 << 20, "the server cut the connection before the payload was sent");
  } finally {
    raw.close();
  }
  const grown = Deno.memoryUsage().rss - before;
  assert.ok(grown < 30 << 20, `RSS grew by ${grown} bytes after ${sent} bytes were sent`);
  assert.equal(t.server.counters.wsTooBig, 1);
});

Deno.test("a client that ignores the server's close is cut within ~2 s", async () => {
  await using t = startOwn();
  const raw = await RawWs.open(t.port);
  try {
    await raw.send(clientFrame(0x1, "close-me"));
    const started = performance.now();
    assert.deepEqual(await raw.closeFrame(), { code: 4000, reason: "asked" });
    // We never answer; messages sent now are dropped by the server.
    await raw.send(clientFrame(0x1, "ignored"));
    assert.equal(await raw.frame(5000), null);
    const waited = performance.now() - started;
    assert.ok(waited > 1500 && waited < 4000, `cut after ${waited} ms`);
  } finally {
    raw.close();
  }
  await eventually("the server reports the close", () => t.side.closes.length === 1);
  assert.deepEqual(t.side.closes, [{ code: 1006, reason: "", wasClean: false }]);
  assert.equal(t.server.counters.wsCloseTimeouts, 1);
});

Deno.test("a peer that vanishes closes the socket with 1006", async () => {
  await using t = startOwn();
  const raw = await RawWs.open(t.port);
  await eventually("the socket opens", () => t.side.opened.length === 1);
  raw.close();
  await eventually("the server sees it", () => t.side.closes.length === 1);
  assert.deepEqual(t.side.closes, [{ code: 1006, reason: "", wasClean: false }]);
});

Deno.test("idle timeout: a silent peer is pinged, then cut when it does not answer", async () => {
  await using t = startOwn({}, { socket: { idleTimeout: 0.3 } });
  const raw = await RawWs.open(t.port);
  try {
    const ping = await raw.frame(3000);
    assert.equal(ping?.opcode, 0x9);
    // Then a close frame saying why (1001, as Deno's server does), and the cut.
    assert.deepEqual(await raw.closeFrame(), { code: 1001, reason: "idle timeout" });
    assert.equal(await raw.frame(3000), null);
  } finally {
    raw.close();
  }
  await eventually("the cut is counted", () => t.server.counters.wsPingTimeouts === 1);
  // Deno's client answers pings: it stays open across several idle periods.
  const c = await client(t);
  await new Promise((r) => setTimeout(r, 1200));
  assert.equal(c.ws.readyState, WebSocket.OPEN);
  c.ws.send("still here");
  assert.equal(await c.next(), "still here");
  c.ws.close();
  await c.closed;
  assert.equal(t.server.counters.wsPingTimeouts, 1);
});

Deno.test("bad upgrades: version 8 gets 426, malformed ones 400, never 500", async () => {
  await using t = startOwn();
  const cases: [string, Record<string, string>, number][] = [
    ["version 8", { "sec-websocket-version": "8" }, 426],
    ["no version", { "sec-websocket-version": "" }, 400],
    ["no key", { "sec-websocket-key": "" }, 400],
    ["short key", { "sec-websocket-key": "c2hvcnQ=" }, 400],
    ["Upgrade not websocket", { upgrade: "h2c" }, 400],
    ["Connection without upgrade", { connection: "keep-alive" }, 400],
  ];
  for (const [what, headers, status] of cases) {
    const raw = await RawWs.open(t.port, headers);
    try {
      assert.equal(raw.answer.status, status, what);
      if (status === 426) assert.equal(raw.answer.headers.get("sec-websocket-version"), "13");
    } finally {
      raw.close();
    }
  }
  // A POST with upgrade fields is refused the same way.
  const post = await fetch(`http://127.0.0.1:${t.port}/`, {
    method: "POST",
    headers: { upgrade: "websocket", connection: "upgrade" },
  });
  assert.equal(post.status, 400);
  await post.body?.cancel();
  assert.equal(t.server.counters.upgradeRefused, cases.length + 1);
  assert.equal(t.server.counters.handlerErrors, 0);
});

Deno.test("an exception in onmessage closes that socket with 1011; the server lives on", async () => {
  await using t = startOwn();
  const c = await client(t);
  c.ws.send("throw");
  const e = await withTimeout(c.closed, 5000, "close");
  assert.equal(e.code, 1011);
  assert.equal(t.server.counters.wsHandlerErrors, 1);
  assert.ok(
    t.logs.some((l) => l.level === "error" && String(l.properties.error).includes("handler bug")),
  );
  const d = await client(t);
  d.ws.send("ok");
  assert.equal(await d.next(), "ok");
  d.ws.close();
  await d.closed;
});

Deno.test({
  name: "Chromium opens a WebSocket to our server and gets its echo",
  ignore: browserMissing() !== undefined,
  async fn() {
    await using t = startOwn();
    const browser = await launchBrowser();
    try {
      const page = await browser.newPage();
      const result = await page.evaluate(async (url: string) => {
        const ws = new WebSocket(url);
        ws.binaryType = "arraybuffer";
        await new Promise((resolve, reject) => {
          ws.onopen = resolve;
          ws.onerror = () => reject(new Error("websocket error"));
        });
        const got: unknown[] = [];
        const all = new Promise<void>((resolve) => {
          ws.onmessage = (e) => {
            got.push(typeof e.data === "string" ? e.data : Array.from(new Uint8Array(e.data)));
            if (got.length === 3) resolve();
          };
        });
        ws.send("from chromium");
        ws.send(new Uint8Array([9, 8, 7]));
        ws.send("x".repeat(70_000));
        await all;
        const closed = new Promise<[number, boolean]>((resolve) => {
          ws.onclose = (e) => resolve([e.code, e.wasClean]);
        });
        ws.close(1000, "done");
        return { got: [got[0], got[1], (got[2] as string).length], closed: await closed };
      }, `ws://127.0.0.1:${t.port}/`);
      assert.deepEqual(result, { got: ["from chromium", [9, 8, 7], 70_000], closed: [1000, true] });
      await eventually("the server sees the close", () => t.side.closes.length === 1);
      assert.deepEqual(t.side.closes, [{ code: 1000, reason: "done", wasClean: true }]);
    } finally {
      await browser.close();
    }
  },
});
