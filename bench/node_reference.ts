/**
 * Finds a reference server's CLI in an npm package and makes it runnable
 * under Node, for the benchmark's reference targets (`reference.ts`:
 * y-webrtc's `bin/server.js`; `peer_reference.ts`: `peer`'s
 * `dist/bin/peerjs.js`).
 *
 * The CLI imports the package's dependencies. Deno's npm cache keeps each
 * package in a folder of its own (`<name>/<version>`), with no
 * `node_modules` where Node would look, so the package is laid out for Node
 * in a temporary directory:
 *
 * 1. **From Deno's cache** (no download when the project's tests ran):
 *    `deno info --json npm:<pkg>@<version>` names the cached folder of the
 *    package and of every package it depends on; each is linked under
 *    `<tmp>/node_modules/<name>` (one version per name, the nearest), and
 *    Node runs `<tmp>/node_modules/<pkg>/<bin>` with `--preserve-symlinks`
 *    (and `-main`), so imports resolve in `<tmp>/node_modules`. Only the
 *    package's own dependency tree is linked, as `npm install <pkg>` would
 *    give it (so no optional native `bufferutil` for `ws`).
 * 2. **Else with npm**: `npm install --no-save <pkg>@<version>` in the
 *    temporary directory (the npm registry is reachable), and Node runs the
 *    installed CLI.
 *
 * Either way the server is tried once before it is measured; what failed
 * is reported, and the benchmark reports the target as skipped.
 *
 * @module
 */

import { freePort } from "./target.ts";

/** Which package's CLI to run, and how to tell it listens. */
export interface NodeServerSpec {
  /** The npm package name. */
  pkg: string;
  /** Its exact version. */
  version: string;
  /** The CLI's path inside the package. */
  bin: string;
  /** Flags after the script. */
  args: string[];
  /** True when the answer to `GET /` shows the server is up. */
  answers(res: Response, text: string): boolean;
}

/** A runnable reference server. */
export interface NodeServer {
  /** The command line (`node …/<bin> …`); `PORT` chooses the port. */
  argv: string[];
  /** Where it runs. */
  cwd: string;
  /** How it was laid out: `deno-cache` or `npm-install`. */
  how: "deno-cache" | "npm-install";
  /** `node --version`. */
  node: string;
  /** The package version. */
  version: string;
  /** Removes the temporary directory. */
  cleanup(): Promise<void>;
}

/** Why the reference server cannot run here. */
export interface NodeServerUnavailable {
  /** What went wrong, for the report. */
  skipped: string;
}

async function run(
  cmd: string,
  args: string[],
  cwd?: string,
): Promise<{ ok: boolean; out: string; err: string }> {
  try {
    const o = await new Deno.Command(cmd, {
      args,
      cwd,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(180_000),
    }).output();
    const dec = new TextDecoder();
    return { ok: o.success, out: dec.decode(o.stdout), err: dec.decode(o.stderr) };
  } catch (e) {
    return { ok: false, out: "", err: (e as Error).message };
  }
}

interface NpmPackage {
  name: string;
  dependencies: string[];
  localPath?: string;
}

/** Links the package and its dependency tree from Deno's npm cache under `dir/node_modules`. */
async function fromDenoCache(spec: NodeServerSpec, dir: string): Promise<string> {
  // Run where no deno.json is, so the project's lockfile is left alone.
  const info = await run(
    Deno.execPath(),
    ["info", "--json", `npm:${spec.pkg}@${spec.version}`],
    dir,
  );
  if (!info.ok) throw new Error(`deno info failed: ${info.err.trim().split("\n")[0]}`);
  const packages = (JSON.parse(info.out) as { npmPackages: Record<string, NpmPackage> })
    .npmPackages;
  const root = Object.keys(packages).find((k) => k.startsWith(`${spec.pkg}@${spec.version}`));
  if (root === undefined) throw new Error(`deno info does not list ${spec.pkg}`);
  await Deno.mkdir(`${dir}/node_modules`, { recursive: true });
  // Breadth first, one version per name (the nearest), as a flat node_modules.
  const linked = new Set<string>();
  const queue = [root];
  while (queue.length > 0) {
    const id = queue.shift()!;
    const p = packages[id];
    if (p === undefined || linked.has(p.name)) continue;
    if (p.localPath === undefined) throw new Error(`${id} is not in Deno's npm cache`);
    linked.add(p.name);
    const at = `${dir}/node_modules/${p.name}`;
    await Deno.mkdir(at.slice(0, at.lastIndexOf("/")), { recursive: true });
    await Deno.symlink(p.localPath, at);
    queue.push(...p.dependencies);
  }
  return `${dir}/node_modules/${spec.pkg}/${spec.bin}`;
}

