/**
 * Configuration from command-line flags and environment variables.
 *
 * Every setting has a flag and an environment variable; a flag wins over the
 * variable, and the variable over the default. Parsing is pure: the caller
 * passes the arguments and a way to read the environment and files.
 *
 * @module
 */

import { LOG_LEVELS, type LogLevel } from "./log.ts";
import { parseArgs } from "node:util";
import { DEFAULT_LIMITS, type Limits } from "./diva/broker.ts";
import { DEFAULT_PEERJS_LIMITS, peerjsWsPath } from "./peerjs/engine.ts";

/** The server's whole configuration. */
export interface Config {
  /** TCP port to listen on. */
  port: number;
  /** Address to bind. */
  host: string;
  /** An extra path that upgrades to WebSocket besides `/` ("" for none). */
  path: string;
  /** Broker limits. */
  limits: Limits;
  /** Limits of the y-webrtc engine that are its own (shaping follows `limits`). */
  ywebrtc: { maxTopicsPerConnection: number; maxSubscribersPerTopic: number };
  /** Settings of the PeerJS engine (shaping and the frame size follow `limits`). */
  peerjs: PeerjsSettings;
  /** Which HTTP/WebSocket implementation serves: this project's own, or Deno's built-in. */
  transport: TransportName;
  /** Most connections at once (own transport); past it new ones get 503. */
  maxConnections: number;
  /** Most connections from one client address (own transport; 0 = no cap). */
  maxConnectionsPerAddress: number;
  /** A proxy header that names the client address, believed only from `trustedProxies`. */
  trustProxyHeader: string;
  /** Addresses of the proxies whose `trustProxyHeader` is believed. */
  trustedProxies: string[];
  /** Seconds a request head may take to arrive (own transport). */
  headerTimeout: number;
  /** Unsent bytes a connection may have queued before it is closed. */
  maxBufferedBytes: number;
  /** Seconds without a pong before a connection is deemed dead (0 = off). */
  idleTimeout: number;
  /** Allowed Origin header values; empty allows all. */
  allowedOrigins: string[];
  /** TLS certificate file (PEM), with `tlsKey`. */
  tlsCert: string;
  /** TLS key file (PEM), with `tlsCert`. */
  tlsKey: string;
  /** Log level. */
  logLevel: LogLevel;
  /** Log format: human text or JSON lines. */
  logFormat: "text" | "json";
  /** STUN server URLs handed out by `["ice"]`. */
  stunUrls: string[];
  /** TURN server URLs handed out by `["ice"]` with credentials. */
  turnUrls: string[];
  /** TURN shared secrets; the first signs, the rest are older ones coturn still accepts. */
  turnSecrets: string[];
  /** Lifetime of TURN credentials, in seconds. */
  turnTtl: number;
  /** Redis URL: set, the instance runs in cluster mode. */
  redisUrl: string;
  /** Seconds a graceful shutdown may take before the process exits anyway. */
  shutdownTimeout: number;
  /** Tokens (JWT) and key-proven idents; everything is off by default. */
  auth: AuthSettings;
  /** A bearer token `/metrics` asks for ("" = open). */
  metricsToken: string;
}

/** The auth settings: where token keys come from and what needs a token or a proof. */
export interface AuthSettings {
  /** HS256 shared secrets (several, for rotation); from `--jwt-secrets` and `--jwt-secret-file`. */
  secrets: string[];
  /** Public keys (PEM or JWK text) read from the `--jwt-public-keys` files. */
  publicKeys: string[];
  /** A JWKS URL, fetched and cached. */
  jwksUrl: string;
  /** The `aud` tokens must name ("" = not checked). */
  audience: string;
  /** The `iss` tokens must have ("" = not checked). */
  issuer: string;
  /** Seconds of clock difference tolerated on `exp` and `nbf`. */
  clockSkew: number;
  /** Every WebSocket needs a valid token at the upgrade (401 otherwise). */
  required: boolean;
  /** Room (and topic) patterns whose joins need a token granting them. */
  rooms: string[];
  /** Room patterns whose joins need an ident proven by its key. */
  proofRooms: string[];
}

/** The transports the server can run on. */
export const TRANSPORTS = ["own", "deno"] as const;

/** One of {@link TRANSPORTS}. */
export type TransportName = typeof TRANSPORTS[number];

