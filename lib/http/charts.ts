/**
 * Small SVG line charts, rendered on the server from a {@link ChartView}: no
 * script, no framework, nothing fetched. Each chart is a `<figure>` holding
 * an inline `<svg>` and a legend with every line's latest value. The newest
 * sample sits at the right edge; a history younger than the chart's span
 * fills from the right.
 *
 * @module
 */

import type { ChartView } from "./history.ts";
import { escapeHtml } from "./pages.ts";

/** Drawing area, in SVG user units (the SVG scales to its box). */
const WIDTH = 320;
const HEIGHT = 120;
const LEFT = 36;
const RIGHT = 6;
const TOP = 8;
const BOTTOM = 18;

/** Line colours, in order (readable on white, distinct for common colour blindness). */
export const COLOURS: readonly string[] = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00"];

/**
 * The smallest of 1, 2 or 5 times a power of ten that is at least `v` (and
 * at least 1): the top of a chart's scale.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { niceMax } from "./charts.ts";
 * assert.deepEqual([0, 0.3, 1, 3, 7, 12, 2001].map(niceMax), [1, 1, 1, 5, 10, 20, 5000]);
 * ```
 */
export function niceMax(v: number): number {
  if (!(v > 1)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v * (1 - 1e-9)) return m * p;
  return 10 * p;
}

/**
 * A value for a legend or an axis: whole numbers as they are, thousands as
 * `k`, small fractions with two decimals, `–` for unknown.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { formatValue } from "./charts.ts";
 * assert.deepEqual(
 *   [3, 0.25, 12.34, 1500, 2_500_000, NaN].map(formatValue),
 *   ["3", "0.25", "12.3", "1.5k", "2.5M", "–"],
 * );
 * ```
 */
export function formatValue(v: number): string {
  if (!Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e6) return `${trim((v / 1e6).toFixed(1))}M`;
  if (a >= 1e3) return `${trim((v / 1e3).toFixed(1))}k`;
  if (Number.isInteger(v)) return String(v);
  return trim(v.toFixed(a < 10 ? 2 : 1));
}

function trim(s: string): string {
  return s.includes(".") ? s.replace(/\.?0+$/, "") : s;
}

/** A span of time for the axis: `60 min`, `36 s`. */
export function formatSpan(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s >= 3600 && s % 3600 === 0) return `${s / 3600} h`;
  if (s >= 60) return `${Math.round(s / 60)} min`;
  return `${s} s`;
}

/**
 * An SVG path through `values`, broken where a value is unknown; a lone
 * known value becomes a short tick (a single point has no length to
 * stroke); "" when no value is known.
 */
function path(values: readonly number[], capacity: number, top: number): string {
  const plotW = WIDTH - LEFT - RIGHT;
  const plotH = HEIGHT - TOP - BOTTOM;
  const step = plotW / (capacity - 1);
  const offset = capacity - values.length;
  let d = "";
  let run = 0;
  const end = () => {
    if (run === 1) d += "h-2";
    run = 0;
  };
  values.forEach((v, i) => {
    if (!Number.isFinite(v)) return end();
    const x = LEFT + (offset + i) * step;
    const y = TOP + plotH - (Math.min(Math.max(v, 0), top) / top) * plotH;
    d += `${run > 0 ? "L" : "M"}${x.toFixed(1)} ${y.toFixed(1)}`;
    run++;
  });
  end();
  return d;
}

/** The newest known value of a line, or `NaN`. */
function latest(values: readonly number[]): number {
  for (let i = values.length - 1; i >= 0; i--) if (Number.isFinite(values[i])) return values[i];
  return NaN;
}

/**
 * One chart as a `<figure>` with an inline SVG (`id="chart-<id>"`), one
 * `<path class="line">` per line, and a legend of the latest values.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderChart } from "./charts.ts";
 * const html = renderChart({
 *   id: "connections", title: "Connections", rate: false, capacity: 4, intervalMs: 10_000,
 *   lines: [{ label: "DIVA", values: [0, 2, 3] }],
 * });
 * assert.match(html, /<svg id="chart-connections"/);
 * assert.match(html, /<path class="line" data-line="0" [^>]*d="M/);
 * assert.match(html, /DIVA <b>3<\/b>/);
 * ```
 */
export function renderChart(c: ChartView): string {
  const known = c.lines.flatMap((l) => l.values.filter(Number.isFinite));
  const top = niceMax(Math.max(0, ...known));
  const plotH = HEIGHT - TOP - BOTTOM;
  const bottomY = TOP + plotH;
  const titleId = `chart-${c.id}-title`;
  const lines = c.lines.map((l, i) => {
    const colour = COLOURS[i % COLOURS.length];
    const d = path(l.values, c.capacity, top);
    return `<path class="line" data-line="${i}" fill="none" stroke="${colour}" stroke-width="1.6" ` +
      `stroke-linejoin="round" stroke-linecap="round" d="${d}"/>`;
  }).join("");
  const grid = [0, 0.5, 1].map((f) => {
    const y = (bottomY - f * plotH).toFixed(1);
    return `<line x1="${LEFT}" x2="${WIDTH - RIGHT}" y1="${y}" y2="${y}" stroke="#ddd"/>`;
  }).join("");
  const span = formatSpan(c.capacity * c.intervalMs);
  const empty = known.length === 0
    ? `<text x="${(LEFT + WIDTH - RIGHT) / 2}" y="${TOP + plotH / 2}" text-anchor="middle" ` +
      `fill="#999">no data yet</text>`
    : "";
  const legend = c.lines.map((l, i) =>
    `<span class="key"><i style="background:${COLOURS[i % COLOURS.length]}"></i>` +
    `${escapeHtml(l.label)} <b>${escapeHtml(formatValue(latest(l.values)))}</b></span>`
  ).join(" ");
  return `<figure class="chart"><figcaption id="${titleId}">${escapeHtml(c.title)}</figcaption>` +
    `<svg id="chart-${escapeHtml(c.id)}" viewBox="0 0 ${WIDTH} ${HEIGHT}" role="img" ` +
    `aria-labelledby="${titleId}" font-size="10" font-family="system-ui,sans-serif">` +
    grid +
    `<text x="${LEFT - 4}" y="${TOP + 4}" text-anchor="end" fill="#555">${
      escapeHtml(formatValue(top))
    }</text>` +
    `<text x="${LEFT - 4}" y="${bottomY + 3}" text-anchor="end" fill="#555">0</text>` +
    `<text x="${LEFT}" y="${HEIGHT - 4}" fill="#555">−${escapeHtml(span)}</text>` +
    `<text x="${WIDTH - RIGHT}" y="${HEIGHT - 4}" text-anchor="end" fill="#555">now</text>` +
    empty + lines +
    `</svg><div class="legend">${legend}</div></figure>`;
}

/** Every chart, in order. */
export function renderCharts(views: readonly ChartView[]): string {
  return views.map(renderChart).join("\n");
}
