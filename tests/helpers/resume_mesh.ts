/**
 * WebRTC pieces for the resume tests: `@roamhq/wrtc` peer connections kept
 * on loopback (remote candidates on other addresses are dropped, in trickle
 * and in SDP), a {@link SignalClient} with {@link Mesh}es on them, and waits
 * for every data channel of a mesh to be open.
 *
 * @module
 */

import wrtc from "@roamhq/wrtc";
import { Mesh, SignalClient } from "../../lib/client/client.js";
import type {
  PeerConnectionLike,
  RtcConfiguration,
  SignalClientOptions,
} from "../../lib/client/client.d.ts";

/** Bound on any single wait, in ms. */
export const WAIT_MS = 15_000;

/** A signal payload as the mesh sends it. */
type SignalData = { type?: string; sdp?: string; candidate?: { candidate?: string } };

function isLoopback(candidateLine: string): boolean {
  const addr = candidateLine.replace(/^a=/, "").split(" ")[4] ?? "";
  return addr.startsWith("127.") || addr === "::1";
}

/** An SDP without the candidates that are not on loopback. */
function loopbackSdp(d: SignalData): SignalData {
  if (typeof d.sdp !== "string") return d;
  const sdp = d.sdp.split("\r\n")
    .filter((l) => !l.startsWith("a=candidate:") || isLoopback(l)).join("\r\n");
  return { ...d, sdp };
}

/** What these tests use of wrtc's peer connection (the package has no types). */
interface WrtcPeerConnection extends PeerConnectionLike {
  addIceCandidate(c?: { candidate?: string }): Promise<void>;
  setRemoteDescription(d: SignalData): Promise<void>;
}

const WrtcRTCPeerConnection = (wrtc as {
  RTCPeerConnection: new (config?: RtcConfiguration) => WrtcPeerConnection;
}).RTCPeerConnection;

/** wrtc's peer connection, dropping remote candidates that are not loopback. */
export class LoopbackPeerConnection extends WrtcRTCPeerConnection {
  override addIceCandidate(c?: { candidate?: string }): Promise<void> {
    if (c?.candidate && !isLoopback(c.candidate)) return Promise.resolve();
    return super.addIceCandidate(c);
  }

  override setRemoteDescription(d: SignalData): Promise<void> {
    return super.setRemoteDescription(loopbackSdp(d));
  }
}

/** Rejects after `ms` unless `p` settles first; always clears its timer. */
export function within<V>(p: Promise<V>, ms: number, what: string): Promise<V> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** A mesh on wrtc over `client`. */
export function loopbackMesh(client: SignalClient): Mesh {
  return new Mesh(client, { RTCPeerConnection: LoopbackPeerConnection });
}

/** A client and one mesh, joined to `room` as `ident`. */
export async function meshPeer(
  url: string,
  room: string,
  ident: string,
  options: SignalClientOptions = {},
): Promise<{ client: SignalClient; mesh: Mesh; close(): Promise<void> }> {
  const client = new SignalClient(url, { requestTimeout: WAIT_MS, ...options });
  const mesh = loopbackMesh(client);
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

/** Resolves once the mesh has exactly `peers`, each with an open data channel; bounded. */
export function allOpen(mesh: Mesh, peers: string[]): Promise<void> {
  const want = [...peers].sort().join(",");
  const done = () => mesh.peerIds().sort().join(",") === want && peers.every((p) => mesh.isOpen(p));
  if (done()) return Promise.resolve();
  let offs: (() => void)[] = [];
  return within(
    new Promise<void>((resolve) => {
      offs = (["open", "close", "peer"] as const).map((t) =>
        mesh.on(t, () => {
          if (done()) resolve();
        })
      );
    }),
    WAIT_MS,
    `open channels to exactly [${want}]`,
  ).finally(() => offs.forEach((off) => off()));
}
