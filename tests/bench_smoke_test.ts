/**
 * Keeps the load benchmark from rotting: runs every workload with tiny sizes
 * against the real server and the bare relay (for the y-webrtc relay, y-webrtc's
 * own server under Node; for the PeerJS relay, `peer` 1.0.2 under Node; for the
 * cluster workload, a real redis-server with two server instances), and checks
 * that each JSON line has its fields with sane values. No timing assertions:
 * the numbers depend on the machine.
 */

import assert from "node:assert/strict";
import { Directory } from "../bench/bare_relay_workers.ts";
import { probe } from "../bench/probe_controls.ts";
import { Histogram, jain, pairedRatio } from "../bench/stats.ts";
import { freePort } from "./helpers/redis.ts";

const MAIN = new URL("../bench/main.ts", import.meta.url).pathname;

const REDIS_MISSING = (() => {
  try {
    new Deno.Command("redis-server", { args: ["--version"], stdout: "null" }).outputSync();
    return false;
  } catch {
    return true;
  }
})();
const NODE_MISSING = (() => {
  try {
    // Deno answers for a `node` that is not installed: only a real Node says `v<major>.`.
    const out = new Deno.Command("node", { args: ["--version"], stdout: "piped" }).outputSync();
    return !out.success || !/^v\d+\./.test(new TextDecoder().decode(out.stdout));
  } catch {
    return true;
  }
})();
const CI = Deno.env.get("CI") !== undefined && Deno.env.get("CI") !== "";

type Line = Record<string, unknown>;

function num(line: Line, key: string): number {
  const v = line[key];
  assert.equal(typeof v, "number", `${line.bench}/${line.target}: ${key} is ${JSON.stringify(v)}`);
  assert.ok(Number.isFinite(v), `${key} is finite`);
  return v as number;
}

function obj(line: Line, key: string): Line {
  const v = line[key];
  assert.ok(
    v !== null && typeof v === "object",
    `${line.bench}/${line.target}: ${key} is an object`,
  );
  return v as Line;
}

/**
 * The figures every relay line carries (DIVA, y-webrtc, PeerJS, cluster):
 * `what` was delivered, latency quantiles in order, the longest wait at
 * least the slowest delivery, fairness in (0, 1], each pair's `what` in order.
 */
function assertRelayFigures(l: Line, who: string, what: string): void {
  assert.ok(num(l, "delivered") > 0, `${who}: ${what} were delivered`);
  assert.ok(num(l, "msgs_per_s") > 0);
  const lat = obj(l, "latency_ms");
  assert.ok(num(lat, "p50") > 0 && num(lat, "p50") <= num(lat, "p99"));
  assert.ok(num(lat, "p99") <= num(lat, "max"));
  assert.ok(num(l, "longest_wait_ms") >= num(lat, "max"));
  const f = num(l, "fairness");
  assert.ok(f > 0 && f <= 1, `fairness ${f} in (0, 1]`);
  assert.equal(l.out_of_order, 0, `${who}: each pair's ${what} arrive in order`);
}

/** Runs `bench/main.ts` with `args` and returns its JSON lines (and stderr for messages). */
async function runBench(args: string[]): Promise<{ lines: Line[]; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(180_000),
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, `bench failed:\n${stderr}`);
  const lines: Line[] = new TextDecoder().decode(out.stdout).split("\n")
    .filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
  return { lines, stderr };
}

