/**
 * The real, unmodified PeerJS client (the `peerjs` 1.5.5 browser bundle) in
 * Chromium pages against this server at its default settings: `new Peer(id?,
 * { host, port, path: "/", key: "peerjs" })` gets an id (its own, or one from
 * `GET /peerjs/id`), one page opens a `DataConnection` to another and they
 * exchange messages both ways; a second page with a taken id is told
 * `unavailable-id`; a Peer whose session was taken over by a socket with its
 * token reconnects and connects again; a connection to an id that is not
 * there yet is delivered when it arrives (its offer waited on the server);
 * and one that never arrives is reported `peer-unavailable`.
 *
 * One browser serves every step; each step has a server and pages of its
 * own. Every wait is event-driven in the page and bounded.
 */

import assert from "node:assert/strict";
import type { Browser } from "playwright-core";
import {
  browserMissing,
  launchBrowser,
  startTestServer,
  type TestServer,
} from "./helpers/browser.ts";
import { PeerjsPage } from "./helpers/peerjs_page.ts";

const missing = browserMissing();
if (missing !== undefined) console.warn(`skipping PeerJS browser tests: ${missing}`);

/** A metric's value from the server's /metrics page. */
async function metric(server: TestServer, line: string): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const found = text.split("\n").find((l) => l.startsWith(line + " "));
  assert.ok(found !== undefined, `no metric ${line}`);
  return Number(found.slice(line.length + 1));
}

/** Runs `body` with a server (default settings plus `args`) and a page factory. */
async function scene(
  browser: Browser,
  args: string[],
  body: (open: () => Promise<PeerjsPage>, server: TestServer) => Promise<void>,
): Promise<void> {
  const server = await startTestServer(args);
  const pages: PeerjsPage[] = [];
  try {
    await body(async () => {
      const p = await PeerjsPage.open(browser, server.url);
      pages.push(p);
      return p;
    }, server);
    assert.deepEqual(pages.flatMap((p) => p.errors), []);
  } finally {
    for (const p of pages) await p.close();
    await server.stop();
  }
}

/** No error-class events (connection errors included) were reported by the page's Peer. */
async function noErrors(p: PeerjsPage): Promise<void> {
  const events = await p.events();
  assert.deepEqual(events.filter((e) => String(e[0]).includes("error")), []);
}

/** The scenarios, each run as a step with the shared browser. */
const SCENES: [string, (browser: Browser) => Promise<void>][] = [];
const step = (name: string, fn: (browser: Browser) => Promise<void>) => SCENES.push([name, fn]);

step("a DataConnection between two pages carries messages both ways", async (browser) => {
  await scene(browser, [], async (open, server) => {
    const a = await open();
    const b = await open();
    const alice = await a.start("alice");
    assert.equal(alice, "alice");
    // No id: the client asks GET /peerjs/id for one.
    const bob = await b.start();
    assert.match(bob, /^[0-9a-f-]{36}$/);
    await a.connect(bob);
    await Promise.all([a.connected(bob), b.connected(alice)]);
    await a.send(bob, "hello bob");
    await b.received(alice, "hello bob");
    await b.send(alice, "hi alice");
    await a.received(bob, "hi alice");
    await noErrors(a);
    await noErrors(b);
    assert.ok(await metric(server, 'peerjs_relayed_total{outcome="delivered"}') >= 2);
    assert.equal(await metric(server, 'peerjs_http_requests_total{route="id"}'), 1);
    for (const code of ["bad-json", "bad-frame", "unknown-type", "bad-dst"]) {
      assert.equal(await metric(server, `peerjs_errors_total{code="${code}"}`), 0, code);
    }
    assert.equal(await metric(server, "peerjs_ids"), 2);
  });
});

step(
  "a second page with a taken id is told unavailable-id; the first is unharmed",
  async (browser) => {
    await scene(browser, [], async (open) => {
      const a = await open();
      const b = await open();
      await a.start("shared-id");
      const bob = await b.start("bob");
      const c = await open();
      await c.create("shared-id");
      assert.deepEqual(await c.event("error"), [
        "error",
        "unavailable-id",
        'ID "shared-id" is taken',
      ]);
      // The client gives up on a Peer that never opened.
      await c.event("close");
      // The holder still signals.
      await a.connect(bob);
      await Promise.all([a.connected(bob), b.connected("shared-id")]);
      await a.send(bob, "still mine");
      await b.received("shared-id", "still mine");
      await noErrors(a);
    });
  },
);

