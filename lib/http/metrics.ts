/**
 * Prometheus text exposition: metric families from every engine, the
 * server's own counters and the process.
 *
 * @module
 */

import type { MetricFamily, Sample } from "../transport/engine.ts";

/** Process memory, as `Deno.memoryUsage()` reports it. */
export interface Memory {
  /** Resident set size. */
  rss: number;
  /** V8 heap in use. */
  heapUsed: number;
  /** V8 heap reserved. */
  heapTotal: number;
  /** Memory outside the V8 heap. */
  external: number;
}

function labels(l: Readonly<Record<string, string>>): string {
  return "{" + Object.entries(l).map(([k, v]) => `${k}="${v}"`).join(",") + "}";
}

/**
 * Renders metric families in the Prometheus text format (version 0.0.4).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const text = renderMetrics([
 *   { name: "signal_rooms", type: "gauge", help: "Rooms", samples: [[null, 2]] },
 * ]);
 * assert.equal(text, "# HELP signal_rooms Rooms\n# TYPE signal_rooms gauge\nsignal_rooms 2\n");
 * ```
 */
export function renderMetrics(families: readonly MetricFamily[]): string {
  const out: string[] = [];
  for (const f of families) {
    out.push(`# HELP ${f.name} ${f.help}`, `# TYPE ${f.name} ${f.type}`);
    for (const [l, v] of f.samples) {
      out.push(l === null ? `${f.name} ${v}` : `${f.name}${labels(l)} ${v}`);
    }
  }
  return out.join("\n") + "\n";
}

/** One unlabelled sample. */
export function single(value: number): Sample[] {
  return [[null, value]];
}

/** Counters named `signal_<key>_total`, one family each (the server's own counters). */
export function counterFamilies(counters: Readonly<Record<string, number>>): MetricFamily[] {
  return Object.entries(counters).map(([k, v]) => ({
    name: `signal_${k}_total`,
    type: "counter",
    help: k.replaceAll("_", " "),
    samples: single(v),
  }));
}

/** The process: uptime and memory. */
export function processFamilies(uptimeSeconds: number, memory: Memory): MetricFamily[] {
  return [
    {
      name: "process_uptime_seconds",
      type: "gauge",
      help: "Seconds since the server started",
      samples: single(uptimeSeconds),
    },
    {
      name: "process_resident_memory_bytes",
      type: "gauge",
      help: "Resident set size",
      samples: single(memory.rss),
    },
    {
      name: "process_heap_used_bytes",
      type: "gauge",
      help: "V8 heap in use",
      samples: single(memory.heapUsed),
    },
    {
      name: "process_heap_total_bytes",
      type: "gauge",
      help: "V8 heap reserved",
      samples: single(memory.heapTotal),
    },
    {
      name: "process_external_memory_bytes",
      type: "gauge",
      help: "Memory outside the V8 heap",
      samples: single(memory.external),
    },
  ];
}
