/**
 * Configuration: defaults, flag/environment precedence, validation messages
 * that name the setting, the TURN secret file, TLS pairing and `--help`.
 */

import assert from "node:assert/strict";
import { DEFAULT_LIMITS } from "../lib/diva/broker.ts";
import {
  type Config,
  ConfigError,
  ENV_NAMES,
  helpText,
  LOG_LEVELS,
  parseConfig,
  type ParsedCommand,
} from "../lib/config.ts";

/** Every setting as PROTOCOL/README promise it: flag, variable, default shown in --help. */
const SETTINGS: [flag: string, env: string, shownDefault: string | null][] = [
  ["port", "PORT", "3903"],
  ["host", "HOST", "0.0.0.0"],
  ["path", "WS_PATH", null],
  ["max-frame-bytes", "MAX_FRAME_BYTES", "65536"],
  ["max-idents", "MAX_IDENTS", "32"],
  ["max-room-peers", "MAX_ROOM_PEERS", "256"],
  ["rate", "RATE_LIMIT", "200"],
  ["burst", "RATE_BURST", "400"],
  ["rate-per-pair", "RATE_PER_PAIR", "2"],
  ["burst-per-pair", "BURST_PER_PAIR", "100"],
  ["churn-rate", "CHURN_RATE", "64"],
  ["churn-burst", "CHURN_BURST", "1024"],
  ["max-queued-frames", "MAX_QUEUED_FRAMES", "1024"],
  ["max-queued-bytes", "MAX_QUEUED_BYTES", "1048576"],
  ["session-grace", "SESSION_GRACE", "10"],
  ["session-buffer-frames", "SESSION_BUFFER_FRAMES", "256"],
  ["session-buffer-bytes", "SESSION_BUFFER_BYTES", "262144"],
  ["yjs-max-topics", "YJS_MAX_TOPICS", "64"],
  ["yjs-max-subscribers", "YJS_MAX_SUBSCRIBERS", "256"],
  ["peerjs-keys", "PEERJS_KEYS", "peerjs"],
  ["peerjs-path", "PEERJS_PATH", "/"],
  ["peerjs-expire-timeout", "PEERJS_EXPIRE_TIMEOUT", "5000"],
  ["peerjs-alive-timeout", "PEERJS_ALIVE_TIMEOUT", "90000"],
  ["peerjs-allow-discovery", "PEERJS_ALLOW_DISCOVERY", "false"],
  ["peerjs-concurrent-limit", "PEERJS_CONCURRENT_LIMIT", "5000"],
  ["peerjs-queue-per-id", "PEERJS_QUEUE_PER_ID", "64"],
  ["peerjs-queue-bytes", "PEERJS_QUEUE_BYTES", "8388608"],
  ["transport", "TRANSPORT", "own"],
  ["max-connections", "MAX_CONNECTIONS", "10000"],
  ["max-connections-per-address", "MAX_CONNECTIONS_PER_ADDRESS", "256"],
  ["trust-proxy-header", "TRUST_PROXY_HEADER", null],
  ["trusted-proxies", "TRUSTED_PROXIES", null],
  ["header-timeout", "HEADER_TIMEOUT", "5"],
  ["max-buffered-bytes", "MAX_BUFFERED_BYTES", "1048576"],
  ["idle-timeout", "IDLE_TIMEOUT", "30"],
  ["allowed-origins", "ALLOWED_ORIGINS", null],
  ["tls-cert", "TLS_CERT", null],
  ["tls-key", "TLS_KEY", null],
  ["log-level", "LOG_LEVEL", "info"],
  ["log-format", "LOG_FORMAT", "text"],
  ["stun-urls", "STUN_URLS", null],
  ["turn-urls", "TURN_URLS", null],
  ["turn-secret", "TURN_SECRET", null],
  ["turn-secret-file", "TURN_SECRET_FILE", null],
  ["turn-ttl", "TURN_TTL", "3600"],
  ["redis-url", "REDIS_URL", null],
  ["shutdown-timeout", "SHUTDOWN_TIMEOUT", "5"],
  ["jwt-secrets", "JWT_SECRETS", null],
  ["jwt-secret-file", "JWT_SECRET_FILE", null],
  ["jwt-public-keys", "JWT_PUBLIC_KEYS", null],
  ["jwks-url", "JWKS_URL", null],
  ["jwt-audience", "JWT_AUDIENCE", null],
  ["jwt-issuer", "JWT_ISSUER", null],
  ["jwt-clock-skew", "JWT_CLOCK_SKEW", "30"],
  ["auth-required", "AUTH_REQUIRED", "false"],
  ["auth-rooms", "AUTH_ROOMS", null],
  ["proof-rooms", "PROOF_ROOMS", null],
  ["metrics-token", "METRICS_TOKEN", null],
];

