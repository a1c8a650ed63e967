/**
 * Finds the PeerJS reference server, `peer` 1.0.2 (its CLI,
 * `dist/bin/peerjs.js`), and makes it runnable under Node, for the
 * benchmark's `peerjs-reference` target; how it is laid out and checked is
 * in `node_reference.ts`, as for y-webrtc's server (`reference.ts`).
 *
 * It runs as `peerjs --key peerjs --path / --host 127.0.0.1` with `PORT` in
 * its environment (the CLI's default port), so clients connect to
 * `/peerjs`, as to the project; it is up once `GET /` answers with the
 * server's description.
 *
 * @module
 */

import {
  type NodeServer,
  type NodeServerUnavailable,
  prepareNodeServer,
} from "./node_reference.ts";

/** The `peer` version that is the PeerJS reference. */
const PEER_VERSION = "1.0.2";

/** The CLI's flags: the key and path PeerJS clients use by default, loopback only. */
const FLAGS = ["--key", "peerjs", "--path", "/", "--host", "127.0.0.1"];

/** A runnable PeerJS reference server (`version` is the `peer` version). */
export type PeerReference = NodeServer;

/**
 * Lays out and checks the PeerJS reference server; what to run, or why it
 * cannot run here (no Node, no package).
 */
export function preparePeerReference(): Promise<PeerReference | NodeServerUnavailable> {
  return prepareNodeServer({
    pkg: "peer",
    version: PEER_VERSION,
    bin: "dist/bin/peerjs.js",
    args: FLAGS,
    answers: (res, text) => res.ok && text.includes("PeerJS Server"),
  });
}
