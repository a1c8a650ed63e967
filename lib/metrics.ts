/**
 * Prometheus text exposition of the server's counters and gauges.
 *
 * @module
 */

import type { BrokerStats } from "./broker.ts";

/** Everything the metrics page reports. */
export interface MetricsSnapshot {
  /** Broker totals. */
  stats: BrokerStats;
  /** Open connections. */
  connections: number;
  /** Rooms with members. */
  rooms: number;
  /** Global idents held. */
  idents: number;
  /** Server-level counters (origin refusals, slow readers, …), by name. */
  server: Record<string, number>;
  /** Further gauges (cluster readiness), by name. */
  gauges?: Record<string, number>;
  /** Seconds since start. */
  uptimeSeconds: number;
  /** Process memory, from `Deno.memoryUsage()`. */
  memory: { rss: number; heapUsed: number; heapTotal: number; external: number };
}

function family(out: string[], name: string, type: string, help: string): void {
  out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
}

function labelled(
  out: string[],
  name: string,
  help: string,
  label: string,
  values: Record<string, number>,
): void {
  family(out, name, "counter", help);
  for (const [k, v] of Object.entries(values)) out.push(`${name}{${label}="${k}"} ${v}`);
}

function single(out: string[], name: string, type: string, help: string, v: number): void {
  family(out, name, type, help);
  out.push(`${name} ${v}`);
}

/**
 * Renders a snapshot in the Prometheus text format (version 0.0.4).
 *
 * @example
 * ```ts
 * const text = renderMetrics(snapshot);
 * // "# HELP signal_connections Open WebSocket connections\n…"
 * ```
 */
export function renderMetrics(s: MetricsSnapshot): string {
  const out: string[] = [];
  single(out, "signal_connections", "gauge", "Open WebSocket connections", s.connections);
  single(out, "signal_rooms", "gauge", "Rooms with at least one member", s.rooms);
  single(out, "signal_idents", "gauge", "Global idents held", s.idents);
  single(
    out,
    "signal_connections_opened_total",
    "counter",
    "WebSocket connections accepted",
    s.stats.connectionsOpened,
  );
  labelled(
    out,
    "signal_frames_in_total",
    "Accepted client frames by call",
    "call",
    s.stats.framesIn,
  );
  labelled(
    out,
    "signal_frames_out_total",
    "Frames sent by message type",
    "type",
    s.stats.framesOut,
  );
  labelled(out, "signal_errors_total", "Error replies by code", "code", s.stats.errors);
  single(
    out,
    "signal_relayed_bytes_total",
    "counter",
    "Bytes of relayed signal frames (characters; equal to bytes for ASCII payloads)",
    s.stats.bytesRelayed,
  );
  single(
    out,
    "signal_frames_delayed_total",
    "counter",
    "Client frames that waited in their connection's queue (budget, cluster claim or ice answer)",
    s.stats.framesDelayed,
  );
  labelled(
    out,
    "signal_queue_closed_total",
    "Connections closed with 1008 because their queue of waiting frames passed its bound",
    "bound",
    s.stats.queueClosed,
  );
  for (const [k, v] of Object.entries(s.server)) {
    single(out, `signal_${k}_total`, "counter", k.replaceAll("_", " "), v);
  }
  single(
    out,
    "process_uptime_seconds",
    "gauge",
    "Seconds since the server started",
    s.uptimeSeconds,
  );
  single(out, "process_resident_memory_bytes", "gauge", "Resident set size", s.memory.rss);
  single(out, "process_heap_used_bytes", "gauge", "V8 heap in use", s.memory.heapUsed);
  single(out, "process_heap_total_bytes", "gauge", "V8 heap reserved", s.memory.heapTotal);
  single(
    out,
    "process_external_memory_bytes",
    "gauge",
    "Memory outside the V8 heap",
    s.memory.external,
  );
  return out.join("\n") + "\n";
}