function noFile(path: string): string {
  throw new Error(`unexpected read of ${path}`);
}

function parse(
  args: string[],
  env: Record<string, string> = {},
  readTextFile: (path: string) => string = noFile,
): ParsedCommand {
  return parseConfig({ args, env: (n) => env[n], readTextFile });
}

function config(
  args: string[],
  env: Record<string, string> = {},
  readTextFile?: (path: string) => string,
): Config {
  const cmd = parse(args, env, readTextFile);
  assert.equal(cmd.kind, "run");
  return (cmd as { config: Config }).config;
}

/** The ConfigError message for these arguments; fails if parsing succeeds. */
function configError(
  args: string[],
  env: Record<string, string> = {},
  readTextFile?: (path: string) => string,
): string {
  try {
    parse(args, env, readTextFile);
  } catch (e) {
    assert.ok(e instanceof ConfigError, `not a ConfigError: ${e}`);
    assert.ok(!e.message.includes("\n"), "message must be one line");
    return e.message;
  }
  assert.fail(`no error for ${JSON.stringify(args)} ${JSON.stringify(env)}`);
}

Deno.test("defaults: no flags and no environment", () => {
  assert.deepEqual(config([]), {
    port: 3903,
    host: "0.0.0.0",
    path: "",
    limits: { ...DEFAULT_LIMITS },
    ywebrtc: { maxTopicsPerConnection: 64, maxSubscribersPerTopic: 256 },
    peerjs: {
      keys: ["peerjs"],
      path: "/",
      expireTimeout: 5000,
      aliveTimeout: 90_000,
      allowDiscovery: false,
      concurrentLimit: 5000,
      queuePerId: 64,
      queueBytes: 8 * 1024 * 1024,
    },
    transport: "own",
    maxConnections: 10000,
    maxConnectionsPerAddress: 256,
    trustProxyHeader: "",
    trustedProxies: [],
    headerTimeout: 5,
    maxBufferedBytes: 1024 * 1024,
    idleTimeout: 30,
    allowedOrigins: [],
    tlsCert: "",
    tlsKey: "",
    logLevel: "info",
    logFormat: "text",
    stunUrls: [],
    turnUrls: [],
    turnSecrets: [],
    turnTtl: 3600,
    redisUrl: "",
    shutdownTimeout: 5,
    auth: {
      secrets: [],
      publicKeys: [],
      jwksUrl: "",
      audience: "",
      issuer: "",
      clockSkew: 30,
      required: false,
      rooms: [],
      proofRooms: [],
    },
    metricsToken: "",
  });
});

