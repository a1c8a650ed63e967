/**
 * What the server and the broker see of cluster mode, whatever carries it.
 *
 * The server holds a {@link Backplane}: it starts it, stops it and asks
 * whether it is ready. The same object is the broker's `Directory` (see
 * `lib/diva/broker.ts`). The backplane, in turn, drives the broker through the
 * narrow {@link ClusterBroker} interface only. Connections cross the seam as
 * their ids, never as objects. The one backplane today is Redis
 * (`lib/cluster/redis.ts`); its ordering logic lives in
 * `lib/cluster/sequencer.ts`.
 *
 * @module
 */

import type { Handoff } from "../diva/broker.ts";
import type { Sink } from "./sequencer.ts";

/**
 * A shared service the server depends on for readiness, such as the
 * cluster's Redis link: started with the server, stopped after its clients
 * are gone.
 */
export interface Backplane {
  /** Connects; the server serves meanwhile and reports not ready. */
  start(): Promise<void>;
  /** Disconnects, after the server's clients are gone. */
  stop(): Promise<void>;
  /** True while the backplane can be used. */
  readonly ready: boolean;
}

/**
 * What a backplane needs of the broker: the cluster entry points of
 * `Broker` in `lib/diva/broker.ts`, which implements this interface.
 */
export interface ClusterBroker extends Sink {
  /**
   * A frame relayed from another instance for local member `g` (or one
   * moving here with a resumed session); false when `g` is neither.
   */
  deliver(g: string, frame: string): boolean;
  /** Every member held by `instance` left (the instance died). */
  instanceGone(instance: string): void;
  /** Every global ident held by local connections, room by room in join order. */
  localMembers(): { g: string; room: string }[];
  /** Instances holding members this instance sees. */
  remoteInstances(): string[];
  /** The session connection `conn` resumes is held elsewhere, with `idents`. */
  sessionFound(conn: number, idents: readonly string[]): void;
  /** The resume of connection `conn` is refused. */
  resumeRefused(conn: number, code: "forbidden" | "unavailable", detail: string): void;
  /** The token of a session held here was replaced for the resume of connection `conn`. */
  sessionRotated(conn: number): void;
  /** Session `token`, held here, moved to connection `conn` on `instance`. */
  sessionMoved(token: string, instance: string, conn: number): void;
  /** What the old holder handed over for the resume of connection `conn` (null: nothing). */
  sessionHandoff(conn: number, handoff: Handoff | null): void;
  /** The sessions held here (for recovery). */
  localSessions(): { token: string; idents: string[]; graceMs: number }[];
}

/** Settings of a cluster member. */
export interface BackplaneOptions {
  /** The backplane's URL (`redis://…`). */
  url: string;
  /** Most members a room may have, cluster-wide. */
  maxPeersPerRoom: number;
  /**
   * The broker the backplane feeds. Asked for once, by `start()`: the broker
   * is built after the backplane, since the backplane is its directory.
   */
  broker: () => ClusterBroker;
  /** Called whenever readiness changes. */
  onReady?: (ready: boolean) => void;
}
