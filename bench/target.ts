/**
 * The processes under test: the project's server, the bare relay and, for
 * cluster mode, a `redis-server`, each started as a separate process (pinned
 * to a core when possible) so its memory and CPU time can be read from
 * `/proc/<pid>`.
 *
 * @module
 */

/** The bare relay on each transport candidate, by target name (see `bare_relay.ts`). */
export const BOUNDS = {
  bound: "deno",
  "bound-own": "own",
  "bound-node": "node",
  "bound-workers": "workers",
} as const;

/** A bare relay target: `bound` (Deno.serve) or one of the other transport candidates. */
export type BoundName = keyof typeof BOUNDS;

/** Which server a run measures. */
export type TargetName = "server" | "defaults" | "reference" | "peerjs-reference" | BoundName;

/** Every target name, in the order `--targets` lists them by default. */
export const TARGET_NAMES: readonly TargetName[] = [
  "bound",
  "bound-own",
  "bound-node",
  "bound-workers",
  "server",
  "defaults",
  "reference",
  "peerjs-reference",
];

/** True for the bare relay on any transport. */
export function isBound(name: string): name is BoundName {
  return Object.hasOwn(BOUNDS, name);
}

/** CPUs in a `taskset -c` list such as `0`, `0-1` or `0,2-3` (0 when the list is empty). */
function cpusIn(list: string): number {
  let n = 0;
  for (const part of list.split(",").map((p) => p.trim()).filter((p) => p !== "")) {
    const [a, b] = part.split("-").map(Number);
    n += b === undefined ? 1 : b - a + 1;
  }
  return n;
}

/** A server the generator talks to. */
export interface Target {
  /**
   * `server` is the project with shaping off, `defaults` the project with
   * every setting at its default, `bound` the bare relay on `Deno.serve`,
   * `bound-own`, `bound-node` and `bound-workers` the same relay on the other
   * transport candidates, `reference` y-webrtc's own signalling server under
   * Node.
   */
  readonly name: TargetName;
  /** Its WebSocket URL. */
  readonly url: string;
  /** Its process id, when known (needed for memory and CPU figures). */
  readonly pid: number | undefined;
  /** Stops it, if this benchmark started it. */
  stop(): Promise<void>;
}

/** How to start a target process. */
interface StartOptions {
  /** `taskset -c` CPU list for the process ("" = not pinned). */
  cpus: string;
  /** Extra `deno run` flags (for example `--cpu-prof`). */
  denoFlags: string[];
  /** Extra flags for the server itself (after {@link SERVER_FLAGS}, so they win). */
  serverFlags?: string[];
  /**
   * The HTTP path that answers 200 once the server can take clients
   * (default `/healthz`; a cluster instance is ready at `/readyz`).
   */
  readyPath?: string;
  /**
   * Worker isolates of `bound-workers` (default: the CPUs in {@link cpus},
   * or every online CPU when not pinned).
   */
  workers?: number;
}

const ROOT = new URL("../", import.meta.url);

/**
 * The `--v8-flags=…` of `deno task start` (deno.json), given to every Deno
 * target: the benchmark runs the server as users start it, and the bare
 * relays on the same runtime settings, so a ratio compares code, not flags.
 */
export const RUNTIME_FLAGS: readonly string[] = (() => {
  const json = JSON.parse(Deno.readTextFileSync(new URL("deno.json", ROOT)));
  return String(json.tasks.start).split(/\s+/).filter((f) => f.startsWith("--v8-flags="));
})();

/**
 * The flags that make the server measurable: no rate limit, no small caps
 * (the own transport's connection caps included: all the load comes from
 * 127.0.0.1, and its default of 256 per address refuses P=500 and the join
 * storm).
 */
export const SERVER_FLAGS: readonly string[] = [
  "--rate",
  "0",
  "--max-connections",
  "1000000",
  "--max-connections-per-address",
  "0",
  "--log-level",
  "warning",
  "--max-room-peers",
  "1000000",
  "--max-buffered-bytes",
  String(1024 * 1024 * 1024),
  "--shutdown-timeout",
  "2",
];

/** The flags of the `defaults` target: only quiet logs and a quick stop, every limit as shipped. */
const DEFAULTS_FLAGS: readonly string[] = [
  "--log-level",
  "warning",
  "--shutdown-timeout",
  "2",
];

/** Processes started and not yet stopped, so a signal can stop them all. */
const running = new Set<Deno.ChildProcess>();

