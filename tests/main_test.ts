/**
 * The command-line entry point, run as a real process: help, version, bad
 * settings, and a server that starts, answers and stops on SIGTERM.
 */

import assert from "node:assert/strict";
import denoJson from "../deno.json" with { type: "json" };
import { helpText } from "../lib/config.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const ROOT = new URL("..", import.meta.url).pathname;

/** The environment a child gets: only what Deno needs to find its cache, plus `extra`. */
function childEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = { NO_COLOR: "1" };
  for (const k of ["HOME", "PATH", "DENO_DIR", "XDG_CACHE_HOME", "TMPDIR"]) {
    const v = Deno.env.get(k);
    if (v !== undefined) env[k] = v;
  }
  return { ...env, ...extra };
}

function command(args: string[], env: Record<string, string> = {}): Deno.Command {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", "--allow-env", "--allow-read", MAIN, ...args],
    cwd: ROOT,
    env: childEnv(env),
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  });
}

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(args: string[], env: Record<string, string> = {}): Promise<Ran> {
  const out = await command(args, env).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Asserts a refused start: non-zero exit, one line on stderr naming `names`, no stack. */
function assertRefused(r: Ran, ...names: string[]): void {
  assert.notEqual(r.code, 0, `exit code 0 for a bad setting: ${r.stderr}`);
  const lines = r.stderr.trimEnd().split("\n");
  assert.equal(lines.length, 1, `expected one line, got:\n${r.stderr}`);
  for (const n of names) assert.ok(lines[0].includes(n), `${lines[0]} does not name ${n}`);
  assert.doesNotMatch(r.stderr, /^\s+at /m, "stack trace printed");
  assert.doesNotMatch(r.stderr, /uncaught|error: Uncaught/i);
  assert.equal(r.stdout, "");
}

Deno.test("--help prints every flag and exits 0", async () => {
  const r = await run(["--help"]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trimEnd(), helpText());
  for (const flag of ["--port", "--host", "--turn-secret-file", "--redis-url", "--version"]) {
    assert.ok(r.stdout.includes(flag), flag);
  }
  assert.ok(r.stdout.includes("PORT") && r.stdout.includes("(default 3903)"));
  assert.equal(r.stderr, "");
});

Deno.test("--version prints the version of deno.json and exits 0", async () => {
  const r = await run(["--version"]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), `signal-server ${denoJson.version}`);
});

Deno.test("a bad flag value is refused with one line naming the flag", async () => {
  assertRefused(await run(["--port", "abc"]), "--port", "abc");
});

Deno.test("a bad variable is refused with one line naming the variable", async () => {
  assertRefused(await run([], { PORT: "-1" }), "PORT", "--port");
  assertRefused(await run([], { LOG_LEVEL: "loud" }), "LOG_LEVEL");
});

Deno.test("an unknown flag and an unpaired TLS file are refused the same way", async () => {
  assertRefused(await run(["--no-such-flag"]), "no-such-flag");
  assertRefused(await run(["--tls-cert", "/nonexistent.pem"]), "--tls-key");
});

/** A loopback port nothing listens on right now. */
function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

async function waitHealthy(port: number, child: Deno.ChildProcess): Promise<void> {
  let exited = false;
  child.status.then(() => exited = true);
  for (let i = 0; i < 300 && !exited; i++) {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/healthz`);
      const body = await res.text();
      if (res.status === 200) {
        assert.equal(body, "ok\n");
        return;
      }
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(exited ? "the server exited before it was healthy" : "never healthy");
}

/** Next message of a WebSocket, parsed. */
function nextMessage(ws: WebSocket): Promise<unknown> {
  return new Promise((resolve, reject) => {
    ws.addEventListener("message", (e) => resolve(JSON.parse(e.data)), { once: true });
    ws.addEventListener("close", () => reject(new Error("closed")), { once: true });
  });
}

Deno.test("the server starts, serves, and exits 0 on SIGTERM, closing sockets with 1001", async () => {
  const port = freePort();
  const child = command(["--port", String(port), "--host", "127.0.0.1"]).spawn();
  const output = child.output();
  let ws: WebSocket | undefined;
  try {
    await waitHealthy(port, child);
    const ready = await fetch(`http://127.0.0.1:${port}/readyz`);
    assert.equal(ready.status, 200);
    await ready.body?.cancel();

    // A real client: the worked example's first step, then a ping.
    ws = new WebSocket(`ws://127.0.0.1:${port}/`);
    await new Promise((resolve, reject) => {
      ws!.onopen = resolve;
      ws!.onerror = reject;
    });
    const closed = new Promise<CloseEvent>((resolve) => ws!.onclose = resolve);
    ws.send('["join","bob","lobby"]');
    assert.deepEqual(await nextMessage(ws), ["join", "lobby:bob"]);
    ws.send('["ping"]');
    assert.deepEqual(await nextMessage(ws), ["pong"]);

    child.kill("SIGTERM");
    const close = await closed;
    assert.equal(close.code, 1001);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const status = await Promise.race([
      child.status,
      new Promise<"hung">((r) => timer = setTimeout(() => r("hung"), 15_000)),
    ]);
    clearTimeout(timer);
    assert.notEqual(status, "hung", "the server did not exit after SIGTERM");
    assert.equal((status as Deno.CommandStatus).code, 0);
    // The port is free again.
    freePort();
    const l = Deno.listen({ hostname: "127.0.0.1", port });
    l.close();
  } finally {
    if (ws !== undefined && ws.readyState !== WebSocket.CLOSED) {
      const done = new Promise((r) => ws!.addEventListener("close", r, { once: true }));
      ws.close();
      await done;
    }
    try {
      child.kill("SIGKILL");
    } catch {
      // already exited
    }
    const out = await output;
    const log = new TextDecoder().decode(out.stderr);
    // The log says it listened and that it shut down, on stderr.
    assert.match(log, new RegExp(`listening on http://127\\.0\\.0\\.1:${port}`));
    assert.match(log, /shutting down/);
  }
});

Deno.test("a port already in use is a one-line start failure", async () => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const port = (l.addr as Deno.NetAddr).port;
    const r = await run(["--port", String(port), "--host", "127.0.0.1"]);
    assertRefused(r, String(port));
  } finally {
    l.close();
  }
});