Deno.test("bench --quick: every workload prints sane JSON lines for every target", async () => {
  assert.ok(
    !(REDIS_MISSING && CI),
    "redis-server is not installed, and CI must run the cluster bench",
  );
  assert.ok(!(NODE_MISSING && CI), "node is not installed, and CI must run the y-webrtc reference");
  const { lines, stderr } = await runBench(["--quick"]);
  const pick = (bench: string, target?: string) =>
    lines.filter((l) => l.bench === bench && (target === undefined || l.target === target));

  const [meta] = pick("meta");
  assert.ok(meta !== undefined, "a meta line comes first");
  assert.ok(num(meta, "cpus") >= 1);
  assert.equal(meta.quick, true);

  // Relay: two pair counts (2 and 4) against each target, the server also at its defaults.
  const relays = pick("relay");
  assert.equal(relays.length, 6, stderr);
  assert.deepEqual(relays.map((l) => `${l.target}:${l.pairs}`), [
    "bound:2",
    "server:2",
    "defaults:2",
    "bound:4",
    "server:4",
    "defaults:4",
  ]);
  for (const l of relays) {
    assert.equal(l.window, 2);
    assertRelayFigures(l, `${l.target} P=${l.pairs}`, "signals");
    assert.ok(num(l, "duration_s") > 0.5);
    const spread = obj(l, "per_peer");
    assert.ok(num(spread, "min") <= num(spread, "p50") && num(spread, "p50") <= num(spread, "max"));
    assert.equal(l.errors, 0);
    assert.ok(num(l, "server_cpu") >= 0);
    assert.ok(num(l, "server_cpu_us_per_msg") >= 0);
    assert.ok(num(l, "server_rss_bytes") > 0);
  }
  for (const l of [...pick("relay", "server"), ...pick("relay", "defaults")]) {
    const v = obj(l, "vs_bound");
    assert.ok(num(v, "msgs_per_s") > 0, "the server's throughput is given as a ratio of the bound");
    assert.ok(num(v, "latency_p50") > 0);
  }

  // Join storm: the server and the bound both announce every pair of each room to both sides.
  const [storm] = pick("join", "server");
  assert.deepEqual(pick("join").map((l) => l.target), ["bound", "server"]);
  for (const l of pick("join")) {
    assert.equal(l.clients, 20);
    assert.equal(l.room_size, 5);
    assert.equal(num(l, "stuns"), 4 * 5 * 4, `${l.target}: every expected stun arrived`);
    assert.equal(l.stuns_expected, 80);
    assert.equal(l.errors, 0);
    assert.ok(num(l, "connections_per_s") > 0);
    assert.ok(num(l, "total_s") >= num(l, "connect_s"));
    assert.equal(l.runs, 1, "--quick: one storm");
    assert.deepEqual(l.runs_total_s, [l.total_s]);
    assert.equal(l.interleaved, true, "bound and server storms take turns, both running");
  }
  assert.ok(num(obj(storm, "vs_bound"), "connections_per_s") > 0);
  // Storm by storm: with one storm each, the one pair's ratio is the ratio of the two.
  assert.equal(obj(storm, "vs_bound").total_s_paired, obj(storm, "vs_bound").total_s);

  // Idle footprint: memory read from /proc before and after.
  const idles = pick("idle");
  assert.deepEqual(idles.map((l) => l.target), ["bound", "server"]);
  for (const l of idles) {
    assert.equal(l.clients, 20);
    assert.ok(num(l, "server_rss_before_bytes") > 1024 * 1024);
    assert.ok(num(l, "server_rss_after_bytes") > 1024 * 1024);
    num(l, "bytes_per_conn"); // may be negative with 20 clients: only its presence is checked
    assert.ok(num(l, "gen_rss_bytes") > 0);
    assert.equal(l.errors, 0);
  }

  // y-webrtc relay: the reference server first, then the project (shaping off, then defaults).
  const ys = pick("ywebrtc");
  const skipped = ys.find((l) => l.skipped !== undefined);
  if (skipped !== undefined) {
    // Only where Node (or the package) cannot run, and never in CI: the reason is reported.
    assert.ok(!CI, `CI must run the y-webrtc reference server: ${skipped.skipped}`);
    assert.equal(skipped.target, "reference");
    assert.match(String(skipped.skipped), /node|y-webrtc/);
    console.warn(`y-webrtc reference skipped here: ${skipped.skipped}`);
  }
  const yruns = ys.filter((l) => l.skipped === undefined);
  assert.deepEqual(
    yruns.map((l) => l.target),
    skipped === undefined ? ["reference", "server", "defaults"] : ["server", "defaults"],
    stderr,
  );
  for (const l of yruns) {
    assert.equal(l.pairs, 2, "--quick: 2 y-webrtc pairs");
    assert.equal(l.window, 2);
    assertRelayFigures(l, String(l.target), "publishes");
    assert.equal(l.errors, 0, `${l.target}: no error frames`);
    assert.equal(l.lost, 0, `${l.target}: every publish reached the partner`);
    assert.equal(l.lost_echoes, 0, `${l.target}: every publish was echoed to its sender`);
    assert.ok(num(l, "drain_ms") >= 0);
    assert.ok(num(l, "server_cpu") >= 0);
    assert.ok(num(l, "server_cpu_us_per_msg") >= 0);
    assert.ok(num(l, "server_rss_bytes") > 0);
  }
  if (skipped === undefined) {
    const [ref] = pick("ywebrtc", "reference");
    const info = obj(ref, "reference");
    assert.match(String(info.server), /^y-webrtc@10\.3\.0 bin\/server\.js$/);
    assert.match(String(info.node), /^v\d+\./);
    assert.ok(["deno-cache", "npm-install"].includes(String(info.layout)));
    for (const l of [...pick("ywebrtc", "server"), ...pick("ywebrtc", "defaults")]) {
      const v = obj(l, "vs_reference");
      assert.ok(num(v, "msgs_per_s") > 0, "the project's throughput as a ratio of the reference");
      assert.ok(num(v, "server_cpu_us_per_msg") > 0);
      assert.ok(num(v, "latency_p50") > 0);
    }
  }

  // PeerJS relay: peer 1.0.2 first, then the project (shaping off, then defaults).
  const pjs = pick("peerjs");
  const pjSkipped = pjs.find((l) => l.skipped !== undefined);
  if (pjSkipped !== undefined) {
    assert.ok(!CI, `CI must run the PeerJS reference server: ${pjSkipped.skipped}`);
    assert.equal(pjSkipped.target, "peerjs-reference");
    assert.match(String(pjSkipped.skipped), /node|peer/);
    console.warn(`PeerJS reference skipped here: ${pjSkipped.skipped}`);
  }
  const pjRuns = pjs.filter((l) => l.skipped === undefined);
  assert.deepEqual(
    pjRuns.map((l) => l.target),
    pjSkipped === undefined ? ["peerjs-reference", "server", "defaults"] : ["server", "defaults"],
    stderr,
  );
  for (const l of pjRuns) {
    assert.equal(l.pairs, 2, "--quick: 2 PeerJS pairs");
    assert.equal(l.window, 2);
    assertRelayFigures(l, String(l.target), "CANDIDATEs");
    assert.ok(num(obj(l, "per_peer"), "min") > 0, `${l.target}: every client got messages`);
    assert.equal(l.errors, 0, `${l.target}: no ERROR, ID-TAKEN or EXPIRE`);
    assert.equal(l.lost, 0, `${l.target}: every CANDIDATE reached the partner`);
    assert.ok(num(l, "drain_ms") >= 0);
    assert.ok(num(l, "server_cpu") >= 0);
    assert.ok(num(l, "server_cpu_us_per_msg") >= 0);
    assert.ok(num(l, "server_rss_bytes") > 0);
  }
  if (pjSkipped === undefined) {
    const [ref] = pick("peerjs", "peerjs-reference");
    const info = obj(ref, "reference");
    assert.match(String(info.server), /^peer@1\.0\.2 dist\/bin\/peerjs\.js$/);
    assert.match(String(info.node), /^v\d+\./);
    assert.ok(["deno-cache", "npm-install"].includes(String(info.layout)));
    assert.equal(ref.vs_reference, undefined);
    for (const l of [...pick("peerjs", "server"), ...pick("peerjs", "defaults")]) {
      const v = obj(l, "vs_reference");
      assert.ok(num(v, "msgs_per_s") > 0, "the project's throughput as a ratio of peer's");
      assert.ok(num(v, "server_cpu_us_per_msg") > 0);
      assert.ok(num(v, "latency_p50") > 0);
    }
  }
  // No other workload ran against peer, and PeerJS ran against no bare relay.
  assert.ok(!lines.some((l) => l.bench !== "peerjs" && l.target === "peerjs-reference"));
  assert.ok(!pjs.some((l) => String(l.target).startsWith("bound")));

  // Cluster: two instances on one real Redis; the relay across them, then within one.
  const clusters = pick("cluster");
  if (REDIS_MISSING) {
    assert.equal(clusters.length, 1, stderr);
    assert.match(String(clusters[0].skipped), /redis-server/, "the skip is reported");
    return;
  }
  assert.deepEqual(clusters.map((l) => l.placement), ["cross", "same"], stderr);
  for (const l of clusters) {
    assert.equal(l.instances, 2);
    assert.equal(l.pairs, 2, "--quick: 2 cluster pairs");
    assertRelayFigures(l, String(l.placement), "signals");
    assert.equal(l.errors, 0, `${l.placement}: no error frames (e.g. unavailable)`);
    const cpu = obj(l, "cpu");
    for (const k of ["instance1", "instance2", "redis", "generator"]) {
      assert.ok(num(cpu, k) >= 0, `${l.placement}: cpu.${k}`);
    }
    const pin = obj(l, "pinning");
    assert.deepEqual(Object.keys(pin).sort(), ["generator", "instances", "redis"]);
    assert.match(String(l.redis_version), /Redis server v=/);
    const rss = l.instance_rss_bytes as number[];
    assert.equal(rss.length, 2);
    for (const b of rss) assert.ok(b > 1024 * 1024, "both instances' memory is read from /proc");
    assert.ok(num(l, "redis_rss_bytes") > 0);
    const v = obj(l, "vs_single");
    assert.ok(num(v, "msgs_per_s") > 0, "compared with the single-instance relay at P=2");
    assert.equal(
      v.single_msgs_per_s,
      pick("relay", "server").find((r) => r.pairs === 2)?.msgs_per_s,
    );
  }
  // Not a timing check: every cross signal goes through Redis and instance 2, so both burn CPU.
  const [cross] = clusters;
  assert.ok(num(obj(cross, "cpu"), "redis") > 0, "cross-instance signals pass through Redis");
  assert.ok(num(obj(cross, "cpu"), "instance2") > 0, "the partners sit on instance 2");
});