Deno.test("every setting is read from its flag and from its variable", () => {
  const values: Record<string, [string, (c: Config) => unknown, unknown]> = {
    port: ["8080", (c) => c.port, 8080],
    host: ["127.0.0.1", (c) => c.host, "127.0.0.1"],
    path: ["/signal", (c) => c.path, "/signal"],
    "max-frame-bytes": ["1024", (c) => c.limits.maxFrameBytes, 1024],
    "max-idents": ["3", (c) => c.limits.maxIdentsPerConnection, 3],
    "max-room-peers": ["7", (c) => c.limits.maxPeersPerRoom, 7],
    rate: ["0", (c) => c.limits.rate, 0],
    burst: ["9", (c) => c.limits.burst, 9],
    "rate-per-pair": ["5", (c) => c.limits.ratePerPair, 5],
    "burst-per-pair": ["6", (c) => c.limits.burstPerPair, 6],
    "churn-rate": ["7", (c) => c.limits.churnRate, 7],
    "churn-burst": ["8", (c) => c.limits.churnBurst, 8],
    "session-grace": ["0", (c) => c.limits.sessionGrace, 0],
    "session-buffer-frames": ["9", (c) => c.limits.sessionBufferFrames, 9],
    "session-buffer-bytes": ["4096", (c) => c.limits.sessionBufferBytes, 4096],
    "jwt-secrets": [
      "0123456789abcdef0123456789abcdef,fedcba9876543210fedcba9876543210",
      (c) => c.auth.secrets.length,
      2,
    ],
    "jwks-url": [
      "https://id.example/jwks.json",
      (c) => c.auth.jwksUrl,
      "https://id.example/jwks.json",
    ],
    "jwt-audience": ["signal", (c) => c.auth.audience, "signal"],
    "jwt-issuer": ["https://id.example", (c) => c.auth.issuer, "https://id.example"],
    "jwt-clock-skew": ["5", (c) => c.auth.clockSkew, 5],
    "proof-rooms": ["keyed-*,vault", (c) => c.auth.proofRooms, ["keyed-*", "vault"]],
    "metrics-token": ["m-token", (c) => c.metricsToken, "m-token"],
    "max-queued-frames": ["10", (c) => c.limits.maxQueuedFrames, 10],
    "max-queued-bytes": ["2048", (c) => c.limits.maxQueuedBytes, 2048],
    "yjs-max-topics": ["11", (c) => c.ywebrtc.maxTopicsPerConnection, 11],
    "yjs-max-subscribers": ["12", (c) => c.ywebrtc.maxSubscribersPerTopic, 12],
    "peerjs-keys": ["app1, app.2,,", (c) => c.peerjs.keys, ["app1", "app.2"]],
    "peerjs-path": ["/myapp", (c) => c.peerjs.path, "/myapp/"],
    "peerjs-expire-timeout": ["250", (c) => c.peerjs.expireTimeout, 250],
    "peerjs-alive-timeout": ["0", (c) => c.peerjs.aliveTimeout, 0],
    "peerjs-allow-discovery": ["true", (c) => c.peerjs.allowDiscovery, true],
    "peerjs-concurrent-limit": ["7", (c) => c.peerjs.concurrentLimit, 7],
    "peerjs-queue-per-id": ["0", (c) => c.peerjs.queuePerId, 0],
    "peerjs-queue-bytes": ["1024", (c) => c.peerjs.queueBytes, 1024],
    transport: ["deno", (c) => c.transport, "deno"],
    "max-connections": ["100", (c) => c.maxConnections, 100],
    "max-connections-per-address": ["0", (c) => c.maxConnectionsPerAddress, 0],
    "header-timeout": ["9", (c) => c.headerTimeout, 9],
    "max-buffered-bytes": ["4096", (c) => c.maxBufferedBytes, 4096],
    "idle-timeout": ["0", (c) => c.idleTimeout, 0],
    "allowed-origins": [
      "https://a.example, https://b.example,,",
      (c) => c.allowedOrigins,
      ["https://a.example", "https://b.example"],
    ],
    "log-level": ["debug", (c) => c.logLevel, "debug"],
    "log-format": ["json", (c) => c.logFormat, "json"],
    "stun-urls": [
      "stun:s1.example:3478,stuns:s2.example",
      (c) => c.stunUrls,
      ["stun:s1.example:3478", "stuns:s2.example"],
    ],
    "turn-ttl": ["60", (c) => c.turnTtl, 60],
    "redis-url": ["redis://127.0.0.1:6379", (c) => c.redisUrl, "redis://127.0.0.1:6379"],
    "shutdown-timeout": ["0", (c) => c.shutdownTimeout, 0],
  };
  for (const [flag, env] of SETTINGS) {
    const v = values[flag];
    if (v === undefined) continue; // paired settings are tested on their own below
    const [text, get, want] = v;
    assert.deepEqual(get(config([`--${flag}`, text])), want, `--${flag}`);
    assert.deepEqual(get(config([`--${flag}=${text}`])), want, `--${flag}=`);
    assert.deepEqual(get(config([], { [env]: text })), want, env);
    assert.deepEqual(get(config([], { [env]: `  ${text}  ` })), want, `${env} with spaces`);
  }
});

