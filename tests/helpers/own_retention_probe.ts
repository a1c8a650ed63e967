/**
 * Run with `--v8-flags=--expose-gc`: opens WebSockets to our own transport
 * and prints, as one JSON line, how many of their requests and 101 responses
 * the garbage collector could free while the sockets stay open, and the JS
 * heap each open socket holds. A transport that keeps handshake objects
 * alive for the life of a connection frees none of them.
 *
 * ```sh
 * deno run -A --v8-flags=--expose-gc tests/helpers/own_retention_probe.ts 200
 * ```
 *
 * @module
 */

import { serve, upgradeWebSocket } from "../../lib/transport/own/server.ts";

const n = Number(Deno.args[0] ?? 200);
const gc = (globalThis as unknown as { gc?: () => void }).gc;
if (gc === undefined) throw new Error("run with --v8-flags=--expose-gc");

const refs: WeakRef<object>[] = [];
let echoed = 0;
const server = serve({
  hostname: "127.0.0.1",
  port: 0,
  maxConnectionsPerAddress: 0,
  onListen() {},
}, (req) => {
  const { socket, response } = upgradeWebSocket(req, { idleTimeout: 30 });
  refs.push(new WeakRef(req), new WeakRef(response));
  socket.onmessage = (e) => socket.send(e.data);
  return response;
});
const port = (server.addr as Deno.NetAddr).port;

gc();
const before = Deno.memoryUsage().heapUsed;
const clients: WebSocket[] = [];
for (let i = 0; i < n; i++) {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/`);
  ws.onopen = () => ws.send("hello");
  ws.onmessage = () => echoed++;
  clients.push(ws);
}
while (echoed < n) await new Promise((r) => setTimeout(r, 20));
// Let every handshake's async work finish, then collect.
await new Promise((r) => setTimeout(r, 100));
gc();
gc();
const heapPerSocket = Math.round((Deno.memoryUsage().heapUsed - before) / n);
const freed = refs.filter((r) => r.deref() === undefined).length;
console.log(JSON.stringify({ sockets: n, handshakeObjects: refs.length, freed, heapPerSocket }));
for (const ws of clients) ws.close();
await server.shutdown();
Deno.exit(0);
