/**
 * The load benchmark: drives the signal server (and, as the bound, a bare
 * WebSocket relay) over real loopback WebSockets and prints one JSON line per
 * workload and target on stdout, with a human summary on stderr.
 *
 * ```sh
 * deno task bench                 # every workload, default sizes (a few minutes)
 * deno task bench --quick         # tiny sizes, seconds
 * deno task bench --only relay --pairs 50 --duration 20
 * deno task bench --only cluster,relay --pairs 50   # two instances on one Redis
 * deno task bench --only ywebrtc --pairs 50         # y-webrtc, against its own server
 * deno task bench --only peerjs --pairs 50          # PeerJS, against peer 1.0.2
 * deno task bench --url ws://127.0.0.1:3903/ --server-pid 1234 --targets server
 * deno task bench --targets bound,bound-own,bound-node,bound-workers --only relay,join
 * ```
 *
 * @module
 */

import { resolve } from "node:path";
import { parseArgs } from "node:util";
import {
  clock,
  dispatch,
  type JoinParams,
  type JoinResult,
  makeShard,
  nonce,
  type PeerjsRelayParams,
  type RelayParams,
  type RelayWindow,
  type Shard,
  type ShardCalls,
  type ShardSpec,
  type YRelayParams,
} from "./load.ts";
import { type PeerReference, preparePeerReference } from "./peer_reference.ts";
import { prepareReference, type Reference } from "./reference.ts";
import { grouped, Histogram, jain, pairedRatio, sig } from "./stats.ts";
import {
  boundWorkers,
  cpuSeconds,
  externalTarget,
  hasTaskset,
  isBound,
  killAll,
  onlineCpus,
  openFileLimit,
  redisVersion,
  rssBytes,
  SERVER_FLAGS,
  startRedis,
  startReference,
  startTarget,
  type Target,
  TARGET_NAMES,
  type TargetName,
  wrapped,
} from "./target.ts";
import type { WorkerReply, WorkerRequest } from "./worker.ts";

const USAGE = `deno task bench [flags]

Workloads (--only, comma-separated; default all):
  relay   pairs of peers in rooms of two, each keeping --window signals in flight
  join    join storm: --clients clients take an ident and join rooms of --room-size
  idle    --idle-clients clients joined in rooms of --idle-room-size, then idle: memory
  ywebrtc the relay on the y-webrtc wire: --ywebrtc-pairs pairs, each alone in a topic,
          each peer keeping --window publishes in flight to its partner (the server
          echoes each to its sender too); lost messages counted after a drain. Compared
          with y-webrtc's own bin/server.js under Node ("reference"), measured in the
          same run; when Node or the package cannot run, the reference is reported
          skipped.
  peerjs  the relay on the PeerJS wire: --peerjs-pairs pairs of clients (WebSockets on
          /peerjs?key=peerjs&id=…&token=…, each waiting for OPEN), each keeping --window
          CANDIDATE messages in flight to its partner; lost messages counted after a
          drain. Compared with peer 1.0.2's CLI under Node ("peerjs-reference"), measured
          in the same run; when Node or the package cannot run, it is reported skipped.
  cluster a redis-server and two server instances on it (started here, whatever --url
          says); the relay with --cluster-pairs pairs whose ends sit on different
          instances ("cross"), then on one instance ("same"); compared with the
          single-instance relay at the same P when that ran too. In the default set
          only when redis-server is installed.

Targets (--targets, default bound,server,defaults,reference,peerjs-reference): "server" is
the project with shaping off (started here, or --url), "defaults" the project with every
setting as shipped (relay, ywebrtc and peerjs only: what the defaults cost), "bound" the bare
relay in bench/bare_relay.ts on Deno.serve (DIVA workloads), "reference" y-webrtc's own
server (ywebrtc only), "peerjs-reference" peer 1.0.2 (peerjs only); the project's figures
are also given as ratios of the bound (or the reference) measured in the same run. The same
bare relay on the other transport candidates
(DIVA workloads; ratios of "bound"; a table against the transport issue's targets at the end):
  bound-own      lib/transport/own serve + upgradeWebSocket (Deno.listen, our framing)
  bound-node     node:http + npm:ws@8 under Deno (maxPayload, headersTimeout)
  bound-workers  --workers Deno workers, each Deno.serve({ reusePort: true }) on the port,
                 rooms shared by an in-process directory

  --pairs LIST          relay pair counts, one run each (default 50,500)
  --cluster-pairs N     cluster relay pairs (default 50)
  --ywebrtc-pairs LIST  y-webrtc relay pair counts (default: --pairs)
  --peerjs-pairs LIST   PeerJS relay pair counts (default: --pairs)
  --window N            signals each peer keeps in flight (default 16)
  --bytes N             approximate JSON size of each signal's data (default 300)
  --warmup S            relay warm-up seconds (default 2)
  --duration S          relay measuring seconds (default 10)
  --clients N           join storm clients (default 2000)
  --room-size K         join storm room size (default 10)
  --join-runs N         join storms per target, on the same server, the median reported;
                        with several targets all run at once and take turns, storm by storm
                        (default 9; --quick: 1)
  --idle-clients C      idle clients (default 10000)
  --idle-room-size K    idle room size (default 10)
  --settle S            seconds idle before memory is read (default 2)
  --concurrency N       WebSocket handshakes in flight at once (default 256)
  --gen-workers N       generator Worker threads (default: relays one per 256 sockets, since
                        Deno's WebSocket client leaves sockets unread beyond ~256 backlogged
                        ones per isolate; join storm and idle 1)
  --server-cpus LIST    taskset CPUs for the target and the cluster's instances (default 0
                        on a machine with 2+ CPUs)
  --workers N           worker isolates of bound-workers (default: the CPUs in --server-cpus,
                        or all CPUs when not pinned; --quick: 2, so the seam is exercised)
  --gen-cpus LIST       taskset CPUs for the generator and redis-server (default 1, or 1-(n-1))
  --pin auto|off        pin processes to CPUs when taskset works (default auto)
  --url URL             measure a running server instead of starting one
  --server-pid PID      its process id, for memory and CPU figures
  --server-flags "…"    extra flags for the started server (e.g. "--idle-timeout 0")
  --profile DIR         run each Deno target with --cpu-prof into DIR/<target>
                        (see bench/profile_summary.ts)
  --quick               tiny sizes (pairs 2,4; cluster and y-webrtc pairs 2; window 2; 1 s;
                        20 clients)
  --help                this text`;

const OPTIONS = {
  only: { type: "string" },
  targets: { type: "string", default: "bound,server,defaults,reference,peerjs-reference" },
  pairs: { type: "string" },
  "cluster-pairs": { type: "string" },
  "ywebrtc-pairs": { type: "string" },
  "peerjs-pairs": { type: "string" },
  window: { type: "string" },
  bytes: { type: "string" },
  warmup: { type: "string" },
  duration: { type: "string" },
  clients: { type: "string" },
  "room-size": { type: "string" },
  "join-runs": { type: "string" },
  "idle-clients": { type: "string" },
  "idle-room-size": { type: "string" },
  settle: { type: "string" },
  concurrency: { type: "string" },
  "gen-workers": { type: "string" },
  "server-cpus": { type: "string" },
  workers: { type: "string" },
  "gen-cpus": { type: "string" },
  pin: { type: "string", default: "auto" },
  url: { type: "string" },
  "server-pid": { type: "string" },
  profile: { type: "string" },
  "server-flags": { type: "string", default: "" },
  quick: { type: "boolean", default: false },
  help: { type: "boolean", short: "h", default: false },
} as const;

