/**
 * End to end in a real browser: Chromium pages load `/client.js` from a real
 * server, join a room, and connect over WebRTC data channels; the demo page
 * works for people.
 */

import assert from "node:assert/strict";
import {
  BROWSER_TIMEOUT_MS,
  browserMissing,
  launchBrowser,
  newIsolatedPage,
  PeerPage,
  startTestServer,
} from "./helpers/browser.ts";

const missing = browserMissing();
if (missing !== undefined) console.warn(`skipping browser tests: ${missing}`);

Deno.test({
  name: "browser: pairs connect, exchange messages both ways, and a leaver is dropped",
  ignore: missing !== undefined,
  async fn() {
    const server = await startTestServer();
    const browser = await launchBrowser();
    const pages: PeerPage[] = [];
    try {
      const a = await PeerPage.open(browser, server.url, { room: "e2e", ident: "alice" });
      pages.push(a);
      const b = await PeerPage.open(browser, server.url, { room: "e2e", ident: "bob" });
      pages.push(b);
      await Promise.all([a.waitForOpenPeers([b.self]), b.waitForOpenPeers([a.self])]);

      // The pair targets loopback: no other remote address was let in. (The
      // remote may also be learnt from its checks, as peer-reflexive, when a
      // check overtakes the signalled candidate; Chrome hides that address.)
      for (const [p, q] of [[a, b], [b, a]]) {
        const pair = await p.selectedPair(q.self);
        assert.ok(pair !== undefined, "a selected candidate pair");
        if (pair.remote !== "prflx") {
          assert.equal(pair.remote, "host");
          assert.match(pair.remoteAddress, /^(127\.|::1$)/);
        }
      }

      assert.equal(await a.send(b.self, "hello bob"), true);
      await b.waitForMessage(a.self, "hello bob");
      assert.equal(await b.send(a.self, "hi alice"), true);
      await a.waitForMessage(b.self, "hi alice");

      // A third peer connects to both: three pairs, each open on both ends.
      const c = await PeerPage.open(browser, server.url, { room: "e2e", ident: "carol" });
      pages.push(c);
      await Promise.all([
        a.waitForOpenPeers([b.self, c.self]),
        b.waitForOpenPeers([a.self, c.self]),
        c.waitForOpenPeers([a.self, b.self]),
      ]);
      await c.send(a.self, "from carol");
      await c.send(b.self, "from carol");
      await a.send(c.self, "to carol from alice");
      await b.send(c.self, "to carol from bob");
      await Promise.all([
        a.waitForMessage(c.self, "from carol"),
        b.waitForMessage(c.self, "from carol"),
        c.waitForMessage(a.self, "to carol from alice"),
        c.waitForMessage(b.self, "to carol from bob"),
      ]);
      assert.equal(server.server.broker.idents, 3);

      // Carol's tab goes away: the others get bye and drop her connection.
      await c.close();
      pages.pop();
      await Promise.all([a.waitForGone(c.self), b.waitForGone(c.self)]);
      for (const p of [a, b]) {
        assert.equal(await p.peerCount(), 1);
        const toCarol = (await p.connectionStates()).filter((s) => s.peer === c.self);
        assert.equal(toCarol.length, 1, "one connection to carol was ever made");
        assert.equal(toCarol[0].signalingState, "closed");
        assert.equal(toCarol[0].connectionState, "closed");
        assert.deepEqual(await p.closes(), [{ peer: c.self, reason: "bye" }]);
      }
      // The pair that stayed still works.
      await a.send(b.self, "still here");
      await b.waitForMessage(a.self, "still here");
      assert.equal(server.server.broker.idents, 2);
      assert.deepEqual([...a.errors, ...b.errors, ...c.errors], []);
    } finally {
      for (const p of pages) await p.close();
      await browser.close();
      await server.stop();
    }
  },
});

Deno.test({
  name: "browser: the demo page chats between two tabs (screenshot in test-artifacts/demo.png)",
  ignore: missing !== undefined,
  async fn() {
    const server = await startTestServer();
    const browser = await launchBrowser();
    try {
      const tabs = [];
      for (const name of ["alice", "bob"]) {
        const tab = await newIsolatedPage(browser);
        tabs.push(tab);
        const page = tab.page;
        await page.setViewportSize({ width: 900, height: 620 });
        await page.goto(`${server.url}/demo?room=demo&name=${name}`);
        await page.locator("#self").getByText(name).waitFor();
      }
      const [alice, bob] = tabs.map((t) => t.page);
      // Each tab lists the other as connected once the data channel is open.
      await alice.locator('li[data-peer="demo:bob"] .state.connected').waitFor();
      await bob.locator('li[data-peer="demo:alice"] .state.connected').waitFor();
      assert.equal(await alice.locator("#count").textContent(), "1");

      await alice.locator("#text").fill("Hello from Alice");
      await alice.locator("#text").press("Enter");
      await bob.locator("#log").getByText("alice: Hello from Alice").waitFor();
      await bob.locator("#text").fill("Hi Alice, Bob here");
      await bob.locator("#sendButton").click();
      await alice.locator("#log").getByText("bob: Hi Alice, Bob here").waitFor();

      await Deno.mkdir("test-artifacts", { recursive: true });
      await alice.screenshot({ path: "test-artifacts/demo.png", timeout: BROWSER_TIMEOUT_MS });
      const png = await Deno.readFile("test-artifacts/demo.png");
      assert.deepEqual([...png.subarray(1, 4)], [0x50, 0x4e, 0x47]); // "PNG"

      assert.deepEqual(tabs.flatMap((t) => t.errors), []);

      // Bob leaves: Alice's list empties.
      await tabs[1].context.close();
      await alice.locator('li[data-peer="demo:bob"]').waitFor({ state: "detached" });
      assert.equal(await alice.locator("#count").textContent(), "0");
      await tabs[0].context.close();
    } finally {
      await browser.close();
      await server.stop();
    }
  },
});
