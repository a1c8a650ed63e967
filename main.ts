/**
 * The signal server's command-line entry point.
 *
 * ```sh
 * deno task start --port 3903
 * ```
 *
 * @module
 */

import denoJson from "./deno.json" with { type: "json" };
import { ConfigError, parseConfig } from "./lib/config.ts";
import { logger, setupLogging } from "./lib/log.ts";
import { startServer } from "./lib/server.ts";

/** The server's version, from deno.json. */
export const VERSION: string = denoJson.version;

function envReader(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined; // not granted: the variable is treated as unset
  }
}

async function main(): Promise<number> {
  let cmd;
  try {
    cmd = parseConfig({ args: Deno.args, env: envReader, readTextFile: Deno.readTextFileSync });
  } catch (e) {
    if (e instanceof ConfigError) {
      console.error(`signal-server: ${e.message}`);
      return 2;
    }
    throw e;
  }
  if (cmd.kind === "help") {
    console.log(cmd.text);
    return 0;
  }
  if (cmd.kind === "version") {
    console.log(`signal-server ${VERSION}`);
    return 0;
  }
  const config = cmd.config;
  setupLogging(config.logLevel, config.logFormat);
  const log = logger("main");
  let server;
  try {
    const redis = config.redisUrl === ""
      ? undefined
      : await import("./lib/cluster/redis_cluster.ts");
    const cluster = redis?.RedisCluster;
    const maxSubscribersPerTopic = config.ywebrtc.maxSubscribersPerTopic;
    server = startServer(config, {
      version: VERSION,
      cluster: cluster && ((o) => new cluster({ ...o, maxSubscribersPerTopic })),
    });
  } catch (e) {
    // Name the address: "address in use" alone does not say which setting to change.
    console.error(
      `signal-server: cannot start on ${config.host}:${config.port}: ${
        (e as Error).message.split("\n")[0]
      }`,
    );
    return 1;
  }
  const stop = () => {
    log.info("signal received, shutting down");
    server.shutdown().then(() => Deno.exit(0));
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
  try {
    await server.finished;
  } catch (e) {
    // Only Deno's own server (--transport deno) ends like this, when accept()
    // fails (descriptors exhausted): it no longer listens, so exit and let
    // the supervisor restart it. The own transport never rejects here.
    log.error("the HTTP server stopped: {error}", { error: String(e) });
    return 1;
  }
  return 0;
}

if (import.meta.main) Deno.exit(await main());
