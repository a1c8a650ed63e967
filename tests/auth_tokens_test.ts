/**
 * Tokens end to end, on the real server over real WebSocket upgrades:
 * HS256 secrets, ES256 and EdDSA keys from a JWKS served by the test (and a
 * rotation picked up without a restart), PEM and JWK key files; every kind
 * of refusal answered 401 before the socket opens and counted by reason;
 * grants that refuse a room or an ident without changing anything; the
 * three places a token can travel; expiry mid-connection and refresh; and
 * the bearer token on `/metrics`.
 */

import assert from "node:assert/strict";
import * as jose from "jose";
import {
  closeAll,
  hs256,
  metrics,
  newSecret,
  nowSeconds,
  sample,
  serve,
  serveJwks,
  sign,
  signingKey,
  T,
  upgrade,
  Ws,
} from "./helpers/auth_harness.ts";

const encoder = new TextEncoder();

/** Writes `files` (name → text) to a fresh temporary directory; returns their paths. */
async function tempFiles(files: Record<string, string>): Promise<Record<string, string>> {
  const dir = await Deno.makeTempDir({ prefix: "auth-keys-" });
  const out: Record<string, string> = {};
  for (const [name, text] of Object.entries(files)) {
    out[name] = `${dir}/${name}`;
    await Deno.writeTextFile(out[name], text);
  }
  return out;
}

/** True when `m` is `["error", call, code, …]`. */
function isError(m: unknown, call: string, code: string): boolean {
  return Array.isArray(m) && m[0] === "error" && m[1] === call && m[2] === code;
}

Deno.test("keys: HS256, ES256 and EdDSA from a JWKS, RS256 PEM, ES256 PEM and an EdDSA JWK file all verify", async () => {
  const secret = newSecret();
  const es = await signingKey("ES256", "es-1");
  const ed = await signingKey("EdDSA", "ed-1");
  const rsaFile = await signingKey("RS256", "rs-file");
  const esFile = await signingKey("ES256", "es-file");
  const edFile = await signingKey("EdDSA", "ed-file");
  await using jwks = serveJwks([es.jwk, ed.jwk]);
  const files = await tempFiles({
    "rsa.pem": rsaFile.pem,
    "es.pem": esFile.pem,
    "ed.jwk": JSON.stringify(edFile.jwk),
  });
  await using s = serve([
    "--jwt-secrets",
    secret,
    "--jwks-url",
    jwks.url,
    "--jwt-public-keys",
    `${files["rsa.pem"]},${files["es.pem"]},${files["ed.jwk"]}`,
    "--auth-rooms",
    "team-*",
  ]);
  const grant = { rooms: ["team-*"] };
  const tokens: [string, string][] = [
    ["HS256 secret", await hs256(secret, grant, { sub: "hs" })],
    ["ES256 from the JWKS", await es.sign(grant, { sub: "es" })],
    ["EdDSA from the JWKS", await ed.sign(grant, { sub: "ed" })],
    ["RS256 PEM file", await rsaFile.sign(grant, { sub: "rs" })],
    ["ES256 PEM file", await esFile.sign(grant, { sub: "esf" })],
    ["EdDSA JWK file", await edFile.sign(grant, { sub: "edf" })],
  ];
  const sockets: Ws[] = [];
  try {
    for (const [what, token] of tokens) {
      const ws = await Ws.open(s.ws, ["jwt", token]);
      sockets.push(ws);
      assert.equal(ws.protocol, "jwt", what);
      const ident = `m${sockets.length}`;
      assert.deepEqual(
        await ws.call(["join", ident, "team-red"]),
        ["join", `team-red:${ident}`],
        what,
      );
    }
    // Every joiner saw the ones after it: the room holds all six.
    assert.equal(s.server.broker.idents, tokens.length);
    // The JWKS was fetched once, for the first key it held; the second was in it.
    assert.equal(jwks.fetches, 1);
  } finally {
    await closeAll(sockets);
  }
});

