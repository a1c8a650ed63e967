/**
 * Resumable sessions end to end, the main case: a client library
 * `SignalClient` holding 3 idents (one `Mesh` each, on `@roamhq/wrtc`) in a
 * room with two peers (`Mesh` peers) has its TCP connection cut without a
 * close frame by a proxy in the test, which leaves the server's side
 * half-open, so the server notices nothing. The client reconnects and
 * resumes; the peers hear nothing (no `bye`, no new `stun`), a signal sent
 * to it during the gap arrives after the resume, and the data channels keep
 * running throughout. The server runs with its default settings.
 */

import assert from "node:assert/strict";
import type { Mesh } from "../lib/client/client.js";
import { SignalClient } from "../lib/client/client.js";
import type { PeerConnectionLike } from "../lib/client/client.d.ts";
import { startTestServer } from "./helpers/browser.ts";
import { metric } from "./helpers/resume_metrics.ts";
import { CutProxy } from "./helpers/resume_proxy.ts";
import { allOpen, loopbackMesh, meshPeer, WAIT_MS, within } from "./helpers/resume_mesh.ts";

/** What a test records of a mesh: new peers, closed peers, messages received. */
interface Watch {
  mesh: Mesh;
  peers: { peer: string; at: number }[];
  closes: { peer: string; reason: string; at: number }[];
  /** Per sending peer: the sequence numbers received and when. */
  got: Map<string, { n: number; at: number }[]>;
}

function watch(mesh: Mesh): Watch {
  const w: Watch = { mesh, peers: [], closes: [], got: new Map() };
  mesh.on("peer", (e) => w.peers.push({ peer: e.peer, at: performance.now() }));
  mesh.on("close", (e) => w.closes.push({ ...e, at: performance.now() }));
  mesh.on("message", (e) => {
    const m = JSON.parse(String(e.data)) as { n: number };
    let list = w.got.get(e.peer);
    if (list === undefined) w.got.set(e.peer, list = []);
    list.push({ n: m.n, at: performance.now() });
  });
  return w;
}

