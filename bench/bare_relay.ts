/**
 * The bare relay: the least a WebSocket relay on Deno can do, as the upper
 * bound the signal server is measured against.
 *
 * It sends the same frames the protocol asks for, with none of its checks or
 * bookkeeping beyond one `Map` of rooms and one of holders:
 *
 * - `["ident"]` is answered `["ident", id]` with 24 random lowercase letters
 *   (no uniqueness check);
 * - `["join", ident, room]` registers `room:ident`, answers
 *   `["join", "room:ident"]`, and announces the new pair to each member `T`
 *   already in the room (`T` gets `["stun", T, g, false]`, the joiner
 *   `["stun", g, T, true]`), so a join storm costs the bound as many frames as
 *   it costs the server; a closed socket leaves its rooms silently (no `bye`);
 * - a frame starting `["signal","from","to",` is forwarded unchanged (idents
 *   not swapped) to whoever holds `to`, found by scanning the prefix — no JSON
 *   parse, no checks.
 *
 * Outgoing frames are built by string concatenation of names quoted once at
 * join time.
 *
 * ```sh
 * deno run --allow-net bench/bare_relay.ts --port 4000 --host 127.0.0.1
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";

const SIGNAL = '["signal","';

/** Letters in an issued ident, as many as the server's. */
const IDENT_LETTERS = 24;

/** A room member: its global ident as JSON text, and its socket. */
interface Member {
  q: string;
  socket: WebSocket;
}

/** What a socket holds, so its close can undo it. */
interface Held {
  g: string;
  room: string;
  member: Member;
}

/** A running bare relay. */
export interface BareRelay {
  /** The port bound. */
  readonly port: number;
  /** Stops listening and closes every socket. */
  shutdown(): Promise<void>;
}

/**
 * Starts the bare relay on `host:port` (port 0 picks a free one). With
 * `readStats`, it prints to stderr once a second how many sockets it read
 * from and how many it did not read at all (see README: Performance, the
 * P=500 starvation).
 */
export function startBareRelay(host: string, port: number, readStats = false): BareRelay {
  const holders = new Map<string, WebSocket>();
  const rooms = new Map<string, Member[]>();
  const sockets = new Set<WebSocket>();
  const random = new Uint8Array(IDENT_LETTERS);
  /** Frames read per socket since the last report (only with `readStats`). */
  const reads: number[] = [];
  const statsTimer = readStats
    ? setInterval(() => {
      let idle = 0, total = 0;
      for (let i = 0; i < reads.length; i++) {
        if (reads[i] === 0) idle++;
        total += reads[i];
        reads[i] = 0;
      }
      if (reads.length > 0) {
        console.error(
          `read stats: ${reads.length} sockets, ${reads.length - idle} read from, ` +
            `${idle} not read at all, ${total} frames in 1 s`,
        );
      }
    }, 1000)
    : undefined;

  function ident(): string {
    crypto.getRandomValues(random);
    let s = "";
    for (let i = 0; i < IDENT_LETTERS; i++) s += String.fromCharCode(0x61 + (random[i] % 26));
    return s;
  }

  function join(socket: WebSocket, held: Held[], ident: string, room: string): void {
    const g = room + ":" + ident;
    // Quoted once here so every frame below is plain concatenation.
    const q = JSON.stringify(g);
    const me: Member = { q, socket };
    holders.set(g, socket);
    let members = rooms.get(room);
    if (members === undefined) rooms.set(room, members = []);
    held.push({ g, room, member: me });
    socket.send('["join",' + q + "]");
    for (const t of members) {
      t.socket.send('["stun",' + t.q + "," + q + ",false]");
      socket.send('["stun",' + q + "," + t.q + ",true]");
    }
    members.push(me);
  }

  function handler(req: Request): Response {
    if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
      return new Response("bare relay\n");
    }
    const { socket, response } = Deno.upgradeWebSocket(req, { idleTimeout: 0 });
    const held: Held[] = [];
    socket.onopen = () => sockets.add(socket);
    const index = reads.length;
    if (readStats) reads.push(0);
    socket.onmessage = (e: MessageEvent<string | ArrayBuffer>) => {
      if (readStats) reads[index]++;
      const d = e.data;
      if (typeof d !== "string") return;
      if (d.startsWith(SIGNAL)) {
        const fromEnd = d.indexOf('"', SIGNAL.length);
        const toEnd = d.indexOf('"', fromEnd + 3);
        holders.get(d.slice(fromEnd + 3, toEnd))?.send(d);
        return;
      }
      if (d === '["ident"]') {
        socket.send('["ident","' + ident() + '"]');
        return;
      }
      // Joins are rare next to signals; parsing them keeps this short.
      let v: unknown;
      try {
        v = JSON.parse(d);
      } catch {
        return;
      }
      if (Array.isArray(v) && v[0] === "join" && v.length === 3) {
        join(socket, held, String(v[1]), String(v[2]));
      } else if (Array.isArray(v) && v[0] === "ping") {
        socket.send('["pong"]');
      }
    };
    socket.onclose = () => {
      sockets.delete(socket);
      for (const h of held) {
        if (holders.get(h.g) === socket) holders.delete(h.g);
        const members = rooms.get(h.room);
        if (members === undefined) continue;
        const i = members.indexOf(h.member);
        if (i !== -1) members.splice(i, 1);
        if (members.length === 0) rooms.delete(h.room);
      }
    };
    socket.onerror = () => {/* a close event follows */};
    return response;
  }

  const server = Deno.serve({ hostname: host, port, onListen() {} }, handler);
  return {
    port: (server.addr as Deno.NetAddr).port,
    async shutdown() {
      clearInterval(statsTimer);
      for (const s of sockets) s.close(1001, "shutting down");
      await server.shutdown();
    },
  };
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      port: { type: "string", default: "0" },
      host: { type: "string", default: "127.0.0.1" },
      "read-stats": { type: "boolean", default: false },
    },
    strict: true,
  });
  const relay = startBareRelay(values.host, Number(values.port), values["read-stats"]);
  const stop = () => relay.shutdown().then(() => Deno.exit(0));
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
}
