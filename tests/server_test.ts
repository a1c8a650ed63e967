/**
 * The real server on a loopback port, driven by real WebSocket clients and
 * hand-made TCP ones: the protocol end to end, the HTTP pages, TLS, limits,
 * slow readers, idle peers and graceful shutdown.
 *
 * @module
 */

import assert from "node:assert/strict";
import { parseConfig } from "../lib/config.ts";
import { type SignalServer, startServer } from "../lib/server.ts";
import {
  DEFAULT_TIMEOUT_MS,
  RawWsClient,
  type Received,
  withTimeout,
  WsClient,
} from "./helpers/ws_client.ts";

const VERSION = "9.9.9-test";

/** A server started for one test; disposing it shuts it down. */
interface TestServer extends AsyncDisposable {
  server: SignalServer;
  port: number;
  /** `ws://127.0.0.1:port` (or wss://localhost:port with TLS), without a path. */
  ws: string;
  /** `http://127.0.0.1:port` (or https://localhost:port with TLS). */
  http: string;
}

/** Starts the server on a free loopback port with the given extra flags. */
function serve(args: string[] = [], tls = false): TestServer {
  const cmd = parseConfig({
    args: ["--port", "0", "--host", "127.0.0.1", ...args],
    env: () => undefined,
    readTextFile: Deno.readTextFileSync,
  });
  if (cmd.kind !== "run") throw new Error(`unexpected command ${cmd.kind}`);
  const server = startServer(cmd.config, { version: VERSION });
  const host = tls ? `localhost:${server.port}` : `127.0.0.1:${server.port}`;
  return {
    server,
    port: server.port,
    ws: `${tls ? "wss" : "ws"}://${host}`,
    http: `${tls ? "https" : "http"}://${host}`,
    async [Symbol.asyncDispose]() {
      await server.shutdown();
      await withTimeout(server.finished, DEFAULT_TIMEOUT_MS, "the server to finish");
    },
  };
}

/** GETs (or other method) a page and reads the whole body. */
async function get(
  url: string,
  init: RequestInit & { client?: Deno.HttpClient } = {},
): Promise<{ status: number; headers: Headers; body: string }> {
  const res = await fetch(url, init);
  return { status: res.status, headers: res.headers, body: await res.text() };
}

