/**
 * The status page's charts on a real server: the sampler's timer feeds them
 * from the live metrics, `status.json` carries them with the counts, the
 * page needs nothing from elsewhere, and no ident, room name, token or
 * payload ever shows.
 *
 * @module
 */

import assert from "node:assert/strict";
import { SECRET, startStatusServer, startTraffic } from "./helpers/status_server.ts";

interface StatusJson {
  uptime: string;
  counts: Record<string, number>;
  charts: string;
}

async function statusJson(url: string): Promise<StatusJson> {
  const r = await fetch(`${url}/status.json`);
  assert.equal(r.status, 200);
  assert.equal(r.headers.get("content-type"), "application/json");
  assert.equal(r.headers.get("cache-control"), "no-store");
  return await r.json();
}

/** The latest value a chart's legend shows for `label`. */
function legend(html: string, label: string): string | undefined {
  const at = html.indexOf(`</i>${label} <b>`);
  if (at < 0) return undefined;
  const from = at + `</i>${label} <b>`.length;
  return html.slice(from, html.indexOf("</b>", from));
}

async function eventually(what: string, check: () => Promise<boolean>, ms = 10_000) {
  const until = performance.now() + ms;
  while (!(await check())) {
    if (performance.now() > until) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

Deno.test("status page: charts sampled from live metrics, refreshed through status.json", async () => {
  const s = startStatusServer(50);
  try {
    const page = await (await fetch(`${s.url}/`)).text();
    // The existing page is all there, and the charts with it.
    for (const id of ["uptime", "connections", "rooms", "idents", "ywebrtc-connections"]) {
      assert.match(page, new RegExp(`id="${id}">`));
    }
    for (const id of ["connections", "rooms", "signals", "errors", "shaping"]) {
      assert.match(page, new RegExp(`<svg id="chart-${id}"`));
    }
    assert.doesNotMatch(page, /chart-instances|chart-redis/, "no cluster charts alone");
    assert.match(page, /data-refresh-ms="50"/);
    // Nothing is loaded from elsewhere: one inline script, no src, no stylesheet link.
    assert.equal(page.split("<script").length, 2);
    assert.doesNotMatch(page, /<script[^>]*src|<link|@import|https?:\/\/(?!127\.0\.0\.1)/);

    const empty = await statusJson(s.url);
    assert.equal(empty.counts.connections, 0);
    assert.equal(legend(empty.charts, "DIVA"), "0");

    const traffic = await startTraffic(s.wsUrl, 3);
    try {
      // 3 DIVA pairs and 2 y-webrtc clients: the charts' latest samples follow.
      await eventually("the connections chart shows 6 and 2", async () => {
        const j = await statusJson(s.url);
        return legend(j.charts, "DIVA") === "6" && legend(j.charts, "y-webrtc") === "2";
      });
      await eventually("signals, publishes and errors show as rates", async () => {
        const c = (await statusJson(s.url)).charts;
        const rate = (label: string) => Number(legend(c, label));
        return rate("DIVA signals") > 0 && rate("y-webrtc publishes") > 0 &&
          rate("malformed") > 0;
      });
      const j = await statusJson(s.url);
      assert.equal(j.counts.connections, 6);
      assert.equal(j.counts.rooms, 3);
      assert.equal(j.counts.idents, 6);
      assert.equal(j.counts["ywebrtc-connections"], 2);
      assert.equal(j.counts["ywebrtc-topics"], 1);
      assert.equal(legend(j.charts, "DIVA rooms"), "3");
      assert.equal(legend(j.charts, "y-webrtc topics"), "1");

      // Counts only: no ident, room, topic, token or payload anywhere.
      const all = [await (await fetch(`${s.url}/`)).text(), JSON.stringify(j)];
      for (const text of all) assert.ok(!text.includes(SECRET), "a name or payload leaked");
    } finally {
      await traffic.stop();
    }
    await eventually("the connections chart is back to 0", async () => {
      return legend((await statusJson(s.url)).charts, "DIVA") === "0";
    });

    const head = await fetch(`${s.url}/status.json`, { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.equal(await head.text(), "");
  } finally {
    await s.stop();
  }
});

Deno.test("status page: the sampler samples on its interval and stops at shutdown", async () => {
  const s = startStatusServer(20);
  const h = s.server.history;
  assert.equal(h.intervalMs, 20);
  assert.equal(h.capacity, 360);
  await eventually("a few samples were taken", () => Promise.resolve(h.size >= 4));
  await s.stop();
  const after = h.size;
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(h.size, after, "no sample after shutdown");
});
