/**
 * The broker's cluster seam, on the pure broker: joins wait for the
 * directory, complete in the directory's order, remote members are announced
 * and relayed to through the directory, and nothing stays behind.
 */

import assert from "node:assert/strict";
import type { Directory } from "../lib/diva/broker.ts";
import { harness } from "./helpers/broker_harness.ts";

/** A directory that records what the broker asked of it (claims by `names`, when set). */
function recordingDirectory(relayOk = true) {
  const log: unknown[][] = [];
  const names = new Map<number, string>();
  const dir: Directory<string> & {
    log: unknown[][];
    relayOk: boolean;
    names: Map<number, string>;
  } = {
    log,
    relayOk,
    names,
    claim(conn: number, room: string, ident: string) {
      log.push(["claim", names.get(conn) ?? conn, room, ident]);
    },
    release(g: string, room: string) {
      log.push(["release", g, room]);
    },
    relay(instance: string, g: string, frame: string) {
      log.push(["relay", instance, g, JSON.parse(frame)]);
      return dir.relayOk;
    },
    unwatch(room: string) {
      log.push(["unwatch", room]);
    },
  };
  return dir;
}

Deno.test("cluster seam: a join waits for its claim and frames queue meanwhile", () => {
  const dir = recordingDirectory();
  const h = harness({ directory: dir });
  const a = h.open("A");
  dir.names.set(a.id, "A");
  h.call("A", "join", "alice", "r");
  h.call("A", "ping");
  assert.deepEqual(dir.log, [["claim", "A", "r", "alice"]]);
  assert.deepEqual(h.sent(), [], "nothing answered before the claim completes");
  h.broker.memberJoined("r", "alice", "me", a.id);
  assert.deepEqual(h.sent(), [["A", ["join", "r:alice"]], ["A", ["pong"]]]);
});

Deno.test("cluster seam: remote joins are announced in order, joiner as initiator", () => {
  const dir = recordingDirectory();
  const h = harness({ directory: dir });
  const a = h.open("A");
  h.call("A", "join", "alice", "r");
  // Bob (remote) joined before alice's join took effect: alice hears of him.
  h.broker.memberJoined("r", "bob", "other", null);
  h.broker.memberJoined("r", "alice", "me", a.id);
  assert.deepEqual(h.sent(), [
    ["A", ["join", "r:alice"]],
    ["A", ["stun", "r:alice", "r:bob", true]],
  ]);
  // Carol (remote) joins later: alice is told, not as initiator.
  h.broker.memberJoined("r", "carol", "other", null);
  assert.deepEqual(h.sent(), [["A", ["stun", "r:alice", "r:carol", false]]]);
  // The same remote join seen twice is announced once.
  h.broker.memberJoined("r", "carol", "other", null);
  assert.deepEqual(h.sent(), []);
  // Remote idents are taken here too.
  const b = h.open("B");
  void b;
  h.call("B", "join", "carol", "r");
  assert.deepEqual(h.sent(), [["B", ["error", "join", "ident-taken", "r:carol"]]]);
});

Deno.test("cluster seam: signals to remote members go through the directory", () => {
  const dir = recordingDirectory();
  const h = harness({ directory: dir });
  const a = h.open("A");
  h.call("A", "join", "alice", "r");
  h.broker.memberJoined("r", "alice", "me", a.id);
  h.broker.memberJoined("r", "bob", "other", null);
  h.take();
  dir.log.length = 0;
  h.call("A", "signal", "r:alice", "r:bob", { sdp: "x" });
  assert.deepEqual(dir.log, [["relay", "other", "r:bob", ["signal", "r:bob", "r:alice", {
    sdp: "x",
  }]]]);
  assert.deepEqual(h.sent(), []);
  dir.relayOk = false;
  h.call("A", "signal", "r:alice", "r:bob", 1);
  const [[to, err]] = h.sent();
  assert.equal(to, "A");
  assert.deepEqual((err as unknown[]).slice(0, 3), ["error", "signal", "unavailable"]);
  // Frames relayed to us are delivered to the local holder only.
  h.broker.deliver("r:alice", '["signal","r:alice","r:bob",2]');
  h.broker.deliver("r:bob", '["signal","r:bob","r:alice",3]');
  assert.deepEqual(h.sent(), [["A", ["signal", "r:alice", "r:bob", 2]]]);
});

Deno.test("cluster seam: refused claims answer the error and run queued frames", () => {
  const dir = recordingDirectory();
  const h = harness({ directory: dir });
  const a = h.open("A");
  h.call("A", "join", "alice", "r");
  h.call("A", "ping");
  h.broker.claimRefused(a.id, "r", "ident-taken", "r:alice");
  assert.deepEqual(h.sent(), [
    ["A", ["error", "join", "ident-taken", "r:alice"]],
    ["A", ["pong"]],
  ]);
  assert.deepEqual(dir.log.at(-1), ["unwatch", "r"]);
  assert.equal(h.broker.rooms, 0);
});

Deno.test("cluster seam: leaves, deaths and closes release and say bye", () => {
  const dir = recordingDirectory();
  const h = harness({ directory: dir });
  const a = h.open("A");
  h.call("A", "join", "alice", "r");
  h.broker.memberJoined("r", "alice", "me", a.id);
  h.broker.memberJoined("r", "bob", "other", null);
  h.broker.memberJoined("r", "dan", "third", null);
  h.take();
  h.broker.memberLeft("r:bob");
  assert.deepEqual(h.sent(), [["A", ["bye", "r:alice", "r:bob"]]]);
  h.broker.instanceGone("third");
  assert.deepEqual(h.sent(), [["A", ["bye", "r:alice", "r:dan"]]]);
  // A remote leave for a local member is not ours to act on.
  h.broker.memberLeft("r:alice");
  assert.deepEqual(h.sent(), []);
  h.broker.memberJoined("r", "erin", "other", null);
  h.take();
  dir.log.length = 0;
  h.close("A");
  assert.deepEqual(dir.log, [["release", "r:alice", "r"], ["unwatch", "r"]]);
  assert.equal(h.broker.rooms, 0);
  assert.equal(h.broker.idents, 0);
  assert.deepEqual(h.broker.remoteInstances(), []);
});

Deno.test("cluster seam: a claim that completes after its connection closed is released", () => {
  const dir = recordingDirectory();
  const h = harness({ directory: dir });
  const a = h.open("A");
  h.call("A", "join", "alice", "r");
  h.close("A");
  h.broker.memberJoined("r", "alice", "me", a.id);
  assert.deepEqual(dir.log.slice(1), [["release", "r:alice", "r"], ["unwatch", "r"]]);
  assert.equal(h.broker.idents, 0);
  assert.equal(h.broker.rooms, 0);
  assert.equal(h.broker.connections, 0);
});