/** Polls `check` until it holds; for server-side effects a client cannot await. */
async function eventually(
  what: string,
  check: () => Promise<boolean> | boolean,
  timeoutMs = DEFAULT_TIMEOUT_MS,
): Promise<void> {
  const until = performance.now() + timeoutMs;
  while (!(await check())) {
    if (performance.now() > until) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Parses Prometheus text into `name{labels}` → value, checking every line's shape. */
function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line === "") continue;
    if (line.startsWith("#")) {
      assert.match(line, /^# (HELP \S+ .+|TYPE \S+ (counter|gauge))$/, line);
      continue;
    }
    const m = line.match(/^([a-z_:][a-z0-9_:]*(?:\{[a-z_]+="[^"]*"\})?) (\S+)$/);
    assert.ok(m, `not a Prometheus sample line: ${line}`);
    const v = Number(m[2]);
    assert.ok(Number.isFinite(v), line);
    out.set(m[1], v);
  }
  return out;
}

async function metrics(t: TestServer): Promise<Map<string, number>> {
  const r = await get(`${t.http}/metrics`);
  assert.equal(r.status, 200);
  assert.match(r.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
  return parseMetrics(r.body);
}

function metric(m: Map<string, number>, key: string): number {
  const v = m.get(key);
  assert.notEqual(v, undefined, `metric ${key} missing`);
  return v!;
}

function isError(m: Received, call: string, code: string): boolean {
  return Array.isArray(m) && m[0] === "error" && m[1] === call && m[2] === code &&
    typeof m[3] === "string";
}

/** Connects a client and joins `room` as `ident`, taking the join reply. */
async function joined(t: TestServer, ident: string, room: string): Promise<WsClient> {
  const c = await WsClient.connect(`${t.ws}/`);
  c.send(["join", ident, room]);
  assert.deepEqual(await c.next(), ["join", `${room}:${ident}`]);
  return c;
}

Deno.test("the PROTOCOL.md worked example, end to end", async () => {
  await using t = serve();
  const a = await WsClient.connect(`${t.ws}/`);
  const b = await WsClient.connect(`${t.ws}/`);
  try {
    a.send(["ident"]);
    const reply = await a.next();
    assert.ok(Array.isArray(reply) && reply.length === 2 && reply[0] === "ident");
    const id = reply[1] as string;
    // At least 96 bits from 26 letters needs 21 of them.
    assert.match(id, /^[a-z]{21,}$/);

    a.send(["join", id, "lobby"]);
    assert.deepEqual(await a.next(), ["join", `lobby:${id}`]);

    b.send(["join", "bob", "lobby"]);
    assert.deepEqual(await b.next(), ["join", "lobby:bob"]);
    assert.deepEqual(await a.next(), ["stun", `lobby:${id}`, "lobby:bob", false]);
    assert.deepEqual(await b.next(), ["stun", "lobby:bob", `lobby:${id}`, true]);

    const offer = { type: "offer", sdp: "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n" };
    b.send(["signal", "lobby:bob", `lobby:${id}`, offer]);
    assert.deepEqual(await a.next(), ["signal", `lobby:${id}`, "lobby:bob", offer]);

    assert.deepEqual(await b.close(), { code: 1000, reason: "" });
    assert.deepEqual(await a.next(), ["bye", `lobby:${id}`, "lobby:bob"]);
    // Nothing else was sent to either side.
    assert.deepEqual(await a.drain(), []);
  } finally {
    await a.close();
    await b.close();
  }
});

Deno.test("a binary frame holding UTF-8 JSON is handled like a text frame", async () => {
  await using t = serve();
  const a = await joined(t, "alice", "room");
  const b = await WsClient.connect(`${t.ws}/`);
  try {
    const enc = new TextEncoder();
    b.send(enc.encode(JSON.stringify(["join", "bob", "room"])));
    // Replies are text frames: the client parsed them as JSON, not bytes.
    assert.deepEqual(await b.next(), ["join", "room:bob"]);
    assert.deepEqual(await a.next(), ["stun", "room:alice", "room:bob", false]);
    assert.deepEqual(await b.next(), ["stun", "room:bob", "room:alice", true]);
    const data = { candidate: "candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host", n: "é✓" };
    b.send(enc.encode(JSON.stringify(["signal", "room:bob", "room:alice", data])));
    assert.deepEqual(await a.next(), ["signal", "room:alice", "room:bob", data]);
    b.send(enc.encode("not json"));
    assert.ok(isError(await b.next(), "frame", "bad-json"));
  } finally {
    await a.close();
    await b.close();
  }
});

Deno.test("a frame over --max-frame-bytes gets too-large, then close 1009, and peers get bye", async () => {
  await using t = serve(["--max-frame-bytes", "1024"]);
  const a = await joined(t, "alice", "room");
  const b = await joined(t, "bob", "room");
  try {
    await a.next(); // stun for bob
    await b.next(); // stun for alice
    // Just at the limit still passes.
    const fits = JSON.stringify(["signal", "room:bob", "room:alice", ""]);
    const pad = "x".repeat(1024 - fits.length);
    b.send(["signal", "room:bob", "room:alice", pad]);
    assert.deepEqual(await a.next(), ["signal", "room:alice", "room:bob", pad]);

    b.send(["signal", "room:bob", "room:alice", pad + "x"]);
    assert.ok(isError(await b.next(), "frame", "too-large"));
    assert.equal((await b.closed()).code, 1009);
    assert.deepEqual(await a.next(), ["bye", "room:alice", "room:bob"]);
    const m = await metrics(t);
    assert.equal(metric(m, 'signal_errors_total{code="too-large"}'), 1);
  } finally {
    await a.close();
    await b.close();
  }
});

Deno.test("a client that drops its TCP connection without a close frame: peers get bye", async () => {
  await using t = serve();
  const a = await joined(t, "alice", "lobby");
  const raw = await RawWsClient.connect(t.port);
  try {
    assert.equal(raw.handshake.status, 101);
    await raw.send(["join", "raw", "lobby"]);
    assert.deepEqual(await raw.readFrame(), { kind: "text", text: '["join","lobby:raw"]' });
    assert.deepEqual(await a.next(), ["stun", "lobby:alice", "lobby:raw", false]);
    raw.close();
    assert.deepEqual(await a.next(), ["bye", "lobby:alice", "lobby:raw"]);
    await eventually(
      "the dropped connection is forgotten",
      () => t.server.broker.connections === 1,
    );
    assert.equal(t.server.broker.idents, 1);
  } finally {
    raw.close();
    await a.close();
  }
});

Deno.test("--path adds a WebSocket path; / still upgrades; other paths do not", async () => {
  await using t = serve(["--path", "/signal"]);
  const a = await WsClient.connect(`${t.ws}/signal`);
  const b = await WsClient.connect(`${t.ws}/`);
  const other = await RawWsClient.connect(t.port, { path: "/elsewhere" });
  try {
    a.send(["join", "a", "r"]);
    assert.deepEqual(await a.next(), ["join", "r:a"]);
    b.send(["join", "b", "r"]);
    assert.deepEqual(await b.next(), ["join", "r:b"]);
    assert.deepEqual(await a.next(), ["stun", "r:a", "r:b", false]);
    assert.equal(other.handshake.status, 404);
  } finally {
    other.close();
    await a.close();
    await b.close();
  }
});

Deno.test("--allowed-origins: 403 for a missing or unlisted Origin, 101 for a listed one", async () => {
  await using t = serve(["--allowed-origins", "https://good.example, https://also.example"]);
  const clients: RawWsClient[] = [];
  try {
    for (
      const [origin, status] of [
        ["https://evil.example", 403],
        [undefined, 403],
        ["https://good.example.evil", 403],
        ["https://good.example", 101],
        ["https://also.example", 101],
      ] as const
    ) {
      const c = await RawWsClient.connect(t.port, { origin });
      clients.push(c);
      assert.equal(c.handshake.status, status, `Origin ${origin}`);
    }
    // A browser-like client from an allowed origin talks normally.
    const ok = await WsClient.connect(`${t.ws}/`, { headers: { origin: "https://good.example" } });
    ok.send(["ping"]);
    assert.deepEqual(await ok.next(), ["pong"]);
    await ok.close();
    await assert.rejects(
      WsClient.connect(`${t.ws}/`, { headers: { origin: "https://evil.example" } }),
    );
    assert.equal(metric(await metrics(t), "signal_origin_refused_total"), 4);
  } finally {
    for (const c of clients) c.close();
  }
});

Deno.test("the status page is HTML with the version and live counts", async () => {
  await using t = serve();
  let r = await get(`${t.http}/`);
  assert.equal(r.status, 200);
  assert.match(r.headers.get("content-type") ?? "", /^text\/html/);
  assert.match(r.body, /^<!doctype html>/);
  assert.ok(r.body.includes(VERSION));
  assert.ok(r.body.includes(`ws://127.0.0.1:${t.port}/`));
  assert.match(r.body, /id="connections">0</);

  const a = await joined(t, "alice", "one");
  const b = await joined(t, "bob", "two");
  const c = await WsClient.connect(`${t.ws}/`);
  try {
    r = await get(`${t.http}/`);
    assert.match(r.body, /id="connections">3</);
    assert.match(r.body, /id="rooms">2</);
    assert.match(r.body, /id="idents">2</);
  } finally {
    await a.close();
    await b.close();
    await c.close();
  }
  await eventually("the page shows no connections", async () => {
    return /id="connections">0</.test((await get(`${t.http}/`)).body);
  });
});

Deno.test("healthz, readyz and robots.txt", async () => {
  await using t = serve();
  let r = await get(`${t.http}/healthz`);
  assert.deepEqual([r.status, r.body], [200, "ok\n"]);
  r = await get(`${t.http}/readyz`);
  assert.deepEqual([r.status, r.body], [200, "ready\n"]);
  r = await get(`${t.http}/robots.txt`);
  assert.equal(r.status, 200);
  assert.match(r.headers.get("content-type") ?? "", /^text\/plain/);
  assert.equal(r.body, "User-agent: *\nDisallow: /\n");
});

Deno.test("an unknown path is a 404 HTML page that escapes the path", async () => {
  await using t = serve();
  const r = await get(`${t.http}/no/such/page`);
  assert.equal(r.status, 404);
  assert.match(r.headers.get("content-type") ?? "", /^text\/html/);
  assert.ok(r.body.includes("<code>/no/such/page</code>"));
  const raw = await Deno.connect({ hostname: "127.0.0.1", port: t.port });
  try {
    // Sent by hand: fetch would percent-encode the angle brackets.
    await raw.write(
      new TextEncoder().encode("GET /<b>x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    );
    const chunks: Uint8Array[] = [];
    const buf = new Uint8Array(8192);
    for (let n = await raw.read(buf); n !== null; n = await raw.read(buf)) {
      chunks.push(buf.slice(0, n));
    }
    const text = new TextDecoder().decode(new Uint8Array(chunks.flatMap((c) => [...c])));
    if (text.startsWith("HTTP/1.1 404")) {
      assert.ok(!text.includes("<b>x"), "the path must be escaped");
    } else {
      // hyper may refuse the raw bracket outright; that is just as safe.
      assert.match(text, /^HTTP\/1\.1 400/);
    }
  } finally {
    raw.close();
  }
});

Deno.test("HEAD answers like GET without a body", async () => {
  await using t = serve();
  for (const path of ["/", "/healthz", "/readyz", "/metrics", "/robots.txt", "/nope"]) {
    const g = await get(`${t.http}${path}`);
    const h = await get(`${t.http}${path}`, { method: "HEAD" });
    assert.equal(h.status, g.status, path);
    assert.equal(h.headers.get("content-type"), g.headers.get("content-type"), path);
    assert.equal(h.body, "", path);
    assert.ok(g.body.length > 0, path);
  }
});

Deno.test("methods other than GET and HEAD get 405 with Allow", async () => {
  await using t = serve();
  for (const [method, path] of [["POST", "/"], ["PUT", "/healthz"], ["DELETE", "/metrics"]]) {
    const r = await get(`${t.http}${path}`, { method, body: method === "DELETE" ? null : "x" });
    assert.equal(r.status, 405, `${method} ${path}`);
    assert.equal(r.headers.get("allow"), "GET, HEAD");
  }
});

Deno.test("/metrics is Prometheus text whose values follow clients coming and going", async () => {
  await using t = serve();
  let m = await metrics(t);
  assert.equal(metric(m, "signal_connections"), 0);
  assert.equal(metric(m, 'signal_frames_in_total{call="join"}'), 0);
  assert.equal(metric(m, 'signal_errors_total{code="unknown-peer"}'), 0);
  assert.ok(metric(m, "process_resident_memory_bytes") > 0);

  const a = await joined(t, "alice", "room");
  const b = await joined(t, "bob", "room");
  try {
    await a.next(); // stun
    await b.next(); // stun
    b.send(["signal", "room:bob", "room:alice", { n: 1 }]);
    await a.next();
    b.send(["signal", "room:bob", "room:nobody", { n: 2 }]);
    assert.ok(isError(await b.next(), "signal", "unknown-peer"));
    b.send(["ping"]);
    await b.next();

    m = await metrics(t);
    assert.equal(metric(m, "signal_connections"), 2);
    assert.equal(metric(m, "signal_rooms"), 1);
    assert.equal(metric(m, "signal_idents"), 2);
    assert.equal(metric(m, "signal_connections_opened_total"), 2);
    assert.equal(metric(m, 'signal_frames_in_total{call="join"}'), 2);
    assert.equal(metric(m, 'signal_frames_in_total{call="signal"}'), 2);
    assert.equal(metric(m, 'signal_frames_in_total{call="ping"}'), 1);
    assert.equal(metric(m, 'signal_frames_out_total{type="stun"}'), 2);
    assert.equal(metric(m, 'signal_frames_out_total{type="signal"}'), 1);
    assert.equal(metric(m, 'signal_errors_total{code="unknown-peer"}'), 1);
    assert.ok(metric(m, "signal_relayed_bytes_total") > 0);

    await b.close();
    await a.next(); // bye
    await eventually("bob's connection is counted out", async () => {
      return metric(await metrics(t), "signal_connections") === 1;
    });
    m = await metrics(t);
    assert.equal(metric(m, "signal_idents"), 1);
    assert.equal(metric(m, 'signal_frames_out_total{type="bye"}'), 1);
    assert.equal(metric(m, "signal_connections_opened_total"), 2);
  } finally {
    await a.close();
    await b.close();
  }
  await eventually("no connections are left", async () => {
    return metric(await metrics(t), "signal_connections") === 0;
  });
});

Deno.test("wss and https with a certificate made by openssl", async () => {
  const dir = await Deno.makeTempDir({ prefix: "signal-tls-" });
  try {
    const cert = `${dir}/cert.pem`;
    const key = `${dir}/key.pem`;
    // rustls refuses a CA certificate as a server's own (CaUsedAsEndEntity)
    // and ignores the CN, so the self-signed leaf says CA:FALSE and has SANs.
    const openssl = await new Deno.Command("openssl", {
      args: [
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-days",
        "1",
        "-addext",
        "basicConstraints=critical,CA:FALSE",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-keyout",
        key,
        "-out",
        cert,
      ],
      stdout: "null",
      stderr: "piped",
    }).output();
    assert.ok(openssl.success, new TextDecoder().decode(openssl.stderr));

    await using t = serve(["--tls-cert", cert, "--tls-key", key], true);
    // The WebSocket `client` option takes the CA in-process; no subprocess needed.
    using client = Deno.createHttpClient({ caCerts: [await Deno.readTextFile(cert)] });
    const r = await get(`${t.http}/healthz`, { client });
    assert.deepEqual([r.status, r.body], [200, "ok\n"]);
    const page = await get(`${t.http}/`, { client });
    assert.ok(page.body.includes(`wss://localhost:${t.port}/`));

    const a = await WsClient.connect(`${t.ws}/`, { client });
    const b = await WsClient.connect(`wss://127.0.0.1:${t.port}/`, { client });
    try {
      a.send(["join", "a", "secure"]);
      assert.deepEqual(await a.next(), ["join", "secure:a"]);
      b.send(["join", "b", "secure"]);
      assert.deepEqual(await b.next(), ["join", "secure:b"]);
      assert.deepEqual(await a.next(), ["stun", "secure:a", "secure:b", false]);
      assert.deepEqual(await b.next(), ["stun", "secure:b", "secure:a", true]);
      b.send(["signal", "secure:b", "secure:a", { type: "answer" }]);
      assert.deepEqual(await a.next(), ["signal", "secure:a", "secure:b", { type: "answer" }]);
    } finally {
      await a.close();
      await b.close();
    }
    // Without the CA the certificate is not trusted.
    await assert.rejects(WsClient.connect(`${t.ws}/`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("graceful shutdown: clients get 1001, readyz is 503 meanwhile, finished settles", async () => {
  const t = serve(["--shutdown-timeout", "2"]);
  const a = await joined(t, "alice", "room");
  const b = await joined(t, "bob", "room");
  // A client that never answers the close handshake keeps the drain open.
  const raw = await RawWsClient.connect(t.port);
  try {
    await a.next(); // stun
    await b.next(); // stun
    const stopping = t.server.shutdown();
    const r = await get(`${t.http}/readyz`);
    assert.deepEqual([r.status, r.body], [503, "shutting down\n"]);
    const late = await RawWsClient.connect(t.port);
    late.close();
    assert.equal(late.handshake.status, 503);
    assert.equal((await a.closed()).code, 1001);
    assert.equal((await b.closed()).code, 1001);
    assert.deepEqual(await raw.readUntilClose(), { code: 1001, reason: "server shutting down" });
    assert.equal(t.server.broker.connections, 0);
    assert.equal(t.server.broker.idents, 0);
    // Still draining (raw never answered the close): the listener is up.
    assert.equal((await get(`${t.http}/readyz`)).status, 503);
    await withTimeout(stopping, 10_000, "shutdown");
    await withTimeout(t.server.finished, 10_000, "finished");
    await assert.rejects(fetch(`${t.http}/healthz`));
  } finally {
    raw.close();
    await a.close();
    await b.close();
    await t.server.shutdown();
  }
});

Deno.test("a reader that stops reading is closed once --max-buffered-bytes stays queued", async () => {
  await using t = serve(["--max-buffered-bytes", "65536", "--rate", "0"]);
  const flooder = await joined(t, "flood", "room");
  const healthy = await joined(t, "healthy", "room");
  const slow = await RawWsClient.connect(t.port);
  try {
    assert.deepEqual(await flooder.next(), ["stun", "room:flood", "room:healthy", false]);
    await healthy.next(); // stun for flood
    const payload = "x".repeat(60_000);

    // A burst far over the limit to a reader that keeps up is not slowness:
    // Deno counts frames as buffered until a later turn of the event loop.
    for (let i = 0; i < 20; i++) flooder.send(["signal", "room:flood", "room:healthy", i]);
    for (let i = 0; i < 20; i++) flooder.send(["signal", "room:flood", "room:healthy", payload]);
    assert.deepEqual(await flooder.drain(), []);
    for (let i = 0; i < 20; i++) {
      assert.deepEqual(await healthy.next(), ["signal", "room:healthy", "room:flood", i]);
    }
    for (let i = 0; i < 20; i++) {
      assert.deepEqual(await healthy.next(), ["signal", "room:healthy", "room:flood", payload]);
    }

    await slow.send(["join", "slow", "room"]);
    assert.deepEqual(await flooder.next(), ["stun", "room:flood", "room:slow", false]);
    assert.deepEqual(await healthy.next(), ["stun", "room:healthy", "room:slow", false]);
    // From here on `slow` never reads: the kernel's socket buffers fill,
    // then the server's own queue, which is what the limit bounds.
    let sent = 0;
    let bye: Received | undefined;
    while (bye === undefined) {
      for (let i = 0; i < 20; i++) flooder.send(["signal", "room:flood", "room:slow", payload]);
      sent += 20;
      for (const m of await flooder.drain(10_000)) {
        if (Array.isArray(m) && m[0] === "bye") bye = m;
        else assert.ok(isError(m, "signal", "unknown-peer"), JSON.stringify(m).slice(0, 80));
      }
      // A bound so a broken limit fails instead of eating memory: 200 MB.
      assert.ok(sent < 3400, "the slow reader was never closed");
      // Paced so the server's grace period passes on a loaded machine too.
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.deepEqual(bye, ["bye", "room:flood", "room:slow"]);
    assert.deepEqual(await healthy.next(), ["bye", "room:healthy", "room:slow"]);
    flooder.send(["signal", "room:flood", "room:slow", "more"]);
    assert.ok(isError(await flooder.next(), "signal", "unknown-peer"));
    const m = await metrics(t);
    assert.equal(metric(m, "signal_slow_reader_closed_total"), 1);
    assert.equal(metric(m, "signal_connections"), 2);
    assert.deepEqual(await healthy.drain(), []);
  } finally {
    slow.close();
    await flooder.close();
    await healthy.close();
  }
});

Deno.test("--rate 5 --burst 5: the sixth quick frame waits, and a full queue closes 1008", async () => {
  await using t = serve(["--rate", "5", "--burst", "5", "--max-queued-frames", "4"]);
  const c = await WsClient.connect(`${t.ws}/`);
  try {
    // Five pass at once; the sixth waits for a token (200 ms at 5/s) and is
    // answered then, not refused.
    const start = performance.now();
    for (let i = 0; i < 6; i++) c.send(["ping"]);
    for (let i = 0; i < 6; i++) assert.deepEqual(await c.next(), ["pong"]);
    assert.ok(performance.now() - start >= 150, "the sixth pong came before its token");
    // Now the budget is spent: four frames may wait, the fifth is one too many.
    for (let i = 0; i < 5; i++) c.send(["ping"]);
    const got = await c.next();
    assert.ok(isError(got, "frame", "rate-limited"), JSON.stringify(got));
    assert.deepEqual(await c.closed(), { code: 1008, reason: "rate limit abuse" });
    const m = await metrics(t);
    assert.equal(metric(m, 'signal_queue_closed_total{bound="frames"}'), 1);
    assert.equal(metric(m, 'signal_errors_total{code="rate-limited"}'), 1);
    assert.ok(metric(m, "signal_frames_delayed_total") >= 5);
    assert.equal(metric(m, "signal_connections"), 0);
  } finally {
    await c.close();
  }
});

Deno.test("defaults: a flood at 10x the rate is closed; RSS holds; a peer's ping stays fast", async () => {
  await using t = serve();
  const healthy = await WsClient.connect(`${t.ws}/`);
  const flooder = await WsClient.connect(`${t.ws}/`);
  try {
    // Warm up the code paths the flood takes, so RSS measures the flood alone.
    for (let i = 0; i < 300; i++) healthy.send(["ping"]);
    for (let i = 0; i < 300; i++) assert.deepEqual(await healthy.next(), ["pong"]);
    await metrics(t);
    const rssBefore = metric(await metrics(t), "process_resident_memory_bytes");
    // Set once the flooder's close settles: closed, or closed() timed out
    // (then `await closedInfo` below fails with that timeout).
    let floodClosed = false;
    const closedInfo = flooder.closed().finally(() => {
      floodClosed = true;
    });
    // Awaited below; this only keeps a timeout from being an uncaught error
    // while the ping loop is still running.
    closedInfo.catch(() => {});
    // 10x the default 200 frames a second: 20 frames every 10 ms, for at most 10 s.
    const flood = (async () => {
      const start = performance.now();
      let sent = 0;
      while (!floodClosed && performance.now() - start < 10_000) {
        const due = Math.floor(((performance.now() - start) / 1000) * 2000);
        for (; sent < due && flooder.readyState === WebSocket.OPEN; sent++) flooder.send(["ping"]);
        await new Promise((r) => setTimeout(r, 10));
      }
      return { sent, ms: performance.now() - start };
    })();
    const latencies: number[] = [];
    const deadline = performance.now() + 15_000;
    while (!floodClosed) {
      assert.ok(
        performance.now() < deadline,
        "the flooder was neither closed nor timed out within 15 s; the ping loop gave up",
      );
      const t0 = performance.now();
      healthy.send(["ping"]);
      assert.deepEqual(await healthy.next(), ["pong"]);
      latencies.push(performance.now() - t0);
      await new Promise((r) => setTimeout(r, 20));
    }
    const { sent, ms } = await flood;
    await closedInfo;
    const m = await metrics(t);
    const rssAfter = metric(m, "process_resident_memory_bytes");
    assert.equal(metric(m, 'signal_queue_closed_total{bound="frames"}'), 1);
    assert.equal(metric(m, "signal_connections"), 1);
    latencies.sort((a, b) => a - b);
    const max = latencies.at(-1)!;
    console.log(
      `flood: ${sent} frames in ${ms.toFixed(0)} ms, closed; healthy ping p50 ` +
        `${latencies[latencies.length >> 1].toFixed(1)} ms, max ${max.toFixed(1)} ms ` +
        `(${latencies.length} pings); RSS ${((rssAfter - rssBefore) / 2 ** 20).toFixed(1)} MiB`,
    );
    assert.ok(ms < 10_000, "the flooder was not closed within 10 s");
    assert.ok(max < 50, `a ping took ${max.toFixed(1)} ms during the flood`);
    assert.ok(rssAfter - rssBefore < 8 * 2 ** 20, `RSS grew by ${rssAfter - rssBefore} bytes`);
  } finally {
    await flooder.close();
    await healthy.close();
  }
});

Deno.test("--idle-timeout 1: a peer that never answers pings is dropped and its room gets bye", async () => {
  await using t = serve(["--idle-timeout", "1"]);
  const a = await joined(t, "alice", "room");
  const raw = await RawWsClient.connect(t.port);
  try {
    await raw.send(["join", "mute", "room"]);
    assert.deepEqual(await a.next(), ["stun", "room:alice", "room:mute", false]);
    const seen: string[] = [];
    const close = await withTimeout(
      (async () => {
        for (let f = await raw.readFrame(); f !== null; f = await raw.readFrame()) {
          seen.push(f.kind);
          if (f.kind === "close") return f;
        }
        return null;
      })(),
      5000,
      "the idle client to be dropped",
    );
    assert.ok(seen.includes("ping"), `the server should ping first (saw ${seen})`);
    assert.equal(close?.code, 1001, "the server should send a close frame with 1001");
    assert.deepEqual(await a.next(), ["bye", "room:alice", "room:mute"]);
    // alice's own client answers pings, so she is still connected.
    assert.deepEqual(await a.drain(), []);
    assert.equal(t.server.broker.connections, 1);
  } finally {
    raw.close();
    await a.close();
  }
});

Deno.test("a bug in the broker costs one connection (1011), never the process", async () => {
  await using t = serve();
  const peer = await joined(t, "peer", "r");
  const victim = await joined(t, "victim", "r");
  try {
    await peer.next(); // stun for victim
    await victim.next(); // stun for peer
    // Break the broker for one frame, as a bug would.
    const broker = t.server.broker;
    const frame = broker.frame.bind(broker);
    broker.frame = (conn, data) => {
      if (typeof data === "string" && data.includes("boom")) throw new Error("boom");
      frame(conn, data);
    };
    victim.send(["ping", "boom"]);
    assert.equal((await victim.closed()).code, 1011);
    // Its idents are gone, its peer was told, and everyone else is served.
    assert.deepEqual(await peer.next(), ["bye", "r:peer", "r:victim"]);
    peer.send(["ping"]);
    assert.deepEqual(await peer.next(), ["pong"]);
    assert.equal((await get(`${t.http}/healthz`)).status, 200);
    const m = await metrics(t);
    assert.equal(metric(m, "signal_internal_errors_total"), 1);
  } finally {
    await peer.close();
    await victim.close();
  }
});