Deno.test({
  name:
    "resume: a client with 3 idents cut half-open resumes within 2 s; peers see no bye or stun, the gap's signals arrive after the resume, data channels run on",
  async fn() {
    const server = await startTestServer();
    const proxy = CutProxy.start(server.port);
    const p = await meshPeer(server.wsUrl, "r", "p");
    const q = await meshPeer(server.wsUrl, "r", "q");
    // The resuming client, through the proxy, with the library's defaults.
    const a = new SignalClient(proxy.wsUrl, { requestTimeout: WAIT_MS });
    const aMeshes: Mesh[] = [];
    const ticker: { timer?: ReturnType<typeof setInterval> } = {};
    // Every signal A receives, from the start (SDP and candidates included).
    const aSignals: { local: string; remote: string; data: unknown; at: number }[] = [];
    a.on("signal", (e) => aSignals.push({ ...e, at: performance.now() }));
    try {
      const granted = a.once("session", undefined, WAIT_MS);
      for (const ident of ["a1", "a2", "a3"]) {
        const mesh = loopbackMesh(a);
        aMeshes.push(mesh);
        await mesh.join("r", ident);
      }
      assert.deepEqual(await granted, { resumable: true, detail: "" });
      assert.equal(a.resumable, true);
      const everyone = ["r:p", "r:q", "r:a1", "r:a2", "r:a3"];
      const meshes = [p.mesh, q.mesh, ...aMeshes];
      await Promise.all(meshes.map((m) => allOpen(m, everyone.filter((g) => g !== m.self))));
      const watches = meshes.map(watch);
      const connections = new Map<string, PeerConnectionLike | undefined>();
      for (const m of meshes) {
        for (const g of m.peerIds()) connections.set(`${m.self}>${g}`, m.connection(g));
      }
      assert.equal(connections.size, 20); // 10 pairs, both ends

      // What the peers hear from the signal server from now on.
      const heard: Record<string, string[]> = { p: [], q: [] };
      for (const [name, c] of [["p", p.client], ["q", q.client]] as const) {
        c.on("bye", (e) => heard[name].push(`bye ${e.local} ${e.remote}`));
        c.on("stun", (e) => heard[name].push(`stun ${e.local} ${e.remote}`));
      }
      const aEvents: string[] = [];
      a.on("join", (e) => aEvents.push(`join ${e.global}`));
      a.on("leave", (e) => aEvents.push(`leave ${e.global}`));
      a.on("stun", (e) => aEvents.push(`stun ${e.local} ${e.remote}`));
      a.on("bye", (e) => aEvents.push(`bye ${e.local} ${e.remote}`));

      // Every mesh sends a numbered message to every peer every 20 ms.
      const seq = new Map<string, number>();
      ticker.timer = setInterval(() => {
        for (const m of meshes) {
          for (const g of m.peerIds()) {
            const key = `${m.self}>${g}`;
            const n = (seq.get(key) ?? 0) + 1;
            if (m.send(g, JSON.stringify({ n }))) seq.set(key, n);
          }
        }
      }, 20);
      await new Promise((r) => setTimeout(r, 300));

      // The cut: no close frame; the server keeps a half-open socket.
      const link = proxy.links[0];
      const resumed = a.once("resume", undefined, 5000);
      const dropped = a.once("close", undefined, 5000);
      proxy.sever(link);
      const cutAt = link.severedAt;
      // Sent to A while it is away, and to the socket the server still believes in.
      p.client.signal("r:p", "r:a2", { note: "gap", from: "p" });
      q.client.signal("r:q", "r:a3", { note: "gap", from: "q" });
      const drop = await dropped;
      const droppedAt = performance.now();
      const info = await resumed;
      const resumedAt = performance.now();
      const cutToResumed = resumedAt - cutAt;
      // No close frame reached the client (Deno reports such a drop as code 0 or 1006).
      assert.ok(drop.reconnecting);
      assert.ok(![1000, 1001, 4001].includes(drop.code), `close code ${drop.code}`);
      assert.ok(!link.frames.some((f) => f.kind === "close" && !f.afterCut));
      assert.ok(cutToResumed < 2000, `resumed ${cutToResumed.toFixed(0)} ms after the cut`);
      assert.deepEqual(info.idents.sort(), ["r:a1", "r:a2", "r:a3"]);
      assert.equal(info.missed, 0);
      const stats = server.server.broker.stats.sessions;
      assert.equal(stats.detached, 0, "the server never noticed the drop");
      assert.equal(stats.resumed, 1);

      // The signals sent during the gap arrive once each, after the resume.
      const gap = () => aSignals.filter((s) => (s.data as { note?: string })?.note === "gap");
      await within(
        (async () => {
          while (gap().length < 2) await a.once("signal", undefined, WAIT_MS);
        })(),
        WAIT_MS,
        "the gap's signals",
      );
      // The old socket got them (the server believed in it), then 4001.
      await within(link.serverEnded, WAIT_MS, "the old socket to end");
      const intoTheVoid = link.frames.filter((f) => f.afterCut);
      const voidSignals = intoTheVoid.filter((f) => f.text?.includes('"gap"'));
      assert.equal(voidSignals.length, 2, JSON.stringify(intoTheVoid));
      const close = intoTheVoid.find((f) => f.kind === "close");
      assert.deepEqual([close?.code, close?.reason], [4001, "session resumed elsewhere"]);
      // The server sent again the frames the old socket got in its last
      // seconds (it cannot know which the client had); A had all but the
      // two lost ones and skipped them.
      const before = link.frames.filter((f) => f.kind === "text" && !f.afterCut);
      const had = before.length - before.findIndex((f) => f.text!.startsWith('["session"')) - 1;
      const reply = (await proxy.link(1)).frames.find((f) => f.text?.startsWith('["resume"'));
      const from = (JSON.parse(reply!.text!)[1] as { from: number }).from;
      const resent = had + voidSignals.length - from;
      assert.ok(from < had, `from ${from}, had ${had}`);

      await new Promise((r) => setTimeout(r, 300));
      clearInterval(ticker.timer);
      await new Promise((r) => setTimeout(r, 100));

      // p and q send on sockets of their own: which the server reads first
      // is not promised (order holds per sender), so they are compared sorted.
      assert.deepEqual(
        gap().map((s) => [s.local, s.remote, s.data]).sort((x, y) =>
          String(x[0]).localeCompare(String(y[0]))
        ),
        [["r:a2", "r:p", { note: "gap", from: "p" }], ["r:a3", "r:q", { note: "gap", from: "q" }]],
      );
      for (const s of gap()) assert.ok(s.at >= resumedAt - 1, "delivered after the resume");
      // Nothing was delivered twice: what the server sent again after the
      // resume and A had before the cut was skipped.
      const texts = aSignals.map((s) => JSON.stringify([s.local, s.remote, s.data]));
      assert.equal(new Set(texts).size, texts.length, "a signal reached A twice");

      // The peers heard nothing; A re-joined nothing.
      assert.deepEqual(heard, { p: [], q: [] });
      assert.deepEqual(aEvents, []);
      assert.deepEqual(a.joined.sort(), ["r:a1", "r:a2", "r:a3"]);

      // No pair was torn down or made anew; every connection is the same one.
      for (const w of watches) {
        assert.deepEqual(w.closes, [], `${w.mesh.self} closed a pair`);
        assert.deepEqual(w.peers, [], `${w.mesh.self} made a pair`);
        for (const g of w.mesh.peerIds()) {
          assert.equal(w.mesh.connection(g), connections.get(`${w.mesh.self}>${g}`));
          assert.equal(w.mesh.connection(g)?.connectionState, "connected");
          assert.ok(w.mesh.isOpen(g));
        }
      }
      // Data flowed on every channel through the gap, in order and without a hole.
      const gapCounts: number[] = [];
      for (const w of watches) {
        for (const [from, list] of w.got) {
          list.forEach((m, i) => assert.equal(m.n, list[0].n + i, `${from}>${w.mesh.self}`));
          const during = list.filter((m) => m.at > cutAt && m.at < resumedAt).length;
          gapCounts.push(during);
          assert.ok(during > 0, `${from}>${w.mesh.self}: nothing during the gap`);
          assert.ok(list.at(-1)!.at > resumedAt, `${from}>${w.mesh.self}: nothing after`);
        }
      }
      assert.equal(gapCounts.length, 20);

      // The resumed socket carries signals both ways.
      const atP = p.client.once("signal", (e) => e.remote === "r:a1", WAIT_MS);
      assert.equal(a.signal("r:a1", "r:p", "after"), true);
      assert.equal((await atP).data, "after");
      const atA = a.once("signal", (e) => e.remote === "r:q", WAIT_MS);
      q.client.signal("r:q", "r:a3", "back");
      assert.equal((await atA).data, "back");

      const sessions = await metric(server.url, "signal_sessions");
      assert.deepEqual(
        [sessions.get('{state="held"}'), sessions.get('{state="grace"}')],
        [3, 0],
      );
      assert.equal((await metric(server.url, "signal_idents")).get(""), 5);

      console.log(
        `cut → resumed: ${cutToResumed.toFixed(0)} ms (the client saw the drop after ${
          (droppedAt - cutAt).toFixed(0)
        } ms); messages per channel during the gap: min ${Math.min(...gapCounts)}, max ${
          Math.max(...gapCounts)
        }; frames the server sent into the cut socket: ${
          intoTheVoid.map((f) => f.kind).join(",")
        }; sent again after the resume: ${resent}, of which A skipped ${had - from}`,
      );
    } finally {
      clearInterval(ticker.timer);
      for (const m of aMeshes) m.close();
      await a.close();
      await p.close();
      await q.close();
      await proxy.close();
      await server.stop();
    }
  },
});
