/**
 * How `deno task coverage` runs the suite: the tests that load the native
 * WebRTC module (`@roamhq/wrtc`) each in a process of their own, the rest
 * in one, and the JUnit reports merged into one.
 *
 * Why: `wrtc.node` can crash the whole process with a segmentation fault
 * while peer connections with data channels close (a known native bug:
 * WonderInventions/node-webrtc#35, node-webrtc/node-webrtc#576; seen here
 * in the kernel log as `segfault at 0 … in wrtc.node`, once in the last
 * four full runs, during a test that closes data channels). In one shared
 * process that crash ends the run and loses every
 * result. Here it ends one file's process, which is run once more; a
 * second crash, and every test failure, fails the build as before. The log
 * says each time it happens.
 *
 * @module
 */

/** What a test process ended with. */
export interface Ending {
  /** Its exit code. */
  code: number;
  /** The signal that killed it, if one did. */
  signal: string | null;
}

/**
 * True when the process was killed (by a signal, or an exit code a shell
 * gives a killed child) rather than ending with its tests' verdict.
 */
export function crashed(e: Ending): boolean {
  return e.signal !== null || e.code >= 128;
}

/** The specifiers `source` imports as values (not `import type`), static or dynamic. */
function valueImports(source: string): string[] {
  const statics = [
    ...source.matchAll(/^\s*(import|export)(\s+type\b)?[^'"]*?from\s+["']([^"']+)["']/gm),
  ]
    .filter((m) => m[2] === undefined)
    .map((m) => m[3]);
  const bare = [...source.matchAll(/^\s*import\s+["']([^"']+)["']/gm)].map((m) => m[1]);
  const dynamic = [...source.matchAll(/\bimport\(\s*["']([^"']+)["']\s*\)/g)].map((m) => m[1]);
  return [...statics, ...bare, ...dynamic];
}

/**
 * The test files, split: `native` load `@roamhq/wrtc` into their own
 * process, themselves or through any module they import as a value (type
 * imports and child processes do not count); `plain` are the rest. `read`
 * returns a file's text by its path relative to the repository (and
 * throws for a missing one); `files` are such paths, kept in order.
 */
export function splitSuite(
  files: readonly string[],
  read: (path: string) => string,
): { native: string[]; plain: string[] } {
  // No memo: a module on a cycle would be remembered as "no" too early,
  // and a few dozen files cost nothing to walk afresh.
  const loadsWrtc = (path: string, seen: Set<string>): boolean => {
    if (seen.has(path)) return false;
    seen.add(path);
    let text: string;
    try {
      text = read(path);
    } catch {
      return false;
    }
    const dir = path.slice(0, path.lastIndexOf("/") + 1);
    return valueImports(text).some((spec) =>
      spec === "@roamhq/wrtc" || spec === "npm:@roamhq/wrtc" ||
      (spec.startsWith(".") &&
        loadsWrtc(new URL(spec, `file:///${dir}`).pathname.slice(1), seen))
    );
  };
  const native: string[] = [];
  const plain: string[] = [];
  for (const f of files) (loadsWrtc(f, new Set()) ? native : plain).push(f);
  return { native, plain };
}

/**
 * One JUnit report from several: every `<testsuite>` of each, under one
 * `<testsuites>` with the totals summed.
 */
export function mergeJunit(reports: readonly string[]): string {
  const suites: string[] = [];
  let tests = 0, failures = 0, errors = 0;
  for (const r of reports) {
    const open = r.match(/<testsuites\b[^>]*>/);
    const close = r.lastIndexOf("</testsuites>");
    if (open === null || close < 0) continue;
    const attr = (name: string) =>
      Number(open[0].match(new RegExp(`\\b${name}="(\\d+)"`))?.[1] ?? 0);
    tests += attr("tests");
    failures += attr("failures");
    errors += attr("errors");
    suites.push(r.slice(open.index! + open[0].length, close).trim());
  }
  return `<?xml version="1.0" encoding="UTF-8"?>\n` +
    `<testsuites name="deno test" tests="${tests}" failures="${failures}" errors="${errors}">\n` +
    `${suites.filter((s) => s !== "").join("\n")}\n</testsuites>\n`;
}
