/**
 * The status page's sampler and charts, as pure functions: fixed-size rings
 * driven by an injected clock, rates from counters, the error kinds of every
 * engine's codes, and the SVG they render to.
 *
 * @module
 */

import assert from "node:assert/strict";
import { ERROR_CODES as DIVA_CODES } from "../lib/diva/codec.ts";
import { ERROR_CODES as PEERJS_CODES } from "../lib/peerjs/codec.ts";
import { ERROR_CODES as YWEBRTC_CODES } from "../lib/ywebrtc/codec.ts";
import {
  COLOURS,
  formatSpan,
  formatValue,
  niceMax,
  renderChart,
  renderCharts,
} from "../lib/http/charts.ts";
import {
  type ChartSpec,
  type ChartView,
  errorKind,
  History,
  Readings,
  statusCharts,
} from "../lib/http/history.ts";
import type { MetricFamily, Sample } from "../lib/transport/engine.ts";

function family(name: string, samples: Sample[], type: "counter" | "gauge" = "gauge") {
  return { name, type, help: name, samples } satisfies MetricFamily;
}

const one = (name: string, v: number, type: "counter" | "gauge" = "gauge") =>
  family(name, [[null, v]], type);

/** A history of one gauge line `g` and one rate line `c`, on a clock the test moves. */
function gaugeAndRate(capacity: number) {
  const clock = { t: 1_000 };
  const charts: ChartSpec[] = [
    { id: "g", title: "G", rate: false, lines: [{ label: "g", read: (r) => r.total("g") }] },
    { id: "c", title: "C", rate: true, lines: [{ label: "c", read: (r) => r.total("c") }] },
  ];
  const h = new History({ charts, capacity, intervalMs: 10_000, now: () => clock.t });
  const at = (g: number, c: number, advanceMs = 10_000) => {
    h.sample([one("g", g), one("c", c, "counter")]);
    clock.t += advanceMs;
  };
  return { h, at, clock };
}

Deno.test("history: a ring keeps the newest `capacity` samples, oldest first", () => {
  const { h, at } = gaugeAndRate(4);
  assert.equal(h.size, 0);
  assert.deepEqual(h.view()[0].lines[0].values, []);
  at(1, 0);
  at(2, 0);
  assert.deepEqual(h.view()[0].lines[0].values, [1, 2]);
  for (const g of [3, 4, 5, 6, 7]) at(g, 0);
  assert.equal(h.size, 4);
  assert.deepEqual(h.view()[0].lines[0].values, [4, 5, 6, 7]);
  // Many more laps: still the newest four, in order.
  for (let g = 8; g <= 1_000; g++) at(g, 0);
  assert.deepEqual(h.view()[0].lines[0].values, [997, 998, 999, 1000]);
});

Deno.test("history: the cost is fixed when it is made, whatever it samples", () => {
  const { h, at } = gaugeAndRate(360);
  const before = h.bytes;
  assert.equal(before, 2 * 360 * 4 + 2 * 8);
  for (let i = 0; i < 2_000; i++) at(i, i * 3);
  assert.equal(h.bytes, before);

  // The status page's charts: 13 lines alone, 15 in a cluster, an hour at 10 s.
  const lines = (c: ChartSpec[]) => c.reduce((n, x) => n + x.lines.length, 0);
  assert.equal(lines(statusCharts()), 13);
  assert.equal(lines(statusCharts({ instances: () => 1 })), 15);
  assert.equal(new History({ charts: statusCharts() }).bytes, 13 * 360 * 4 + 13 * 8);
  const cluster = new History({ charts: statusCharts({ instances: () => 1 }) });
  assert.equal(cluster.bytes, 21_720);
  assert.equal(cluster.capacity * cluster.intervalMs, 3_600_000, "one hour");
  // Given the engines, one connections line each.
  const three = [{ name: "diva" }, { name: "ywebrtc" }, { name: "peerjs" }]
    .map((e) => ({ ...e, connections: 0 }));
  assert.equal(lines(statusCharts({ engines: three })), 14);
  assert.equal(new History({ charts: statusCharts({ engines: three }) }).bytes, 20_272);
});

Deno.test("status charts: given the engines, connections are read from each", () => {
  const engines = [
    { name: "diva", connections: 3 },
    { name: "ywebrtc", connections: 1 },
    { name: "later", connections: 7 },
  ];
  const h = new History({ charts: statusCharts({ engines }) });
  h.sample([]);
  engines[2].connections = 8;
  h.sample([]);
  const chart = h.view()[0];
  assert.equal(chart.id, "connections");
  assert.deepEqual(chart.lines.map((l) => [l.label, l.values]), [
    ["DIVA", [3, 3]],
    ["y-webrtc", [1, 1]],
    ["later", [7, 8]],
  ]);
});

