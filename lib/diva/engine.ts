/**
 * The DIVA signal protocol as a transport {@link Engine}: the room broker,
 * wired to the connection's link, with ICE lookups done off the broker.
 *
 * The broker stays free of I/O; this module is the thin glue: it turns the
 * broker's outbox effects into link calls, does the asynchronous work the
 * broker asks for (TURN credentials and token and proof checks need
 * WebCrypto) and hands the answers back, converts a token's expiry to the
 * broker's clock, and turns the broker's counters into metrics.
 *
 * TURN credentials are minted at most once per connection and user in a
 * quarter of their lifetime: asking again gets the same ones, so a
 * connection cannot make the server sign in a loop.
 *
 * @module
 */

import type { Grant } from "../auth/grant.ts";
import type { TokenVerifier } from "../auth/jwt.ts";
import { verifyProof } from "../auth/proof.ts";
import {
  type Access,
  type AuthRules,
  Broker,
  type Connection,
  type Directory,
  type Limits,
  OUT_TYPES,
} from "./broker.ts";
import { CALL_NAMES, ERROR_CODES } from "./codec.ts";
import type { Log } from "../log.ts";
import {
  type Engine,
  type EngineStatus,
  labelled,
  type Link,
  type MetricFamily,
  type Sample,
} from "../transport/engine.ts";

/** What the DIVA engine is built from. */
export interface DivaOptions {
  /** Broker limits. */
  limits: Limits;
  /**
   * The ICE servers for a connection whose TURN user is `user`; TURN entries
   * only when `turn` is true.
   */
  iceServers: (user: string, turn: boolean) => Promise<readonly unknown[]>;
  /** Seconds ICE credentials stay valid (for reusing them); 3600 when omitted. */
  iceTtl?: number;
  /** Which joins need a token or a proof. */
  auth?: AuthRules;
  /** Verifies `["auth", token]` calls, once its keys are imported; without one they are refused. */
  verifier?: Promise<TokenVerifier>;
  /** Seconds of clock skew tolerated on a token's expiry. */
  clockSkew?: number;
  /** The cluster directory, in cluster mode. */
  directory?: Directory<Link>;
  /** The clock, in ms; `performance.now` when omitted. */
  now?: () => number;
  /** Where ICE failures are reported. */
  log: Log;
}

/** The DIVA engine, with its broker (for counts and the cluster). */
export interface DivaEngine extends Engine<Connection<Link>> {
  /** The broker behind the engine. */
  readonly broker: Broker<Link>;
  /** Ends every session in grace (their peers get `bye`) and stops the engine's timer. */
  stop(): void;
}

/**
 * The longest delay a timer takes (2^31 − 1 ms, about 24.8 days): a longer
 * one fires at once. A wake asked for later (a token's expiry a month away)
 * comes at this bound instead, and the broker asks again from there.
 */
const MAX_WAKE_MS = 2 ** 31 - 1;

/**
 * Makes the DIVA engine.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { DEFAULT_LIMITS } from "./broker.ts";
 * import { logger } from "../log.ts";
 * const engine = divaEngine({
 *   limits: DEFAULT_LIMITS,
 *   iceServers: () => Promise.resolve([]),
 *   log: logger("diva"),
 * });
 * const sent: string[] = [];
 * const link = { send: (f: string) => sent.push(f), close() {}, wake() {} };
 * const conn = engine.open(link, { url: new URL("ws://x/"), address: "127.0.0.1" });
 * engine.frame(conn, '["join","alice","lobby"]');
 * assert.deepEqual(sent, ['["join","lobby:alice"]']);
 * engine.close(conn);
 * ```
 */
