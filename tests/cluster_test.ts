/**
 * Cluster mode against a real redis-server and real server processes:
 * clients on different instances see exactly what one server would show.
 */

import assert from "node:assert/strict";
import { startRedis } from "./helpers/redis.ts";
import { type ServerProcess, startServerProcess, waitForStatus } from "./helpers/server_process.ts";
import { type Received, WsClient } from "./helpers/ws_client.ts";

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

/** Runs `fn` with Redis and `n` instances, stopping everything afterwards. */
async function withCluster(
  n: number,
  fn: (servers: ServerProcess[], redis: Awaited<ReturnType<typeof startRedis>>) => Promise<void>,
  extra: string[] = [],
): Promise<void> {
  const redis = await startRedis();
  const servers: ServerProcess[] = [];
  const clients: WsClient[] = [];
  try {
    for (let i = 0; i < n; i++) {
      servers.push(await startServerProcess(["--redis-url", redis.url, ...extra]));
    }
    await fn(servers, redis);
  } finally {
    for (const c of clients) await c.close().catch(() => {});
    for (const s of servers) await s.stop("SIGKILL");
    await redis.stop();
  }
}

const opened: WsClient[] = [];
async function connect(s: ServerProcess): Promise<WsClient> {
  const c = await WsClient.connect(s.url);
  opened.push(c);
  return c;
}
async function closeAll(): Promise<void> {
  for (const c of opened.splice(0)) await c.close().catch(() => {});
}

async function joinAs(c: WsClient, ident: string, room: string): Promise<void> {
  c.send(["join", ident, room]);
  assert.deepEqual(await c.next(), ["join", `${room}:${ident}`]);
}

/** Takes `count` messages. */
async function take(c: WsClient, count: number, timeoutMs = 5000): Promise<Received[]> {
  const out: Received[] = [];
  for (let i = 0; i < count; i++) out.push(await c.next(timeoutMs));
  return out;
}

/** Joins one client per `[server, ident]` to `name`, in order, and takes every stun they get. */
async function room(name: string, members: [ServerProcess, string][]): Promise<WsClient[]> {
  const clients: WsClient[] = [];
  for (const [server, ident] of members) {
    const c = await connect(server);
    await joinAs(c, ident, name);
    clients.push(c);
  }
  for (const c of clients) await take(c, members.length - 1);
  return clients;
}

/** True when nothing more arrives within `ms`. */
async function quiet(c: WsClient, ms = 300): Promise<boolean> {
  try {
    const m = await c.next(ms);
    throw new Error(`unexpected message ${JSON.stringify(m)}`);
  } catch (e) {
    if ((e as Error).message.startsWith("unexpected")) throw e;
    return true;
  }
}

const opts = { ignore: REDIS_MISSING, sanitizeResources: true, sanitizeOps: true };

Deno.test("cluster: the worked example across two instances", opts, async () => {
  await withCluster(2, async ([s1, s2]) => {
    try {
      const a = await connect(s1);
      const b = await connect(s2);
      a.send(["ident"]);
      const [, id] = (await a.next()) as [string, string];
      assert.match(id, /^[a-z]{24}$/);
      await joinAs(a, id, "lobby");
      await joinAs(b, "bob", "lobby");
      assert.deepEqual(await a.next(), ["stun", `lobby:${id}`, "lobby:bob", false]);
      assert.deepEqual(await b.next(), ["stun", "lobby:bob", `lobby:${id}`, true]);
      const offer = { type: "offer", sdp: "v=0 x" };
      b.send(["signal", "lobby:bob", `lobby:${id}`, offer]);
      assert.deepEqual(await a.next(), ["signal", `lobby:${id}`, "lobby:bob", offer]);
      a.send(["signal", `lobby:${id}`, "lobby:bob", { type: "answer" }]);
      assert.deepEqual(await b.next(), ["signal", "lobby:bob", `lobby:${id}`, { type: "answer" }]);
      await b.close();
      assert.deepEqual(await a.next(), ["bye", `lobby:${id}`, "lobby:bob"]);
    } finally {
      await closeAll();
    }
  });
});

Deno.test("cluster: a room of 10 over 3 instances announces every pair once", opts, async () => {
  await withCluster(3, async (servers) => {
    try {
      const clients: WsClient[] = [];
      for (let i = 0; i < 10; i++) {
        const c = await connect(servers[i % 3]);
        await joinAs(c, `p${i}`, "ten");
        clients.push(c);
        // The joiner hears of every earlier member, in join order, as initiator.
        const stuns = await take(c, i);
        assert.deepEqual(
          stuns,
          [...Array(i).keys()].map((j) => ["stun", `ten:p${i}`, `ten:p${j}`, true]),
        );
        // Every earlier member hears of the joiner once, not as initiator.
        for (let j = 0; j < i; j++) {
          assert.deepEqual(await clients[j].next(), ["stun", `ten:p${j}`, `ten:p${i}`, false]);
        }
      }
      for (const c of clients) assert.ok(await quiet(c, 200));
      // Every pair relays across instances.
      clients[9].send(["signal", "ten:p9", "ten:p1", 42]);
      assert.deepEqual(await clients[1].next(), ["signal", "ten:p1", "ten:p9", 42]);
    } finally {
      await closeAll();
    }
  });
});