const CANDIDATES = ["bound", "bound-own", "bound-node", "bound-workers"];

Deno.test("bench --quick: every transport candidate runs the bare relay, with ratios of bound", async () => {
  const { lines, stderr } = await runBench([
    "--quick",
    "--only",
    "relay,join,idle",
    "--targets",
    CANDIDATES.join(","),
  ]);
  const pick = (bench: string) => lines.filter((l) => l.bench === bench);
  const [meta] = pick("meta");
  assert.equal(meta.bound_workers, 2, "--quick runs bound-workers on 2 workers, crossing the seam");

  const relays = pick("relay");
  assert.deepEqual(
    relays.map((l) => `${l.target}:${l.pairs}`),
    [2, 4].flatMap((p) => CANDIDATES.map((t) => `${t}:${p}`)),
    stderr,
  );
  for (const l of relays) {
    assert.ok(num(l, "delivered") > 0, `${l.target}: signals were delivered`);
    // Every peer got signals: with two workers some pairs straddle them.
    assert.ok(num(obj(l, "per_peer"), "min") > 0, `${l.target} P=${l.pairs}: no peer starved`);
    const f = num(l, "fairness");
    assert.ok(f > 0 && f <= 1);
    assert.ok(num(l, "longest_wait_ms") >= num(obj(l, "latency_ms"), "max"));
    assert.equal(l.out_of_order, 0, `${l.target}: each pair's signals arrive in order`);
    assert.equal(l.errors, 0);
    assert.ok(num(l, "server_cpu_us_per_msg") > 0, `${l.target}: the target's CPU is read`);
    if (l.target === "bound") assert.equal(l.vs_bound, undefined);
    else assert.ok(num(obj(l, "vs_bound"), "msgs_per_s") > 0, `${l.target}: ratio of bound`);
    if (l.target === "bound-workers") assert.equal(l.workers, 2);
  }

  const joins = pick("join");
  assert.deepEqual(joins.map((l) => l.target), CANDIDATES);
  for (const l of joins) {
    assert.equal(num(l, "stuns"), 80, `${l.target}: every expected stun arrived`);
    assert.equal(l.errors, 0);
    if (l.target !== "bound") assert.ok(num(obj(l, "vs_bound"), "total_s") > 0);
  }
  assert.deepEqual(pick("idle").map((l) => l.target), CANDIDATES);

  const [table] = pick("transports");
  assert.ok(table !== undefined, "the candidates' table is printed");
  const rows = table.rows as Line[];
  assert.deepEqual(rows.map((r) => r.target), CANDIDATES);
  for (const r of rows) {
    const rs = r.relays as Line[];
    assert.deepEqual(rs.map((x) => x.pairs), [2, 4]);
    // Quick sizes are not the sizes: figures, no verdict.
    for (const x of rs) {
      assert.ok(num(x, "vs_bound") > 0);
      assert.equal(x.meets, null);
    }
    assert.ok(num(obj(r, "join"), "vs_bound") > 0);
  }
  assert.match(stderr, /bound-workers \(2 workers\)/);
});

