// @ts-self-types="./client.d.ts"
/**
 * Client library for the DIVA signal protocol, for browsers and Deno.
 *
 * - {@link SignalClient}: one WebSocket to the signal server; requests
 *   (`ident`, `join`, `leave`, `ice`, `ping`) as promises, server messages as
 *   typed events; reconnects with exponential backoff and jitter after a drop
 *   and joins its rooms again.
 * - {@link Mesh}: one `RTCPeerConnection` with a data channel per peer of a
 *   room, negotiated through the signal server. Its signal payloads use
 *   simple-peer's format (`{type:"offer"|"answer", sdp}`,
 *   `{type:"candidate", candidate}`), so it talks to DIVA clients built on
 *   simple-peer.
 *
 * This file is served as-is at `/client.js` (no build step); its types live
 * in `client.d.ts` beside it.
 *
 * @module
 */

/** Calls whose replies settle a promise. */
const REQUEST_KINDS = ["ident", "join", "leave", "ice", "ping"];

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

  /**
   * @param {string | URL} [url] the server's WebSocket URL (`ws:`/`wss:`;
   *   `http:`/`https:` are mapped); defaults to the server that served this file
   * @param {object} [options]
   */
  constructor(url, options = {}) {
    super();
    const o = /** @type {Record<string, any>} */ (options);
    this.#url = String(url ?? defaultUrl()).replace(/^http/, "ws");
    this.#WebSocket = o.WebSocket ?? globalThis.WebSocket;
    this.#reconnect = o.reconnect === false ? false : {
      initialDelay: o.reconnect?.initialDelay ?? 250,
      maxDelay: o.reconnect?.maxDelay ?? 15000,
      factor: o.reconnect?.factor ?? 2,
      jitter: o.reconnect?.jitter ?? 0.5,
    };
    this.#requestTimeout = o.requestTimeout ?? 10000;
    this.#heartbeat = o.heartbeat ?? 30000;
    this.#connect();
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
    await this.#request("join", g, JSON.stringify(["join", ident, room]));
    this.#held.set(g, { room, ident });
    return g;
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
   * false when the socket is not open (signals are not queued: after a
   * reconnect every pair is announced afresh).
   * @param {string} from
   * @param {string} to
   * @param {unknown} data
   */
  signal(from, to, data) {
    if (this.#state !== "open" || this.#ws === undefined) return false;
    this.#ws.send(JSON.stringify(["signal", from, to, data]));
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
    this.#state = "closed";
    clearTimeout(this.#retryTimer);
    clearInterval(this.#heartbeatTimer);
    const lost = new Error("client closed");
    for (const { req } of this.#outgoing.splice(0)) if (req) this.#settle(req, lost);
    this.#failInflight(lost);
    const ws = this.#ws;
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

  #connect() {
    const ws = new this.#WebSocket(this.#url);
    this.#ws = ws;
    ws.binaryType = "arraybuffer";
    ws.onopen = () => this.#onOpen(ws);
    ws.onmessage = (e) => {
      if (this.#ws === ws && typeof e.data === "string") this.#onMessage(e.data);
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
    if (this.#heartbeat > 0) {
      this.#heartbeatTimer = setInterval(() => {
        // A half-open TCP connection only shows as a missing pong.
        this.ping().catch(() => {
          if (this.#ws === ws && ws.readyState === this.#WebSocket.OPEN) ws.close(4000, "no pong");
        });
      }, this.#heartbeat);
    }
    for (const [g, { room, ident }] of this.#held) this.#rejoin(g, room, ident, 0);
    for (const { frame, req } of this.#outgoing.splice(0)) this.#send(frame, req);
    this.emit("open", { reconnected });
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
    this.#request("join", g, JSON.stringify(["join", ident, room])).catch((e) => {
      if (this.#state !== "open" || !this.#held.has(g)) return;
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
    this.#failInflight(new Error(`connection lost (${code})`));
    if (this.#state === "closed") {
      this.#closed?.();
      this.emit("close", { code, reason, reconnecting: false, delay: 0 });
      return;
    }
    if (this.#reconnect === false) {
      this.#state = "closed";
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
   * Exponential backoff with jitter, so clients dropped together do not
   * come back together.
   * @param {number} attempt
   */
  #delay(attempt) {
    const r = this.#reconnect || { initialDelay: 250, maxDelay: 15000, factor: 2, jitter: 0.5 };
    const base = Math.min(r.maxDelay, r.initialDelay * r.factor ** attempt);
    return Math.round(base * (1 - r.jitter * Math.random()));
  }

  /** @param {string} text */
  #onMessage(text) {
    /** @type {unknown} */
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    if (!Array.isArray(msg) || typeof msg[0] !== "string") return;
    const m = /** @type {any[]} */ (msg);
    switch (m[0]) {
      case "ident": {
        const req = this.#take("ident");
        if (req) this.#settle(req, undefined, m[1]);
        return;
      }
      case "join": {
        const g = String(m[1]);
        const req = this.#take("join", g);
        if (req) this.#settle(req, undefined, g);
        const i = g.indexOf(":");
        this.emit("join", { global: g, room: g.slice(0, i), ident: g.slice(i + 1) });
        return;
      }
      case "leave": {
        const req = this.#take("leave", String(m[1]));
        if (req) this.#settle(req, undefined, undefined);
        this.emit("leave", { global: m[1] });
        return;
      }
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
        const req = this.#take("ice");
        if (req) this.#settle(req, undefined, Array.isArray(m[1]) ? m[1] : []);
        return;
      }
      case "pong": {
        const req = this.#take("ping");
        if (req) this.#settle(req, undefined, undefined);
        return;
      }
      case "error": {
        const [, call, code, detail] = m.map(String);
        if (REQUEST_KINDS.includes(call)) {
          // ident-taken names the global ident; other failures answer the oldest request.
          const req = this.#take(call, code === "ident-taken" ? detail : undefined) ??
            this.#take(call);
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
