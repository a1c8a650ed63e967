/**
 * Real client topologies at the server's default settings, with no
 * candidate filtering: every pair in a room must connect its data channel
 * and exchange one message each way, and no client may get an `error`
 * frame from the server.
 *
 * - DIVA's reference topology: 3 processes, each one socket holding three
 *   idents in one room (9 members, 36 pairs), simple-peer on wrtc.
 * - A busier room of the same kind: 4 sockets × 4 idents (16 members, 120 pairs).
 * - A browser mesh: 6 Chromium pages running `/client.js` in one room (15 pairs).
 *
 * Each test logs the frames the clients needed (per socket, per pair, peaks
 * in sliding windows, sizes) and how long it took.
 */

import assert from "node:assert/strict";
import { browserMissing, launchBrowser, startTestServer } from "./helpers/browser.ts";
import { type ClientEvent, ReferenceClient } from "./helpers/diva_reference_client.ts";
import { processCpuMs, report, type SentFrame } from "./helpers/frame_stats.ts";
import { MeshPage } from "./helpers/mesh_page.ts";

/** Bound on the whole topology connecting (and on the joins before it), in ms. */
const TOPOLOGY_MS = 60_000;

/** Bound on a client process closing down, in ms. */
const CLOSE_MS = 10_000;

/** Unordered pairs of `members`, each as `[a, b]`. */
function pairsOf(members: readonly string[]): [string, string][] {
  const out: [string, string][] = [];
  for (let i = 0; i < members.length; i++) {
    for (let j = i + 1; j < members.length; j++) out.push([members[i], members[j]]);
  }
  return out;
}

/** After the first `error` frame, how much longer a wait goes on (to count what still connects). */
const AFTER_ERROR_MS = 10_000;

/**
 * Resolves once `done()` holds, re-checked whenever a client reports; rejects
 * when a client process exits first, after `ms`, or {@link AFTER_ERROR_MS}
 * after the server sent any client an `error` frame (the test has failed then).
 */
function whenAll(
  clients: readonly ReferenceClient[],
  done: () => boolean,
  ms: number,
  what: string,
): Promise<void> {
  const offs: (() => void)[] = [];
  const timers: ReturnType<typeof setTimeout>[] = [];
  return new Promise<void>((resolve, reject) => {
    const fail = (why: string) => reject(new Error(`${why} waiting for ${what}`));
    const check = () => {
      const gone = clients.find((c) => c.exitCode !== undefined);
      if (gone !== undefined) return fail(`a client exited (code ${gone.exitCode})`);
      if (done()) return resolve();
      if (timers.length === 1 && clients.some((c) => c.errorFrames.length > 0)) {
        timers.push(setTimeout(() => fail("the server sent error frames"), AFTER_ERROR_MS));
      }
    };
    timers.push(setTimeout(() => fail(`timed out after ${ms} ms`), ms));
    for (const c of clients) offs.push(c.onChange(check));
    check();
  }).finally(() => {
    for (const t of timers) clearTimeout(t);
    for (const off of offs) off();
  });
}

/** `n × frame` counts of the distinct `[error, call, code]` in `frames`. */
function errorSummary(frames: readonly unknown[][]): string {
  const codes = new Map<string, number>();
  for (const f of frames) {
    const k = JSON.stringify(f.slice(0, 3));
    codes.set(k, (codes.get(k) ?? 0) + 1);
  }
  return [...codes].map(([k, n]) => `${n} × ${k}`).join(", ");
}

/**
 * `sockets` reference-client processes, each joining one room with
 * `identsPerSocket` idents; all pairs must connect and greet each other.
 */
