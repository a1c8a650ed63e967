/**
 * The Grafana dashboard, the alerting rules and the status page's charts
 * against what the server really exports: every metric name they use, every
 * label value they match on and every label they group by is checked
 * against a live `/metrics` from real server processes, alone and in
 * cluster mode (with a real redis-server), so none can drift from the code.
 * `promtool` (Debian's prometheus package) checks the rules, the example
 * Prometheus configuration and every dashboard query, and unit-tests that
 * the alerts fire when they should and stay quiet otherwise.
 *
 * @module
 */

import assert from "node:assert/strict";
import { parse as parseYaml } from "yaml";
import { type ChartSpec, Readings, statusCharts } from "../lib/http/history.ts";
import type { MetricFamily, MetricType, Sample } from "../lib/transport/engine.ts";
import { readPromql, type Selector, substituteGrafana } from "./helpers/promql.ts";
import { startRedis } from "./helpers/redis.ts";
import { startServerProcess } from "./helpers/server_process.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const ALERTS = `${ROOT}deploy/alerts.yml`;
const DASHBOARD = `${ROOT}deploy/grafana-dashboard.json`;
const PROMETHEUS = `${ROOT}deploy/prometheus.yml`;

/** Series Prometheus makes itself for every target, not read from /metrics. */
const SCRAPE_SERIES = new Set(["up", "scrape_duration_seconds", "scrape_samples_scraped"]);
/** Labels Prometheus adds to every series of a target. */
const TARGET_LABELS = new Set(["job", "instance"]);
/** The values the dashboard's variables take in the checks. */
const GRAFANA_VARS = { job: "signal-server", instance: ".*", datasource: "prometheus" };
/** Functions that need a counter. */
const COUNTER_FUNCTIONS = new Set(["rate", "irate", "increase", "resets"]);

