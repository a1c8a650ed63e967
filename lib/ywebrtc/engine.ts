/**
 * The y-webrtc signalling protocol (Yjs' `y-webrtc` 10.x provider) as a
 * transport {@link Engine}: a pure state machine, free of I/O, on an
 * injected clock.
 *
 * **Inputs**, per connection and in this order: {@link YWebrtcEngine.open}
 * once; then any number of {@link YWebrtcEngine.frame} (a message as it
 * arrived), {@link YWebrtcEngine.oversize} (a message over the size limit
 * arrived) and {@link YWebrtcEngine.wake} (a wake the engine asked for came
 * due); then {@link YWebrtcEngine.close} once. Calls after `close` are
 * ignored; `close` is idempotent.
 *
 * **Outputs**, only through the connection's {@link Link}: `send` a text
 * frame, `close` with a code (1008 for a queue past its bound, 1009 for an
 * oversize frame), `wake` me in so many ms. The engine never throws on any
 * input, and reads the time only through `now`.
 *
 * **Wire** (as the reference `bin/server.js` of y-webrtc 10.3.0, and where
 * it says nothing, as decided here):
 * - `{type:"subscribe", topics:[…]}` subscribes to each string topic;
 *   `{type:"unsubscribe", topics:[…]}` ends each. Subscribing twice, or
 *   unsubscribing a topic not held, changes nothing and says nothing.
 * - `{type:"publish", topic, …}` goes to every subscriber of the topic, the
 *   sender included, with `clients` set to the subscriber count; the rest of
 *   the message is the sender's text, unchanged.
 * - `{type:"ping"}` is answered `{type:"pong"}`. Dead connections are found
 *   by the transport's WebSocket pings.
 * - A binary frame holding UTF-8 JSON is treated as text; answers are text.
 * - **Malformed frames** (not JSON, not an object with a string `type`, an
 *   unknown `type`, `topics` that is not an array, a publish whose `topic`
 *   is not a string) change nothing and are answered
 *   `{type:"error", code, detail}` (codes in `codec.ts`), counted by code.
 *   A y-webrtc client ignores every message but `publish`, so the reply is
 *   harmless to it and useful to anyone reading the frames. Entries of
 *   `topics` that are not strings, or longer than `maxTopicLength`, are
 *   ignored (the others are carried out) and one `bad-topic` reply says so.
 * - **A publish to a topic the sender has not subscribed is refused**
 *   (`not-subscribed`), unlike the reference server. The real client always
 *   subscribes first, on the same ordered socket, so no client of it is
 *   affected; refusing keeps every publish from a member of its topic (so it
 *   is echoed to the sender with a `clients` that counts it, and paid for by
 *   a budget that grew with that topic), and stops a connection from
 *   writing into rooms it does not take part in without even being counted.
 *   A connection whose subscribe was refused by a limit cannot announce
 *   itself to a topic whose members could never answer it.
 * - **Not done: targeted delivery.** A publish whose plain `data.to` names
 *   one peer still goes to the whole topic. y-webrtc 10.x drops messages
 *   addressed to another peer before acting on them, so delivering only to
 *   connections that published that peer id as `data.from` would be safe for
 *   it; but peer ids are unauthenticated and not unique, every connection
 *   would lose its echo, encrypted rooms (the recommended mode) would not
 *   benefit, and other clients of this wire may rely on seeing the topic.
 *
 * **Limits** ({@link YLimits}; the transport enforces the frame size and
 * slow readers): topics per connection, subscribers per topic, topic length,
 * and shaping. **Shaping** works as in the DIVA broker: each connection has
 * a {@link Budget}; a frame runs as soon as one whole token is there and
 * pays its {@link frameCost}, and a publish also pays one token per
 * `receiversPerToken` receivers beyond the first, so fan-out is paid for.
 * Frames over budget wait in a FIFO queue and run in order when the budget
 * allows (the engine asks the link for a wake); nothing is dropped, and only
 * a queue past `maxQueuedFrames` or `maxQueuedBytes` closes the connection
 * with 1008. In y-webrtc every signal of every pair is published to the
 * whole topic, so a connection's budget grows with what it takes part in:
 * per topic it holds, and per subscriber it shares a topic with (counted
 * once per shared topic, up to {@link MAX_BUDGET_PEERS}). The rate and the
 * bankable burst follow the current counts; a new high of them is credited
 * at once, once, so subscribing and unsubscribing cannot farm tokens. A
 * subscribe announces nothing to others in y-webrtc (the client's announce
 * is a publish and pays as one), so there is no separate churn budget.
 *
 * @module
 */

