/**
 * The PeerJS engine wired to recording links and a clock the test advances
 * by hand, so every effect can be asserted exactly and in order.
 *
 * @module
 */

import {
  type PConn,
  type PeerjsEngine,
  peerjsEngine,
  type PeerjsLimits,
  type PeerjsOptions,
} from "../../lib/peerjs/engine.ts";

/** One effect the engine asked for, in the order it asked. */
export type PEffect =
  | { kind: "send"; to: string; frame: string }
  | { kind: "close"; to: string; code: number; reason: string }
  | { kind: "wake"; to: string; at: number };

/** Options for {@link pharness}. */
export interface PHarnessOptions {
  /** Limits (the rest take the defaults). */
  limits?: Partial<PeerjsLimits>;
  /** Starting time in ms. */
  start?: number;
  /** Passed on to the engine. */
  keys?: PeerjsOptions["keys"];
  /** Passed on to the engine. */
  path?: PeerjsOptions["path"];
  /** Passed on to the engine. */
  allowDiscovery?: PeerjsOptions["allowDiscovery"];
  /** Passed on to the engine. */
  corsOrigins?: PeerjsOptions["corsOrigins"];
  /** Passed on to the engine. */
  directory?: PeerjsOptions["directory"];
  /** Passed on to the engine. */
  newId?: PeerjsOptions["newId"];
}

/** An engine under test with everything it did recorded. */
export interface PHarness {
  /** The engine; connections are named, e.g. "A". */
  readonly engine: PeerjsEngine;
  /** Every effect so far. */
  readonly effects: PEffect[];
  /** Current clock value in ms. */
  now: number;
  /** Opens a connection named `name` with this upgrade query (e.g. `key=peerjs&id=a`). */
  open(name: string, query: string): PConn;
  /** Opens `name` holding `id` (default: the name) with `token` (default `t-<name>`) and `key`. */
  connect(name: string, id?: string, token?: string, key?: string): PConn;
  /** The connection named `name`. */
  conn(name: string): PConn;
  /** Sends a raw frame from `name`. */
  raw(name: string, data: string | Uint8Array): void;
  /** Sends `JSON.stringify(message)` from `name`. */
  send(name: string, message: unknown): void;
  /** Sends `{type, dst, payload}` from `name`. */
  relay(name: string, type: string, dst: string, payload?: unknown): void;
  /** The client went away. */
  close(name: string): void;
  /** Takes and returns the effects recorded since the last take. */
  take(): PEffect[];
  /** Takes the effects and returns the sends as `[to, parsedFrame]` pairs. */
  sent(): [string, Record<string, unknown>][];
  /** Moves the clock forward by `ms`, waking connections whose wake comes due, in time order. */
  advance(ms: number): void;
}

/** A fresh engine with recording links and a manual clock. */
export function pharness(options: PHarnessOptions = {}): PHarness {
  const effects: PEffect[] = [];
  const conns = new Map<string, PConn>();
  const clock = { now: options.start ?? 1_000_000 };
  const wakes = new Map<string, number>();
  let taken = 0;
  const engine = peerjsEngine({
    limits: options.limits,
    now: () => clock.now,
    keys: options.keys,
    path: options.path,
    allowDiscovery: options.allowDiscovery,
    corsOrigins: options.corsOrigins,
    directory: options.directory,
    newId: options.newId ?? (() => crypto.randomUUID()),
  });
  const h: PHarness = {
    engine,
    effects,
    get now() {
      return clock.now;
    },
    set now(ms: number) {
      clock.now = ms;
    },
    open(name, query) {
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
      wakes.delete(name);
      const url = new URL(`ws://127.0.0.1/peerjs?${query}`);
      const c = engine.open(link, { url, address: "127.0.0.1" });
      conns.set(name, c);
      return c;
    },
    connect(name, id = name, token = `t-${name}`, key = "peerjs") {
      const q = new URLSearchParams({ key, id, token, version: "1.5.5" });
      return h.open(name, q.toString());
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
    relay(name, type, dst, payload) {
      h.send(name, { type, dst, payload });
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