Deno.test("a flag wins over the variable, the variable over the default", () => {
  assert.equal(config(["--port", "1111"], { PORT: "2222" }).port, 1111);
  assert.equal(config([], { PORT: "2222" }).port, 2222);
  assert.equal(config([]).port, 3903);
  assert.equal(config(["--rate", "5"], { RATE_LIMIT: "50", RATE_BURST: "6" }).limits.rate, 5);
  assert.equal(config(["--rate", "5"], { RATE_LIMIT: "50", RATE_BURST: "6" }).limits.burst, 6);
  // The variable of a setting given by flag is not even looked at.
  assert.equal(config(["--port", "1111"], { PORT: "not a port" }).port, 1111);
  assert.equal(config(["--log-level", "error"], { LOG_LEVEL: "loud" }).logLevel, "error");
  // The last of a repeated flag wins.
  assert.equal(config(["--port", "1", "--port", "2"]).port, 2);
});

Deno.test("the environment is read only through ENV_NAMES", () => {
  const asked = new Set<string>();
  parseConfig({
    args: [],
    env: (n) => {
      asked.add(n);
      return undefined;
    },
    readTextFile: noFile,
  });
  assert.deepEqual([...asked].sort(), [...ENV_NAMES].sort());
  assert.deepEqual([...ENV_NAMES].sort(), SETTINGS.map(([, env]) => env).sort());
});