/** Set in the re-executed (pinned) generator so it does not re-execute again. */
const PINNED_ENV = "BENCH_GENERATOR_PINNED";

/** Every workload, in the order they run (cluster last, to compare with the relay). */
const WORKLOADS = ["relay", "join", "idle", "ywebrtc", "peerjs", "cluster"];

/** The benchmark's settings after defaults. */
interface Settings {
  only: Set<string>;
  /** Why the cluster workload is left out of the default set, if it is. */
  clusterSkipped: string | undefined;
  /** `redis-server --version`, when installed. */
  redisVersion: string | undefined;
  targets: TargetName[];
  pairs: number[];
  ywebrtcPairs: number[];
  peerjsPairs: number[];
  clusterPairs: number;
  window: number;
  bytes: number;
  warmup: number;
  duration: number;
  clients: number;
  roomSize: number;
  joinRuns: number;
  idleClients: number;
  idleRoomSize: number;
  settle: number;
  concurrency: number;
  /** Generator threads; undefined: {@link relayGenWorkers} for relays, 1 otherwise. */
  genWorkers: number | undefined;
  serverCpus: string;
  genCpus: string;
  /** Worker isolates of `bound-workers` (undefined: one per CPU given to the target). */
  workers: number | undefined;
  url: string | undefined;
  serverPid: number | undefined;
  profile: string | undefined;
  serverFlags: string[];
  quick: boolean;
}

class UsageError extends Error {}

function num(text: string | undefined, fallback: number, name: string, min = 0): number {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!Number.isFinite(n) || n < min) {
    throw new UsageError(`--${name}: "${text}" is not a number ≥ ${min}`);
  }
  return n;
}

function int(text: string | undefined, fallback: number, name: string, min = 1): number {
  const n = num(text, fallback, name, min);
  if (!Number.isInteger(n)) throw new UsageError(`--${name}: "${text}" is not a whole number`);
  return n;
}

/** The items of a comma-separated list, trimmed, empty ones left out. */
function csv(text: string): string[] {
  return text.split(",").map((s) => s.trim()).filter((s) => s !== "");
}

/** The whole numbers ≥ 1 of a comma-separated `--name` list (every item must be one). */
function ints(text: string, name: string): number[] {
  return text.split(",").map((s) => int(s.trim(), 0, name));
}

async function settings(values: ReturnType<typeof parse>["values"]): Promise<Settings> {
  const q = values.quick;
  const only = new Set(csv(values.only ?? WORKLOADS.join(",")));
  for (const w of only) {
    if (!WORKLOADS.includes(w)) throw new UsageError(`--only: unknown workload "${w}"`);
  }
  const redis = only.has("cluster") ? await redisVersion() : undefined;
  let clusterSkipped: string | undefined;
  if (only.has("cluster") && redis === undefined) {
    if (values.only !== undefined) {
      throw new UsageError("--only cluster: redis-server is not installed (or does not run)");
    }
    // The default set still runs everywhere; the skip is reported, not silent.
    only.delete("cluster");
    clusterSkipped = "redis-server is not installed";
  }
  const targets = csv(values.targets);
  for (const t of targets) {
    if (!(TARGET_NAMES as readonly string[]).includes(t)) {
      throw new UsageError(`--targets: unknown target "${t}" (${TARGET_NAMES.join(", ")})`);
    }
  }
  // The baselines first, so the others' lines can carry their ratios.
  const baseline = (t: string) => t === "bound" || t === "reference" || t === "peerjs-reference";
  targets.sort((a, b) => Number(baseline(b)) - Number(baseline(a)));
  const pairs = ints(values.pairs ?? (q ? "2,4" : "50,500"), "pairs");
  // The other wires' pair counts: --pairs unless given (--quick alone: 2).
  const wirePairs = (name: "ywebrtc-pairs" | "peerjs-pairs") => {
    const text = values[name];
    return text === undefined ? (q && values.pairs === undefined ? [2] : pairs) : ints(text, name);
  };
  const ywebrtcPairs = wirePairs("ywebrtc-pairs");
  const peerjsPairs = wirePairs("peerjs-pairs");
  const cpus = onlineCpus();
  const pin = values.pin === "auto" && cpus >= 2 && await hasTaskset();
  if (values.pin !== "auto" && values.pin !== "off") throw new UsageError(`--pin: auto or off`);
  return {
    only,
    clusterSkipped,
    redisVersion: redis,
    targets: targets as TargetName[],
    pairs,
    ywebrtcPairs,
    peerjsPairs,
    clusterPairs: int(values["cluster-pairs"], q ? 2 : 50, "cluster-pairs"),
    window: int(values.window, q ? 2 : 16, "window"),
    bytes: int(values.bytes, 300, "bytes", 0),
    warmup: num(values.warmup, q ? 0.3 : 2, "warmup"),
    duration: num(values.duration, q ? 1 : 10, "duration", 0.1),
    clients: int(values.clients, q ? 20 : 2000, "clients"),
    roomSize: int(values["room-size"], q ? 5 : 10, "room-size"),
    joinRuns: int(values["join-runs"], q ? 1 : 9, "join-runs"),
    idleClients: int(values["idle-clients"], q ? 20 : 10_000, "idle-clients"),
    idleRoomSize: int(values["idle-room-size"], q ? 5 : 10, "idle-room-size"),
    settle: num(values.settle, q ? 0.3 : 2, "settle"),
    concurrency: int(values.concurrency, 256, "concurrency"),
    genWorkers: values["gen-workers"] === undefined
      ? undefined
      : int(values["gen-workers"], 1, "gen-workers"),
    serverCpus: values["server-cpus"] ?? (pin ? "0" : ""),
    workers: values.workers === undefined ? (q ? 2 : undefined) : int(values.workers, 1, "workers"),
    genCpus: values["gen-cpus"] ?? (pin ? (cpus === 2 ? "1" : `1-${cpus - 1}`) : ""),
    url: values.url,
    serverPid: values["server-pid"] === undefined
      ? undefined
      : int(values["server-pid"], 0, "server-pid"),
    // The server runs from the repository root: a relative directory means the caller's.
    profile: values.profile === undefined ? undefined : resolve(values.profile),
    serverFlags: values["server-flags"].split(" ").filter((f) => f !== ""),
    quick: q,
  };
}

function parse(args: string[]) {
  return parseArgs({ args, options: OPTIONS, strict: true, allowPositionals: false });
}

// ---------------------------------------------------------------- shards

/** A shard in this thread or in a generator Worker, driven the same way. */
interface ShardHandle {
  call<M extends keyof ShardCalls>(method: M): Promise<ShardCalls[M]>;
  close(): void;
}

function localShard(spec: ShardSpec): ShardHandle {
  const shard: Shard = makeShard(spec);
  return { call: (m) => dispatch(shard, m), close() {} };
}