/**
 * Runs `fn` with `Date.now` ahead by `ms`: jose measures its JWKS cooldown
 * with `Date.now`, so the rotation can happen "after the cooldown" without
 * the test sleeping 30 seconds. Nothing else runs meanwhile.
 */
async function clockAhead<V>(ms: number, fn: () => Promise<V>): Promise<V> {
  const real = Date.now;
  Date.now = () => real() + ms;
  try {
    return await fn();
  } finally {
    Date.now = real;
  }
}

Deno.test("keys: a JWKS rotation is picked up without a restart, once the fetch cooldown is over", async () => {
  const old = await signingKey("ES256", "2026-01");
  const next = await signingKey("EdDSA", "2026-02");
  await using jwks = serveJwks([old.jwk]);
  await using s = serve(["--jwks-url", jwks.url, "--auth-rooms", "team-*"]);
  const grant = { rooms: ["team-*"] };

  const before = await upgrade(s.port, `/?token=${await old.sign(grant)}`);
  assert.equal(before.status, 101);
  assert.equal(jwks.fetches, 1);

  // The issuer rotates: the JWKS now holds the new key only, and tokens name it.
  jwks.keys = [next.jwk];
  const fresh = await next.sign(grant, { sub: "after-rotation" });
  // Within 30 s of the last fetch an unknown kid is not fetched for: a flood
  // of made-up kids cannot make the server hammer the JWKS.
  const early = await upgrade(s.port, `/?token=${fresh}`);
  assert.equal(early.status, 401);
  assert.equal(early.body, "token refused: bad-signature\n");
  assert.equal(jwks.fetches, 1);

  await clockAhead(31_000, async () => {
    const after = await upgrade(s.port, `/?token=${fresh}`);
    assert.equal(after.status, 101, after.body);
    assert.equal(jwks.fetches, 2);
    // The retired key's tokens are refused now, without another fetch.
    const retired = await upgrade(s.port, `/?token=${await old.sign(grant)}`);
    assert.equal(retired.status, 401);
    assert.equal(jwks.fetches, 2);
  });

  // Back on the real clock the new key is cached: a real client joins with it.
  const ws = await Ws.open(s.ws, ["jwt", fresh]);
  try {
    assert.deepEqual(await ws.call(["join", "n", "team-a"]), ["join", "team-a:n"]);
  } finally {
    await ws.close();
  }
  const m = await metrics(s.http);
  assert.equal(sample(m.body, 'signal_auth_refused_total{reason="bad-signature"}'), 2);
  assert.equal(sample(m.body, 'signal_auth_refused_total{reason="unavailable"}'), 0);
});

Deno.test("keys: a token without kid is tried with every JWKS key of its algorithm", async () => {
  // During a rotation both keys are published; an issuer that sets no kid
  // signs with either.
  const a = await signingKey("ES256", "a");
  const b = await signingKey("ES256", "b");
  await using jwks = serveJwks([a.jwk, b.jwk]);
  await using s = serve(["--jwks-url", jwks.url, "--auth-required", "true"]);
  const noKid = (k: typeof a) => sign("ES256", k.privateKey, {}, { sub: k.kid });
  for (const k of [a, b]) {
    const r = await upgrade(s.port, `/?token=${await noKid(k)}`);
    assert.equal(r.status, 101, `${k.kid}: ${r.status} ${r.body}`);
  }
  const stranger = await signingKey("ES256", "c");
  const r = await upgrade(s.port, `/?token=${await noKid(stranger)}`);
  assert.equal(r.status, 401);
  assert.equal(r.body, "token refused: bad-signature\n");
});

