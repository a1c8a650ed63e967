/**
 * The original DIVA client stack against this server: simple-peer peers on
 * `@roamhq/wrtc` (libwebrtc) under Deno, speaking the protocol over plain
 * WebSockets exactly as DIVA's client does, connect and exchange data. A
 * second test pairs such a peer with the {@link Mesh} of `/client.js`, which
 * speaks simple-peer's signal format.
 *
 * Peer traffic stays on loopback: candidates on other addresses are dropped
 * before they reach the remote side (see {@link loopbackOnly}).
 */

import assert from "node:assert/strict";
import Peer from "simple-peer";
import wrtc from "@roamhq/wrtc";
import { Mesh, SignalClient } from "../lib/client/client.js";
import type { PeerConnectionLike, RtcConfiguration } from "../lib/client/client.d.ts";
import { startTestServer } from "./helpers/browser.ts";

/** Bound on any single wait, in ms. */
const T = 15_000;

/** A signal payload as simple-peer emits and accepts it. */
type SignalData = {
  type?: string;
  sdp?: string;
  candidate?: { candidate?: string };
};

function isLoopback(candidateLine: string): boolean {
  const addr = candidateLine.replace(/^a=/, "").split(" ")[4] ?? "";
  return addr.startsWith("127.") || addr === "::1";
}

/**
 * The signal as the remote may see it: candidates (trickled, or inside an
 * SDP) whose address is not loopback are removed, so connectivity checks
 * only target 127.0.0.1. Returns undefined for a candidate to drop.
 */
function loopbackOnly(data: SignalData): SignalData | undefined {
  const line = data.candidate?.candidate;
  if (typeof line === "string") return isLoopback(line) ? data : undefined;
  if (typeof data.sdp === "string") {
    const sdp = data.sdp.split("\r\n")
      .filter((l) => !l.startsWith("a=candidate:") || isLoopback(l)).join("\r\n");
    return { ...data, sdp };
  }
  return data;
}

/** Rejects after `ms` unless `p` settles first; always clears its timer. */
function within<V>(p: Promise<V>, ms: number, what: string): Promise<V> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** The shape of simple-peer's instances that these tests use. */
interface SimplePeer {
  signal(data: SignalData): void;
  send(data: string): void;
  destroy(): void;
  on(event: "signal", fn: (data: SignalData) => void): void;
  on(event: "connect" | "close", fn: () => void): void;
  on(event: "data", fn: (data: Uint8Array) => void): void;
  on(event: "error", fn: (e: Error) => void): void;
  once(event: "connect" | "close", fn: () => void): void;
  readonly destroyed: boolean;
}

const SimplePeerCtor = Peer as unknown as new (opts: object) => SimplePeer;

/**
 * A DIVA client as the original code wrote it: one WebSocket, `ident` then
 * `join`, a simple-peer per `stun`, signals relayed both ways.
 */
class DivaClient {
  readonly ws: WebSocket;
  /** The ident the server issued. */
  ident = "";
  /** Our global ident, once joined. */
  self = "";
  readonly peers = new Map<string, SimplePeer>();
  readonly received: { from: string; text: string }[] = [];
  #listeners = new Set<() => void>();
  #errors: Error[] = [];

  private constructor(ws: WebSocket) {
    this.ws = ws;
  }

  /** Connects, asks for an ident and joins `room` (legacy or v2 join form). */
  static async join(url: string, room: string, legacyJoin: boolean): Promise<DivaClient> {
    const ws = new WebSocket(url);
    const c = new DivaClient(ws);
    ws.onmessage = (e) => c.#onMessage(JSON.parse(String(e.data)));
    await within(new Promise((r) => ws.onopen = r), T, "socket open");
    ws.send(JSON.stringify(["ident"]));
    const id = await c.until(() => c.ident, "ident");
    ws.send(JSON.stringify(legacyJoin ? ["join", room] : ["join", id, room]));
    await c.until(() => c.self, "join");
    return c;
  }