async function workerShard(spec: ShardSpec): Promise<ShardHandle> {
  const worker = new Worker(new URL("./worker.ts", import.meta.url), { type: "module" });
  let nextId = 1;
  const waiting = new Map<number, PromiseWithResolvers<unknown>>();
  worker.onmessage = (e: MessageEvent<WorkerReply>) => {
    const r = e.data;
    const w = waiting.get(r.id);
    waiting.delete(r.id);
    if (r.ok) w?.resolve(r.result);
    else w?.reject(new Error(`generator worker: ${r.error}`));
  };
  worker.onerror = (e) => {
    e.preventDefault();
    for (const w of waiting.values()) w.reject(new Error(`generator worker died: ${e.message}`));
    waiting.clear();
  };
  const send = (req: Omit<WorkerRequest, "id">) => {
    const id = nextId++;
    const p = Promise.withResolvers<unknown>();
    waiting.set(id, p);
    worker.postMessage({ ...req, id });
    return p.promise;
  };
  await send({ create: spec });
  return {
    call: (m) => send({ call: m }) as Promise<ShardCalls[typeof m]>,
    close: () => worker.terminate(),
  };
}

/** Splits `n` items into `k` contiguous shards: [first, count] each. */
function split(n: number, k: number): [number, number][] {
  const out: [number, number][] = [];
  for (let i = 0; i < k; i++) {
    const a = Math.floor((n * i) / k);
    const b = Math.floor((n * (i + 1)) / k);
    if (b > a) out.push([a, b - a]);
  }
  return out;
}

async function shards(specs: ShardSpec[], workers: number): Promise<ShardHandle[]> {
  return workers <= 1 ? specs.map(localShard) : await Promise.all(specs.map(workerShard));
}

function all<M extends keyof ShardCalls>(hs: ShardHandle[], m: M): Promise<ShardCalls[M][]> {
  return Promise.all(hs.map((h) => h.call(m)));
}

async function closeShards(hs: ShardHandle[]): Promise<void> {
  await all(hs, "teardown").catch(() => {});
  for (const h of hs) h.close();
}

const sleep = (s: number) => new Promise((r) => setTimeout(r, s * 1000));

// ---------------------------------------------------------------- output

/** One result line. */
type Line = Record<string, unknown>;

function emit(line: Line, summary: string): void {
  console.log(JSON.stringify(line));
  console.error(summary);
}

/** `a / b` rounded, or null when either is missing or b is 0. */
function ratio(a: unknown, b: unknown): number | null {
  if (typeof a !== "number" || typeof b !== "number" || b === 0) return null;
  return sig(a / b, 3);
}

function ratios(server: Line, bound: Line | undefined, keys: string[]): Line | undefined {
  if (bound === undefined) return undefined;
  const out: Line = {};
  for (const k of keys) out[k] = ratio(server[k], bound[k]);
  const paired = pairedRatio(server, bound);
  if (paired !== undefined) out.total_s_paired = sig(paired, 3);
  return out;
}

function mb(bytes: unknown): string {
  return typeof bytes !== "number" ? "?" : `${(bytes / 1048576).toFixed(1)} MB`;
}

/** Least, median and most of `xs`. */
function spread(xs: number[]): { min: number; p50: number; max: number } {
  const sorted = [...xs].sort((a, b) => a - b);
  return {
    min: sorted[0] ?? 0,
    p50: sorted[Math.floor(sorted.length / 2)] ?? 0,
    max: sorted[sorted.length - 1] ?? 0,
  };
}

/** CPU share of one core used by `pid` between two readings. */
function cpuShare(a: number | undefined, b: number | undefined, seconds: number): number | null {
  return a === undefined || b === undefined ? null : sig((b - a) / seconds, 3);
}

// ---------------------------------------------------------------- workloads

interface Run {
  s: Settings;
  target: Target;
  runNonce: string;
}

/** A process whose CPU time a relay run reads, named for the output. */
interface Watched {
  name: string;
  pid: number | undefined;
}

/** Where a relay run's peers connect and which processes it watches. */
interface RelaySpot {
  /** The first peer of each pair connects here. */
  url: string;
  /** The second peer of each pair connects here (default: {@link url}). */
  partnerUrl?: string;
  /** Room prefix, unique per run. */
  nonce: string;
  /** Processes whose CPU share is read over the measured window. */
  watch: Watched[];
  /**
   * The wire: DIVA (`join`, `signal`) by default, or y-webrtc (`subscribe`,
   * `publish`), whose run ends with a drain that counts lost messages.
   */
  protocol?: "diva" | "ywebrtc" | "peerjs";
}

/** A relay run's figures; `cpu` holds each watched process's share of one core. */
interface RelayFigures {
  seconds: number;
  total: number;
  line: Line;
  cpu: Record<string, number | null>;
  /** CPU seconds of each watched process over the window. */
  cpuSeconds: Record<string, number | undefined>;
  workers: number;
}

/** Sockets one generator isolate reads in a relay run, at most (see {@link relayGenWorkers}). */
const SOCKETS_PER_GEN_WORKER = 256;

/**
 * Generator threads for a relay of `pairs` pairs: `--gen-workers`, or one
 * per {@link SOCKETS_PER_GEN_WORKER} sockets. The generator is Deno's own
 * WebSocket client, and one isolate with more backlogged sockets than that
 * leaves some unread for seconds (docs/performance.md): with 1,000 sockets
 * in one isolate the generator itself added up to ~1 s to the longest wait
 * at P=500 (server: 0.69–1.56 s with one thread, 0.84–1.47 s with two,
 * 0.43–0.47 s with four, same server).
 */
function relayGenWorkers(s: Settings, pairs: number): number {
  return Math.min(pairs, s.genWorkers ?? Math.ceil((2 * pairs) / SOCKETS_PER_GEN_WORKER));
}