Deno.test("keys: a JWKS that cannot be fetched answers 503, counted as unavailable", async () => {
  const key = await signingKey("ES256", "k");
  const jwks = serveJwks([key.jwk]);
  const url = jwks.url;
  await jwks.close();
  await using s = serve(["--jwks-url", url, "--auth-required", "true"]);
  const r = await upgrade(s.port, `/?token=${await key.sign({})}`);
  assert.equal(r.status, 503);
  assert.equal(r.body, "token refused: unavailable\n");
  // A token whose algorithm no JWKS key has is refused as such, not as an outage.
  const hs = await hs256(newSecret(), {});
  assert.equal((await upgrade(s.port, `/?token=${hs}`)).status, 401);
  const m = await metrics(s.http);
  assert.equal(sample(m.body, 'signal_auth_refused_total{reason="unavailable"}'), 1);
  assert.equal(sample(m.body, 'signal_auth_refused_total{reason="bad-signature"}'), 1);
});

Deno.test("refusals: each bad token gets 401 before the WebSocket opens, counted by reason", async () => {
  const secret = newSecret();
  const es = await signingKey("ES256", "es-1");
  const attacker = await signingKey("ES256", "es-1");
  await using jwks = serveJwks([es.jwk]);
  await using evil = serveJwks([attacker.jwk]);
  const AUD = "signal.test";
  const ISS = "https://issuer.test";
  await using s = serve([
    "--jwt-secrets",
    secret,
    "--jwks-url",
    jwks.url,
    "--jwt-audience",
    AUD,
    "--jwt-issuer",
    ISS,
    "--auth-required",
    "true",
  ]);
  const ok = { aud: AUD, iss: ISS, sub: "u" };
  const now = nowSeconds();
  const good = await hs256(secret, {}, ok);
  const [head, body, sig] = good.split(".");
  const notJson = await new jose.CompactSign(encoder.encode("not json"))
    .setProtectedHeader({ alg: "HS256" }).sign(encoder.encode(secret));
  const forged = { ...JSON.parse(new TextDecoder().decode(jose.base64url.decode(body))) };
  forged.rooms = ["*"];
  const tampered = `${head}.${jose.base64url.encode(JSON.stringify(forged))}.${sig}`;
  const unsigned = `${jose.base64url.encode('{"alg":"none","typ":"JWT"}')}.${body}.`;
  // The HS256 "algorithm confusion": the public key's text used as an HMAC secret.
  const confused = await new jose.SignJWT({})
    .setProtectedHeader({ alg: "HS256", kid: "es-1" }).setAudience(AUD).setIssuer(ISS)
    .setExpirationTime("1h").sign(encoder.encode(JSON.stringify(es.jwk)));

  const cases: [string, string | undefined, string][] = [
    ["no token", undefined, "missing"],
    ["an empty token", "", "missing"],
    ["not a JWT", "hello", "malformed"],
    ["three dots of nothing", "a.b.c", "malformed"],
    ["a signed payload that is not JSON", notJson, "malformed"],
    ["a payload that is not JSON, signature kept", `${head}.bm90IGpzb24.${sig}`, "bad-signature"],
    ["expired", await hs256(secret, {}, { ...ok, exp: now - 120 }), "expired"],
    ["not yet valid", await hs256(secret, {}, { ...ok, nbf: now + 600 }), "not-yet-valid"],
    ["another audience", await hs256(secret, {}, { ...ok, aud: "other" }), "bad-audience"],
    ["no audience", await hs256(secret, {}, { iss: ISS }), "bad-audience"],
    ["another issuer", await hs256(secret, {}, { ...ok, iss: "https://evil.test" }), "bad-issuer"],
    ["signed with another secret", await hs256(newSecret("other"), {}, ok), "bad-signature"],
    ["a payload changed after signing", tampered, "bad-signature"],
    ['alg "none"', unsigned, "bad-signature"],
    ["HS256 signed with the public key", confused, "bad-signature"],
    ["a known kid, another key", await attacker.sign({}, ok), "bad-signature"],
    [
      "a jku header pointing at the attacker's JWKS",
      await attacker.sign({}, { ...ok, kid: "evil", header: { jku: evil.url } }),
      "bad-signature",
    ],
    [
      "a grant claim of the wrong shape",
      await hs256(secret, { rooms: "team-*" }, ok),
      "bad-claims",
    ],
  ];
  const counts: Record<string, number> = {};
  for (const [what, token, reason] of cases) {
    counts[reason] = (counts[reason] ?? 0) + 1;
    // Alternate query and subprotocol: both are checked the same way.
    const viaQuery = counts[reason] % 2 === 1 || token === "" || token === undefined;
    const r = viaQuery
      ? await upgrade(s.port, token === undefined ? "/" : `/?token=${encodeURIComponent(token)}`)
      : await upgrade(s.port, "/", { "Sec-WebSocket-Protocol": `jwt, ${token}` });
    assert.equal(r.status, 401, `${what}: ${r.status} ${r.body}`);
    assert.equal(r.headers.get("www-authenticate"), 'Bearer realm="signal"', what);
    assert.equal(r.headers.get("upgrade"), undefined, what);
    assert.equal(r.body, `token refused: ${reason}\n`, what);
  }
  // The attacker's JWKS was never asked for anything.
  assert.equal(evil.fetches, 0);

  // A browser-like client never sees the socket open.
  const expired = cases.find(([what]) => what === "expired")![1];
  await assert.rejects(Ws.open(`${s.ws}?token=${expired}`), /401/);
  counts.expired++;
  await assert.rejects(Ws.open(s.ws, ["jwt", "still.not.valid"]), /401/);
  counts.malformed++;
  await assert.rejects(Ws.open(s.ws), /401/);
  counts.missing++;
  assert.equal(s.server.broker.connections, 0);
  assert.equal(s.server.broker.stats.connectionsOpened, 0);

  const m = await metrics(s.http);
  for (const reason of Object.keys(counts)) {
    assert.equal(
      sample(m.body, `signal_auth_refused_total{reason="${reason}"}`),
      counts[reason],
      reason,
    );
  }
  assert.equal(sample(m.body, 'signal_auth_refused_total{reason="unavailable"}'), 0);

  // And a good token still gets in.
  const ws = await Ws.open(s.ws, ["jwt", good]);
  assert.deepEqual(await ws.call(["ping"]), ["pong"]);
  await ws.close();
});