async function referenceTopology(sockets: number, identsPerSocket: number): Promise<void> {
  const label = `${sockets}x${identsPerSocket}`;
  const members = sockets * identsPerSocket;
  const pairCount = (members * (members - 1)) / 2;
  const cpuBefore = processCpuMs();
  const started = Date.now();
  const server = await startTestServer();
  const clients: ReferenceClient[] = [];
  let failure: unknown;
  let greetedAt: number | undefined;
  let delayed = -1;
  try {
    for (let i = 0; i < sockets; i++) {
      clients.push(ReferenceClient.spawn(server.wsUrl, "diva", identsPerSocket));
    }
    const deadline = started + TOPOLOGY_MS;
    await whenAll(
      clients,
      () => clients.every((c) => c.idents.length === identsPerSocket),
      deadline - Date.now(),
      "every socket to join",
    );
    const all = clients.flatMap((c) => c.idents);
    const holder = new Map(clients.flatMap((c) => c.idents.map((i) => [i, c] as const)));
    // Each side must have received the other's greeting: both channels open, data both ways.
    const missing = () =>
      pairsOf(all).filter(([a, b]) =>
        !holder.get(a)!.greeted.has(`${a} ${b}`) || !holder.get(b)!.greeted.has(`${b} ${a}`)
      );
    await whenAll(
      clients,
      () => missing().length === 0,
      deadline - Date.now(),
      `all ${pairCount} pairs to connect and greet`,
    );
    greetedAt = Date.now();
  } catch (e) {
    failure = e;
  } finally {
    delayed = server.server.broker.stats.framesDelayed;
    await Promise.all(clients.map((c) => c.close(CLOSE_MS)));
    await server.stop();
  }

  const all = clients.flatMap((c) => c.idents);
  const holder = new Map(clients.flatMap((c) => c.idents.map((i) => [i, c] as const)));
  const both = (set: (c: ReferenceClient) => Set<string>) =>
    pairsOf(all).filter(([a, b]) =>
      set(holder.get(a)!).has(`${a} ${b}`) && set(holder.get(b)!).has(`${b} ${a}`)
    ).length;
  const connectedPairs = both((c) => c.connected);
  const greetedPairs = both((c) => c.greeted);
  const errorFrames = clients.flatMap((c) => c.errorFrames);
  const peerErrors = clients.flatMap((c) => c.peerErrors);

  const events = clients.flatMap((c) => c.events);
  const firstFrame = Math.min(...clients.flatMap((c) => (c.report?.frames ?? []).map((f) => f.t)));
  const lastConnect = Math.max(
    ...events.filter((e): e is Extract<ClientEvent, { event: "connected" }> =>
      e.event === "connected"
    ).map((e) => e.t),
  );
  console.log(
    `[${label}] ${connectedPairs}/${pairCount} pairs connected, ${greetedPairs} greeted both ways; ` +
      (greetedAt === undefined ? "not all pairs done; " : "") +
      `last channel open ${lastConnect - firstFrame} ms after the first frame; ` +
      `test ${Date.now() - started} ms (all greeted at ${
        greetedAt === undefined ? "-" : greetedAt - started
      } ms); cpu: test process ${(processCpuMs() ?? NaN) - (cpuBefore ?? NaN)} ms, clients ${
        clients.map((c) => c.report?.cpuMs ?? "?").join("+")
      } ms; early signals ${clients.map((c) => c.report?.early ?? "?").join("+")}; ` +
      `close ${clients.map((c) => c.report?.closeMs ?? "?").join("+")} ms; ` +
      `open fds at the end ${clients.map((c) => c.report?.fds ?? "?").join("+")}; ` +
      `frames the server delayed for budget: ${delayed}`,
  );
  console.log(report(
    label,
    clients.map((c, i) => ({
      name: `socket ${i}`,
      frames: c.report?.frames ?? [],
      cpuMs: c.report?.cpuMs ?? undefined,
    })),
    pairCount,
  ));
  if (errorFrames.length > 0) console.log(`[${label}] error frames: ${errorSummary(errorFrames)}`);
  if (peerErrors.length > 0) {
    console.log(
      `[${label}] peer errors (${peerErrors.length}): ${peerErrors.slice(0, 5).join("; ")}`,
    );
  }

  assert.ok(
    errorFrames.length === 0,
    `the server sent clients ${errorSummary(errorFrames)}; ${greetedPairs}/${pairCount} pairs done`,
  );
  if (failure !== undefined) throw failure;
  assert.equal(greetedPairs, pairCount);
  // The defaults leave room to spare: the budgets never made a frame wait.
  assert.equal(delayed, 0, `${delayed} frames waited for budget at the defaults`);
}

Deno.test({
  name: "DIVA reference topology: 3 processes × 3 idents, 36 pairs connect and exchange data",
  async fn() {
    await referenceTopology(3, 3);
  },
});

Deno.test({
  name: "a busier room: 4 processes × 4 idents, 120 pairs connect and exchange data",
  async fn() {
    await referenceTopology(4, 4);
  },
});

const missing = browserMissing();
if (missing !== undefined) console.warn(`skipping browser topology test: ${missing}`);

