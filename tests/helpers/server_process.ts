/**
 * The server as a real process (`main.ts`), for tests that need several
 * instances or must kill one.
 *
 * @module
 */

import { freePort } from "./redis.ts";

/** A server process. */
export interface ServerProcess {
  /** Its port. */
  readonly port: number;
  /** `ws://127.0.0.1:<port>/`. */
  readonly url: string;
  /** The process. */
  readonly child: Deno.ChildProcess;
  /** Sends a signal and waits for the exit code. */
  stop(signal?: Deno.Signal): Promise<number>;
}

const MAIN = new URL("../../main.ts", import.meta.url).pathname;

/** GET `path` on the server; the status code, or 0 when nothing answers. */
export async function httpStatus(port: number, path: string): Promise<number> {
  try {
    const r = await fetch(`http://127.0.0.1:${port}${path}`);
    await r.body?.cancel();
    return r.status;
  } catch {
    return 0;
  }
}

/** Polls until `GET path` answers `status`, or throws after `timeoutMs`. */
export async function waitForStatus(
  port: number,
  path: string,
  status: number,
  timeoutMs = 10_000,
): Promise<void> {
  const until = Date.now() + timeoutMs;
  let last = 0;
  while (Date.now() < until) {
    last = await httpStatus(port, path);
    if (last === status) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${path} on port ${port} answered ${last}, not ${status}, for ${timeoutMs} ms`);
}

/** Starts `main.ts` with `args` on a free port and waits until /readyz is 200. */
export async function startServerProcess(args: string[]): Promise<ServerProcess> {
  const port = freePort();
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net",
      "--allow-env",
      "--allow-read",
      MAIN,
      "--host",
      "127.0.0.1",
      "--port",
      String(port),
      "--log-level",
      "warning",
      ...args,
    ],
    stdin: "null",
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  let exited: number | undefined;
  const status = child.status.then((s) => (exited = s.code));
  try {
    await waitForStatus(port, "/readyz", 200, 15_000);
  } catch (e) {
    if (exited === undefined) child.kill("SIGKILL");
    await status;
    throw e;
  }
  return {
    port,
    url: `ws://127.0.0.1:${port}/`,
    child,
    async stop(signal: Deno.Signal = "SIGTERM") {
      if (exited === undefined) {
        try {
          child.kill(signal);
        } catch { /* already gone */ }
      }
      return await status;
    },
  };
}
