/**
 * A real coturn (`turnserver`) for tests: started on a free loopback port in
 * TURN REST API mode (`use-auth-secret`), and `turnutils_uclient` to try an
 * allocation with a credential. Loopback peers are allowed so that two
 * clients on this machine (uclient, or two browser pages with
 * `iceTransportPolicy: "relay"`) can relay to each other.
 *
 * @module
 */

import dgram from "node:dgram";

/** What {@link startCoturn} is given. */
export interface CoturnOptions {
  /** The shared secret(s) coturn accepts; several model a rotation. */
  secret: string | readonly string[];
  /** The realm (default "test"). */
  realm?: string;
  /** How long startup may take, in ms (default 15000). */
  timeoutMs?: number;
}

/** A running coturn. */
export interface Coturn {
  /** The UDP and TCP listening port on 127.0.0.1. */
  readonly port: number;
  /** `turn:127.0.0.1:<port>?transport=udp`. */
  readonly url: string;
  /** The UDP and the TCP TURN URL. */
  readonly urls: readonly string[];
  /** `stun:127.0.0.1:<port>`. */
  readonly stunUrl: string;
  /** The realm coturn answers with. */
  readonly realm: string;
  /** coturn's log so far (verbose: one line per request with user and outcome). */
  log(): Promise<string>;
  /** Stops coturn and removes its temporary directory. Idempotent. */
  stop(): Promise<void>;
}

/** Whether `turnserver` and `turnutils_uclient` can be run. */
export async function coturnAvailable(): Promise<boolean> {
  for (const cmd of ["turnserver", "turnutils_uclient"]) {
    try {
      // Both print usage and exit when given an unknown flag; only NotFound matters.
      await new Deno.Command(cmd, { args: ["--version"], stdout: "null", stderr: "null" })
        .output();
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return false;
      throw e;
    }
  }
  return true;
}

/** Whether the environment says this is a CI run (then missing services are failures). */
export function inCI(): boolean {
  const v = Deno.env.get("CI");
  return v !== undefined && v !== "" && v !== "0" && v !== "false";
}

const START_ATTEMPTS = 3;

/**
 * Starts coturn on 127.0.0.1 with a free port and resolves once it answers a
 * STUN binding request over UDP and accepts TCP connections.
 *
 * @example
 * ```ts
 * const turn = await startCoturn({ secret: "s3cret" });
 * try {
 *   // hand turn.url to the signal server's --turn-urls
 * } finally {
 *   await turn.stop();
 * }
 * ```
 */
export async function startCoturn(options: CoturnOptions): Promise<Coturn> {
  const secrets = typeof options.secret === "string" ? [options.secret] : [...options.secret];
  if (secrets.length === 0 || secrets.some((s) => s === "")) {
    throw new Error("startCoturn needs non-empty secrets");
  }
  const realm = options.realm ?? "test";
  const timeoutMs = options.timeoutMs ?? 15000;
  let lastError: Error | undefined;
  // A port found free can be taken by someone else before coturn binds it.
  for (let attempt = 0; attempt < START_ATTEMPTS; attempt++) {
    try {
      return await startOnce(secrets, realm, timeoutMs);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new Error("turnserver not found: install Debian's coturn package");
      }
      lastError = e as Error;
    }
  }
  throw lastError!;
}

async function startOnce(secrets: string[], realm: string, timeoutMs: number): Promise<Coturn> {
  const dir = await Deno.makeTempDir({ prefix: "coturn-test-" });
  const logFile = `${dir}/turn.log`;
  const port = await freePort();
  // Relay ports come from below Linux's ephemeral range (32768+), where port-0
  // binds of the other tests on this machine never land.
  const minPort = 20000 + Math.floor(Math.random() * 120) * 100;
  const args = [
    "-n", // no configuration file: exactly these settings
    "--use-auth-secret",
    ...secrets.map((s) => `--static-auth-secret=${s}`),
    `--realm=${realm}`,
    "--listening-ip=127.0.0.1",
    "--relay-ip=127.0.0.1",
    `--listening-port=${port}`,
    `--min-port=${minPort}`,
    `--max-port=${minPort + 99}`,
    "--no-tls",
    "--no-dtls",
    "--no-cli",
    "--allow-loopback-peers",
    "--verbose", // logs the user and outcome of every request, which tests assert on
    `--log-file=${logFile}`,
    "--simple-log",
    "--no-stdout-log",
    `--pidfile=${dir}/turnserver.pid`,
    `--userdb=${dir}/turndb`,
  ];
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command("turnserver", {
      args,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    })
      .spawn();
  } catch (e) {
    await Deno.remove(dir, { recursive: true });
    throw e;
  }
  const output = child.output();
  let exited = false;
  output.finally(() => exited = true).catch(() => {});

  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      if (!exited) {
        try {
          child.kill("SIGTERM");
        } catch {
          // It exited between the check and the kill.
        }
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      const killLater = new Promise<void>((resolve) => {
        timer = setTimeout(() => {
          if (!exited) child.kill("SIGKILL");
          resolve();
        }, 5000);
      });
      await Promise.race([output.then(() => {}), killLater]);
      await output;
      clearTimeout(timer);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    })();
    return stopped;
  };
  const log = () => Deno.readTextFile(logFile).catch(() => "");

  try {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (exited) {
        const o = await output;
        throw new Error(
          `turnserver exited with code ${o.code} before listening on ${port}:\n${await log()}${
            new TextDecoder().decode(o.stdout)
          }${new TextDecoder().decode(o.stderr)}`,
        );
      }
      if (await stunAnswers(port, 200) && await tcpAccepts(port)) break;
      if (Date.now() > deadline) {
        throw new Error(`turnserver did not listen on ${port} in ${timeoutMs} ms:\n${await log()}`);
      }
      await sleep(100);
    }
  } catch (e) {
    await stop();
    throw e;
  }
  return {
    port,
    url: `turn:127.0.0.1:${port}?transport=udp`,
    urls: [`turn:127.0.0.1:${port}?transport=udp`, `turn:127.0.0.1:${port}?transport=tcp`],
    stunUrl: `stun:127.0.0.1:${port}`,
    realm,
    log,
    stop,
  };
}

