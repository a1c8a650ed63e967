/**
 * Auth in a real browser: two Chromium pages open the demo with tokens —
 * one handed in the link's fragment, one typed into the form — on a server
 * that requires tokens, join a room that needs a grant and a proven key
 * ident (Chromium's WebCrypto Ed25519 signs the proofs), and connect over a
 * WebRTC data channel. A page without a token is refused at the upgrade.
 */

import assert from "node:assert/strict";
import { hs256, newSecret } from "./helpers/auth_harness.ts";
import {
  browserMissing,
  type IsolatedPage,
  launchBrowser,
  newIsolatedPage,
  startTestServer,
} from "./helpers/browser.ts";

const missing = browserMissing();
if (missing !== undefined) console.warn(`skipping browser tests: ${missing}`);

/** What the demo exposes as `globalThis.demo`, as far as the test reads it. */
type DemoHost = {
  demo: {
    client: { keyIdent?: string; tokenExpiry?: number; state: string };
    mesh: { self?: string };
  };
};

Deno.test({
  name: "browser: two demo pages with tokens join a protected proof room and connect",
  ignore: missing !== undefined,
  async fn() {
    const secret = newSecret();
    const server = await startTestServer([
      "--jwt-secrets",
      secret,
      "--auth-required",
      "true",
      "--auth-rooms",
      "team-*",
      "--proof-rooms",
      "team-*",
    ]);
    const browser = await launchBrowser();
    const tabs: IsolatedPage[] = [];
    try {
      const grant = { rooms: ["team-*"] };
      const aliceToken = await hs256(secret, grant, { sub: "alice" });
      const bobToken = await hs256(secret, grant, { sub: "bob" });

      // Alice follows a link that carries her token in the fragment.
      const alice = await newIsolatedPage(browser);
      tabs.push(alice);
      await alice.page.goto(`${server.url}/demo?room=team-x&key=1#token=${aliceToken}`);
      // Bob types his token into the form.
      const bob = await newIsolatedPage(browser);
      tabs.push(bob);
      await bob.page.goto(`${server.url}/demo`);
      await bob.page.locator("#room").fill("team-x");
      await bob.page.locator("#token").fill(bobToken);
      await bob.page.locator("#key").check();
      await bob.page.locator("#join button").click();
      await bob.page.waitForURL(/room=team-x/);

      const idents: string[] = [];
      for (const [tab, sub] of [[alice, "alice"], [bob, "bob"]] as const) {
        const ident = await tab.page.evaluate(async () => {
          const d = (globalThis as unknown as DemoHost).demo;
          for (let i = 0; i < 200 && d.mesh.self === undefined; i++) {
            await new Promise((r) => setTimeout(r, 50));
          }
          return d.client.keyIdent;
        });
        assert.match(ident ?? "", /^[A-Za-z0-9_-]{43}$/);
        idents.push(ident!);
        // Joined as the proven key ident; the token is shown, and gone from the address bar.
        await tab.page.locator("#self").getByText(ident!).waitFor();
        assert.match(await tab.page.locator("#auth").textContent() ?? "", new RegExp(`of ${sub}`));
        assert.ok(!tab.page.url().includes("token"), tab.page.url());
      }
      const [ga, gb] = idents.map((i) => `team-x:${i}`);
      await alice.page.locator(`li[data-peer="${gb}"] .state.connected`).waitFor();
      await bob.page.locator(`li[data-peer="${ga}"] .state.connected`).waitFor();
      await alice.page.locator("#text").fill("hello over an authenticated signal");
      await alice.page.locator("#text").press("Enter");
      await bob.page.locator("#log").getByText("hello over an authenticated signal").waitFor();
      assert.equal(server.server.broker.idents, 2);

      // A page with no token never gets a socket; the demo says why.
      const anon = await newIsolatedPage(browser);
      tabs.push(anon);
      await anon.page.goto(`${server.url}/demo?room=team-x`);
      await anon.page.locator("#log").getByText("the server may want a (valid) token").waitFor();
      assert.equal(server.server.broker.stats.connectionsOpened, 2);

      assert.deepEqual(tabs.flatMap((t) => t.errors), []);
    } finally {
      for (const t of tabs) await t.context.close();
      await browser.close();
      await server.stop();
    }
  },
});
