/**
 * The y-webrtc engine wired to recording links and a clock the test advances
 * by hand, so every effect can be asserted exactly and in order.
 *
 * @module
 */

import {
  type YConn,
  type YLimits,
  type YWebrtcEngine,
  ywebrtcEngine,
  type YWebrtcOptions,
} from "../../lib/ywebrtc/engine.ts";

/** One effect the engine asked for, in the order it asked. */
export type YEffect =
  | { kind: "send"; to: string; frame: string }
  | { kind: "close"; to: string; code: number; reason: string }
  | { kind: "wake"; to: string; at: number };

/** Options for {@link yharness}. */
export interface YHarnessOptions {
  /** Limits (the rest take the defaults). */
  limits?: Partial<YLimits>;
  /** Starting time in ms. */
  start?: number;
  /** Passed on to the engine. */
  allowUnsubscribedPublish?: YWebrtcOptions["allowUnsubscribedPublish"];
}

/** An engine under test with everything it did recorded. */
export interface YHarness {
  /** The engine; connections are named, e.g. "A". */
  readonly engine: YWebrtcEngine;
  /** Every effect so far. */
  readonly effects: YEffect[];
  /** Current clock value in ms. */
  now: number;
  /** Opens a connection named `name`. */
  open(name: string): YConn;
  /** The connection named `name`. */
  conn(name: string): YConn;
  /** Sends a raw frame from `name`. */
  raw(name: string, data: string | Uint8Array): void;
  /** Sends `JSON.stringify(message)` from `name`. */
  send(name: string, message: unknown): void;
  /** Subscribes `name` to `topics`. */
  subscribe(name: string, ...topics: string[]): void;
  /** Publishes `data` from `name` to `topic`. */
  publish(name: string, topic: string, data?: unknown): void;
  /** The client went away. */
  close(name: string): void;
  /** Takes and returns the effects recorded since the last take. */
  take(): YEffect[];
  /** Takes the effects and returns the sends as `[to, parsedFrame]` pairs. */
  sent(): [string, Record<string, unknown>][];
  /** Moves the clock forward by `ms`, waking connections whose wake comes due, in time order. */
  advance(ms: number): void;
}

/** A fresh engine with recording links and a manual clock. */
export function yharness(options: YHarnessOptions = {}): YHarness {
  const effects: YEffect[] = [];
  const conns = new Map<string, YConn>();
  const clock = { now: options.start ?? 1_000_000 };
  const wakes = new Map<string, number>();
  let taken = 0;
  const engine = ywebrtcEngine({
    limits: options.limits,
    now: () => clock.now,
    allowUnsubscribedPublish: options.allowUnsubscribedPublish,
  });
  const h: YHarness = {
    engine,
    effects,
    get now() {
      return clock.now;
    },
    set now(ms: number) {
      clock.now = ms;
    },
    open(name) {
      const link = {
        send: (frame: string) => effects.push({ kind: "send", to: name, frame }),
        close: (code: number, reason: string) =>
          effects.push({ kind: "close", to: name, code, reason }),
        wake: (delayMs: number) => {
          const at = clock.now + delayMs;
          wakes.set(name, at);
          effects.push({ kind: "wake", to: name, at });
        },
      };
      const c = engine.open(link, { url: new URL("ws://127.0.0.1/yjs"), address: "127.0.0.1" });
      conns.set(name, c);
      return c;
    },
    conn(name) {
      const c = conns.get(name);
      if (c === undefined) throw new Error(`no connection ${name}`);
      return c;
    },
    raw(name, data) {
      engine.frame(h.conn(name), data);
    },
    send(name, message) {
      engine.frame(h.conn(name), JSON.stringify(message));
    },
    subscribe(name, ...topics) {
      h.send(name, { type: "subscribe", topics });
    },
    publish(name, topic, data = {}) {
      h.send(name, { type: "publish", topic, data });
    },
    close(name) {
      engine.close(h.conn(name));
    },
    take() {
      const out = effects.slice(taken);
      taken = effects.length;
      return out;
    },
    sent() {
      return h.take().flatMap((e) =>
        e.kind === "send" ? [[e.to, JSON.parse(e.frame)] as [string, Record<string, unknown>]] : []
      );
    },
    advance(ms) {
      const end = clock.now + ms;
      for (;;) {
        let next: [string, number] | undefined;
        for (const w of wakes) if (w[1] <= end && (next === undefined || w[1] < next[1])) next = w;
        if (next === undefined) break;
        wakes.delete(next[0]);
        if (next[1] > clock.now) clock.now = next[1];
        engine.wake(h.conn(next[0]));
      }
      clock.now = end;
    },
  };
  return h;
}
