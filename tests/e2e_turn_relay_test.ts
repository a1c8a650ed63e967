/**
 * End to end through TURN: two Chromium pages with `iceTransportPolicy:
 * "relay"` join a room on a real signal server, so their data channel can
 * only come up through a real coturn, using the credentials the server minted
 * in its `["ice"]` answer. A server that signs with a secret coturn does not
 * know gets its pages refused (401) and no channel.
 *
 * In CI (`CI` set) a missing Chromium or turnserver fails instead of skipping.
 */

import assert from "node:assert/strict";
import type { Browser } from "playwright-core";
import {
  browserMissing,
  launchBrowser,
  PeerPage,
  type SelectedPair,
  startTestServer,
} from "./helpers/browser.ts";
import { type Coturn, coturnAvailable, inCI, startCoturn } from "./helpers/coturn.ts";

const coturnMissing = await coturnAvailable()
  ? undefined
  : "turnserver not found (apt-get install coturn)";
if (coturnMissing !== undefined && inCI()) throw new Error(`CI needs coturn: ${coturnMissing}`);
const missing = browserMissing() ?? coturnMissing;
if (missing !== undefined) console.warn(`skipping TURN relay browser tests: ${missing}`);

/** How long a refused pair is given to connect anyway before we call it refused. */
const REFUSED_WAIT_MS = 8000;

const RELAY_ONLY = { iceTransportPolicy: "relay" } as const;

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/**
 * The expiries in coturn's log of usernames `<expiry>:<room>:<ident>` (the
 * global ident) whose request ended in `outcome`.
 */
function loggedExpiries(log: string, ident: string, outcome: string): number[] {
  const re = new RegExp(
    `user <(\\d+):[^:>]+:${escape(ident)}>: incoming packet ${escape(outcome)}`,
    "g",
  );
  return [...log.matchAll(re)].map((m) => Number(m[1]));
}

/**
 * Opens two relay-only pages in `room` on a server with `serverSecret`
 * signing for `turn`, runs `body`, and closes pages and server whatever happens.
 */
async function withRelayPair(
  browser: Browser,
  turn: Coturn,
  serverSecret: string,
  room: string,
  idents: readonly [string, string],
  body: (a: PeerPage, b: PeerPage) => Promise<void>,
): Promise<void> {
  // No STUN URLs: the only ICE server the pages learn is the TURN entry.
  const server = await startTestServer([
    "--turn-urls",
    turn.urls.join(","),
    "--turn-secret",
    serverSecret,
  ]);
  const pages: PeerPage[] = [];
  try {
    for (const ident of idents) {
      pages.push(await PeerPage.open(browser, server.url, { room, ident, rtcConfig: RELAY_ONLY }));
    }
    await body(pages[0], pages[1]);
    assert.deepEqual(pages.flatMap((p) => p.errors), []);
  } finally {
    for (const p of pages) await p.close();
    await server.stop();
  }
}

Deno.test({
  name: "browser+coturn: relay-only pages connect only with credentials coturn accepts",
  ignore: missing !== undefined,
  async fn(t) {
    const secret = `relay-${crypto.randomUUID()}`;
    const turn = await startCoturn({ secret });
    let browser: Browser | undefined;
    try {
      browser = await launchBrowser();
      const b0 = browser;

      await t.step("with the server's credentials the channel runs over relays", async () => {
        const before = Math.floor(Date.now() / 1000);
        await withRelayPair(b0, turn, secret, "relay", ["alice", "bob"], async (a, b) => {
          await Promise.all([a.waitForOpenPeers([b.self]), b.waitForOpenPeers([a.self])]);
          assert.equal(await a.send(b.self, "hello bob, via turn"), true);
          await b.waitForMessage(a.self, "hello bob, via turn");
          assert.equal(await b.send(a.self, "hi alice, via turn"), true);
          await a.waitForMessage(b.self, "hi alice, via turn");

          for (const [p, q] of [[a, b], [b, a]]) {
            const pair: SelectedPair | undefined = await p.selectedPair(q.self);
            assert.ok(pair !== undefined, `${p.self}: a selected candidate pair`);
            assert.equal(pair.local, "relay", `${p.self}: ${JSON.stringify(pair)}`);
            // coturn relays on 127.0.0.1 only (--relay-ip).
            assert.equal(pair.localAddress, "127.0.0.1");
            // The far end is the other page's relay; it is peer-reflexive when
            // its check overtook the signalled candidate (Chrome hides that address).
            assert.ok(["relay", "prflx"].includes(pair.remote), JSON.stringify(pair));
            if (pair.remote === "relay") assert.equal(pair.remoteAddress, "127.0.0.1");
          }
        });
        const after = Math.ceil(Date.now() / 1000);

        const log = await turn.log();
        for (const ident of ["alice", "bob"]) {
          const ok = loggedExpiries(log, ident, "ALLOCATE processed, success");
          assert.ok(ok.length > 0, `coturn logged no ALLOCATE success for <expiry>:${ident}`);
          // The username is the server's: its expiry is now + the default --turn-ttl.
          for (const expiry of ok) {
            assert.ok(expiry >= before + 3600 && expiry <= after + 3600, `expiry ${expiry}`);
          }
          // The relay was used towards the other page, not just allocated.
          assert.ok(
            loggedExpiries(log, ident, "CREATE_PERMISSION processed, success").length > 0,
            `coturn logged no permission for ${ident}'s relay`,
          );
        }
      });

      await t.step("with credentials signed by another secret there is no channel", async () => {
        const wrong = `wrong-${crypto.randomUUID()}`;
        await withRelayPair(b0, turn, wrong, "refused", ["carol", "dave"], async (c, d) => {
          const waits = await Promise.allSettled([
            c.waitForOpenPeers([d.self], REFUSED_WAIT_MS),
            d.waitForOpenPeers([c.self], REFUSED_WAIT_MS),
          ]);
          for (const w of waits) {
            assert.equal(w.status, "rejected", "a channel opened with refused credentials");
            assert.match(String(w.reason), /timed out/);
          }
          for (const p of [c, d]) {
            for (const s of await p.connectionStates()) {
              assert.notEqual(s.connectionState, "connected", `${p.self}: ${JSON.stringify(s)}`);
            }
          }
        });

        const log = await turn.log();
        for (const ident of ["carol", "dave"]) {
          assert.ok(
            loggedExpiries(log, ident, "message processed, error 401").length > 0,
            `coturn logged no 401 for <expiry>:${ident}`,
          );
          assert.deepEqual(loggedExpiries(log, ident, "ALLOCATE processed, success"), []);
        }
      });
    } finally {
      await browser?.close();
      await turn.stop();
    }
  },
});