/** The `--peerjs-*` settings: `peer` 1.0.2's options of the same meaning, in its units. */
export interface PeerjsSettings {
  /** Keys served (`peer`'s `key`); each is a namespace of its own. */
  keys: string[];
  /** Base path clients give as `path`, starting and ending with `/`; the socket is `<path>peerjs`. */
  path: string;
  /** Ms messages for an id that is not connected wait before their senders get EXPIRE. */
  expireTimeout: number;
  /** Ms a connection may send nothing before it is closed (0 = never). */
  aliveTimeout: number;
  /** Answer `GET <path><key>/peers` with the ids held. */
  allowDiscovery: boolean;
  /** Ids this instance may hold at once. */
  concurrentLimit: number;
  /** Messages that may wait for one id that is not connected. */
  queuePerId: number;
  /** Bytes that may wait for ids that are not connected, in total. */
  queueBytes: number;
}

export { LOG_LEVELS, type LogLevel };

/** A setting that cannot be used; the message names it. */
export class ConfigError extends Error {
  /** Names the error class in messages. */
  override name = "ConfigError";
}

/** How a setting's text becomes its value. */
type Parse<T> = (text: string) => T;

interface Setting<K extends keyof Flat> {
  key: K;
  flag: string;
  env: string;
  default: string;
  help: string;
  parse: Parse<Flat[K]>;
}

/** The configuration before grouping, one field per setting. */
interface Flat {
  port: number;
  host: string;
  path: string;
  maxFrameBytes: number;
  maxIdentsPerConnection: number;
  maxPeersPerRoom: number;
  rate: number;
  burst: number;
  ratePerPair: number;
  burstPerPair: number;
  churnRate: number;
  churnBurst: number;
  maxQueuedFrames: number;
  maxQueuedBytes: number;
  sessionGrace: number;
  sessionBufferFrames: number;
  sessionBufferBytes: number;
  yjsMaxTopics: number;
  yjsMaxSubscribers: number;
  peerjsKeys: string[];
  peerjsPath: string;
  peerjsExpireTimeout: number;
  peerjsAliveTimeout: number;
  peerjsAllowDiscovery: boolean;
  peerjsConcurrentLimit: number;
  peerjsQueuePerId: number;
  peerjsQueueBytes: number;
  transport: TransportName;
  maxConnections: number;
  maxConnectionsPerAddress: number;
  trustProxyHeader: string;
  trustedProxies: string[];
  headerTimeout: number;
  maxBufferedBytes: number;
  idleTimeout: number;
  allowedOrigins: string[];
  tlsCert: string;
  tlsKey: string;
  logLevel: LogLevel;
  logFormat: "text" | "json";
  stunUrls: string[];
  turnUrls: string[];
  turnSecret: string[];
  turnSecretFile: string;
  turnTtl: number;
  redisUrl: string;
  shutdownTimeout: number;
  jwtSecrets: string[];
  jwtSecretFile: string;
  jwtPublicKeys: string[];
  jwksUrl: string;
  jwtAudience: string;
  jwtIssuer: string;
  jwtClockSkew: number;
  authRequired: boolean;
  authRooms: string[];
  proofRooms: string[];
  metricsToken: string;
}

function int(min: number, max: number): Parse<number> {
  return (t) => {
    if (!/^\d+$/.test(t)) throw new Error(`"${t}" is not a whole number`);
    const n = Number(t);
    if (n < min || n > max) throw new Error(`${n} is outside ${min}..${max}`);
    return n;
  };
}

const text: Parse<string> = (t) => t;

function list(t: string): string[] {
  return t.split(",").map((s) => s.trim()).filter((s) => s !== "");
}

function oneOf<T extends string>(values: readonly T[]): Parse<T> {
  return (t) => {
    if (!(values as readonly string[]).includes(t)) {
      throw new Error(`"${t}" is not one of ${values.join(", ")}`);
    }
    return t as T;
  };
}

function path(t: string): string {
  if (t !== "" && !/^\/[A-Za-z0-9._~\/-]*$/.test(t)) {
    throw new Error(`"${t}" is not a URL path starting with /`);
  }
  return t === "/" ? "" : t;
}

function bool(t: string): boolean {
  const v = t.toLowerCase();
  if (["true", "1", "yes", "on"].includes(v)) return true;
  if (["false", "0", "no", "off"].includes(v)) return false;
  throw new Error(`"${t}" is not true or false`);
}