/** Runs the relay workload with `pairs` pairs at `spot` and measures one window. */
async function measureRelay(s: Settings, spot: RelaySpot, pairs: number): Promise<RelayFigures> {
  const workers = relayGenWorkers(s, pairs);
  const ywebrtc = spot.protocol === "ywebrtc";
  const peerjs = spot.protocol === "peerjs";
  const specs: ShardSpec[] = split(pairs, workers).map(([first, count]): ShardSpec => {
    const params = {
      url: spot.url,
      nonce: spot.nonce,
      firstPair: first,
      pairs: count,
      window: s.window,
      bytes: s.bytes,
      concurrency: s.concurrency,
      setupTimeoutMs: 120_000,
    } satisfies YRelayParams & PeerjsRelayParams;
    if (peerjs) return { type: "pjrelay", params };
    return ywebrtc
      ? { type: "yrelay", params }
      : { type: "relay", params: { ...params, partnerUrl: spot.partnerUrl } satisfies RelayParams };
  });
  const hs = await shards(specs, workers);
  try {
    await all(hs, "setup");
    await all(hs, "start");
    await sleep(s.warmup);
    await all(hs, "beginWindow");
    const t0 = clock();
    const before = spot.watch.map((w) => cpuSeconds(w.pid));
    const gen0 = cpuSeconds("self");
    await sleep(s.duration);
    const windows: RelayWindow[] = await all(hs, "endWindow");
    const t1 = clock();
    const after = spot.watch.map((w) => cpuSeconds(w.pid));
    const gen1 = cpuSeconds("self");
    // After the window: stop publishing, let what is in flight arrive, count what did not.
    const drains = ywebrtc || peerjs ? await all(hs, "drain") : [];
    const seconds = (t1 - t0) / 1000;
    const hist = new Histogram();
    const delivered: number[] = [];
    let oldest = 0;
    let outOfOrder = 0;
    let errors = 0;
    for (const w of windows) {
      hist.merge(new Histogram(w.histogram));
      delivered.push(...w.delivered);
      oldest = Math.max(oldest, w.oldestInFlightMs);
      outOfOrder += w.outOfOrder;
      errors += w.errors;
    }
    const total = delivered.reduce((a, b) => a + b, 0);
    const cpu: Record<string, number | null> = {};
    const used: Record<string, number | undefined> = {};
    spot.watch.forEach((w, i) => {
      cpu[w.name] = cpuShare(before[i], after[i], seconds);
      const a = before[i];
      const b = after[i];
      used[w.name] = a === undefined || b === undefined ? undefined : b - a;
    });
    cpu.generator = cpuShare(gen0, gen1, seconds);
    return {
      seconds,
      total,
      cpu,
      cpuSeconds: used,
      workers: hs.length,
      line: {
        pairs,
        window: s.window,
        data_bytes: s.bytes,
        duration_s: sig(seconds),
        delivered: total,
        msgs_per_s: sig(total / seconds),
        latency_ms: {
          p50: sig(hist.quantile(0.5) / 1000, 3),
          p99: sig(hist.quantile(0.99) / 1000, 3),
          max: sig(hist.max / 1000, 3),
        },
        longest_wait_ms: sig(Math.max(hist.max / 1000, oldest), 3),
        fairness: sig(jain(delivered), 4),
        per_peer: spread(delivered),
        out_of_order: outOfOrder,
        errors,
        ...(ywebrtc
          ? {
            lost: drains.reduce((a, d) => a + d.lost, 0),
            lost_echoes: drains.reduce((a, d) => a + d.lostEchoes, 0),
            drain_ms: sig(Math.max(0, ...drains.map((d) => d.drainMs)), 3),
          }
          : {}),
        ...(peerjs
          ? {
            lost: drains.reduce((a, d) => a + d.lost, 0),
            drain_ms: sig(Math.max(0, ...drains.map((d) => d.drainMs)), 3),
          }
          : {}),
      },
    };
  } finally {
    await closeShards(hs);
  }
}

/** CPU µs per delivered signal, or null when unknown. */
function usPerMsg(cpuSecs: number | undefined, total: number): number | null {
  return cpuSecs === undefined || total === 0 ? null : sig((cpuSecs * 1e6) / total, 3);
}

async function relay(run: Run, pairs: number): Promise<Line> {
  const { s, target } = run;
  const r = await measureRelay(s, {
    url: target.url,
    nonce: `${run.runNonce}r${pairs}`,
    watch: [{ name: "server", pid: target.pid }],
  }, pairs);
  return {
    bench: "relay",
    target: target.name,
    ...r.line,
    server_cpu: r.cpu.server,
    gen_cpu: r.cpu.generator,
    server_cpu_us_per_msg: usPerMsg(r.cpuSeconds.server, r.total),
    server_rss_bytes: rssBytes(target.pid) ?? null,
    gen_workers: r.workers,
  };
}

function relaySummary(l: Line): string {
  const lat = l.latency_ms as Record<string, number>;
  const v = l.vs_bound as Record<string, number | null> | undefined;
  return `relay  ${String(l.target).padEnd(13)} P=${l.pairs} W=${l.window}: ${
    grouped(l.msgs_per_s as number)
  } msg/s, latency p50 ${lat.p50} ms p99 ${lat.p99} ms max ${lat.max} ms, longest wait ${l.longest_wait_ms} ms, fairness ${l.fairness}, server cpu ${
    l.server_cpu ?? "?"
  } (${l.server_cpu_us_per_msg ?? "?"} µs/msg), generator cpu ${l.gen_cpu ?? "?"}` +
    (v ? ` | vs bound: ${v.msgs_per_s}× msg/s, ${v.server_cpu_us_per_msg}× µs/msg` : "");
}

/**
 * The relay on the y-webrtc wire: `pairs` pairs, each alone in a topic
 * (the project serves y-webrtc on `/yjs`; the reference server on any path).
 */
async function ywebrtcRelay(
  run: Run,
  pairs: number,
  reference: Reference | undefined,
): Promise<Line> {
  const { s, target } = run;
  const url = target.name === "reference" || s.url !== undefined
    ? target.url
    : new URL("yjs", target.url).href;
  const r = await measureRelay(s, {
    url,
    nonce: `${run.runNonce}y${pairs}`,
    watch: [{ name: "server", pid: target.pid }],
    protocol: "ywebrtc",
  }, pairs);
  return {
    bench: "ywebrtc",
    target: target.name,
    ...r.line,
    server_cpu: r.cpu.server,
    gen_cpu: r.cpu.generator,
    server_cpu_us_per_msg: usPerMsg(r.cpuSeconds.server, r.total),
    server_rss_bytes: rssBytes(target.pid) ?? null,
    gen_workers: r.workers,
    ...(target.name === "reference" && reference !== undefined
      ? {
        reference: {
          server: `y-webrtc@${reference.version} bin/server.js`,
          node: reference.node,
          layout: reference.how,
        },
      }
      : {}),
  };
}

function ywebrtcSummary(l: Line): string {
  const lat = l.latency_ms as Record<string, number>;
  const v = l.vs_reference as Record<string, number | null> | undefined;
  return `ywebrtc ${String(l.target).padEnd(9)} P=${l.pairs} W=${l.window}: ${
    grouped(l.msgs_per_s as number)
  } msg/s, latency p50 ${lat.p50} ms p99 ${lat.p99} ms max ${lat.max} ms, fairness ${l.fairness}, lost ${l.lost} (+${l.lost_echoes} echoes), server cpu ${
    l.server_cpu ?? "?"
  } (${l.server_cpu_us_per_msg ?? "?"} µs/msg), generator cpu ${l.gen_cpu ?? "?"}` +
    (v
      ? ` | vs reference: ${v.msgs_per_s}× msg/s, ${v.server_cpu_us_per_msg}× µs/msg, ${v.latency_p50}× p50`
      : "");
}

/**
 * The relay on the PeerJS wire: `pairs` pairs of clients on `/peerjs` (the
 * project's path with its default `--peerjs-path /`, and the reference's
 * with `--path /`).
 */
async function peerjsRelay(
  run: Run,
  pairs: number,
  reference: PeerReference | undefined,
): Promise<Line> {
  const { s, target } = run;
  const r = await measureRelay(s, {
    url: new URL("peerjs", target.url).href,
    nonce: `${run.runNonce}j${pairs}`,
    watch: [{ name: "server", pid: target.pid }],
    protocol: "peerjs",
  }, pairs);
  return {
    bench: "peerjs",
    target: target.name,
    ...r.line,
    server_cpu: r.cpu.server,
    gen_cpu: r.cpu.generator,
    server_cpu_us_per_msg: usPerMsg(r.cpuSeconds.server, r.total),
    server_rss_bytes: rssBytes(target.pid) ?? null,
    gen_workers: r.workers,
    ...(target.name === "peerjs-reference" && reference !== undefined
      ? {
        reference: {
          server: `peer@${reference.version} dist/bin/peerjs.js`,
          node: reference.node,
          layout: reference.how,
        },
      }
      : {}),
  };
}

