/**
 * Summarises a V8 `.cpuprofile` (from `deno run --cpu-prof`, or
 * `deno task bench --profile DIR`): the functions with the most self time and
 * the most inclusive time, so hot spots show without a browser.
 *
 * ```sh
 * deno task bench --only relay --pairs 50 --targets server --profile /tmp/prof
 * deno run --allow-read bench/profile_summary.ts /tmp/prof/server/*.cpuprofile
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";

/** One node of a V8 CPU profile's call tree. */
interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}

/** The parts of a `.cpuprofile` this summary reads. */
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
}

/** Time per function, in milliseconds. */
export interface FunctionTime {
  /** `name (file:line)`. */
  name: string;
  /** Time with this function on top of the stack. */
  selfMs: number;
  /** Time with this function anywhere on the stack. */
  totalMs: number;
}

function label(n: ProfileNode): string {
  const f = n.callFrame;
  const name = f.functionName || "(anonymous)";
  if (f.url === "") return name;
  const file = f.url.replace(/^.*\/(lib|bench|ext|node_modules)\//, "$1/").replace(
    /^file:\/\//,
    "",
  );
  return `${name} (${file}:${f.lineNumber + 1})`;
}

/** Self and inclusive time of every function in `profile`, most self time first. */
export function summarise(profile: Profile): FunctionTime[] {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const hits = new Map<number, number>();
  for (const id of profile.samples) hits.set(id, (hits.get(id) ?? 0) + 1);
  const perSample = (profile.endTime - profile.startTime) / 1000 /
    Math.max(1, profile.samples.length);
  const self = new Map<string, number>();
  const total = new Map<string, number>();
  const onStack = new Map<string, number>();
  // Depth-first with an explicit stack: the tree can be deeper than the call stack allows.
  const root = profile.nodes[0];
  const subtree = new Map<number, number>();
  const order: ProfileNode[] = [];
  const stack: ProfileNode[] = [root];
  for (let guard = 0; stack.length > 0 && guard < 10_000_000; guard++) {
    const n = stack.pop()!;
    order.push(n);
    for (const c of n.children ?? []) {
      const child = byId.get(c);
      if (child !== undefined) stack.push(child);
    }
  }
  for (let i = order.length - 1; i >= 0; i--) {
    const n = order[i];
    let sum = hits.get(n.id) ?? 0;
    for (const c of n.children ?? []) sum += subtree.get(c) ?? 0;
    subtree.set(n.id, sum);
  }
  // Inclusive time counts a function once per stack, however deep it recurses.
  const walk: [ProfileNode, boolean][] = [[root, true]];
  for (let guard = 0; walk.length > 0 && guard < 20_000_000; guard++) {
    const [n, entering] = walk.pop()!;
    const name = label(n);
    if (!entering) {
      onStack.set(name, onStack.get(name)! - 1);
      continue;
    }
    self.set(name, (self.get(name) ?? 0) + (hits.get(n.id) ?? 0));
    if ((onStack.get(name) ?? 0) === 0) {
      total.set(name, (total.get(name) ?? 0) + subtree.get(n.id)!);
    }
    onStack.set(name, (onStack.get(name) ?? 0) + 1);
    walk.push([n, false]);
    for (const c of n.children ?? []) {
      const child = byId.get(c);
      if (child !== undefined) walk.push([child, true]);
    }
  }
  return [...total.keys()]
    .map((name) => ({
      name,
      selfMs: (self.get(name) ?? 0) * perSample,
      totalMs: (total.get(name) ?? 0) * perSample,
    }))
    .sort((a, b) => b.selfMs - a.selfMs);
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    options: { top: { type: "string", default: "25" } },
    allowPositionals: true,
  });
  if (positionals.length === 0) {
    console.error(
      "usage: deno run --allow-read bench/profile_summary.ts FILE.cpuprofile… [--top N]",
    );
    Deno.exit(2);
  }
  const top = Number(values.top);
  for (const file of positionals) {
    const profile = JSON.parse(Deno.readTextFileSync(file)) as Profile;
    const rows = summarise(profile);
    const wall = (profile.endTime - profile.startTime) / 1000;
    const idle = rows.find((r) => r.name === "(idle)")?.selfMs ?? 0;
    console.log(`${file}: ${wall.toFixed(0)} ms profiled, ${(wall - idle).toFixed(0)} ms busy`);
    console.log("\n  self ms   self %  total ms  function");
    for (const r of rows.slice(0, top)) {
      console.log(
        `  ${r.selfMs.toFixed(0).padStart(7)}  ${
          (100 * r.selfMs / (wall - idle)).toFixed(1).padStart(6)
        }%  ${r.totalMs.toFixed(0).padStart(8)}  ${r.name}`,
      );
    }
    console.log("\n  by inclusive time:");
    for (const r of [...rows].sort((a, b) => b.totalMs - a.totalMs).slice(0, top)) {
      console.log(`  ${r.totalMs.toFixed(0).padStart(8)} ms  ${r.name}`);
    }
  }
}
