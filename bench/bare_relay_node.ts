/**
 * The bare relay on `node:http` under Deno, two ways:
 *
 * - `ws`: `npm:ws@8`'s `WebSocketServer` (`noServer`, `maxPayload` 1 MiB, no
 *   compression) on the server's `upgrade` event, with
 *   `server.headersTimeout` 5 s checked every second
 *   (`connectionsCheckingInterval`) — the candidate "node:http + ws";
 * - `deno`: the same `node:http` server, handing the upgrade's socket to
 *   `Deno.upgradeWebSocket(req, { socket, head })` — Deno's WebSocket behind
 *   Node's HTTP parser (an option of `Deno.upgradeWebSocket`).
 *
 * `ws` is loaded with a dynamic `import()` of a computed specifier, so that
 * neither `deno check` nor the benchmark adds `npm:ws` to `deno.lock`; the
 * benchmark runs this target with `--no-lock`. With `"ws": "npm:ws@^8.23.0"`
 * in `deno.json`'s imports it could be a plain static import.
 *
 * @module
 */

import http from "node:http";
import type { Socket } from "node:net";
import type { Buffer } from "node:buffer";
import { LocalRooms, RelayCore } from "./relay_core.ts";
import {
  type BareRelay,
  type BareRelayOptions,
  LIMITS,
  readStatsTimer,
  wireWebSocket,
} from "./relay_serve.ts";

/** The `ws` version measured (the one `deno.lock` already holds, for y-webrtc). */
const WS_SPECIFIER = "npm:ws@8.23.0";

/** The parts of `ws`'s server socket the relay uses. */
interface WsSocket {
  on(event: "message", f: (data: Buffer, isBinary: boolean) => void): void;
  on(event: "close", f: () => void): void;
  on(event: "error", f: (e: Error) => void): void;
  send(s: string): void;
  close(code?: number, reason?: string): void;
}

/** The parts of `ws`'s `WebSocketServer` the relay uses. */
interface WsServer {
  handleUpgrade(
    req: http.IncomingMessage,
    socket: Socket,
    head: Buffer,
    done: (ws: WsSocket) => void,
  ): void;
  close(): void;
}

/** `ws`'s module, as far as the relay uses it. */
interface WsModule {
  WebSocketServer: new (options: Record<string, unknown>) => WsServer;
}

/** Loads `ws` (see the module note on the lock file). */
async function loadWs(): Promise<WsModule> {
  const specifier: string = WS_SPECIFIER;
  return await import(specifier) as WsModule;
}

/** Starts the relay on `node:http`, upgrading with `ws` or with Deno's WebSocket. */
export async function startNodeRelay(
  o: BareRelayOptions,
  upgrade: "ws" | "deno",
): Promise<BareRelay> {
  const core = new RelayCore(new LocalRooms(), o.readStats);
  const stopStats = o.readStats ? readStatsTimer(core) : () => {};
  // Node checks the timeouts below every connectionsCheckingInterval (30 s by
  // default): without a shorter one a 5 s headersTimeout cuts after up to 35 s.
  const server = http.createServer({ connectionsCheckingInterval: 1000 }, (_req, res) => {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("bare relay\n");
  });
  // The slowloris guard Node offers; requestTimeout must not be below it.
  server.headersTimeout = LIMITS.headerTimeoutMs;
  server.requestTimeout = 2 * LIMITS.headerTimeoutMs;
  if (upgrade === "ws") {
    const { WebSocketServer } = await loadWs();
    const wss = new WebSocketServer({
      noServer: true,
      maxPayload: LIMITS.maxMessageBytes,
      perMessageDeflate: false,
      clientTracking: false,
    });
    server.on("upgrade", (req: http.IncomingMessage, socket: Socket, head: Buffer) => {
      socket.on("error", () => socket.destroy());
      wss.handleUpgrade(req, socket, head, (ws) => {
        const conn = core.open(ws);
        ws.on("message", (data, isBinary) => {
          if (!isBinary) core.message(conn, data.toString());
        });
        ws.on("close", () => core.close(conn));
        // maxPayload and protocol errors arrive here; ws closes the socket after.
        ws.on("error", () => {});
      });
    });
  } else {
    server.on("upgrade", (req: http.IncomingMessage, socket: Socket, head: Buffer) => {
      const headers = new Headers();
      for (const [k, v] of Object.entries(req.headers)) {
        if (typeof v === "string") headers.set(k, v);
        else if (Array.isArray(v)) { for (const x of v) headers.append(k, x); }
      }
      try {
        const { socket: ws } = Deno.upgradeWebSocket(
          new Request(`http://${req.headers.host ?? "localhost"}${req.url ?? "/"}`, { headers }),
          { socket, head, idleTimeout: 0 },
        );
        wireWebSocket(core, ws);
      } catch {
        socket.destroy();
      }
    });
  }
  const port = await new Promise<number>((resolve, reject) => {
    server.once("error", reject);
    server.listen(o.port, o.host, 511, () => {
      const a = server.address();
      resolve(typeof a === "object" && a !== null ? a.port : o.port);
    });
  });
  return {
    port,
    async shutdown() {
      stopStats();
      core.closeAll();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}