/** PeerJS keys appear in URL paths (`/<key>/id`): unreserved characters only. */
function peerjsKeys(t: string): string[] {
  const all = list(t);
  if (all.length === 0) throw new Error("at least one key is needed");
  for (const k of all) {
    if (!/^[A-Za-z0-9._~-]{1,128}$/.test(k)) {
      throw new Error(`"${k}" is not a key of 1 to 128 letters, digits or . _ ~ -`);
    }
  }
  return all;
}

/** A PeerJS base path: `/`, or segments between slashes; a missing final slash is added. */
function peerjsPath(t: string): string {
  const p = t.endsWith("/") ? t : t + "/";
  if (!/^\/([A-Za-z0-9._~-]+\/)*$/.test(p)) {
    throw new Error(`"${t}" is not a URL path starting with / (such as / or /myapp/)`);
  }
  return p;
}

/** Milliseconds, 0 for never, else at least 1000. */
function aliveMs(t: string): number {
  const n = int(0, 24 * 3600 * 1000)(t);
  if (n > 0 && n < 1000) throw new Error(`${n} is neither 0 (never) nor at least 1000 ms`);
  return n;
}

function urls(t: string): string[] {
  const all = list(t);
  for (const u of all) {
    if (!/^(stun|stuns|turn|turns):/.test(u)) throw new Error(`"${u}" is not a stun: or turn: URL`);
  }
  return all;
}

const MAX = 2 ** 31 - 1;