Deno.test(
  "cluster: ident-taken, not-owner, cross-room, unknown-peer and room limit across instances",
  opts,
  async () => {
    await withCluster(2, async ([s1, s2]) => {
      try {
        const a = await connect(s1);
        const b = await connect(s2);
        await joinAs(a, "alice", "r");
        b.send(["join", "alice", "r"]);
        assert.deepEqual(await b.next(), ["error", "join", "ident-taken", "r:alice"]);
        await joinAs(b, "bob", "r");
        await take(a, 1);
        await take(b, 1);
        b.send(["signal", "r:alice", "r:bob", 1]);
        assert.deepEqual(((await b.next()) as unknown[]).slice(0, 3), [
          "error",
          "signal",
          "not-owner",
        ]);
        b.send(["signal", "r:bob", "other:alice", 1]);
        assert.deepEqual(((await b.next()) as unknown[]).slice(0, 3), [
          "error",
          "signal",
          "cross-room",
        ]);
        b.send(["signal", "r:bob", "r:nobody", 1]);
        assert.deepEqual(((await b.next()) as unknown[]).slice(0, 3), [
          "error",
          "signal",
          "unknown-peer",
        ]);
        // --max-room-peers 3 counts the whole cluster.
        const c = await connect(s1);
        await joinAs(c, "carol", "r");
        await take(c, 2);
        await take(a, 1);
        await take(b, 1);
        const d = await connect(s2);
        d.send(["join", "dave", "r"]);
        assert.deepEqual(((await d.next()) as unknown[]).slice(0, 3), ["error", "join", "limit"]);
        // Leave on one instance: bye on the other; the ident is free again.
        a.send(["leave", "r:alice"]);
        assert.deepEqual(await a.next(), ["leave", "r:alice"]);
        assert.deepEqual(await b.next(), ["bye", "r:bob", "r:alice"]);
        assert.deepEqual(await c.next(), ["bye", "r:carol", "r:alice"]);
        await joinAs(d, "alice", "r");
      } finally {
        await closeAll();
      }
    }, ["--max-room-peers", "3"]);
  },
);

Deno.test(
  "cluster: concurrent joins from three instances pair everyone exactly once",
  opts,
  async () => {
    await withCluster(3, async (servers) => {
      try {
        const n = 15;
        const clients = await Promise.all(
          [...Array(n).keys()].map((i) => connect(servers[i % 3])),
        );
        clients.forEach((c, i) => c.send(["join", `c${i}`, "rush"]));
        // Each client: its join reply, then n-1 stuns in all.
        const got = await Promise.all(clients.map((c) => take(c, n, 10_000)));
        const seen = new Map<string, boolean[]>();
        got.forEach((msgs, i) => {
          assert.deepEqual(msgs[0], ["join", `rush:c${i}`]);
          for (const m of msgs.slice(1)) {
            const [kind, own, peer, initiator] = m as [string, string, string, boolean];
            assert.equal(kind, "stun");
            assert.equal(own, `rush:c${i}`);
            const key = [own, peer].sort().join(" ");
            const flags = seen.get(key) ?? [];
            flags.push(initiator);
            seen.set(key, flags);
          }
        });
        assert.equal(seen.size, (n * (n - 1)) / 2, "every pair announced");
        for (const [pair, flags] of seen) {
          assert.equal(flags.length, 2, `${pair} announced to both sides once`);
          assert.equal(flags.filter((f) => f).length, 1, `${pair} has exactly one initiator`);
        }
        for (const c of clients) assert.ok(await quiet(c, 200));
      } finally {
        await closeAll();
      }
    });
  },
);

Deno.test("cluster: kill -9 of an instance — survivors say bye within 10 s", opts, async () => {
  await withCluster(3, async ([s1, s2, s3]) => {
    try {
      const [a, b] = await room("k", [[s1, "a"], [s2, "b"], [s3, "c"]]);
      const killed = Date.now();
      await s3.stop("SIGKILL");
      assert.deepEqual(await a.next(10_000), ["bye", "k:a", "k:c"]);
      assert.deepEqual(await b.next(10_000), ["bye", "k:b", "k:c"]);
      assert.ok(Date.now() - killed < 10_000);
      // The dead instance's idents are free again.
      const d = await connect(s1);
      await joinAs(d, "c", "k");
    } finally {
      await closeAll();
    }
  });
});

Deno.test("cluster: graceful shutdown of an instance says bye for its members", opts, async () => {
  await withCluster(2, async ([s1, s2]) => {
    try {
      const [a, b] = await room("g", [[s1, "a"], [s2, "b"]]);
      assert.equal(await s2.stop("SIGTERM"), 0);
      assert.deepEqual(await a.next(3000), ["bye", "g:a", "g:b"]);
      assert.equal((await b.closed()).code, 1001);
    } finally {
      await closeAll();
    }
  });
});

