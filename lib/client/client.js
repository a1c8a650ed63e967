// @ts-self-types="./client.d.ts"
/**
 * Client library for the DIVA signal protocol, for browsers and Deno.
 *
 * - {@link SignalClient}: one WebSocket to the signal server; requests
 *   (`ident`, `join`, `leave`, `ice`, `ping`) as promises, server messages as
 *   typed events; reconnects with exponential backoff and jitter after a drop
 *   and resumes its session (every ident held on, peers see nothing) or,
 *   when the server has no sessions or refuses the resume, joins its rooms
 *   again. With `token` it presents a bearer token (JWT)
 *   and refreshes it before it expires; with `keyPair` it proves its key
 *   ident (an Ed25519 public key) before joining with it.
 * - {@link Mesh}: one `RTCPeerConnection` with a data channel per peer of a
 *   room, negotiated through the signal server. Its signal payloads use
 *   simple-peer's format (`{type:"offer"|"answer", sdp}`,
 *   `{type:"candidate", candidate}`), so it talks to DIVA clients built on
 *   simple-peer. Peer connections outlive a drop of the signal socket: only
 *   `bye`, a failed or closed connection, a leave or `close()` end a pair.
 *
 * This file is served as-is at `/client.js` (no build step); its types live
 * in `client.d.ts` beside it.
 *
 * @module
 */

/** Calls whose replies settle a promise. */
const REQUEST_KINDS = ["ident", "join", "leave", "ice", "ping", "auth", "challenge", "prove"];

/** The subprotocol that carries a token in the entry after it. */
const TOKEN_PROTOCOL = "jwt";

/** What a signed ident proof starts with (see docs/security.md). */
const PROOF_CONTEXT = "diva-ident-proof";

/** Refreshes are never closer together than this, in ms. */
const MIN_REFRESH_MS = 250;

/** The longest delay a timer takes (about 24.8 days); a longer one would fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Signals kept while a session's socket is down, sent once it resumes. */
const MAX_PARKED_SIGNALS = 256;

/** The close code of a socket whose session was resumed on another connection. */
const RESUMED_ELSEWHERE = 4001;

/**
 * Unpadded base64url of `bytes`.
 * @param {Uint8Array} bytes
 */
function base64url(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
  return btoa(s).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

/**
 * The claims of a JWT, decoded without verifying it (the server verifies;
 * the client only wants `exp` to know when to refresh), or undefined.
 * @param {string} token
 * @returns {Record<string, unknown> | undefined}
 */
export function tokenClaims(token) {
  const part = String(token).split(".")[1];
  if (part === undefined || !/^[A-Za-z0-9_-]*$/.test(part)) return undefined;
  try {
    const b64 = part.replaceAll("-", "+").replaceAll("_", "/");
    const bin = atob(b64 + "===".slice((b64.length + 3) % 4));
    const json = new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0)));
    const claims = JSON.parse(json);
    return claims !== null && typeof claims === "object" && !Array.isArray(claims)
      ? claims
      : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Makes an Ed25519 key pair for a key ident: the public key exportable
 * (it is the ident), the private key not (it can still be kept in
 * IndexedDB, which stores `CryptoKey`s as they are).
 * @returns {Promise<CryptoKeyPair>}
 */
export async function generateKeyPair() {
  return /** @type {CryptoKeyPair} */ (
    await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"])
  );
}

/**
 * The key ident of an Ed25519 public key: its 32 raw bytes in unpadded
 * base64url (43 characters).
 * @param {CryptoKey} publicKey
 */
export async function keyIdentOf(publicKey) {
  return base64url(new Uint8Array(await crypto.subtle.exportKey("raw", publicKey)));
}

/**
 * The signature (base64url) that proves `ident` for `challenge` with its
 * private key.
 * @param {CryptoKey} privateKey
 * @param {string} challenge
 * @param {string} ident
 */
export async function signProof(privateKey, challenge, ident) {
  const message = new TextEncoder().encode(`${PROOF_CONTEXT}\n${challenge}\n${ident}`);
  return base64url(new Uint8Array(await crypto.subtle.sign("Ed25519", privateKey, message)));
}

/**
 * Reports an exception thrown by an event listener without breaking the
 * caller's loop (a listener's bug must not stop the client).
 * @param {unknown} e
 */
function report(e) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(e);
  else {setTimeout(() => {
      throw e;
    }, 0);}
}

/** A minimal typed event emitter. */
export class Emitter {
  /** @type {Map<string, Set<(event: unknown) => void>>} */
  #listeners = new Map();

  /**
   * Calls `listener` for every event of `type`; returns a function that
   * removes it.
   * @param {string} type
   * @param {(event: unknown) => void} listener
   */
  on(type, listener) {
    let set = this.#listeners.get(type);
    if (set === undefined) this.#listeners.set(type, set = new Set());
    set.add(listener);
    return () => this.off(type, listener);
  }

  /**
   * Removes a listener added with {@link Emitter.on}.
   * @param {string} type
   * @param {(event: unknown) => void} listener
   */
  off(type, listener) {
    this.#listeners.get(type)?.delete(listener);
  }

  /**
   * The next event of `type` that passes `filter`; rejects after `timeout`
   * milliseconds when one is given.
   * @param {string} type
   * @param {(event: unknown) => boolean} [filter]
   * @param {number} [timeout]
   * @returns {Promise<unknown>}
   */
  once(type, filter, timeout) {
    return new Promise((resolve, reject) => {
      /** @type {ReturnType<typeof setTimeout> | undefined} */
      let timer;
      const off = this.on(type, (event) => {
        if (filter !== undefined && !filter(event)) return;
        off();
        clearTimeout(timer);
        resolve(event);
      });
      if (timeout !== undefined) {
        timer = setTimeout(() => {
          off();
          reject(new Error(`timed out after ${timeout} ms waiting for "${type}"`));
        }, timeout);
      }
    });
  }

  /**
   * Calls every listener of `type` with `event`.
   * @param {string} type
   * @param {unknown} event
   */
  emit(type, event) {
    const set = this.#listeners.get(type);
    if (set === undefined) return;
    for (const listener of [...set]) {
      try {
        listener(event);
      } catch (e) {
        report(e);
      }
    }
  }
}

/** A request the server answered with `["error", call, code, detail]`. */
export class SignalError extends Error {
  /**
   * @param {string} call
   * @param {string} code
   * @param {string} detail
   */
  constructor(call, code, detail) {
    super(`${call}: ${code}: ${detail}`);
    this.name = "SignalError";
    /** The call that failed (or "frame"). */
    this.call = call;
    /** The protocol error code. */
    this.code = code;
    /** The server's explanation. */
    this.detail = detail;
  }
}

