/**
 * The bare relay's logic, apart from any transport: what a socket's text
 * frames do to one `Map` of holders and one of rooms. Every transport
 * candidate in `bare_relay.ts` (Deno.serve, the own transport, `node:http`
 * with `ws`, and Deno workers on one port) feeds the same {@link RelayCore},
 * so a difference between their figures is the transport's.
 *
 * - `["ident"]` is answered `["ident", id]` with 24 random lowercase letters
 *   (no uniqueness check);
 * - `["join", ident, room]` registers `room:ident`, answers
 *   `["join", "room:ident"]`, and announces the new pair to each member `T`
 *   already in the room (`T` gets `["stun", T, g, false]`, the joiner
 *   `["stun", g, T, true]`); a closed socket leaves its rooms silently;
 * - a frame starting `["signal","from","to",` is forwarded unchanged to
 *   whoever holds `to`, found by scanning the prefix — no JSON parse, no
 *   checks.
 *
 * Outgoing frames are built by string concatenation of names quoted once at
 * join time. Where the rooms live is the {@link Rooms} seam: a `Map` here
 * ({@link LocalRooms}), or a directory shared between worker isolates
 * (`bare_relay_workers.ts`).
 *
 * @module
 */

const SIGNAL = '["signal","';

/** Letters in an issued ident, as many as the server's. */
const IDENT_LETTERS = 24;

/** What the relay needs of a socket, whatever its transport. */
export interface Peer {
  /** Queues a text frame. */
  send(text: string): void;
  /** Starts the closing handshake. */
  close(code?: number, reason?: string): void;
}

/** One socket's state: its peer, what it holds, and its read counter slot. */
export interface Conn {
  readonly peer: Peer;
  /** Global idents (`room:ident`) this socket joined, with their rooms. */
  readonly held: { g: string; room: string }[];
  /** Index in {@link RelayCore.reads}. */
  readonly index: number;
}

/** Where members live and how a frame reaches a holder the local map lacks. */
export interface Rooms {
  /** Registers `g` in `room` for `conn`, answers the join and announces the pairs. */
  join(conn: Conn, g: string, room: string): void;
  /** Forgets what `conn` held (it closed). */
  leave(conn: Conn): void;
  /** Sends `frame` to the holder of `to`, wherever it is (drops it when nobody holds it). */
  forward(to: string, frame: string): void;
}

/** The frame that answers a join of `q` (a JSON-quoted global ident). */
export function joinFrame(q: string): string {
  return '["join",' + q + "]";
}

/** The `stun` frame telling `to` (quoted) to meet `other` (quoted). */
export function stunFrame(to: string, other: string, initiator: boolean): string {
  return '["stun",' + to + "," + other + (initiator ? ",true]" : ",false]");
}

/** A room member: its global ident as JSON text, and its socket. */
interface Member {
  q: string;
  conn: Conn;
}

/** Rooms in two `Map`s of this isolate: the bare relay as it always was. */
export class LocalRooms implements Rooms {
  readonly holders = new Map<string, Peer>();
  readonly rooms = new Map<string, Member[]>();

  join(conn: Conn, g: string, room: string): void {
    // Quoted once here so every frame below is plain concatenation.
    const q = JSON.stringify(g);
    const me: Member = { q, conn };
    this.holders.set(g, conn.peer);
    let members = this.rooms.get(room);
    if (members === undefined) this.rooms.set(room, members = []);
    conn.held.push({ g, room });
    conn.peer.send(joinFrame(q));
    for (const t of members) {
      t.conn.peer.send(stunFrame(t.q, q, false));
      conn.peer.send(stunFrame(q, t.q, true));
    }
    members.push(me);
  }

  leave(conn: Conn): void {
    for (const h of conn.held) {
      if (this.holders.get(h.g) === conn.peer) this.holders.delete(h.g);
      const members = this.rooms.get(h.room);
      if (members === undefined) continue;
      const i = members.findIndex((m) => m.conn === conn);
      if (i !== -1) members.splice(i, 1);
      if (members.length === 0) this.rooms.delete(h.room);
    }
  }

  forward(to: string, frame: string): void {
    this.holders.get(to)?.send(frame);
  }
}

/**
 * The relay proper: the frame dispatch shared by every transport. A
 * transport calls {@link open} when a socket opens, {@link message} for each
 * text frame and {@link close} once when it closes.
 */
export class RelayCore {
  /** Frames read per socket since the last report (only with `readStats`). */
  readonly reads: number[] = [];
  readonly #rooms: Rooms;
  readonly #readStats: boolean;
  readonly #random = new Uint8Array(IDENT_LETTERS);
  /** Open sockets, so a shutdown can close them. */
  readonly conns = new Set<Conn>();

  /** A relay on `rooms`; with `readStats`, frames read are counted per socket. */
  constructor(rooms: Rooms, readStats = false) {
    this.#rooms = rooms;
    this.#readStats = readStats;
  }

  /** A socket opened. */
  open(peer: Peer): Conn {
    const conn: Conn = { peer, held: [], index: this.reads.length };
    if (this.#readStats) this.reads.push(0);
    this.conns.add(conn);
    return conn;
  }

  /** A text frame arrived on `conn`. */
  message(conn: Conn, d: string): void {
    if (this.#readStats) this.reads[conn.index]++;
    if (d.startsWith(SIGNAL)) {
      const fromEnd = d.indexOf('"', SIGNAL.length);
      const toEnd = d.indexOf('"', fromEnd + 3);
      this.#rooms.forward(d.slice(fromEnd + 3, toEnd), d);
      return;
    }
    if (d === '["ident"]') {
      conn.peer.send('["ident","' + this.#ident() + '"]');
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
      const room = String(v[2]);
      this.#rooms.join(conn, room + ":" + String(v[1]), room);
    } else if (Array.isArray(v) && v[0] === "ping") {
      conn.peer.send('["pong"]');
    }
  }

  /** `conn` closed: it leaves its rooms silently (no `bye`). */
  close(conn: Conn): void {
    if (!this.conns.delete(conn)) return;
    this.#rooms.leave(conn);
  }

  /** Closes every open socket with 1001. */
  closeAll(): void {
    for (const c of this.conns) {
      try {
        c.peer.close(1001, "shutting down");
      } catch {
        // closed already
      }
    }
  }

  /**
   * The read report of the last interval, and the counters reset: sockets,
   * sockets read from, frames read.
   */
  takeReadStats(): { sockets: number; readFrom: number; frames: number } {
    let idle = 0, frames = 0;
    const r = this.reads;
    for (let i = 0; i < r.length; i++) {
      if (r[i] === 0) idle++;
      frames += r[i];
      r[i] = 0;
    }
    return { sockets: r.length, readFrom: r.length - idle, frames };
  }

  #ident(): string {
    const random = this.#random;
    crypto.getRandomValues(random);
    let s = "";
    for (let i = 0; i < IDENT_LETTERS; i++) s += String.fromCharCode(0x61 + (random[i] % 26));
    return s;
  }
}
