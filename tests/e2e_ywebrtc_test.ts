/**
 * The real, unmodified y-webrtc client against this server: `Y.Doc`s with
 * y-webrtc's `WebrtcProvider` (simple-peer on `@roamhq/wrtc`), each in a
 * process of its own, join one room through the server and sync a `Y.Text`
 * over WebRTC. Both URLs a user would try are covered (the root, shared
 * with DIVA, and `/yjs`), with and without a room password; a spy
 * subscribed to the same topic sees what the server relays (signals in the
 * clear, or only base64 ciphertext with a password).
 *
 * Every wait is event-driven and bounded.
 */

import assert from "node:assert/strict";
import { startTestServer, type TestServer } from "./helpers/browser.ts";
import { WsClient } from "./helpers/ws_client.ts";
import { YjsPeer } from "./helpers/yjs_peers.ts";

/** The two URLs a user would try. */
function urls(server: TestServer): { root: string; yjs: string } {
  return { root: `ws://127.0.0.1:${server.port}`, yjs: `ws://127.0.0.1:${server.port}/yjs` };
}

/** A plain WebSocket subscribed to `room`, ready once the server has handled the subscribe. */
async function spy(url: string, room: string): Promise<WsClient> {
  const c = await WsClient.connect(url);
  c.send({ type: "subscribe", topics: [room] });
  // Frames of one connection are handled in order: the pong comes after the subscribe.
  c.send({ type: "ping" });
  assert.deepEqual(await c.next(), { type: "pong" });
  return c;
}

/**
 * What the spy received: waits (bounded) for at least `min` publishes, then
 * takes whatever else is already on its way.
 */
async function received(c: WsClient, min: number): Promise<Record<string, unknown>[]> {
  const out: Record<string, unknown>[] = [];
  while (out.filter((m) => m.type === "publish").length < min) {
    out.push(await c.next(10_000) as Record<string, unknown>);
  }
  for (;;) {
    try {
      out.push(await c.next(200) as Record<string, unknown>);
    } catch {
      return out;
    }
  }
}

/** A metric's value from the server's /metrics page. */
async function metric(server: TestServer, line: string): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const found = text.split("\n").find((l) => l.startsWith(line + " "));
  assert.ok(found !== undefined, `no metric ${line}`);
  return Number(found.slice(line.length + 1));
}

async function stopAll(peers: YjsPeer[]): Promise<void> {
  await Promise.all(peers.map((p) => p.stop()));
}

for (const path of ["root", "yjs"] as const) {
  for (const password of [undefined, "correct horse battery staple"]) {
    const mode = password === undefined ? "in the clear" : "with a password";
    Deno.test(`y-webrtc: two docs sync through ${path === "root" ? "/" : "/yjs"} ${mode}`, async () => {
      const server = await startTestServer();
      const url = urls(server)[path];
      const room = `room-${path}-${password === undefined ? "open" : "secret"}`;
      const watcher = await spy(url, room);
      const peers: YjsPeer[] = [];
      try {
        const a = await YjsPeer.start({ url, room, password });
        peers.push(a);
        const b = await YjsPeer.start({ url, room, password });
        peers.push(b);
        await a.insert(0, "hello");
        await b.waitForText("hello");
        await b.insert(5, " world");
        await a.waitForText("hello world");
        // They synced over a WebRTC connection to each other (the server
        // carries no document data, and each doc is in a process of its own).
        await a.until(() => a.synced, "a to be synced");
        await b.until(() => b.synced, "b to be synced");
        assert.equal(a.webrtcPeers.length, 1);
        assert.equal(b.webrtcPeers.length, 1);

        // At least: a's announce, b's announce, a's offer, b's answer.
        const seen = await received(watcher, 4);
        const publishes = seen.filter((m) => m.type === "publish");
        assert.equal(publishes.length, seen.length);
        for (const m of publishes) {
          assert.equal(m.topic, room);
          assert.equal(typeof m.clients, "number");
        }
        // The spy and both docs are subscribed.
        assert.ok(publishes.some((m) => m.clients === 3));
        if (password === undefined) {
          const types = new Set(publishes.map((m) => (m.data as { type: string }).type));
          assert.deepEqual([...types].sort(), ["announce", "signal"]);
        } else {
          for (const m of publishes) {
            assert.equal(typeof m.data, "string");
            assert.match(m.data as string, /^[A-Za-z0-9+/]+=*$/);
            // The ciphertext decodes to nothing readable: no JSON, no SDP. (A plain
            // substring test on the base64 text would fail by chance now and then.)
            const clear = new TextDecoder().decode(
              Uint8Array.from(atob(m.data as string), (c) => c.charCodeAt(0)),
            );
            assert.ok(!clear.includes('"type"') && !clear.includes("v=0"), "readable payload");
          }
        }
        assert.ok(await metric(server, "ywebrtc_publishes_total") >= publishes.length);
        assert.equal(await metric(server, 'ywebrtc_errors_total{code="bad-json"}'), 0);
        assert.equal(await metric(server, 'ywebrtc_queue_closed_total{bound="frames"}'), 0);
      } finally {
        await stopAll(peers);
        await watcher.close();
        await server.stop();
      }
    });
  }
}

for (const path of ["root", "yjs"] as const) {
  Deno.test(`y-webrtc: three docs through ${path === "root" ? "/" : "/yjs"}, one leaves, two keep syncing`, async () => {
    const server = await startTestServer();
    const url = urls(server)[path];
    const room = `trio-${path}`;
    const peers: YjsPeer[] = [];
    try {
      for (let i = 0; i < 3; i++) peers.push(await YjsPeer.start({ url, room }));
      const [a, b, c] = peers;
      await a.insert(0, "a");
      await b.waitForText("a");
      await c.waitForText("a");
      await c.insert(1, "c");
      await a.waitForText("ac");
      await b.waitForText("ac");
      await Promise.all(peers.map((p) => p.until(() => p.webrtcPeers.length === 2, "a full mesh")));

      await c.destroy();
      await a.until(() => a.webrtcPeers.length === 1, "a to drop c");
      await b.until(() => b.webrtcPeers.length === 1, "b to drop c");
      await a.insert(2, "1");
      await b.waitForText("ac1");
      await b.insert(3, "2");
      await a.waitForText("ac12");
      // The destroyed doc is out of it.
      assert.equal(c.text, "ac");
      assert.ok(await metric(server, "ywebrtc_connections") >= 2);
    } finally {
      await stopAll(peers);
      await server.stop();
    }
  });
}