Deno.test("history: a rate is the counter's increase per second of the injected clock", () => {
  const { h, at } = gaugeAndRate(10);
  at(0, 100); // no previous sample: unknown
  at(0, 150); // +50 in 10 s
  at(0, 150, 2_000); // nothing new
  at(0, 160, 5_000); // +10 in 2 s
  at(0, 160); // +0 in 5 s
  const values = h.view()[1].lines[0].values;
  assert.ok(Number.isNaN(values[0]));
  assert.deepEqual(values.slice(1), [5, 0, 5, 0]);
});

Deno.test("history: a counter that went down, or no time passing, gives an unknown rate", () => {
  const { h, at } = gaugeAndRate(10);
  at(0, 100);
  at(0, 200);
  at(0, 50, 0); // went down (a reset): unknown, and the next rate starts from 50
  at(0, 70); // no time passed since the last sample: unknown
  at(0, 80);
  const values = h.view()[1].lines[0].values;
  assert.ok(Number.isNaN(values[0]));
  assert.equal(values[1], 10);
  assert.ok(Number.isNaN(values[2]));
  assert.ok(Number.isNaN(values[3]));
  assert.equal(values[4], 1);
});

Deno.test("history: a capacity under 2 is refused", () => {
  assert.throws(() => new History({ charts: [], capacity: 1 }), RangeError);
  assert.throws(() => new History({ charts: [], capacity: 2.5 }), RangeError);
});

Deno.test("readings: totals, label filters and name suffixes", () => {
  const r = new Readings([
    family("a_errors_total", [[{ code: "bad-json" }, 2], [{ code: "limit" }, 3]], "counter"),
    family("b_errors_total", [[{ code: "bad-topic" }, 5]], "counter"),
    one("a_connections", 7),
  ]);
  assert.equal(r.total("a_errors_total"), 5);
  assert.equal(r.total("missing"), 0);
  assert.equal(r.where("a_errors_total", "code", (c) => c === "limit"), 3);
  assert.equal(r.where("a_connections", "code", () => true), 0, "no such label");
  assert.deepEqual(r.withSuffix("_errors_total"), ["a_errors_total", "b_errors_total"]);
});

Deno.test("error kinds: every code of every engine has one", () => {
  const kinds = (codes: readonly string[]) =>
    Object.fromEntries(codes.map((c) => [c, errorKind(c)]));
  assert.deepEqual(kinds(DIVA_CODES), {
    "bad-json": "malformed",
    "bad-frame": "malformed",
    "unknown-call": "malformed",
    "bad-args": "malformed",
    "no-ident": "refused",
    "ident-taken": "refused",
    "not-owner": "refused",
    "cross-room": "refused",
    "unknown-peer": "refused",
    "limit": "limits",
    "rate-limited": "limits",
    "too-large": "malformed",
    "forbidden": "refused",
    "unavailable": "server",
  });
  assert.deepEqual(kinds(YWEBRTC_CODES), {
    "bad-json": "malformed",
    "bad-frame": "malformed",
    "unknown-type": "malformed",
    "bad-topic": "malformed",
    "not-subscribed": "refused",
    "topic-limit": "limits",
    "topic-full": "limits",
    "forbidden": "refused",
    "too-large": "malformed",
    "rate-limited": "limits",
  });
  assert.deepEqual(kinds(PEERJS_CODES), {
    "bad-json": "malformed",
    "bad-frame": "malformed",
    "unknown-type": "malformed",
    "bad-dst": "malformed",
    "too-large": "malformed",
    "rate-limited": "limits",
  });
  assert.equal(errorKind("some-new-code"), "refused");
});

