/**
 * The bare relay on several worker isolates: `N` Deno workers, each with its
 * own event loop (its own thread, Tokio runtime and op driver, so its own
 * cooperative I/O budget), each serving the relay with
 * `Deno.serve({ reusePort: true })` on the same port; Linux spreads the
 * connections over them by a hash of the 4-tuple.
 *
 * A pair's two ends may land on different workers, so rooms are shared
 * through a small message-passing directory ({@link Directory}, in the main
 * isolate) — the in-process counterpart of the Redis directory of cluster
 * mode, and the same split: joins and leaves are sequenced by the directory,
 * signals never pass through it.
 *
 * - **join**: the joiner's worker registers the member locally, answers
 *   `["join", g]` at once and posts `{join}` to the directory; the directory
 *   records `g → worker`, and posts to each worker concerned (the joiner's and
 *   those holding members of the room) the owners it needs to learn and the
 *   `stun` frames to deliver, in one message per worker and in join order —
 *   owners before stuns, so a member told to meet `g` can already reach it.
 * - **signal**: the worker looks `to` up in its own holders (same worker: the
 *   bare relay's one `Map` lookup); on a miss, in its owner map, and queues
 *   `[to, frame]` for that worker on a `MessageChannel` port shared by each
 *   pair of workers (signals never touch the main isolate). Queued frames go
 *   as one `postMessage` per destination per event-loop turn (flushed by
 *   `setImmediate`): a cross-worker signal costs a string copy into a
 *   structured-clone batch, a share of one `postMessage`, one `Map` lookup
 *   on the far side, and up to one turn of latency.
 * - **leave**: the worker forgets the member and posts `{leave}`; the
 *   directory tells the workers still holding members of the room to forget
 *   its owner.
 *
 * Workers answer 503 until every one of them listens, so the benchmark's
 * readiness check sees all of them up.
 *
 * @module
 */

import { type BareRelay, type BareRelayOptions, LIMITS } from "./relay_serve.ts";
import { stunFrame } from "./relay_core.ts";

/** From the main isolate to a worker. */
export type ToWorker =
  | {
    t: "init";
    index: number;
    host: string;
    port: number;
    readStats: boolean;
    /** `ports[j]` reaches worker `j` (undefined at the worker's own index). */
    ports: (MessagePort | undefined)[];
  }
  | { t: "go" }
  | { t: "stop" }
  | {
    t: "dir";
    /** Owners to learn: global ident, worker index. */
    owners: [string, number][];
    /** Owners to forget. */
    forget: string[];
    /** Frames for members of this worker: global ident, frame. */
    deliver: [string, string][];
  };

/** From a worker to the main isolate. */
export type FromWorker =
  | { t: "listening"; port: number }
  | { t: "join"; g: string; q: string; room: string }
  | { t: "leave"; members: [string, string][] }
  | { t: "stopped" };

/** A member as the directory knows it. */
interface Entry {
  g: string;
  q: string;
  worker: number;
}

/** A batch of directory news for one worker. */
interface News {
  owners: [string, number][];
  forget: string[];
  deliver: [string, string][];
}

/**
 * The rooms of every worker: who is in each room and on which worker. It
 * only sequences joins and leaves and says who must learn what; it never
 * sees a signal.
 */
export class Directory {
  readonly #rooms = new Map<string, Entry[]>();
  readonly #post: (worker: number, news: News) => void;

  /** A directory that posts its news with `post`. */
  constructor(post: (worker: number, news: News) => void) {
    this.#post = post;
  }

  /** `g` (quoted `q`) joined `room` on `worker`. */
  join(worker: number, g: string, q: string, room: string): void {
    let members = this.#rooms.get(room);
    if (members === undefined) this.#rooms.set(room, members = []);
    const news = new Map<number, News>();
    const to = (w: number) => {
      let n = news.get(w);
      if (n === undefined) news.set(w, n = { owners: [], forget: [], deliver: [] });
      return n;
    };
    const mine = to(worker);
    for (const t of members) {
      const theirs = to(t.worker);
      if (t.worker !== worker) {
        theirs.owners.push([g, worker]);
        mine.owners.push([t.g, t.worker]);
      }
      theirs.deliver.push([t.g, stunFrame(t.q, q, false)]);
      mine.deliver.push([g, stunFrame(q, t.q, true)]);
    }
    members.push({ g, q, worker });
    for (const [w, n] of news) {
      if (n.deliver.length > 0 || n.owners.length > 0) this.#post(w, n);
    }
  }

