/**
 * `deno task coverage`: runs the test suite once with coverage and writes
 * `coverage/index.html` (open it in any browser), `coverage/lcov.info` and
 * `coverage/summary.txt` (lines and branches per module of `lib/`).
 *
 * Server processes the tests start (cluster instances, `main.ts`) inherit
 * `DENO_COVERAGE_DIR`, so what they run counts too. The suite runs as
 * `.ci/suite.ts` says (files loading the native WebRTC module each in a
 * process of their own); `--junit-path=F` gets one merged report, and
 * other arguments are passed to one plain `deno task test`. The exit code
 * is the tests': the report is informational, and a failure to make it
 * only prints a line. The last line printed is the coverage of `lib/`, in
 * one line.
 *
 * `--report-only` makes the report from the raw data already in
 * `coverage/raw` without running the tests.
 *
 * @module
 */

import { crashed, type Ending, mergeJunit, splitSuite } from "./suite.ts";

const ROOT = new URL("../", import.meta.url).pathname.replace(/\/$/, "");
const OUT = `${ROOT}/coverage`;
const RAW = `${OUT}/raw`;

/** Line and branch counts of one source file, from lcov. */
export interface FileCoverage {
  /** The path relative to the repository. */
  path: string;
  /** Lines found and hit. */
  lines: { found: number; hit: number };
  /** Branches found and hit. */
  branches: { found: number; hit: number };
}

/** Parses lcov text into one entry per source file under `root`. */
export function parseLcov(text: string, root: string): FileCoverage[] {
  const out: FileCoverage[] = [];
  let cur: FileCoverage | undefined;
  for (const line of text.split("\n")) {
    const [key, value = ""] = line.split(/:(.*)/s, 2);
    if (key === "SF") {
      const path = value.startsWith(root + "/") ? value.slice(root.length + 1) : value;
      cur = { path, lines: { found: 0, hit: 0 }, branches: { found: 0, hit: 0 } };
    } else if (cur !== undefined && key === "LF") cur.lines.found = Number(value);
    else if (cur !== undefined && key === "LH") cur.lines.hit = Number(value);
    else if (cur !== undefined && key === "BRF") cur.branches.found = Number(value);
    else if (cur !== undefined && key === "BRH") cur.branches.hit = Number(value);
    else if (key === "end_of_record" && cur !== undefined) {
      out.push(cur);
      cur = undefined;
    }
  }
  return out;
}

function percent(hit: number, found: number): string {
  return found === 0 ? "100.0" : (100 * hit / found).toFixed(1);
}

/** The one line CI prints: line and branch coverage of `lib/`. */
export function summaryLine(files: readonly FileCoverage[]): string {
  const lib = files.filter((f) => f.path.startsWith("lib/"));
  const sum = (pick: (f: FileCoverage) => number) => lib.reduce((n, f) => n + pick(f), 0);
  const lf = sum((f) => f.lines.found), lh = sum((f) => f.lines.hit);
  const bf = sum((f) => f.branches.found), bh = sum((f) => f.branches.hit);
  return `coverage of lib/: ${percent(lh, lf)} % lines (${lh}/${lf}), ` +
    `${percent(bh, bf)} % branches (${bh}/${bf}), ${lib.length} modules`;
}

/** A table of every module of `lib/`: lines and branches, lowest line coverage first. */
export function moduleTable(files: readonly FileCoverage[]): string {
  const lib = files.filter((f) => f.path.startsWith("lib/"))
    .sort((a, b) =>
      a.lines.hit / (a.lines.found || 1) - b.lines.hit / (b.lines.found || 1) ||
      a.path.localeCompare(b.path)
    );
  const width = Math.max(6, ...lib.map((f) => f.path.length));
  const rows = lib.map((f) =>
    `${f.path.padEnd(width)}  ${percent(f.lines.hit, f.lines.found).padStart(6)} %  ` +
    `${percent(f.branches.hit, f.branches.found).padStart(6)} %`
  );
  return [`${"module".padEnd(width)}   lines     branches`, ...rows].join("\n");
}

async function run(cmd: string, args: string[], env: Record<string, string> = {}): Promise<Ending> {
  const child = new Deno.Command(cmd, { args, env, cwd: ROOT, stdin: "null" }).spawn();
  const { code, signal } = await child.status;
  return { code, signal };
}

/** A report of one failed case standing for a group whose process died twice. */
function crashReport(group: string[], e: Ending): string {
  const name = group.length === 1 ? group[0] : `${group.length} test files`;
  return `<testsuites tests="1" failures="1" errors="0"><testsuite name="${name}">` +
    `<testcase name="the test process was killed (code ${e.code}, signal ${e.signal ?? "none"})">` +
    `<failure message="killed"/></testcase></testsuite></testsuites>`;
}