/** Where the library was loaded from, as a WebSocket URL, when it was served over HTTP. */
function defaultUrl() {
  const here = new URL(import.meta.url);
  if (here.protocol !== "http:" && here.protocol !== "https:") {
    throw new TypeError("SignalClient needs a server URL");
  }
  return new URL("/", here).href.replace(/^http/, "ws");
}

/**
 * One connection to a signal server. Starts connecting at once.
 */
export class SignalClient extends Emitter {
  /** @type {string} */
  #url;
  /** @type {typeof WebSocket} */
  #WebSocket;
  /** @type {{initialDelay: number, maxDelay: number, factor: number, jitter: number} | false} */
  #reconnect;
  /** @type {number} */
  #requestTimeout;
  /** @type {number} */
  #heartbeat;
  /** @type {WebSocket | undefined} */
  #ws;
  /** @type {"connecting" | "open" | "reconnecting" | "closed"} */
  #state = "connecting";
  #attempt = 0;
  #opens = 0;
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  #retryTimer;
  /** @type {ReturnType<typeof setInterval> | undefined} */
  #heartbeatTimer;
  /** Frames waiting for the socket to open, with their requests. @type {{frame: string, req?: Req}[]} */
  #outgoing = [];
  /** Sent requests awaiting their reply, per call, in send order. @type {Record<string, Req[]>} */
  #inflight = Object.fromEntries(REQUEST_KINDS.map((k) => [k, []]));
  /** Global idents this client holds (or will hold again after a reconnect). @type {Map<string, {room: string, ident: string}>} */
  #held = new Map();
  /** @type {Promise<void> | undefined} */
  #closing;
  /** @type {(() => void) | undefined} */
  #closed;
  /** The token, or what makes a fresh one. @type {string | (() => string | Promise<string>) | undefined} */
  #token;
  /** Where the token goes. @type {"protocol" | "query" | "auth"} */
  #tokenIn;
  /** @type {number} */
  #refreshBefore;
  /** The token this socket was opened with (for `tokenIn: "auth"`). @type {string | undefined} */
  #current;
  /** Unix seconds the token in force expires at, if known. @type {number | undefined} */
  #exp;
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  #refreshTimer;
  /** @type {CryptoKeyPair | undefined} */
  #keyPair;
  /** @type {string | undefined} */
  #keyIdent;
  /** Settles once the key pair (if any) is ready. @type {Promise<void>} */
  #keyReady = Promise.resolve();
  /**
   * What this socket has proven: idents, and the proof in flight. A new
   * socket starts afresh (proofs are bound to their connection).
   * @type {{proven: Set<string>, proving: Promise<void> | undefined}}
   */
  #session = { proven: new Set(), proving: undefined };
  /** What the previous socket proved (a resume carries it over). @type {Set<string>} */
  #provenBefore = new Set();
  /** Whether to ask the server for a resumable session. */
  #wantSession = true;
  /**
   * The resume token of the session held (a secret: never logged, emitted
   * or put in an error). @type {string | undefined}
   */
  #resumeToken;
  /** Frames received since the last `session` or `resume` reply, while {@link #counting}. */
  #seen = 0;
  /** Whether frames count towards {@link #seen} (from a session or resume reply on). */
  #counting = false;
  /** Frames the server re-sends after a resume that this client already has: dropped. */
  #skip = 0;
  /**
   * Re-sent frames after those, which the old socket lost: handled as events,
   * but a reply among them answered a request that already failed with that
   * socket, so it settles no request made since.
   */
  #orphans = 0;
  /** The socket a resume was sent on, until its reply. @type {WebSocket | undefined} */
  #resuming;
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  #resumeTimer;
  /** Signals made while the session's socket is down, sent after the resume. @type {string[]} */
  #parked = [];
  /** Global idents given up after a resume, whose `leave` reply is no news. @type {Set<string>} */
  #quietLeaves = new Set();
  /** In a browser, what leaves when the page goes away. @type {(() => void) | undefined} */
  #onPageHide;

