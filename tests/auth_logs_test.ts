/**
 * No token ever reaches the logs: `main.ts` runs as a process at
 * `--log-level trace` (text and JSON) while distinctive tokens — valid,
 * expired, forged, malformed — arrive in the query, in the subprotocol and
 * in `["auth"]` frames, with proofs and a metrics bearer beside them; its
 * whole stderr and stdout must hold none of them, nor any part of one.
 */

import assert from "node:assert/strict";
import {
  hs256,
  keyIdent,
  newSecret,
  nowSeconds,
  proveOn,
  upgrade,
  within,
  Ws,
} from "./helpers/auth_harness.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

/** `main.ts` on port 0 with `args`; `during` runs once it listens; returns its output. */
async function runMain(
  args: string[],
  during: (port: number) => Promise<void>,
): Promise<{ stdout: string; stderr: string; code: number }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", "--allow-env", "--allow-read", MAIN, ...args],
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
    await during(await within(port, 30_000, "main.ts to listen"));
  } finally {
    child.kill("SIGTERM");
    await reading;
  }
  const status = await child.status;
  return { stdout: await stdout, stderr, code: status.code };
}

Deno.test("logs: no token, proof or bearer appears in trace logs, text or JSON", async () => {
  const tag = crypto.randomUUID().replaceAll("-", "");
  const secret = newSecret(`jwtsecret${tag}`);
  const bearer = `metricsbearer${tag}`;
  const now = nowSeconds();
  const claims = { rooms: ["team-*"], turn: true, jti: `jti${tag}` };
  const valid = await hs256(secret, claims, { sub: `sub${tag}` });
  const valid2 = await hs256(secret, claims, { sub: `sub${tag}`, exp: now + 7200 });
  const expired = await hs256(secret, claims, { sub: `old${tag}`, exp: now - 600 });
  const forged = await hs256(newSecret(`forger${tag}`), claims, { sub: `forged${tag}` });
  const malformed = `malformed${tag}.not.a.jwt`;
  const garbage = `garbage${tag}`;
  const tokens = { valid, valid2, expired, forged, malformed, garbage };
  const key = await keyIdent();

  for (const format of ["text", "json"]) {
    const proofs: string[] = [];
    const out = await runMain([
      "--host",
      "127.0.0.1",
      "--port",
      "0",
      "--log-level",
      "trace",
      "--log-format",
      format,
      "--jwt-secrets",
      secret,
      "--auth-rooms",
      "team-*",
      "--proof-rooms",
      "keyed-*",
      "--metrics-token",
      bearer,
    ], async (port) => {
      const ws = `ws://127.0.0.1:${port}/`;
      // Refused at the upgrade, in the query and in the subprotocol.
      for (const t of [expired, forged, malformed, garbage]) {
        assert.equal((await upgrade(port, `/?token=${t}`)).status, 401);
        assert.equal(
          (await upgrade(port, "/", { "Sec-WebSocket-Protocol": `jwt, ${t}` })).status,
          401,
        );
      }
      // Accepted in the query and in the subprotocol.
      const q = await Ws.open(`${ws}?token=${valid}`);
      const p = await Ws.open(ws, ["jwt", valid]);
      const a = await Ws.open(ws);
      try {
        assert.deepEqual(await q.call(["join", "q", "team-a"]), ["join", "team-a:q"]);
        assert.deepEqual(await p.call(["join", "p", "team-a"]), ["join", "team-a:p"]);
        // In auth frames: refused ones, then good ones (a refresh too).
        for (const t of [expired, forged, malformed, garbage]) {
          const r = await a.call(["auth", t]) as string[];
          assert.equal(r[2], "forbidden");
        }
        assert.equal((await a.call(["auth", valid]) as string[])[0], "auth");
        assert.equal((await a.call(["auth", valid2]) as string[])[0], "auth");
        // A proof, and a replay of it.
        const proof = await proveOn(a, key);
        await a.call(["challenge"]);
        assert.equal((await a.call(proof) as string[])[2], "forbidden");
        proofs.push(proof[2]);
        assert.equal((await a.call(["join", key.ident, "keyed-a"]) as string[])[0], "join");
      } finally {
        await Promise.all([q.close(), p.close(), a.close()]);
      }
      for (const b of [undefined, "wrong", bearer]) {
        const r = await fetch(`http://127.0.0.1:${port}/metrics`, {
          headers: b === undefined ? {} : { authorization: `Bearer ${b}` },
        });
        await r.body?.cancel();
      }
    });
    assert.equal(out.code, 0, out.stderr);
    // Trace logging was on and saw the refusals (by reason only).
    assert.match(out.stderr, /listening on/);
    assert.match(out.stderr, /refused an upgrade/);
    assert.match(out.stderr, /expired/);
    const logs = out.stdout + out.stderr;
    for (const [name, t] of Object.entries(tokens)) {
      assert.ok(!logs.includes(t), `${format}: the ${name} token leaked`);
      for (const part of t.split(".")) {
        if (part.length >= 8) assert.ok(!logs.includes(part), `${format}: part of ${name} leaked`);
      }
    }
    assert.ok(!logs.includes(tag), `${format}: something distinctive leaked`);
    for (const s of [secret, bearer, ...proofs]) {
      assert.ok(!logs.includes(s), `${format}: a secret or a proof leaked`);
    }
  }
});
