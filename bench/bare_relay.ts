/**
 * The bare relay: the least a WebSocket relay on Deno can do, as the upper
 * bound the signal server is measured against.
 *
 * It speaks just enough of the protocol for the benchmark's generator:
 * `["join", ident, room]` registers `room:ident` in one `Map` and is answered
 * `["join", "room:ident"]` (no `stun` fan-out, no room bookkeeping), and a
 * frame starting `["signal","from","to",` is forwarded unchanged to whoever
 * holds `to`, found by scanning the prefix — no JSON parse, no checks.
 *
 * ```sh
 * deno run --allow-net bench/bare_relay.ts --port 4000 --host 127.0.0.1
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";

const SIGNAL = '["signal","';

/** A running bare relay. */
export interface BareRelay {
  /** The port bound. */
  readonly port: number;
  /** Stops listening and closes every socket. */
  shutdown(): Promise<void>;
}

/** Starts the bare relay on `host:port` (port 0 picks a free one). */
export function startBareRelay(host: string, port: number): BareRelay {
  const holders = new Map<string, WebSocket>();
  const sockets = new Set<WebSocket>();

  function handler(req: Request): Response {
    if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
      return new Response("bare relay\n");
    }
    const { socket, response } = Deno.upgradeWebSocket(req, { idleTimeout: 0 });
    const held: string[] = [];
    socket.onopen = () => sockets.add(socket);
    socket.onmessage = (e: MessageEvent<string | ArrayBuffer>) => {
      const d = e.data;
      if (typeof d !== "string") return;
      if (d.startsWith(SIGNAL)) {
        const fromEnd = d.indexOf('"', SIGNAL.length);
        const toEnd = d.indexOf('"', fromEnd + 3);
        holders.get(d.slice(fromEnd + 3, toEnd))?.send(d);
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
        const g = `${v[2]}:${v[1]}`;
        holders.set(g, socket);
        held.push(g);
        socket.send(JSON.stringify(["join", g]));
      } else if (Array.isArray(v) && v[0] === "ping") {
        socket.send('["pong"]');
      }
    };
    socket.onclose = () => {
      sockets.delete(socket);
      for (const g of held) if (holders.get(g) === socket) holders.delete(g);
    };
    socket.onerror = () => {/* a close event follows */};
    return response;
  }

  const server = Deno.serve({ hostname: host, port, onListen() {} }, handler);
  return {
    port: (server.addr as Deno.NetAddr).port,
    async shutdown() {
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
    },
    strict: true,
  });
  const relay = startBareRelay(values.host, Number(values.port));
  const stop = () => relay.shutdown().then(() => Deno.exit(0));
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
}
