/**
 * The real signal server under attack: `main.ts` as a child process (under a
 * descriptor limit if asked, its stderr captured, its RSS readable from
 * /proc), and plain HTTP over raw TCP with `Connection: close`, so that a
 * test's own requests never hold pooled keep-alive connections that would
 * count against the server's caps.
 *
 * @module
 */

import { freePort } from "./redis.ts";
import { type HttpAnswer, RawConn, withTimeout } from "./own_raw.ts";

const MAIN = new URL("../../main.ts", import.meta.url).pathname;
const ROOT = new URL("../../", import.meta.url).pathname;

/**
 * Extra flags for every server these tests start: empty (the default
 * transport, our own) unless `ATTACKS_TRANSPORT` names one, e.g.
 * `ATTACKS_TRANSPORT=deno` to see the attacks succeed on Deno's built-in
 * server. Nothing in the suite sets it.
 */
export const TRANSPORT_ARGS: readonly string[] = (() => {
  const t = Deno.env.get("ATTACKS_TRANSPORT");
  return t === undefined || t === "" ? [] : ["--transport", t];
})();

/** GET `path` on a new connection that asks to be closed after the answer. */
export async function httpGet(
  port: number,
  path: string,
  timeoutMs = 5000,
): Promise<HttpAnswer> {
  const c = await RawConn.connect(port);
  try {
    await c.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`);
    return await c.response(timeoutMs);
  } finally {
    c.close();
  }
}

/** Prometheus text as `name{labels}` → value. */
export function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const i = line.lastIndexOf(" ");
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

/** The server's `/metrics`, parsed. */
export async function metricsOf(port: number): Promise<Map<string, number>> {
  const r = await httpGet(port, "/metrics");
  if (r.status !== 200) throw new Error(`/metrics answered ${r.status}`);
  return parseMetrics(r.body);
}

/** One metric; throws when the server does not export it. */
export function metric(m: Map<string, number>, key: string): number {
  const v = m.get(key);
  if (v === undefined) throw new Error(`metric ${key} missing`);
  return v;
}

/** The server's resident memory in bytes, from its `/metrics`. */
export async function rssOf(port: number): Promise<number> {
  return metric(await metricsOf(port), "process_resident_memory_bytes");
}

/** A `main.ts` process. */
export interface MainProcess extends AsyncDisposable {
  /** Its port on 127.0.0.1. */
  readonly port: number;
  /** Its process id (bash `exec`s into Deno, so it is the server's). */
  readonly pid: number;
  /** Everything it wrote on stderr so far. */
  readonly stderr: string;
  /** Bytes it wrote on stderr so far. */
  readonly stderrBytes: number;
  /** The exit code once it exited, else undefined. */
  readonly exitCode: number | undefined;
  /** Sends SIGTERM (if still running) and resolves with the exit code once stderr is read. */
  stop(): Promise<number>;
}

/** Options of {@link startMain}. */
export interface MainOptions {
  /** Run under `ulimit -n` this value. */
  ulimitFiles?: number;
}

/**
 * Starts `main.ts` on a free loopback port with `args` after `--host` and
 * `--port` (and {@link TRANSPORT_ARGS}), with a clean environment (no
 * setting comes from the test's environment), stderr captured; resolves
 * once `/readyz` answers 200.
 */
export async function startMain(args: string[], o: MainOptions = {}): Promise<MainProcess> {
  const port = freePort();
  const deno = [
    Deno.execPath(),
    "run",
    "--allow-net",
    "--allow-env",
    "--allow-read",
    MAIN,
    "--host",
    "127.0.0.1",
    "--port",
    String(port),
    ...TRANSPORT_ARGS,
    ...args,
  ];
  const env: Record<string, string> = { NO_COLOR: "1" };
  for (const k of ["HOME", "PATH", "DENO_DIR", "XDG_CACHE_HOME"]) {
    const v = Deno.env.get(k);
    if (v !== undefined) env[k] = v;
  }
  const [cmd, cmdArgs] = o.ulimitFiles === undefined
    ? [deno[0], deno.slice(1)]
    : ["bash", ["-c", `ulimit -n ${o.ulimitFiles} && exec "$0" "$@"`, ...deno]];
  const child = new Deno.Command(cmd, {
    args: cmdArgs,
    cwd: ROOT,
    clearEnv: true,
    env,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let stderr = "";
  let stderrBytes = 0;
  const reading = (async () => {
    const decoder = new TextDecoder();
    for await (const b of child.stderr) {
      stderrBytes += b.length;
      stderr += decoder.decode(b, { stream: true });
    }
  })();
  let exitCode: number | undefined;
  const status = child.status.then((s) => (exitCode = s.code));
  const stop = async () => {
    if (exitCode === undefined) {
      try {
        child.kill("SIGTERM");
      } catch { /* gone already */ }
    }
    const code = await withTimeout(status, 15_000, "the server process to exit").catch(
      async (e) => {
        child.kill("SIGKILL");
        await status;
        throw e;
      },
    );
    await reading;
    return code;
  };
  const until = performance.now() + 20_000;
  for (;;) {
    try {
      if ((await httpGet(port, "/readyz", 2000)).status === 200) break;
    } catch { /* not listening yet */ }
    if (exitCode !== undefined || performance.now() > until) {
      await stop().catch(() => {});
      throw new Error(`main.ts did not become ready (exit ${exitCode}): ${stderr.slice(-2000)}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    port,
    pid: child.pid,
    get stderr() {
      return stderr;
    },
    get stderrBytes() {
      return stderrBytes;
    },
    get exitCode() {
      return exitCode;
    },
    stop,
    async [Symbol.asyncDispose]() {
      await stop().catch(() => {});
    },
  };
}

/** Polls `check` until it holds, or throws after `timeoutMs`. */
export async function eventually(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 5000,
  everyMs = 20,
): Promise<void> {
  const until = performance.now() + timeoutMs;
  while (!(await check())) {
    if (performance.now() > until) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
