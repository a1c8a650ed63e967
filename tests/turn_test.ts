/**
 * TURN REST API credentials and the `["ice"]` answer: HMAC vectors checked
 * against openssl and node:crypto, expiry arithmetic, secret rotation, the
 * settings, the ident a credential is made out to, and that the secret never
 * leaks into logs, metrics or pages of a running server.
 */

import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import fc from "fast-check";
import { type Config, ConfigError, parseConfig } from "../lib/config.ts";
import { startServer } from "../lib/server.ts";
import { type IceConfig, type IceServer, iceServers, turnCredential } from "../lib/ice/turn.ts";
import { withTimeout, WsClient } from "./helpers/ws_client.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** base64(HMAC-SHA1(secret, data)) computed by openssl and coreutils' base64, not by us. */
async function opensslHmac(secret: string, data: string): Promise<string> {
  const child = new Deno.Command("sh", {
    args: ["-c", 'openssl dgst -sha1 -hmac "$1" -binary | base64', "sh", secret],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const w = child.stdin.getWriter();
  await w.write(encoder.encode(data));
  await w.close();
  const o = await child.output();
  assert.equal(o.code, 0, decoder.decode(o.stderr));
  return decoder.decode(o.stdout).trim();
}

function ice(over: Partial<IceConfig> = {}): IceConfig {
  return {
    stunUrls: ["stun:stun.example.org:3478"],
    turnUrls: ["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349"],
    turnSecrets: ["north"],
    turnTtl: 3600,
    ...over,
  };
}

function config(args: string[], env: Record<string, string> = {}): Config {
  const cmd = parseConfig({
    args,
    env: (name) => env[name],
    readTextFile: Deno.readTextFileSync,
  });
  assert.equal(cmd.kind, "run");
  return (cmd as { kind: "run"; config: Config }).config;
}

// --- credentials -----------------------------------------------------------

Deno.test("turnCredential: a fixed vector (computed once with openssl)", async () => {
  const c = await turnCredential("north", "alice", 1_700_000_000, 3600);
  assert.deepEqual(c, { username: "1700003600:alice", credential: "wjwSXO2ch1B6VaLTLMy2Avn5O9o=" });
});

Deno.test("turnCredential: matches openssl dgst -sha1 -hmac | base64, run now", async () => {
  const cases: [string, string, number, number][] = [
    ["north", "alice", 1_700_000_000, 3600],
    ["pässwörd", "bob", 1_712_345_678, 60],
    // Longer than SHA-1's 64-byte block: HMAC hashes such a key first.
    ["k".repeat(100) + "-long-secret", "kqzvxytwrpomnlkjihgfedcb", 2_000_000_000, 86400],
    ["s p a c e s & $quotes'\"", "a!~{}[]=+", 1, 604800],
  ];
  for (const [secret, ident, now, ttl] of cases) {
    const c = await turnCredential(secret, ident, now, ttl);
    assert.equal(c.username, `${now + ttl}:${ident}`);
    assert.equal(c.credential, await opensslHmac(secret, c.username), `${secret} / ${ident}`);
  }
});

Deno.test("turnCredential: agrees with node:crypto's HMAC for any secret and ident", async () => {
  const printable = fc.string({ minLength: 1, maxLength: 40 }).filter((s) => !s.includes(":"));
  await fc.assert(
    fc.asyncProperty(
      fc.string({ minLength: 1, maxLength: 200, unit: "grapheme" }),
      printable,
      fc.integer({ min: 0, max: 4_000_000_000 }),
      fc.integer({ min: 1, max: 7 * 86400 }),
      async (secret, ident, now, ttl) => {
        const c = await turnCredential(secret, ident, now, ttl);
        const expected = createHmac("sha1", secret).update(c.username).digest("base64");
        assert.equal(c.credential, expected);
        assert.equal(atob(c.credential).length, 20);
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("turnCredential: expiry is floor(now) + ttl", async () => {
  assert.equal((await turnCredential("s", "a", 1_700_000_000.999, 3600)).username, "1700003600:a");
  assert.equal((await turnCredential("s", "a", 1_700_000_000, 60)).username, "1700000060:a");
  assert.equal((await turnCredential("s", "a", 0, 1)).username, "1:a");
  // The expiry is part of what is signed: one second later, another credential.
  const a = await turnCredential("s", "a", 1000, 60);
  const b = await turnCredential("s", "a", 1001, 60);
  assert.notEqual(a.credential, b.credential);
});

Deno.test("turnCredential: refuses an empty secret, a bad ttl or a bad time", async () => {
  await assert.rejects(() => turnCredential("", "a", 1000, 60), RangeError);
  for (const ttl of [0, -1, 1.5, NaN, Infinity]) {
    await assert.rejects(() => turnCredential("s", "a", 1000, ttl), RangeError, `ttl ${ttl}`);
  }
  for (const now of [NaN, Infinity]) {
    await assert.rejects(() => turnCredential("s", "a", now, 60), RangeError, `now ${now}`);
  }
});

// --- the ICE list -----------------------------------------------------------

Deno.test("iceServers: STUN entry plus a TURN entry signed with the secret", async () => {
  const servers = await iceServers(ice(), "alice", 1_700_000_000);
  assert.deepEqual(servers, [
    { urls: ["stun:stun.example.org:3478"] },
    {
      urls: ["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349"],
      username: "1700003600:alice",
      credential: "wjwSXO2ch1B6VaLTLMy2Avn5O9o=",
    },
  ]);
});

Deno.test("iceServers: no TURN entry without a secret, no STUN entry without URLs", async () => {
  assert.deepEqual(await iceServers(ice({ turnSecrets: [] }), "alice", 1_700_000_000), [
    { urls: ["stun:stun.example.org:3478"] },
  ]);
  assert.deepEqual(
    await iceServers(ice({ turnSecrets: [], stunUrls: [] }), "alice", 1_700_000_000),
    [],
  );
  const turnOnly = await iceServers(ice({ stunUrls: [] }), "alice", 1_700_000_000);
  assert.equal(turnOnly.length, 1);
  assert.equal(turnOnly[0].username, "1700003600:alice");
});

Deno.test("iceServers: the first secret signs; the others do not", async () => {
  const now = 1_700_000_000;
  const [, rotated] = await iceServers(ice({ turnSecrets: ["new", "old"] }), "alice", now);
  const [, before] = await iceServers(ice({ turnSecrets: ["old"] }), "alice", now);
  assert.equal(rotated.username, "1700003600:alice");
  assert.equal(rotated.credential, await opensslHmac("new", "1700003600:alice"));
  assert.equal(before.credential, await opensslHmac("old", "1700003600:alice"));
  assert.notEqual(rotated.credential, before.credential);
});

Deno.test("iceServers: the URL lists handed out are copies of the configuration's", async () => {
  const cfg = ice();
  const servers = await iceServers(cfg, "alice", 1_700_000_000);
  (servers[0].urls as string[]).push("stun:evil.example");
  (servers[1].urls as string[]).length = 0;
  assert.deepEqual(cfg.stunUrls, ["stun:stun.example.org:3478"]);
  assert.equal(cfg.turnUrls.length, 2);
});

// --- settings ---------------------------------------------------------------

Deno.test("config: TURN settings from flags, environment and a secret file", async () => {
  const turn = ["--turn-urls", "turn:127.0.0.1:3478"];
  const d = config([]);
  assert.deepEqual([d.stunUrls, d.turnUrls, d.turnSecrets, d.turnTtl], [[], [], [], 3600]);

  const f = config([...turn, "--turn-secret", "new, old", "--turn-ttl", "120"]);
  assert.deepEqual(f.turnSecrets, ["new", "old"]);
  assert.equal(f.turnTtl, 120);

  const env = {
    TURN_URLS: "turn:a:3478,turns:b:5349",
    TURN_SECRET: "envsecret",
    TURN_TTL: "600",
    STUN_URLS: "stun:a:3478",
  };
  const e = config([], env);
  assert.deepEqual(e.turnUrls, ["turn:a:3478", "turns:b:5349"]);
  assert.deepEqual(e.stunUrls, ["stun:a:3478"]);
  assert.deepEqual(e.turnSecrets, ["envsecret"]);
  assert.equal(e.turnTtl, 600);
  // A flag wins over the variable.
  assert.deepEqual(config(["--turn-secret", "flag"], env).turnSecrets, ["flag"]);

  const dir = await Deno.makeTempDir();
  try {
    const file = `${dir}/secrets`;
    await Deno.writeTextFile(file, "  newest \r\n\nolder\r\n");
    assert.deepEqual(config([...turn, "--turn-secret-file", file]).turnSecrets, [
      "newest",
      "older",
    ]);
    // With both, the file's secrets come first, so the file's first line signs.
    assert.deepEqual(
      config([...turn, "--turn-secret-file", file], { TURN_SECRET: "env" }).turnSecrets,
      ["newest", "older", "env"],
    );
    await Deno.writeTextFile(file, "\n \n");
    assert.throws(() => config([...turn, "--turn-secret-file", file]), ConfigError);
    assert.throws(() => config([...turn, "--turn-secret-file", `${dir}/missing`]), ConfigError);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }

  assert.throws(() => config(["--turn-secret", "s"]), /TURN_URLS/);
  assert.throws(() => config([...turn, "--turn-ttl", "59"]), /--turn-ttl/);
  assert.throws(() => config(turn, { TURN_TTL: "1.5" }), /TURN_TTL/);
  assert.throws(() => config(["--turn-urls", "http://x"]), /--turn-urls/);
  assert.throws(() => config(["--stun-urls", "turnx:x"]), /--stun-urls/);
});

Deno.test("config: a bad TURN setting's error message never shows a secret", () => {
  const secret = "Zq9-config-secret";
  for (const args of [["--turn-secret", secret], ["--turn-secret", secret, "--turn-ttl", "x"]]) {
    try {
      config(args);
      assert.fail("accepted");
    } catch (e) {
      assert.ok(e instanceof ConfigError);
      assert.ok(!e.message.includes(secret), e.message);
    }
  }
});

// --- over a real WebSocket --------------------------------------------------

/** Runs a real server with `args` on port 0 and hands `fn` a connected client factory. */
async function withServer(
  args: string[],
  fn: (connect: () => Promise<WsClient>) => Promise<void>,
): Promise<void> {
  const server = startServer(config(["--host", "127.0.0.1", "--port", "0", ...args]), {
    version: "test",
  });
  const clients: WsClient[] = [];
  try {
    await fn(async () => {
      const c = await WsClient.connect(`ws://127.0.0.1:${server.port}/`);
      clients.push(c);
      return c;
    });
  } finally {
    for (const c of clients) await c.close();
    await server.shutdown();
    await server.finished;
  }
}

async function askIce(c: WsClient): Promise<IceServer[]> {
  c.send(["ice"]);
  const m = await c.next();
  assert.ok(Array.isArray(m) && m[0] === "ice" && m.length === 2, JSON.stringify(m));
  return m[1] as IceServer[];
}

function username(servers: IceServer[]): { expiry: number; ident: string } {
  const u = servers.find((s) => s.username !== undefined)?.username;
  assert.ok(u !== undefined, `no TURN entry in ${JSON.stringify(servers)}`);
  const m = /^(\d+):(.+)$/.exec(u);
  assert.ok(m, u);
  return { expiry: Number(m[1]), ident: m[2] };
}

const TURN_ARGS = ["--turn-secret", "ws-secret,older", "--turn-urls", "turn:127.0.0.1:3478"];

Deno.test('["ice"] without a TURN secret: only the STUN entry', async () => {
  await withServer(["--stun-urls", "stun:127.0.0.1:3478"], async (connect) => {
    const c = await connect();
    c.send(["join", "alice", "room"]);
    await c.next();
    assert.deepEqual(await askIce(c), [{ urls: ["stun:127.0.0.1:3478"] }]);
  });
  await withServer([], async (connect) => {
    assert.deepEqual(await askIce(await connect()), []);
  });
});

Deno.test('["ice"]: the credential is made out to a global ident the connection holds', async () => {
  await withServer(TURN_ARGS, async (connect) => {
    const c = await connect();
    c.send(["join", "alice", "room"]);
    c.send(["join", "alice2", "other"]);
    assert.deepEqual(await c.next(), ["join", "room:alice"]);
    assert.deepEqual(await c.next(), ["join", "other:alice2"]);
    const before = Math.floor(Date.now() / 1000);
    const servers = await askIce(c);
    const { expiry, ident } = username(servers);
    // The global ident, so the same ident in two rooms does not share coturn's quota.
    assert.ok(["room:alice", "other:alice2"].includes(ident), ident);
    assert.ok(expiry >= before + 3600 && expiry <= Math.ceil(Date.now() / 1000) + 3600);
    const turn = servers[servers.length - 1];
    assert.deepEqual(turn.urls, ["turn:127.0.0.1:3478"]);
    // Signed with the first secret, checked by openssl.
    assert.equal(turn.credential, await opensslHmac("ws-secret", turn.username!));
  });
});

Deno.test('["ice"]: an issued ident, else a random one kept for the connection', async () => {
  await withServer(TURN_ARGS, async (connect) => {
    const a = await connect();
    const first = await askIce(a);
    const second = await askIce(a);
    assert.match(username(first).ident, /^[a-z]{24}$/);
    // Asking again mints nothing new: the same credential comes back.
    assert.deepEqual(second, first);
    const other = await connect();
    assert.notEqual(username(await askIce(other)).ident, username(first).ident);

    const b = await connect();
    b.send(["ident"]);
    const issued = await b.next();
    assert.ok(Array.isArray(issued) && issued[0] === "ident");
    assert.equal(username(await askIce(b)).ident, issued[1]);
  });
});

Deno.test('["ice"]: --turn-ttl sets the expiry; extra arguments are bad-args', async () => {
  await withServer([...TURN_ARGS, "--turn-ttl", "120"], async (connect) => {
    const c = await connect();
    const before = Math.floor(Date.now() / 1000);
    const { expiry } = username(await askIce(c));
    assert.ok(expiry >= before + 120 && expiry <= Math.ceil(Date.now() / 1000) + 120, `${expiry}`);
    c.send(["ice", "please"]);
    const e = await c.next();
    assert.ok(Array.isArray(e));
    assert.deepEqual(e.slice(0, 3), ["error", "ice", "bad-args"]);
  });
});

Deno.test('["ice"]: answers keep the order of the calls despite the async HMAC', async () => {
  await withServer(TURN_ARGS, async (connect) => {
    const a = await connect();
    a.send(["ice"]);
    a.send(["ping"]);
    a.send(["join", "alice", "room"]);
    a.send(["ice"]);
    a.send(["ice", "extra"]);
    a.send("{");
    a.send(["ice"]);
    const kinds = [];
    for (let i = 0; i < 7; i++) kinds.push(((await a.next()) as unknown[])[0]);
    assert.deepEqual(kinds, ["ice", "pong", "join", "ice", "error", "error", "ice"]);
  });
});

// --- the secret stays secret ------------------------------------------------

/** `main.ts` as a process on port 0, its stdout and stderr captured whole. */
async function runMain(
  args: string[],
  env: Record<string, string>,
  during: (port: number) => Promise<void>,
): Promise<{ stdout: string; stderr: string; code: number }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", "--allow-env", "--allow-read", MAIN, ...args],
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stdout = new Response(child.stdout).text();
  let stderr = "";
  let onPort!: (port: number) => void;
  let noPort!: (e: Error) => void;
  const port = new Promise<number>((resolve, reject) => [onPort, noPort] = [resolve, reject]);
  const reading = (async () => {
    const dec = new TextDecoder();
    for await (const chunk of child.stderr) {
      stderr += dec.decode(chunk, { stream: true });
      const m = /listening on .*?:(\d+)/.exec(stderr);
      if (m) onPort(Number(m[1]));
    }
    noPort(new Error(`main.ts never listened:\n${stderr}`));
  })();
  try {
    const listening = await withTimeout(port, 30_000, "main.ts to listen").catch((e) => {
      throw new Error(`${e.message}; its stderr:\n${stderr}`);
    });
    await during(listening);
  } finally {
    child.kill("SIGTERM");
    await reading;
  }
  const status = await child.status;
  return { stdout: await stdout, stderr, code: status.code };
}

Deno.test("the TURN secrets never appear in logs, metrics or pages (trace level)", async () => {
  const tag = crypto.randomUUID().replaceAll("-", "");
  const secrets = [`Fz1-signing-${tag}`, `Fz2-older-${tag}`, `Fz3-env-${tag}`];
  const dir = await Deno.makeTempDir();
  try {
    const file = `${dir}/turn-secrets`;
    await Deno.writeTextFile(file, `${secrets[0]}\n${secrets[1]}\n`);
    for (const format of ["text", "json"]) {
      const seen: string[] = [];
      let credential = "";
      const out = await runMain(
        [
          "--host",
          "127.0.0.1",
          "--port",
          "0",
          "--log-level",
          "trace",
          "--log-format",
          format,
          "--turn-secret-file",
          file,
          "--turn-urls",
          "turn:127.0.0.1:3478",
          "--stun-urls",
          "stun:127.0.0.1:3478",
        ],
        { TURN_SECRET: secrets[2] },
        async (port) => {
          for (const path of ["/", "/metrics", "/healthz", "/readyz", "/robots.txt", "/x"]) {
            const r = await fetch(`http://127.0.0.1:${port}${path}`);
            seen.push(`${path} ${r.status} ${JSON.stringify([...r.headers])}\n${await r.text()}`);
          }
          const c = await WsClient.connect(`ws://127.0.0.1:${port}/`);
          try {
            c.send(["ice"]);
            c.send(["join", "alice", "room"]);
            c.send(["ice"]);
            c.send("{not json");
            c.send(["ice", 1]);
            c.send(["signal", "room:alice", "room:nobody", { sdp: "x" }]);
            for (const m of await c.drain()) seen.push(JSON.stringify(m));
          } finally {
            await c.close();
          }
          const ices = seen.filter((s) => s.startsWith('["ice"'));
          assert.equal(ices.length, 2, seen.join("\n"));
          const turn = (JSON.parse(ices[1])[1] as IceServer[])[1];
          assert.match(turn.username!, /:alice$/);
          credential = turn.credential!;
          // The file's first line is the one in effect.
          assert.equal(credential, await opensslHmac(secrets[0], turn.username!));
          const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
          seen.push(metrics);
        },
      );
      assert.equal(out.code, 0, out.stderr);
      // The logs were captured: the listening line is in them.
      assert.match(out.stderr, /listening on .*127\.0\.0\.1.*:\d+/);
      assert.ok(credential !== "");
      const everything = [out.stdout, out.stderr, ...seen].join("\n");
      for (const s of secrets) {
        assert.ok(!everything.includes(s), `${format}: secret ${s} leaked`);
        assert.ok(!everything.includes(tag), `${format}: part of a secret leaked`);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
