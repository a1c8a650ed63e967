/**
 * Measures read fairness of our own transport under backlog: N WebSocket
 * clients (in a child process) each keep a full send buffer of small
 * messages; the server counts messages per socket each second and prints
 * how many sockets got nothing, and Jain's fairness index.
 *
 * ```sh
 * deno run -A tests/helpers/own_fairness_probe.ts --sockets 1000 --seconds 6 --reads-per-turn 4
 * deno run -A tests/helpers/own_fairness_probe.ts --sockets 1000 --seconds 6 --reads-per-turn 0
 * ```
 *
 * Bounded: the clients stop after `--seconds`, the server one second later.
 * Not a test: the figures depend on the machine.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { serve, upgradeWebSocket } from "../../lib/transport/own/server.ts";
import { clientFrame } from "./own_raw.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    sockets: { type: "string", default: "1000" },
    seconds: { type: "string", default: "6" },
    "reads-per-turn": { type: "string", default: "4" },
    client: { type: "string" },
    work: { type: "string", default: "0" },
  },
});
const sockets = Number(values.sockets);
const seconds = Number(values.seconds);

if (values.client !== undefined) {
  // Client mode: open the sockets, then write as fast as the server reads.
  const port = Number(values.client);
  const one = clientFrame(0x1, "x".repeat(20));
  const burst = new Uint8Array(one.length * 600);
  for (let i = 0; i < 600; i++) burst.set(one, i * one.length);
  const conns: Deno.Conn[] = [];
  for (let i = 0; i < sockets; i++) {
    const c = await Deno.connect({ hostname: "127.0.0.1", port });
    const key = btoa("0123456789abcdef");
    await c.write(
      new TextEncoder().encode(
        `GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      ),
    );
    conns.push(c);
  }
  const end = Date.now() + seconds * 1000;
  await Promise.all(conns.map(async (c) => {
    // Drain the server's output (the 101) so its writes never block.
    (async () => {
      const b = new Uint8Array(4096);
      try {
        while (await c.read(b) !== null) { /* discard */ }
      } catch { /* closed */ }
    })();
    try {
      while (Date.now() < end) await c.write(burst);
    } catch { /* cut */ }
    try {
      c.close();
    } catch { /* closed */ }
  }));
  Deno.exit(0);
}

const counts: number[] = [];
const work = Number(values.work);
const server = serve({
  port: 0,
  hostname: "127.0.0.1",
  maxConnectionsPerAddress: 0,
  readsPerTurn: Number(values["reads-per-turn"]),
  logger: { debug() {}, info() {}, warn() {}, error() {} },
}, (req) => {
  const { socket, response } = upgradeWebSocket(req, { idleTimeout: 0 });
  const id = counts.length;
  counts.push(0);
  socket.onmessage = () => {
    counts[id]++;
    let x = 0;
    for (let k = 0; k < work; k++) x += k;
    if (x < 0) console.log(x);
  };
  return response;
});
const child = new Deno.Command(Deno.execPath(), {
  args: ["run", "-A", import.meta.filename!, "--client", String(server.addr.port), ...Deno.args],
  stdout: "inherit",
  stderr: "inherit",
}).spawn();
let prev: number[] = [];
for (let s = 0; s < seconds + 1; s++) {
  await new Promise((r) => setTimeout(r, 1000));
  const now = counts.slice();
  const d = now.map((v, i) => v - (prev[i] ?? 0));
  prev = now;
  const total = d.reduce((a, b) => a + b, 0);
  const sq = d.reduce((a, b) => a + b * b, 0);
  const zero = d.filter((x) => x === 0).length;
  const jain = sq === 0 ? 0 : (total * total) / (d.length * sq);
  console.log(
    `t=${s + 1}s sockets=${d.length} messages/s=${total} starved=${zero} jain=${jain.toFixed(3)}`,
  );
}
await child.status;
await server.shutdown();
