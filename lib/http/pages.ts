/**
 * The HTML pages the server shows to people: the status page and the 404.
 * Pages show counts only, never idents, room names, tokens or payloads.
 *
 * @module
 */

import type { EngineStatus } from "../transport/engine.ts";

/** A protocol mounted on the server, as the status page shows it. */
export interface StatusSection extends EngineStatus {
  /** The WebSocket URL clients of this protocol connect to, as seen from this request. */
  readonly wsUrl: string;
}

/** What the status page shows. */
export interface StatusInfo {
  /** Server name. */
  name: string;
  /** Server version. */
  version: string;
  /** Seconds since start. */
  uptimeSeconds: number;
  /** One section per mounted protocol, the DIVA protocol first. */
  sections: readonly StatusSection[];
  /** Recent activity as charts (see `charts.ts`), refreshed in place; omitted, no charts. */
  charts?: StatusCharts;
}

/** The charts on the status page and how often the page fetches them again. */
export interface StatusCharts {
  /** The rendered charts (trusted HTML). */
  html: string;
  /** Milliseconds between refreshes from `status.json`. */
  refreshMs: number;
}

/** Escapes text for HTML. */
export function escapeHtml(s: string): string {
  return s.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;")
    .replaceAll('"', "&quot;").replaceAll("'", "&#39;");
}

/** Seconds as `3m 2s`, `4h 5m` or `1d 2h 3m`. */
export function duration(seconds: number): string {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  return d > 0 ? `${d}d ${h}h ${m}m` : h > 0 ? `${h}h ${m}m` : `${m}m ${s % 60}s`;
}

const STYLE =
  `body{font:16px/1.5 system-ui,sans-serif;max-width:44rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.5rem}table{border-collapse:collapse}td{padding:.2rem 1rem .2rem 0}
code,pre{background:#f4f4f4;padding:.1rem .3rem;border-radius:3px}pre{padding:.6rem;overflow:auto}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(19rem,1fr));gap:.5rem 1.5rem}
.chart{margin:0}.chart figcaption{font-size:.9rem;font-weight:600}.chart svg{width:100%;height:auto;display:block}
.legend{font-size:.8rem;color:#444}.key{white-space:nowrap;margin-right:.6rem}
.key i{display:inline-block;width:.8rem;height:.2rem;margin-right:.25rem;vertical-align:middle}`;

/**
 * Fetches `status.json` every `refreshMs` and puts its charts, counts and
 * uptime in place: plain DOM calls, nothing loaded from elsewhere. Counts go
 * in as text; the charts are HTML the server rendered and escaped.
 */
const REFRESH = `(() => {
  const box = document.getElementById("charts");
  const ms = Math.max(100, Number(box.dataset.refreshMs) || 10000);
  const tick = async () => {
    try {
      const r = await fetch("status.json", { cache: "no-store" });
      if (r.ok) {
        const s = await r.json();
        box.innerHTML = s.charts;
        document.getElementById("uptime").textContent = s.uptime;
        for (const [id, v] of Object.entries(s.counts)) {
          const e = document.getElementById(id);
          if (e) e.textContent = String(v);
        }
        box.dataset.refreshed = String(Number(box.dataset.refreshed || 0) + 1);
      }
    } catch { /* the next tick tries again */ }
    setTimeout(tick, ms);
  };
  setTimeout(tick, ms);
})();`;

function charts(c: StatusCharts | undefined): string {
  if (c === undefined) return "";
  return `<h2>Recent activity</h2>
<div id="charts" class="charts" data-refresh-ms="${Math.round(c.refreshMs)}">
${c.html}
</div>
<script>${REFRESH}</script>`;
}

function section(s: StatusSection): string {
  const rows = s.counts.map(([id, label, value]) =>
    `<tr><td>${escapeHtml(label)}</td><td id="${escapeHtml(id)}">${value}</td></tr>`
  ).join("\n");
  const ws = `<code>${escapeHtml(s.wsUrl)}</code>`;
  const connect = escapeHtml(s.connect).replace("{ws}", ws);
  return `<h2>${escapeHtml(s.title)}</h2>
<p>${connect}</p>
<table>
${rows}
</table>`;
}

/** The status page at `GET /`. */
export function statusPage(s: StatusInfo): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>${escapeHtml(s.name)}</title><style>${STYLE}</style></head>
<body>
<h1>${escapeHtml(s.name)} <small>${escapeHtml(s.version)}</small></h1>
<p>A WebRTC signal server: peers meet here, exchange offers, answers and ICE candidates, then talk
directly.</p>
<table><tr><td>Uptime</td><td id="uptime">${duration(s.uptimeSeconds)}</td></tr></table>
${s.sections.map(section).join("\n")}
${charts(s.charts)}
<p>DIVA example:</p>
<pre>["ident"]                  → ["ident", id]
["join", id, "lobby"]      → ["join", "lobby:" + id], then ["stun", …] per peer
["signal", from, to, data] → the peer gets ["signal", to, from, data]</pre>
<p><a href="/demo">Demo: chat over WebRTC data channels</a> ·
<a href="/metrics">Metrics</a> · <a href="/healthz">Health</a></p>
</body></html>
`;
}

/** The page for any unknown path. */
export function notFoundPage(path: string): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Not found</title><style>${STYLE}</style></head>
<body><h1>404 Not found</h1><p>Nothing lives at <code>${escapeHtml(path)}</code>.
The <a href="/">status page</a> says how to connect.</p></body></html>
`;
}