  #onMessage(msg: unknown[]) {
    switch (msg[0]) {
      case "ident":
        this.ident = String(msg[1]);
        break;
      case "join":
        this.self = String(msg[1]);
        break;
      case "stun": {
        const [, own, remote, initiator] = msg as [string, string, string, boolean];
        const p = new SimplePeerCtor({ initiator, wrtc, trickle: true });
        this.peers.set(remote, p);
        p.on("signal", (data) => this.ws.send(JSON.stringify(["signal", own, remote, data])));
        p.on("data", (d) => {
          this.received.push({ from: remote, text: new TextDecoder().decode(d) });
          this.#poke();
        });
        p.on("connect", () => this.#poke());
        p.on("close", () => this.#poke());
        p.on("error", (e) => {
          this.#errors.push(e);
          this.#poke();
        });
        break;
      }
      case "signal": {
        const [, , from, data] = msg as [string, string, string, SignalData];
        const filtered = loopbackOnly(data);
        const p = this.peers.get(from);
        // Candidates still in flight when we tear down must not reach a destroyed peer.
        if (filtered !== undefined && p !== undefined && !p.destroyed) p.signal(filtered);
        break;
      }
      case "bye": {
        const remote = String(msg[2]);
        this.peers.get(remote)?.destroy();
        this.peers.delete(remote);
        break;
      }
    }
    this.#poke();
  }

  #poke() {
    for (const l of [...this.#listeners]) l();
  }

  /** Resolves with `check()` once it is truthy, re-checked on every event; bounded. */
  until<V>(check: () => V | undefined | "", what: string): Promise<V> {
    let test = () => {};
    return within(
      new Promise<V>((resolve, reject) => {
        test = () => {
          if (this.#errors.length > 0) return reject(this.#errors[0]);
          const v = check();
          if (v !== undefined && v !== "") resolve(v);
        };
        this.#listeners.add(test);
        test();
      }),
      T,
      what,
    ).finally(() => this.#listeners.delete(test));
  }

  /** Waits until the peer to `remote` exists and is connected. */
  async connected(remote: string): Promise<SimplePeer> {
    const p = await this.until(() => this.peers.get(remote), `stun for ${remote}`);
    await within(new Promise<void>((r) => p.once("connect", r)), T, `connect to ${remote}`);
    return p;
  }

  /** Closes the signal socket only; peers stay up. */
  async closeSocket(): Promise<void> {
    if (this.ws.readyState !== WebSocket.CLOSED) {
      const closed = new Promise((r) => this.ws.onclose = r);
      this.ws.close();
      await closed;
    }
  }

  /** Destroys every peer (waiting for each to close) and closes the socket. */
  async close(): Promise<void> {
    await Promise.all(
      [...this.peers.values()].map((p) =>
        p.destroyed ? undefined : new Promise<void>((r) => {
          p.once("close", r);
          p.destroy();
        })
      ),
    );
    this.peers.clear();
    await this.closeSocket();
  }
}

Deno.test({
  name: "simple-peer + wrtc peers speaking DIVA connect through the server and exchange data",
  async fn() {
    const server = await startTestServer();
    const clients: DivaClient[] = [];
    try {
      const a = await DivaClient.join(server.wsUrl, "diva", true);
      clients.push(a);
      const b = await DivaClient.join(server.wsUrl, "diva", false);
      clients.push(b);
      assert.match(a.self, /^diva:[a-z]+$/);
      assert.match(b.self, /^diva:[a-z]+$/);

      // b joined last, so b initiates; a answers.
      const [pa, pb] = await Promise.all([a.connected(b.self), b.connected(a.self)]);
      pa.send("hello from a");
      await b.until(() => b.received.find((m) => m.from === a.self), "data at b");
      pb.send("hello from b");
      await a.until(() => a.received.find((m) => m.from === b.self), "data at a");
      assert.deepEqual(b.received, [{ from: a.self, text: "hello from a" }]);
      assert.deepEqual(a.received, [{ from: b.self, text: "hello from b" }]);
    } finally {
      for (const c of clients) await c.close();
      await server.stop();
    }
  },
});

/** What these tests use of wrtc's peer connection (the package has no types). */
interface WrtcPeerConnection extends PeerConnectionLike {
  addIceCandidate(c?: { candidate?: string }): Promise<void>;
}

const WrtcRTCPeerConnection = (wrtc as {
  RTCPeerConnection: new (config?: RtcConfiguration) => WrtcPeerConnection;
}).RTCPeerConnection;

/** wrtc's peer connection, dropping remote candidates that are not loopback. */
class LoopbackPeerConnection extends WrtcRTCPeerConnection {
  override addIceCandidate(c?: { candidate?: string }): Promise<void> {
    if (c?.candidate && !isLoopback(c.candidate)) return Promise.resolve();
    return super.addIceCandidate(c);
  }
}

Deno.test({
  name: "the client library's Mesh and a simple-peer DIVA peer connect and exchange data",
  async fn() {
    const server = await startTestServer();
    const client = new SignalClient(server.wsUrl, { requestTimeout: T });
    const mesh = new Mesh(client, {
      RTCPeerConnection: LoopbackPeerConnection,
    });
    let diva: DivaClient | undefined;
    try {
      const self = await mesh.join("interop", "mesh");
      // The simple-peer side joins last and so makes the offer.
      const meshOpen = mesh.once("open", undefined, T);
      diva = await DivaClient.join(server.wsUrl, "interop", false);
      const peer = await diva.connected(self);
      assert.deepEqual(await meshOpen, { peer: diva.self });
      assert.equal(mesh.peers, 1);

      const got = mesh.once("message", undefined, T);
      peer.send("from simple-peer");
      assert.deepEqual(await got, { peer: diva.self, data: "from simple-peer" });
      assert.equal(mesh.send(diva.self, "from mesh"), true);
      const d = diva;
      await d.until(() => d.received.find((m) => m.text === "from mesh"), "data at diva");

      // The simple-peer side's socket goes: the mesh gets bye and closes the
      // connection (the data channel is still up, so bye is what drops it).
      const pc = mesh.connection(diva.self);
      const dropped = mesh.once("close", undefined, T);
      await diva.closeSocket();
      assert.deepEqual(await dropped, { peer: d.self, reason: "bye" });
      assert.equal(mesh.peers, 0);
      assert.equal(pc?.signalingState, "closed");
    } finally {
      mesh.close();
      await diva?.close();
      await client.close();
      await server.stop();
    }
  },
});
