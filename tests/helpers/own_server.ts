/**
 * A test application on our own transport: a few pages (200, 404, 405, a
 * streamed body, a handler that throws) and a WebSocket echo at `/` whose
 * server-side events are recorded for assertions.
 *
 * @module
 */

import {
  type OwnServer,
  type OwnWebSocket,
  serve,
  type ServeOptions,
  type SocketOptions,
  type TransportLogger,
  upgradeWebSocket,
} from "../../lib/transport/own/server.ts";

/** A log line the transport wrote. */
export interface LogLine {
  /** Level. */
  level: string;
  /** Template. */
  message: string;
  /** Values. */
  properties: Record<string, unknown>;
}

/** What the server side of the echo saw. */
export interface ServerSide {
  /** Sockets opened. */
  opened: OwnWebSocket[];
  /** Close events, in order. */
  closes: { code: number; reason: string; wasClean: boolean }[];
  /** Error events' messages. */
  errors: string[];
  /** Requests' client addresses, in order. */
  clients: string[];
}

/** A running test server. */
export interface OwnTestServer extends AsyncDisposable {
  /** The server. */
  server: OwnServer;
  /** Its port. */
  port: number;
  /** What the echo's sockets saw. */
  side: ServerSide;
  /** Everything logged. */
  logs: LogLine[];
}

/** Test-only knobs of the application. */
export interface AppOptions {
  /** Options for each `upgradeWebSocket`. */
  socket?: SocketOptions;
  /** Subprotocol to accept when the client offers it. */
  protocol?: string;
}

/** Starts the test application on 127.0.0.1 with a free port. */
export function startOwn(options: ServeOptions = {}, app: AppOptions = {}): OwnTestServer {
  const side: ServerSide = { opened: [], closes: [], errors: [], clients: [] };
  const logs: LogLine[] = [];
  const record = (level: string) => (message: string, properties?: Record<string, unknown>) =>
    logs.push({ level, message, properties: properties ?? {} });
  const logger: TransportLogger = {
    debug: record("debug"),
    info: record("info"),
    warn: record("warn"),
    error: record("error"),
  };
  const server = serve(
    { port: 0, hostname: "127.0.0.1", logger, ...options },
    (req, info) => {
      side.clients.push(info.clientAddress);
      const url = new URL(req.url);
      if (req.headers.get("upgrade") !== null) return echo(req, side, app);
      if (req.method !== "GET" && req.method !== "HEAD") {
        return new Response("method not allowed\n", {
          status: 405,
          headers: { allow: "GET, HEAD" },
        });
      }
      switch (url.pathname) {
        case "/":
          return new Response("hello\n", { headers: { "content-type": "text/plain" } });
        case "/client":
          return new Response(info.clientAddress);
        case "/throw":
          throw new Error(`handler failed on ${req.url}`);
        case "/stream":
          return new Response(streamOf(["one ", "two ", "three"]));
        case "/big":
          return new Response("x".repeat(200_000));
        default:
          return new Response("not found\n", { status: 404 });
      }
    },
  );
  return {
    server,
    port: server.addr.port,
    side,
    logs,
    async [Symbol.asyncDispose]() {
      await server.shutdown();
    },
  };
}

function streamOf(parts: string[]): ReadableStream<Uint8Array> {
  const enc = new TextEncoder();
  let i = 0;
  return new ReadableStream({
    async pull(c) {
      // A real stream: each part comes on a later turn.
      await new Promise((r) => setTimeout(r, 5));
      if (i < parts.length) c.enqueue(enc.encode(parts[i++]));
      else c.close();
    },
  });
}

/**
 * The echo: text and binary come back as sent; "close-me" makes the server
 * close with 4000; "throw" makes the handler throw; "burst:N" sends N
 * messages in one turn and then one with the `bufferedAmount` seen.
 */
function echo(req: Request, side: ServerSide, app: AppOptions): Response {
  const offered = (req.headers.get("sec-websocket-protocol") ?? "").split(",").map((s) => s.trim());
  const protocol = app.protocol !== undefined && offered.includes(app.protocol)
    ? app.protocol
    : undefined;
  const { socket, response } = upgradeWebSocket(req, { idleTimeout: 0, ...app.socket, protocol });
  socket.onopen = () => side.opened.push(socket);
  socket.onmessage = (e) => {
    const d = e.data;
    if (d === "close-me") return socket.close(4000, "asked");
    if (d === "throw") throw new Error("handler bug");
    if (typeof d === "string" && d.startsWith("burst:")) {
      const n = Number(d.slice(6));
      for (let i = 0; i < n; i++) socket.send(`m${i}`);
      socket.send(`buffered:${socket.bufferedAmount}`);
      return;
    }
    socket.send(typeof d === "string" ? d : new Uint8Array(d as ArrayBuffer));
  };
  socket.onerror = (e) => side.errors.push((e as ErrorEvent).message);
  socket.onclose = (e) =>
    side.closes.push({ code: e.code, reason: e.reason, wasClean: e.wasClean });
  return response;
}

/** Polls `check` until it holds, or throws after `timeoutMs`. */
export async function eventually(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 5000,
): Promise<void> {
  const until = performance.now() + timeoutMs;
  while (!(await check())) {
    if (performance.now() > until) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