  /**
   * @param {string | URL} [url] the server's WebSocket URL (`ws:`/`wss:`;
   *   `http:`/`https:` are mapped); defaults to the server that served this file
   * @param {object} [options]
   */
  constructor(url, options = {}) {
    super();
    const o = /** @type {Record<string, any>} */ (options);
    this.#url = String(url ?? defaultUrl()).replace(/^http/, "ws");
    // Checked here, as the WebSocket constructor would: the socket is made later.
    if (!/^wss?:$/.test(new URL(this.#url).protocol)) {
      throw new SyntaxError(`not a WebSocket URL: ${this.#url}`);
    }
    this.#WebSocket = o.WebSocket ?? globalThis.WebSocket;
    this.#reconnect = o.reconnect === false ? false : {
      initialDelay: o.reconnect?.initialDelay ?? 250,
      maxDelay: o.reconnect?.maxDelay ?? 15000,
      factor: o.reconnect?.factor ?? 2,
      jitter: o.reconnect?.jitter ?? 0.5,
    };
    this.#requestTimeout = o.requestTimeout ?? 10000;
    this.#heartbeat = o.heartbeat ?? 30000;
    if (o.token !== undefined && typeof o.token !== "string" && typeof o.token !== "function") {
      throw new TypeError("options.token must be a string or a function returning one");
    }
    this.#token = o.token;
    this.#tokenIn = o.tokenIn ?? "protocol";
    if (!["protocol", "query", "auth"].includes(this.#tokenIn)) {
      throw new TypeError('options.tokenIn must be "protocol", "query" or "auth"');
    }
    this.#refreshBefore = o.refreshBefore ?? 60000;
    this.#wantSession = o.session !== false;
    if (typeof document !== "undefined" && typeof globalThis.addEventListener === "function") {
      // A page that goes away (a closed tab, a navigation) means it: without
      // this, peers would wait for the session's grace to hear of it.
      this.#onPageHide = () => this.#leaveSession();
      globalThis.addEventListener("pagehide", this.#onPageHide);
    }
    if (o.keyPair !== undefined && o.keyPair !== false) {
      this.#keyReady = (async () => {
        const pair = o.keyPair === true ? await generateKeyPair() : o.keyPair;
        this.#keyIdent = await keyIdentOf(pair.publicKey);
        this.#keyPair = pair;
      })().catch((e) => {
        this.emit("error", { call: "prove", code: "no-key", detail: String(e?.message ?? e) });
      });
    }
    this.#connect();
  }

  /**
   * Makes an Ed25519 key pair for a key ident (see {@link generateKeyPair}).
   * @returns {Promise<CryptoKeyPair>}
   */
  static generateKeyPair() {
    return generateKeyPair();
  }

  /**
   * The key ident of an Ed25519 public key (see {@link keyIdentOf}).
   * @param {CryptoKey} publicKey
   */
  static keyIdentOf(publicKey) {
    return keyIdentOf(publicKey);
  }

  /**
   * This client's key ident (43 base64url characters), when it was given or
   * made a key pair; known by the time {@link SignalClient.opened} resolves.
   */
  get keyIdent() {
    return this.#keyIdent;
  }

  /** Unix seconds at which the token in force expires, when known. */
  get tokenExpiry() {
    return this.#exp;
  }

  /** The server URL. */
  get url() {
    return this.#url;
  }

  /** Where the connection stands. */
  get state() {
    return this.#state;
  }

  /** The global idents held, in join order. */
  get joined() {
    return [...this.#held.keys()];
  }

  /**
   * Whether the client holds a resumable session: after a drop it would
   * resume it rather than join its rooms again.
   */
  get resumable() {
    return this.#resumeToken !== undefined;
  }

  /** Resolves once the socket is open (at once if it is). */
  opened() {
    if (this.#state === "open") return Promise.resolve();
    if (this.#state === "closed") return Promise.reject(new Error("client closed"));
    return /** @type {Promise<void>} */ (this.once("open").then(() => undefined));
  }

  /** Asks for a fresh ident; resolves with it. */
  ident() {
    return this.#request("ident", "", '["ident"]');
  }

  /**
   * Joins `room` as `ident` (a fresh one from the server if omitted);
   * resolves with the global ident `room:ident`.
   * @param {string} room
   * @param {string} [ident]
   */
  async join(room, ident) {
    ident ??= await this.ident();
    const g = room + ":" + ident;
    await this.#readyToJoin(ident);
    await this.#request("join", g, JSON.stringify(["join", ident, room]));
    this.#held.set(g, { room, ident });
    return g;
  }

  /**
   * Presents a token on the open connection (`["auth", token]`): `token`,
   * or a fresh one from the `token` option's function. Resolves with what
   * the server read from it. The client does this by itself before the
   * token expires; call it to hand over a new grant at once.
   * @param {string} [token]
   * @returns {Promise<{sub: string, exp: number | null}>}
   */
  async auth(token) {
    token ??= await this.#freshToken();
    const reply = await this.#request("auth", "", JSON.stringify(["auth", token]));
    if (typeof this.#token === "string") this.#token = token;
    this.#accepted(reply);
    return reply;
  }

  /**
   * Proves this client's key ident on the current connection
   * (`["challenge"]`, then `["prove", ident, signature]`). {@link join}
   * does it by itself before joining with the key ident.
   */
  async prove() {
    await this.#keyReady;
    if (this.#keyPair === undefined || this.#keyIdent === undefined) {
      throw new Error("no key pair: pass options.keyPair");
    }
    await this.opened();
    const session = this.#session;
    if (session.proven.has(this.#keyIdent)) return;
    session.proving ??= this.#proveOn(session, this.#keyIdent, this.#keyPair.privateKey)
      .finally(() => session.proving = undefined);
    await session.proving;
  }

  /**
   * @param {{proven: Set<string>, proving: Promise<void> | undefined}} session
   * @param {string} ident
   * @param {CryptoKey} privateKey
   */
  async #proveOn(session, ident, privateKey) {
    const challenge = await this.#request("challenge", "", '["challenge"]');
    const signature = await signProof(privateKey, String(challenge), ident);
    if (session !== this.#session) throw new Error("connection lost while proving");
    await this.#request("prove", ident, JSON.stringify(["prove", ident, signature]));
    session.proven.add(ident);
  }

  /**
   * Resolves once a join with `ident` may be sent: at once, unless it is
   * this client's key ident, which must be proven on the socket that is
   * open when the join goes out (a drop in between means proving again on
   * the next one). A server that knows no proofs (`unknown-call`) is joined
   * without one.
   * @param {string} ident
   */
  async #readyToJoin(ident) {
    await this.#keyReady;
    if (ident !== this.#keyIdent) return;
    for (let tries = 0; tries < 3; tries++) {
      try {
        await this.prove();
      } catch (e) {
        if (e instanceof SignalError && e.code === "unknown-call") return;
        if (this.#state !== "reconnecting") throw e;
      }
      // No task runs between this check and the caller's send.
      if (this.#state === "open" && this.#session.proven.has(ident)) return;
    }
    throw new Error("connection lost while proving");
  }

  /**
   * Leaves the room of global ident `g`.
   * @param {string} g
   */
  async leave(g) {
    if (!this.#held.has(g)) throw new SignalError("leave", "not-owner", `${g} is not held`);
    if (this.#state !== "open") {
      // The server forgot it with the old socket; only our wish to re-join stays.
      this.#held.delete(g);
      this.emit("leave", { global: g });
      return;
    }
    this.#held.delete(g);
    await this.#request("leave", g, JSON.stringify(["leave", g]));
  }

  /**
   * Relays `data` from our global ident `from` to the peer `to`. Returns
   * false when it can be neither sent nor kept. While a session's socket is
   * down (or its resume is under way) signals are kept, in order, and sent
   * once it resumes; they are dropped if it cannot be resumed (the client
   * then joins again, and every pair is announced afresh). Without a session,
   * a signal made while the socket is not open is dropped.
   * @param {string} from
   * @param {string} to
   * @param {unknown} data
   */
  signal(from, to, data) {
    if (this.#state === "closed") return false;
    const frame = JSON.stringify(["signal", from, to, data]);
    if (this.#state === "open" && this.#ws !== undefined && this.#resuming === undefined) {
      this.#ws.send(frame);
      return true;
    }
    if (this.#resumeToken === undefined || this.#parked.length >= MAX_PARKED_SIGNALS) return false;
    this.#parked.push(frame);
    return true;
  }

  /** Asks for ICE servers; resolves with an `RTCIceServer[]`. */
  ice() {
    return this.#request("ice", "", '["ice"]');
  }

  /** Round trip to the server. */
  ping() {
    return this.#request("ping", "", '["ping"]').then(() => undefined);
  }

  /**
   * Closes the connection for good (no reconnect); resolves once the socket
   * has closed. Pending requests reject.
   */
  close() {
    if (this.#closing !== undefined) return this.#closing;
    const ws = this.#ws;
    this.#leaveSession();
    if (this.#onPageHide !== undefined) {
      globalThis.removeEventListener("pagehide", this.#onPageHide);
      this.#onPageHide = undefined;
    }
    this.#state = "closed";
    this.#forgetSession();
    clearTimeout(this.#retryTimer);
    clearInterval(this.#heartbeatTimer);
    clearTimeout(this.#refreshTimer);
    const lost = new Error("client closed");
    for (const { req } of this.#outgoing.splice(0)) if (req) this.#settle(req, lost);
    this.#failInflight(lost);
    this.#closing = new Promise((resolve) => {
      if (ws === undefined || ws.readyState === this.#WebSocket.CLOSED) resolve();
      else {
        this.#closed = resolve;
        ws.close(1000, "client closed");
      }
    });
    return this.#closing;
  }

  /**
   * With a session, the server would keep the idents held for its grace
   * after the socket closes: leaving them now gives peers their `bye` at
   * once. The client still counts them as held (a page restored from the
   * back-forward cache reconnects and joins them again).
   */
  #leaveSession() {
    const ws = this.#ws;
    if (
      this.#resumeToken === undefined || this.#state !== "open" || this.#resuming !== undefined ||
      ws === undefined || ws.readyState !== this.#WebSocket.OPEN
    ) return;
    for (const g of this.#held.keys()) {
      this.#quietLeaves.add(g);
      ws.send(JSON.stringify(["leave", g]));
    }
  }

  /**
   * Sends a request and waits for its reply.
   * @param {string} kind
   * @param {string} key the global ident a join or leave is about
   * @param {string} frame
   * @returns {Promise<any>}
   */
  #request(kind, key, frame) {
    if (this.#state === "closed") return Promise.reject(new Error("client closed"));
    return new Promise((resolve, reject) => {
      /** @type {Req} */
      const req = { kind, key, resolve, reject, timer: undefined };
      req.timer = setTimeout(() => {
        this.#forget(req);
        reject(new Error(`${kind} timed out after ${this.#requestTimeout} ms`));
      }, this.#requestTimeout);
      this.#send(frame, req);
    });
  }

  /**
   * @param {string} frame
   * @param {Req} [req]
   */
  #send(frame, req) {
    if (this.#state === "open" && this.#ws !== undefined) {
      this.#ws.send(frame);
      if (req) this.#inflight[req.kind].push(req);
    } else this.#outgoing.push({ frame, req });
  }

  /** @param {Req} req */
  #forget(req) {
    const list = this.#inflight[req.kind];
    const i = list.indexOf(req);
    if (i >= 0) list.splice(i, 1);
    const j = this.#outgoing.findIndex((o) => o.req === req);
    if (j >= 0) this.#outgoing.splice(j, 1);
  }

  /**
   * @param {Req} req
   * @param {Error | undefined} error
   * @param {unknown} [value]
   */
  #settle(req, error, value) {
    clearTimeout(req.timer);
    if (error) req.reject(error);
    else req.resolve(value);
  }

  /**
   * Takes the request of `kind` that a reply answers: the one for `key`
   * when given, else the oldest.
   * @param {string} kind
   * @param {string} [key]
   */
  #take(kind, key) {
    const list = this.#inflight[kind];
    const i = key === undefined ? 0 : list.findIndex((r) => r.key === key);
    return i >= 0 && i < list.length ? list.splice(i, 1)[0] : undefined;
  }

  /** @param {Error} error */
  #failInflight(error) {
    for (const kind of REQUEST_KINDS) {
      for (const req of this.#inflight[kind].splice(0)) this.#settle(req, error);
    }
  }

  /** A token from the `token` option: the string, or a fresh one from the function. */
  async #freshToken() {
    const t = this.#token;
    const token = typeof t === "function" ? await t() : t;
    if (typeof token !== "string" || token === "") {
      throw new Error("the token function gave no token");
    }
    return token;
  }

  /**
   * Opens a socket: first the key pair and a token (a fresh one on every
   * attempt), then the WebSocket with the token where `tokenIn` says.
   */
  async #connect() {
    /** @type {string | undefined} */
    let token;
    try {
      await this.#keyReady;
      if (this.#token !== undefined) token = await this.#freshToken();
    } catch (e) {
      if (this.#state === "closed") return;
      this.emit("error", { call: "auth", code: "no-token", detail: String(e?.message ?? e) });
      this.#retry(1006, "no token");
      return;
    }
    if (this.#state === "closed") return;
    this.#current = token;
    this.#exp = undefined;
    /** @type {WebSocket} */
    let ws;
    try {
      if (token !== undefined && this.#tokenIn === "protocol") {
        ws = new this.#WebSocket(this.#url, [TOKEN_PROTOCOL, token]);
      } else if (token !== undefined && this.#tokenIn === "query") {
        const u = new URL(this.#url);
        u.searchParams.set("token", token);
        ws = new this.#WebSocket(u.href);
      } else ws = new this.#WebSocket(this.#url);
    } catch (e) {
      // A token that cannot be a subprotocol (not a JWT), say.
      this.emit("error", { call: "auth", code: "bad-token", detail: String(e?.message ?? e) });
      this.#retry(1006, "cannot connect");
      return;
    }
    this.#ws = ws;
    // Until a resume or a fresh start, what every socket of the session proved.
    this.#provenBefore = this.#resumeToken === undefined
      ? this.#session.proven
      : new Set([...this.#provenBefore, ...this.#session.proven]);
    this.#session = { proven: new Set(), proving: undefined };
    // Frames count again from this socket's session or resume reply.
    this.#counting = false;
    this.#skip = 0;
    this.#orphans = 0;
    this.#resuming = undefined;
    ws.binaryType = "arraybuffer";
    ws.onopen = () => this.#onOpen(ws);
    ws.onmessage = (e) => {
      if (this.#ws !== ws || typeof e.data !== "string") return;
      let orphan = false;
      if (this.#counting) {
        this.#seen++;
        // Re-sent after a resume, and already received before the drop.
        if (this.#skip > 0) {
          this.#skip--;
          return;
        }
        if (this.#orphans > 0) {
          this.#orphans--;
          orphan = true;
        }
      }
      this.#onMessage(e.data, orphan);
    };
    ws.onerror = () => {/* a close event follows */};
    ws.onclose = (e) => this.#onClose(ws, e.code, e.reason);
  }

  /** @param {WebSocket} ws */
  #onOpen(ws) {
    if (this.#ws !== ws || this.#state === "closed") return;
    const reconnected = this.#opens++ > 0;
    this.#state = "open";
    this.#attempt = 0;
    const token = this.#current;
    if (token !== undefined && this.#tokenIn === "auth") {
      // Sent before anything else: the server handles the frames after it
      // once the token is verified.
      this.#request("auth", "", JSON.stringify(["auth", token])).then(
        (reply) => this.#accepted(reply),
        () => {/* emitted as an error event */},
      );
    } else if (token !== undefined) {
      const exp = tokenClaims(token)?.exp;
      this.#exp = typeof exp === "number" ? exp : undefined;
      this.#scheduleRefresh();
    }
    if (this.#heartbeat > 0) {
      this.#heartbeatTimer = setInterval(() => {
        // A half-open TCP connection only shows as a missing pong.
        this.ping().catch(() => {
          if (this.#ws === ws && ws.readyState === this.#WebSocket.OPEN) ws.close(4000, "no pong");
        });
      }, this.#heartbeat);
    }
    if (this.#resumeToken !== undefined) {
      // Before anything else but the token: the frames after it run on the
      // resumed connection (or, refused, on a fresh one that joins again).
      this.#resuming = ws;
      ws.send(JSON.stringify(["resume", this.#resumeToken]));
      this.#resumeTimer = setTimeout(() => {
        // No answer: try again on a new socket (the token is still good if
        // the server never took the resume).
        if (this.#resuming === ws && this.#ws === ws) ws.close(4000, "resume timed out");
      }, this.#requestTimeout);
    } else this.#fresh(ws);
    for (const { frame, req } of this.#outgoing.splice(0)) this.#send(frame, req);
    this.emit("open", { reconnected });
  }

  /**
   * A connection with nothing to resume: asks for a session (when wanted)
   * and claims every held global ident again.
   * @param {WebSocket} ws
   */
  #fresh(ws) {
    if (this.#wantSession) ws.send('["session"]');
    for (const [g, { room, ident }] of this.#held) this.#rejoin(g, room, ident, 0);
  }

  /** Drops the session: the token, the count of frames, the signals kept for a resume. */
  #forgetSession() {
    this.#resumeToken = undefined;
    this.#counting = false;
    this.#skip = 0;
    this.#orphans = 0;
    this.#seen = 0;
    this.#parked.length = 0;
    this.#resuming = undefined;
    clearTimeout(this.#resumeTimer);
  }

  /**
   * The server resumed the session on this socket: the rotated token and
   * the idents it holds are ours, with no re-join. Frames it re-sends that
   * arrived before the drop are skipped; the rest are handled as usual.
   * @param {any} info `{token, idents, from}`
   */
  #resumed(info) {
    const ws = this.#ws;
    clearTimeout(this.#resumeTimer);
    this.#resuming = undefined;
    const o = info !== null && typeof info === "object" ? info : {};
    const idents = Array.isArray(o.idents) ? o.idents.map(String) : [];
    const had = this.#seen;
    // The server's count of frames before the first one that follows (a
    // server that does not say re-sends nothing this client already has).
    const from = typeof o.from === "number" && o.from >= 0 ? o.from : had;
    if (typeof o.token === "string" && o.token !== "") this.#resumeToken = o.token;
    else this.#forgetSession();
    // How many re-sent frames follow (without it, the ones skipped are all
    // that is known of them).
    const resent = typeof o.resent === "number" && o.resent >= 0 ? o.resent : undefined;
    this.#seen = 0;
    this.#counting = this.#resumeToken !== undefined;
    this.#skip = Math.max(0, had - from);
    if (resent !== undefined && this.#skip > resent) this.#skip = resent;
    this.#orphans = resent === undefined ? 0 : resent - this.#skip;
    for (const id of this.#provenBefore) this.#session.proven.add(id);
    // What the application sent while away goes first, in its order.
    for (const frame of this.#parked.splice(0)) ws?.send(frame);
    const onServer = new Set(idents);
    for (const g of idents) {
      if (this.#held.has(g)) continue;
      // Left while away, or claimed by a join this client was told failed.
      this.#quietLeaves.add(g);
      ws?.send(JSON.stringify(["leave", g]));
    }
    for (const [g, { room, ident }] of this.#held) {
      if (!onServer.has(g)) this.#rejoin(g, room, ident, 0);
    }
    this.emit("resume", { idents, missed: Math.max(0, from - had) });
  }

  /**
   * The server refused the resume (the grace ran out, the token is unknown,
   * or the connection may not take the idents): start afresh, as a client
   * without sessions would.
   * @param {string} detail
   */
  #resumeRefused(detail) {
    const ws = this.#ws;
    this.#forgetSession();
    this.emit("session", { resumable: false, detail });
    if (ws !== undefined && this.#state === "open") this.#fresh(ws);
  }

  /**
   * Claims a held global ident again after a reconnect. The server may not
   * have noticed the old socket's death yet (`ident-taken`), or a backing
   * service may be down (`unavailable`): both are retried.
   * @param {string} g
   * @param {string} room
   * @param {string} ident
   * @param {number} tries
   */
  #rejoin(g, room, ident, tries) {
    const ws = this.#ws;
    this.#readyToJoin(ident).then(() => {
      // After a drop while proving, the newer socket re-joins by itself.
      if (this.#ws === ws) return this.#request("join", g, JSON.stringify(["join", ident, room]));
    }).catch((e) => {
      if (this.#state !== "open" || !this.#held.has(g) || this.#ws !== ws) return;
      const code = e instanceof SignalError ? e.code : "";
      if ((code === "ident-taken" || code === "unavailable") && tries < 8) {
        this.#retryTimer = setTimeout(
          () => {
            if (this.#state === "open" && this.#held.has(g)) {
              this.#rejoin(g, room, ident, tries + 1);
            }
          },
          this.#delay(tries),
        );
      } else {
        this.#held.delete(g);
        this.emit("leave", { global: g });
      }
    });
  }

  /**
   * @param {WebSocket} ws
   * @param {number} code
   * @param {string} reason
   */
  #onClose(ws, code, reason) {
    if (this.#ws !== ws) return;
    clearInterval(this.#heartbeatTimer);
    clearTimeout(this.#refreshTimer);
    clearTimeout(this.#resumeTimer);
    this.#resuming = undefined;
    if (code === RESUMED_ELSEWHERE && this.#resumeToken !== undefined) {
      // Another connection took the session over: its token is spent.
      this.#forgetSession();
      this.emit("session", { resumable: false, detail: reason });
    }
    this.#failInflight(new Error(`connection lost (${code})`));
    if (this.#state === "closed") {
      this.#closed?.();
      this.emit("close", { code, reason, reconnecting: false, delay: 0 });
      return;
    }
    this.#retry(code, reason);
  }

  /**
   * After a socket closed (or could not be made): reconnect after a backoff
   * delay, or stop for good when reconnecting is off or pointless (a fixed
   * token the server said has expired).
   * @param {number} code
   * @param {string} reason
   */
  #retry(code, reason) {
    const expired = code === 1008 && reason === "token expired" &&
      typeof this.#token === "string";
    if (this.#reconnect === false || expired) {
      this.#state = "closed";
      this.#forgetSession();
      this.#closing = Promise.resolve();
      for (const { req } of this.#outgoing.splice(0)) {
        if (req) this.#settle(req, new Error("closed"));
      }
      this.emit("close", { code, reason, reconnecting: false, delay: 0 });
      return;
    }
    this.#state = "reconnecting";
    const delay = this.#delay(this.#attempt++);
    this.#retryTimer = setTimeout(() => {
      if (this.#state === "reconnecting") this.#connect();
    }, delay);
    this.emit("close", { code, reason, reconnecting: true, delay });
  }

  /**
   * The server accepted a token (`["auth", {sub, exp}]`): note its expiry
   * and plan the next refresh.
   * @param {{sub: string, exp: number | null}} reply
   */
  #accepted(reply) {
    this.#exp = typeof reply?.exp === "number" ? reply.exp : undefined;
    this.#scheduleRefresh();
  }

  /**
   * With a token function and a known expiry: sends `["auth", fresh]`
   * `refreshBefore` ms before the token expires (at most half its remaining
   * time ahead). A fixed token cannot be refreshed.
   */
  #scheduleRefresh() {
    clearTimeout(this.#refreshTimer);
    this.#refreshTimer = undefined;
    if (typeof this.#token !== "function" || this.#exp === undefined) return;
    if (this.#state !== "open") return;
    const remaining = this.#exp * 1000 - Date.now();
    if (remaining <= MIN_REFRESH_MS) return; // too late: the server closes, the reconnect brings a fresh one
    const lead = Math.min(this.#refreshBefore, remaining / 2);
    const delay = Math.max(remaining - lead, MIN_REFRESH_MS);
    if (delay > MAX_TIMER_MS) {
      // A token good for months: look again later rather than refresh now.
      this.#refreshTimer = setTimeout(() => this.#scheduleRefresh(), MAX_TIMER_MS);
      return;
    }
    const ws = this.#ws;
    this.#refreshTimer = setTimeout(() => {
      this.#refreshTimer = undefined;
      if (this.#ws !== ws || this.#state !== "open") return;
      // On failure (error event emitted), try again while time remains.
      this.auth().catch(() => {
        if (this.#ws === ws) this.#scheduleRefresh();
      });
    }, delay);
  }

  /**
   * Exponential backoff with jitter, so clients dropped together do not
   * come back together.
   * @param {number} attempt
   */
  #delay(attempt) {
    const r = this.#reconnect || { initialDelay: 250, maxDelay: 15000, factor: 2, jitter: 0.5 };
    const base = Math.min(r.maxDelay, r.initialDelay * r.factor ** attempt);
    return Math.round(base * (1 - r.jitter * Math.random()));
  }

  /**
   * @param {string} text
   * @param {boolean} orphan re-sent after a resume, lost with the old socket:
   *   a reply among such frames settles no request (its own failed already)
   */
  #onMessage(text, orphan) {
    /** @type {unknown} */
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    if (!Array.isArray(msg) || typeof msg[0] !== "string") return;
    const m = /** @type {any[]} */ (msg);
    /** @type {(kind: string, key?: string) => Req | undefined} */
    const take = orphan ? () => undefined : (kind, key) => this.#take(kind, key);
    switch (m[0]) {
      case "ident": {
        const req = take("ident");
        if (req) this.#settle(req, undefined, m[1]);
        return;
      }
      case "join": {
        const g = String(m[1]);
        const req = take("join", g);
        if (req) this.#settle(req, undefined, g);
        // Claimed by a join this client was told failed: given up again.
        if (this.#quietLeaves.has(g)) return;
        const i = g.indexOf(":");
        this.emit("join", { global: g, room: g.slice(0, i), ident: g.slice(i + 1) });
        return;
      }
      case "leave": {
        const g = String(m[1]);
        const req = take("leave", g);
        if (req) this.#settle(req, undefined, undefined);
        if (!this.#quietLeaves.delete(g)) this.emit("leave", { global: m[1] });
        return;
      }
      case "session": {
        if (orphan || typeof m[1] !== "string" || m[1] === "") return;
        this.#resumeToken = m[1];
        // The server counts what it sends from here on; so does the client.
        this.#seen = 0;
        this.#counting = true;
        this.emit("session", { resumable: true, detail: "" });
        return;
      }
      case "resume":
        if (!orphan && this.#resuming === this.#ws) this.#resumed(m[1]);
        return;
      case "stun":
        this.emit("stun", { local: m[1], remote: m[2], initiator: m[3] === true });
        return;
      case "signal":
        this.emit("signal", { local: m[1], remote: m[2], data: m[3] });
        return;
      case "bye":
        this.emit("bye", { local: m[1], remote: m[2] });
        return;
      case "ice": {
        const req = take("ice");
        if (req) this.#settle(req, undefined, Array.isArray(m[1]) ? m[1] : []);
        return;
      }
      case "pong": {
        const req = take("ping");
        if (req) this.#settle(req, undefined, undefined);
        return;
      }
      case "auth": {
        const o = m[1] !== null && typeof m[1] === "object" ? m[1] : {};
        const value = { sub: String(o.sub ?? ""), exp: typeof o.exp === "number" ? o.exp : null };
        const req = take("auth");
        if (req) this.#settle(req, undefined, value);
        this.emit("auth", value);
        return;
      }
      case "challenge": {
        const req = take("challenge");
        if (req) this.#settle(req, undefined, String(m[1]));
        return;
      }
      case "prove": {
        const req = take("prove", String(m[1])) ?? take("prove");
        if (req) this.#settle(req, undefined, undefined);
        this.emit("prove", { ident: String(m[1]) });
        return;
      }
      case "error": {
        const [, call, code, detail] = m.map(String);
        if (call === "session") {
          // A server without sessions (unknown-call, unavailable): as before.
          if (!orphan) this.emit("session", { resumable: false, detail: `${code}: ${detail}` });
          return;
        }
        if (call === "resume") {
          if (!orphan && this.#resuming === this.#ws) this.#resumeRefused(`${code}: ${detail}`);
          return;
        }
        if (REQUEST_KINDS.includes(call)) {
          // ident-taken names the global ident; other failures answer the oldest request.
          const req = take(call, code === "ident-taken" ? detail : undefined) ??
            take(call);
          if (req) this.#settle(req, new SignalError(call, code, detail));
        }
        this.emit("error", { call, code, detail });
        return;
      }
    }
  }
}

/**
 * @typedef {object} Req
 * @property {string} kind
 * @property {string} key
 * @property {(value: any) => void} resolve
 * @property {(error: Error) => void} reject
 * @property {ReturnType<typeof setTimeout> | undefined} timer
 */

/** How long cached ICE servers are reused (TURN credentials expire). */
const ICE_TTL_MS = 5 * 60 * 1000;

/** Early signals kept per unknown peer before its `stun` arrives. */
const MAX_EARLY = 64;

/**
 * A full mesh of WebRTC data channels among the members of one room.
 * A drop of the client's socket tears nothing down: with a resumed session
 * the pairs simply go on (signals made meanwhile are sent after the resume);
 * after a re-join each pair is announced again and replaced.
 */
export class Mesh extends Emitter {
  /** @type {SignalClient} */
  #client;
  /** @type {Record<string, any>} */
  #options;
  /** @type {any} */
  #PeerConnection;
  /** @type {string | undefined} */
  #self;
  /** @type {Map<string, Peer>} */
  #peers = new Map();
  /** Signals from peers not announced yet. @type {Map<string, unknown[]>} */
  #early = new Map();
  /** @type {{at: number, servers: Promise<unknown[]>} | undefined} */
  #ice;
  /** @type {(() => void)[]} */
  #unsubscribe;
  #closed = false;

  /**
   * @param {SignalClient} client
   * @param {object} [options]
   */
  constructor(client, options = {}) {
    super();
    this.#client = client;
    this.#options = options;
    this.#PeerConnection = this.#options.RTCPeerConnection ?? globalThis.RTCPeerConnection;
    if (typeof this.#PeerConnection !== "function") {
      throw new TypeError("no RTCPeerConnection: pass options.RTCPeerConnection");
    }
    this.#unsubscribe = [
      client.on("stun", (e) => this.#onStun(/** @type {any} */ (e))),
      client.on("signal", (e) => this.#onSignal(/** @type {any} */ (e))),
      client.on("bye", (e) => this.#onBye(/** @type {any} */ (e))),
      client.on("leave", (e) => {
        if (/** @type {any} */ (e).global === this.#self) this.#dropAll("left");
      }),
    ];
  }

  /** Our global ident in the room, once joined. */
  get self() {
    return this.#self;
  }

  /** How many peer connections exist (connecting or open). */
  get peers() {
    return this.#peers.size;
  }

  /** The global idents of the peers, in the order they appeared. */
  peerIds() {
    return [...this.#peers.keys()];
  }

  /**
   * The peer connection to `peer`, if any.
   * @param {string} peer
   */
  connection(peer) {
    return this.#peers.get(peer)?.pc;
  }

  /**
   * Whether the data channel to `peer` is open.
   * @param {string} peer
   */
  isOpen(peer) {
    return this.#peers.get(peer)?.channel?.readyState === "open";
  }

  /**
   * Joins `room` through the client (as `ident`, or a fresh ident) and
   * connects to every member; resolves with our global ident.
   * @param {string} room
   * @param {string} [ident]
   */
  async join(room, ident) {
    if (this.#self !== undefined) throw new Error(`already joined as ${this.#self}`);
    ident ??= await this.#client.ident();
    // Set before the join is sent: the stun messages follow its reply at once.
    this.#self = room + ":" + ident;
    try {
      return await this.#client.join(room, ident);
    } catch (e) {
      this.#self = undefined;
      throw e;
    }
  }

  /** Leaves the room and closes every peer connection. */
  async leave() {
    const g = this.#self;
    if (g === undefined) return;
    this.#dropAll("left");
    this.#self = undefined;
    if (this.#client.joined.includes(g)) await this.#client.leave(g);
  }

  /**
   * Sends `data` to `peer` over its data channel; false if it is not open.
   * @param {string} peer
   * @param {string | ArrayBuffer | ArrayBufferView} data
   */
  send(peer, data) {
    const ch = this.#peers.get(peer)?.channel;
    if (ch === undefined || ch.readyState !== "open") return false;
    ch.send(data);
    return true;
  }

  /**
   * Sends `data` to every peer whose channel is open; returns how many.
   * @param {string | ArrayBuffer | ArrayBufferView} data
   */
  broadcast(data) {
    let n = 0;
    for (const peer of this.#peers.keys()) if (this.send(peer, data)) n++;
    return n;
  }

  /** Closes every peer connection and stops listening to the client (which stays open). */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    for (const off of this.#unsubscribe) off();
    this.#dropAll("closed");
    this.#early.clear();
  }

  /** @param {{local: string, remote: string, initiator: boolean}} e */
  #onStun(e) {
    if (this.#closed || e.local !== this.#self) return;
    const old = this.#peers.get(e.remote);
    // An offer that overtook its stun already made this (answering) peer.
    if (old !== undefined && old.early && !e.initiator) {
      old.early = false;
      return;
    }
    if (old !== undefined) this.#drop(old, "replaced");
    this.#create(e.remote, e.initiator, false);
  }

  /** @param {{local: string, remote: string, data: any}} e */
  #onSignal(e) {
    if (this.#closed || e.local !== this.#self) return;
    const peer = this.#peers.get(e.remote);
    if (peer !== undefined) {
      this.#enqueue(peer, () => this.#handle(peer, e.data));
      return;
    }
    if (e.data?.type === "offer") {
      const p = this.#create(e.remote, false, true);
      this.#enqueue(p, () => this.#handle(p, e.data));
      return;
    }
    let early = this.#early.get(e.remote);
    if (early === undefined) this.#early.set(e.remote, early = []);
    if (early.length < MAX_EARLY) early.push(e.data);
  }

  /** @param {{local: string, remote: string}} e */
  #onBye(e) {
    if (e.local !== this.#self) return;
    this.#early.delete(e.remote);
    const peer = this.#peers.get(e.remote);
    if (peer !== undefined) this.#drop(peer, "bye");
  }

  /** ICE servers from the signal server, cached for a while. */
  #iceServers() {
    const now = Date.now();
    if (this.#ice === undefined || now - this.#ice.at > ICE_TTL_MS) {
      const servers = this.#client.ice().catch(() => []);
      this.#ice = { at: now, servers };
    }
    return this.#ice.servers;
  }

  /**
   * @param {string} id
   * @param {boolean} initiator
   * @param {boolean} early
   */
  #create(id, initiator, early) {
    /** @type {Peer} */
    const peer = {
      id,
      initiator,
      early,
      pc: undefined,
      channel: undefined,
      chain: Promise.resolve(),
      candidates: [],
      closed: false,
      opened: false,
    };
    this.#peers.set(id, peer);
    this.#enqueue(peer, () => this.#start(peer));
    const pending = this.#early.get(id);
    if (pending !== undefined) {
      this.#early.delete(id);
      for (const data of pending) this.#enqueue(peer, () => this.#handle(peer, data));
    }
    return peer;
  }

  /**
   * Runs `step` after the peer's earlier steps: descriptions and candidates
   * must be applied in the order they were signalled.
   * @param {Peer} peer
   * @param {() => Promise<void> | void} step
   */
  #enqueue(peer, step) {
    peer.chain = peer.chain.then(async () => {
      if (peer.closed) return;
      try {
        await step();
      } catch (error) {
        if (!peer.closed) this.emit("error", { peer: peer.id, error });
      }
    });
  }

  /** @param {Peer} peer */
  async #start(peer) {
    const opt = this.#options;
    const config = { ...opt.rtcConfig };
    if (config.iceServers === undefined) config.iceServers = await this.#iceServers();
    if (peer.closed) return;
    const pc = new this.#PeerConnection(config);
    peer.pc = pc;
    pc.onicecandidate = (/** @type {any} */ ev) => {
      if (peer.closed || !ev.candidate || !ev.candidate.candidate) return;
      const c = ev.candidate;
      this.#signal(peer, {
        type: "candidate",
        candidate: { candidate: c.candidate, sdpMLineIndex: c.sdpMLineIndex, sdpMid: c.sdpMid },
      });
    };
    pc.onconnectionstatechange = () => {
      if (peer.closed) return;
      const state = pc.connectionState;
      this.emit("state", { peer: peer.id, state });
      if (state === "failed" || state === "closed") this.#drop(peer, state);
    };
    pc.ondatachannel = (/** @type {any} */ ev) => this.#wire(peer, ev.channel);
    this.emit("peer", { peer: peer.id, initiator: peer.initiator, connection: pc });
    if (peer.initiator) {
      this.#wire(peer, pc.createDataChannel(opt.channelLabel ?? "diva"));
      await pc.setLocalDescription(await pc.createOffer());
      if (peer.closed) return;
      this.#signal(peer, { type: pc.localDescription.type, sdp: pc.localDescription.sdp });
    }
  }

  /**
   * @param {Peer} peer
   * @param {any} ch
   */
  #wire(peer, ch) {
    if (peer.closed) {
      ch.close();
      return;
    }
    // The first channel wins; a second one only appears after a glare rollback.
    if (peer.channel !== undefined && peer.channel.readyState !== "closed") {
      ch.onmessage = (/** @type {any} */ ev) => this.#message(peer, ev.data);
      return;
    }
    peer.channel = ch;
    ch.binaryType = "arraybuffer";
    ch.onopen = () => {
      if (peer.closed || peer.opened) return;
      peer.opened = true;
      this.emit("open", { peer: peer.id });
    };
    ch.onmessage = (/** @type {any} */ ev) => this.#message(peer, ev.data);
    ch.onclose = () => {
      if (!peer.closed && peer.channel === ch) this.#drop(peer, "channel-closed");
    };
    if (ch.readyState === "open") ch.onopen();
  }

  /**
   * @param {Peer} peer
   * @param {unknown} data
   */
  #message(peer, data) {
    if (!peer.closed) this.emit("message", { peer: peer.id, data });
  }

  /**
   * @param {Peer} peer
   * @param {unknown} data
   */
  #signal(peer, data) {
    if (this.#self !== undefined) this.#client.signal(this.#self, peer.id, data);
  }

  /**
   * Applies one signal from the peer.
   * @param {Peer} peer
   * @param {any} data
   */
  async #handle(peer, data) {
    const pc = peer.pc;
    if (pc === undefined || data === null || typeof data !== "object") return;
    if (data.type === "offer" || data.type === "answer") {
      if (data.type === "offer" && pc.signalingState !== "stable") {
        // Glare: both sides offered. The side with the smaller ident yields.
        if (this.#self === undefined || this.#self > peer.id) return;
        await pc.setLocalDescription({ type: "rollback" });
      }
      if (data.type === "answer" && pc.signalingState !== "have-local-offer") return;
      await pc.setRemoteDescription({ type: data.type, sdp: data.sdp });
      for (const c of peer.candidates.splice(0)) await this.#addCandidate(pc, c);
      if (data.type === "offer") {
        await pc.setLocalDescription(await pc.createAnswer());
        if (peer.closed) return;
        this.#signal(peer, { type: pc.localDescription.type, sdp: pc.localDescription.sdp });
      }
      return;
    }
    const candidate = data.type === "candidate" ? data.candidate : data.candidate ?? undefined;
    if (candidate === undefined || candidate === null) return; // renegotiate, transceiverRequest…
    if (pc.remoteDescription === null) peer.candidates.push(candidate);
    else await this.#addCandidate(pc, candidate);
  }

  /**
   * A candidate the browser rejects (a stale generation, an unknown mid)
   * must not stop the ones after it.
   * @param {any} pc
   * @param {unknown} candidate
   */
  async #addCandidate(pc, candidate) {
    try {
      await pc.addIceCandidate(candidate);
    } catch {
      /* ignored on purpose: see above */
    }
  }

  /** @param {string} reason */
  #dropAll(reason) {
    for (const peer of [...this.#peers.values()]) this.#drop(peer, reason);
  }

  /**
   * Closes a peer and forgets it.
   * @param {Peer} peer
   * @param {string} reason
   */
  #drop(peer, reason) {
    if (peer.closed) return;
    peer.closed = true;
    if (this.#peers.get(peer.id) === peer) this.#peers.delete(peer.id);
    const ch = peer.channel;
    if (ch !== undefined) {
      ch.onopen = ch.onmessage = ch.onclose = null;
      try {
        ch.close();
      } catch { /* already closed */ }
    }
    const pc = peer.pc;
    if (pc !== undefined) {
      pc.onicecandidate = pc.onconnectionstatechange = pc.ondatachannel = null;
      pc.close();
    }
    peer.candidates.length = 0;
    this.emit("close", { peer: peer.id, reason });
  }
}

/**
 * @typedef {object} Peer
 * @property {string} id
 * @property {boolean} initiator
 * @property {boolean} early
 * @property {any} pc
 * @property {any} channel
 * @property {Promise<void>} chain
 * @property {unknown[]} candidates
 * @property {boolean} closed
 * @property {boolean} opened
 */
