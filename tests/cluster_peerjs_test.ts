/**
 * PeerJS in cluster mode against a real redis-server and real server
 * processes (`main.ts --redis-url`): an id held on one instance is
 * `ID-TAKEN` on the other, and the same token takes the session over from
 * the other instance (whose socket is closed); `OFFER`, `ANSWER` and
 * `CANDIDATE` cross instances with `src` set by the server and in order; a
 * message for an id that connects later on the other instance waits in
 * Redis and is delivered after `OPEN`; the queue expires into `EXPIRE` for
 * a sender on either instance, and its bounds hold; `kill -9` of an
 * instance frees its ids within 10 s (its sessions' own tokens take them
 * back at once); a graceful stop frees them at once; Redis restarting
 * empty refuses new ids meanwhile and registers the held ones again; and
 * the real client (the `peerjs` 1.5.5 bundle in two Chromium pages, one
 * per instance) opens a `DataConnection` across them.
 *
 * Every wait is bounded.
 */

import assert from "node:assert/strict";
import { browserMissing, launchBrowser } from "./helpers/browser.ts";
import { PeerjsPage } from "./helpers/peerjs_page.ts";
import { type RedisServer, startRedis } from "./helpers/redis.ts";
import { type ServerProcess, startServerProcess, waitForStatus } from "./helpers/server_process.ts";
import { WsClient } from "./helpers/ws_client.ts";

const REDIS_MISSING = (() => {
  try {
    new Deno.Command("redis-server", { args: ["--version"], stdout: "null" }).outputSync();
    return false;
  } catch {
    return true;
  }
})();

if (REDIS_MISSING && Deno.env.get("CI")) {
  throw new Error("redis-server is not installed, and CI must run the cluster tests");
}

type Msg = Record<string, unknown>;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const opened: WsClient[] = [];

/** A PeerJS socket to `server` for `id` with `token`, and the first thing it was told. */
async function peer(
  server: ServerProcess,
  id: string,
  token = `t-${id}`,
): Promise<{ c: WsClient; first: Msg }> {
  const q = new URLSearchParams({ key: "peerjs", id, token, version: "1.5.5" });
  const c = await WsClient.connect(`ws://127.0.0.1:${server.port}/peerjs?${q}`);
  opened.push(c);
  return { c, first: await c.next() as Msg };
}

/** A PeerJS socket that was let in (`OPEN`). */
async function held(server: ServerProcess, id: string, token?: string): Promise<WsClient> {
  const { c, first } = await peer(server, id, token);
  assert.deepEqual(first, { type: "OPEN" }, `${id} opened`);
  return c;
}

/**
 * Sends a `LEAVE` to the sender itself and waits for it to come back:
 * every frame the sender sent before has been handled by its instance.
 */
async function barrier(c: WsClient, self: string): Promise<Msg[]> {
  c.send({ type: "LEAVE", dst: self });
  const before: Msg[] = [];
  for (;;) {
    const m = await c.next() as Msg;
    if (m.type === "LEAVE" && m.src === self) return before;
    before.push(m);
  }
}