Deno.test({
  name: "browser mesh: 6 Chromium pages in one room, 15 pairs connect and exchange data",
  ignore: missing !== undefined,
  async fn() {
    const label = "browser 6";
    const count = 6;
    const pairCount = (count * (count - 1)) / 2;
    const cpuBefore = processCpuMs();
    const started = Date.now();
    const deadline = started + TOPOLOGY_MS;
    const server = await startTestServer();
    const browser = await launchBrowser();
    const launchedAt = Date.now();
    let joinedAt: number | undefined;
    const pages: MeshPage[] = [];
    const records: { sent: SentFrame[]; errorFrames: unknown[][]; meshErrors: string[] }[] = [];
    const open: string[][] = [];
    const greeted: string[][] = [];
    let failure: unknown;
    let openAt: number | undefined;
    let greetedAt: number | undefined;
    let delayed = -1;
    try {
      // All pages join at once, like a class opening the same link.
      const opened = await Promise.allSettled(
        Array.from({ length: count }, async () => {
          const p = await MeshPage.open(browser, server.url, "mesh");
          pages.push(p);
          return p;
        }),
      );
      for (const o of opened) if (o.status === "rejected") throw o.reason;
      joinedAt = Date.now();
      const selves = pages.map((p) => p.self);
      const others = (p: MeshPage) => selves.filter((s) => s !== p.self);
      await Promise.all(pages.map((p) => p.waitForOpen(others(p), deadline - Date.now())));
      openAt = Date.now();
      const text = (from: string, to: string) => `hello ${to} from ${from}`;
      for (const p of pages) {
        assert.deepEqual(await p.sendTo(others(p), (q) => text(p.self, q)), [], "channels open");
      }
      await Promise.all(pages.map((p) =>
        p.waitForMessages(
          Object.fromEntries(others(p).map((q) => [q, text(q, p.self)])),
          deadline - Date.now(),
        )
      ));
      greetedAt = Date.now();
    } catch (e) {
      failure = e;
    } finally {
      for (const p of pages) {
        try {
          records.push(await p.record());
          open.push(await p.openPeers());
          greeted.push(await p.greetedBy());
        } catch (e) {
          failure ??= e;
        }
      }
      delayed = server.server.broker.stats.framesDelayed;
      for (const p of pages) await p.close();
      await browser.close();
      await server.stop();
    }

    const selves = pages.map((p) => p.self);
    const countBoth = (lists: string[][]) =>
      pairsOf(selves).filter(([a, b]) =>
        lists[selves.indexOf(a)]?.includes(b) && lists[selves.indexOf(b)]?.includes(a)
      ).length;
    const openPairs = countBoth(open);
    const greetedPairs = countBoth(greeted);
    const errorFrames = records.flatMap((r) => r.errorFrames);
    const firstFrame = Math.min(...records.flatMap((r) => r.sent.map((f) => f.t)));
    console.log(
      `[${label}] ${openPairs}/${pairCount} pairs open, ${greetedPairs} greeted both ways; ` +
        `all open ${openAt === undefined ? "-" : openAt - firstFrame} ms after the first frame; ` +
        `test ${Date.now() - started} ms (browser up at ${launchedAt - started} ms, pages joined ` +
        `at ${joinedAt === undefined ? "-" : joinedAt - started} ms, all greeted at ${
          greetedAt === undefined ? "-" : greetedAt - started
        } ms); cpu: test process ${
          (processCpuMs() ?? NaN) - (cpuBefore ?? NaN)
        } ms (Chromium not included); frames the server delayed for budget: ${delayed}`,
    );
    console.log(report(
      label,
      records.map((r, i) => ({ name: `page ${i}`, frames: r.sent })),
      pairCount,
    ));
    const meshErrors = records.flatMap((r) => r.meshErrors);
    if (errorFrames.length > 0) {
      console.log(`[${label}] error frames: ${JSON.stringify(errorFrames)}`);
    }
    if (meshErrors.length > 0) console.log(`[${label}] mesh errors: ${meshErrors.join("; ")}`);

    assert.ok(
      errorFrames.length === 0,
      `the server sent pages ${errorSummary(errorFrames)}; ${greetedPairs}/${pairCount} pairs done`,
    );
    if (failure !== undefined) throw failure;
    assert.equal(greetedPairs, pairCount);
    assert.deepEqual(pages.flatMap((p) => p.errors), []);
    assert.equal(delayed, 0, `${delayed} frames waited for budget at the defaults`);
  },
});
