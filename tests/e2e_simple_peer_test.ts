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
  on(event: "connect" | "close" | "_iceComplete", fn: () => void): void;
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
  #candidatesFirst = false;

  private constructor(ws: WebSocket) {
    this.ws = ws;
  }

  /** Connects, asks for an ident and joins `room` (legacy or v2 join form). */
  static async join(
    url: string,
    room: string,
    legacyJoin: boolean,
    candidatesFirst = false,
  ): Promise<DivaClient> {
    const ws = new WebSocket(url);
    const c = new DivaClient(ws);
    c.#candidatesFirst = candidatesFirst;
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
        const send = (data: SignalData) =>
          this.ws.send(JSON.stringify(["signal", own, remote, data]));
        let heldOffer: SignalData | undefined;
        p.on("signal", (data) => {
          if (!this.#candidatesFirst || data.type !== "offer") return send(data);
          // To test the receiver's ordering, the offer is held back until every
          // candidate has gone out ahead of it, and the candidates wrtc put in
          // its SDP are taken out, so they reach the mesh only by trickle.
          const sdp = (data.sdp ?? "").split("\r\n")
            .filter((l) => !l.startsWith("a=candidate:")).join("\r\n");
          heldOffer = { type: data.type, sdp };
        });
        // simple-peer's own event for the end of candidate gathering.
        p.on("_iceComplete", () => {
          if (heldOffer !== undefined) send(heldOffer);
          heldOffer = undefined;
        });
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
  setRemoteDescription(d: SignalData): Promise<void>;
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

  override setRemoteDescription(d: SignalData): Promise<void> {
    return super.setRemoteDescription(loopbackOnly(d) ?? d);
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

/** A client and a mesh on wrtc, joined to `room` as `ident`. */
async function meshPeer(url: string, room: string, ident: string, fast = false) {
  const client = new SignalClient(url, {
    requestTimeout: T,
    reconnect: fast ? { initialDelay: 20, maxDelay: 200 } : undefined,
  });
  const mesh = new Mesh(client, { RTCPeerConnection: LoopbackPeerConnection });
  await mesh.join(room, ident);
  return {
    client,
    mesh,
    async close() {
      mesh.close();
      await client.close();
    },
  };
}

/** Resolves once the mesh has exactly `peers`, all open; bounded. */
function allOpen(mesh: Mesh, peers: string[]): Promise<void> {
  const want = [...peers].sort().join(",");
  const done = () => mesh.peerIds().sort().join(",") === want && peers.every((p) => mesh.isOpen(p));
  if (done()) return Promise.resolve();
  return within(
    new Promise<void>((resolve) => {
      const offs = (["open", "close", "peer"] as const).map((t) =>
        mesh.on(t, () => {
          if (!done()) return;
          for (const off of offs) off();
          resolve();
        })
      );
    }),
    T,
    `open channels to exactly [${want}]`,
  );
}

Deno.test("Mesh: peers coming and going leave no peer connection behind", async () => {
  const server = await startTestServer();
  const host = await meshPeer(server.wsUrl, "churn", "host");
  const made: PeerConnectionLike[] = [];
  host.mesh.on("peer", (e) => made.push(e.connection));
  try {
    for (let round = 0; round < 4; round++) {
      const guests = [
        await meshPeer(server.wsUrl, "churn", `g${round}a`),
        await meshPeer(server.wsUrl, "churn", `g${round}b`),
      ];
      try {
        const ids = guests.map((g) => g.mesh.self!);
        await allOpen(host.mesh, ids);
        for (const g of guests) {
          await allOpen(g.mesh, [
            host.mesh.self!,
            ...ids.filter((i) => i !== g.mesh.self),
          ]);
        }
        assert.equal(host.mesh.broadcast(`round ${round}`), 2);
      } finally {
        // One guest leaves the room politely, the other just disconnects.
        await guests[0].mesh.leave();
        await guests[0].close();
        await guests[1].close();
      }
      if (host.mesh.peers > 0) await host.mesh.once("close", () => host.mesh.peers === 0, T);
    }
    assert.equal(host.mesh.peers, 0);
    assert.equal(made.length, 8);
    for (const pc of made) assert.equal(pc.signalingState, "closed");
  } finally {
    await host.close();
    await server.stop();
  }
});

Deno.test("Mesh: after the signal server restarts, peers re-join and connect afresh", async () => {
  let server = await startTestServer();
  const port = server.port;
  const a = await meshPeer(server.wsUrl, "restart", "a", true);
  const b = await meshPeer(server.wsUrl, "restart", "b", true);
  try {
    await Promise.all([allOpen(a.mesh, ["restart:b"]), allOpen(b.mesh, ["restart:a"])]);
    const first = [a.mesh.connection("restart:b"), b.mesh.connection("restart:a")];

    // The shutdown tells one side bye; the re-join announces the pair again,
    // and each side makes a new connection (replacing the old one if it is
    // still there).
    const renewed = [a, b].map((p) => p.mesh.once("peer", undefined, 4 * T));
    await server.stop();
    server = await startTestServer(["--port", String(port)]);
    await Promise.all(renewed);
    await Promise.all([allOpen(a.mesh, ["restart:b"]), allOpen(b.mesh, ["restart:a"])]);
    // New connections, the old ones closed: nothing leaked across the restart.
    assert.notEqual(a.mesh.connection("restart:b"), first[0]);
    assert.notEqual(b.mesh.connection("restart:a"), first[1]);
    for (const pc of first) assert.equal(pc?.signalingState, "closed");
    assert.equal(a.mesh.peers, 1);

    const got = b.mesh.once("message", undefined, T);
    a.mesh.send("restart:b", "after restart");
    assert.deepEqual(await got, { peer: "restart:a", data: "after restart" });
  } finally {
    await a.close();
    await b.close();
    await server.stop();
  }
});

Deno.test("Mesh: candidates that arrive before the offer are kept until it is applied", async () => {
  const server = await startTestServer();
  const client = new SignalClient(server.wsUrl, { requestTimeout: T });
  const mesh = new Mesh(client, { RTCPeerConnection: LoopbackPeerConnection });
  let diva: DivaClient | undefined;
  try {
    const self = await mesh.join("order", "mesh");
    const meshOpen = mesh.once("open", undefined, T);
    diva = await DivaClient.join(server.wsUrl, "order", false, true);
    await diva.connected(self);
    await meshOpen;
    // Every candidate of the offerer came before its offer. Had the mesh
    // dropped them, it would know the offerer by peer-reflexive ones only.
    const pc = mesh.connection(diva.self) as unknown as {
      getStats(): Promise<Map<string, Record<string, unknown>>>;
    };
    const stats = await pc.getStats();
    const remoteTypes = [...stats.values()]
      .filter((s) => s.type === "remote-candidate")
      .map((s) => `${s.candidateType} ${s.address ?? s.ip}`);
    assert.ok(
      remoteTypes.some((t) => t.startsWith("host 127.0.0.1")),
      `remote candidates: ${remoteTypes.join(", ")}`,
    );
  } finally {
    mesh.close();
    await diva?.close();
    await client.close();
    await server.stop();
  }
});
