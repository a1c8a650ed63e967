/**
 * A broker wired to a recording outbox, a clock the test advances by hand and
 * a deterministic source of "random" bytes, so every effect can be asserted
 * exactly and in order.
 *
 * @module
 */

import {
  type Access,
  type AuthRules,
  Broker,
  type Connection,
  type Directory,
  type Limits,
  type Question,
} from "../../lib/diva/broker.ts";

/** One effect the broker asked for, in the order it asked. */
export type Effect =
  | { kind: "send"; to: string; frame: string }
  | { kind: "close"; to: string; code: number; reason: string }
  | { kind: "ice"; to: string; ident: string; turn?: boolean }
  | { kind: "ask"; to: string; question: Question }
  | { kind: "wake"; to: string; at: number };

/** Options for {@link harness}. */
export interface HarnessOptions {
  /** Broker limits (the rest take the defaults). */
  limits?: Partial<Limits>;
  /** Starting time in ms. */
  start?: number;
  /** Seed of the deterministic byte stream. */
  seed?: number;
  /** A cluster directory (cluster mode). */
  directory?: Directory<string>;
  /** Which joins need a token or a proof. */
  auth?: AuthRules;
  /** Record the `turn` flag of ice effects (off, so older assertions stay as they are). */
  recordTurn?: boolean;
}

/** A broker under test with everything it did recorded. */
export interface Harness {
  /** The broker; connection handles are names such as "A". */
  readonly broker: Broker<string>;
  /** Every effect so far. */
  readonly effects: Effect[];
  /** Current clock value in ms. */
  now: number;
  /** Opens a connection named `name`, with the access a token gave it, if any. */
  open(name: string, access?: Access): Connection<string>;
  /** Looks up an open (or closed) connection by name. */
  conn(name: string): Connection<string>;
  /** Sends a raw frame from `name`. */
  raw(name: string, data: string | Uint8Array): void;
  /** Sends `JSON.stringify(call)` from `name`. */
  call(name: string, ...call: unknown[]): void;
  /** Closes connection `name` (the client went away). */
  close(name: string): void;
  /** Takes and returns the effects recorded since the last take. */
  take(): Effect[];
  /** Takes the effects and returns them as `[to, parsedFrame]` pairs (sends only). */
  sent(): [string, unknown][];
  /**
   * Moves the clock forward by `ms`, waking each connection whose wake comes
   * due on the way, in time order, at the time it was asked for.
   */
  advance(ms: number): void;
}

/** A deterministic byte source (xorshift32) standing in for crypto randomness. */
export function seededBytes(seed = 0x9e3779b9): (buf: Uint8Array) => void {
  let x = seed >>> 0 || 1;
  return (buf) => {
    for (let i = 0; i < buf.length; i++) {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      buf[i] = x & 0xff;
    }
  };
}

/** A fresh broker with a recording outbox, a manual clock and seeded randomness. */
export function harness(options: HarnessOptions = {}): Harness {
  const effects: Effect[] = [];
  const conns = new Map<string, Connection<string>>();
  const clock = { now: options.start ?? 1_000_000 };
  let taken = 0;
  /** Pending wakes: when each connection asked to be woken. */
  const wakes = new Map<string, number>();
  /** When the broker asked to be ticked, or -1. */
  let tickAt = -1;
  const broker = new Broker<string>({
    outbox: {
      send: (to, frame) => effects.push({ kind: "send", to, frame }),
      close: (to, code, reason) => effects.push({ kind: "close", to, code, reason }),
      ice: (to, _conn, ident, turn) =>
        effects.push(
          options.recordTurn ? { kind: "ice", to, ident, turn } : { kind: "ice", to, ident },
        ),
      ask: (to, _conn, question) => effects.push({ kind: "ask", to, question }),
      // The broker's own timer (sessions' grace): not an effect on any connection.
      schedule: (delayMs) => {
        tickAt = clock.now + delayMs;
      },
      wake: (to, _conn, delayMs) => {
        const at = clock.now + delayMs;
        wakes.set(to, at);
        effects.push({ kind: "wake", to, at });
      },
    },
    now: () => clock.now,
    randomBytes: seededBytes(options.seed),
    limits: options.limits,
    directory: options.directory,
    auth: options.auth,
  });
  const h: Harness = {
    broker,
    effects,
    get now() {
      return clock.now;
    },
    set now(ms: number) {
      clock.now = ms;
    },
    open(name, access) {
      const c = h.broker.open(name, access);
      conns.set(name, c);
      return c;
    },
    conn(name) {
      const c = conns.get(name);
      if (c === undefined) throw new Error(`no connection ${name}`);
      return c;
    },
    raw(name, data) {
      h.broker.frame(h.conn(name), data);
    },
    call(name, ...call) {
      h.broker.frame(h.conn(name), JSON.stringify(call));
    },
    close(name) {
      h.broker.close(h.conn(name));
    },
    take() {
      const out = effects.slice(taken);
      taken = effects.length;
      return out;
    },
    sent() {
      return h.take().flatMap((e) =>
        e.kind === "send" ? [[e.to, JSON.parse(e.frame)] as [string, unknown]] : []
      );
    },
    advance(ms) {
      const end = clock.now + ms;
      for (;;) {
        let next: [string, number] | undefined;
        for (const w of wakes) if (w[1] <= end && (next === undefined || w[1] < next[1])) next = w;
        if (tickAt >= 0 && tickAt <= end && (next === undefined || tickAt <= next[1])) {
          if (tickAt > clock.now) clock.now = tickAt;
          tickAt = -1;
          h.broker.tick();
          continue;
        }
        if (next === undefined) break;
        wakes.delete(next[0]);
        if (next[1] > clock.now) clock.now = next[1];
        h.broker.wake(h.conn(next[0]));
      }
      clock.now = end;
    },
  };
  return h;
}
