/**
 * Sessions in a real browser: a page running `/client.js` holds a session
 * (on by default). When its tab closes, the socket's close looks to the
 * server like any other (a drop keeps the idents for the grace), so the
 * client leaves on `pagehide`: peers get their `bye` at once, not after the
 * 10 s grace.
 */

import assert from "node:assert/strict";
import { browserMissing, launchBrowser, PeerPage, startTestServer } from "./helpers/browser.ts";
import { WsClient } from "./helpers/ws_client.ts";

const missing = browserMissing();
if (missing !== undefined) console.warn(`skipping browser tests: ${missing}`);

Deno.test({
  name:
    "browser: a tab with a session that closes says bye at once (pagehide), not after the grace",
  ignore: missing !== undefined,
  async fn() {
    const server = await startTestServer();
    const browser = await launchBrowser();
    const b = await WsClient.connect(server.wsUrl);
    let page: PeerPage | undefined;
    try {
      page = await PeerPage.open(browser, server.url, { room: "tab", ident: "a" });
      await page.page.waitForFunction(() =>
        (globalThis as unknown as { __peer: { client: { resumable: boolean } } }).__peer.client
          .resumable
      );
      b.send(["join", "b", "tab"]);
      assert.deepEqual(await b.next(), ["join", "tab:b"]);
      assert.deepEqual(await b.next(), ["stun", "tab:b", "tab:a", true]);

      const closedAt = performance.now();
      await page.close();
      page = undefined;
      assert.deepEqual(await b.next(3000), ["bye", "tab:b", "tab:a"]);
      const byeMs = performance.now() - closedAt;
      assert.ok(byeMs < 3000, `bye ${byeMs.toFixed(0)} ms after the tab closed`);
      assert.equal(server.server.broker.idents, 1);
      console.log(`tab closed → bye at the peer: ${byeMs.toFixed(0)} ms`);
    } finally {
      await page?.close();
      await b.close();
      await browser.close();
      await server.stop();
    }
  },
});
