/**
 * What the auth tests share: tokens signed with `jose` the way a backend
 * would sign them, a JWKS served over HTTP by the test (with rotation and a
 * fetch count), the real server in-process, a WebSocket client that can
 * offer subprotocols, a hand-made upgrade to see a refusal's status and
 * headers, Ed25519 key idents and their proofs, and Prometheus text lookup.
 *
 * @module
 */

import * as jose from "jose";
import { base64url, proofMessage } from "../../lib/auth/proof.ts";
import { parseConfig } from "../../lib/config.ts";
import { type SignalServer, startServer } from "../../lib/server.ts";

/** Bound on any single wait, in ms. */
export const T = 5000;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// --- tokens --------------------------------------------------------------

/** A fresh HS256 secret of 48 characters (the server wants at least 32 bytes). */
export function newSecret(label = "secret"): string {
  return `${label}-${crypto.randomUUID()}`.padEnd(48, "x");
}

/** Registered claims a test sets by hand (times in Unix seconds, absolute). */
export interface Registered {
  /** `sub`. */
  sub?: string;
  /** `exp`, or null for none (default: one hour ahead). */
  exp?: number | null;
  /** `nbf`. */
  nbf?: number;
  /** `iat`. */
  iat?: number;
  /** `aud`. */
  aud?: string;
  /** `iss`. */
  iss?: string;
  /** A `kid` for the protected header. */
  kid?: string;
  /** More protected header parameters (`jku`, say). */
  header?: Record<string, unknown>;
}

/** Seconds since the epoch, now. */
export function nowSeconds(): number {
  return Math.floor(Date.now() / 1000);
}

/** Signs `claims` as a JWT with `key` and `alg`, as a backend would. */
export async function sign(
  alg: string,
  key: CryptoKey | Uint8Array,
  claims: Record<string, unknown>,
  r: Registered = {},
): Promise<string> {
  const jwt = new jose.SignJWT(claims)
    .setProtectedHeader({ ...r.header, alg, typ: "JWT", ...(r.kid ? { kid: r.kid } : {}) })
    .setIssuedAt(r.iat);
  if (r.sub !== undefined) jwt.setSubject(r.sub);
  if (r.exp !== null) jwt.setExpirationTime(r.exp ?? nowSeconds() + 3600);
  if (r.nbf !== undefined) jwt.setNotBefore(r.nbf);
  if (r.aud !== undefined) jwt.setAudience(r.aud);
  if (r.iss !== undefined) jwt.setIssuer(r.iss);
  return await jwt.sign(key);
}

/** An HS256 token signed with `secret`. */
export function hs256(
  secret: string,
  claims: Record<string, unknown>,
  r: Registered = {},
): Promise<string> {
  return sign("HS256", encoder.encode(secret), claims, r);
}

/** An asymmetric signing key with its public JWK (carrying `kid` and `alg`). */
export interface SigningKey {
  /** `ES256`, `EdDSA` or `RS256`. */
  readonly alg: string;
  /** The key id. */
  readonly kid: string;
  /** The private key. */
  readonly privateKey: CryptoKey;
  /** The public key as a JWK, as a JWKS lists it. */
  readonly jwk: jose.JWK;
  /** The public key as PEM (SPKI), as a key file holds it. */
  readonly pem: string;
  /** Signs `claims` with this key, naming its `kid`. */
  sign(claims: Record<string, unknown>, r?: Registered): Promise<string>;
}

/** Makes a key pair for `alg` with key id `kid`. */
export async function signingKey(
  alg: "ES256" | "EdDSA" | "RS256",
  kid: string,
): Promise<SigningKey> {
  const { privateKey, publicKey } = await jose.generateKeyPair(alg, { extractable: true });
  const jwk = { ...(await jose.exportJWK(publicKey)), kid, alg, use: "sig" };
  const pem = await jose.exportSPKI(publicKey);
  return {
    alg,
    kid,
    privateKey,
    jwk,
    pem,
    sign: (claims, r = {}) => sign(alg, privateKey, claims, { kid, ...r }),
  };
}

/** A JWKS the test serves on 127.0.0.1, whose keys it may change at any time. */
export interface JwksServer extends AsyncDisposable {
  /** `http://127.0.0.1:<port>/jwks.json`. */
  readonly url: string;
  /** The keys served now. */
  keys: jose.JWK[];
  /** How many times the document was fetched. */
  readonly fetches: number;
  /** Stops serving. */
  close(): Promise<void>;
}

