/**
 * One worker of the multi-worker bare relay (`bare_relay_workers.ts`): the
 * relay on `Deno.serve({ reusePort: true })` in this isolate, its rooms
 * shared through the main isolate's directory, signals to members of other
 * workers sent straight to them on a `MessagePort`.
 *
 * @module
 */

import { setImmediate } from "node:timers";
import type { FromWorker, ToWorker } from "./bare_relay_workers.ts";
import { type Conn, joinFrame, type Peer, RelayCore, type Rooms } from "./relay_core.ts";
import { readStatsTimer, serveOnDeno } from "./relay_serve.ts";

const port = self as unknown as {
  onmessage: ((e: MessageEvent<ToWorker>) => void) | null;
  postMessage(m: FromWorker): void;
};
const post = (m: FromWorker) => port.postMessage(m);

/** Rooms whose directory is in the main isolate; holders of this worker are local. */
class SharedRooms implements Rooms {
  readonly holders = new Map<string, Peer>();
  /** Members held by other workers that members here may signal: ident → worker. */
  readonly owners = new Map<string, number>();
  /** Frames to send to other workers this turn, flattened `[to, frame, …]`, by worker. */
  readonly #outbox: string[][];
  readonly #ports: (MessagePort | undefined)[];
  #flushQueued = false;
  /** Signals sent to and received from other workers (for the read stats). */
  crossOut = 0;
  crossIn = 0;

  constructor(ports: (MessagePort | undefined)[]) {
    this.#ports = ports;
    this.#outbox = Array.from(ports, () => []);
    for (const p of ports) {
      if (p === undefined) continue;
      p.onmessage = (e: MessageEvent<string[]>) => {
        const batch = e.data;
        this.crossIn += batch.length / 2;
        for (let i = 0; i < batch.length; i += 2) this.holders.get(batch[i])?.send(batch[i + 1]);
      };
    }
  }

  join(conn: Conn, g: string, room: string): void {
    const q = JSON.stringify(g);
    this.holders.set(g, conn.peer);
    conn.held.push({ g, room });
    conn.peer.send(joinFrame(q));
    // The stuns come back from the directory, in its order.
    post({ t: "join", g, q, room });
  }

  leave(conn: Conn): void {
    if (conn.held.length === 0) return;
    for (const h of conn.held) {
      if (this.holders.get(h.g) === conn.peer) this.holders.delete(h.g);
    }
    post({ t: "leave", members: conn.held.map((h) => [h.g, h.room]) });
  }

  forward(to: string, frame: string): void {
    const p = this.holders.get(to);
    if (p !== undefined) {
      p.send(frame);
      return;
    }
    const w = this.owners.get(to);
    if (w === undefined) return;
    this.#outbox[w].push(to, frame);
    this.crossOut++;
    if (!this.#flushQueued) {
      this.#flushQueued = true;
      setImmediate(this.#flush);
    }
  }

  readonly #flush = () => {
    this.#flushQueued = false;
    for (let w = 0; w < this.#outbox.length; w++) {
      const batch = this.#outbox[w];
      if (batch.length === 0) continue;
      this.#ports[w]!.postMessage(batch);
      this.#outbox[w] = [];
    }
  };

  /** News from the directory: owners first, so a member told to meet one can reach it. */
  apply(m: Extract<ToWorker, { t: "dir" }>): void {
    for (const [g, w] of m.owners) this.owners.set(g, w);
    for (const g of m.forget) this.owners.delete(g);
    for (const [g, frame] of m.deliver) this.holders.get(g)?.send(frame);
  }
}

let rooms: SharedRooms | undefined;
let core: RelayCore | undefined;
let server: Deno.HttpServer<Deno.NetAddr> | undefined;
let ready = false;
let stopStats = () => {};

port.onmessage = async (e) => {
  const m = e.data;
  if (m.t === "dir") rooms?.apply(m);
  else if (m.t === "init") {
    rooms = new SharedRooms(m.ports);
    const r = rooms;
    core = new RelayCore(r, m.readStats);
    if (m.readStats) {
      stopStats = readStatsTimer(
        core,
        ` (worker ${m.index})`,
        () => {
          const s = `; ${r.crossOut} signals sent to other workers, ${r.crossIn} received`;
          r.crossOut = r.crossIn = 0;
          return s;
        },
      );
    }
    server = serveOnDeno(
      core,
      { host: m.host, port: m.port, reusePort: true, ready: () => ready },
      (port) => post({ t: "listening", port }),
    );
  } else if (m.t === "go") ready = true;
  else if (m.t === "stop") {
    stopStats();
    core?.closeAll();
    await server?.shutdown();
    post({ t: "stopped" });
  }
};