import { Budget, frameCost, FrameQueue } from "../shaping.ts";
import {
  type Engine,
  type EngineStatus,
  labelled,
  type Link,
  type MetricFamily,
  type Peer,
  type Sample,
} from "../transport/engine.ts";
import { utf8Exceeds } from "../transport/utf8.ts";
import { type Deliver, MemoryBus, type Refuse, type TopicBus } from "./bus.ts";
import {
  decode,
  encodeError,
  ERROR_CODES,
  type ErrorCode,
  type Fault,
  IN_TYPES,
  type InType,
  isFault,
  type Message,
  PONG,
  type PublishMessage,
} from "./codec.ts";

/**
 * The limits of the y-webrtc engine. The server sets `maxTopicsPerConnection`
 * and `maxSubscribersPerTopic` from `--yjs-max-topics` and
 * `--yjs-max-subscribers`, and takes the frame size, the base rate and burst
 * and the queue bounds from the settings it shares with DIVA; the rest keep
 * their defaults.
 */
export interface YLimits {
  /** Largest frame, in bytes (the transport enforces it; the engine checks too). */
  maxFrameBytes: number;
  /** Most topics one connection may hold. */
  maxTopicsPerConnection: number;
  /** Most subscribers a topic may have. */
  maxSubscribersPerTopic: number;
  /** Longest topic name, in UTF-16 code units. */
  maxTopicLength: number;
  /** Sustained budget of a connection that holds no topic, in tokens a second; 0 turns shaping off. */
  rate: number;
  /** Tokens a connection that holds no topic may bank. */
  burst: number;
  /** Tokens a second added for each topic the connection holds. */
  ratePerTopic: number;
  /** Tokens granted, and bankable, for each topic the connection holds. */
  burstPerTopic: number;
  /** Tokens a second added for each subscriber the connection shares a topic with. */
  ratePerPeer: number;
  /** Tokens granted, and bankable, for each subscriber the connection shares a topic with. */
  burstPerPeer: number;
  /** A publish costs one token more per this many receivers beyond the first; 0 = not charged. */
  receiversPerToken: number;
  /** Frames that may wait in one connection's queue; one more closes it with 1008. */
  maxQueuedFrames: number;
  /** Bytes that may wait in one connection's queue; more closes it with 1008. */
  maxQueuedBytes: number;
}

/**
 * Limits used where none are given. A y-webrtc client opens at most 20 to
 * 34 WebRTC connections a room, and each costs it an offer or answer and a
 * handful of candidates, every one a publish: `burstPerPeer` covers that
 * twice over, so joining a busy room is never delayed.
 */
export const DEFAULT_YLIMITS: Readonly<YLimits> = {
  maxFrameBytes: 64 * 1024,
  maxTopicsPerConnection: 64,
  maxSubscribersPerTopic: 256,
  maxTopicLength: 512,
  rate: 200,
  burst: 400,
  ratePerTopic: 2,
  burstPerTopic: 32,
  ratePerPeer: 2,
  burstPerPeer: 32,
  receiversPerToken: 32,
  maxQueuedFrames: 1024,
  maxQueuedBytes: 1024 * 1024,
};

/** The path where only y-webrtc is spoken (it is also understood on `/`). */
export const YWEBRTC_PATH = "/yjs";

/** Shared subscribers past this many add nothing to a connection's budget. */
export const MAX_BUDGET_PEERS = 256;

/** One client connection as the engine sees it. */
export class YConn {
  /** Topics held, in subscription order. */
  readonly topics: Set<string> = new Set();
  /** Set once the connection closed or was asked to close. */
  closed: boolean = false;
  /** Frames waiting to be handled, in arrival order, and the wake pending for them. */
  readonly queue: FrameQueue = new FrameQueue();
  /** Subscribers the connection shares a topic with, once per shared topic, as last fitted. */
  peers: number = 0;
  /** @internal The frame budget; null when shaping is off. */
  readonly budget: Budget | null;
  /** @internal The highest grant (per-topic plus per-peer tokens) credited so far. */
  granted: number = 0;
  /** @internal The bus version the budget was last fitted to. */
  fitted: number = -1;

