/**
 * The load generator's shards: groups of client WebSockets that run one
 * workload against a server. A shard runs in the benchmark's own thread or
 * in a generator Worker (see `worker.ts`); the driver in `main.ts` merges the
 * results of all shards.
 *
 * The clients take the same steps against the server and against the bare
 * relay (`bare_relay.ts`), which sends the same `ident`, `join` and `stun`
 * frames; only relayed signals differ (the bare relay does not swap the
 * idents), and the generator reads nothing of a signal but its sequence
 * number and send time.
 *
 * Every wait here is bounded by a deadline and every loop by a count.
 *
 * @module
 */

import { Histogram } from "./stats.ts";

/** Absolute milliseconds, comparable across Workers of one process. */
export function clock(): number {
  return performance.timeOrigin + performance.now();
}

/** Rejects after `ms` with a message naming what took too long. */
function deadline(ms: number, what: string): { promise: Promise<never>; cancel(): void } {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const promise = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not done after ${ms} ms`)), ms);
  });
  return { promise, cancel: () => clearTimeout(timer) };
}

/** Waits for `p` at most `ms`. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  const d = deadline(ms, what);
  try {
    return await Promise.race([p, d.promise]);
  } finally {
    d.cancel();
  }
}

/**
 * Opens `n` WebSockets, the `i`th to `url(i)`, with at most `concurrency` handshakes in
 * flight (a storm of unbounded SYNs would overflow the listen backlog and
 * measure TCP retransmission timers instead of the server). `onOpen` runs
 * as each one opens. Fails on the first socket that errors before opening.
 */
async function connectMany(
  url: (i: number) => string,
  n: number,
  concurrency: number,
  onOpen: (i: number, ws: WebSocket) => void,
): Promise<WebSocket[]> {
  const sockets: WebSocket[] = new Array(n);
  let next = 0;
  let opened = 0;
  const { promise, resolve, reject } = Promise.withResolvers<WebSocket[]>();
  const launch = () => {
    if (next >= n) return;
    const i = next++;
    const ws = new WebSocket(url(i));
    sockets[i] = ws;
    let isOpen = false;
    ws.onopen = () => {
      isOpen = true;
      onOpen(i, ws);
      opened++;
      if (opened === n) resolve(sockets);
      else launch();
    };
    ws.onerror = (e) => {
      if (!isOpen) reject(new Error(`connection ${i} failed: ${(e as ErrorEvent).message ?? e}`));
    };
  };
  if (n === 0) return [];
  for (let k = 0; k < Math.min(concurrency, n); k++) launch();
  try {
    return await promise;
  } catch (e) {
    closeAll(sockets.filter((s) => s !== undefined));
    throw e;
  }
}

/** How long {@link closeAll} waits for the sockets' closes. */
const CLOSE_TIMEOUT_MS = 20_000;

/** How long a relay shard's `drain` waits for what is still in flight. */
const DRAIN_TIMEOUT_MS = 5000;

/** Closes sockets and waits (at most {@link CLOSE_TIMEOUT_MS}) until each has closed. */
async function closeAll(sockets: WebSocket[]): Promise<void> {
  const pending: Promise<void>[] = [];
  for (const ws of sockets) {
    if (ws.readyState === WebSocket.CLOSED) continue;
    const { promise, resolve } = Promise.withResolvers<void>();
    ws.addEventListener("close", () => resolve());
    pending.push(promise);
    try {
      ws.close(1000);
    } catch {
      resolve();
    }
  }
  await within(Promise.all(pending), CLOSE_TIMEOUT_MS, "closing sockets").catch(() => {
    // A socket that never reports its close must not hang the benchmark.
  });
}

/** A unique-enough room prefix so runs against a shared server never collide. */
export function nonce(): string {
  return Math.random().toString(36).slice(2, 10);
}

// ---------------------------------------------------------------- relay

/** Parameters of a relay shard. */
export interface RelayParams {
  /** WebSocket URL of the target; the first peer of each pair connects here. */
  url: string;
  /**
   * Where the second peer of each pair connects (another instance of a
   * cluster); {@link url} when absent.
   */
  partnerUrl?: string;
  /** Room name prefix shared by the whole run. */
  nonce: string;
  /** Index of this shard's first pair (pairs are numbered across shards). */
  firstPair: number;
  /** Pairs in this shard. */
  pairs: number;
  /** Signals each peer keeps in flight. */
  window: number;
  /** Approximate JSON size of each signal's `data`. */
  bytes: number;
  /** Handshakes in flight at once while connecting. */
  concurrency: number;
  /** Bound on connecting and joining, ms. */
  setupTimeoutMs: number;
}

/** What a relay shard measured in one window. */
export interface RelayWindow {
  /** Signals delivered to each peer during the window. */
  delivered: number[];
  /** Latency of those signals, µs. */
  histogram: { counts: number[]; total: number; max: number };
  /** Age of the oldest signal still undelivered at the window's end, ms. */
  oldestInFlightMs: number;
  /** Signals that arrived out of order (a relay must keep each pair's order). */
  outOfOrder: number;
  /** `error` frames received since setup. */
  errors: number;
}

interface Peer {
  ws: WebSocket;
  own: string;
  partner: Peer;
  /** The frame text up to the sequence number. */
  prefix: string;
  /** Last sequence number sent to the partner. */
  sent: number;
  /** Last sequence number received from the partner. */
  received: number;
  /** Send times of the signals in flight to the partner, by sequence number. */
  sentAt: Float64Array;
  delivered: number;
  /** Frames still expected before the peer is ready (its join, then its stun). */
  waiting: number;
}

/**
 * An ICE-candidate-like object of about `bytes` bytes of JSON, without its
 * closing brace: the sender appends its sequence number and send time.
 */
function candidateData(bytes: number): string {
  const head = '{"type":"candidate","candidate":"candidate:842163049 1 udp 1677729535 ' +
    "203.0.113.7 54400 typ srflx raddr 10.0.0.2 rport 54400 generation 0 ufrag Ab3d " +
    "network-cost 999";
  const tail = '","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"Ab3d"';
  // ',"s":123456,"t":1732541234567.891}' takes about 36 bytes.
  const pad = Math.max(0, bytes - head.length - tail.length - 36);
  return head + " x".repeat(Math.floor(pad / 2)) + tail;
}

/**
 * Pairs of peers in rooms of two; each peer keeps `window` signals in flight
 * to its partner by answering every signal it receives with a new one
 * (a closed loop: each pair holds 2 × window signals in flight for ever).
 */
export class RelayShard {
  readonly #p: RelayParams;
  readonly #peers: Peer[] = [];
  readonly #hist = new Histogram();
  readonly #ring: number;
  #sending = false;
  #measuring = false;
  #closing = false;
  #outOfOrder = 0;
  #errors = 0;
  #ready: PromiseWithResolvers<void> = Promise.withResolvers<void>();
  #notReady = 0;

  /** A shard; nothing is connected until {@link setup}. */
  constructor(params: RelayParams) {
    this.#p = params;
    this.#ring = 2 * params.window + 1;
  }

  /** Connects every peer, joins the pairs and waits until each pair is announced. */
  async setup(): Promise<void> {
    const p = this.#p;
    const data = candidateData(p.bytes);
    const n = p.pairs * 2;
    this.#notReady = n;
    for (let k = 0; k < p.pairs; k++) {
      const room = `bench-${p.nonce}-p${p.firstPair + k}`;
      const a = this.#peer(`${room}:a`);
      const b = this.#peer(`${room}:b`);
      a.partner = b;
      b.partner = a;
      for (const x of [a, b]) {
        x.prefix = `["signal","${x.own}","${x.partner.own}",${data},"s":`;
        // The later joiner gets one stun, and so does the earlier one.
        x.waiting = 2;
      }
      this.#peers.push(a, b);
    }
    const partnerUrl = p.partnerUrl ?? p.url;
    // Peers alternate a, b: every odd one is a pair's second end.
    const url = (i: number) => (i % 2 === 0 ? p.url : partnerUrl);
    const work = connectMany(url, n, p.concurrency, (i, ws) => {
      const peer = this.#peers[i];
      peer.ws = ws;
      ws.onmessage = (e) => this.#onMessage(peer, e.data as string);
      const [room, ident] = peer.own.split(":");
      ws.send(JSON.stringify(["join", ident, room]));
    }).then(() => this.#ready.promise);
    await within(work, p.setupTimeoutMs, `relay setup of ${n} peers`);
  }

  #peer(own: string): Peer {
    return {
      ws: undefined as unknown as WebSocket,
      own,
      partner: undefined as unknown as Peer,
      prefix: "",
      sent: 0,
      received: 0,
      sentAt: new Float64Array(this.#ring),
      delivered: 0,
      waiting: 0,
    };
  }

  #send(peer: Peer): void {
    const s = ++peer.sent;
    const t = clock();
    peer.sentAt[s % this.#ring] = t;
    peer.ws.send(peer.prefix + s + ',"t":' + t + "}]");
  }

  #onMessage(peer: Peer, d: string): void {
    // '["signal",' — the only frame type on the hot path.
    if (d.charCodeAt(2) === 0x73 && d.startsWith('["signal",')) {
      const i = d.lastIndexOf(',"s":');
      const j = d.indexOf(',"t":', i);
      const s = Number(d.slice(i + 5, j));
      const t = Number(d.slice(j + 5, d.length - 2));
      if (s !== peer.received + 1) this.#outOfOrder++;
      peer.received = s;
      if (this.#measuring) {
        this.#hist.record((clock() - t) * 1000);
        peer.delivered++;
      }
      if (this.#sending) this.#send(peer);
      return;
    }
    if (d.startsWith('["error"')) {
      // Signals still in flight when a partner leaves at teardown are not errors.
      if (!this.#closing && this.#errors++ < 3) console.error(`relay peer ${peer.own} got ${d}`);
      return;
    }
    if ((d.startsWith('["join"') || d.startsWith('["stun"')) && peer.waiting > 0) {
      peer.waiting--;
      if (peer.waiting === 0 && --this.#notReady === 0) this.#ready.resolve();
    }
  }

  /** Starts the closed loop: every peer sends its window of signals. */
  start(): void {
    this.#sending = true;
    for (const peer of this.#peers) {
      for (let k = 0; k < this.#p.window; k++) this.#send(peer);
    }
  }

  /** Forgets what was counted so far and starts counting. */
  beginWindow(): void {
    this.#hist.reset();
    for (const peer of this.#peers) peer.delivered = 0;
    this.#measuring = true;
  }

  /** Stops counting and returns the window's figures. */
  endWindow(): RelayWindow {
    this.#measuring = false;
    const now = clock();
    let oldest = 0;
    for (const peer of this.#peers) {
      // What `peer` still owes its partner is in order, so the oldest is the next one.
      const next = peer.partner.received + 1;
      if (next <= peer.sent) oldest = Math.max(oldest, now - peer.sentAt[next % this.#ring]);
    }
    return {
      delivered: this.#peers.map((x) => x.delivered),
      histogram: this.#hist.toJSON(),
      oldestInFlightMs: oldest,
      outOfOrder: this.#outOfOrder,
      errors: this.#errors,
    };
  }

  /** Stops sending and closes every peer. */
  async teardown(): Promise<void> {
    this.#sending = false;
    this.#measuring = false;
    this.#closing = true;
    await closeAll(this.#peers.map((x) => x.ws).filter((ws) => ws !== undefined));
  }
}

// ---------------------------------------------------------------- y-webrtc relay

/** Parameters of a y-webrtc relay shard: as {@link RelayParams}, on the y-webrtc wire. */
export type YRelayParams = Omit<RelayParams, "partnerUrl">;

/** What a y-webrtc relay shard owes after its peers stopped sending. */
export interface YRelayDrain {
  /** Publishes never delivered to the sender's partner. */
  lost: number;
  /** Publishes never echoed to their sender (the sender is a subscriber too). */
  lostEchoes: number;
  /** How long the last deliveries took to arrive after sending stopped, ms. */
  drainMs: number;
}

interface YPeer {
  ws: WebSocket;
  /** `a` or `b`: marks the peer's publishes, so it can tell its echo. */
  role: string;
  partner: YPeer;
  /** The publish text up to the sequence number. */
  prefix: string;
  /** Last sequence number published. */
  sent: number;
  /** Last sequence number received from the partner. */
  received: number;
  /** Own publishes echoed back. */
  echoes: number;
  /** Send times of the publishes in flight, by sequence number. */
  sentAt: Float64Array;
  delivered: number;
  ready: boolean;
}

/**
 * Pairs of y-webrtc peers, each pair alone in a topic: every peer keeps
 * `window` publishes in flight to its partner by publishing anew for each
 * one it receives (a closed loop, as {@link RelayShard}). A publish goes to
 * every subscriber of the topic, the sender included: the sender counts its
 * echo and ignores it otherwise, so the server does two deliveries per
 * signal. The same frames work against the reference server (y-webrtc's
 * `bin/server.js`), which re-serialises each message per receiver: the
 * generator reads only the role, sequence number and send time, from the
 * end of the text.
 */
export class YRelayShard {
  readonly #p: YRelayParams;
  readonly #peers: YPeer[] = [];
  readonly #hist = new Histogram();
  readonly #ring: number;
  #sending = false;
  #measuring = false;
  #closing = false;
  #outOfOrder = 0;
  #errors = 0;
  #ready: PromiseWithResolvers<void> = Promise.withResolvers<void>();
  #notReady = 0;
  #lastDelivery = 0;

  /** A shard; nothing is connected until {@link setup}. */
  constructor(params: YRelayParams) {
    this.#p = params;
    this.#ring = 2 * params.window + 1;
  }

  /** Connects every peer and subscribes it to its pair's topic; settles once all are subscribed. */
  async setup(): Promise<void> {
    const p = this.#p;
    const data = candidateData(p.bytes);
    const n = p.pairs * 2;
    this.#notReady = n;
    const topics: string[] = [];
    for (let k = 0; k < p.pairs; k++) {
      const topic = `bench-${p.nonce}-y${p.firstPair + k}`;
      const a = this.#peer("a");
      const b = this.#peer("b");
      a.partner = b;
      b.partner = a;
      for (const x of [a, b]) {
        x.prefix = `{"type":"publish","topic":"${topic}","data":${data},"f":"${x.role}","s":`;
        this.#peers.push(x);
        topics.push(topic);
      }
    }
    const work = connectMany(() => p.url, n, p.concurrency, (i, ws) => {
      const peer = this.#peers[i];
      peer.ws = ws;
      ws.onmessage = (e) => this.#onMessage(peer, e.data as string);
      // Frames of one connection are handled in order: the pong says the subscribe was.
      ws.send(JSON.stringify({ type: "subscribe", topics: [topics[i]] }));
      ws.send('{"type":"ping"}');
    }).then(() => this.#ready.promise);
    await within(work, p.setupTimeoutMs, `y-webrtc relay setup of ${n} peers`);
  }

  #peer(role: string): YPeer {
    return {
      ws: undefined as unknown as WebSocket,
      role,
      partner: undefined as unknown as YPeer,
      prefix: "",
      sent: 0,
      received: 0,
      echoes: 0,
      sentAt: new Float64Array(this.#ring),
      delivered: 0,
      ready: false,
    };
  }

  #send(peer: YPeer): void {
    const s = ++peer.sent;
    const t = clock();
    peer.sentAt[s % this.#ring] = t;
    peer.ws.send(peer.prefix + s + ',"t":' + t + "}}");
  }

  #onMessage(peer: YPeer, d: string): void {
    if (d.startsWith('{"type":"publish"')) {
      const i = d.lastIndexOf(',"s":');
      // '…"f":"a","s":…': the role is two characters before.
      if (d.charCodeAt(i - 2) === peer.role.charCodeAt(0)) {
        peer.echoes++;
        return;
      }
      const j = d.indexOf(',"t":', i);
      const s = Number(d.slice(i + 5, j));
      const t = Number(d.slice(j + 5, d.indexOf("}", j)));
      if (s !== peer.received + 1) this.#outOfOrder++;
      peer.received = s;
      const now = clock();
      this.#lastDelivery = now;
      if (this.#measuring) {
        this.#hist.record((now - t) * 1000);
        peer.delivered++;
      }
      if (this.#sending) this.#send(peer);
      return;
    }
    if (d.startsWith('{"type":"pong"') && !peer.ready) {
      peer.ready = true;
      if (--this.#notReady === 0) this.#ready.resolve();
      return;
    }
    if (d.startsWith('{"type":"error"') && !this.#closing && this.#errors++ < 3) {
      console.error(`y-webrtc peer got ${d}`);
    }
  }

  /** Starts the closed loop: every peer publishes its window. */
  start(): void {
    this.#sending = true;
    for (const peer of this.#peers) {
      for (let k = 0; k < this.#p.window; k++) this.#send(peer);
    }
  }

  /** Forgets what was counted so far and starts counting. */
  beginWindow(): void {
    this.#hist.reset();
    for (const peer of this.#peers) peer.delivered = 0;
    this.#measuring = true;
  }

  /** Stops counting and returns the window's figures. */
  endWindow(): RelayWindow {
    this.#measuring = false;
    const now = clock();
    let oldest = 0;
    for (const peer of this.#peers) {
      const next = peer.partner.received + 1;
      if (next <= peer.sent) oldest = Math.max(oldest, now - peer.sentAt[next % this.#ring]);
    }
    return {
      delivered: this.#peers.map((x) => x.delivered),
      histogram: this.#hist.toJSON(),
      oldestInFlightMs: oldest,
      outOfOrder: this.#outOfOrder,
      errors: this.#errors,
    };
  }

  /**
   * Stops publishing and waits (at most {@link DRAIN_TIMEOUT_MS}) until every
   * publish made has reached the partner and come back to its sender: what
   * is still missing then was lost.
   */
  async drain(): Promise<YRelayDrain> {
    this.#sending = false;
    const stopped = clock();
    const owed = () => {
      let lost = 0;
      let lostEchoes = 0;
      for (const peer of this.#peers) {
        lost += peer.sent - peer.partner.received;
        lostEchoes += peer.sent - peer.echoes;
      }
      return { lost, lostEchoes };
    };
    for (let waited = 0; waited < DRAIN_TIMEOUT_MS; waited += 10) {
      const o = owed();
      if (o.lost === 0 && o.lostEchoes === 0) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    return { ...owed(), drainMs: Math.max(0, this.#lastDelivery - stopped) };
  }

  /** Stops sending and closes every peer. */
  async teardown(): Promise<void> {
    this.#sending = false;
    this.#measuring = false;
    this.#closing = true;
    await closeAll(this.#peers.map((x) => x.ws).filter((ws) => ws !== undefined));
  }
}

// ---------------------------------------------------------------- join

/** Parameters of a join shard (used by the join storm and the idle footprint). */
export interface JoinParams {
  /** WebSocket URL of the target. */
  url: string;
  /** Room name prefix shared by the whole run. */
  nonce: string;
  /** Workload name, part of the room names. */
  tag: string;
  /** Index of this shard's first client (clients are numbered across shards). */
  firstClient: number;
  /** Clients in this shard. */
  clients: number;
  /** Clients in the whole run (the last room may be smaller). */
  totalClients: number;
  /** Members per room. */
  roomSize: number;
  /** Take an ident with `["ident"]` before joining (else join as `c<i>`). */
  useIdent: boolean;
  /** Handshakes in flight at once. */
  concurrency: number;
  /** Bound on the whole run, ms. */
  timeoutMs: number;
}

/** When a join shard's clients were all open, and all joined. */
export interface JoinResult {
  /** {@link clock} time the last client's socket opened. */
  openedAt: number;
  /** {@link clock} time the last expected `stun` (or join reply) arrived. */
  readyAt: number;
  /** `stun` frames received. */
  stuns: number;
  /** `error` frames received. */
  errors: number;
}

/**
 * Clients that connect, optionally take an ident, join rooms of `roomSize`
 * and wait until every announcement expected has arrived; they then stay
 * connected, idle, until {@link teardown}.
 */
export class JoinShard {
  readonly #p: JoinParams;
  #sockets: WebSocket[] = [];

  /** A shard; nothing is connected until {@link run}. */
  constructor(params: JoinParams) {
    this.#p = params;
  }

  /** Connects and joins every client; settles once all are joined and announced. */
  async run(): Promise<JoinResult> {
    const p = this.#p;
    let notReady = p.clients;
    let stuns = 0;
    let errors = 0;
    let readyAt = 0;
    const ready = Promise.withResolvers<void>();
    if (notReady === 0) ready.resolve();
    const work = connectMany(() => p.url, p.clients, p.concurrency, (local, ws) => {
      const i = p.firstClient + local;
      const r = Math.floor(i / p.roomSize);
      const room = `bench-${p.nonce}-${p.tag}${r}`;
      const members = Math.min(p.roomSize, p.totalClients - r * p.roomSize);
      // The join reply, then members − 1 stuns: every pair is announced to both sides once.
      let waiting = members;
      const done = () => {
        if (--waiting === 0 && --notReady === 0) {
          readyAt = clock();
          ready.resolve();
        }
      };
      ws.onmessage = (e) => {
        const d = e.data as string;
        if (d.startsWith('["stun"')) {
          stuns++;
          done();
        } else if (d.startsWith('["join"')) done();
        else if (d.startsWith('["ident"')) {
          ws.send(JSON.stringify(["join", JSON.parse(d)[1], room]));
        } else if (d.startsWith('["error"')) {
          errors++;
          console.error(`client ${i} got ${d}`);
        }
      };
      if (p.useIdent) ws.send('["ident"]');
      else ws.send(JSON.stringify(["join", `c${i}`, room]));
    });
    const all = within(
      work.then((sockets) => {
        this.#sockets = sockets;
        return clock();
      }),
      p.timeoutMs,
      `connecting ${p.clients} clients`,
    );
    const openedAt = await all;
    await within(ready.promise, Math.max(1, p.timeoutMs), `joining ${p.clients} clients`);
    return { openedAt, readyAt: readyAt || clock(), stuns, errors };
  }

  /** Closes every client. */
  async teardown(): Promise<void> {
    await closeAll(this.#sockets);
  }
}

// ---------------------------------------------------------------- PeerJS relay

/** Parameters of a PeerJS relay shard: as {@link RelayParams}, on the PeerJS wire. */
export type PeerjsRelayParams = Omit<RelayParams, "partnerUrl">;

/** How often each PeerJS client sends `HEARTBEAT`, as the real client does, ms. */
const PEERJS_HEARTBEAT_MS = 5000;

interface PjPeer {
  ws: WebSocket;
  id: string;
  partner: PjPeer;
  /** The `CANDIDATE` text up to the sequence number. */
  prefix: string;
  /** Last sequence number sent to the partner. */
  sent: number;
  /** Last sequence number received from the partner. */
  received: number;
  /** Send times of the messages in flight, by sequence number. */
  sentAt: Float64Array;
  delivered: number;
  ready: boolean;
}

/**
 * Pairs of PeerJS clients (plain WebSockets on the PeerJS wire: they connect
 * to `<url>?key=peerjs&id=…&token=…` and wait for `OPEN`), each keeping
 * `window` `CANDIDATE` messages in flight to its partner by sending anew
 * for each one it receives (a closed loop, as {@link RelayShard}). The
 * server relays each as `{type, src, dst, payload}`: the generator reads
 * only the sequence number and send time, which end the payload. The same
 * frames work against `peer` 1.0.2 (the reference) and the project.
 */
export class PeerjsRelayShard {
  readonly #p: PeerjsRelayParams;
  readonly #peers: PjPeer[] = [];
  readonly #hist = new Histogram();
  readonly #ring: number;
  #sending = false;
  #measuring = false;
  #closing = false;
  #outOfOrder = 0;
  #errors = 0;
  #ready: PromiseWithResolvers<void> = Promise.withResolvers<void>();
  #notReady = 0;
  #lastDelivery = 0;
  #heartbeat: ReturnType<typeof setInterval> | undefined;

  /** A shard; nothing is connected until {@link setup}. */
  constructor(params: PeerjsRelayParams) {
    this.#p = params;
    this.#ring = 2 * params.window + 1;
  }

  /** Connects every client and settles once each was sent `OPEN`. */
  async setup(): Promise<void> {
    const p = this.#p;
    const data = candidateData(p.bytes);
    const n = p.pairs * 2;
    this.#notReady = n;
    for (let k = 0; k < p.pairs; k++) {
      const base = `bench-${p.nonce}-j${p.firstPair + k}`;
      const a = this.#peer(`${base}a`);
      const b = this.#peer(`${base}b`);
      a.partner = b;
      b.partner = a;
      for (const x of [a, b]) {
        // The payload is ICE-candidate-like; its last fields are the sequence number and time.
        x.prefix = `{"type":"CANDIDATE","dst":"${x.partner.id}","payload":${data},"s":`;
        this.#peers.push(x);
      }
    }
    const url = (i: number) => {
      const q = new URLSearchParams({
        key: "peerjs",
        id: this.#peers[i].id,
        token: nonce(),
        version: "1.5.5",
      });
      return `${p.url}?${q}`;
    };
    const work = connectMany(url, n, p.concurrency, (i, ws) => {
      const peer = this.#peers[i];
      peer.ws = ws;
      ws.onmessage = (e) => this.#onMessage(peer, e.data as string);
    }).then(() => this.#ready.promise);
    await within(work, p.setupTimeoutMs, `PeerJS relay setup of ${n} clients`);
    this.#heartbeat = setInterval(() => {
      for (const peer of this.#peers) peer.ws.send('{"type":"HEARTBEAT"}');
    }, PEERJS_HEARTBEAT_MS);
  }

  #peer(id: string): PjPeer {
    return {
      ws: undefined as unknown as WebSocket,
      id,
      partner: undefined as unknown as PjPeer,
      prefix: "",
      sent: 0,
      received: 0,
      sentAt: new Float64Array(this.#ring),
      delivered: 0,
      ready: false,
    };
  }

  #send(peer: PjPeer): void {
    const s = ++peer.sent;
    const t = clock();
    peer.sentAt[s % this.#ring] = t;
    peer.ws.send(peer.prefix + s + ',"t":' + t + "}}");
  }

  #onMessage(peer: PjPeer, d: string): void {
    if (d.startsWith('{"type":"CANDIDATE"')) {
      // '…,"s":123,"t":1732541234567.891}}': the payload's last two fields.
      const i = d.lastIndexOf(',"s":');
      const j = d.indexOf(',"t":', i);
      const s = Number(d.slice(i + 5, j));
      const t = Number(d.slice(j + 5, d.indexOf("}", j)));
      if (s !== peer.received + 1) this.#outOfOrder++;
      peer.received = s;
      const now = clock();
      this.#lastDelivery = now;
      if (this.#measuring) {
        this.#hist.record((now - t) * 1000);
        peer.delivered++;
      }
      if (this.#sending) this.#send(peer);
      return;
    }
    if (d.startsWith('{"type":"OPEN"') && !peer.ready) {
      peer.ready = true;
      if (--this.#notReady === 0) this.#ready.resolve();
      return;
    }
    // ERROR, ID-TAKEN, or an EXPIRE (the partner was not there): all count as errors.
    if (!this.#closing && this.#errors++ < 3) console.error(`PeerJS client ${peer.id} got ${d}`);
  }

  /** Starts the closed loop: every client sends its window. */
  start(): void {
    this.#sending = true;
    for (const peer of this.#peers) {
      for (let k = 0; k < this.#p.window; k++) this.#send(peer);
    }
  }

  /** Forgets what was counted so far and starts counting. */
  beginWindow(): void {
    this.#hist.reset();
    for (const peer of this.#peers) peer.delivered = 0;
    this.#measuring = true;
  }

  /** Stops counting and returns the window's figures. */
  endWindow(): RelayWindow {
    this.#measuring = false;
    const now = clock();
    let oldest = 0;
    for (const peer of this.#peers) {
      const next = peer.partner.received + 1;
      if (next <= peer.sent) oldest = Math.max(oldest, now - peer.sentAt[next % this.#ring]);
    }
    return {
      delivered: this.#peers.map((x) => x.delivered),
      histogram: this.#hist.toJSON(),
      oldestInFlightMs: oldest,
      outOfOrder: this.#outOfOrder,
      errors: this.#errors,
    };
  }

  /**
   * Stops sending and waits (at most {@link DRAIN_TIMEOUT_MS}) until every message
   * sent has reached the partner: what is still missing then was lost.
   */
  async drain(): Promise<YRelayDrain> {
    this.#sending = false;
    const stopped = clock();
    const lost = () => this.#peers.reduce((a, x) => a + x.sent - x.partner.received, 0);
    for (let waited = 0; waited < DRAIN_TIMEOUT_MS && lost() > 0; waited += 10) {
      await new Promise((r) => setTimeout(r, 10));
    }
    return { lost: lost(), lostEchoes: 0, drainMs: Math.max(0, this.#lastDelivery - stopped) };
  }

  /** Stops sending and closes every client. */
  async teardown(): Promise<void> {
    this.#sending = false;
    this.#measuring = false;
    this.#closing = true;
    clearInterval(this.#heartbeat);
    await closeAll(this.#peers.map((x) => x.ws).filter((ws) => ws !== undefined));
  }
}

// ---------------------------------------------------------------- shards

/** What a shard is made from. */
export type ShardSpec =
  | { type: "relay"; params: RelayParams }
  | { type: "yrelay"; params: YRelayParams }
  | { type: "pjrelay"; params: PeerjsRelayParams }
  | { type: "join"; params: JoinParams };

/** The calls a driver makes on a shard, with their results. */
export interface ShardCalls {
  /** {@link RelayShard.setup}. */
  setup: void;
  /** {@link RelayShard.start}. */
  start: void;
  /** {@link RelayShard.beginWindow}. */
  beginWindow: void;
  /** {@link RelayShard.endWindow}. */
  endWindow: RelayWindow;
  /** {@link YRelayShard.drain} or {@link PeerjsRelayShard.drain}. */
  drain: YRelayDrain;
  /** {@link JoinShard.run}. */
  run: JoinResult;
  /** Either shard's teardown. */
  teardown: void;
}

/** A shard of any type. */
export type Shard = RelayShard | YRelayShard | PeerjsRelayShard | JoinShard;

/** Builds the shard `spec` describes. */
export function makeShard(spec: ShardSpec): Shard {
  switch (spec.type) {
    case "relay":
      return new RelayShard(spec.params);
    case "yrelay":
      return new YRelayShard(spec.params);
    case "pjrelay":
      return new PeerjsRelayShard(spec.params);
    case "join":
      return new JoinShard(spec.params);
  }
}

/** Carries out `method` on `shard`; a call the shard's type lacks is an error. */
export async function dispatch<M extends keyof ShardCalls>(
  shard: Shard,
  method: M,
): Promise<ShardCalls[M]> {
  if (method === "teardown") return await shard.teardown() as ShardCalls[M];
  if (
    shard instanceof RelayShard || shard instanceof YRelayShard ||
    shard instanceof PeerjsRelayShard
  ) {
    switch (method) {
      case "setup":
        return await shard.setup() as ShardCalls[M];
      case "start":
        return shard.start() as ShardCalls[M];
      case "beginWindow":
        return shard.beginWindow() as ShardCalls[M];
      case "endWindow":
        return shard.endWindow() as ShardCalls[M];
      case "drain":
        if (shard instanceof YRelayShard || shard instanceof PeerjsRelayShard) {
          return await shard.drain() as ShardCalls[M];
        }
    }
  } else if (method === "run") return await shard.run() as ShardCalls[M];
  throw new Error(`a ${shard.constructor.name} has no ${method}`);
}