Deno.test("bare relay on two workers: stuns through the directory, signals across workers", async () => {
  const port = freePort();
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net",
      "--allow-read",
      "--allow-env",
      "--unstable-net",
      new URL("../bench/bare_relay.ts", import.meta.url).pathname,
      "--port",
      String(port),
      "--transport",
      "workers",
      "--workers",
      "2",
      "--read-stats",
    ],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let stats = "";
  const reading = child.stderr.pipeThrough(new TextDecoderStream()).pipeTo(
    new WritableStream({ write: (t) => void (stats += t) }),
  );
  const sockets: WebSocket[] = [];
  try {
    const until = Date.now() + 20_000;
    while (true) {
      try {
        const res = await fetch(`http://127.0.0.1:${port}/`);
        await res.body?.cancel();
        if (res.ok) break;
      } catch {
        // not listening yet
      }
      assert.ok(Date.now() < until, `the relay did not start: ${stats}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const PAIRS = 8, SIGNALS = 20;
    const got: number[][] = [];
    const ready: Promise<void>[] = [];
    for (let i = 0; i < 2 * PAIRS; i++) {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/`);
      sockets.push(ws);
      got.push([]);
      const stun = Promise.withResolvers<void>();
      ready.push(stun.promise);
      ws.onopen = () => ws.send(JSON.stringify(["join", `p${i % 2}`, `r${i >> 1}`]));
      ws.onmessage = (e) => {
        const d = String(e.data);
        if (d.startsWith('["stun"')) stun.resolve();
        else if (d.startsWith('["signal"')) got[i].push(JSON.parse(d)[3].k);
      };
    }
    await Promise.all(ready);
    for (let k = 0; k < SIGNALS; k++) {
      for (let i = 0; i < 2 * PAIRS; i++) {
        const room = `r${i >> 1}`;
        sockets[i].send(JSON.stringify(["signal", `${room}:p${i % 2}`, `${room}:p${1 - i % 2}`, {
          k,
        }]));
      }
    }
    const want = Array.from({ length: SIGNALS }, (_, k) => k);
    const deadline = Date.now() + 10_000;
    while (got.some((g) => g.length < SIGNALS) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    for (const g of got) assert.deepEqual(g, want, "every signal, in order");
    // The read stats name what crossed: both workers served sockets, and signals crossed.
    await new Promise((r) => setTimeout(r, 1200));
    const crossed = [...stats.matchAll(/(\d+) signals sent to other workers/g)]
      .reduce((a, m) => a + Number(m[1]), 0);
    assert.match(stats, /worker 0\)/);
    assert.match(stats, /worker 1\)/);
    assert.ok(crossed > 0, `some pairs straddle the two workers:\n${stats}`);
  } finally {
    for (const ws of sockets) ws.close();
    child.kill("SIGTERM");
    await child.status;
    await reading.catch(() => {});
  }
});