/** The outcome of one `turnutils_uclient` run. */
export interface UclientResult {
  /** True when the allocation succeeded and data came back through the relays. */
  readonly allocated: boolean;
  /** The exit code (0 on success; coturn's refusal makes it 255). */
  readonly code: number;
  /** Messages that made the round trip through the relays. */
  readonly received: number;
  /** stdout and stderr together. */
  readonly output: string;
}

/**
 * Runs `turnutils_uclient` against coturn on 127.0.0.1:`port` with a long-term
 * credential: two clients each allocate a UDP relay (`-y`) and send one
 * message to each other through them. A refused credential fails the
 * ALLOCATE with 401 and the tool exits non-zero.
 */
export async function uclientAllocate(
  port: number,
  username: string,
  credential: string,
  timeoutMs = 30000,
): Promise<UclientResult> {
  const child = new Deno.Command("turnutils_uclient", {
    args: [
      "-u",
      username,
      "-w",
      credential,
      "-p",
      String(port),
      "-y", // client to client: both ends are relays, so the relay path is used
      "-n",
      "1",
      "-m",
      "1",
      "-e",
      "127.0.0.1",
      "127.0.0.1",
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  try {
    const o = await child.output();
    const dec = new TextDecoder();
    const output = dec.decode(o.stdout) + dec.decode(o.stderr);
    let received = 0;
    for (const m of output.matchAll(/tot_recv_msgs=(\d+)/g)) received = Math.max(received, +m[1]);
    return { allocated: o.code === 0 && received > 0, code: o.code, received, output };
  } finally {
    clearTimeout(timer);
  }
}

/** Binds UDP port 0 on loopback and checks TCP can have the same port. */
async function freePort(): Promise<number> {
  for (let i = 0; i < 20; i++) {
    const s = dgram.createSocket("udp4");
    await new Promise<void>((resolve, reject) => {
      s.once("error", reject);
      s.bind(0, "127.0.0.1", () => resolve());
    });
    const port = s.address().port;
    await new Promise<void>((resolve) => s.close(() => resolve()));
    try {
      Deno.listen({ hostname: "127.0.0.1", port }).close();
      return port;
    } catch {
      // TCP side taken: try another.
    }
  }
  throw new Error("no free UDP+TCP port on 127.0.0.1");
}

/** Sends a STUN Binding request (RFC 5389) and waits for the matching success response. */
async function stunAnswers(port: number, waitMs: number): Promise<boolean> {
  const request = new Uint8Array(20);
  const view = new DataView(request.buffer);
  view.setUint16(0, 0x0001); // Binding request
  view.setUint16(2, 0); // no attributes
  view.setUint32(4, 0x2112a442); // magic cookie
  crypto.getRandomValues(request.subarray(8, 20));
  const s = dgram.createSocket("udp4");
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), waitMs);
      s.on("error", () => resolve(false));
      s.on("message", (msg: Uint8Array) => {
        const ok = msg.length >= 20 && msg[0] === 0x01 && msg[1] === 0x01 &&
          request.subarray(8, 20).every((b, i) => msg[8 + i] === b);
        if (ok) resolve(true);
      });
      s.send(request, port, "127.0.0.1");
    });
  } finally {
    clearTimeout(timer);
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }
}

async function tcpAccepts(port: number): Promise<boolean> {
  try {
    (await Deno.connect({ hostname: "127.0.0.1", port })).close();
    return true;
  } catch {
    return false;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