Deno.test("grants: a room or an ident outside the grant is forbidden and changes nothing", async () => {
  const secret = newSecret();
  await using s = serve(["--jwt-secrets", secret, "--auth-rooms", "team-*,vault"]);
  const member = await Ws.open(s.ws, [
    "jwt",
    await hs256(secret, { rooms: ["team-red"] }, { sub: "m" }),
  ]);
  const other = await Ws.open(s.ws, [
    "jwt",
    await hs256(secret, { rooms: ["team-blue"], idents: ["alice", "alice-*"] }, { sub: "o" }),
  ]);
  const anon = await Ws.open(s.ws);
  try {
    assert.deepEqual(await member.call(["join", "m", "team-red"]), ["join", "team-red:m"]);
    const before = { idents: s.server.broker.idents, rooms: s.server.broker.rooms };

    // A room the token does not grant; also an ident the room already holds.
    for (const ident of ["alice", "m"]) {
      const r = await other.call(["join", ident, "team-red"]) as string[];
      assert.ok(isError(r, "join", "forbidden"), JSON.stringify(r));
      assert.equal(r[3], "the token does not grant room team-red");
    }
    // An ident the token does not grant, in a room it does.
    const r = await other.call(["join", "bob", "team-blue"]) as string[];
    assert.ok(isError(r, "join", "forbidden"), JSON.stringify(r));
    assert.equal(r[3], "the token does not grant ident bob");
    // ... or in an open room: the ident rule holds everywhere.
    assert.ok(isError(await other.call(["join", "bob", "lobby"]), "join", "forbidden"));
    // No token, protected rooms.
    for (const room of ["team-red", "vault"]) {
      assert.ok(isError(await anon.call(["join", "x", room]), "join", "forbidden"));
    }
    // Legacy join with an issued ident: the same rules.
    anon.send(["ident"]);
    await anon.next();
    assert.ok(isError(await anon.call(["join", "team-red"]), "join", "forbidden"));

    // Nothing changed: the member heard nothing, the counts stand.
    assert.deepEqual(await member.drain(), []);
    assert.deepEqual(await other.drain(), []);
    assert.deepEqual({ idents: s.server.broker.idents, rooms: s.server.broker.rooms }, before);
    assert.equal(s.server.broker.stats.errors["ident-taken"], 0);

    // What the grant allows works, and only then does the member hear of it.
    assert.deepEqual(await other.call(["join", "alice-2", "team-blue"]), [
      "join",
      "team-blue:alice-2",
    ]);
    assert.deepEqual(await anon.call(["join", "x", "lobby"]), ["join", "lobby:x"]);
    assert.deepEqual(await member.drain(), []);
  } finally {
    await closeAll([member, other, anon]);
  }
});

