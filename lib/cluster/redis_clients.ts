/**
 * The pair of ioredis clients every cluster link opens: one for commands
 * (with its Lua scripts defined) and one subscribed to channels. Both
 * start unconnected; `connect()` them when the link starts.
 *
 * Why two: a client in subscriber mode cannot run commands. Why these
 * settings: commands must never hang or pile up while Redis is away (no
 * offline queue, a timeout, one retry), so a caller's answer is
 * `unavailable` within {@link COMMAND_TIMEOUT_MS}; the subscriber keeps its
 * queue so its `SUBSCRIBE` is sent again on reconnect. Reconnects back off
 * from 100 ms to 1 s.
 *
 * @module
 */

import { Redis } from "ioredis";
import { logger } from "../log.ts";

/** How long one command may take before it fails, ms. */
export const COMMAND_TIMEOUT_MS = 2000;

/** What a link hears from its clients. */
export interface ClientEvents {
  /** Either client became ready. */
  up(): void;
  /** Either client's connection closed. */
  down(): void;
  /** A message on a subscribed channel. A throw is logged, not raised. */
  message(channel: string, message: string): void;
}

/**
 * The two clients of one link. Internal to the cluster's adapters, whose
 * own surface never shows ioredis types, so it is left out of the docs.
 *
 * @ignore
 */
export interface RedisClients<S> {
  /** Commands, with the scripts defined as methods. */
  cmd: Redis & S;
  /** Subscriptions. */
  sub: Redis;
}

/**
 * Opens (lazily) the command and subscriber clients for `url`, defines
 * `scripts` on the command client and wires `events`. `label` names the
 * link in logs.
 *
 * @ignore
 */
export function redisClients<S>(
  url: string,
  scripts: Iterable<readonly [string, string]>,
  label: string,
  events: ClientEvents,
): RedisClients<S> {
  const log = logger("cluster");
  const common = {
    lazyConnect: true,
    maxRetriesPerRequest: 1,
    retryStrategy: (n: number) => Math.min(100 * n, 1000),
  };
  const cmd = new Redis(url, {
    ...common,
    enableOfflineQueue: false,
    commandTimeout: COMMAND_TIMEOUT_MS,
  }) as Redis & S;
  const sub = new Redis(url, { ...common, enableOfflineQueue: true });
  for (const [name, lua] of scripts) cmd.defineCommand(name, { numberOfKeys: 0, lua });
  for (const r of [cmd, sub]) {
    r.on("error", (e: Error) => log.debug("redis ({label}): {error}", { label, error: e.message }));
    r.on("close", () => events.down());
    r.on("ready", () => events.up());
  }
  sub.on("message", (channel: string, message: string) => {
    try {
      events.message(channel, message);
    } catch (e) {
      // One bad event must not take the instance down.
      log.error("{label} event failed: {error}", { label, error: (e as Error).stack ?? e });
    }
  });
  return { cmd, sub };
}