Deno.test(
  "cluster: Redis restarts empty — readyz 503 then 200, membership restored",
  opts,
  async () => {
    await withCluster(2, async ([s1, s2], redis) => {
      try {
        const [a, b] = await room("x", [[s1, "a"], [s2, "b"]]);
        await redis.down();
        await waitForStatus(s1.port, "/readyz", 503);
        await waitForStatus(s2.port, "/readyz", 503);
        // Same-instance work goes on; what needs the cluster says so.
        a.send(["ping"]);
        assert.deepEqual(await a.next(), ["pong"]);
        a.send(["signal", "x:a", "x:b", 1]);
        assert.deepEqual(((await a.next()) as unknown[]).slice(0, 3), [
          "error",
          "signal",
          "unavailable",
        ]);
        const late = await connect(s1);
        late.send(["join", "late", "x"]);
        assert.deepEqual(((await late.next()) as unknown[]).slice(0, 3), [
          "error",
          "join",
          "unavailable",
        ]);
        await redis.up();
        await waitForStatus(s1.port, "/readyz", 200);
        await waitForStatus(s2.port, "/readyz", 200);
        // Membership is back: ownership holds, relays cross instances, no stun repeated.
        assert.ok(await quiet(a, 300));
        assert.ok(await quiet(b, 300));
        const thief = await connect(s1);
        thief.send(["join", "b", "x"]);
        assert.deepEqual(await thief.next(), ["error", "join", "ident-taken", "x:b"]);
        a.send(["signal", "x:a", "x:b", "again"]);
        assert.deepEqual(await b.next(), ["signal", "x:b", "x:a", "again"]);
        // A new joiner is paired with everyone, once.
        await joinAs(late, "late", "x");
        const stuns = await take(late, 2);
        assert.deepEqual(
          stuns.map((m) => (m as unknown[])[2]).sort(),
          ["x:a", "x:b"],
        );
        assert.deepEqual(await a.next(), ["stun", "x:a", "x:late", false]);
        assert.deepEqual(await b.next(), ["stun", "x:b", "x:late", false]);
        for (const c of [a, b, late]) assert.ok(await quiet(c, 300));
      } finally {
        await closeAll();
      }
    });
  },
);

Deno.test(
  "cluster: a leave made while Redis was away reaches the other instances",
  opts,
  async () => {
    await withCluster(2, async ([s1, s2], redis) => {
      try {
        const [a, b, c] = await room("y", [[s1, "a"], [s2, "b"], [s2, "c"]]);
        await redis.down();
        await waitForStatus(s2.port, "/readyz", 503);
        // Relays within one instance go on without Redis.
        b.send(["signal", "y:b", "y:c", { during: "outage" }]);
        assert.deepEqual(await c.next(), ["signal", "y:c", "y:b", { during: "outage" }]);
        await c.close();
        // Same instance: told at once.
        assert.deepEqual(await b.next(), ["bye", "y:b", "y:c"]);
        await redis.up();
        // Other instance: told once Redis is back.
        assert.deepEqual(await a.next(8000), ["bye", "y:a", "y:c"]);
        const d = await connect(s1);
        await joinAs(d, "c", "y");
        assert.equal((await take(d, 2)).length, 2);
      } finally {
        await closeAll();
      }
    });
  },
);

Deno.test(
  "cluster: a Redis that stops answering — calls fail fast, readyz 503, then recovery",
  opts,
  async () => {
    await withCluster(2, async ([s1, s2], redis) => {
      try {
        const [a, b] = await room("z", [[s1, "a"], [s2, "b"]]);
        redis.freeze();
        // A join needs Redis: it is answered (unavailable), it does not hang.
        const c = await connect(s1);
        const asked = Date.now();
        c.send(["join", "c", "z"]);
        assert.deepEqual(((await c.next(8000)) as unknown[]).slice(0, 3), [
          "error",
          "join",
          "unavailable",
        ]);
        assert.ok(Date.now() - asked < 8000);
        await waitForStatus(s1.port, "/readyz", 503, 15_000);
        redis.thaw();
        await waitForStatus(s1.port, "/readyz", 200, 15_000);
        await waitForStatus(s2.port, "/readyz", 200, 15_000);
        // Back in service: the room is intact and a new joiner meets both.
        await joinAs(c, "c", "z");
        const stuns = await take(c, 2);
        assert.deepEqual(stuns.map((m) => (m as unknown[])[2]).sort(), ["z:a", "z:b"]);
        assert.deepEqual(await a.next(), ["stun", "z:a", "z:c", false]);
        assert.deepEqual(await b.next(), ["stun", "z:b", "z:c", false]);
      } finally {
        redis.thaw();
        await closeAll();
      }
    });
  },
);