  /** Made by {@link YWebrtcEngine.open}. */
  constructor(
    readonly id: number,
    readonly link: Link,
    readonly peer: Peer,
    limits: YLimits,
    now: number,
  ) {
    this.budget = limits.rate > 0 ? new Budget(limits.rate, limits.burst, now) : null;
  }

  /** Frames waiting in the queue. */
  get queued(): number {
    return this.queue.length;
  }
}

/** Running totals for metrics. */
export interface YStats {
  /** Connections ever opened. */
  connectionsOpened: number;
  /** Well-formed frames handled, by type. */
  framesIn: Record<InType, number>;
  /** Publishes delivered to at least their sender (the `publish` frames that were not refused). */
  publishes: number;
  /** Publish frames sent to subscribers. */
  deliveries: number;
  /** Characters of delivered publish frames (bytes for ASCII payloads). */
  deliveredBytes: number;
  /** Error replies, by code. */
  errors: Record<ErrorCode, number>;
  /** Frames that had to wait for their connection's budget. */
  framesDelayed: number;
  /** Connections closed with 1008 because their queue passed its bound, by bound. */
  queueClosed: { frames: number; bytes: number };
}

/** What the engine is built from. */
export interface YWebrtcOptions {
  /** Limits; missing ones take {@link DEFAULT_YLIMITS}. */
  limits?: Partial<YLimits>;
  /** The clock, in ms (passed in: the engine reads no clock of its own). */
  now: () => number;
  /**
   * Makes the bus publishes fan out on, given how to deliver to a local
   * subscriber and how to take back a subscription it could not keep (a
   * cluster-wide limit checked late); a {@link MemoryBus} when omitted.
   */
  bus?: (deliver: Deliver<YConn>, refuse: Refuse<YConn>) => TopicBus<YConn>;
  /**
   * Deliver publishes to a topic the sender has not subscribed (as the
   * reference server does). Off by default: see the module notes.
   */
  allowUnsubscribedPublish?: boolean;
  /**
   * True for a topic whose subscribers need a token granting it (as a room):
   * the server's `--auth-rooms`. No topic is protected when omitted.
   */
  protectedTopic?: (topic: string) => boolean;
}

/** The y-webrtc engine: an {@link Engine} with its counts. */
export interface YWebrtcEngine extends Engine<YConn> {
  /** The limits in force. */
  readonly limits: Readonly<YLimits>;
  /** Running totals. */
  readonly stats: YStats;
  /** Topics with at least one subscriber. */
  readonly topics: number;
  /** Subscriptions held, over all connections. */
  readonly subscriptions: number;
  /** Subscribers of `topic`. */
  count(topic: string): number;
  /** A connection opened. */
  open(link: Link, peer: Peer): YConn;
  /** A message arrived on `conn`. Never throws; frames over budget wait in order. */
  frame(conn: YConn, data: string | Uint8Array): void;
  /** A message over the size limit arrived: `too-large`, then close with 1009. */
  oversize(conn: YConn): void;
  /** The connection's wake came due (early, late or twice is harmless). */
  wake(conn: YConn): void;
  /** The connection closed: it leaves every topic. Idempotent. */
  close(conn: YConn): void;
}

/** WebSocket close codes the engine uses. */
export const YCloseCode = { policy: 1008, tooLarge: 1009 } as const;

function counters<K extends string>(keys: readonly K[]): Record<K, number> {
  const o = {} as Record<K, number>;
  for (const k of keys) o[k] = 0;
  return o;
}

/** True when `first` opens a JSON object: the y-webrtc wire (DIVA frames are arrays). */
function opensObject(first: string | Uint8Array): boolean {
  if (typeof first === "string") return first.trimStart().startsWith("{");
  for (const c of first) {
    if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) continue;
    return c === 0x7b;
  }
  return false;
}

