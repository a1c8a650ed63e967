/**
 * Finds y-webrtc's own signalling server (`bin/server.js` of the npm
 * package `y-webrtc`, the version the project's tests use) and makes it
 * runnable under Node, for the benchmark's `reference` target; how it is
 * laid out and checked is in `node_reference.ts`.
 *
 * It runs as `node …/bin/server.js` with `PORT` in its environment, and
 * answers `okay` to any HTTP request once it listens.
 *
 * @module
 */

import {
  type NodeServer,
  type NodeServerUnavailable,
  prepareNodeServer,
} from "./node_reference.ts";

/** The y-webrtc version whose server is the reference (the one in deno.json). */
const Y_WEBRTC_VERSION = "10.3.0";

/** A runnable reference server (`version` is the y-webrtc version). */
export type Reference = NodeServer;

/**
 * Lays out and checks the reference server; what to run, or why it cannot
 * run here (no Node, no package).
 */
export function prepareReference(): Promise<Reference | NodeServerUnavailable> {
  return prepareNodeServer({
    pkg: "y-webrtc",
    version: Y_WEBRTC_VERSION,
    bin: "bin/server.js",
    args: [],
    answers: (_res, text) => text === "okay",
  });
}