function peerjsSummary(l: Line): string {
  const lat = l.latency_ms as Record<string, number>;
  const v = l.vs_reference as Record<string, number | null> | undefined;
  return `peerjs ${String(l.target).padEnd(16)} P=${l.pairs} W=${l.window}: ${
    grouped(l.msgs_per_s as number)
  } msg/s, latency p50 ${lat.p50} ms p99 ${lat.p99} ms max ${lat.max} ms, fairness ${l.fairness}, lost ${l.lost}, server cpu ${
    l.server_cpu ?? "?"
  } (${l.server_cpu_us_per_msg ?? "?"} µs/msg), generator cpu ${l.gen_cpu ?? "?"}` +
    (v
      ? ` | vs peer: ${v.msgs_per_s}× msg/s, ${v.server_cpu_us_per_msg}× µs/msg, ${v.latency_p50}× p50`
      : "");
}

/** The PeerJS reference, once prepared (`bench` lays it out; `withTarget` starts it). */
let peerReference: PeerReference | undefined;

async function joinRun(
  run: Run,
  tag: "storm" | "idle",
  clients: number,
  roomSize: number,
): Promise<{ hs: ShardHandle[]; t0: number; results: JoinResult[] }> {
  const { s, target } = run;
  const limit = openFileLimit();
  if (limit !== undefined && clients + 200 > limit) {
    throw new Error(
      `${clients} clients need more open files than this process may have (${limit}); raise ulimit -n`,
    );
  }
  const workers = Math.min(s.genWorkers ?? 1, clients);
  const specs: ShardSpec[] = split(clients, workers).map(([first, count]) => ({
    type: "join",
    params: {
      url: target.url,
      nonce: run.runNonce,
      tag,
      firstClient: first,
      clients: count,
      totalClients: clients,
      roomSize,
      useIdent: tag === "storm",
      concurrency: Math.max(1, Math.floor(s.concurrency / workers)),
      timeoutMs: 180_000,
    } satisfies JoinParams,
  }));
  const hs = await shards(specs, workers);
  const t0 = clock();
  try {
    return { hs, t0, results: await all(hs, "run") };
  } catch (e) {
    await closeShards(hs);
    throw e;
  }
}

/**
 * Runs `--join-runs` storms in a row on the same server, each with new
 * clients that leave before the next, and reports the median by total time,
 * with every run's time (`runs_total_s`, the first on a cold server). One
 * storm lasts under a second, so one run moves by ±15 % (a GC, the
 * generator's own turn); and a server that has served clients before is the
 * one users meet, where the first storm also pays for compiling the
 * handshake path.
 */
async function joinStorm(run: Run): Promise<Line> {
  const lines: Line[] = [];
  for (let i = 0; i < run.s.joinRuns; i++) {
    if (i > 0) await sleep(0.5);
    lines.push(await oneJoinStorm(run));
  }
  return medianStorm(lines);
}

/** The median storm of `lines` by total time, with every storm's time. */
function medianStorm(lines: Line[]): Line {
  const byTime = [...lines].sort((a, b) => (a.total_s as number) - (b.total_s as number));
  const median = byTime[Math.floor((byTime.length - 1) / 2)];
  return { ...median, runs: lines.length, runs_total_s: lines.map((l) => l.total_s) };
}

/**
 * The join storm of several targets, interleaved: every target runs at once
 * (each on the target CPUs, idle while another one is stormed) and the
 * storms go round robin, `--join-runs` rounds. One storm lasts under a
 * second, and this shared machine drifts between faster and slower minutes
 * (the bound's median storm moved from 0.37 to 0.57 s between runs); run one
 * target after the other, a drift lands on one of them only, while round
 * robin moves every target alike. Each target's line is its median storm,
 * marked `interleaved`.
 */
async function joinStormsInterleaved(
  s: Settings,
  runNonce: string,
  names: TargetName[],
  reference: Reference | undefined,
): Promise<Map<TargetName, Line>> {
  const storms = new Map<TargetName, Line[]>(names.map((n) => [n, []]));
  const all = async (i: number, started: Target[]): Promise<void> => {
    if (i < names.length) {
      return await withTarget(s, names[i], (t) => all(i + 1, [...started, t]), reference);
    }
    for (let round = 0; round < s.joinRuns; round++) {
      for (const [k, target] of started.entries()) {
        if (round > 0 || k > 0) await sleep(0.5);
        storms.get(names[k])!.push(await oneJoinStorm({ s, target, runNonce }));
      }
    }
  };
  await all(0, []);
  return new Map(names.map((n) => [n, { ...medianStorm(storms.get(n)!), interleaved: true }]));
}

async function oneJoinStorm(run: Run): Promise<Line> {
  const { s, target } = run;
  const n = s.clients;
  const srv0 = cpuSeconds(target.pid);
  const gen0 = cpuSeconds("self");
  const { hs, t0, results } = await joinRun(run, "storm", n, s.roomSize);
  try {
    const srv1 = cpuSeconds(target.pid);
    const gen1 = cpuSeconds("self");
    const opened = Math.max(...results.map((r) => r.openedAt)) - t0;
    const ready = Math.max(...results.map((r) => r.readyAt)) - t0;
    const stuns = results.reduce((a, r) => a + r.stuns, 0);
    const full = Math.floor(n / s.roomSize);
    const rest = n - full * s.roomSize;
    // The same for the bound: it announces every pair the way the server does.
    const expected = full * s.roomSize * (s.roomSize - 1) + rest * Math.max(0, rest - 1);
    return {
      bench: "join",
      target: target.name,
      clients: n,
      room_size: s.roomSize,
      join: "ident+join, all stuns",
      connect_s: sig(opened / 1000),
      total_s: sig(ready / 1000),
      connections_per_s: sig(n / (opened / 1000)),
      joins_per_s: sig(n / (ready / 1000)),
      stuns,
      stuns_expected: expected,
      errors: results.reduce((a, r) => a + r.errors, 0),
      server_cpu_us_per_client: srv0 === undefined || srv1 === undefined
        ? null
        : sig(((srv1 - srv0) * 1e6) / n, 3),
      // Coarse: CPU time is counted in 10 ms ticks and the storm lasts well under a second.
      server_cpu: cpuShare(srv0, srv1, ready / 1000),
      gen_cpu: cpuShare(gen0, gen1, ready / 1000),
      server_rss_bytes: rssBytes(target.pid) ?? null,
    };
  } finally {
    await closeShards(hs);
  }
}

function joinSummary(l: Line): string {
  const v = l.vs_bound as Record<string, number | null> | undefined;
  return `join   ${
    String(l.target).padEnd(13)
  } N=${l.clients} K=${l.room_size} (${l.join}): all open in ${l.connect_s} s (${
    grouped(l.connections_per_s as number)
  } conn/s), all joined in ${l.total_s} s (${grouped(l.joins_per_s as number)} joins/s), ${
    grouped(l.stuns as number)
  }/${grouped(l.stuns_expected as number)} stuns, server cpu ${
    l.server_cpu_us_per_client ?? "?"
  } µs/client (cpu: server ${l.server_cpu ?? "?"}, generator ${l.gen_cpu ?? "?"})` +
    (l.runs !== undefined && (l.runs as number) > 1
      ? `, median of ${l.runs} (${(l.runs_total_s as number[]).join(", ")} s)`
      : "") +
    (v
      ? ` | vs bound: ${v.total_s}× the time${
        v.total_s_paired !== undefined ? ` (storm by storm: ${v.total_s_paired}×)` : ""
      }, ${v.connections_per_s}× conn/s, ${v.joins_per_s}× joins/s`
      : "");
}