/** Serves `keys` as a JWKS (`Deno.serve` on 127.0.0.1, port 0). */
export function serveJwks(keys: jose.JWK[]): JwksServer {
  let fetches = 0;
  const state = { keys };
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    if (new URL(req.url).pathname !== "/jwks.json") return new Response("no", { status: 404 });
    fetches++;
    return Response.json({ keys: state.keys });
  });
  const close = async () => {
    await server.shutdown();
  };
  return {
    url: `http://127.0.0.1:${server.addr.port}/jwks.json`,
    get keys() {
      return state.keys;
    },
    set keys(k: jose.JWK[]) {
      state.keys = k;
    },
    get fetches() {
      return fetches;
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}

// --- the server ----------------------------------------------------------

/** A server running in this process. */
export interface AuthServer extends AsyncDisposable {
  /** The server. */
  readonly server: SignalServer;
  /** Its port on 127.0.0.1. */
  readonly port: number;
  /** `ws://127.0.0.1:<port>/`. */
  readonly ws: string;
  /** `http://127.0.0.1:<port>`. */
  readonly http: string;
  /** Shuts it down and waits until it has stopped. */
  stop(): Promise<void>;
}

/** Starts the real server on a free loopback port with `args` (default settings besides). */
export function serve(args: readonly string[]): AuthServer {
  const cmd = parseConfig({
    args: ["--host", "127.0.0.1", "--port", "0", "--shutdown-timeout", "5", ...args],
    env: () => undefined,
    readTextFile: (p) => Deno.readTextFileSync(p),
  });
  if (cmd.kind !== "run") throw new Error(`unexpected command ${cmd.kind}`);
  const server = startServer(cmd.config, { version: "test" });
  let stopped: Promise<void> | undefined;
  const stop = () =>
    stopped ??= (async () => {
      await server.shutdown();
      await server.finished;
    })();
  return {
    server,
    port: server.port,
    ws: `ws://127.0.0.1:${server.port}/`,
    http: `http://127.0.0.1:${server.port}`,
    stop,
    [Symbol.asyncDispose]: stop,
  };
}

// --- a WebSocket client with subprotocols ----------------------------------

/** How a socket ended. */
export interface Closed {
  /** The close code. */
  code: number;
  /** The close reason. */
  reason: string;
}

/** Rejects after `ms` unless `p` settles first. */
export function within<V>(p: Promise<V>, ms: number, what: string): Promise<V> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

/**
 * A WebSocket (Deno's, as a browser would open it: subprotocols, no
 * headers) whose messages queue until taken, so none is missed.
 */
export class Ws {
  readonly #ws: WebSocket;
  readonly #queue: unknown[] = [];
  readonly #waiters: ((m: unknown) => void)[] = [];
  readonly #closed: Promise<Closed>;

  private constructor(ws: WebSocket) {
    this.#ws = ws;
    ws.onmessage = (e: MessageEvent<string>) => {
      const m = JSON.parse(e.data);
      const w = this.#waiters.shift();
      if (w) w(m);
      else this.#queue.push(m);
    };
    this.#closed = new Promise((resolve) => {
      ws.addEventListener("close", (e) => resolve({ code: e.code, reason: e.reason }));
    });
  }

  /** Opens `url` offering `protocols`; rejects (after the socket closed) if it never opens. */
  static async open(url: string, protocols?: string[]): Promise<Ws> {
    const ws = new WebSocket(url, protocols);
    const c = new Ws(ws);
    const opened = new Promise<void>((resolve, reject) => {
      ws.onopen = () => resolve();
      ws.onerror = (e) => reject(new Error(`cannot open ${url}: ${(e as ErrorEvent).message}`));
    });
    try {
      await within(opened, T, `open ${url}`);
    } catch (e) {
      await within(c.#closed, T, "the failed socket to close");
      throw e;
    }
    ws.onerror = () => {};
    return c;
  }

  /** The subprotocol the server chose ("" for none). */
  get protocol(): string {
    return this.#ws.protocol;
  }

  /** The socket's `readyState`. */
  get readyState(): number {
    return this.#ws.readyState;
  }

  /** Sends a value as JSON. */
  send(m: unknown): void {
    this.#ws.send(typeof m === "string" ? m : JSON.stringify(m));
  }

  /** The next message. */
  next(ms = T): Promise<unknown> {
    const q = this.#queue.shift();
    if (q !== undefined) return Promise.resolve(q);
    let w!: (m: unknown) => void;
    const p = new Promise<unknown>((resolve) => this.#waiters.push(w = resolve));
    return within(p, ms, "the next message").catch((e) => {
      const i = this.#waiters.indexOf(w);
      if (i >= 0) this.#waiters.splice(i, 1);
      throw e;
    });
  }

  /** Sends `m` and returns the next message. */
  call(m: unknown, ms = T): Promise<unknown> {
    this.send(m);
    return this.next(ms);
  }

  /**
   * Everything received before the `["pong"]` of a ping sent now: the server
   * handles a connection's frames in order, so nothing pending is missed.
   */
  async drain(ms = T): Promise<unknown[]> {
    this.send(["ping"]);
    const got: unknown[] = [];
    for (;;) {
      const m = await this.next(ms);
      if (Array.isArray(m) && m.length === 1 && m[0] === "pong") return got;
      got.push(m);
    }
  }

  /** Resolves with how the socket closed. */
  closed(ms = T): Promise<Closed> {
    return within(this.#closed, ms, "the socket to close");
  }

  /** Closes (if open) and waits until closed. */
  async close(): Promise<Closed> {
    if (this.#ws.readyState <= WebSocket.OPEN) this.#ws.close(1000);
    return await this.closed();
  }
}

/** Closes every socket given, ignoring failures. */
export async function closeAll(sockets: (Ws | undefined)[]): Promise<void> {
  await Promise.all(sockets.map((s) => s?.close().catch(() => {})));
}

// --- a hand-made upgrade ----------------------------------------------------

/** The answer to an upgrade request. */
export interface UpgradeAnswer {
  /** The HTTP status (101 when upgraded). */
  status: number;
  /** Response headers, lower-cased names. */
  headers: Map<string, string>;
  /** The body of a refusal (what arrived after the head, as text). */
  body: string;
}

/**
 * Sends a WebSocket upgrade for `path` with extra header lines to
 * 127.0.0.1:`port` over plain TCP and reads the answer's head (and a
 * refusal's body); the connection is closed afterwards.
 */
export async function upgrade(
  port: number,
  path = "/",
  headers: Record<string, string> = {},
): Promise<UpgradeAnswer> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
    const lines = [
      `GET ${path} HTTP/1.1`,
      `Host: 127.0.0.1:${port}`,
      "Upgrade: websocket",
      "Connection: Upgrade",
      `Sec-WebSocket-Key: ${key}`,
      "Sec-WebSocket-Version: 13",
      ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
    ];
    const req = encoder.encode(lines.join("\r\n") + "\r\n\r\n");
    for (let off = 0; off < req.length;) off += await conn.write(req.subarray(off));
    let text = "";
    const buf = new Uint8Array(16 * 1024);
    const read = async () => {
      const n = await conn.read(buf);
      if (n === null) return false;
      text += decoder.decode(buf.subarray(0, n), { stream: true });
      return true;
    };
    while (!text.includes("\r\n\r\n")) {
      if (!(await within(read(), T, "the upgrade answer"))) break;
    }
    const end = text.indexOf("\r\n\r\n");
    const head = text.slice(0, end).split("\r\n");
    const status = Number(head[0].split(" ")[1]);
    const map = new Map<string, string>();
    for (const line of head.slice(1)) {
      const i = line.indexOf(":");
      if (i > 0) map.set(line.slice(0, i).trim().toLowerCase(), line.slice(i + 1).trim());
    }
    if (status !== 101) {
      const length = Number(map.get("content-length") ?? "0");
      while (encoder.encode(text.slice(end + 4)).length < length) {
        if (!(await within(read(), T, "the refusal's body"))) break;
      }
    }
    return { status, headers: map, body: status === 101 ? "" : text.slice(end + 4) };
  } finally {
    conn.close();
  }
}

// --- key idents ------------------------------------------------------------

/** An Ed25519 key pair and the key ident of its public key. */
export interface KeyIdent {
  /** The key pair (private key not extractable). */
  readonly keys: CryptoKeyPair;
  /** base64url of the raw public key: 43 characters. */
  readonly ident: string;
  /** The signature that proves `ident` for `challenge`, base64url. */
  prove(challenge: string): Promise<string>;
}

/** Makes a key ident. */
export async function keyIdent(): Promise<KeyIdent> {
  const keys = await crypto.subtle.generateKey({ name: "Ed25519" }, false, [
    "sign",
    "verify",
  ]) as CryptoKeyPair;
  const raw = new Uint8Array(await crypto.subtle.exportKey("raw", keys.publicKey));
  const ident = base64url(raw);
  return {
    keys,
    ident,
    async prove(challenge) {
      const sig = await crypto.subtle.sign(
        "Ed25519",
        keys.privateKey,
        proofMessage(challenge, ident),
      );
      return base64url(new Uint8Array(sig));
    },
  };
}

/** Asks `ws` for a challenge and proves `key` with it; returns the `prove` frame it sent. */
export async function proveOn(ws: Ws, key: KeyIdent): Promise<[string, string, string]> {
  const c = await ws.call(["challenge"]) as [string, string];
  if (c[0] !== "challenge") throw new Error(`not a challenge: ${JSON.stringify(c)}`);
  const frame: [string, string, string] = ["prove", key.ident, await key.prove(c[1])];
  const r = await ws.call(frame);
  if (JSON.stringify(r) !== JSON.stringify(["prove", key.ident])) {
    throw new Error(`proof refused: ${JSON.stringify(r)}`);
  }
  return frame;
}

// --- metrics ---------------------------------------------------------------

/** GETs `/metrics` (with a bearer token when given): status and body. */
export async function metrics(
  http: string,
  bearer?: string,
): Promise<{ status: number; body: string; headers: Headers }> {
  const r = await fetch(`${http}/metrics`, {
    headers: bearer === undefined ? {} : { authorization: `Bearer ${bearer}` },
  });
  return { status: r.status, headers: r.headers, body: await r.text() };
}

/** The value of the sample `series` (e.g. `x_total{reason="expired"}`) in Prometheus text. */
export function sample(text: string, series: string): number | undefined {
  for (const line of text.split("\n")) {
    if (line.startsWith(series + " ")) return Number(line.slice(series.length + 1));
  }
  return undefined;
}