Deno.test("workers' directory: owners before stuns, each worker told only what it needs", () => {
  const posts: [number, unknown][] = [];
  const d = new Directory((w, news) => posts.push([w, structuredClone(news)]));
  d.join(0, "r:a", '"r:a"', "r");
  // Compared as copies: deepEqual would narrow `posts` itself to the literal's type.
  assert.deepEqual(posts.slice(), [], "alone in its room: nothing to tell");
  d.join(1, "r:b", '"r:b"', "r");
  assert.deepEqual(posts.slice(), [
    [1, {
      owners: [["r:a", 0]],
      forget: [],
      deliver: [["r:b", '["stun","r:b","r:a",true]']],
    }],
    [0, {
      owners: [["r:b", 1]],
      forget: [],
      deliver: [["r:a", '["stun","r:a","r:b",false]']],
    }],
  ]);
  posts.length = 0;
  d.join(1, "r:c", '"r:c"', "r");
  assert.deepEqual(posts.map(([w]) => w).sort(), [0, 1], "one message per worker");
  const mine = posts.find(([w]) => w === 1)![1] as { owners: unknown[]; deliver: unknown[] };
  assert.deepEqual(mine.owners, [["r:a", 0]], "a member on the same worker needs no owner");
  assert.equal(mine.deliver.length, 3, "c's two stuns and b's one");
  posts.length = 0;
  d.leave("r:b", "r");
  assert.deepEqual(posts.slice(), [[0, { owners: [], forget: ["r:b"], deliver: [] }]]);
  assert.equal(d.size, 2);
});

