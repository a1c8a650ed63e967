/**
 * The route table of protocols: which engine answers on which path. A new
 * wire protocol is an engine module plus a line here; the transport and the
 * HTTP routes need no change.
 *
 * @module
 */

import type { Directory } from "./diva/broker.ts";
import type { Config } from "./config.ts";
import { type DivaEngine, divaEngine } from "./diva/engine.ts";
import { logger } from "./log.ts";
import type { Engine, Link, Mount } from "./transport/engine.ts";
import { iceServers } from "./ice/turn.ts";
import { YWEBRTC_PATH, type YWebrtcEngine, ywebrtcEngine } from "./ywebrtc/engine.ts";

/** The engines a server runs, and where they are mounted. */
export interface Engines {
  /** The DIVA engine (its broker feeds the cluster and the tests). */
  readonly diva: DivaEngine;
  /** The y-webrtc (Yjs) engine. */
  readonly ywebrtc: YWebrtcEngine;
  /** Every engine, each once, with the path its clients are told to use. */
  readonly all: readonly { readonly engine: Engine; readonly path: string }[];
  /** Paths that upgrade, with the engines that share each. */
  readonly mounts: ReadonlyMap<string, Mount>;
}

/** What the engines need besides the configuration. */
export interface EngineDeps {
  /** The cluster directory, in cluster mode. */
  directory?: Directory<Link>;
}

/** Builds every engine from `config` and mounts it. */
export function buildEngines(config: Config, deps: EngineDeps = {}): Engines {
  const diva = divaEngine({
    limits: config.limits,
    iceServers: (ident) => iceServers(config, ident, Date.now() / 1000),
    directory: deps.directory,
    log: logger("diva"),
  });
  const l = config.limits;
  const ywebrtc = ywebrtcEngine({
    // Shaping and queue bounds are shared with DIVA (--rate 0 turns both off).
    limits: {
      ...config.ywebrtc,
      maxFrameBytes: l.maxFrameBytes,
      rate: l.rate,
      burst: l.burst,
      maxQueuedFrames: l.maxQueuedFrames,
      maxQueuedBytes: l.maxQueuedBytes,
    },
  });
  const mounts = new Map<string, Mount>();
  /** Adds engines to a path; engines already there keep their place. */
  const mount = (path: string, ...engines: Engine[]) => {
    const had = mounts.get(path)?.engines ?? [];
    mounts.set(path, { path, engines: [...had, ...engines.filter((e) => !had.includes(e))] });
  };
  // `/` is shared: the first message picks the engine (DIVA frames are arrays,
  // y-webrtc frames objects); DIVA stays first, so anything else goes to it.
  mount("/", diva, ywebrtc);
  if (config.path !== "") mount(config.path, diva);
  mount(YWEBRTC_PATH, ywebrtc);
  return {
    diva,
    ywebrtc,
    all: [{ engine: diva, path: config.path || "/" }, { engine: ywebrtc, path: YWEBRTC_PATH }],
    mounts,
  };
}
