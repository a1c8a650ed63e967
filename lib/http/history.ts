/**
 * The status page's memory: the last hour of a few series, one sample every
 * interval, in fixed-size ring buffers.
 *
 * A {@link History} is pure: it holds no timer and reads no clock of its
 * own. The server calls {@link History.sample} every interval with the same
 * metric families `/metrics` renders, and the history keeps one number per
 * line per sample. A gauge line keeps its value; a rate line keeps the
 * counter's increase since the previous sample divided by the seconds
 * between them, by the injected clock. Memory is fixed when the history is
 * made: 4 bytes (a `Float32Array` slot) per line per sample, plus 8 bytes
 * per line for the previous raw counter value.
 *
 * Only counts ever enter: a line reads numbers from metric families, never
 * a label value, so idents, room names, tokens and payloads cannot reach
 * the page.
 *
 * @module
 */

import type { MetricFamily } from "../transport/engine.ts";

/** The metric families of one sample, indexed by name. */
export class Readings {
  readonly #families = new Map<string, MetricFamily>();

  /** Indexes `families` by name. */
  constructor(families: readonly MetricFamily[]) {
    for (const f of families) this.#families.set(f.name, f);
  }

  /** The sum of every sample of family `name`; 0 when there is no such family. */
  total(name: string): number {
    let sum = 0;
    for (const [, v] of this.#families.get(name)?.samples ?? []) sum += v;
    return sum;
  }

  /** The sum of the samples of family `name` whose label `label` passes `keep`. */
  where(name: string, label: string, keep: (value: string) => boolean): number {
    let sum = 0;
    for (const [l, v] of this.#families.get(name)?.samples ?? []) {
      const value = l?.[label];
      if (value !== undefined && keep(value)) sum += v;
    }
    return sum;
  }

  /** The names of every family whose name ends with `suffix`, in the order they came. */
  withSuffix(suffix: string): string[] {
    return [...this.#families.keys()].filter((n) => n.endsWith(suffix));
  }
}

/** One line of a chart: a label for people and how to read its number from a sample. */
export interface LineSpec {
  /** Shown in the legend. */
  readonly label: string;
  /** The line's number in this sample: a gauge's value, or a counter's running total. */
  read(r: Readings): number;
}

/** One chart: a few lines that share a scale. */
export interface ChartSpec {
  /** A short id, used in element ids (`chart-<id>`). */
  readonly id: string;
  /** The title shown above the chart. */
  readonly title: string;
  /** True when the lines read counters and the chart shows their rate per second. */
  readonly rate: boolean;
  /** The lines, drawn in this order. */
  readonly lines: readonly LineSpec[];
}

/** What a chart holds now, for rendering. */
export interface ChartView {
  /** {@link ChartSpec.id}. */
  readonly id: string;
  /** {@link ChartSpec.title}. */
  readonly title: string;
  /** {@link ChartSpec.rate}. */
  readonly rate: boolean;
  /** Samples the chart can hold (its full width). */
  readonly capacity: number;
  /** Milliseconds between samples. */
  readonly intervalMs: number;
  /** Each line's values, oldest first, the newest last; `NaN` where a value is unknown. */
  readonly lines: readonly { readonly label: string; readonly values: readonly number[] }[];
}

/** Settings of a {@link History}. */
export interface HistoryOptions {
  /** The charts to keep. */
  readonly charts: readonly ChartSpec[];
  /** Samples kept per line (default 360: an hour at 10 s). */
  readonly capacity?: number;
  /** Milliseconds between samples, as the caller's timer runs (default 10 000). */
  readonly intervalMs?: number;
  /** The clock for rates, in milliseconds (default `performance.now`). */
  readonly now?: () => number;
}

/** Samples kept by default: one hour at one sample every 10 s. */
export const DEFAULT_CAPACITY = 360;

/** Milliseconds between samples by default. */
export const DEFAULT_INTERVAL_MS = 10_000;

/**
 * Fixed-size ring buffers of chart lines, filled by {@link sample}.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { History } from "./history.ts";
 * let t = 0;
 * const h = new History({
 *   capacity: 3,
 *   now: () => t,
 *   charts: [{ id: "x", title: "X", rate: true, lines: [{ label: "n", read: (r) => r.total("n") }] }],
 * });
 * for (const n of [0, 10, 30, 60]) {
 *   h.sample([{ name: "n", type: "counter", help: "", samples: [[null, n]] }]);
 *   t += 10_000;
 * }
 * assert.deepEqual(h.view()[0].lines[0].values, [1, 2, 3]); // per second, oldest dropped
 * assert.equal(h.bytes, 3 * 4 + 8);
 * ```
 */
export class History {
  /** Samples kept per line. */
  readonly capacity: number;
  /** Milliseconds between samples. */
  readonly intervalMs: number;
  /** The charts, as given. */
  readonly charts: readonly ChartSpec[];
  readonly #now: () => number;
  /** Every line's ring, one after another: line `i` owns `[i * capacity, (i + 1) * capacity)`. */
  readonly #values: Float32Array;
  /** The previous raw value of each line (a counter's running total), for rates. */
  readonly #previous: Float64Array;
  #previousAt: number | undefined = undefined;
  /** The slot the next sample goes to. */
  #next = 0;
  /** Samples held, up to {@link capacity}. */
  #size = 0;

  /** A history with room for `capacity` samples of every line, all empty. */
  constructor(options: HistoryOptions) {
    this.capacity = options.capacity ?? DEFAULT_CAPACITY;
    this.intervalMs = options.intervalMs ?? DEFAULT_INTERVAL_MS;
    if (!Number.isInteger(this.capacity) || this.capacity < 2) {
      throw new RangeError("capacity must be a whole number of at least 2");
    }
    this.charts = options.charts;
    this.#now = options.now ?? (() => performance.now());
    const lines = options.charts.reduce((n, c) => n + c.lines.length, 0);
    this.#values = new Float32Array(lines * this.capacity);
    this.#previous = new Float64Array(lines).fill(NaN);
  }

  /** Samples held, up to {@link capacity}. */
  get size(): number {
    return this.#size;
  }

  /** Bytes the buffers take; fixed when the history is made. */
  get bytes(): number {
    return this.#values.byteLength + this.#previous.byteLength;
  }

  /**
   * Takes one sample: reads every line from `families` and appends its value
   * (or, for a rate chart, the increase since the previous sample per second
   * of the clock; unknown on the first sample or when a counter went down).
   */
  sample(families: readonly MetricFamily[] | Readings): void {
    const r = families instanceof Readings ? families : new Readings(families);
    const at = this.#now();
    const seconds = this.#previousAt === undefined ? NaN : (at - this.#previousAt) / 1000;
    let line = 0;
    for (const chart of this.charts) {
      for (const spec of chart.lines) {
        const raw = spec.read(r);
        let value = raw;
        if (chart.rate) {
          const delta = raw - this.#previous[line];
          value = seconds > 0 && delta >= 0 ? delta / seconds : NaN;
          this.#previous[line] = raw;
        }
        this.#values[line * this.capacity + this.#next] = value;
        line++;
      }
    }
    this.#previousAt = at;
    this.#next = (this.#next + 1) % this.capacity;
    this.#size = Math.min(this.#size + 1, this.capacity);
  }

  /** Every chart with its lines' values, oldest first. */
  view(): ChartView[] {
    const start = (this.#next - this.#size + this.capacity) % this.capacity;
    let line = 0;
    return this.charts.map((chart) => ({
      id: chart.id,
      title: chart.title,
      rate: chart.rate,
      capacity: this.capacity,
      intervalMs: this.intervalMs,
      lines: chart.lines.map((spec) => {
        const base = line++ * this.capacity;
        const values: number[] = [];
        for (let i = 0; i < this.#size; i++) {
          values.push(this.#values[base + (start + i) % this.capacity]);
        }
        return { label: spec.label, values };
      }),
    }));
  }
}

/** Error codes caused by a frame the client should not have sent (any engine). */
const MALFORMED = new Set([
  "bad-json",
  "bad-frame",
  "unknown-call",
  "unknown-type",
  "bad-args",
  "bad-topic",
  "bad-dst",
  "too-large",
]);

/** Error codes for a limit or a budget reached (any engine). */
const LIMITS = new Set(["limit", "topic-limit", "topic-full", "rate-limited"]);

/** Error codes the server answers because it cannot serve (any engine). */
const SERVER = new Set(["unavailable"]);

/** The kinds on the errors chart, by an error code; a code not listed here counts as refused. */
export function errorKind(code: string): "malformed" | "refused" | "limits" | "server" {
  if (MALFORMED.has(code)) return "malformed";
  if (LIMITS.has(code)) return "limits";
  if (SERVER.has(code)) return "server";
  return "refused";
}

/** The sum, over every family named `*<suffix>`, of its samples. */
function suffixTotal(r: Readings, suffix: string): number {
  return r.withSuffix(suffix).reduce((n, name) => n + r.total(name), 0);
}

/** Error replies of one kind, over every engine's `*_errors_total{code}`. */
function errors(kind: ReturnType<typeof errorKind>): LineSpec["read"] {
  return (r) =>
    r.withSuffix("_errors_total").reduce(
      (n, name) => n + r.where(name, "code", (c) => errorKind(c) === kind),
      0,
    );
}

/** Engine names as people know them, for chart legends. */
const ENGINE_LABELS: Readonly<Record<string, string>> = {
  diva: "DIVA",
  ywebrtc: "y-webrtc",
  peerjs: "PeerJS",
};

/** What {@link statusCharts} needs beyond the metric families. */
export interface StatusChartOptions {
  /**
   * The running engines: the connections chart gets one line each, read
   * from the engine. Omitted, it has DIVA's and y-webrtc's, read from their
   * gauges.
   */
  readonly engines?: readonly { readonly name: string; readonly connections: number }[];
  /**
   * In cluster mode: how many instances this one sees (itself included).
   * Omitted, the cluster charts are left out.
   */
  readonly instances?: () => number;
}

/**
 * The status page's charts: connections per engine, rooms, signals relayed,
 * errors by kind, shaped or refused frames and, in cluster mode, instances
 * and Redis. Each reads the families `/metrics` exports, by their names
 * (connections read from the engines themselves when they are given).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { statusCharts } from "./history.ts";
 * assert.deepEqual(statusCharts().map((c) => c.id), [
 *   "connections", "rooms", "signals", "errors", "shaping",
 * ]);
 * assert.equal(statusCharts({ instances: () => 2 }).length, 7);
 * ```
 */
export function statusCharts(options: StatusChartOptions = {}): ChartSpec[] {
  const connections: LineSpec[] = options.engines?.map((e) => ({
    label: ENGINE_LABELS[e.name] ?? e.name,
    read: () => e.connections,
  })) ?? [
    { label: "DIVA", read: (r) => r.total("signal_connections") },
    { label: "y-webrtc", read: (r) => r.total("ywebrtc_connections") },
  ];
  const charts: ChartSpec[] = [
    { id: "connections", title: "Connections", rate: false, lines: connections },
    {
      id: "rooms",
      title: "Rooms",
      rate: false,
      lines: [
        { label: "DIVA rooms", read: (r) => r.total("signal_rooms") },
        { label: "y-webrtc topics", read: (r) => r.total("ywebrtc_topics") },
      ],
    },
    {
      id: "signals",
      title: "Signals relayed per second",
      rate: true,
      lines: [
        {
          label: "DIVA signals",
          read: (r) => r.where("signal_frames_out_total", "type", (t) => t === "signal"),
        },
        { label: "y-webrtc publishes", read: (r) => r.total("ywebrtc_publishes_total") },
      ],
    },
    {
      id: "errors",
      title: "Errors per second, by kind",
      rate: true,
      lines: [
        { label: "malformed", read: errors("malformed") },
        { label: "refused", read: errors("refused") },
        { label: "limits", read: errors("limits") },
        {
          label: "server",
          read: (r) => errors("server")(r) + r.total("signal_internal_errors_total"),
        },
      ],
    },
    {
      id: "shaping",
      title: "Shaped or refused per second",
      rate: true,
      lines: [
        { label: "frames delayed", read: (r) => suffixTotal(r, "_frames_delayed_total") },
        {
          label: "connections closed",
          read: (r) =>
            suffixTotal(r, "_queue_closed_total") + r.total("signal_slow_reader_closed_total"),
        },
        {
          label: "upgrades refused",
          read: (r) =>
            r.total("signal_origin_refused_total") + r.total("signal_upgrade_refused_total"),
        },
      ],
    },
  ];
  const instances = options.instances;
  if (instances !== undefined) {
    charts.push(
      {
        id: "instances",
        title: "Cluster instances seen",
        rate: false,
        lines: [{ label: "instances", read: () => instances() }],
      },
      {
        id: "redis",
        title: "Redis reachable",
        rate: false,
        lines: [{ label: "ready (1) or not (0)", read: (r) => r.total("signal_cluster_ready") }],
      },
    );
  }
  return charts;
}