export function divaEngine(options: DivaOptions): DivaEngine {
  const log = options.log;
  const now = options.now ?? (() => performance.now());
  const skewMs = (options.clockSkew ?? 30) * 1000;
  const reuseMs = ((options.iceTtl ?? 3600) * 1000) / 4;
  /** The last ICE answer of each connection, for reuse. */
  const minted = new WeakMap<
    Connection<Link>,
    { key: string; until: number; list: Promise<readonly unknown[]> }
  >();
  /** A token's access on the broker's clock (its `exp` is wall-clock time). */
  const access = (grant: Grant): Access => ({
    grant,
    expiresAt: grant.expiresAt === Infinity
      ? Infinity
      : now() + (grant.expiresAt + skewMs - Date.now()),
  });
  /** The one timer that ends sessions' grace (the broker asks for the next one). */
  let tickTimer: ReturnType<typeof setTimeout> | undefined;
  const broker: Broker<Link> = new Broker<Link>({
    outbox: {
      schedule(delayMs) {
        clearTimeout(tickTimer);
        tickTimer = setTimeout(() => {
          tickTimer = undefined;
          broker.tick();
        }, Math.min(delayMs, 2 ** 31 - 1));
      },
      send: (link, frame) => link.send(frame),
      close: (link, code, reason) => link.close(code, reason),
      wake: (link, _conn, delayMs) => link.wake(Math.min(delayMs, MAX_WAKE_MS)),
      ice(_link, conn, user, turn) {
        const key = `${turn}|${user}`;
        let m = minted.get(conn);
        if (m === undefined || m.key !== key || Date.now() >= m.until) {
          m = { key, until: Date.now() + reuseMs, list: options.iceServers(user, turn) };
          minted.set(conn, m);
        }
        m.list.then(
          (list) => broker.iceReply(conn, list),
          (e) => {
            minted.delete(conn);
            log.error("ice lookup failed: {error}", { error: String(e) });
            broker.iceFailed(conn);
          },
        );
      },
      ask(_link, conn, q) {
        if (q.kind === "proof") {
          verifyProof(q.ident, q.challenge, q.signature).then((ok) => broker.answer(conn, q, ok));
          return;
        }
        const verifier = options.verifier;
        if (verifier === undefined) {
          broker.answer(conn, q, "this server verifies no tokens");
          return;
        }
        verifier.then((v) => v.verify(q.token)).then(
          (grant) => broker.answer(conn, q, access(grant)),
          // The refusal's message names the reason, never the token.
          (e) => broker.answer(conn, q, (e as Error).message),
        );
      },
    },
    now,
    randomBytes: (b) => crypto.getRandomValues(b),
    limits: options.limits,
    directory: options.directory,
    auth: options.auth,
  });
  return {
    name: "diva",
    broker,
    // The broker closes on expiry itself and takes refreshed tokens (["auth"]).
    refreshesTokens: true,
    accepts: (first) =>
      typeof first === "string" ? first.trimStart().startsWith("[") : first[0] === 0x5b,
    open: (link, peer) => broker.open(link, peer.grant ? access(peer.grant) : undefined),
    frame: (conn, data) => broker.frame(conn, data),
    oversize: (conn) => broker.tooLarge(conn),
    wake: (conn) => broker.wake(conn),
    close: (conn, final) => broker.close(conn, final),
    stop() {
      broker.endSessions();
      clearTimeout(tickTimer);
      tickTimer = undefined;
    },
    get connections() {
      return broker.connections;
    },
    metrics: () => divaMetrics(broker),
    status: (): EngineStatus => ({
      title: "DIVA signal protocol",
      connect: "Open a WebSocket to {ws} and send JSON arrays.",
      counts: [
        ["connections", "Connections", broker.connections],
        ["rooms", "Rooms", broker.rooms],
        ["idents", "Idents", broker.idents],
      ],
    }),
  };
}

/** The broker's counts and counters as metric families (the `signal_` names). */
export function divaMetrics(broker: Broker<unknown>): MetricFamily[] {
  const s = broker.stats;
  const one = (v: number): Sample[] => [[null, v]];
  return [
    {
      name: "signal_connections",
      type: "gauge",
      help: "Open WebSocket connections",
      samples: one(broker.connections),
    },
    {
      name: "signal_rooms",
      type: "gauge",
      help: "Rooms with at least one member",
      samples: one(broker.rooms),
    },
    {
      name: "signal_idents",
      type: "gauge",
      help: "Global idents held",
      samples: one(broker.idents),
    },
    {
      name: "signal_connections_opened_total",
      type: "counter",
      help: "WebSocket connections accepted",
      samples: one(s.connectionsOpened),
    },
    {
      name: "signal_frames_in_total",
      type: "counter",
      help: "Accepted client frames by call",
      samples: labelled("call", CALL_NAMES, s.framesIn),
    },
    {
      name: "signal_frames_out_total",
      type: "counter",
      help: "Frames sent by message type",
      samples: labelled("type", OUT_TYPES, s.framesOut),
    },
    {
      name: "signal_errors_total",
      type: "counter",
      help: "Error replies by code",
      samples: labelled("code", ERROR_CODES, s.errors),
    },
    {
      name: "signal_relayed_bytes_total",
      type: "counter",
      help: "Bytes of relayed signal frames (characters; equal to bytes for ASCII payloads)",
      samples: one(s.bytesRelayed),
    },
    {
      name: "signal_frames_delayed_total",
      type: "counter",
      help:
        "Client frames that waited in their connection's queue (budget, cluster claim or ice answer)",
      samples: one(s.framesDelayed),
    },
    {
      name: "signal_sessions",
      type: "gauge",
      help: "Resumable sessions held, and those whose socket is gone and whose grace runs",
      samples: [[{ state: "held" }, broker.sessions], [{ state: "grace" }, broker.sessionsInGrace]],
    },
    {
      name: "signal_session_events_total",
      type: "counter",
      help:
        "Session events: opened, detached (grace began), resumed, refused, expired, overflow, kept (frames), moved (resumed on another instance)",
      samples: labelled(
        "event",
        [
          "opened",
          "detached",
          "resumed",
          "refused",
          "expired",
          "overflow",
          "kept",
          "moved",
        ] as const,
        s.sessions,
      ),
    },
    {
      name: "signal_queue_closed_total",
      type: "counter",
      help: "Connections closed with 1008 because their queue of waiting frames passed its bound",
      samples: labelled("bound", ["frames", "bytes"] as const, s.queueClosed),
    },
  ];
}