/** Kills every process still running (on SIGINT/SIGTERM of the benchmark). */
export function killAll(): void {
  for (const child of running) {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
}

let tasksetOk: boolean | undefined;

/** True when `taskset` exists and may set this machine's affinity. */
export async function hasTaskset(): Promise<boolean> {
  if (tasksetOk === undefined) {
    try {
      const out = await new Deno.Command("taskset", {
        args: ["-c", "0", "true"],
        stdout: "null",
        stderr: "null",
      }).output();
      tasksetOk = out.success;
    } catch {
      tasksetOk = false;
    }
  }
  return tasksetOk;
}

let bashOk: boolean | undefined;

/** True when `bash` can be run (to raise the open-file limit before exec). */
async function hasBash(): Promise<boolean> {
  if (bashOk === undefined) {
    try {
      bashOk = (await new Deno.Command("bash", { args: ["-c", "true"] }).output()).success;
    } catch {
      bashOk = false;
    }
  }
  return bashOk;
}

/** CPUs online (all of them, whatever this process's own affinity). */
export function onlineCpus(): number {
  try {
    const text = Deno.readTextFileSync("/sys/devices/system/cpu/online").trim();
    let n = 0;
    for (const part of text.split(",")) {
      const [a, b] = part.split("-").map(Number);
      n += b === undefined ? 1 : b - a + 1;
    }
    if (n > 0) return n;
  } catch {
    // not Linux, or no /sys
  }
  return navigator.hardwareConcurrency;
}

/**
 * The command line that runs `argv` with a raised open-file limit and, when
 * `cpus` is set, pinned with taskset. The hard limit only rises with
 * privilege; when it cannot, the soft one is raised to the hard one.
 */
export async function wrapped(argv: string[], cpus: string): Promise<string[]> {
  const pinned = cpus !== "" && await hasTaskset() ? ["taskset", "-c", cpus, ...argv] : argv;
  if (!await hasBash()) return pinned;
  const raise = 'ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@"';
  return ["bash", "-c", raise, "bench", ...pinned];
}

/** A free loopback TCP port (closed again; the process binds it right after). */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** Worker isolates `bound-workers` runs with these options. */
export function boundWorkers(options: Pick<StartOptions, "cpus" | "workers">): number {
  return options.workers ?? (cpusIn(options.cpus) || onlineCpus());
}

/**
 * Starts the project's server (`server`, `defaults`) or the bare relay on one
 * of the transports (`bound`, `bound-own`, `bound-node`, `bound-workers`) on
 * a free loopback port.
 */
export async function startTarget(name: TargetName, options: StartOptions): Promise<Target> {
  if (name === "reference" || name === "peerjs-reference") {
    throw new Error("the reference servers start with startReference");
  }
  const port = freePort();
  const bound = isBound(name);
  const script = bound
    ? new URL("bench/bare_relay.ts", ROOT).pathname
    : new URL("main.ts", ROOT).pathname;
  const flags = name === "server"
    ? [...SERVER_FLAGS, ...options.serverFlags ?? []]
    : name === "defaults"
    ? DEFAULTS_FLAGS
    : bound
    ? [
      "--transport",
      BOUNDS[name],
      ...(name === "bound-workers" ? ["--workers", String(boundWorkers(options))] : []),
    ]
    : [];
  // `reusePort` is still behind --unstable-net; `npm:ws` is loaded at run time
  // and would otherwise be written into deno.lock (see bare_relay_node.ts).
  const denoFlags = name === "bound-workers"
    ? ["--unstable-net"]
    : name === "bound-node"
    ? ["--no-lock"]
    : [];
  const args = ["--port", String(port), "--host", "127.0.0.1", ...flags];
  return await launch(name, port, [
    Deno.execPath(),
    "run",
    "--allow-net",
    "--allow-env",
    "--allow-read",
    ...RUNTIME_FLAGS,
    ...denoFlags,
    ...options.denoFlags,
    script,
    ...args,
  ], {
    cpus: options.cpus,
    health: bound ? "/" : options.readyPath ?? "/healthz",
  });
}

/**
 * Starts y-webrtc's own signalling server, `node <dir>/bin/server.js` as
 * `prepareReference` (`reference.ts`) found it, with `PORT` set, on a free
 * loopback port; it answers `okay` to any HTTP request once it listens.
 */
export async function startReference(
  command: { argv: string[]; cwd: string },
  cpus: string,
): Promise<Target> {
  const port = freePort();
  return await launch("reference", port, command.argv, {
    cpus,
    health: "/",
    cwd: command.cwd,
    env: { PORT: String(port) },
  });
}

/** Runs `argv` (pinned to `cpus`) and waits until `health` on `port` answers 200. */
async function launch(
  name: TargetName,
  port: number,
  argv: string[],
  o: { cpus: string; health: string; cwd?: string; env?: Record<string, string> },
): Promise<Target> {
  const full = await wrapped(argv, o.cpus);
  const child = new Deno.Command(full[0], {
    args: full.slice(1),
    cwd: o.cwd ?? ROOT.pathname,
    env: o.env,
    stdin: "null",
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  const proc = track(child);
  // Ready once it answers HTTP; bounded, and failing fast if it exits.
  const health = `http://127.0.0.1:${port}${o.health}`;
  const until = Date.now() + 30_000;
  for (let attempt = 0; attempt < 600; attempt++) {
    if (proc.exited()) {
      throw new Error(`${name} exited before it was ready: ${JSON.stringify(await child.status)}`);
    }
    try {
      const res = await fetch(health, { signal: AbortSignal.timeout(5000) });
      await res.body?.cancel();
      if (res.ok) return { name, url: `ws://127.0.0.1:${port}/`, pid: child.pid, stop: proc.stop };
    } catch {
      // not listening yet
    }
    if (Date.now() > until) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  await proc.stop();
  throw new Error(`${name} did not answer ${health} within 30 s`);
}

/**
 * Registers `child` for {@link killAll} and gives it a bounded stop:
 * SIGTERM, then SIGKILL after 10 s.
 */
function track(child: Deno.ChildProcess): { exited(): boolean; stop(): Promise<void> } {
  running.add(child);
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    running.delete(child);
    return s;
  });
  const stop = async () => {
    if (exited) return;
    try {
      child.kill("SIGTERM");
    } catch {
      // already gone
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<"late">((r) => timer = setTimeout(() => r("late"), 10_000));
    if (await Promise.race([status, late]) === "late") {
      try {
        child.kill("SIGKILL");
      } catch {
        // gone in between
      }
      await status;
    }
    clearTimeout(timer);
  };
  return { exited: () => exited, stop };
}

/** A `redis-server` started by the benchmark. */
interface RedisProcess {
  /** `redis://127.0.0.1:<port>`. */
  readonly url: string;
  /** Its process id (for CPU and memory figures). */
  readonly pid: number;
  /** `redis-server --version`, first line. */
  readonly version: string;
  /** Stops it and removes its temporary directory. */
  stop(): Promise<void>;
}

/** The `redis-server --version` line, or undefined when it is not installed. */
export async function redisVersion(): Promise<string | undefined> {
  try {
    const out = await new Deno.Command("redis-server", {
      args: ["--version"],
      stdout: "piped",
      stderr: "null",
      signal: AbortSignal.timeout(10_000),
    }).output();
    return out.success ? new TextDecoder().decode(out.stdout).trim() : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Starts `redis-server` on a free loopback port, pinned to `cpus`, without
 * persistence and in a temporary directory; ready once it answers PING.
 */
export async function startRedis(cpus: string): Promise<RedisProcess> {
  const version = await redisVersion();
  if (version === undefined) throw new Error("redis-server is not installed");
  const port = freePort();
  const dir = await Deno.makeTempDir({ prefix: "bench-redis-" });
  const argv = await wrapped([
    "redis-server",
    "--port",
    String(port),
    "--bind",
    "127.0.0.1",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    dir,
  ], cpus);
  const child = new Deno.Command(argv[0], {
    args: argv.slice(1),
    stdin: "null",
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  const proc = track(child);
  const stop = async () => {
    await proc.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  const until = Date.now() + 10_000;
  while (!proc.exited()) {
    if (await pong(port)) {
      return { url: `redis://127.0.0.1:${port}`, pid: child.pid, version, stop };
    }
    if (Date.now() > until) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  const why = proc.exited() ? `exited: ${JSON.stringify(await child.status)}` : "no PONG in 10 s";
  await stop();
  throw new Error(`redis-server on port ${port} did not start (${why})`);
}

/** True when a Redis on `port` answers an inline PING within a second. */
async function pong(port: number): Promise<boolean> {
  let conn: Deno.TcpConn | undefined;
  const timer = setTimeout(() => conn?.close(), 1000);
  try {
    conn = await Deno.connect({ hostname: "127.0.0.1", port });
    await conn.write(new TextEncoder().encode("PING\r\n"));
    const buf = new Uint8Array(64);
    const n = await conn.read(buf);
    return n !== null && new TextDecoder().decode(buf.subarray(0, n)).startsWith("+PONG");
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
    try {
      conn?.close();
    } catch {
      // closed by the timer
    }
  }
}

/** A server this benchmark did not start, at `url` (process id optional, for /proc figures). */
export function externalTarget(url: string, pid: number | undefined): Target {
  return { name: "server", url, pid, stop: () => Promise.resolve() };
}

const CLK_TCK = 100; // USER_HZ: 100 on every Linux architecture Deno runs on

/** Resident memory of `pid` ("self" for this process) in bytes, or undefined when unreadable. */
export function rssBytes(pid: number | "self" | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
    return m === null ? undefined : Number(m[1]) * 1024;
  } catch {
    return undefined;
  }
}

/** CPU time (user + system) of `pid` in seconds, or undefined when unreadable. */
export function cpuSeconds(pid: number | "self" | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    // Fields after the command name, which is in parentheses and may hold spaces.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
  } catch {
    return undefined;
  }
}

/** The soft open-file limit of this process, or undefined when unreadable. */
export function openFileLimit(): number | undefined {
  try {
    const limits = Deno.readTextFileSync("/proc/self/limits");
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(limits);
    if (m === null) return undefined;
    return m[1] === "unlimited" ? Infinity : Number(m[1]);
  } catch {
    return undefined;
  }
}