for (const transport of ["own", "deno"]) {
  Deno.test(`transport (${transport}): a token in the query, in the subprotocol, or in a first auth frame`, async () => {
    const secret = newSecret();
    await using s = serve([
      "--jwt-secrets",
      secret,
      "--auth-rooms",
      "team-*",
      "--transport",
      transport,
    ]);
    const exp = nowSeconds() + 3600;
    const token = (sub: string) => hs256(secret, { rooms: ["team-*"] }, { sub, exp });
    const sockets: Ws[] = [];
    try {
      const q = await Ws.open(`${s.ws}?token=${await token("by-query")}`);
      sockets.push(q);
      assert.equal(q.protocol, "");
      assert.deepEqual(await q.call(["join", "q", "team-a"]), ["join", "team-a:q"]);

      // The server names `jwt` as the subprotocol: a browser requires one it offered.
      const p = await Ws.open(s.ws, ["jwt", await token("by-protocol")]);
      sockets.push(p);
      assert.equal(p.protocol, "jwt");
      assert.deepEqual(await p.call(["join", "p", "team-a"]), ["join", "team-a:p"]);
      await p.drain(); // the stun for q

      // Auth is not required server-wide: no token opens, then ["auth", token] grants.
      const a = await Ws.open(s.ws);
      sockets.push(a);
      assert.ok(isError(await a.call(["join", "a", "team-a"]), "join", "forbidden"));
      a.send(["auth", await token("by-frame")]);
      // Frames sent behind the auth call wait for its answer.
      a.send(["join", "a", "team-a"]);
      assert.deepEqual(await a.next(), ["auth", { sub: "by-frame", exp }]);
      assert.deepEqual(await a.next(), ["join", "team-a:a"]);
      assert.equal((await a.next() as string[])[0], "stun");

      // A bad token in an auth frame is refused and changes nothing.
      const b = await Ws.open(s.ws);
      sockets.push(b);
      const r = await b.call(["auth", await hs256(newSecret(), { rooms: ["*"] })]) as string[];
      assert.ok(isError(r, "auth", "forbidden"), JSON.stringify(r));
      assert.equal(r[3], "no configured key verifies the token");
      assert.ok(isError(await b.call(["join", "b", "team-a"]), "join", "forbidden"));
      // A subprotocol list of `jwt` alone is answered, and the socket is anonymous.
      const bare = await Ws.open(s.ws, ["jwt"]);
      sockets.push(bare);
      assert.equal(bare.protocol, "jwt");
      assert.ok(isError(await bare.call(["join", "c", "team-a"]), "join", "forbidden"));
    } finally {
      await closeAll(sockets);
    }
  });
}

