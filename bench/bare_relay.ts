/**
 * The bare relay: the least a WebSocket relay on Deno can do, as the upper
 * bound the signal server is measured against, on each transport candidate.
 *
 * The relay logic is {@link RelayCore} (`relay_core.ts`): `ident`, `join`
 * with its `stun` announcements, and signals forwarded by one `Map` lookup on
 * their `to`, with no parsing and no checks. Only the transport changes:
 *
 * - `deno` (target `bound`): `Deno.serve` + `Deno.upgradeWebSocket`
 *   (`idleTimeout: 0`), the bound of every earlier run;
 * - `own` (target `bound-own`): the project's own transport,
 *   `lib/transport/own` `serve` + `upgradeWebSocket` on `Deno.listen`, with
 *   its defaults (4 reads per turn, 5 s header timeout, 1 MiB messages) and
 *   no connection caps;
 * - `node` (target `bound-node`): `node:http` + `npm:ws@8` under Deno, with
 *   `maxPayload` 1 MiB and `server.headersTimeout` 5 s (`bare_relay_node.ts`);
 * - `node-deno` (no benchmark target): `node:http` for the handshake, then
 *   `Deno.upgradeWebSocket(req, { socket, head })` on its socket: Deno's own
 *   WebSocket behind Node's HTTP parser (`bare_relay_node.ts`). Deno 2.9.6
 *   loses client frames sent right after the handshake on this path
 *   (docs/performance.md, upstream notes), so it is not benchmarked;
 * - `workers` (target `bound-workers`): `--workers N` Deno workers, each with
 *   its own event loop and `Deno.serve({ reusePort: true })` on the same
 *   port, sharing rooms through a directory in the main isolate
 *   (`bare_relay_workers.ts`).
 *
 * ```sh
 * deno run --allow-net bench/bare_relay.ts --port 4000 --transport own
 * deno run --allow-net --allow-read --allow-env --no-lock bench/bare_relay.ts --transport node
 * deno run --allow-net --allow-read --unstable-net bench/bare_relay.ts --transport workers --workers 2
 * ```
 *
 * (`node` loads `npm:ws` at run time: `--no-lock` keeps it out of
 * `deno.lock`; `workers` needs `--unstable-net` for `reusePort`.)
 *
 * `--read-stats` prints to stderr once a second how many sockets were read
 * from and how many were not read at all (docs/performance.md, the P=500
 * starvation).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { SILENT_LOGGER } from "../lib/transport/own/counters.ts";
import { serve as ownServe, upgradeWebSocket as ownUpgrade } from "../lib/transport/own/server.ts";
import { startNodeRelay } from "./bare_relay_node.ts";
import { startWorkerRelay } from "./bare_relay_workers.ts";
import { LocalRooms, RelayCore } from "./relay_core.ts";
import {
  type BareRelay,
  type BareRelayOptions,
  LIMITS,
  readStatsTimer,
  serveOnDeno,
  type Transport,
  TRANSPORTS,
  wireWebSocket,
} from "./relay_serve.ts";

function serveOnOwn(core: RelayCore, o: BareRelayOptions): BareRelay {
  const server = ownServe({
    hostname: o.host,
    port: o.port,
    logger: SILENT_LOGGER,
    // The load comes from one address, and the bound has no caps.
    maxConnections: 1_000_000,
    maxConnectionsPerAddress: 0,
    headerTimeoutMs: LIMITS.headerTimeoutMs,
    readsPerTurn: o.readsPerTurn,
    webSocket: { maxMessageBytes: LIMITS.maxMessageBytes },
  }, (req) => {
    if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
      return new Response("bare relay\n");
    }
    const { socket, response } = ownUpgrade(req, { idleTimeout: 0 });
    wireWebSocket(core, socket);
    return response;
  });
  return {
    port: server.addr.port,
    async shutdown() {
      core.closeAll();
      await server.shutdown();
    },
  };
}

/**
 * Starts the bare relay on `host:port` over `transport`; resolves once it
 * listens (for `workers`, once every worker listens).
 */
async function startBareRelay(o: BareRelayOptions): Promise<BareRelay> {
  const transport = o.transport ?? "deno";
  if (transport === "workers") {
    return await startWorkerRelay(o);
  }
  if (transport === "node" || transport === "node-deno") {
    return await startNodeRelay(o, transport === "node" ? "ws" : "deno");
  }
  const core = new RelayCore(new LocalRooms(), o.readStats);
  const stopStats = o.readStats ? readStatsTimer(core) : () => {};
  if (transport === "own") {
    const relay = serveOnOwn(core, o);
    return {
      port: relay.port,
      shutdown: () => (stopStats(), relay.shutdown()),
    };
  }
  const server = serveOnDeno(core, { host: o.host, port: o.port });
  return {
    port: server.addr.port,
    async shutdown() {
      stopStats();
      core.closeAll();
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
      transport: { type: "string", default: "deno" },
      workers: { type: "string", default: "1" },
      "reads-per-turn": { type: "string" },
      "read-stats": { type: "boolean", default: false },
    },
    strict: true,
  });
  const transport = values.transport as Transport;
  if (!TRANSPORTS.includes(transport)) {
    console.error(`bare relay: --transport is one of ${TRANSPORTS.join(", ")}`);
    Deno.exit(2);
  }
  const workers = Number(values.workers);
  if (!Number.isInteger(workers) || workers < 1) {
    console.error("bare relay: --workers is a whole number ≥ 1");
    Deno.exit(2);
  }
  const relay = await startBareRelay({
    host: values.host,
    port: Number(values.port),
    transport,
    readStats: values["read-stats"],
    workers,
    readsPerTurn: values["reads-per-turn"] === undefined
      ? undefined
      : Number(values["reads-per-turn"]),
  });
  const stop = () => relay.shutdown().finally(() => Deno.exit(0));
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
}