/**
 * Makes the y-webrtc engine.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * let t = 0;
 * const engine = ywebrtcEngine({ now: () => t });
 * const sent: string[] = [];
 * const link = { send: (f: string) => sent.push(f), close() {}, wake() {} };
 * const conn = engine.open(link, { url: new URL("ws://x/yjs"), address: "127.0.0.1" });
 * engine.frame(conn, '{"type":"subscribe","topics":["room"]}');
 * engine.frame(conn, '{"type":"publish","topic":"room","data":{"type":"announce"}}');
 * assert.deepEqual(sent, [
 *   '{"type":"publish","topic":"room","data":{"type":"announce"},"clients":1}',
 * ]);
 * engine.close(conn);
 * assert.equal(engine.topics, 0);
 * ```
 */
export function ywebrtcEngine(options: YWebrtcOptions): YWebrtcEngine {
  const limits: Readonly<YLimits> = { ...DEFAULT_YLIMITS, ...options.limits };
  const now = options.now;
  const openPublish = options.allowUnsubscribedPublish ?? false;
  const protectedTopic = options.protectedTopic ?? (() => false);
  const stats: YStats = {
    connectionsOpened: 0,
    framesIn: counters(IN_TYPES),
    publishes: 0,
    deliveries: 0,
    deliveredBytes: 0,
    errors: counters(ERROR_CODES),
    framesDelayed: 0,
    queueClosed: { frames: 0, bytes: 0 },
  };
  const deliver: Deliver<YConn> = (sub, frame) => {
    if (sub.closed) return;
    stats.deliveries++;
    stats.deliveredBytes += frame.length;
    sub.link.send(frame);
  };
  const refuse: Refuse<YConn> = (conn, topic) => {
    if (conn.closed || !conn.topics.delete(topic)) return;
    bus.unsubscribe(topic, conn);
    subscriptions--;
    fail(
      conn,
      "topic-full",
      `at most ${limits.maxSubscribersPerTopic} subscribers per topic; not subscribed`,
      [topic],
    );
  };
  const bus = options.bus?.(deliver, refuse) ?? new MemoryBus<YConn>(deliver);
  let connections = 0;
  let subscriptions = 0;
  let nextId = 1;

  function fail(conn: YConn, code: ErrorCode, detail: string, topics?: readonly string[]): void {
    stats.errors[code]++;
    if (!conn.closed) conn.link.send(encodeError(code, detail, topics));
  }

  function closeWith(conn: YConn, code: number, reason: string): void {
    conn.link.close(code, reason);
    close(conn);
  }

  /**
   * Brings the connection's budget in line with what it takes part in: the
   * rate and the bankable burst follow the topics it holds and the
   * subscribers it shares them with; a new high is credited once.
   */
  function fit(conn: YConn, budget: Budget, at: number): void {
    if (conn.fitted === bus.version) return;
    conn.fitted = bus.version;
    let peers = 0;
    for (const t of conn.topics) {
      const n = bus.count(t);
      if (n > 1) peers += n - 1;
    }
    conn.peers = peers;
    const p = peers < MAX_BUDGET_PEERS ? peers : MAX_BUDGET_PEERS;
    const topics = conn.topics.size;
    const grant = limits.burstPerTopic * topics + limits.burstPerPeer * p;
    const credit = grant > conn.granted ? grant - conn.granted : 0;
    if (credit > 0) conn.granted = grant;
    budget.resize(
      at,
      limits.rate + limits.ratePerTopic * topics + limits.ratePerPeer * p,
      limits.burst + grant,
      credit,
    );
  }

  /** What a message costs beyond its bytes: the fan-out of a publish. */
  function fanoutCost(m: Message | Fault): number {
    if (m.type !== "publish" || limits.receiversPerToken <= 0) return 0;
    const n = bus.count(m.topic);
    return n > 1 ? Math.floor((n - 1) / limits.receiversPerToken) : 0;
  }

  /** Handles one frame if the budget allows it now: 0, or the ms to wait before trying again. */
  function step(conn: YConn, data: string | Uint8Array): number {
    const budget = conn.budget;
    if (budget === null) {
      dispatch(conn, decode(data));
      return 0;
    }
    const at = now();
    fit(conn, budget, at);
    if (!budget.ready(at)) return budget.waitMs(at);
    const m = decode(data);
    budget.charge(frameCost(data) + fanoutCost(m));
    dispatch(conn, m);
    return 0;
  }

  /** Puts a frame at the end of the queue; false if that closed the connection. */
  function enqueue(conn: YConn, data: string | Uint8Array): boolean {
    const bound = conn.queue.push(data, limits);
    if (bound === undefined) {
      stats.framesDelayed++;
      return true;
    }
    stats.queueClosed[bound]++;
    const max = bound === "frames"
      ? `${limits.maxQueuedFrames} frames`
      : `${limits.maxQueuedBytes} bytes`;
    fail(conn, "rate-limited", `sending faster than allowed: more than ${max} waiting`);
    closeWith(conn, YCloseCode.policy, "rate limit abuse");
    return false;
  }

  /** Asks the link for a wake in `ms`, unless an earlier one is pending. */
  function schedule(conn: YConn, ms: number): void {
    if (conn.queue.schedule(now(), ms)) conn.link.wake(ms);
  }

  /** Handles waiting frames in order until one must wait or the queue is empty. */
  function drain(conn: YConn): void {
    const wait = conn.queue.drain((data) => step(conn, data), () => !conn.closed);
    if (wait > 0) schedule(conn, wait);
  }

  function dispatch(conn: YConn, m: Message | Fault): void {
    if (isFault(m)) {
      fail(conn, m.code, m.detail);
      return;
    }
    stats.framesIn[m.type]++;
    switch (m.type) {
      case "subscribe":
        subscribe(conn, m.topics);
        return;
      case "unsubscribe":
        unsubscribe(conn, m.topics);
        return;
      case "publish":
        publish(conn, m);
        return;
      case "ping":
        conn.link.send(PONG);
        return;
    }
  }

  function subscribe(conn: YConn, topics: readonly unknown[]): void {
    let bad = 0;
    let overLimit: string[] | undefined;
    let full: string[] | undefined;
    let forbidden: string[] | undefined;
    for (const t of topics) {
      if (typeof t !== "string" || t.length > limits.maxTopicLength) {
        bad++;
        continue;
      }
      if (conn.topics.has(t)) continue;
      if (protectedTopic(t) && conn.peer.grant?.room(t) !== true) {
        (forbidden ??= []).push(t);
        continue;
      }
      if (conn.topics.size >= limits.maxTopicsPerConnection) {
        (overLimit ??= []).push(t);
        continue;
      }
      if (bus.count(t) >= limits.maxSubscribersPerTopic) {
        (full ??= []).push(t);
        continue;
      }
      conn.topics.add(t);
      bus.subscribe(t, conn);
      subscriptions++;
    }
    if (bad > 0) badTopics(conn, bad);
    if (forbidden !== undefined) {
      fail(
        conn,
        "forbidden",
        "these topics need a token that grants them; not subscribed",
        forbidden,
      );
    }
    if (overLimit !== undefined) {
      fail(
        conn,
        "topic-limit",
        `at most ${limits.maxTopicsPerConnection} topics per connection; not subscribed`,
        overLimit,
      );
    }
    if (full !== undefined) {
      fail(
        conn,
        "topic-full",
        `at most ${limits.maxSubscribersPerTopic} subscribers per topic; not subscribed`,
        full,
      );
    }
  }

  function unsubscribe(conn: YConn, topics: readonly unknown[]): void {
    let bad = 0;
    for (const t of topics) {
      if (typeof t !== "string") {
        bad++;
        continue;
      }
      if (!conn.topics.delete(t)) continue;
      bus.unsubscribe(t, conn);
      subscriptions--;
    }
    if (bad > 0) badTopics(conn, bad);
  }

  function badTopics(conn: YConn, n: number): void {
    fail(
      conn,
      "bad-topic",
      `${n} ${n === 1 ? "entry" : "entries"} of topics ignored: ` +
        `a topic is a string of at most ${limits.maxTopicLength} characters`,
    );
  }

  function publish(conn: YConn, m: PublishMessage): void {
    if (!openPublish && !conn.topics.has(m.topic)) {
      fail(conn, "not-subscribed", "subscribe to a topic before publishing to it", [m.topic]);
      return;
    }
    stats.publishes++;
    bus.publish(m.topic, m);
  }

  function open(link: Link, peer: Peer): YConn {
    connections++;
    stats.connectionsOpened++;
    return new YConn(nextId++, link, peer, limits, now());
  }

  function frame(conn: YConn, data: string | Uint8Array): void {
    if (conn.closed) return;
    if (utf8Exceeds(data, limits.maxFrameBytes)) {
      oversize(conn);
      return;
    }
    if (conn.queue.length === 0) {
      const wait = step(conn, data);
      if (wait === 0) return;
      if (!enqueue(conn, data)) return;
      schedule(conn, wait);
      return;
    }
    enqueue(conn, data);
  }

  function oversize(conn: YConn): void {
    if (conn.closed) return;
    fail(conn, "too-large", `frame exceeds ${limits.maxFrameBytes} bytes`);
    closeWith(conn, YCloseCode.tooLarge, "frame too large");
  }

  function wake(conn: YConn): void {
    conn.queue.wakeAt = -1;
    if (!conn.closed) drain(conn);
  }

  function close(conn: YConn): void {
    if (conn.closed) return;
    conn.closed = true;
    connections--;
    conn.queue.clear();
    for (const t of conn.topics) {
      bus.unsubscribe(t, conn);
      subscriptions--;
    }
    conn.topics.clear();
  }

  const engine: YWebrtcEngine = {
    name: "ywebrtc",
    limits,
    stats,
    get topics() {
      return bus.topics;
    },
    get subscriptions() {
      return subscriptions;
    },
    get connections() {
      return connections;
    },
    count: (topic) => bus.count(topic),
    accepts: opensObject,
    open,
    frame,
    oversize,
    wake,
    close,
    metrics: (): MetricFamily[] => ywebrtcMetrics(engine),
    status: (): EngineStatus => ({
      title: "y-webrtc signalling (Yjs)",
      connect: 'Give {ws} to y-webrtc: new WebrtcProvider(room, doc, { signaling: ["{ws}"] }).',
      counts: [
        ["ywebrtc-connections", "Connections", connections],
        ["ywebrtc-topics", "Topics", bus.topics],
        ["ywebrtc-subscriptions", "Subscriptions", subscriptions],
      ],
    }),
  };
  return engine;
}