Deno.test("controls: the own transport and node:http + ws cut slow heads and refuse big messages", async () => {
  const [own, node] = await Promise.all([probe("bound-own", 8000), probe("bound-node", 8000)]);
  for (const c of [own, node]) {
    for (const p of [c.silent, c.slow_head]) {
      assert.match(p.outcome, /^answered HTTP\/1\.1 408/, `${c.target}: ${JSON.stringify(p)}`);
      assert.ok(p.after_s >= 4.5 && p.after_s < 7.5, `${c.target}: cut after ~5 s (${p.after_s})`);
    }
    assert.match(c.big_head.outcome, /^answered HTTP\/1\.1 431/);
    assert.equal(c.big.outcome, "closed 1009", `${c.target}: the 2 MiB message is refused`);
  }
});

Deno.test("bench histogram: quantiles within 2% of the exact ones, max exact, merge adds", () => {
  const xs: number[] = [];
  let seed = 42;
  for (let i = 0; i < 20_000; i++) {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    xs.push(1 + Math.floor(Math.exp((seed / 2 ** 31) * 14))); // 1 µs .. ~1.2 s, log-spread
  }
  const a = new Histogram();
  const b = new Histogram();
  xs.forEach((x, i) => (i % 2 === 0 ? a : b).record(x));
  a.merge(b);
  assert.equal(a.total, xs.length);
  const sorted = [...xs].sort((p, q) => p - q);
  assert.equal(a.max, sorted[sorted.length - 1]);
  for (const q of [0.1, 0.5, 0.9, 0.99, 0.999]) {
    const exact = sorted[Math.ceil(q * sorted.length) - 1];
    const got = a.quantile(q);
    assert.ok(Math.abs(got - exact) <= Math.max(1, exact * 0.02), `q${q}: ${got} vs ${exact}`);
  }
  const restored = new Histogram(a.toJSON());
  assert.equal(restored.quantile(0.5), a.quantile(0.5));
  a.reset();
  assert.equal(a.quantile(0.5), 0);
});

Deno.test("bench fairness: Jain's index is 1 for equal shares and 1/n for one taker", () => {
  assert.equal(jain([5, 5, 5, 5]), 1);
  assert.equal(jain([8, 0, 0, 0]), 0.25);
  assert.equal(jain([]), 1);
  assert.ok(Math.abs(jain([1, 2, 3]) - 36 / 42) < 1e-12);
});

Deno.test("bench join storm: storm by storm, the ratio is the median of each round's ratio", () => {
  const bound = { interleaved: true, runs_total_s: [0.4, 0.8, 0.5] };
  const server = { interleaved: true, runs_total_s: [0.44, 0.84, 0.9] };
  // Rounds: 1.1, 1.05, 1.8 -> 1.1; the medians alone (0.84 / 0.5) would say 1.68.
  assert.ok(Math.abs(pairedRatio(server, bound)! - 1.1) < 1e-9);
  assert.equal(pairedRatio({ ...server, interleaved: undefined }, bound), undefined);
  assert.equal(pairedRatio({ ...server, runs_total_s: [0.44] }, bound), undefined);
});

Deno.test("bench join storm: --join-runs 3 reports the median storm and every run's time", async () => {
  const { lines } = await runBench([
    "--quick",
    "--only",
    "join",
    "--targets",
    "server",
    "--join-runs",
    "3",
  ]);
  const [storm] = lines.filter((l) => l.bench === "join");
  assert.equal(storm.interleaved, undefined, "one target: nothing to interleave");
  assert.equal(storm.runs, 3);
  const times = storm.runs_total_s as number[];
  assert.equal(times.length, 3);
  assert.equal(storm.total_s, [...times].sort((a, b) => a - b)[1], "the median run");
  assert.equal(num(storm, "stuns"), 80, "the median run's clients all got their stuns");
  const [meta] = lines.filter((l) => l.bench === "meta");
  assert.equal(meta.join_runs, 3);
});

Deno.test("bench relay: one generator thread per 256 sockets unless --gen-workers says otherwise", async () => {
  const args = ["--quick", "--only", "relay", "--targets", "bound", "--pairs", "2,200"];
  const auto = (await runBench(args)).lines.filter((l) => l.bench === "relay");
  // 2 pairs are 4 sockets: one thread; 200 pairs are 400 sockets: two.
  assert.deepEqual(auto.map((l) => [l.pairs, l.gen_workers]), [[2, 1], [200, 2]]);
  for (const l of auto) assert.equal(l.errors, 0);
  const meta = (await runBench([...args, "--gen-workers", "1"])).lines;
  assert.deepEqual(
    meta.filter((l) => l.bench === "relay").map((l) => l.gen_workers),
    [1, 1],
    "--gen-workers 1 holds for every size",
  );
});