async function idle(run: Run): Promise<Line> {
  const { s, target } = run;
  await sleep(Math.min(0.5, s.settle));
  const before = rssBytes(target.pid);
  const { hs, t0, results } = await joinRun(run, "idle", s.idleClients, s.idleRoomSize);
  try {
    const ready = Math.max(...results.map((r) => r.readyAt)) - t0;
    await sleep(s.settle);
    const after = rssBytes(target.pid);
    const perConn = before === undefined || after === undefined
      ? null
      : sig((after - before) / s.idleClients, 3);
    return {
      bench: "idle",
      target: target.name,
      clients: s.idleClients,
      room_size: s.idleRoomSize,
      setup_s: sig(ready / 1000),
      server_rss_before_bytes: before ?? null,
      server_rss_after_bytes: after ?? null,
      bytes_per_conn: perConn,
      gen_rss_bytes: rssBytes("self") ?? null,
      errors: results.reduce((a, r) => a + r.errors, 0),
    };
  } finally {
    await closeShards(hs);
  }
}

function idleSummary(l: Line): string {
  const v = l.vs_bound as Record<string, number | null> | undefined;
  return `idle   ${String(l.target).padEnd(13)} C=${l.clients} K=${l.room_size}: server rss ${
    mb(l.server_rss_before_bytes)
  } → ${mb(l.server_rss_after_bytes)}, ${
    l.bytes_per_conn === null ? "?" : grouped(l.bytes_per_conn as number)
  } bytes/connection (set up in ${l.setup_s} s; generator rss ${mb(l.gen_rss_bytes)})` +
    (v ? ` | vs bound: ${v.bytes_per_conn}× bytes/conn` : "");
}

// ---------------------------------------------------------------- cluster

/** Where the two ends of each cluster relay pair sit. */
type Placement = "cross" | "same";

/** Instances in the benchmark's cluster, all on one Redis. */
const INSTANCES = 2;

/**
 * The cluster workload: a redis-server and {@link INSTANCES} server
 * instances on it, then the relay with the two ends of each pair on
 * different instances (every signal takes the Redis hop), then with both
 * ends on instance 1 (no hop), each as one line. `singles` holds the
 * single-instance relay lines of this invocation by pair count, for
 * `vs_single`.
 */
async function cluster(s: Settings, runNonce: string, singles: Map<number, Line>): Promise<void> {
  const pinning = {
    instances: s.serverCpus || null,
    redis: s.genCpus || null,
    generator: s.genCpus || null,
  };
  const redis = await startRedis(s.genCpus);
  const instances: Target[] = [];
  try {
    const denoFlags = s.profile !== undefined
      ? ["--cpu-prof", `--cpu-prof-dir=${s.profile}/cluster`]
      : [];
    for (let i = 0; i < INSTANCES; i++) {
      instances.push(
        await startTarget("server", {
          cpus: s.serverCpus,
          denoFlags,
          serverFlags: ["--redis-url", redis.url, ...s.serverFlags],
          readyPath: "/readyz",
        }),
      );
    }
    const watch = [
      ...instances.map((t, i) => ({ name: `instance${i + 1}`, pid: t.pid })),
      { name: "redis", pid: redis.pid },
    ];
    const pairs = s.clusterPairs;
    for (const placement of ["cross", "same"] as Placement[]) {
      const r = await measureRelay(s, {
        url: instances[0].url,
        partnerUrl: placement === "cross" ? instances[1].url : undefined,
        nonce: `${runNonce}c${placement}${pairs}`,
        watch,
      }, pairs);
      let instanceSecs: number | undefined = 0;
      for (const t of watch.slice(0, INSTANCES)) {
        const used = r.cpuSeconds[t.name];
        instanceSecs = used === undefined || instanceSecs === undefined
          ? undefined
          : instanceSecs + used;
      }
      const line: Line = {
        bench: "cluster",
        placement,
        instances: INSTANCES,
        ...r.line,
        cpu: r.cpu,
        instances_cpu_us_per_msg: usPerMsg(instanceSecs, r.total),
        redis_cpu_us_per_msg: usPerMsg(r.cpuSeconds.redis, r.total),
        instance_rss_bytes: instances.map((t) => rssBytes(t.pid) ?? null),
        redis_rss_bytes: rssBytes(redis.pid) ?? null,
        pinning,
        redis_version: redis.version,
        gen_workers: r.workers,
      };
      const single = singles.get(pairs);
      if (single !== undefined) {
        const lat = line.latency_ms as Record<string, number>;
        const slat = single.latency_ms as Record<string, number>;
        line.vs_single = {
          msgs_per_s: ratio(line.msgs_per_s, single.msgs_per_s),
          latency_p50: ratio(lat.p50, slat.p50),
          latency_p99: ratio(lat.p99, slat.p99),
          cpu_us_per_msg: ratio(line.instances_cpu_us_per_msg, single.server_cpu_us_per_msg),
          single_msgs_per_s: single.msgs_per_s,
          single_latency_ms: single.latency_ms,
        };
      }
      emit(line, clusterSummary(line));
    }
  } finally {
    await Promise.all(instances.map((t) => t.stop()));
    await redis.stop();
  }
}

function clusterSummary(l: Line): string {
  const lat = l.latency_ms as Record<string, number>;
  const cpu = l.cpu as Record<string, number | null>;
  const pin = l.pinning as Record<string, string | null>;
  const v = l.vs_single as Record<string, unknown> | undefined;
  const where = l.placement === "cross" ? "ends on different instances" : "ends on instance 1";
  const slat = v?.single_latency_ms as Record<string, number> | undefined;
  return `cluster ${l.placement} P=${l.pairs} W=${l.window} (${l.instances} instances on one Redis, ${where}): ${
    grouped(l.msgs_per_s as number)
  } msg/s, latency p50 ${lat.p50} ms p99 ${lat.p99} ms max ${lat.max} ms, longest wait ${l.longest_wait_ms} ms, fairness ${l.fairness}` +
    `\n        cpu: ${
      Object.entries(cpu).map(([k, x]) => `${k} ${x ?? "?"}`).join(", ")
    } (instances on CPU [${pin.instances ?? "any"}], redis and generator on CPU [${
      pin.redis ?? "any"
    }]); instances ${l.instances_cpu_us_per_msg ?? "?"} µs/msg, redis ${
      l.redis_cpu_us_per_msg ?? "?"
    } µs/msg` +
    (v && slat
      ? `\n        single instance, same P: ${
        grouped(v.single_msgs_per_s as number)
      } msg/s, p50 ${slat.p50} ms p99 ${slat.p99} ms | vs single: ${v.msgs_per_s}× msg/s, ${v.latency_p50}× p50, ${v.latency_p99}× p99, ${v.cpu_us_per_msg}× instance µs/msg`
      : "");
}

// ---------------------------------------------------------------- driver

