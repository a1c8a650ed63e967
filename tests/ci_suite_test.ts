/**
 * How CI runs the suite (`.ci/suite.ts`): which files get a process of
 * their own, what counts as a crash, and the merged JUnit report.
 *
 * @module
 */

import assert from "node:assert/strict";
import { crashed, mergeJunit, splitSuite } from "../.ci/suite.ts";

const ROOT = new URL("../", import.meta.url).pathname;

Deno.test("suite: files loading wrtc, directly or through any module they import, run alone", () => {
  const tree: Record<string, string> = {
    "tests/a_test.ts": 'import wrtc from "@roamhq/wrtc";',
    "tests/b_test.ts": 'import { peer } from "./helpers/peer.ts";',
    "tests/c_test.ts":
      'import { other } from "./helpers/other.ts";\n// "@roamhq/wrtc" in a comment',
    "tests/d_test.ts": 'import { gone } from "./helpers/missing.ts";',
    "tests/e_test.ts": 'import type { Args } from "./helpers/peer.ts";',
    "tests/f_test.ts": 'const m = await import("./helpers/deep.ts");',
    "tests/helpers/peer.ts": 'import { x } from "./deep.ts";\nexport type Args = string;',
    "tests/helpers/deep.ts": 'import wrtc from "@roamhq/wrtc";\nimport "./peer.ts";',
    "tests/helpers/other.ts": "export const other = 1;",
  };
  const read = (p: string) => {
    if (!(p in tree)) throw new Error(`no ${p}`);
    return tree[p];
  };
  const files = ["a", "b", "c", "d", "e", "f"].map((n) => `tests/${n}_test.ts`);
  assert.deepEqual(splitSuite(files, read), {
    native: ["tests/a_test.ts", "tests/b_test.ts", "tests/f_test.ts"],
    plain: ["tests/c_test.ts", "tests/d_test.ts", "tests/e_test.ts"],
  });
});

Deno.test("suite: the real tests/ splits into the files that load wrtc and the rest", () => {
  const files = [...Deno.readDirSync(`${ROOT}tests`)]
    .filter((e) => e.isFile && e.name.endsWith("_test.ts"))
    .map((e) => `tests/${e.name}`)
    .sort();
  const { native, plain } = splitSuite(files, (f) => Deno.readTextFileSync(`${ROOT}${f}`));
  // e2e_ywebrtc_test.ts runs its wrtc peers in child processes.
  assert.deepEqual(native, [
    "tests/e2e_simple_peer_test.ts",
    "tests/e2e_topology_test.ts",
    "tests/resume_e2e_test.ts",
  ]);
  assert.equal(native.length + plain.length, files.length);
});

Deno.test("suite: a process killed by a signal is a crash; a failing run is not", async () => {
  const segv = await new Deno.Command("sh", { args: ["-c", "kill -SEGV $$"] }).output();
  assert.equal(crashed({ code: segv.code, signal: segv.signal }), true);
  // Through a shell (as `deno task` runs it), the death shows as 128 + 11.
  const viaShell = await new Deno.Command("sh", { args: ["-c", "sh -c 'kill -SEGV $$'"] })
    .output();
  assert.equal(viaShell.code, 139);
  assert.equal(crashed({ code: viaShell.code, signal: viaShell.signal }), true);
  assert.equal(crashed({ code: 1, signal: null }), false);
  assert.equal(crashed({ code: 0, signal: null }), false);
});

Deno.test("suite: JUnit reports merge into one with every case and summed totals", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const make = async (name: string, body: string) => {
      await Deno.writeTextFile(`${dir}/${name}_test.ts`, body);
      const path = `${dir}/${name}.xml`;
      await new Deno.Command(Deno.execPath(), {
        args: ["test", "--no-check", "--no-lock", `--junit-path=${path}`, `${dir}/${name}_test.ts`],
        stdout: "null",
        stderr: "null",
      }).output();
      return Deno.readTextFile(path);
    };
    const a = await make("a", 'Deno.test("one", () => {});\nDeno.test("two", () => {});');
    const b = await make("b", 'Deno.test("three", () => { throw new Error("no"); });');
    const merged = mergeJunit([a, b, ""]);
    assert.match(merged, /^<\?xml[^>]*>\n<testsuites name="deno test" tests="3" failures="1"/);
    assert.equal([...merged.matchAll(/<testcase /g)].length, 3);
    assert.equal([...merged.matchAll(/<failure /g)].length, 1);
    assert.equal([...merged.matchAll(/<testsuites\b/g)].length, 1);
    assert.match(merged, /<\/testsuites>\n$/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