/** A metric's value from a server's /metrics page. */
async function metric(server: ServerProcess, line: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${server.port}/metrics`)).text();
  const found = text.split("\n").find((l) => l.startsWith(line + " "));
  assert.ok(found !== undefined, `no metric ${line}`);
  return Number(found.slice(line.length + 1));
}

/**
 * A metric's value once `ok` holds (or the last value read after 5 s). A
 * cluster directory tells a relay's outcome after Redis answers, so its
 * counter may move after the frames that followed it were answered.
 */
async function metricOnce(
  server: ServerProcess,
  line: string,
  ok: (value: number) => boolean,
): Promise<number> {
  const until = Date.now() + 5000;
  for (;;) {
    const value = await metric(server, line);
    if (ok(value) || Date.now() > until) return value;
    await sleep(20);
  }
}

/** Runs `fn` with Redis and `n` instances, stopping everything afterwards. */
async function withCluster(
  n: number,
  fn: (servers: ServerProcess[], redis: RedisServer) => Promise<void>,
  extra: string[] = [],
): Promise<void> {
  const redis = await startRedis();
  const servers: ServerProcess[] = [];
  try {
    for (let i = 0; i < n; i++) {
      servers.push(await startServerProcess(["--redis-url", redis.url, ...extra]));
    }
    await fn(servers, redis);
  } finally {
    for (const c of opened.splice(0)) await c.close().catch(() => {});
    for (const s of servers) await s.stop("SIGKILL");
    await redis.stop();
  }
}

const opts = { ignore: REDIS_MISSING, sanitizeResources: true, sanitizeOps: true };

Deno.test(
  "peerjs cluster: ID-TAKEN across instances; the same token takes over from the other instance",
  opts,
  async () => {
    await withCluster(2, async ([s1, s2]) => {
      const a = await held(s1, "alice", "secret");
      const b = await held(s2, "bob");

      // Another token on the other instance: taken, and closed.
      const { c: x, first } = await peer(s2, "alice", "another");
      assert.deepEqual(first, { type: "ID-TAKEN", payload: { msg: "ID is taken" } });
      assert.deepEqual(await x.closed(), { code: 1008, reason: "ID is taken" });

      // The same token on the other instance: a reconnection, which takes the
      // session over; the old socket, on the first instance, is closed.
      const a2 = await held(s2, "alice", "secret");
      assert.deepEqual(await a.closed(), { code: 1000, reason: "taken over by a reconnection" });
      assert.equal(await metric(s2, 'peerjs_handshakes_total{outcome="takeover"}'), 1);

      // Messages for alice now reach the new session, from either instance.
      b.send({ type: "CANDIDATE", dst: "alice", payload: "same instance" });
      assert.deepEqual(await a2.next(), {
        type: "CANDIDATE",
        src: "bob",
        dst: "alice",
        payload: "same instance",
      });
      const c = await held(s1, "carol");
      c.send({ type: "CANDIDATE", dst: "alice", payload: "across" });
      assert.equal((await a2.next() as Msg).payload, "across");

      // The old session's close released nothing: alice is still held.
      const { first: again } = await peer(s1, "alice", "another");
      assert.equal(again.type, "ID-TAKEN");
      // And a closed id is free for anyone, on either instance.
      await a2.close();
      await held(s1, "alice", "another");
    });
  },
);

Deno.test(
  "peerjs cluster: OFFER, ANSWER and CANDIDATE cross instances, src set by the server, in order",
  opts,
  async () => {
    await withCluster(2, async ([s1, s2]) => {
      const a = await held(s1, "a");
      const b = await held(s2, "b");
      a.send({ type: "OFFER", dst: "b", src: "spoofed", payload: { sdp: "offer" }, extra: 1 });
      assert.deepEqual(await b.next(), {
        type: "OFFER",
        src: "a",
        dst: "b",
        payload: { sdp: "offer" },
      });
      b.send({ type: "ANSWER", dst: "a", payload: { sdp: "answer" } });
      assert.deepEqual(await a.next(), {
        type: "ANSWER",
        src: "b",
        dst: "a",
        payload: { sdp: "answer" },
      });
      const n = 300;
      for (let i = 0; i < n; i++) {
        a.send({ type: "CANDIDATE", dst: "b", payload: { i } });
        b.send({ type: "CANDIDATE", dst: "a", payload: { i } });
      }
      for (let i = 0; i < n; i++) {
        assert.deepEqual(await b.next(), { type: "CANDIDATE", src: "a", dst: "b", payload: { i } });
        assert.deepEqual(await a.next(), { type: "CANDIDATE", src: "b", dst: "a", payload: { i } });
      }
      assert.equal(await metric(s1, "peerjs_src_overridden_total"), 1);
      const delivered = 'peerjs_relayed_total{outcome="delivered"}';
      assert.ok(await metricOnce(s1, delivered, (v) => v >= n + 1) >= n + 1);
      assert.equal(await metric(s1, 'peerjs_errors_total{code="bad-dst"}'), 0);
      assert.deepEqual(await barrier(a, "a"), []);
      assert.deepEqual(await barrier(b, "b"), []);
    });
  },
);

Deno.test(
  "peerjs cluster: the offline queue spans instances — delivered on connect, EXPIRE, bounds",
  opts,
  async () => {
    await withCluster(2, async ([s1, s2]) => {
      const a = await held(s1, "a");
      // Waits in Redis for "late", which connects to the other instance.
      a.send({ type: "OFFER", dst: "late", payload: 1 });
      a.send({ type: "CANDIDATE", dst: "late", payload: 2 });
      a.send({ type: "LEAVE", dst: "late" }); // not kept, as in peer
      assert.deepEqual(await barrier(a, "a"), []);
      const queued = 'peerjs_relayed_total{outcome="queued"}';
      assert.equal(await metricOnce(s1, queued, (v) => v >= 2), 2);
      const late = await held(s2, "late");
      assert.deepEqual(await late.next(), { type: "OFFER", src: "a", dst: "late", payload: 1 });
      assert.deepEqual(await late.next(), { type: "CANDIDATE", src: "a", dst: "late", payload: 2 });
      // What comes after the queue follows it, from either instance.
      a.send({ type: "CANDIDATE", dst: "late", payload: 3 });
      assert.equal((await late.next() as Msg).payload, 3);
      assert.equal(await metric(s2, "peerjs_offline_delivered_total"), 2);

      // Nobody comes: each sender, on either instance, is told EXPIRE once
      // the timeout (1 s here) has passed since the queue's first message.
      const b = await held(s2, "b");
      const t0 = Date.now();
      a.send({ type: "OFFER", dst: "nobody", payload: 1 });
      b.send({ type: "OFFER", dst: "nobody", payload: 2 });
      assert.deepEqual(await a.next(5000), { type: "EXPIRE", src: "nobody", dst: "a" });
      assert.deepEqual(await b.next(5000), { type: "EXPIRE", src: "nobody", dst: "b" });
      const took = Date.now() - t0;
      assert.ok(took >= 900 && took < 3000, `expired after ${took} ms`);
      // Gone from Redis: a late arrival gets nothing.
      const nobody = await held(s1, "nobody");
      assert.deepEqual(await barrier(nobody, "nobody"), []);

      // Bounds: two messages per id here; the third is refused at once.
      a.send({ type: "CANDIDATE", dst: "full", payload: 1 });
      b.send({ type: "CANDIDATE", dst: "full", payload: 2 });
      assert.deepEqual(await barrier(b, "b"), []);
      b.send({ type: "CANDIDATE", dst: "full", payload: 3 });
      assert.deepEqual(await b.next(), { type: "EXPIRE", src: "full", dst: "b" });
      assert.equal(await metric(s2, 'peerjs_relayed_total{outcome="full-id"}'), 1);
      const full = await held(s2, "full");
      assert.deepEqual(
        [await full.next(), await full.next()].map((m) => (m as Msg).payload),
        [1, 2],
      );
      // Both instances report the cluster's queues (empty again).
      await sleep(1500);
      assert.equal(await metric(s1, "peerjs_offline_messages"), 0);
      assert.equal(await metric(s2, "peerjs_offline_bytes"), 0);
    }, ["--peerjs-expire-timeout", "1000", "--peerjs-queue-per-id", "2"]);
  },
);

Deno.test(
  "peerjs cluster: kill -9 frees an instance's ids within 10 s; a stopped one's at once",
  opts,
  async () => {
    await withCluster(3, async ([s1, s2, s3]) => {
      await held(s1, "k1", "token1");
      await held(s1, "k2", "token2");
      const watcher = await held(s2, "watcher");
      await held(s3, "s3-id");

      const killed = Date.now();
      await s1.stop("SIGKILL");
      // A session's own token takes its id back at once, wherever it reconnects.
      const k1 = await held(s2, "k1", "token1");
      assert.ok(Date.now() - killed < 2000, `k1 back after ${Date.now() - killed} ms`);
      // Anyone else gets it once the dead instance's liveness key has expired.
      let attempts = 0;
      let k2: WsClient | undefined;
      while (k2 === undefined) {
        assert.ok(Date.now() - killed < 10_000, "k2 not free within 10 s of the kill");
        const { c, first } = await peer(s2, "k2", "someone-else");
        attempts++;
        if (first.type === "OPEN") k2 = c;
        else {
          assert.equal(first.type, "ID-TAKEN");
          await c.closed();
          await sleep(250);
        }
      }
      const freed = Date.now() - killed;
      assert.ok(attempts > 1, "k2 was held until the instance was known dead");
      console.log(`  ids of a killed instance free after ${freed} ms`);
      // The new holders get their messages.
      watcher.send({ type: "CANDIDATE", dst: "k2", payload: "to the new k2" });
      watcher.send({ type: "CANDIDATE", dst: "k1", payload: "to the new k1" });
      assert.equal((await k2.next() as Msg).payload, "to the new k2");
      assert.equal((await k1.next() as Msg).payload, "to the new k1");

      // A graceful stop gives its ids up as it closes its clients.
      assert.equal(await s3.stop("SIGTERM"), 0);
      const stopped = Date.now();
      await held(s2, "s3-id", "someone-else");
      assert.ok(Date.now() - stopped < 2000);
    });
  },
);

Deno.test(
  "peerjs cluster: Redis restarts empty — new ids refused meanwhile, held ones registered again",
  opts,
  async () => {
    await withCluster(2, async ([s1, s2], redis) => {
      const r1 = await held(s1, "r1");
      const r2 = await held(s2, "r2");
      const local = await held(s1, "local");

      await redis.down();
      await waitForStatus(s1.port, "/readyz", 503);
      await waitForStatus(s2.port, "/readyz", 503);
      // A new id cannot be checked: refused, try again later.
      const { c: x, first } = await peer(s1, "new");
      assert.deepEqual(first, {
        type: "ERROR",
        payload: { msg: "Server is unavailable, try again later" },
      });
      assert.equal((await x.closed()).code, 1013);
      // Ids on the same instance still talk; the other instance cannot be reached.
      r1.send({ type: "CANDIDATE", dst: "local", payload: "here" });
      assert.equal((await local.next() as Msg).payload, "here");
      r1.send({ type: "OFFER", dst: "r2", payload: "there" });
      assert.deepEqual(await r1.next(), { type: "EXPIRE", src: "r2", dst: "r1" });

      await redis.up();
      await waitForStatus(s1.port, "/readyz", 200, 15_000);
      await waitForStatus(s2.port, "/readyz", 200, 15_000);
      // The held ids were registered again: still theirs, and reachable.
      const { first: taken } = await peer(s2, "r1", "another");
      assert.equal(taken.type, "ID-TAKEN");
      r2.send({ type: "CANDIDATE", dst: "r1", payload: "back" });
      assert.equal((await r1.next() as Msg).payload, "back");
      r1.send({ type: "CANDIDATE", dst: "r2", payload: "and forth" });
      assert.equal((await r2.next() as Msg).payload, "and forth");
      await held(s1, "new");
    });
  },
);

const browser = browserMissing();

Deno.test({
  name: "peerjs cluster: two Chromium pages on different instances connect and talk",
  ignore: REDIS_MISSING || browser !== undefined,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    await withCluster(2, async ([s1, s2]) => {
      const chromium = await launchBrowser();
      const pages: PeerjsPage[] = [];
      const open = async (s: ServerProcess) => {
        const p = await PeerjsPage.open(chromium, `http://127.0.0.1:${s.port}`);
        pages.push(p);
        return p;
      };
      try {
        await t.step("a DataConnection across instances carries messages both ways", async () => {
          const a = await open(s1);
          const b = await open(s2);
          assert.equal(await a.start("alice"), "alice");
          assert.equal(await b.start("bob"), "bob");
          await a.connect("bob");
          await Promise.all([a.connected("bob"), b.connected("alice")]);
          await a.send("bob", "hello bob, from instance 1");
          await b.received("alice", "hello bob, from instance 1");
          await b.send("alice", "hi alice, from instance 2");
          await a.received("bob", "hi alice, from instance 2");
          for (const p of [a, b]) {
            const errors = (await p.events()).filter((e) => String(e[0]).includes("error"));
            assert.deepEqual(errors, []);
          }
          const delivered = 'peerjs_relayed_total{outcome="delivered"}';
          assert.ok(await metricOnce(s1, delivered, (v) => v >= 1) >= 1);
          assert.ok(await metricOnce(s2, delivered, (v) => v >= 1) >= 1);
        });
        await t.step(
          "an offer to a peer that connects later, elsewhere, is delivered",
          async () => {
            const a = await open(s1);
            const late = await open(s2);
            const alice = await a.start("alice-2");
            await a.connect("late-peer");
            await a.offerHandled("late-peer");
            assert.equal(await late.start("late-peer"), "late-peer");
            await Promise.all([a.connected("late-peer"), late.connected(alice)]);
            await late.send(alice, "made it across");
            await a.received("late-peer", "made it across");
          },
        );
        assert.deepEqual(pages.flatMap((p) => p.errors), []);
      } finally {
        for (const p of pages) await p.close();
        await chromium.close();
      }
    });
  },
});