Deno.test("expiry: a token running out closes 1008 after the error; a fresh one sent before keeps it open", async () => {
  const secret = newSecret();
  await using s = serve([
    "--jwt-secrets",
    secret,
    "--jwt-clock-skew",
    "0",
    "--auth-rooms",
    "team-*",
  ]);
  // One expiry for both: 1–2 s ahead.
  const exp = nowSeconds() + 2;
  const short = (sub: string) => hs256(secret, { rooms: ["team-*"] }, { sub, exp });
  const lapsing = await Ws.open(s.ws, ["jwt", await short("lapsing")]);
  const renewing = await Ws.open(s.ws, ["jwt", await short("renewing")]);
  try {
    assert.deepEqual(await lapsing.call(["join", "l", "team-a"]), ["join", "team-a:l"]);
    assert.deepEqual(await renewing.call(["join", "r", "team-a"]), ["join", "team-a:r"]);
    await lapsing.next(); // the stun for r
    await renewing.next(); // the stun for l

    // Refreshes that fail change nothing: another subject, or a refused token.
    const foreign = await hs256(secret, { rooms: ["*"] }, { sub: "someone-else" });
    let r = await renewing.call(["auth", foreign]) as string[];
    assert.ok(isError(r, "auth", "forbidden"));
    assert.equal(r[3], "a fresh token must have the same subject");
    r = await renewing.call([
      "auth",
      await hs256(secret, {}, { sub: "renewing", exp: 1 }),
    ]) as string[];
    assert.ok(isError(r, "auth", "forbidden"));
    assert.equal(r[3], "the token has expired");

    const later = nowSeconds() + 3600;
    const fresh = await hs256(secret, { rooms: ["team-*"] }, { sub: "renewing", exp: later });
    assert.deepEqual(await renewing.call(["auth", fresh]), ["auth", {
      sub: "renewing",
      exp: later,
    }]);

    // The lapsing one is told why, then closed with 1008.
    const e = await lapsing.next(3 * T) as string[];
    assert.deepEqual(e, [
      "error",
      "auth",
      "forbidden",
      "the token expired; send a fresh one with auth",
    ]);
    assert.deepEqual(await lapsing.closed(), { code: 1008, reason: "token expired" });
    // The expiry both tokens had is past now; the renewed socket is still up.
    assert.ok(Date.now() >= exp * 1000);
    assert.deepEqual(await renewing.drain(), [["bye", "team-a:r", "team-a:l"]]);
    assert.equal(renewing.readyState, WebSocket.OPEN);
    assert.equal(s.server.broker.idents, 1);
  } finally {
    await closeAll([lapsing, renewing]);
  }
});

Deno.test("expiry: a token good for years does not make the server wake its connection in a loop", async () => {
  const secret = newSecret();
  await using s = serve(["--jwt-secrets", secret]);
  // Counts the broker's wakes (a timer over 2^31 ms fires at once: one
  // wake after another, each asking for the same far-off expiry again).
  const broker = s.server.broker;
  const wake = broker.wake.bind(broker);
  let wakes = 0;
  broker.wake = (conn) => {
    wakes++;
    wake(conn);
  };
  const ws = await Ws.open(s.ws, [
    "jwt",
    await hs256(secret, {}, { exp: nowSeconds() + 365 * 86400 }),
  ]);
  try {
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(await ws.call(["ping"]), ["pong"]);
    assert.equal(wakes, 0);
  } finally {
    await ws.close();
  }
});

Deno.test("metrics: --metrics-token makes /metrics ask for the bearer", async () => {
  const bearer = `metrics-${crypto.randomUUID()}`;
  await using s = serve(["--metrics-token", bearer]);
  const none = await metrics(s.http);
  assert.equal(none.status, 401);
  assert.equal(none.headers.get("www-authenticate"), 'Bearer realm="metrics"');
  assert.ok(!none.body.includes("signal_"));
  for (const wrong of ["", "x", bearer.slice(0, -1), bearer + "x", bearer.toUpperCase()]) {
    assert.equal((await metrics(s.http, wrong)).status, 401, wrong);
  }
  const basic = await fetch(`${s.http}/metrics`, { headers: { authorization: `Basic ${bearer}` } });
  assert.equal(basic.status, 401);
  await basic.body?.cancel();
  const ok = await metrics(s.http, bearer);
  assert.equal(ok.status, 200);
  assert.match(ok.body, /^signal_connections 0$/m);
  // The status page and health stay open.
  for (const path of ["/", "/healthz", "/readyz"]) {
    const r = await fetch(`${s.http}${path}`);
    assert.equal(r.status, 200, path);
    await r.body?.cancel();
  }
});