async function withTarget<T>(
  s: Settings,
  name: TargetName,
  f: (t: Target) => Promise<T>,
  reference?: Reference,
): Promise<T> {
  let target: Target;
  if (name === "server" && s.url !== undefined) target = externalTarget(s.url, s.serverPid);
  else if (name === "reference") {
    if (reference === undefined) throw new Error("the reference server was not prepared");
    target = await startReference(reference, s.serverCpus);
  } else if (name === "peerjs-reference") {
    if (peerReference === undefined) throw new Error("the PeerJS reference was not prepared");
    target = { ...await startReference(peerReference, s.serverCpus), name };
  } else {
    // Each Deno target profiles into its own directory, so runs of several
    // targets at once (the join storms take turns) stay apart.
    const denoFlags = s.profile !== undefined
      ? ["--cpu-prof", `--cpu-prof-dir=${s.profile}/${name}`]
      : [];
    const extra = name === "server" ? s.serverFlags : [];
    target = await startTarget(name, {
      cpus: s.serverCpus,
      denoFlags,
      serverFlags: extra,
      workers: s.workers,
    });
  }
  try {
    return await f(target);
  } finally {
    await target.stop();
  }
}

async function bench(s: Settings): Promise<void> {
  const runNonce = nonce();
  emit(
    {
      bench: "meta",
      deno: Deno.version.deno,
      v8: Deno.version.v8,
      cpus: onlineCpus(),
      server_cpus: s.serverCpus || null,
      server_flags: s.url === undefined ? [...SERVER_FLAGS, ...s.serverFlags] : null,
      gen_cpus: s.genCpus || null,
      gen_workers: s.genWorkers ?? "auto",
      join_runs: s.joinRuns,
      open_files: openFileLimit() ?? null,
      loadavg: Deno.loadavg(),
      quick: s.quick,
      url: s.url ?? null,
      redis: s.redisVersion ?? null,
      bound_workers: s.targets.includes("bound-workers")
        ? boundWorkers({ cpus: s.serverCpus, workers: s.workers })
        : null,
    },
    `bench: ${onlineCpus()} CPUs, target on [${s.serverCpus || "any"}], generator on [${
      s.genCpus || "any"
    }] with ${s.genWorkers ?? "auto"} thread(s), open files ${openFileLimit()}, load ${
      Deno.loadavg().map((x) => x.toFixed(2)).join(" ")
    }`,
  );
  const workloads: [string, (run: Run) => Promise<Line>, string[], (l: Line) => string, number?][] =
    [];
  if (s.only.has("relay")) {
    for (const p of s.pairs) {
      workloads.push([
        "relay",
        (run) => relay(run, p),
        ["msgs_per_s", "server_cpu_us_per_msg", "longest_wait_ms"],
        relaySummary,
        2 * p,
      ]);
    }
  }
  if (s.only.has("join")) {
    workloads.push([
      "join",
      joinStorm,
      ["connections_per_s", "joins_per_s", "total_s", "server_cpu_us_per_client"],
      joinSummary,
    ]);
  }
  if (s.only.has("idle")) {
    workloads.push(["idle", idle, ["bytes_per_conn"], idleSummary]);
  }
  let reference: Reference | undefined;
  if (s.only.has("ywebrtc")) {
    if (s.targets.includes("reference")) {
      const r = await prepareReference();
      if ("skipped" in r) {
        emit(
          { bench: "ywebrtc", target: "reference", skipped: r.skipped },
          `ywebrtc reference skipped: ${r.skipped}`,
        );
      } else reference = r;
    }
    for (const p of s.ywebrtcPairs) {
      workloads.push([
        "ywebrtc",
        (run) => ywebrtcRelay(run, p, reference),
        ["msgs_per_s", "server_cpu_us_per_msg", "longest_wait_ms"],
        ywebrtcSummary,
        2 * p,
      ]);
    }
  }
  if (s.only.has("peerjs")) {
    if (s.targets.includes("peerjs-reference")) {
      const r = await preparePeerReference();
      if ("skipped" in r) {
        emit(
          { bench: "peerjs", target: "peerjs-reference", skipped: r.skipped },
          `peerjs reference skipped: ${r.skipped}`,
        );
      } else peerReference = r;
    }
    for (const p of s.peerjsPairs) {
      workloads.push([
        "peerjs",
        (run) => peerjsRelay(run, p, peerReference),
        ["msgs_per_s", "server_cpu_us_per_msg", "longest_wait_ms"],
        peerjsSummary,
        2 * p,
      ]);
    }
  }
  try {
    await runWorkloads(s, runNonce, workloads, reference);
  } finally {
    await reference?.cleanup();
    await peerReference?.cleanup();
  }
}

/** The shipped per-address connection cap (the `defaults` target keeps it). */
const DEFAULT_PER_ADDRESS = 256;

/**
 * Runs each workload against each target, the baseline first (the bound
 * for DIVA's, the reference server for y-webrtc's and PeerJS's), and gives the others'
 * figures as ratios of it; then the cluster workload.
 */
/** True when `name` takes part in the join storm (the DIVA targets but the shipped defaults). */
function joins(name: TargetName): boolean {
  return name !== "defaults" && name !== "reference" && name !== "peerjs-reference";
}

async function runWorkloads(
  s: Settings,
  runNonce: string,
  workloads: [string, (run: Run) => Promise<Line>, string[], (l: Line) => string, number?][],
  reference: Reference | undefined,
): Promise<void> {
  /** The single-instance server's relay lines by pair count, for the cluster's `vs_single`. */
  const singles = new Map<number, Line>();
  /** Every DIVA relay and join line, for the transport table. */
  const done: Line[] = [];
  for (const [workload, work, keys, summary, clients] of workloads) {
    const yjs = workload === "ywebrtc";
    const pj = workload === "peerjs";
    const baselineName: TargetName = yjs ? "reference" : pj ? "peerjs-reference" : "bound";
    let baseline: Line | undefined;
    // The join storm's targets run at once, their storms interleaved (see
    // joinStormsInterleaved); every other workload runs one target at a time.
    const interleaved = workload === "join" && s.targets.filter((n) => joins(n)).length > 1
      ? await joinStormsInterleaved(s, runNonce, s.targets.filter((n) => joins(n)), reference)
      : undefined;
    for (const name of s.targets) {
      // What the defaults cost is a question for the relays; other workloads measure capacity.
      if (name === "defaults" && keys[0] !== "msgs_per_s") continue;
      // As shipped, one address may hold 255 connections: all the load comes from 127.0.0.1.
      if (name === "defaults" && (clients ?? 0) >= DEFAULT_PER_ADDRESS) {
        emit(
          { bench: workload, target: name, pairs: (clients ?? 0) / 2, skipped: "per-address cap" },
          `${workload} defaults: skipped at ${clients} connections (--max-connections-per-address ${DEFAULT_PER_ADDRESS} as shipped)`,
        );
        continue;
      }
      // The bare relays speak DIVA only, the reference server y-webrtc only.
      if (yjs ? isBound(name) : name === "reference") continue;
      if (name === "reference" && reference === undefined) continue;
      // PeerJS runs against its own reference, and no other workload does.
      if (pj ? isBound(name) : name === "peerjs-reference") continue;
      if (name === "peerjs-reference" && peerReference === undefined) continue;
      const line = interleaved?.get(name) ?? await withTarget(
        s,
        name,
        (target) => work({ s, target, runNonce }),
        reference,
      );
      if (name === baselineName) baseline = line;
      else {
        const v = ratios(line, baseline, keys);
        if (v !== undefined) {
          if (line.bench === "relay" || line.bench === "ywebrtc" || line.bench === "peerjs") {
            const lat = line.latency_ms as Record<string, number>;
            const blat = baseline!.latency_ms as Record<string, number>;
            v.latency_p50 = ratio(lat.p50, blat.p50);
            v.latency_p99 = ratio(lat.p99, blat.p99);
          }
          line[yjs || pj ? "vs_reference" : "vs_bound"] = v;
        }
        if (line.bench === "relay" && name === "server") singles.set(line.pairs as number, line);
      }
      if (name === "bound-workers") {
        line.workers = boundWorkers({ cpus: s.serverCpus, workers: s.workers });
      }
      if (line.bench === "relay" || line.bench === "join") done.push(line);
      emit(line, summary(line));
    }
  }
  if (s.targets.some((t) => isBound(t) && t !== "bound")) transportTable(s, done);
  if (s.only.has("cluster")) await cluster(s, runNonce, singles);
  else if (s.clusterSkipped !== undefined) {
    emit(
      { bench: "cluster", skipped: s.clusterSkipped },
      `cluster skipped: ${s.clusterSkipped}`,
    );
  }
}