/** Every setting: key, flag, environment variable, default and help. */
const SETTINGS: { [K in keyof Flat]: Setting<K> }[keyof Flat][] = [
  {
    key: "port",
    flag: "port",
    env: "PORT",
    default: "3903",
    help: "TCP port",
    parse: int(0, 65535),
  },
  {
    key: "host",
    flag: "host",
    env: "HOST",
    default: "0.0.0.0",
    help: "address to bind",
    parse: text,
  },
  {
    key: "path",
    flag: "path",
    env: "WS_PATH",
    default: "",
    help: "extra WebSocket path besides /",
    parse: path,
  },
  {
    key: "maxFrameBytes",
    flag: "max-frame-bytes",
    env: "MAX_FRAME_BYTES",
    default: String(DEFAULT_LIMITS.maxFrameBytes),
    help: "largest frame; larger closes with 1009",
    parse: int(64, 16 * 1024 * 1024),
  },
  {
    key: "maxIdentsPerConnection",
    flag: "max-idents",
    env: "MAX_IDENTS",
    default: String(DEFAULT_LIMITS.maxIdentsPerConnection),
    help: "global idents one connection may hold",
    parse: int(1, MAX),
  },
  {
    key: "maxPeersPerRoom",
    flag: "max-room-peers",
    env: "MAX_ROOM_PEERS",
    default: String(DEFAULT_LIMITS.maxPeersPerRoom),
    help: "members one room may have",
    parse: int(1, MAX),
  },
  {
    key: "rate",
    flag: "rate",
    env: "RATE_LIMIT",
    default: String(DEFAULT_LIMITS.rate),
    help: "budget per connection, frames per second, before pairs (0 = no shaping)",
    parse: int(0, MAX),
  },
  {
    key: "burst",
    flag: "burst",
    env: "RATE_BURST",
    default: String(DEFAULT_LIMITS.burst),
    help: "frames a connection may send at once, before pairs",
    parse: int(1, MAX),
  },
  {
    key: "ratePerPair",
    flag: "rate-per-pair",
    env: "RATE_PER_PAIR",
    default: String(DEFAULT_LIMITS.ratePerPair),
    help: "frames per second added for each pair the connection is part of",
    parse: int(0, MAX),
  },
  {
    key: "burstPerPair",
    flag: "burst-per-pair",
    env: "BURST_PER_PAIR",
    default: String(DEFAULT_LIMITS.burstPerPair),
    help: "frames granted at once for each new pair the connection is part of",
    parse: int(0, MAX),
  },
  {
    key: "churnRate",
    flag: "churn-rate",
    env: "CHURN_RATE",
    default: String(DEFAULT_LIMITS.churnRate),
    help: "pairs per second one connection's joins and leaves may announce or end",
    parse: int(1, MAX),
  },
  {
    key: "churnBurst",
    flag: "churn-burst",
    env: "CHURN_BURST",
    default: String(DEFAULT_LIMITS.churnBurst),
    help: "pairs one connection's joins and leaves may announce or end at once",
    parse: int(1, MAX),
  },
  {
    key: "maxQueuedFrames",
    flag: "max-queued-frames",
    env: "MAX_QUEUED_FRAMES",
    default: String(DEFAULT_LIMITS.maxQueuedFrames),
    help: "frames that may wait for their budget; more closes with 1008",
    parse: int(1, MAX),
  },
  {
    key: "maxQueuedBytes",
    flag: "max-queued-bytes",
    env: "MAX_QUEUED_BYTES",
    default: String(DEFAULT_LIMITS.maxQueuedBytes),
    help: "bytes that may wait for their budget; more closes with 1008",
    parse: int(1024, MAX),
  },
  {
    key: "sessionGrace",
    flag: "session-grace",
    env: "SESSION_GRACE",
    default: String(DEFAULT_LIMITS.sessionGrace / 1000),
    help: "seconds a session's idents stay held after its socket dropped (0 = sessions off)",
    parse: int(0, 3600),
  },
  {
    key: "sessionBufferFrames",
    flag: "session-buffer-frames",
    env: "SESSION_BUFFER_FRAMES",
    default: String(DEFAULT_LIMITS.sessionBufferFrames),
    help: "frames kept for a session in grace; one more ends it",
    parse: int(1, MAX),
  },
  {
    key: "sessionBufferBytes",
    flag: "session-buffer-bytes",
    env: "SESSION_BUFFER_BYTES",
    default: String(DEFAULT_LIMITS.sessionBufferBytes),
    help: "bytes kept for a session in grace; more end it",
    parse: int(1024, MAX),
  },
  {
    key: "yjsMaxTopics",
    flag: "yjs-max-topics",
    env: "YJS_MAX_TOPICS",
    default: "64",
    help: "y-webrtc topics (rooms) one connection may subscribe",
    parse: int(1, MAX),
  },
  {
    key: "yjsMaxSubscribers",
    flag: "yjs-max-subscribers",
    env: "YJS_MAX_SUBSCRIBERS",
    default: "256",
    help: "subscribers one y-webrtc topic may have",
    parse: int(1, MAX),
  },
  {
    key: "peerjsKeys",
    flag: "peerjs-keys",
    env: "PEERJS_KEYS",
    default: "peerjs",
    help: "comma-separated PeerJS keys served, each its own namespace of ids",
    parse: peerjsKeys,
  },
  {
    key: "peerjsPath",
    flag: "peerjs-path",
    env: "PEERJS_PATH",
    default: "/",
    help: "PeerJS path (the client's `path` option); its socket is <path>peerjs",
    parse: peerjsPath,
  },
  {
    key: "peerjsExpireTimeout",
    flag: "peerjs-expire-timeout",
    env: "PEERJS_EXPIRE_TIMEOUT",
    default: String(DEFAULT_PEERJS_LIMITS.expireTimeout),
    help: "ms messages wait for a PeerJS id that is not connected; then the sender gets EXPIRE",
    parse: int(100, 3600 * 1000),
  },
  {
    key: "peerjsAliveTimeout",
    flag: "peerjs-alive-timeout",
    env: "PEERJS_ALIVE_TIMEOUT",
    default: String(DEFAULT_PEERJS_LIMITS.aliveTimeout),
    help: "ms a PeerJS connection may send nothing (not even HEARTBEAT) before it is closed " +
      "(0 = never)",
    parse: aliveMs,
  },
  {
    key: "peerjsAllowDiscovery",
    flag: "peerjs-allow-discovery",
    env: "PEERJS_ALLOW_DISCOVERY",
    default: "false",
    help: "true: GET <path><key>/peers lists the ids held (else 401)",
    parse: bool,
  },
  {
    key: "peerjsConcurrentLimit",
    flag: "peerjs-concurrent-limit",
    env: "PEERJS_CONCURRENT_LIMIT",
    default: String(DEFAULT_PEERJS_LIMITS.concurrentLimit),
    help: "PeerJS ids this instance may hold at once",
    parse: int(1, MAX),
  },
  {
    key: "peerjsQueuePerId",
    flag: "peerjs-queue-per-id",
    env: "PEERJS_QUEUE_PER_ID",
    default: String(DEFAULT_PEERJS_LIMITS.maxOfflinePerId),
    help: "messages that may wait for one PeerJS id that is not connected",
    parse: int(0, MAX),
  },
  {
    key: "peerjsQueueBytes",
    flag: "peerjs-queue-bytes",
    env: "PEERJS_QUEUE_BYTES",
    default: String(DEFAULT_PEERJS_LIMITS.maxOfflineBytes),
    help: "bytes that may wait for PeerJS ids that are not connected, in total",
    parse: int(0, MAX),
  },
  {
    key: "transport",
    flag: "transport",
    env: "TRANSPORT",
    default: "own",
    help: "own (caps, timeouts, limits as bytes arrive) | deno (Deno.serve, for comparison)",
    parse: oneOf(TRANSPORTS),
  },
  {
    key: "maxConnections",
    flag: "max-connections",
    env: "MAX_CONNECTIONS",
    default: "10000",
    help: "connections at once; past it new ones get 503 (own transport)",
    parse: int(1, MAX),
  },
  {
    key: "maxConnectionsPerAddress",
    flag: "max-connections-per-address",
    env: "MAX_CONNECTIONS_PER_ADDRESS",
    default: "256",
    help: "connections from one client address (0 = no cap; own transport)",
    parse: int(0, MAX),
  },
  {
    key: "trustProxyHeader",
    flag: "trust-proxy-header",
    env: "TRUST_PROXY_HEADER",
    default: "",
    help: "header naming the client address behind a proxy, e.g. x-forwarded-for",
    parse: (t) => {
      if (t !== "" && !/^[A-Za-z0-9-]+$/.test(t)) throw new Error(`"${t}" is not a header name`);
      return t.toLowerCase();
    },
  },
  {
    key: "trustedProxies",
    flag: "trusted-proxies",
    env: "TRUSTED_PROXIES",
    default: "",
    help: "comma-separated proxy addresses whose --trust-proxy-header is believed",
    parse: list,
  },
  {
    key: "headerTimeout",
    flag: "header-timeout",
    env: "HEADER_TIMEOUT",
    default: "5",
    help: "seconds a request head may take to arrive (own transport)",
    parse: int(1, 300),
  },
  {
    key: "maxBufferedBytes",
    flag: "max-buffered-bytes",
    env: "MAX_BUFFERED_BYTES",
    default: String(1024 * 1024),
    help: "unsent bytes a slow reader may queue before it is closed",
    parse: int(1024, MAX),
  },
  {
    key: "idleTimeout",
    flag: "idle-timeout",
    env: "IDLE_TIMEOUT",
    default: "30",
    help: "seconds without a pong before a connection is dropped (0 = off)",
    parse: int(0, 3600),
  },
  {
    key: "allowedOrigins",
    flag: "allowed-origins",
    env: "ALLOWED_ORIGINS",
    default: "",
    help: "comma-separated Origin allowlist (empty = any)",
    parse: list,
  },
  {
    key: "tlsCert",
    flag: "tls-cert",
    env: "TLS_CERT",
    default: "",
    help: "PEM certificate file: serve https/wss",
    parse: text,
  },
  {
    key: "tlsKey",
    flag: "tls-key",
    env: "TLS_KEY",
    default: "",
    help: "PEM private key file for --tls-cert",
    parse: text,
  },
  {
    key: "logLevel",
    flag: "log-level",
    env: "LOG_LEVEL",
    default: "info",
    help: LOG_LEVELS.join(" | "),
    parse: oneOf(LOG_LEVELS),
  },
  {
    key: "logFormat",
    flag: "log-format",
    env: "LOG_FORMAT",
    default: "text",
    help: "text | json",
    parse: oneOf(["text", "json"] as const),
  },
  {
    key: "stunUrls",
    flag: "stun-urls",
    env: "STUN_URLS",
    default: "",
    help: 'comma-separated STUN URLs for ["ice"]',
    parse: urls,
  },
  {
    key: "turnUrls",
    flag: "turn-urls",
    env: "TURN_URLS",
    default: "",
    help: 'comma-separated TURN URLs for ["ice"]',
    parse: urls,
  },
  {
    key: "turnSecret",
    flag: "turn-secret",
    env: "TURN_SECRET",
    default: "",
    help: "TURN shared secret(s), comma-separated; the first signs",
    parse: list,
  },
  {
    key: "turnSecretFile",
    flag: "turn-secret-file",
    env: "TURN_SECRET_FILE",
    default: "",
    help: "file with TURN secrets, one a line; the first signs",
    parse: text,
  },
  {
    key: "turnTtl",
    flag: "turn-ttl",
    env: "TURN_TTL",
    default: "3600",
    help: "seconds TURN credentials stay valid",
    parse: int(60, 7 * 24 * 3600),
  },
  {
    key: "jwtSecrets",
    flag: "jwt-secrets",
    env: "JWT_SECRETS",
    default: "",
    help: "HS256 token secret(s), comma-separated (rotation: old ones after)",
    parse: list,
  },
  {
    key: "jwtSecretFile",
    flag: "jwt-secret-file",
    env: "JWT_SECRET_FILE",
    default: "",
    help: "file with HS256 token secrets, one a line",
    parse: text,
  },
  {
    key: "jwtPublicKeys",
    flag: "jwt-public-keys",
    env: "JWT_PUBLIC_KEYS",
    default: "",
    help: "comma-separated PEM or JWK files of token keys (ES256, RS256, EdDSA)",
    parse: list,
  },
  {
    key: "jwksUrl",
    flag: "jwks-url",
    env: "JWKS_URL",
    default: "",
    help: "URL of a JWKS with the token keys, fetched and cached",
    parse: (t) => {
      if (t !== "" && !/^https?:\/\//.test(t)) throw new Error(`"${t}" is not an http(s) URL`);
      return t;
    },
  },
  {
    key: "jwtAudience",
    flag: "jwt-audience",
    env: "JWT_AUDIENCE",
    default: "",
    help: "the aud tokens must name (empty = not checked)",
    parse: text,
  },
  {
    key: "jwtIssuer",
    flag: "jwt-issuer",
    env: "JWT_ISSUER",
    default: "",
    help: "the iss tokens must have (empty = not checked)",
    parse: text,
  },
  {
    key: "jwtClockSkew",
    flag: "jwt-clock-skew",
    env: "JWT_CLOCK_SKEW",
    default: "30",
    help: "seconds of clock difference tolerated on exp and nbf",
    parse: int(0, 600),
  },
  {
    key: "authRequired",
    flag: "auth-required",
    env: "AUTH_REQUIRED",
    default: "false",
    help: "every WebSocket needs a valid token (true | false)",
    parse: bool,
  },
  {
    key: "authRooms",
    flag: "auth-rooms",
    env: "AUTH_ROOMS",
    default: "",
    help: "comma-separated room patterns (team-*, *) whose joins need a token granting them",
    parse: list,
  },
  {
    key: "proofRooms",
    flag: "proof-rooms",
    env: "PROOF_ROOMS",
    default: "",
    help: "comma-separated room patterns whose joins need an ident proven by its key",
    parse: list,
  },
  {
    key: "metricsToken",
    flag: "metrics-token",
    env: "METRICS_TOKEN",
    default: "",
    help: "bearer token /metrics asks for (empty = open)",
    parse: text,
  },
  {
    key: "redisUrl",
    flag: "redis-url",
    env: "REDIS_URL",
    default: "",
    help: "redis://host:port: run as one instance of a cluster",
    parse: (t) => {
      if (t !== "" && !/^rediss?:\/\//.test(t)) throw new Error(`"${t}" is not a redis:// URL`);
      return t;
    },
  },
  {
    key: "shutdownTimeout",
    flag: "shutdown-timeout",
    env: "SHUTDOWN_TIMEOUT",
    default: "5",
    help: "seconds a graceful shutdown may take",
    parse: int(0, 300),
  },
];

/** Environment variables the server reads (for `--allow-env=…`). */
export const ENV_NAMES: readonly string[] = SETTINGS.map((s) => s.env);

/** What {@link parseConfig} reads from outside. */
export interface ConfigSource {
  /** Command-line arguments after the program name. */
  args: string[];
  /** Reads one environment variable. */
  env: (name: string) => string | undefined;
  /** Reads a text file (for the TURN secret file). */
  readTextFile: (path: string) => string;
}

/** The outcome of reading the command line. */
export type ParsedCommand =
  | { kind: "help"; text: string }
  | { kind: "version" }
  | { kind: "run"; config: Config };

/**
 * Reads the configuration; throws {@link ConfigError} naming the bad setting.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const env = (name: string) => (name === "RATE_LIMIT" ? "50" : undefined);
 * const cmd = parseConfig({ args: ["--port", "8080"], env, readTextFile: () => "" });
 * assert.ok(cmd.kind === "run");
 * assert.equal(cmd.config.port, 8080);
 * assert.equal(cmd.config.limits.rate, 50);
 * ```
 */
export function parseConfig(source: ConfigSource): ParsedCommand {
  const options: Record<string, { type: "string" | "boolean"; short?: string }> = {
    help: { type: "boolean", short: "h" },
    version: { type: "boolean", short: "V" },
  };
  for (const s of SETTINGS) options[s.flag] = { type: "string" };
  // A true-or-false setting given bare (`--auth-required`) means true.
  const switches = new Set(SETTINGS.filter((s) => s.parse === bool).map((s) => "--" + s.flag));
  const args: string[] = [];
  source.args.forEach((a, i) => {
    args.push(a);
    const next = source.args[i + 1];
    if (switches.has(a) && (next === undefined || next.startsWith("--"))) args.push("true");
  });
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({ args, options, strict: true, allowPositionals: false })
      .values as Record<string, string | boolean | undefined>;
  } catch (e) {
    throw new ConfigError((e as Error).message.split("\n")[0]);
  }
  if (values.help) return { kind: "help", text: helpText() };
  if (values.version) return { kind: "version" };

  const flat = {} as Record<string, unknown>;
  for (const s of SETTINGS) {
    const fromFlag = values[s.flag];
    const raw = typeof fromFlag === "string" ? fromFlag : source.env(s.env) ?? s.default;
    try {
      flat[s.key] = s.parse(raw.trim());
    } catch (e) {
      const where = typeof fromFlag === "string" ? `--${s.flag}` : `${s.env} (--${s.flag})`;
      throw new ConfigError(`invalid ${where}: ${(e as Error).message}`);
    }
  }
  return { kind: "run", config: group(flat as unknown as Flat, source) };
}

function group(f: Flat, source: ConfigSource): Config {
  if ((f.tlsCert === "") !== (f.tlsKey === "")) {
    throw new ConfigError("invalid TLS_CERT/TLS_KEY (--tls-cert/--tls-key): set both or neither");
  }
  if (f.burst < 1) throw new ConfigError("invalid RATE_BURST (--burst): must be at least 1");
  let secrets = f.turnSecret;
  if (f.turnSecretFile !== "") {
    let content: string;
    try {
      content = source.readTextFile(f.turnSecretFile);
    } catch (e) {
      throw new ConfigError(
        `invalid TURN_SECRET_FILE (--turn-secret-file): cannot read ${f.turnSecretFile}: ${
          (e as Error).message.split("\n")[0]
        }`,
      );
    }
    secrets = [...content.split("\n").map((l) => l.trim()).filter((l) => l !== ""), ...secrets];
    if (secrets.length === 0) {
      throw new ConfigError(
        "invalid TURN_SECRET_FILE (--turn-secret-file): the file holds no secret",
      );
    }
  }
  if (f.trustProxyHeader !== "" && f.trustedProxies.length === 0) {
    throw new ConfigError(
      "invalid TRUSTED_PROXIES (--trusted-proxies): --trust-proxy-header needs the proxies' addresses",
    );
  }
  if (f.path !== "" && f.path === peerjsWsPath(f.peerjsPath)) {
    throw new ConfigError(
      `invalid PEERJS_PATH (--peerjs-path): its socket ${f.path} is already --path`,
    );
  }
  if (secrets.length > 0 && f.turnUrls.length === 0) {
    throw new ConfigError("invalid TURN_URLS (--turn-urls): a TURN secret needs TURN URLs");
  }
  const auth = authSettings(f, source);
  return {
    port: f.port,
    host: f.host,
    path: f.path,
    limits: {
      maxFrameBytes: f.maxFrameBytes,
      maxIdentsPerConnection: f.maxIdentsPerConnection,
      maxPeersPerRoom: f.maxPeersPerRoom,
      rate: f.rate,
      burst: f.burst,
      ratePerPair: f.ratePerPair,
      burstPerPair: f.burstPerPair,
      churnRate: f.churnRate,
      churnBurst: f.churnBurst,
      maxQueuedFrames: f.maxQueuedFrames,
      maxQueuedBytes: f.maxQueuedBytes,
      sessionGrace: f.sessionGrace * 1000,
      sessionBufferFrames: f.sessionBufferFrames,
      sessionBufferBytes: f.sessionBufferBytes,
    },
    ywebrtc: {
      maxTopicsPerConnection: f.yjsMaxTopics,
      maxSubscribersPerTopic: f.yjsMaxSubscribers,
    },
    peerjs: {
      keys: f.peerjsKeys,
      path: f.peerjsPath,
      expireTimeout: f.peerjsExpireTimeout,
      aliveTimeout: f.peerjsAliveTimeout,
      allowDiscovery: f.peerjsAllowDiscovery,
      concurrentLimit: f.peerjsConcurrentLimit,
      queuePerId: f.peerjsQueuePerId,
      queueBytes: f.peerjsQueueBytes,
    },
    transport: f.transport,
    maxConnections: f.maxConnections,
    maxConnectionsPerAddress: f.maxConnectionsPerAddress,
    trustProxyHeader: f.trustProxyHeader,
    trustedProxies: f.trustedProxies,
    headerTimeout: f.headerTimeout,
    maxBufferedBytes: f.maxBufferedBytes,
    idleTimeout: f.idleTimeout,
    allowedOrigins: f.allowedOrigins,
    tlsCert: f.tlsCert,
    tlsKey: f.tlsKey,
    logLevel: f.logLevel,
    logFormat: f.logFormat,
    stunUrls: f.stunUrls,
    turnUrls: f.turnUrls,
    turnSecrets: secrets,
    turnTtl: f.turnTtl,
    redisUrl: f.redisUrl,
    shutdownTimeout: f.shutdownTimeout,
    auth,
    metricsToken: f.metricsToken,
  };
}

/** Reads the token key files and checks that what needs a token has keys to verify it with. */
function authSettings(f: Flat, source: ConfigSource): AuthSettings {
  const read = (flag: string, env: string, path: string): string => {
    try {
      return source.readTextFile(path);
    } catch (e) {
      throw new ConfigError(
        `invalid ${env} (--${flag}): cannot read ${path}: ${(e as Error).message.split("\n")[0]}`,
      );
    }
  };
  let secrets = f.jwtSecrets;
  if (f.jwtSecretFile !== "") {
    const lines = read("jwt-secret-file", "JWT_SECRET_FILE", f.jwtSecretFile).split("\n")
      .map((l) => l.trim()).filter((l) => l !== "");
    secrets = [...lines, ...secrets];
  }
  for (const sct of secrets) {
    // Shorter HS256 keys are guessable offline from any token.
    if (new TextEncoder().encode(sct).length < 32) {
      throw new ConfigError("invalid JWT_SECRETS (--jwt-secrets): a secret needs 32 bytes or more");
    }
  }
  const publicKeys = f.jwtPublicKeys.map((p) => read("jwt-public-keys", "JWT_PUBLIC_KEYS", p));
  const keyed = secrets.length > 0 || publicKeys.length > 0 || f.jwksUrl !== "";
  if ((f.authRequired || f.authRooms.length > 0) && !keyed) {
    throw new ConfigError(
      "invalid AUTH_REQUIRED/AUTH_ROOMS (--auth-required/--auth-rooms): tokens need a key: " +
        "set --jwt-secrets, --jwt-public-keys or --jwks-url",
    );
  }
  return {
    secrets,
    publicKeys,
    jwksUrl: f.jwksUrl,
    audience: f.jwtAudience,
    issuer: f.jwtIssuer,
    clockSkew: f.jwtClockSkew,
    required: f.authRequired,
    rooms: f.authRooms,
    proofRooms: f.proofRooms,
  };
}

/** The `--help` text: every flag with its variable and default. */
export function helpText(): string {
  const lines = [
    "signal-server: a WebRTC signal server for DIVA, y-webrtc (Yjs) and PeerJS clients",
    "",
    "usage: signal-server [flags]",
    "",
    "Every flag can also be set by the environment variable shown; a flag wins.",
    "",
  ];
  const width = Math.max(...SETTINGS.map((s) => s.flag.length)) + 2;
  const envWidth = Math.max(...SETTINGS.map((s) => s.env.length));
  for (const s of SETTINGS) {
    const def = s.default === "" ? "" : ` (default ${s.default})`;
    lines.push(`  --${s.flag.padEnd(width)} ${s.env.padEnd(envWidth)} ${s.help}${def}`);
  }
  lines.push(`  --${"help".padEnd(width)} ${"".padEnd(envWidth)} show this help`);
  lines.push(`  --${"version".padEnd(width)} ${"".padEnd(envWidth)} print the version`);
  return lines.join("\n");
}