Deno.test("every validation error names the setting, by flag or by variable", () => {
  const bad: [flag: string, env: string, value: string][] = [
    ["port", "PORT", "abc"],
    ["port", "PORT", "-1"],
    ["port", "PORT", "65536"],
    ["port", "PORT", "1.5"],
    ["port", "PORT", "0x10"],
    ["port", "PORT", ""],
    ["path", "WS_PATH", "signal"],
    ["path", "WS_PATH", "/a b"],
    ["path", "WS_PATH", "/a?b"],
    ["max-frame-bytes", "MAX_FRAME_BYTES", "63"],
    ["max-frame-bytes", "MAX_FRAME_BYTES", String(16 * 1024 * 1024 + 1)],
    ["max-idents", "MAX_IDENTS", "0"],
    ["max-room-peers", "MAX_ROOM_PEERS", "0"],
    ["max-room-peers", "MAX_ROOM_PEERS", "many"],
    ["rate", "RATE_LIMIT", "-5"],
    ["rate", "RATE_LIMIT", "2.5"],
    ["burst", "RATE_BURST", "0"],
    ["rate-per-pair", "RATE_PER_PAIR", "-1"],
    ["burst-per-pair", "BURST_PER_PAIR", "x"],
    ["churn-rate", "CHURN_RATE", "0"],
    ["churn-burst", "CHURN_BURST", "0"],
    ["max-queued-frames", "MAX_QUEUED_FRAMES", "0"],
    ["max-queued-bytes", "MAX_QUEUED_BYTES", "1023"],
    ["yjs-max-topics", "YJS_MAX_TOPICS", "0"],
    ["transport", "TRANSPORT", "node"],
    ["max-connections", "MAX_CONNECTIONS", "0"],
    ["session-grace", "SESSION_GRACE", "3601"],
    ["session-buffer-frames", "SESSION_BUFFER_FRAMES", "0"],
    ["session-buffer-bytes", "SESSION_BUFFER_BYTES", "10"],
    ["max-connections-per-address", "MAX_CONNECTIONS_PER_ADDRESS", "x"],
    ["jwt-clock-skew", "JWT_CLOCK_SKEW", "601"],
    ["header-timeout", "HEADER_TIMEOUT", "0"],
    ["trust-proxy-header", "TRUST_PROXY_HEADER", "x forwarded"],
    ["yjs-max-subscribers", "YJS_MAX_SUBSCRIBERS", "-3"],
    ["peerjs-keys", "PEERJS_KEYS", ","],
    ["peerjs-keys", "PEERJS_KEYS", "ok,bad key"],
    ["peerjs-keys", "PEERJS_KEYS", "a/b"],
    ["peerjs-keys", "PEERJS_KEYS", "k".repeat(129)],
    ["peerjs-path", "PEERJS_PATH", "myapp"],
    ["peerjs-path", "PEERJS_PATH", "/a b/"],
    ["peerjs-path", "PEERJS_PATH", "//"],
    ["peerjs-expire-timeout", "PEERJS_EXPIRE_TIMEOUT", "99"],
    ["peerjs-expire-timeout", "PEERJS_EXPIRE_TIMEOUT", String(3600 * 1000 + 1)],
    ["peerjs-alive-timeout", "PEERJS_ALIVE_TIMEOUT", "999"],
    ["peerjs-alive-timeout", "PEERJS_ALIVE_TIMEOUT", "5s"],
    ["peerjs-allow-discovery", "PEERJS_ALLOW_DISCOVERY", "maybe"],
    ["peerjs-concurrent-limit", "PEERJS_CONCURRENT_LIMIT", "0"],
    ["peerjs-queue-per-id", "PEERJS_QUEUE_PER_ID", "-1"],
    ["peerjs-queue-bytes", "PEERJS_QUEUE_BYTES", "x"],
    ["max-buffered-bytes", "MAX_BUFFERED_BYTES", "1023"],
    ["idle-timeout", "IDLE_TIMEOUT", "3601"],
    ["log-level", "LOG_LEVEL", "verbose"],
    ["log-level", "LOG_LEVEL", "INFO"],
    ["log-format", "LOG_FORMAT", "xml"],
    ["stun-urls", "STUN_URLS", "http://stun.example"],
    ["stun-urls", "STUN_URLS", "stun:a,turn:b,nope"],
    ["turn-urls", "TURN_URLS", "turn.example:3478"],
    ["turn-ttl", "TURN_TTL", "59"],
    ["turn-ttl", "TURN_TTL", String(7 * 24 * 3600 + 1)],
    ["redis-url", "REDIS_URL", "http://127.0.0.1:6379"],
    ["redis-url", "REDIS_URL", "127.0.0.1:6379"],
    ["shutdown-timeout", "SHUTDOWN_TIMEOUT", "301"],
  ];
  for (const [flag, env, value] of bad) {
    // `--flag=value`, so that values starting with "-" reach validation.
    const byFlag = configError([`--${flag}=${value}`]);
    assert.match(byFlag, new RegExp(`--${flag}\\b`), byFlag);
    const byEnv = configError([], { [env]: value });
    assert.ok(byEnv.includes(env), byEnv);
    assert.ok(byEnv.includes(`--${flag}`), byEnv);
    // The message shows what was wrong: the value, or the bad item of a list.
    const shown = value.split(",").at(-1)!.trim();
    if (shown !== "") assert.ok(byFlag.includes(shown), `${byFlag} shows the value`);
  }
  // "--port -1" reads as a flag missing its value: still named.
  assert.match(configError(["--port", "-1"]), /--port\b/);
  // Every numeric setting appears in the table above.
  const tested = new Set(bad.map(([f]) => f));
  for (const [flag, , def] of SETTINGS) {
    if (def !== null && /^\d+$/.test(def)) assert.ok(tested.has(flag), `${flag} untested`);
  }
});