step("a session taken over by its token reconnects, and connects again", async (browser) => {
  await scene(browser, [], async (open, server) => {
    const a = await open();
    const b = await open();
    const alice = await a.start("alice");
    const bob = await b.start("bob");
    await a.connect(bob);
    await Promise.all([a.connected(bob), b.connected(alice)]);

    // Another socket with alice's id and token takes the session over: the
    // server sends it OPEN and closes the Peer's socket.
    await a.takeOverWithRawSocket();
    await a.event("disconnected");
    // The Peer reconnects with the same token: the session comes back to it.
    await a.reconnect();
    assert.deepEqual(await a.event("open", 2), ["open", "alice"]);
    const raw = await a.rawSocketClosed();
    assert.deepEqual(raw, { messages: [{ type: "OPEN" }], code: 1000 });

    // The data connection never needed the server.
    await b.send(alice, "across the takeover");
    await a.received(bob, "across the takeover");
    // And the server relays to the reconnected id: a second connection opens.
    await b.connect(alice);
    await Promise.all([b.connected(alice, 2), a.connected(bob, 2)]);
    await b.send(alice, "second connection");
    await a.received(bob, "second connection");

    // A plain disconnect() and reconnect() keeps the id too.
    await a.disconnect();
    await a.event("disconnected", 2);
    await a.reconnect();
    assert.deepEqual(await a.event("open", 3), ["open", "alice"]);
    await a.connect(bob);
    await Promise.all([a.connected(bob, 3), b.connected(alice, 3)]);
    await a.send(bob, "after reconnect");
    await b.received(alice, "after reconnect");

    assert.ok(await metric(server, 'peerjs_handshakes_total{outcome="takeover"}') >= 2);
    assert.equal(await metric(server, 'peerjs_handshakes_total{outcome="id-taken"}'), 0);
    // The takeover cost the Peer its socket: the client says so once.
    const errors = (await a.events()).filter((e) => e[0] === "error");
    assert.deepEqual(errors, [["error", "network", "Lost connection to server."]]);
    await noErrors(b);
  });
});

step("an offer to a peer that connects later is delivered when it does", async (browser) => {
  await scene(browser, [], async (open, server) => {
    const a = await open();
    const late = await open(); // loaded now, so it can connect the moment the offer waits
    const alice = await a.start("alice");
    await a.connect("late-peer");
    // The offer reached the server and waits there for "late-peer".
    await a.offerHandled("late-peer");
    assert.ok(await metric(server, 'peerjs_relayed_total{outcome="queued"}') >= 1);
    assert.equal(await late.start("late-peer"), "late-peer");
    await Promise.all([a.connected("late-peer"), late.connected(alice)]);
    assert.ok(await metric(server, "peerjs_offline_delivered_total") >= 1);
    await a.send("late-peer", "you made it");
    await late.received(alice, "you made it");
    await late.send(alice, "just in time");
    await a.received("late-peer", "just in time");
    await noErrors(a);
    await noErrors(late);
  });
});

step("an offer to a peer that never comes is reported peer-unavailable", async (browser) => {
  await scene(browser, ["--peerjs-expire-timeout", "500"], async (open, server) => {
    const a = await open();
    await a.start("alice");
    await a.connect("nobody");
    assert.deepEqual(await a.event("error"), [
      "error",
      "peer-unavailable",
      "Could not connect to peer nobody",
    ]);
    assert.equal(await metric(server, 'peerjs_expired_total{reason="timeout"}'), 1);
  });
});

Deno.test({
  name: "peerjs: the real client in Chromium",
  ignore: missing !== undefined,
  async fn(t) {
    const browser = await launchBrowser();
    try {
      for (const [name, fn] of SCENES) await t.step(name, () => fn(browser));
    } finally {
      await browser.close();
    }
  },
});
