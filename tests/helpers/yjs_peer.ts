/**
 * One Yjs peer in a process of its own: a `Y.Doc` with the real, unmodified
 * `WebrtcProvider` of y-webrtc, driven by JSON lines on stdin and reporting
 * on stdout. Run by {@link YjsPeer} in `yjs_peers.ts`.
 *
 * Each peer needs its own process: y-webrtc keeps its rooms and signalling
 * connections in module globals (one doc per room name per process), and
 * peers of one process would also sync over the runtime's BroadcastChannel,
 * bypassing the signal server under test.
 *
 * Argument: JSON `{ url, room, password? }`. Commands (stdin): `{cmd:"insert",
 * index, text}`, `{cmd:"destroy"}` (provider.destroy()), `{cmd:"exit"}`.
 * Events (stdout): `{ev:"started"}`, `{ev:"status", connected}`,
 * `{ev:"peers", webrtcPeers}`, `{ev:"synced", synced}`, `{ev:"text", text}`,
 * `{ev:"destroyed"}`.
 *
 * @module
 */

import wrtc from "@roamhq/wrtc";
import { WebrtcProvider } from "y-webrtc";
import * as Y from "yjs";

/** The peer's settings, passed as its one argument. */
export interface YjsPeerArgs {
  /** The signalling URL. */
  url: string;
  /** The room (y-webrtc topic). */
  room: string;
  /** The room password (y-webrtc then encrypts every signal), if any. */
  password?: string;
}

if (import.meta.main) {
  const args = JSON.parse(Deno.args[0]) as YjsPeerArgs;
  const out = new TextEncoder();
  const emit = (e: Record<string, unknown>) =>
    Deno.stdout.writeSync(out.encode(JSON.stringify(e) + "\n"));

  const doc = new Y.Doc();
  const text = doc.getText("t");
  text.observe(() => emit({ ev: "text", text: text.toString() }));
  const provider = new WebrtcProvider(args.room, doc, {
    signaling: [args.url],
    password: args.password,
    peerOpts: { wrtc },
  });
  provider.on("status", (e) => emit({ ev: "status", connected: e.connected }));
  provider.on("peers", (e) => emit({ ev: "peers", webrtcPeers: e.webrtcPeers }));
  provider.on("synced", (e) => emit({ ev: "synced", synced: e.synced }));
  emit({ ev: "started" });

  const decoder = new TextDecoderStream();
  Deno.stdin.readable.pipeTo(decoder.writable).catch(() => {});
  let buf = "";
  for await (const chunk of decoder.readable) {
    buf += chunk;
    for (let i = buf.indexOf("\n"); i >= 0; i = buf.indexOf("\n")) {
      const c = JSON.parse(buf.slice(0, i)) as { cmd: string; index?: number; text?: string };
      buf = buf.slice(i + 1);
      if (c.cmd === "insert") text.insert(c.index ?? 0, c.text ?? "");
      else if (c.cmd === "destroy") {
        provider.destroy();
        doc.destroy();
        emit({ ev: "destroyed" });
      } else if (c.cmd === "exit") Deno.exit(0);
    }
  }
  Deno.exit(0);
}