Deno.test("boundary values are accepted", () => {
  assert.equal(config(["--port", "0"]).port, 0);
  assert.equal(config(["--port", "65535"]).port, 65535);
  assert.equal(config(["--max-frame-bytes", "64"]).limits.maxFrameBytes, 64);
  assert.equal(config(["--turn-ttl", String(7 * 24 * 3600)]).turnTtl, 7 * 24 * 3600);
  assert.equal(config(["--idle-timeout", "3600"]).idleTimeout, 3600);
  assert.equal(config(["--path", "/"]).path, "", "/ is always a WebSocket path");
  assert.equal(config(["--path", "/a/b-c_d.e~f"]).path, "/a/b-c_d.e~f");
  for (const level of LOG_LEVELS) assert.equal(config(["--log-level", level]).logLevel, level);
  assert.equal(config(["--redis-url", "rediss://h:1"]).redisUrl, "rediss://h:1");
});

Deno.test("TURN: secrets need TURN URLs; several secrets keep their order", () => {
  const msg = configError(["--turn-secret", "s3cret"]);
  assert.ok(msg.includes("TURN_URLS") && msg.includes("--turn-urls"), msg);
  const c = config(["--turn-urls", "turn:t.example:3478?transport=udp, turns:t.example:5349"], {
    TURN_SECRET: "new,old",
  });
  assert.deepEqual(c.turnUrls, ["turn:t.example:3478?transport=udp", "turns:t.example:5349"]);
  assert.deepEqual(c.turnSecrets, ["new", "old"]);
});

