/**
 * The route table of protocols: which engine answers on which path. A new
 * wire protocol is an engine module plus a line here; the transport and the
 * HTTP routes need no change.
 *
 * @module
 */

import type { TokenVerifier } from "./auth/jwt.ts";
import { matcher } from "./auth/patterns.ts";
import type { PresentedToken } from "./auth/request.ts";
import type { AuthRules, Directory } from "./diva/broker.ts";
import type { Config } from "./config.ts";
import { type DivaEngine, divaEngine } from "./diva/engine.ts";
import { logger } from "./log.ts";
import { type PeerjsEngine, peerjsEngine, type PeerjsOptions } from "./peerjs/engine.ts";
import type { Engine, Link, Mount } from "./transport/engine.ts";
import { iceServers } from "./ice/turn.ts";
import {
  YWEBRTC_PATH,
  type YWebrtcEngine,
  ywebrtcEngine,
  type YWebrtcOptions,
} from "./ywebrtc/engine.ts";

/** The engines a server runs, and where they are mounted. */
export interface Engines {
  /** The DIVA engine (its broker feeds the cluster and the tests). */
  readonly diva: DivaEngine;
  /** The y-webrtc (Yjs) engine. */
  readonly ywebrtc: YWebrtcEngine;
  /** The PeerJS engine. */
  readonly peerjs: PeerjsEngine;
  /** Every engine, each once, with the path its clients are told to use. */
  readonly all: readonly { readonly engine: Engine; readonly path: string }[];
  /** Paths that upgrade, with the engines that share each. */
  readonly mounts: ReadonlyMap<string, Mount>;
}

/** What the engines need besides the configuration. */
export interface EngineDeps {
  /** The cluster directory, in cluster mode. */
  directory?: Directory<Link>;
  /** The bus y-webrtc publishes fan out on, in cluster mode (else one in memory). */
  ywebrtcBus?: YWebrtcOptions["bus"];
  /** PeerJS's directory of ids, in cluster mode (else one in memory). */
  peerjsDirectory?: PeerjsOptions["directory"];
  /** Verifies tokens (once its keys are imported), when keys are configured. */
  verifier?: Promise<TokenVerifier>;
}

/** A PeerJS upgrade's bearer token: its `key`, when that has the shape of a JWT. */
function peerjsBearer(_req: Request, url: URL): PresentedToken | undefined {
  const key = url.searchParams.get("key") ?? "";
  return /^[\w-]+\.[\w-]+\.[\w-]+$/.test(key) ? { token: key } : undefined;
}

/** Builds every engine from `config` and mounts it. */
export function buildEngines(config: Config, deps: EngineDeps = {}): Engines {
  const a = config.auth;
  const rules: AuthRules = {
    protectedRoom: matcher(a.rooms),
    proofRoom: matcher(a.proofRooms),
    grants: deps.verifier !== undefined,
  };
  const diva = divaEngine({
    auth: rules,
    verifier: deps.verifier,
    clockSkew: a.clockSkew,
    limits: config.limits,
    iceServers: (user, turn) => iceServers(config, user, Date.now() / 1000, turn),
    iceTtl: config.turnTtl,
    directory: deps.directory,
    log: logger("diva"),
  });
  const l = config.limits;
  const now = () => performance.now();
  const ywebrtc = ywebrtcEngine({
    now,
    // Topics are y-webrtc's rooms: --auth-rooms protects them the same way.
    protectedTopic: rules.protectedRoom,
    bus: deps.ywebrtcBus,
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
  const p = config.peerjs;
  const peerjs = peerjsEngine({
    now,
    newId: () => crypto.randomUUID(),
    keys: p.keys,
    path: p.path,
    allowDiscovery: p.allowDiscovery,
    corsOrigins: config.allowedOrigins,
    directory: deps.peerjsDirectory,
    // Shaping and its queue bounds are shared with DIVA (--rate 0 turns them off).
    limits: {
      concurrentLimit: p.concurrentLimit,
      expireTimeout: p.expireTimeout,
      aliveTimeout: p.aliveTimeout,
      maxOfflinePerId: p.queuePerId,
      maxOfflineBytes: p.queueBytes,
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
  // PeerJS's client waits for OPEN before it says anything: a path of its own.
  mount(peerjs.wsPath, peerjs);
  // PeerJS's own `token` is a session token; a bearer token (a JWT) rides in `key`.
  mounts.set(peerjs.wsPath, { ...mounts.get(peerjs.wsPath)!, token: peerjsBearer });
  return {
    diva,
    ywebrtc,
    peerjs,
    all: [
      { engine: diva, path: config.path || "/" },
      { engine: ywebrtc, path: YWEBRTC_PATH },
      { engine: peerjs, path: peerjs.wsPath },
    ],
    mounts,
  };
}
