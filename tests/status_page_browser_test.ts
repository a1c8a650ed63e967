/**
 * The status page in Chromium: its SVG charts are drawn on load, and while
 * a test drives DIVA and y-webrtc traffic they change in place (no reload),
 * with the counts beside them, showing no name or payload. A screenshot is
 * kept in `test-artifacts/status-page.png`.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { Page } from "playwright-core";
import {
  BROWSER_TIMEOUT_MS,
  browserMissing,
  launchBrowser,
  newIsolatedPage,
} from "./helpers/browser.ts";
import { SECRET, startStatusServer, startTraffic } from "./helpers/status_server.ts";

const missing = browserMissing();
if (missing !== undefined) console.warn(`skipping browser tests: ${missing}`);

const SCREENSHOT = "test-artifacts/status-page.png";
const CHARTS = ["connections", "rooms", "signals", "errors", "shaping"];

/** Every chart line's path, by `chart-<id>/<line>`. */
async function linePaths(page: Page): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const id of CHARTS) {
    for (const p of await page.locator(`svg#chart-${id} path.line`).all()) {
      out[`chart-${id}/${await p.getAttribute("data-line")}`] = await p.getAttribute("d") ?? "";
    }
  }
  return out;
}

/** The latest value a chart's legend shows for `label`, as the page has it now. */
async function legend(page: Page, chart: string, label: string): Promise<string | undefined> {
  for (const key of await page.locator(`figure:has(svg#chart-${chart}) .key`).all()) {
    const value = await key.locator("b").textContent();
    if (await key.textContent() === `${label} ${value}`) return value ?? undefined;
  }
  return undefined;
}

async function until(what: string, check: () => Promise<boolean>, ms = BROWSER_TIMEOUT_MS) {
  const end = performance.now() + ms;
  while (!(await check())) {
    if (performance.now() > end) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

Deno.test({
  name: `status page in Chromium: live SVG charts change in place (screenshot in ${SCREENSHOT})`,
  ignore: missing !== undefined,
  async fn() {
    const server = startStatusServer(100);
    const browser = await launchBrowser();
    try {
      const { page, errors, context } = await newIsolatedPage(browser);
      await page.setViewportSize({ width: 900, height: 1000 });
      await page.goto(`${server.url}/`);

      // The charts are there on load: one SVG each, drawn by the server.
      for (const id of CHARTS) await page.locator(`svg#chart-${id}`).waitFor();
      assert.equal(await page.locator("#charts svg").count(), CHARTS.length);
      const before = await linePaths(page);
      // One connections line per engine (DIVA and y-webrtc at least), 11 lines besides.
      const engineLines = Object.keys(before).filter((k) => k.startsWith("chart-connections/"));
      assert.ok(engineLines.length >= 2);
      assert.equal(Object.keys(before).length, 11 + engineLines.length);
      // Drawn at a useful size (measured again if a refresh replaced it meanwhile).
      await until("the connections chart has a useful size", async () => {
        const box = await page.locator("svg#chart-connections").boundingBox();
        return box !== null && box.width > 250 && box.height > 80;
      });
      // A mark on the document: it survives only if the page is never reloaded.
      await page.evaluate(() => ((globalThis as Record<string, unknown>).__sameDocument = true));

      const traffic = await startTraffic(server.wsUrl, 3);
      try {
        await until(
          "the page shows 6 DIVA and 2 y-webrtc connections",
          async () =>
            await page.locator("#connections").textContent() === "6" &&
            await legend(page, "connections", "DIVA") === "6" &&
            await legend(page, "connections", "y-webrtc") === "2",
        );
        await until(
          "signals, publishes and malformed frames show as rates",
          async () =>
            Number(await legend(page, "signals", "DIVA signals")) > 0 &&
            Number(await legend(page, "signals", "y-webrtc publishes")) > 0 &&
            Number(await legend(page, "errors", "malformed")) > 0,
        );
        // Let the lines grow for a while, then keep a picture.
        await new Promise((r) => setTimeout(r, 3_000));
        const during = await linePaths(page);
        for (const key of ["chart-connections/0", "chart-rooms/0", "chart-signals/0"]) {
          assert.notEqual(during[key], before[key], `${key} changed`);
          assert.match(during[key], /^M[\d.]+ [\d.]+L/, `${key} is a line`);
        }
        assert.equal(await legend(page, "rooms", "DIVA rooms"), "3");
        assert.equal(await page.locator("#rooms").textContent(), "3");
        assert.equal(await page.locator("#ywebrtc-topics").textContent(), "1");
        await Deno.mkdir("test-artifacts", { recursive: true });
        await page.screenshot({ path: SCREENSHOT, fullPage: true, timeout: BROWSER_TIMEOUT_MS });

        // Counts only: no ident, room, topic, token or payload on the page.
        assert.ok(!(await page.content()).includes(SECRET), "a name or payload reached the page");
      } finally {
        await traffic.stop();
      }
      await until(
        "the page shows the connections gone",
        async () =>
          await page.locator("#connections").textContent() === "0" &&
          await legend(page, "connections", "DIVA") === "0",
      );
      assert.equal(
        await page.evaluate(() => (globalThis as Record<string, unknown>).__sameDocument),
        true,
        "the page was refreshed in place, never reloaded",
      );
      assert.ok(Number(await page.locator("#charts").getAttribute("data-refreshed")) > 5);
      assert.deepEqual(errors, []);
      const png = await Deno.readFile(SCREENSHOT);
      assert.deepEqual([...png.subarray(1, 4)], [0x50, 0x4e, 0x47]); // "PNG"
      await context.close();
    } finally {
      await browser.close();
      await server.stop();
    }
  },
});