/**
 * Runs the suite as `.ci/suite.ts` describes: the plain files in one
 * process, each native one in its own (once more after a crash), with
 * one merged JUnit report at `junitPath` when one is asked for. Returns
 * the exit status: 0 when every process ended with its tests passing.
 */
async function runSuite(args: string[]): Promise<number> {
  const junitArg = args.find((a) => a.startsWith("--junit-path="));
  const junitPath = junitArg?.slice("--junit-path=".length);
  const rest = args.filter((a) => a !== junitArg);
  const env = { DENO_COVERAGE_DIR: RAW };
  const deno = Deno.execPath();
  // Arguments other than a report path (a filter, some files) get one plain run.
  if (rest.length > 0) return (await run(deno, ["task", "test", ...args], env)).code;

  const files = [...Deno.readDirSync(`${ROOT}/tests`)]
    .filter((e) => e.isFile && e.name.endsWith("_test.ts"))
    .map((e) => `tests/${e.name}`)
    .sort();
  const { native, plain } = splitSuite(files, (f) => Deno.readTextFileSync(`${ROOT}/${f}`));
  const reports: string[] = [];
  const tmp = await Deno.makeTempDir({ prefix: "junit-" });
  let status = 0;
  let n = 0;
  const once = async (group: string[]): Promise<Ending> => {
    const path = `${tmp}/${n++}.xml`;
    const ending = await run(deno, ["task", "test", `--junit-path=${path}`, ...group], env);
    const report = await Deno.readTextFile(path).catch(() => "");
    if (!crashed(ending) && report !== "") reports.push(report);
    return ending;
  };
  for (const group of [plain, ...native.map((f) => [f])]) {
    let ending = await once(group);
    if (crashed(ending) && group.length === 1) {
      console.log(
        `\n== ${group[0]}: its test process was killed (code ${ending.code}, signal ` +
          `${ending.signal ?? "none"}); wrtc.node is known to crash while peer connections ` +
          `close (see .ci/suite.ts). Running the file once more.`,
      );
      ending = await once(group);
    }
    if (crashed(ending)) {
      console.log(`\n== ${group.join(" ")}: the test process was killed again; that is a failure.`);
      reports.push(crashReport(group, ending));
      status = 1;
    } else if (ending.code !== 0) status = ending.code;
  }
  if (junitPath !== undefined) await Deno.writeTextFile(junitPath, mergeJunit(reports));
  await Deno.remove(tmp, { recursive: true }).catch(() => {});
  return status;
}

async function copyTree(from: string, to: string): Promise<void> {
  await Deno.mkdir(to, { recursive: true });
  for await (const e of Deno.readDir(from)) {
    if (e.isDirectory) await copyTree(`${from}/${e.name}`, `${to}/${e.name}`);
    else if (e.isFile) await Deno.copyFile(`${from}/${e.name}`, `${to}/${e.name}`);
  }
}

/** Makes the HTML, lcov and summary from `coverage/raw`; returns the one line. */
async function report(): Promise<string> {
  const deno = Deno.execPath();
  const include = [`--include=^file://${ROOT}/(lib/|main\\.ts$)`];
  // `deno coverage --html` writes next to the raw data; the report goes to coverage/.
  await Deno.remove(`${RAW}/html`, { recursive: true }).catch(() => {});
  const quiet = { stdout: "null", stderr: "inherit" } as const;
  let out = await new Deno.Command(deno, {
    args: ["coverage", RAW, ...include, "--html"],
    ...quiet,
  })
    .output();
  if (!out.success) throw new Error("deno coverage --html failed");
  await copyTree(`${RAW}/html`, OUT);
  out = await new Deno.Command(deno, {
    args: ["coverage", RAW, ...include, "--lcov", `--output=${OUT}/lcov.info`],
    ...quiet,
  }).output();
  if (!out.success) throw new Error("deno coverage --lcov failed");
  const files = parseLcov(await Deno.readTextFile(`${OUT}/lcov.info`), ROOT);
  const line = summaryLine(files);
  await Deno.writeTextFile(`${OUT}/summary.txt`, `${moduleTable(files)}\n\n${line}\n`);
  return line;
}

async function main(args: string[]): Promise<number> {
  let status = 0;
  if (args[0] !== "--report-only") {
    await Deno.remove(OUT, { recursive: true }).catch(() => {});
    await Deno.mkdir(RAW, { recursive: true });
    status = await runSuite(args);
  }
  try {
    const line = await report();
    console.log(`coverage report: ${OUT}/index.html, per module: ${OUT}/summary.txt`);
    console.log(line);
  } catch (e) {
    console.log(`coverage of lib/: unavailable (${(e as Error).message})`);
  }
  return status;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
