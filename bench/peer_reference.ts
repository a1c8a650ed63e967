/**
 * Finds the PeerJS reference server, `peer` 1.0.2 (its CLI,
 * `dist/bin/peerjs.js`), and makes it runnable under Node, for the
 * benchmark's `peerjs-reference` target; as `reference.ts` does for
 * y-webrtc's server.
 *
 * The CLI imports `express`, `ws`, `yargs`, `cors`, … (the package's
 * dependencies). Deno's npm cache keeps each package in a folder of its own
 * (`<name>/<version>`), with no `node_modules` where Node would look, so the
 * package is laid out for Node in a temporary directory:
 *
 * 1. **From Deno's cache** (no download when the cache has it):
 *    `deno info --json npm:peer@1.0.2` names the cached folder of `peer`
 *    and of every package it depends on; each is linked under
 *    `<tmp>/node_modules/<name>` (one version per name, the nearest), and
 *    Node runs `<tmp>/node_modules/peer/dist/bin/peerjs.js` with
 *    `--preserve-symlinks` (and `-main`), so imports resolve in
 *    `<tmp>/node_modules`.
 * 2. **Else with npm**: `npm install --no-save peer@1.0.2` in the temporary
 *    directory, and Node runs the installed CLI.
 *
 * It runs as `peerjs --key peerjs --path / --host 127.0.0.1` with `PORT` in
 * its environment (the CLI's default port), so clients connect to
 * `/peerjs`, as to the project. Either way it is tried once before it is
 * measured; what failed is reported, and the benchmark reports the target
 * as skipped.
 *
 * @module
 */

/** The `peer` version that is the PeerJS reference. */
export const PEER_VERSION = "1.0.2";

/** A runnable PeerJS reference server. */
export interface PeerReference {
  /** The command line (`node …/peerjs.js --key peerjs …`); `PORT` chooses the port. */
  argv: string[];
  /** Where it runs. */
  cwd: string;
  /** How it was laid out: `deno-cache` or `npm-install`. */
  how: "deno-cache" | "npm-install";
  /** `node --version`. */
  node: string;
  /** The `peer` version. */
  version: string;
  /** Removes the temporary directory. */
  cleanup(): Promise<void>;
}

/** Why the reference server cannot run here. */
export interface PeerReferenceUnavailable {
  /** What went wrong, for the report. */
  skipped: string;
}

/** The CLI's flags: the key and path PeerJS clients use by default, loopback only. */
const FLAGS = ["--key", "peerjs", "--path", "/", "--host", "127.0.0.1"];

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

/** Links `peer` and its dependency tree from Deno's npm cache under `dir/node_modules`. */
async function fromDenoCache(dir: string): Promise<string> {
  // Run where no deno.json is, so the project's lockfile is left alone.
  const info = await run(Deno.execPath(), ["info", "--json", `npm:peer@${PEER_VERSION}`], dir);
  if (!info.ok) throw new Error(`deno info failed: ${info.err.trim().split("\n")[0]}`);
  const packages = (JSON.parse(info.out) as { npmPackages: Record<string, NpmPackage> })
    .npmPackages;
  const root = Object.keys(packages).find((k) => k.startsWith(`peer@${PEER_VERSION}`));
  if (root === undefined) throw new Error("deno info does not list peer");
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
  return `${dir}/node_modules/peer/dist/bin/peerjs.js`;
}

/** Installs `peer` with npm under `dir`. */
async function fromNpm(dir: string): Promise<string> {
  await Deno.remove(`${dir}/node_modules`, { recursive: true }).catch(() => {});
  const npm = await run("npm", [
    "install",
    "--no-save",
    "--no-audit",
    "--no-fund",
    "--no-package-lock",
    "--loglevel=error",
    `peer@${PEER_VERSION}`,
  ], dir);
  if (!npm.ok) throw new Error(`npm install failed: ${npm.err.trim().split("\n").pop()}`);
  return `${dir}/node_modules/peer/dist/bin/peerjs.js`;
}

/**
 * Undefined when `argv` starts and answers `GET /` with the server's
 * description (checked with a short run); else what it said.
 */
async function listens(argv: string[], cwd: string): Promise<string | undefined> {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
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
        if (r.ok && text.includes("PeerJS Server")) return undefined;
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
 * Lays out and checks the PeerJS reference server; what to run, or why it
 * cannot run here (no Node, no package).
 */
export async function preparePeerReference(): Promise<PeerReference | PeerReferenceUnavailable> {
  // Deno runs itself for a `node` that is not on PATH: only a real Node says `v<major>.`.
  const node = await run("node", ["--version"]);
  if (!node.ok || !/^v\d+\./.test(node.out)) {
    return {
      skipped: `node is not installed here (${node.err.trim() || node.out.split("\n")[0]})`,
    };
  }
  const dir = await Deno.makeTempDir({ prefix: "bench-peer-" });
  const cleanup = () => Deno.remove(dir, { recursive: true }).catch(() => {});
  const problems: string[] = [];
  const ways: [PeerReference["how"], () => Promise<string>, string[]][] = [
    ["deno-cache", () => fromDenoCache(dir), ["--preserve-symlinks", "--preserve-symlinks-main"]],
    ["npm-install", () => fromNpm(dir), []],
  ];
  for (const [how, layout, flags] of ways) {
    try {
      const script = await layout();
      const argv = ["node", ...flags, script, ...FLAGS];
      const why = await listens(argv, dir);
      if (why === undefined) {
        return { argv, cwd: dir, how, node: node.out.trim(), version: PEER_VERSION, cleanup };
      }
      problems.push(`${how}: ${why}`);
    } catch (e) {
      problems.push(`${how}: ${(e as Error).message}`);
    }
  }
  await cleanup();
  return { skipped: `peer's dist/bin/peerjs.js does not run under Node: ${problems.join("; ")}` };
}
