/**
 * The HTML pages the server shows to people: the status page and the 404.
 *
 * @module
 */

/** What the status page shows. */
export interface StatusInfo {
  /** Server name. */
  name: string;
  /** Server version. */
  version: string;
  /** Seconds since start. */
  uptimeSeconds: number;
  /** Open connections. */
  connections: number;
  /** Rooms with members. */
  rooms: number;
  /** Global idents held. */
  idents: number;
  /** The WebSocket URL clients connect to, as seen from this request. */
  wsUrl: string;
}

/** Escapes text for HTML. */
export function escapeHtml(s: string): string {
  return s.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;")
    .replaceAll('"', "&quot;").replaceAll("'", "&#39;");
}

function duration(seconds: number): string {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  return d > 0 ? `${d}d ${h}h ${m}m` : h > 0 ? `${h}h ${m}m` : `${m}m ${s % 60}s`;
}

const STYLE =
  `body{font:16px/1.5 system-ui,sans-serif;max-width:44rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.5rem}table{border-collapse:collapse}td{padding:.2rem 1rem .2rem 0}
code,pre{background:#f4f4f4;padding:.1rem .3rem;border-radius:3px}pre{padding:.6rem;overflow:auto}`;

/** The status page at `GET /`. */
export function statusPage(s: StatusInfo): string {
  const ws = escapeHtml(s.wsUrl);
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>${escapeHtml(s.name)}</title><style>${STYLE}</style></head>
<body>
<h1>${escapeHtml(s.name)} <small>${escapeHtml(s.version)}</small></h1>
<p>A WebRTC signal server speaking the DIVA signal protocol: peers meet here, exchange offers,
answers and ICE candidates, then talk directly.</p>
<table>
<tr><td>Uptime</td><td id="uptime">${duration(s.uptimeSeconds)}</td></tr>
<tr><td>Connections</td><td id="connections">${s.connections}</td></tr>
<tr><td>Rooms</td><td id="rooms">${s.rooms}</td></tr>
<tr><td>Idents</td><td id="idents">${s.idents}</td></tr>
</table>
<h2>Connect</h2>
<p>Open a WebSocket to <code>${ws}</code> and send JSON arrays:</p>
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
