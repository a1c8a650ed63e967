/**
 * A generator Worker: holds one shard (see `load.ts`) and carries out the
 * driver's calls on it, so several threads can generate load when one
 * thread cannot keep the server busy.
 *
 * @module
 */

import { dispatch, makeShard, type Shard, type ShardCalls, type ShardSpec } from "./load.ts";

/** A message from the driver. */
export type WorkerRequest =
  | { id: number; create: ShardSpec }
  | { id: number; call: keyof ShardCalls };

/** A reply to the driver. */
export type WorkerReply =
  | { id: number; ok: true; result: unknown }
  | { id: number; ok: false; error: string };

const port = self as unknown as {
  onmessage: ((e: MessageEvent<WorkerRequest>) => void) | null;
  postMessage(m: WorkerReply): void;
};

let shard: Shard | undefined;

port.onmessage = async (e) => {
  const req = e.data;
  try {
    if ("create" in req) {
      shard = makeShard(req.create);
      port.postMessage({ id: req.id, ok: true, result: undefined });
    } else {
      if (shard === undefined) throw new Error("no shard yet");
      port.postMessage({ id: req.id, ok: true, result: await dispatch(shard, req.call) });
    }
  } catch (err) {
    port.postMessage({ id: req.id, ok: false, error: String((err as Error)?.stack ?? err) });
  }
};