Deno.test("TURN: the secret file is read, one secret a line, first signs", async () => {
  const dir = await Deno.makeTempDir({ prefix: "config_test_" });
  try {
    const file = `${dir}/turn-secrets`;
    await Deno.writeTextFile(file, "  first-secret  \n\nsecond-secret\r\n\n");
    const c = config(
      ["--turn-secret-file", file, "--turn-urls", "turn:t.example"],
      {},
      Deno.readTextFileSync,
    );
    assert.deepEqual(c.turnSecrets, ["first-secret", "second-secret"]);
    // By variable too, and file secrets come before --turn-secret ones.
    const c2 = config(
      ["--turn-secret", "inline"],
      { TURN_SECRET_FILE: file, TURN_URLS: "turn:t.example" },
      Deno.readTextFileSync,
    );
    assert.deepEqual(c2.turnSecrets, ["first-secret", "second-secret", "inline"]);

    // A file holding no secret is an error naming the setting.
    const empty = `${dir}/empty`;
    await Deno.writeTextFile(empty, "\n  \n");
    const m1 = configError(
      ["--turn-secret-file", empty, "--turn-urls", "turn:t"],
      {},
      Deno.readTextFileSync,
    );
    assert.ok(m1.includes("TURN_SECRET_FILE") && m1.includes("--turn-secret-file"), m1);

    // So is a file that cannot be read; the message says which file.
    const missing = `${dir}/missing`;
    const m2 = configError(
      ["--turn-urls", "turn:t"],
      { TURN_SECRET_FILE: missing },
      Deno.readTextFileSync,
    );
    assert.ok(m2.includes("TURN_SECRET_FILE") && m2.includes(missing), m2);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("TLS: certificate and key are both set or neither", () => {
  const c = config(["--tls-cert", "/etc/cert.pem", "--tls-key", "/etc/key.pem"]);
  assert.equal(c.tlsCert, "/etc/cert.pem");
  assert.equal(c.tlsKey, "/etc/key.pem");
  const both = config([], { TLS_CERT: "c.pem", TLS_KEY: "k.pem" });
  assert.deepEqual([both.tlsCert, both.tlsKey], ["c.pem", "k.pem"]);
  for (
    const [args, env] of [
      [["--tls-cert", "c.pem"], {}],
      [["--tls-key", "k.pem"], {}],
      [[], { TLS_CERT: "c.pem" }],
      [[], { TLS_KEY: "k.pem" }],
    ] as [string[], Record<string, string>][]
  ) {
    const msg = configError(args, env);
    assert.ok(msg.includes("TLS_CERT") && msg.includes("TLS_KEY"), msg);
    assert.ok(msg.includes("--tls-cert") && msg.includes("--tls-key"), msg);
  }
});

Deno.test("--help lists every flag with its variable and default", () => {
  for (const args of [["--help"], ["-h"], ["--port", "1", "--help"]]) {
    const cmd = parse(args);
    assert.equal(cmd.kind, "help");
    assert.equal((cmd as { text: string }).text, helpText());
  }
  // Help is shown even when a setting is broken.
  assert.equal(parse(["--help"], { PORT: "nope" }).kind, "help");
  const lines = helpText().split("\n");
  for (const [flag, env, def] of SETTINGS) {
    const line = lines.find((l) => l.trimStart().startsWith(`--${flag} `));
    assert.ok(line !== undefined, `--${flag} missing from --help`);
    assert.ok(line.split(/\s+/).includes(env), `--${flag} line lacks ${env}: ${line}`);
    if (def !== null) assert.ok(line.includes(`(default ${def})`), `--${flag}: ${line}`);
  }
  // And lists nothing it cannot parse: every flag line is a known setting.
  const known = new Set([...SETTINGS.map(([f]) => f), "help", "version"]);
  for (const l of lines) {
    const m = /^\s+--([a-z-]+)\s/.exec(l);
    if (m) assert.ok(known.has(m[1]), `--help lists unknown --${m[1]}`);
  }
  assert.ok(lines.some((l) => /--version\b/.test(l)));
});

Deno.test("--version", () => {
  assert.equal(parse(["--version"]).kind, "version");
  assert.equal(parse(["-V"]).kind, "version");
});

Deno.test("unknown flags, positionals and missing values are ConfigErrors", () => {
  for (
    const args of [
      ["--nope"],
      ["--port"],
      ["--prot", "80"],
      ["serve"],
      ["-x"],
      ["--help=yes"],
    ]
  ) {
    const msg = configError(args);
    assert.ok(msg.length > 0);
  }
  assert.match(configError(["--nope"]), /nope/);
});

Deno.test("PeerJS: keys, paths, booleans, and a socket path that is not --path", () => {
  const c = config(["--peerjs-keys", "a,b", "--peerjs-path", "/x/y/"], {
    PEERJS_ALLOW_DISCOVERY: "ON",
  });
  assert.deepEqual(c.peerjs.keys, ["a", "b"]);
  assert.equal(c.peerjs.path, "/x/y/");
  assert.equal(c.peerjs.allowDiscovery, true);
  for (const [text, want] of [["1", true], ["yes", true], ["0", false], ["off", false]] as const) {
    assert.equal(config(["--peerjs-allow-discovery", text]).peerjs.allowDiscovery, want, text);
  }
  assert.equal(config(["--peerjs-path", "/"]).peerjs.path, "/");
  assert.equal(config(["--peerjs-alive-timeout", "1000"]).peerjs.aliveTimeout, 1000);
  assert.equal(config(["--peerjs-expire-timeout", "100"]).peerjs.expireTimeout, 100);
  // The PeerJS socket is <path>peerjs: it may not be DIVA's extra path.
  for (
    const args of [["--path", "/peerjs"], ["--path", "/x/peerjs", "--peerjs-path", "/x"]]
  ) {
    const msg = configError(args);
    assert.ok(msg.includes("PEERJS_PATH") && msg.includes("--peerjs-path"), msg);
    assert.ok(msg.includes("--path"), msg);
  }
  assert.equal(config(["--path", "/peerjs", "--peerjs-path", "/other/"]).path, "/peerjs");
});