/** Installs the package with npm under `dir`. */
async function fromNpm(spec: NodeServerSpec, dir: string): Promise<string> {
  await Deno.remove(`${dir}/node_modules`, { recursive: true }).catch(() => {});
  const npm = await run("npm", [
    "install",
    "--no-save",
    "--no-audit",
    "--no-fund",
    "--no-package-lock",
    "--loglevel=error",
    `${spec.pkg}@${spec.version}`,
  ], dir);
  if (!npm.ok) throw new Error(`npm install failed: ${npm.err.trim().split("\n").pop()}`);
  return `${dir}/node_modules/${spec.pkg}/${spec.bin}`;
}

/**
 * Undefined when `argv` starts and its answer to `GET /` passes
 * `spec.answers` (checked with a short run); else what it said.
 */
async function listens(
  spec: NodeServerSpec,
  argv: string[],
  cwd: string,
): Promise<string | undefined> {
  const port = freePort();
  const child = new Deno.Command(argv[0], {
    args: argv.slice(1),
    cwd,
    env: { PORT: String(port) },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const err = new Response(child.stderr).text();
  let exited = false;
  const status = child.status.then((s) => (exited = true, s));
  try {
    for (let i = 0; i < 200 && !exited; i++) {
      try {
        const r = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(1000) });
        const text = await r.text();
        if (spec.answers(r, text)) return undefined;
      } catch {
        // not yet
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  } finally {
    if (!exited) child.kill("SIGKILL");
    await status;
  }
  return (await err).trim().split("\n").slice(-3).join(" ") || "it did not answer";
}

/**
 * Lays out and checks the server of `spec`; what to run, or why it cannot
 * run here (no Node, no package).
 */
export async function prepareNodeServer(
  spec: NodeServerSpec,
): Promise<NodeServer | NodeServerUnavailable> {
  // Deno runs itself for a `node` that is not on PATH: only a real Node says `v<major>.`.
  const node = await run("node", ["--version"]);
  if (!node.ok || !/^v\d+\./.test(node.out)) {
    return {
      skipped: `node is not installed here (${node.err.trim() || node.out.split("\n")[0]})`,
    };
  }
  const dir = await Deno.makeTempDir({ prefix: `bench-${spec.pkg}-` });
  const cleanup = () => Deno.remove(dir, { recursive: true }).catch(() => {});
  const problems: string[] = [];
  const ways: [NodeServer["how"], () => Promise<string>, string[]][] = [
    [
      "deno-cache",
      () => fromDenoCache(spec, dir),
      ["--preserve-symlinks", "--preserve-symlinks-main"],
    ],
    ["npm-install", () => fromNpm(spec, dir), []],
  ];
  for (const [how, layout, flags] of ways) {
    try {
      const script = await layout();
      const argv = ["node", ...flags, script, ...spec.args];
      const why = await listens(spec, argv, dir);
      if (why === undefined) {
        return { argv, cwd: dir, how, node: node.out.trim(), version: spec.version, cleanup };
      }
      problems.push(`${how}: ${why}`);
    } catch (e) {
      problems.push(`${how}: ${(e as Error).message}`);
    }
  }
  await cleanup();
  return {
    skipped: `${spec.pkg}'s ${spec.bin} does not run under Node: ${problems.join("; ")}`,
  };
}