/**
 * The transport issue's targets, at W=16: at P=500, Jain's index ≥ 0.9, no
 * message waiting over 1 s and ≥ 0.75× the bound's throughput; at P=50, ≥
 * 0.92× the bound's throughput; the join storm (2,000 clients in rooms of 10)
 * in ≤ 1.1× the bound's time. Each is judged only where the run measured
 * exactly that size; other sizes are shown without a verdict.
 */
const TRANSPORT_TARGETS = {
  large: { pairs: 500, fairness: 0.9, longestWaitMs: 1000, vsBound: 0.75 },
  small: { pairs: 50, vsBound: 0.92 },
  join: { clients: 2000, roomSize: 10, vsBoundTime: 1.1 },
  window: 16,
} as const;

/** Whether `line` meets the transport issue's relay or join targets (undefined: not that size). */
function meets(line: Line): boolean | undefined {
  const T = TRANSPORT_TARGETS;
  const v = line.vs_bound as Record<string, number | null> | undefined;
  const base = line.target === "bound";
  if (line.bench === "join") {
    if (line.clients !== T.join.clients || line.room_size !== T.join.roomSize) return undefined;
    return base || (v?.total_s ?? Infinity) <= T.join.vsBoundTime;
  }
  if (line.window !== T.window) return undefined;
  const ratioOk = (min: number) => base || (v?.msgs_per_s ?? 0) >= min;
  if (line.pairs === T.small.pairs) return ratioOk(T.small.vsBound);
  if (line.pairs !== T.large.pairs) return undefined;
  return (line.fairness as number) >= T.large.fairness &&
    (line.longest_wait_ms as number) <= T.large.longestWaitMs && ratioOk(T.large.vsBound);
}

/**
 * The candidates side by side: for each target, each relay size's
 * throughput, its ratio of the bound's, fairness and longest wait, then the
 * join storm's time and its ratio, each with its verdict against
 * {@link TRANSPORT_TARGETS}; one `transports` JSON line and a table on
 * stderr.
 */
function transportTable(s: Settings, lines: Line[]): void {
  const targets = s.targets.filter((t) =>
    t !== "defaults" && t !== "reference" && t !== "peerjs-reference"
  );
  const mark = (ok: boolean | undefined) => ok === undefined ? "" : ok ? " ✓" : " ✗";
  const rows = targets.map((t) => {
    const mine = lines.filter((l) => l.target === t);
    const relays = mine.filter((l) => l.bench === "relay").map((l) => ({
      pairs: l.pairs as number,
      msgs_per_s: l.msgs_per_s,
      vs_bound: (l.vs_bound as Record<string, number | null> | undefined)?.msgs_per_s ??
        (t === "bound" ? 1 : null),
      fairness: l.fairness,
      longest_wait_ms: l.longest_wait_ms,
      meets: meets(l) ?? null,
    }));
    const j = mine.find((l) => l.bench === "join");
    const join = j === undefined ? null : {
      total_s: j.total_s,
      vs_bound: (j.vs_bound as Record<string, number | null> | undefined)?.total_s ??
        (t === "bound" ? 1 : null),
      meets: meets(j) ?? null,
    };
    return { target: t, workers: mine.find((l) => l.workers !== undefined)?.workers, relays, join };
  });
  const text = [
    "transports (targets: P=500 fairness ≥ 0.9, longest wait ≤ 1 s, ≥ 0.75× bound; " +
    "P=50 ≥ 0.92× bound; join ≤ 1.1× bound's time; ✓/✗ only at those sizes):",
  ];
  for (const r of rows) {
    const parts = r.relays.map((x) =>
      `P=${x.pairs} ${grouped(x.msgs_per_s as number)} msg/s (${x.vs_bound ?? "?"}×), ` +
      `fairness ${x.fairness}, longest wait ${x.longest_wait_ms} ms${mark(x.meets ?? undefined)}`
    );
    if (r.join !== null) {
      parts.push(
        `join ${r.join.total_s} s (${r.join.vs_bound ?? "?"}×)${mark(r.join.meets ?? undefined)}`,
      );
    }
    const name = r.workers === undefined ? r.target : `${r.target} (${r.workers} workers)`;
    text.push(`  ${name.padEnd(25)} ${parts.join(" | ")}`);
  }
  emit({ bench: "transports", server_cpus: s.serverCpus || null, rows }, text.join("\n"));
}

/** Runs this script again pinned to the generator's CPUs with a raised open-file limit. */
async function reexec(s: Settings, args: string[]): Promise<number> {
  const argv = await wrapped([
    Deno.execPath(),
    "run",
    // Deno grants /proc and /sys reads (memory, CPU time, limits) only with -A.
    "-A",
    new URL(import.meta.url).pathname,
    ...args,
    "--server-cpus",
    s.serverCpus,
    "--gen-cpus",
    s.genCpus,
  ], s.genCpus);
  const child = new Deno.Command(argv[0], {
    args: argv.slice(1),
    env: { [PINNED_ENV]: "1" },
    stdin: "null",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn();
  const forward = (sig: Deno.Signal) => () => {
    try {
      child.kill(sig);
    } catch {
      // already gone
    }
  };
  Deno.addSignalListener("SIGINT", forward("SIGINT"));
  Deno.addSignalListener("SIGTERM", forward("SIGTERM"));
  return (await child.status).code;
}

async function main(): Promise<number> {
  let s: Settings;
  try {
    const parsed = parse(Deno.args);
    if (parsed.values.help) {
      console.log(USAGE);
      return 0;
    }
    s = await settings(parsed.values);
  } catch (e) {
    if (e instanceof UsageError || (e as { code?: string }).code?.startsWith("ERR_PARSE_ARGS")) {
      console.error(`bench: ${(e as Error).message}\n\n${USAGE}`);
      return 2;
    }
    throw e;
  }
  if (Deno.env.get(PINNED_ENV) !== "1" && (s.genCpus !== "" || openFileLimit() !== undefined)) {
    return await reexec(s, Deno.args);
  }
  const stop = () => {
    killAll();
    Deno.exit(130);
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
  try {
    await bench(s);
    return 0;
  } catch (e) {
    console.error(`bench: ${(e as Error).stack ?? e}`);
    return 1;
  } finally {
    killAll();
  }
}

if (import.meta.main) Deno.exit(await main());
