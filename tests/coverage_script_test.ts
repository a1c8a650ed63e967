/**
 * `deno task coverage`'s report: lcov read per module, the one line CI
 * prints, and the per-module table.
 *
 * @module
 */

import assert from "node:assert/strict";
import { moduleTable, parseLcov, summaryLine } from "../.ci/coverage.ts";

const LCOV = `SF:/repo/lib/a.ts
FN:1,f
BRF:4
BRH:3
DA:1,2
LH:9
LF:10
end_of_record
SF:/repo/lib/b/c.ts
BRF:0
BRH:0
LH:1
LF:4
end_of_record
SF:/repo/main.ts
BRF:2
BRH:0
LH:0
LF:5
end_of_record
`;

Deno.test("coverage report: lcov per module, one line for lib/, a table lowest first", () => {
  const files = parseLcov(LCOV, "/repo");
  assert.deepEqual(files.map((f) => [f.path, f.lines.hit, f.lines.found]), [
    ["lib/a.ts", 9, 10],
    ["lib/b/c.ts", 1, 4],
    ["main.ts", 0, 5],
  ]);
  assert.equal(
    summaryLine(files),
    "coverage of lib/: 71.4 % lines (10/14), 75.0 % branches (3/4), 2 modules",
  );
  assert.deepEqual(moduleTable(files).split("\n"), [
    "module       lines     branches",
    "lib/b/c.ts    25.0 %   100.0 %",
    "lib/a.ts      90.0 %    75.0 %",
  ]);
  assert.equal(
    summaryLine([]),
    "coverage of lib/: 100.0 % lines (0/0), 100.0 % branches (0/0), 0 modules",
  );
});
