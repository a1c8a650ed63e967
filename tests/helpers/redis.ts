/**
 * A real `redis-server` for tests: started on a free loopback port in a
 * temporary directory, without persistence, and stopped at the end.
 *
 * @module
 */

/** A free TCP port on 127.0.0.1 (the listener is closed before returning). */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** A running Redis. */
export interface RedisServer {
  /** Its port. */
  readonly port: number;
  /** `redis://127.0.0.1:<port>`. */
  readonly url: string;
  /** Stops it (SIGKILL-free: SIGTERM, then waits). */
  stop(): Promise<void>;
  /** Stops the process only, as if Redis crashed; {@link up} brings it back. */
  down(): Promise<void>;
  /** Starts it again on the same port, empty (no persistence). */
  up(): Promise<void>;
  /** Freezes the process (SIGSTOP): connections stay open, nothing answers. */
  freeze(): void;
  /** Lets a frozen process go on (SIGCONT). */
  thaw(): void;
}

async function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (true) {
    try {
      const c = await Deno.connect({ hostname: "127.0.0.1", port });
      c.close();
      return;
    } catch (e) {
      if (Date.now() > until) throw e;
      await new Promise((r) => setTimeout(r, 25));
    }
  }
}

/** Starts `redis-server` on a free port; throws when it is not installed. */
export async function startRedis(): Promise<RedisServer> {
  const port = freePort();
  const dir = await Deno.makeTempDir({ prefix: "redis-test-" });
  let child: Deno.ChildProcess | undefined;
  const launch = async () => {
    child = new Deno.Command("redis-server", {
      args: [
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
      ],
      stdout: "null",
      stderr: "null",
    }).spawn();
    await waitForPort(port, 5000);
  };
  const stop = async () => {
    if (child === undefined) return;
    const c = child;
    child = undefined;
    try {
      c.kill("SIGCONT"); // a frozen process would not act on SIGTERM
      c.kill("SIGTERM");
    } catch { /* already gone */ }
    await c.status;
  };
  await launch();
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    stop: async () => {
      await stop();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
    down: stop,
    up: launch,
    freeze: () => child?.kill("SIGSTOP"),
    thaw: () => child?.kill("SIGCONT"),
  };
}