/** The engine's counts and counters as metric families (the `ywebrtc_` names). */
export function ywebrtcMetrics(engine: YWebrtcEngine): MetricFamily[] {
  const s = engine.stats;
  const one = (v: number): Sample[] => [[null, v]];
  return [
    {
      name: "ywebrtc_connections",
      type: "gauge",
      help: "Open y-webrtc signalling connections",
      samples: one(engine.connections),
    },
    {
      name: "ywebrtc_topics",
      type: "gauge",
      help: "Topics (y-webrtc rooms) with at least one subscriber",
      samples: one(engine.topics),
    },
    {
      name: "ywebrtc_subscriptions",
      type: "gauge",
      help: "Topic subscriptions held, over all connections",
      samples: one(engine.subscriptions),
    },
    {
      name: "ywebrtc_connections_opened_total",
      type: "counter",
      help: "y-webrtc connections accepted",
      samples: one(s.connectionsOpened),
    },
    {
      name: "ywebrtc_frames_in_total",
      type: "counter",
      help: "Well-formed client frames by type",
      samples: labelled("type", IN_TYPES, s.framesIn),
    },
    {
      name: "ywebrtc_publishes_total",
      type: "counter",
      help: "Publishes accepted and fanned out",
      samples: one(s.publishes),
    },
    {
      name: "ywebrtc_deliveries_total",
      type: "counter",
      help: "Publish frames delivered to subscribers (the sender's echo included)",
      samples: one(s.deliveries),
    },
    {
      name: "ywebrtc_delivered_bytes_total",
      type: "counter",
      help: "Characters of delivered publish frames (equal to bytes for ASCII payloads)",
      samples: one(s.deliveredBytes),
    },
    {
      name: "ywebrtc_errors_total",
      type: "counter",
      help: "Error replies by code",
      samples: labelled("code", ERROR_CODES, s.errors),
    },
    {
      name: "ywebrtc_frames_delayed_total",
      type: "counter",
      help: "Client frames that waited in their connection's queue for budget",
      samples: one(s.framesDelayed),
    },
    {
      name: "ywebrtc_queue_closed_total",
      type: "counter",
      help: "Connections closed with 1008 because their queue of waiting frames passed its bound",
      samples: labelled("bound", ["frames", "bytes"] as const, s.queueClosed),
    },
  ];
}