Deno.test("status charts read the exported families: engines summed, errors by kind", () => {
  const clock = { t: 0 };
  let instances = 3;
  const h = new History({
    charts: statusCharts({ instances: () => instances }),
    now: () => clock.t,
  });
  const families = (k: number): MetricFamily[] => [
    one("signal_connections", 2 * k),
    one("ywebrtc_connections", k),
    one("signal_rooms", k),
    one("ywebrtc_topics", 4),
    family("signal_frames_out_total", [[{ type: "signal" }, 100 * k], [{ type: "stun" }, 999 * k]]),
    one("ywebrtc_publishes_total", 10 * k, "counter"),
    family("signal_errors_total", [
      [{ code: "bad-json" }, k],
      [{ code: "ident-taken" }, 2 * k],
      [{ code: "rate-limited" }, 3 * k],
      [{ code: "unavailable" }, 4 * k],
    ], "counter"),
    family("ywebrtc_errors_total", [[{ code: "bad-topic" }, 10 * k]], "counter"),
    one("signal_internal_errors_total", k, "counter"),
    one("signal_frames_delayed_total", 5 * k, "counter"),
    one("ywebrtc_frames_delayed_total", 5 * k, "counter"),
    family("signal_queue_closed_total", [[{ bound: "frames" }, k], [{ bound: "bytes" }, k]]),
    family("ywebrtc_queue_closed_total", [[{ bound: "frames" }, k]]),
    one("signal_slow_reader_closed_total", k, "counter"),
    one("signal_origin_refused_total", 2 * k, "counter"),
    one("signal_upgrade_refused_total", 3 * k, "counter"),
    one("signal_cluster_ready", k % 2),
  ];
  h.sample(families(1));
  clock.t += 1_000;
  instances = 2;
  h.sample(families(2));
  const last = Object.fromEntries(
    h.view().map((c) => [c.id, Object.fromEntries(c.lines.map((l) => [l.label, l.values[1]]))]),
  );
  assert.deepEqual(last, {
    connections: { "DIVA": 4, "y-webrtc": 2 },
    rooms: { "DIVA rooms": 2, "y-webrtc topics": 4 },
    signals: { "DIVA signals": 100, "y-webrtc publishes": 10 },
    errors: { malformed: 11, refused: 2, limits: 3, server: 5 },
    shaping: { "frames delayed": 10, "connections closed": 4, "upgrades refused": 5 },
    instances: { instances: 2 },
    redis: { "ready (1) or not (0)": 0 },
  });
});

function view(values: number[], capacity = 5, labels = ["a"]): ChartView {
  return {
    id: "x",
    title: "X <chart>",
    rate: false,
    capacity,
    intervalMs: 10_000,
    lines: labels.map((label) => ({ label, values })),
  };
}

/** The `d` attribute of each line's path. */
function paths(html: string): string[] {
  return [...html.matchAll(/<path class="line" [^>]*d="([^"]*)"/g)].map((m) => m[1]);
}

Deno.test("charts: newest at the right edge, scaled to a round top, gaps broken", () => {
  // capacity 5 over 278 units from x=36: a step of 69.5; the plot is 94 high from y=8.
  const html = renderChart(view([1, 2, NaN, 4]));
  const [d] = paths(html);
  assert.equal(d, "M105.5 83.2L175.0 64.4M314.0 26.8h-2");
  assert.match(html, />5<\/text>/, "the top of the scale");
  assert.match(html, />−50 s<\/text>/, "the span of 5 samples of 10 s");
  assert.match(html, /a <b>4<\/b>/, "the legend shows the latest value");
  assert.match(html, /X &lt;chart&gt;/, "the title is escaped");
  assert.doesNotMatch(html, /no data yet/);
});

Deno.test("charts: an empty chart says so; values are clamped into the plot", () => {
  const empty = renderChart(view([]));
  assert.match(empty, /no data yet/);
  assert.deepEqual(paths(empty), [""]);
  assert.match(empty, /a <b>–<\/b>/);
  const neg = paths(renderChart(view([-3, 0])))[0];
  assert.equal(neg, "M244.5 102.0L314.0 102.0", "a negative value sits on the axis");
});

Deno.test("charts: one path and one colour per line, labels escaped", () => {
  const html = renderChart(view([1, 2], 5, ["<b>", "two", "3", "4", "5", "6"]));
  assert.equal(paths(html).length, 6);
  assert.ok(html.includes(`stroke="${COLOURS[0]}"`));
  assert.ok(html.includes("&lt;b&gt;"));
  assert.ok(!html.includes("<b><b>"));
  assert.equal(renderCharts([view([1]), view([2])]).split("<figure").length, 3);
});

Deno.test("charts: scale tops, values and spans for people", () => {
  assert.deepEqual([0, -1, NaN, 1, 1.5, 2, 4, 5, 9, 10, 11, 99, 101].map(niceMax), [
    1,
    1,
    1,
    1,
    2,
    2,
    5,
    5,
    10,
    10,
    20,
    100,
    200,
  ]);
  assert.deepEqual([0, 7, 0.5, 0.125, 99.95, 1000, 12_345, -2].map(formatValue), [
    "0",
    "7",
    "0.5",
    "0.13",
    "100",
    "1k",
    "12.3k",
    "-2",
  ]);
  assert.deepEqual([3_600_000, 7_200_000, 90_000, 36_000, 500].map(formatSpan), [
    "1 h",
    "2 h",
    "2 min",
    "36 s",
    "1 s",
  ]);
});
