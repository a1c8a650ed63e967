/**
 * A server on our own transport for the descriptor-exhaustion test, run as
 * a child process under a low `ulimit -n`. It prints its port on stdout,
 * answers `GET /counters` with its counters as JSON, and logs the
 * transport's warnings (accept failures) on stderr.
 *
 * ```sh
 * bash -c 'ulimit -n 64; exec deno run -A tests/helpers/own_fd_server.ts'
 * ```
 *
 * @module
 */

import { serve } from "../../lib/transport/own/server.ts";

const encoder = new TextEncoder();
const server = serve({
  port: 0,
  hostname: "127.0.0.1",
  // The test, not a timer, decides when the held connections go away.
  headerTimeoutMs: 120_000,
  logIntervalMs: 200,
  logger: {
    debug() {},
    info() {},
    warn: (m, p) => Deno.stderr.writeSync(encoder.encode(`warn ${m} ${JSON.stringify(p)}\n`)),
    error: (m, p) => Deno.stderr.writeSync(encoder.encode(`error ${m} ${JSON.stringify(p)}\n`)),
  },
}, (req) => {
  if (new URL(req.url).pathname === "/counters") return Response.json(server.counters);
  return new Response("ok\n");
});
Deno.stdout.writeSync(encoder.encode(`${server.addr.port}\n`));
Deno.addSignalListener("SIGTERM", () => {
  server.shutdown().then(() => Deno.exit(0));
});
await server.finished;
