/**
 * A server in this process whose status charts sample quickly, and traffic
 * to show on them: DIVA clients that join, signal and err, and y-webrtc
 * clients that publish. Every name the traffic uses contains
 * {@link SECRET}, so a test can check that none reaches a page.
 *
 * @module
 */

import { parseConfig } from "../../lib/config.ts";
import { type SignalServer, startServer } from "../../lib/server.ts";
import { WsClient } from "./ws_client.ts";

/** A marker in every ident, room, topic and payload the traffic sends. */
export const SECRET = "zzsecretzz";

/** A server started by {@link startStatusServer}. */
export interface StatusServer {
  /** The server. */
  readonly server: SignalServer;
  /** `http://127.0.0.1:<port>`. */
  readonly url: string;
  /** `ws://127.0.0.1:<port>/`. */
  readonly wsUrl: string;
  /** Shuts it down and waits until it has stopped. */
  stop(): Promise<void>;
}

/** Starts the server on a free loopback port, its charts sampling every `intervalMs`. */
export function startStatusServer(intervalMs: number, args: string[] = []): StatusServer {
  const cmd = parseConfig({
    args: ["--host", "127.0.0.1", "--port", "0", "--shutdown-timeout", "5", ...args],
    env: () => undefined,
    readTextFile: (p) => Deno.readTextFileSync(p),
  });
  if (cmd.kind !== "run") throw new Error("unexpected config");
  const server = startServer(cmd.config, { version: "test", historyIntervalMs: intervalMs });
  return {
    server,
    url: `http://127.0.0.1:${server.port}`,
    wsUrl: `ws://127.0.0.1:${server.port}/`,
    async stop() {
      await server.shutdown();
      await server.finished;
    },
  };
}

/** Clients that keep the charts busy until {@link Traffic.stop}. */
export interface Traffic {
  /** Every client still open. */
  readonly clients: readonly WsClient[];
  /** Signals relayed so far. */
  readonly signals: number;
  /** Closes every client. */
  stop(): Promise<void>;
}

/**
 * Opens `pairs` DIVA pairs (each in its own room) and one y-webrtc pair,
 * then relays a signal in every pair and publishes once every `everyMs`,
 * with a malformed frame now and then, until stopped.
 */
export async function startTraffic(wsUrl: string, pairs: number, everyMs = 20): Promise<Traffic> {
  const clients: WsClient[] = [];
  const divaPairs: [WsClient, string, WsClient, string][] = [];
  const join = async (ident: string, room: string) => {
    const c = await WsClient.connect(wsUrl);
    clients.push(c);
    c.send(["join", ident, room]);
    await c.next();
    return c;
  };
  for (let i = 0; i < pairs; i++) {
    const room = `${SECRET}-room-${i}`;
    const a = await join(`${SECRET}a${i}`, room);
    const b = await join(`${SECRET}b${i}`, room);
    await a.next(); // stun
    await b.next(); // stun
    divaPairs.push([a, `${room}:${SECRET}a${i}`, b, `${room}:${SECRET}b${i}`]);
  }
  const topic = `${SECRET}-topic`;
  const ya = await WsClient.connect(`${wsUrl}yjs`);
  const yb = await WsClient.connect(`${wsUrl}yjs`);
  clients.push(ya, yb);
  ya.send({ type: "subscribe", topics: [topic] });
  yb.send({ type: "subscribe", topics: [topic] });

  let signals = 0;
  let tick = 0;
  let running = true;
  const loop = (async () => {
    while (running) {
      tick++;
      for (const [a, ga, , gb] of divaPairs) {
        a.send(["signal", ga, gb, { type: "offer", sdp: `${SECRET}-payload-${tick}` }]);
        signals++;
      }
      ya.send({ type: "publish", topic, data: { secret: `${SECRET}-token-${tick}` } });
      if (tick % 5 === 0) divaPairs[0]?.[2].send("{not json");
      await new Promise((r) => setTimeout(r, everyMs));
    }
  })();
  return {
    clients,
    get signals() {
      return signals;
    },
    async stop() {
      running = false;
      await loop;
      for (const c of clients) await c.close().catch(() => {});
    },
  };
}
