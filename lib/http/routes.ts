/**
 * The HTTP routes: status page (and the `status.json` it refreshes from),
 * health, readiness, metrics, static assets, robots.txt, and the 404 and 405
 * answers. WebSocket upgrades never get here; the server hands them to the
 * transport first.
 *
 * @module
 */

import type { Engine, MetricFamily } from "../transport/engine.ts";
import { assetResponse } from "./assets.ts";
import { renderCharts } from "./charts.ts";
import type { ChartView } from "./history.ts";
import { renderMetrics } from "./metrics.ts";
import { duration, notFoundPage, statusPage, type StatusSection } from "./pages.ts";

/** What the routes read from the running server. */
export interface RouteContext {
  /** The server's name, on its pages. */
  readonly name: string;
  /** The version, on its pages. */
  readonly version: string;
  /** Seconds since start. */
  uptimeSeconds(): number;
  /** The mounted engines, each with the path its clients connect to. */
  readonly engines: readonly { readonly engine: Engine; readonly path: string }[];
  /** Why the server is not ready (shutting down, cluster unavailable), or undefined. */
  notReady(): string | undefined;
  /** Every metric family, engines' and server's. */
  metrics(): MetricFamily[];
  /** The bearer token `/metrics` asks for; open when absent or empty. */
  readonly metricsToken?: string;
  /** Recent activity for the status page's charts (a `History`); omitted, no charts. */
  readonly history?: { readonly intervalMs: number; view(): ChartView[] };
}

const TEXT = { "content-type": "text/plain; charset=utf-8" };

/** True when no token is needed, or `Authorization: Bearer <token>` names it (compared in full). */
function bearerOk(req: Request, token: string | undefined): boolean {
  if (token === undefined || token === "") return true;
  const given = req.headers.get("authorization") ?? "";
  const want = "Bearer " + token;
  // Every character is compared, so the time taken says nothing of where they differ.
  let diff = given.length ^ want.length;
  for (let i = 0; i < want.length; i++) diff |= want.charCodeAt(i) ^ given.charCodeAt(i);
  return diff === 0;
}
const HTML = { "content-type": "text/html; charset=utf-8" };

/** The paths of static assets (the client library and the demo). */
const ASSET_PATHS = new Set(["/client.js", "/client.d.ts", "/demo"]);

/**
 * Makes the handler for every request that is not a WebSocket upgrade.
 * `HEAD` answers like `GET` without a body; other methods get 405.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const handle = routes({
 *   name: "test", version: "1", uptimeSeconds: () => 0, engines: [],
 *   notReady: () => undefined, metrics: () => [],
 * });
 * assert.equal(handle(new Request("http://x/healthz")).status, 200);
 * assert.equal(handle(new Request("http://x/nope")).status, 404);
 * assert.equal(handle(new Request("http://x/", { method: "POST" })).status, 405);
 * ```
 */
export function routes(ctx: RouteContext): (req: Request) => Response {
  function page(req: Request, url: URL): Response {
    const path = url.pathname;
    if (ASSET_PATHS.has(path)) return assetResponse(req, path)!;
    switch (path) {
      case "/": {
        const scheme = url.protocol === "https:" ? "wss" : "ws";
        const sections: StatusSection[] = ctx.engines.map(({ engine, path }) => ({
          ...engine.status(),
          wsUrl: `${scheme}://${url.host}${path}`,
        }));
        const h = ctx.history;
        return new Response(
          statusPage({
            name: ctx.name,
            version: ctx.version,
            uptimeSeconds: ctx.uptimeSeconds(),
            sections,
            charts: h && { html: renderCharts(h.view()), refreshMs: h.intervalMs },
          }),
          { headers: HTML },
        );
      }
      case "/status.json": {
        // What the status page refreshes: counts and charts, never names.
        const counts: Record<string, number> = {};
        for (const { engine } of ctx.engines) {
          for (const [id, , value] of engine.status().counts) counts[id] = value;
        }
        const body = {
          uptime: duration(ctx.uptimeSeconds()),
          counts,
          charts: ctx.history ? renderCharts(ctx.history.view()) : "",
        };
        return new Response(JSON.stringify(body), {
          headers: { "content-type": "application/json", "cache-control": "no-store" },
        });
      }
      case "/healthz":
        return new Response("ok\n", { headers: TEXT });
      case "/readyz": {
        const why = ctx.notReady();
        if (why !== undefined) return new Response(`${why}\n`, { status: 503, headers: TEXT });
        return new Response("ready\n", { headers: TEXT });
      }
      case "/metrics":
        if (!bearerOk(req, ctx.metricsToken)) {
          return new Response("metrics need a bearer token\n", {
            status: 401,
            headers: { ...TEXT, "www-authenticate": 'Bearer realm="metrics"' },
          });
        }
        return new Response(renderMetrics(ctx.metrics()), {
          headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
        });
      case "/robots.txt":
        return new Response("User-agent: *\nDisallow: /\n", { headers: TEXT });
      default:
        return new Response(notFoundPage(path), { status: 404, headers: HTML });
    }
  }

  return (req) => {
    // An engine's own HTTP routes (PeerJS's id and peers, say) come first.
    for (const { engine } of ctx.engines) {
      const res = engine.http?.(req);
      if (res !== undefined) return res;
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      return new Response("method not allowed\n", {
        status: 405,
        headers: { ...TEXT, allow: "GET, HEAD" },
      });
    }
    const res = page(req, new URL(req.url));
    // HEAD answers like GET, without the body.
    return req.method === "HEAD"
      ? new Response(null, { status: res.status, headers: res.headers })
      : res;
  };
}