function has(command: string): boolean {
  try {
    new Deno.Command(command, { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync();
    return true;
  } catch {
    return false;
  }
}

const CI = (Deno.env.get("CI") ?? "") !== "";
const REDIS = has("redis-server");
const PROMTOOL = has("promtool");
if (CI && !REDIS) throw new Error("redis-server is not installed, and CI must run cluster tests");
if (CI && !PROMTOOL) {
  throw new Error("promtool is not installed (apt-get install prometheus), and CI must run it");
}
if (!PROMTOOL) console.warn("promtool missing: the rules get a schema check only");

// ---------------------------------------------------------------------------
// The files

/** One Prometheus rule, as alerts.yml holds it. */
interface Rule {
  alert?: string;
  record?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

/** alerts.yml, parsed and checked against the rule file schema. */
function readRules(): { name: string; rules: Rule[] }[] {
  const doc = parseYaml(Deno.readTextFileSync(ALERTS)) as { groups?: unknown };
  assert.ok(Array.isArray(doc.groups) && doc.groups.length > 0, "groups: a non-empty list");
  const groupNames = new Set<string>();
  for (const g of doc.groups as Record<string, unknown>[]) {
    assert.equal(typeof g.name, "string", "every group has a name");
    assert.ok(!groupNames.has(g.name as string), `group ${g.name} is unique`);
    groupNames.add(g.name as string);
    for (const k of Object.keys(g)) {
      assert.ok(["name", "interval", "rules", "limit"].includes(k), `group key ${k}`);
    }
    assert.ok(Array.isArray(g.rules) && g.rules.length > 0, `${g.name}: rules`);
    for (const r of g.rules as Record<string, unknown>[]) {
      const what = String(r.alert ?? r.record);
      assert.ok((typeof r.alert === "string") !== (typeof r.record === "string"), what);
      assert.equal(typeof r.expr, "string", `${what}: expr`);
      for (const k of Object.keys(r)) {
        const allowed = r.alert !== undefined
          ? ["alert", "expr", "for", "keep_firing_for", "labels", "annotations"]
          : ["record", "expr", "labels"];
        assert.ok(allowed.includes(k), `${what}: key ${k}`);
      }
      if (r.record !== undefined) {
        assert.match(r.record as string, /^[a-zA-Z_:][a-zA-Z0-9_:]*$/, `${what}: record name`);
      } else {
        assert.match(r.alert as string, /^[A-Z][A-Za-z0-9]*$/, `${what}: alert name`);
        if (r.for !== undefined) assert.match(r.for as string, /^(\d+(ms|[smhdwy]))+$/, what);
        const labels = r.labels as Record<string, unknown> | undefined;
        assert.ok(
          ["critical", "warning"].includes(labels?.severity as string),
          `${what}: severity`,
        );
        const ann = r.annotations as Record<string, unknown> | undefined;
        assert.equal(typeof ann?.summary, "string", `${what}: summary`);
        assert.equal(typeof ann?.description, "string", `${what}: description`);
      }
    }
  }
  return doc.groups as { name: string; rules: Rule[] }[];
}

interface Panel {
  id: number;
  type: string;
  title: string;
  gridPos: { x: number; y: number; w: number; h: number };
  datasource?: { type: string; uid: string };
  targets?: { refId: string; expr: string; legendFormat?: string }[];
  panels?: Panel[];
}

/** The dashboard, checked for shape; with every query and the legend it draws. */
function readDashboard(): {
  queries: { where: string; expr: string; legend: string }[];
  templating: { where: string; expr: string; label: string }[];
} {
  const d = JSON.parse(Deno.readTextFileSync(DASHBOARD));
  assert.equal(typeof d.title, "string");
  assert.equal(typeof d.uid, "string");
  assert.ok(Number.isInteger(d.schemaVersion));
  const queries: { where: string; expr: string; legend: string }[] = [];
  const ids = new Set<number>();
  const walk = (panels: Panel[]) => {
    for (const p of panels) {
      assert.ok(Number.isInteger(p.id) && !ids.has(p.id), `panel id ${p.id} is unique`);
      ids.add(p.id);
      assert.ok(["row", "timeseries", "stat"].includes(p.type), `${p.title}: type ${p.type}`);
      const g = p.gridPos;
      assert.ok(g.x >= 0 && g.w > 0 && g.x + g.w <= 24 && g.h > 0, `${p.title}: gridPos`);
      if (p.type === "row") {
        walk(p.panels ?? []);
        continue;
      }
      assert.deepEqual(p.datasource, { type: "prometheus", uid: "${datasource}" }, p.title);
      assert.ok((p.targets ?? []).length > 0, `${p.title}: targets`);
      const refs = new Set<string>();
      for (const t of p.targets!) {
        assert.ok(!refs.has(t.refId), `${p.title}: refId ${t.refId} is unique`);
        refs.add(t.refId);
        queries.push({
          where: `${p.title}/${t.refId}`,
          expr: t.expr,
          legend: t.legendFormat ?? "",
        });
      }
    }
  };
  walk(d.panels);
  const templating: { where: string; expr: string; label: string }[] = [];
  for (const v of d.templating.list) {
    if (v.type !== "query") continue;
    const m = String(v.query.query).match(/^label_values\((.+),\s*(\w+)\)$/);
    assert.ok(m, `variable ${v.name}: label_values(selector, label)`);
    templating.push({ where: `variable ${v.name}`, expr: m[1], label: m[2] });
  }
  return { queries, templating };
}

// ---------------------------------------------------------------------------
// The live metrics

/** Families read back from the text /metrics serves. */
function parseExposition(text: string): MetricFamily[] {
  const families = new Map<string, { name: string; type: MetricType; samples: Sample[] }>();
  for (const line of text.split("\n")) {
    const type = line.match(/^# TYPE (\S+) (counter|gauge)$/);
    if (type !== null) {
      families.set(type[1], { name: type[1], type: type[2] as MetricType, samples: [] });
      continue;
    }
    if (line === "" || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/);
    assert.ok(m, `a sample line: ${line}`);
    const f = families.get(m[1]);
    assert.ok(f, `${m[1]} has a TYPE line before its samples`);
    const labels = m[2] === undefined
      ? null
      : Object.fromEntries([...m[2].matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1], l[2]]));
    f.samples.push([labels, Number(m[3])]);
  }
  return [...families.values()].map((f) => ({ ...f, help: "" }));
}

async function liveMetrics(args: string[]): Promise<MetricFamily[]> {
  const server = await startServerProcess(args);
  try {
    const res = await fetch(`http://127.0.0.1:${server.port}/metrics`);
    assert.equal(res.status, 200);
    return parseExposition(await res.text());
  } finally {
    await server.stop();
  }
}

/** The metrics of one instance alone, and of one in cluster mode. */
async function bothModes(): Promise<{ alone: MetricFamily[]; cluster: MetricFamily[] }> {
  const alone = await liveMetrics([]);
  const redis = await startRedis();
  try {
    return { alone, cluster: await liveMetrics(["--redis-url", redis.url]) };
  } finally {
    await redis.stop();
  }
}

// ---------------------------------------------------------------------------
// The checks

/** What is wrong with one selector against the live families (empty when nothing). */
function checkSelector(
  s: Selector,
  live: ReadonlyMap<string, MetricFamily>,
  recorded: ReadonlySet<string>,
): string[] {
  if (recorded.has(s.name)) return [];
  if (SCRAPE_SERIES.has(s.name)) {
    return s.matchers.filter((m) => !TARGET_LABELS.has(m.label))
      .map((m) => `${s.name} has no label ${m.label}`);
  }
  const f = live.get(s.name);
  if (f === undefined) return [`${s.name} is not exported`];
  const problems: string[] = [];
  for (const m of s.matchers) {
    if (TARGET_LABELS.has(m.label) || m.op.startsWith("!")) continue;
    const values = f.samples.map(([l]) => l?.[m.label]).filter((v) => v !== undefined);
    const ok = m.op === "="
      ? values.includes(m.value)
      : values.some((v) => new RegExp(`^(?:${m.value})$`).test(v!));
    if (!ok) problems.push(`${s.name} has no series with ${m.label}${m.op}"${m.value}"`);
  }
  if (s.fn !== undefined && COUNTER_FUNCTIONS.has(s.fn) && f.type !== "counter") {
    problems.push(`${s.fn}() of ${s.name}, a ${f.type}`);
  }
  if (f.type === "counter" && (s.fn === undefined || !COUNTER_FUNCTIONS.has(s.fn))) {
    problems.push(`counter ${s.name} used without rate() or increase()`);
  }
  return problems;
}

/** Every label any of these families has, with the labels Prometheus adds. */
function labelsOf(names: readonly string[], live: ReadonlyMap<string, MetricFamily>): Set<string> {
  const out = new Set(TARGET_LABELS);
  for (const n of names) {
    for (const [l] of live.get(n)?.samples ?? []) for (const k of Object.keys(l ?? {})) out.add(k);
  }
  return out;
}

/** What is wrong with one expression (and its legend) against the live families. */
function checkExpr(
  expr: string,
  legend: string,
  live: ReadonlyMap<string, MetricFamily>,
  recorded: ReadonlySet<string>,
): string[] {
  const r = readPromql(expr);
  if (r.selectors.length === 0) return ["selects no metric"];
  const problems = r.selectors.flatMap((s) => checkSelector(s, live, recorded));
  const labels = labelsOf(r.selectors.map((s) => s.name), live);
  for (const l of r.groupingLabels) {
    if (!labels.has(l)) problems.push(`groups by ${l}, a label none of its metrics has`);
  }
  for (const [, l] of legend.matchAll(/\{\{\s*(\w+)\s*\}\}/g)) {
    if (!labels.has(l)) problems.push(`legend shows {{${l}}}, a label none of its metrics has`);
  }
  return problems;
}

function byName(families: readonly MetricFamily[]): Map<string, MetricFamily> {
  return new Map(families.map((f) => [f.name, f]));
}

/** A {@link Readings} that notes every family a chart line asks for. */
class RecordingReadings extends Readings {
  readonly asked = new Set<string>();
  readonly suffixes = new Set<string>();
  override total(name: string): number {
    this.asked.add(name);
    return super.total(name);
  }
  override where(name: string, label: string, keep: (value: string) => boolean): number {
    this.asked.add(name);
    return super.where(name, label, keep);
  }
  override withSuffix(suffix: string): string[] {
    this.suffixes.add(suffix);
    return super.withSuffix(suffix);
  }
}

Deno.test({
  name: "monitoring: dashboard, alerts and status charts use only what /metrics exports",
  ignore: !REDIS,
  async fn() {
    const groups = readRules();
    const rules = groups.flatMap((g) => g.rules);
    const recorded = new Set(rules.flatMap((r) => r.record ?? []));
    const dashboard = readDashboard();
    const { alone, cluster } = await bothModes();
    const liveAlone = byName(alone);
    const liveCluster = byName(cluster);

    // Cluster mode adds the Redis link's state, and takes nothing away.
    const added = [...liveCluster.keys()].filter((n) => !liveAlone.has(n));
    assert.ok(added.includes("signal_cluster_ready"), `cluster mode adds ${added}`);
    assert.deepEqual([...liveAlone.keys()].filter((n) => !liveCluster.has(n)), []);
    // The gauge the "near the cap" alert divides by.
    assert.ok(liveAlone.has("signal_connection_cap"));

    const problems: string[] = [];
    const used = new Set<string>();
    const check = (where: string, expr: string, legend = "") => {
      for (const s of readPromql(expr).selectors) used.add(s.name);
      for (const p of checkExpr(expr, legend, liveCluster, recorded)) {
        problems.push(`${where}: ${p}`);
      }
    };
    for (const r of rules) check(`alerts.yml ${r.alert ?? r.record}`, r.expr);
    for (const q of dashboard.queries) {
      check(`dashboard ${q.where}`, substituteGrafana(q.expr, GRAFANA_VARS), q.legend);
    }
    for (const t of dashboard.templating) {
      check(`dashboard ${t.where}`, substituteGrafana(t.expr, GRAFANA_VARS), `{{${t.label}}}`);
    }
    assert.deepEqual(problems, []);

    // Both files cover what operators look at.
    const dashboardNames = new Set(
      dashboard.queries.flatMap((q) =>
        readPromql(substituteGrafana(q.expr, GRAFANA_VARS)).selectors.map((s) => s.name)
      ),
    );
    for (
      const n of [
        "signal_connections",
        "ywebrtc_connections",
        "signal_connection_cap",
        "signal_rooms",
        "ywebrtc_topics",
        "signal_frames_out_total",
        "signal_errors_total",
        "ywebrtc_errors_total",
        "signal_frames_delayed_total",
        "signal_queue_closed_total",
        "signal_cluster_ready",
        "up",
        "process_resident_memory_bytes",
        "process_heap_used_bytes",
      ]
    ) assert.ok(dashboardNames.has(n), `the dashboard shows ${n}`);
    const alerts = new Set(rules.flatMap((r) => r.alert ?? []));
    for (
      const a of [
        "SignalServerDown",
        "SignalRedisUnreachable",
        "SignalConnectionsNearCap",
        "SignalErrorRateHigh",
        "SignalRefusalRateHigh",
        "SignalMemoryGrowing",
      ]
    ) assert.ok(alerts.has(a), `alerts.yml has ${a}`);
    // Each engine's metrics appear somewhere, so a new engine's go unnoticed by neither file.
    for (const prefix of ["signal_", "ywebrtc_", "process_"]) {
      assert.ok([...used].some((n) => n.startsWith(prefix)), `something uses ${prefix}*`);
    }

    // The status page's charts read existing families too (cluster ones in cluster mode).
    const asked = (charts: ChartSpec[], families: MetricFamily[]) => {
      const r = new RecordingReadings(families);
      for (const c of charts) for (const l of c.lines) l.read(r);
      return r;
    };
    for (
      const [charts, live] of [
        [statusCharts(), liveAlone],
        [statusCharts({ instances: () => 1 }), liveCluster],
      ] as const
    ) {
      const r = asked(charts, [...live.values()]);
      for (const name of r.asked) assert.ok(live.has(name), `the status page reads ${name}`);
      for (const suffix of r.suffixes) {
        const hits = [...live.keys()].filter((n) => n.endsWith(suffix));
        assert.ok(hits.length >= 2, `the status page sums *${suffix}: ${hits}`);
      }
    }
  },
});

Deno.test("monitoring: the checker itself catches each kind of drift", () => {
  const live = byName([
    { name: "a_total", type: "counter", help: "", samples: [[{ code: "x" }, 1]] },
    { name: "g", type: "gauge", help: "", samples: [[null, 1]] },
  ]);
  const none = new Set<string>();
  const problems = (expr: string, legend = "") => checkExpr(expr, legend, live, none);
  assert.deepEqual(problems('sum by (code) (rate(a_total{code="x", job="j"}[5m])) + g'), []);
  assert.deepEqual(problems("up == 0 and g"), []);
  assert.deepEqual(problems("rate(b_total[5m])"), ["b_total is not exported"]);
  assert.deepEqual(problems('rate(a_total{code="y"}[5m])'), [
    'a_total has no series with code="y"',
  ]);
  assert.deepEqual(problems('rate(a_total{code=~"x|z"}[5m])'), []);
  assert.deepEqual(problems('rate(a_total{code=~"z.*"}[5m])'), [
    'a_total has no series with code=~"z.*"',
  ]);
  assert.deepEqual(problems("rate(g[5m])"), ["rate() of g, a gauge"]);
  assert.deepEqual(problems("sum(a_total)"), ["counter a_total used without rate() or increase()"]);
  assert.deepEqual(problems("sum by (kind) (g)"), [
    "groups by kind, a label none of its metrics has",
  ]);
  assert.deepEqual(problems("g", "{{ code }}"), [
    "legend shows {{code}}, a label none of its metrics has",
  ]);
  assert.deepEqual(checkExpr("x:recorded > 1", "", live, new Set(["x:recorded"])), []);
  assert.deepEqual(problems("vector(1)"), ["selects no metric"]);
});

Deno.test({
  name: "monitoring: promtool checks the rules, the Prometheus config and every dashboard query",
  ignore: !PROMTOOL,
  async fn() {
    const run = async (...args: string[]) => {
      const out = await new Deno.Command("promtool", { args, stdout: "piped", stderr: "piped" })
        .output();
      const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 0, `promtool ${args.join(" ")}:\n${text}`);
      return text;
    };
    assert.match(await run("check", "rules", ALERTS), /SUCCESS: 12 rules found/);
    assert.match(await run("check", "config", PROMETHEUS), /SUCCESS/);

    // Every dashboard query, as a recording rule, so promtool parses it.
    const dir = await Deno.makeTempDir({ prefix: "dashboard-rules-" });
    try {
      const { queries } = readDashboard();
      const file = `${dir}/dashboard.yml`;
      await Deno.writeTextFile(
        file,
        JSON.stringify({
          groups: [{
            name: "dashboard",
            rules: queries.map((q, i) => ({
              record: `dashboard:query_${i}`,
              expr: substituteGrafana(q.expr, GRAFANA_VARS),
            })),
          }],
        }),
      );
      assert.match(await run("check", "rules", file), new RegExp(`${queries.length} rules found`));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** The alerts' labels for one instance. */
function fired(alert: string, severity: string, labels: Record<string, string> = {}) {
  return { exp_labels: { alertname: alert, severity, ...labels } };
}

Deno.test({
  name: "monitoring: promtool unit tests: each alert fires when it should, and only then",
  ignore: !PROMTOOL,
  async fn() {
    // The rules without their annotations (promtool compares annotations
    // verbatim; `check rules` above parses their templates).
    const groups = readRules().map((g) => ({
      ...g,
      rules: g.rules.map(({ annotations: _, ...r }) => r),
    }));
    const a = { job: "signal-server", instance: "a:3903" };
    const b = { job: "signal-server", instance: "b:3903" };
    const series = (name: string, labels: Record<string, string>, values: string) => ({
      series: `${name}{${Object.entries(labels).map(([k, v]) => `${k}="${v}"`).join(",")}}`,
      values,
    });
    const DAY = 1440; // minutes
    const tests = [
      {
        interval: "1m",
        input_series: [
          series("up", a, "1 1 0 0 0 0 0 0"),
          series("up", b, "1 1 1 1 0 0 0 0"),
        ],
        alert_rule_test: [
          { eval_time: "2m", alertname: "SignalServerDown", exp_alerts: [] },
          {
            eval_time: "3m",
            alertname: "SignalServerDown",
            exp_alerts: [fired("SignalServerDown", "critical", a)],
          },
          { eval_time: "3m", alertname: "SignalServerNoneUp", exp_alerts: [] },
          {
            eval_time: "7m",
            alertname: "SignalServerNoneUp",
            exp_alerts: [fired("SignalServerNoneUp", "critical")],
          },
        ],
      },
      {
        interval: "15s",
        input_series: [
          series("signal_cluster_ready", a, "1 1 1 1 0 0 0 0 0 0 1 1 1"),
          series("signal_cluster_ready", b, "1x12"),
        ],
        alert_rule_test: [
          { eval_time: "1m15s", alertname: "SignalRedisUnreachable", exp_alerts: [] },
          {
            eval_time: "1m45s",
            alertname: "SignalRedisUnreachable",
            exp_alerts: [fired("SignalRedisUnreachable", "critical", a)],
          },
          { eval_time: "2m45s", alertname: "SignalRedisUnreachable", exp_alerts: [] },
        ],
      },
      {
        interval: "1m",
        input_series: [
          // No cap (0): never near it, however many connections.
          series("signal_connection_cap", a, "0x10"),
          series("signal_connections", a, "100000x10"),
          series("ywebrtc_connections", a, "0x10"),
          // A cap of 100: 80 + 15 is over 90 %.
          series("signal_connection_cap", b, "100x10"),
          series("signal_connections", b, "50 50 80x8"),
          series("ywebrtc_connections", b, "0 0 15x8"),
        ],
        alert_rule_test: [
          { eval_time: "5m", alertname: "SignalConnectionsNearCap", exp_alerts: [] },
          {
            eval_time: "8m",
            alertname: "SignalConnectionsNearCap",
            exp_alerts: [fired("SignalConnectionsNearCap", "warning", b)],
          },
        ],
      },
      {
        // A day at one error a minute, then one a second: far above normal.
        interval: "1m",
        input_series: [
          series("signal_errors_total", { ...a, code: "bad-json" }, `0+1x${DAY} ${DAY + 60}+60x40`),
          series("ywebrtc_errors_total", { ...a, code: "bad-json" }, `0x${DAY + 40}`),
          series("signal_origin_refused_total", a, `0x${DAY} 30+30x40`),
          series("signal_upgrade_refused_total", a, `0x${DAY + 40}`),
          series("signal_slow_reader_closed_total", a, `0x${DAY + 40}`),
          series("signal_queue_closed_total", { ...a, bound: "frames" }, `0x${DAY + 40}`),
          series("ywebrtc_queue_closed_total", { ...a, bound: "frames" }, `0x${DAY + 40}`),
          series("signal_internal_errors_total", a, `0x${DAY} 1x40`),
        ],
        alert_rule_test: [
          { eval_time: `${DAY - 5}m`, alertname: "SignalErrorRateHigh", exp_alerts: [] },
          { eval_time: `${DAY - 5}m`, alertname: "SignalRefusalRateHigh", exp_alerts: [] },
          { eval_time: `${DAY - 5}m`, alertname: "SignalInternalErrors", exp_alerts: [] },
          {
            eval_time: `${DAY + 20}m`,
            alertname: "SignalErrorRateHigh",
            exp_alerts: [fired("SignalErrorRateHigh", "warning", a)],
          },
          {
            eval_time: `${DAY + 20}m`,
            alertname: "SignalRefusalRateHigh",
            exp_alerts: [fired("SignalRefusalRateHigh", "warning", a)],
          },
          {
            eval_time: `${DAY + 2}m`,
            alertname: "SignalInternalErrors",
            exp_alerts: [fired("SignalInternalErrors", "warning", a)],
          },
        ],
      },
      {
        // 200 MB for an hour, then 600 MB (b grows by a third only).
        interval: "1m",
        input_series: [
          series("process_resident_memory_bytes", a, "200000000x60 600000000x60"),
          series("process_resident_memory_bytes", b, "900000000x60 1200000000x60"),
        ],
        alert_rule_test: [
          { eval_time: "80m", alertname: "SignalMemoryGrowing", exp_alerts: [] },
          {
            eval_time: "100m",
            alertname: "SignalMemoryGrowing",
            exp_alerts: [fired("SignalMemoryGrowing", "warning", a)],
          },
        ],
      },
    ];
    const dir = await Deno.makeTempDir({ prefix: "alerts-test-" });
    try {
      await Deno.writeTextFile(`${dir}/rules.yml`, JSON.stringify({ groups }));
      await Deno.writeTextFile(
        `${dir}/test.yml`,
        JSON.stringify({ rule_files: ["rules.yml"], evaluation_interval: "15s", tests }),
      );
      const out = await new Deno.Command("promtool", {
        args: ["test", "rules", `${dir}/test.yml`],
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 0, text);
      assert.match(text, /SUCCESS/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
