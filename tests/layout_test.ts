/**
 * The layout keeps the design honest: the pure cores import no Deno API and
 * no Redis client, and no module imports upward, from a layer that builds
 * on it. The layers, lowest first:
 *
 * 1. shared building blocks: `lib/shaping.ts`, `lib/auth/`, `lib/ice/`,
 *    `lib/transport/engine.ts`, `lib/transport/utf8.ts`, `lib/log.ts`;
 * 2. protocol engines: `lib/diva/`, `lib/ywebrtc/`, `lib/peerjs/`;
 * 3. the cluster and the transports: `lib/cluster/`, `lib/transport/`;
 * 4. HTTP: `lib/http/`;
 * 5. composition: `lib/config.ts`, `lib/engines.ts`, `lib/server.ts`.
 *
 * Only `lib/config.ts` reads defaults from an engine (it is the one place
 * settings live); that is a downward import, like every other allowed one.
 */

import assert from "node:assert/strict";
import { dirname, join, relative } from "node:path";

const ROOT = new URL("../", import.meta.url).pathname;
const LIB = join(ROOT, "lib");

/** Every TypeScript module under lib/, relative to the repository. */
function modules(dir = LIB): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) out.push(...modules(p));
    else if (e.name.endsWith(".ts") && !e.name.endsWith(".d.ts")) out.push(relative(ROOT, p));
  }
  return out.sort();
}

/** The relative modules `file` imports (static and dynamic), resolved. */
function imports(file: string): string[] {
  const text = Deno.readTextFileSync(join(ROOT, file));
  const specs = [
    ...text.matchAll(/^\s*(?:import|export)[^'"]*from\s+["']([^"']+)["']/gm),
    // A bare import, for its side effects: `import "./x.ts";`.
    ...text.matchAll(/^\s*import\s*["']([^"']+)["']/gm),
    ...text.matchAll(/import\(\s*["']([^"']+)["']\s*\)/g),
  ].map((m) => m[1]);
  return specs.filter((s) => s.startsWith(".")).map((s) =>
    relative(ROOT, join(dirname(join(ROOT, file)), s))
  );
}

/** The layer of a module (see the module doc). */
function layer(file: string): number {
  if (/^lib\/(shaping|log)\.ts$/.test(file)) return 1;
  if (/^lib\/(auth|ice)\//.test(file)) return 1;
  if (/^lib\/transport\/(engine|utf8)\.ts$/.test(file)) return 1;
  if (/^lib\/(diva|ywebrtc|peerjs)\//.test(file)) return 2;
  if (/^lib\/(cluster|transport)\//.test(file)) return 3;
  if (/^lib\/http\//.test(file)) return 4;
  if (/^lib\/client\//.test(file)) return 1;
  return 5;
}

Deno.test("layout: no module in lib/ imports from a layer above it", () => {
  const bad: string[] = [];
  for (const m of modules()) {
    for (const dep of imports(m)) {
      if (!dep.startsWith("lib/")) continue;
      // Type-only knowledge of config's settings types is still an upward
      // dependency, so none is allowed but config reading engine defaults.
      if (layer(dep) > layer(m)) {
        bad.push(`${m} (layer ${layer(m)}) imports ${dep} (${layer(dep)})`);
      }
    }
  }
  assert.deepEqual(bad, []);
});

Deno.test("layout: the pure cores use no Deno API, no timers and no Redis client", () => {
  const pure = [
    "lib/diva/broker.ts",
    "lib/diva/codec.ts",
    "lib/diva/names.ts",
    "lib/ywebrtc/engine.ts",
    "lib/ywebrtc/codec.ts",
    "lib/peerjs/engine.ts",
    "lib/peerjs/codec.ts",
    "lib/cluster/sequencer.ts",
    "lib/shaping.ts",
  ];
  for (const f of pure) {
    const code = Deno.readTextFileSync(join(ROOT, f))
      // Comments may talk about them.
      .replace(/\/\*[\s\S]*?\*\//g, "").replace(/\/\/.*$/gm, "");
    assert.doesNotMatch(code, /\bDeno\./, `${f} uses a Deno API`);
    assert.doesNotMatch(code, /ioredis/, `${f} loads the Redis client`);
    assert.doesNotMatch(code, /\bset(Timeout|Interval)\(/, `${f} sets a timer`);
    assert.doesNotMatch(code, /\bDate\.now\(|performance\.now\(/, `${f} reads the clock`);
  }
});

Deno.test("layout: ioredis is loaded only by the cluster's adapters", () => {
  // Static (`from "ioredis"`), bare (`import "ioredis"`) and dynamic imports.
  const users = modules().filter((m) =>
    /(?:\bfrom\s*|^\s*import\s*|\bimport\(\s*)["']ioredis["']/m.test(
      Deno.readTextFileSync(join(ROOT, m)),
    )
  );
  // An empty list would pass the loop below: the adapters do load it.
  assert.ok(users.length > 0, "no module imports ioredis: the pattern is stale");
  for (const u of users) assert.match(u, /^lib\/cluster\/redis/, `${u} imports ioredis`);
  // And main.ts reaches them only through a dynamic import, in cluster mode.
  const main = Deno.readTextFileSync(join(ROOT, "main.ts"));
  assert.doesNotMatch(main, /^import[^\n]*lib\/cluster\//m);
});

Deno.test("layout: deno task start, deno task compile and the Dockerfile run the same V8 flags", () => {
  const tasks = JSON.parse(Deno.readTextFileSync(join(ROOT, "deno.json"))).tasks;
  const v8 = (cmd: string) => cmd.split(/[\s",[\]]+/).filter((f) => f.startsWith("--v8-flags="));
  const start = v8(tasks.start);
  assert.deepEqual(start, ["--v8-flags=--max-semi-space-size=16"]);
  assert.deepEqual(v8(tasks.compile), start, "deno task compile");
  const cmd = Deno.readTextFileSync(join(ROOT, "Dockerfile")).split("\n")
    .find((l) => l.startsWith("CMD "))!;
  assert.deepEqual(v8(cmd), start, "the Dockerfile's CMD");
});