  /** `g` left `room` (its socket closed). */
  leave(g: string, room: string): void {
    const members = this.#rooms.get(room);
    if (members === undefined) return;
    const i = members.findIndex((m) => m.g === g);
    if (i === -1) return;
    const [gone] = members.splice(i, 1);
    if (members.length === 0) {
      this.#rooms.delete(room);
      return;
    }
    const told = new Set<number>();
    for (const t of members) {
      if (t.worker === gone.worker || told.has(t.worker)) continue;
      told.add(t.worker);
      this.#post(t.worker, { owners: [], forget: [g], deliver: [] });
    }
  }

  /** Members in all rooms. */
  get size(): number {
    let n = 0;
    for (const m of this.#rooms.values()) n += m.length;
    return n;
  }
}

/**
 * Starts `o.workers` relay workers on `o.host:o.port` and the directory;
 * resolves once all of them listen.
 */
export async function startWorkerRelay(o: BareRelayOptions): Promise<BareRelay> {
  const n = o.workers ?? 1;
  const workers: Worker[] = [];
  const listening: PromiseWithResolvers<number>[] = [];
  const stopped: PromiseWithResolvers<void>[] = [];
  const directory = new Directory((w, news) => workers[w].postMessage({ t: "dir", ...news }));
  // A channel for every pair of workers: ports[i][j] is i's end towards j.
  const ports: (MessagePort | undefined)[][] = Array.from(
    { length: n },
    () => Array.from({ length: n }, () => undefined),
  );
  for (let i = 0; i < n; i++) {
    for (let j = i + 1; j < n; j++) {
      const c = new MessageChannel();
      ports[i][j] = c.port1;
      ports[j][i] = c.port2;
    }
  }
  for (let i = 0; i < n; i++) {
    const w = new Worker(new URL("./bare_relay_worker.ts", import.meta.url), {
      type: "module",
      name: `relay-${i}`,
    });
    listening.push(Promise.withResolvers<number>());
    stopped.push(Promise.withResolvers<void>());
    w.onmessage = (e: MessageEvent<FromWorker>) => {
      const m = e.data;
      if (m.t === "join") directory.join(i, m.g, m.q, m.room);
      else if (m.t === "leave") { for (const [g, room] of m.members) directory.leave(g, room); }
      else if (m.t === "listening") listening[i].resolve(m.port);
      else if (m.t === "stopped") stopped[i].resolve();
    };
    w.onerror = (e) => {
      e.preventDefault();
      console.error(`relay worker ${i}: ${e.message}`);
      listening[i].reject(new Error(e.message));
    };
    workers.push(w);
  }
  const init = (i: number, port: number) => {
    const own = ports[i].filter((p): p is MessagePort => p !== undefined);
    workers[i].postMessage(
      {
        t: "init",
        index: i,
        host: o.host,
        port,
        readStats: o.readStats ?? false,
        ports: ports[i],
      } satisfies ToWorker,
      own,
    );
  };
  // The first worker picks the port when asked for 0; the others join it.
  init(0, o.port);
  const port = await listening[0].promise;
  for (let i = 1; i < n; i++) init(i, port);
  await Promise.all(listening.map((l) => l.promise));
  for (const w of workers) w.postMessage({ t: "go" } satisfies ToWorker);
  return {
    port,
    async shutdown() {
      for (const w of workers) w.postMessage({ t: "stop" } satisfies ToWorker);
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        Promise.all(stopped.map((s) => s.promise)),
        new Promise((r) => timer = setTimeout(r, LIMITS.headerTimeoutMs)),
      ]);
      clearTimeout(timer);
      for (const w of workers) w.terminate();
    },
  };
}
