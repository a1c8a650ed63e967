/**
 * PeerJS's HTTP API, as `peer` 1.0.2 serves it under its `path` (`/` by
 * default), with CORS on every answer:
 * - `GET <path>`: the server's description (JSON). When `<path>` is `/`,
 *   that is also this server's HTML status page, so the description is only
 *   answered to a request that asks for JSON (`Accept: application/json`)
 *   or carries PeerJS's query (`key`, `ts` or `version`); any other request
 *   passes on to the status page. The same holds for `<path>` without its
 *   trailing slash (`/myapp` for `/myapp/`), so that no other route is
 *   shadowed; `<path>` itself, when it is not `/`, always answers.
 * - `GET <path><key>/id`: a fresh random id (a UUID, as `text/html`, as
 *   `peer` does). *Differs:* the key must be one the server serves (`peer`
 *   1.0.2 does not check it): another gets 401. *Differs:* the id is not
 *   checked against the ids held (`peer` draws again on a clash): a v4 UUID
 *   does not collide in practice, and a clash would be answered `ID-TAKEN`.
 * - `GET <path><key>/peers`: the ids held under the key, as JSON, when
 *   discovery is on; 401 when it is off (the default) or the key unknown.
 * - `OPTIONS` on any of them: a CORS preflight, 204. *Differs:* it allows
 *   `GET,HEAD` (the `cors` package's default lists every method, which the
 *   API does not serve), and CORS headers are only given on the API's own
 *   routes (`peer` gives them on every path under its `path`).
 *
 * `HEAD` answers like `GET` without the body; other methods pass on (the
 * server answers 405). CORS reflects the request's `Origin` (as `peer`'s
 * `origin: true`), or, when the server has an origin allowlist, only an
 * origin on it.
 *
 * @module
 */

import { DESCRIPTION } from "./codec.ts";

/** The routes of the API, for metrics. */
export const HTTP_ROUTES = ["description", "id", "peers", "preflight"] as const;

/** One of {@link HTTP_ROUTES}. */
export type HttpRoute = typeof HTTP_ROUTES[number];

/** Counts of the API's answers. */
export interface HttpCounters {
  /** Requests answered, by route. */
  readonly requests: Record<HttpRoute, number>;
  /** Requests answered 401 (an unknown key, or discovery off). */
  unauthorized: number;
}

/** What the API answers from. */
export interface PeerjsHttpOptions {
  /** The base path, starting and ending with `/` (e.g. `/` or `/myapp/`). */
  readonly path: string;
  /** The keys the server serves. */
  readonly keys: ReadonlySet<string>;
  /** Answer `<key>/peers` with the ids held. */
  readonly allowDiscovery: boolean;
  /** Origins CORS answers are for; empty for any. */
  readonly corsOrigins: readonly string[];
  /** Makes a fresh id. */
  readonly newId: () => string;
  /** The ids held under a key. */
  readonly ids: (key: string) => string[];
  /** Counts the answers. */
  readonly counters: HttpCounters;
}

const JSON_TYPE = "application/json; charset=utf-8";

/** True when a request for `/` is meant for PeerJS rather than for people. */
function wantsPeerjs(req: Request, url: URL): boolean {
  if ((req.headers.get("accept") ?? "").toLowerCase().includes("application/json")) return true;
  const q = url.searchParams;
  return q.has("key") || q.has("ts") || q.has("version");
}

/**
 * Makes the API's handler: a response, or `undefined` for a request that is
 * not the API's.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const handle = peerjsHttp({
 *   path: "/", keys: new Set(["peerjs"]), allowDiscovery: false, corsOrigins: [],
 *   newId: () => "fresh-id", ids: () => [],
 *   counters: { requests: { description: 0, id: 0, peers: 0, preflight: 0 }, unauthorized: 0 },
 * });
 * assert.equal(await handle(new Request("http://x/peerjs/id"))!.text(), "fresh-id");
 * assert.equal(handle(new Request("http://x/peerjs/peers"))!.status, 401);
 * assert.equal(handle(new Request("http://x/")), undefined); // the status page's
 * ```
 */
export function peerjsHttp(o: PeerjsHttpOptions): (req: Request) => Response | undefined {
  const base = o.path;
  const bare = base === "/" ? "/" : base.slice(0, -1);
  const anyOrigin = o.corsOrigins.length === 0;
  const origins = new Set(o.corsOrigins);

  function cors(req: Request, headers: Record<string, string>): Headers {
    const h = new Headers(headers);
    const origin = req.headers.get("origin");
    if (origin !== null && (anyOrigin || origins.has(origin))) {
      h.set("access-control-allow-origin", origin);
    }
    h.append("vary", "Origin");
    return h;
  }

  function answer(
    req: Request,
    status: number,
    body: string,
    headers: Record<string, string>,
  ): Response {
    if (status === 401) o.counters.unauthorized++;
    const h = cors(req, headers);
    return new Response(req.method === "HEAD" ? null : body, { status, headers: h });
  }

  function route(req: Request, url: URL): [HttpRoute, string] | undefined {
    const p = url.pathname;
    if (p === bare && (base === "/" || p !== base)) {
      return wantsPeerjs(req, url) ? ["description", ""] : undefined;
    }
    if (p === base) return ["description", ""];
    if (!p.startsWith(base)) return undefined;
    const m = /^([^/]+)\/(id|peers)$/.exec(p.slice(base.length));
    return m === null ? undefined : [m[2] as HttpRoute, m[1]];
  }

  return (req) => {
    const url = new URL(req.url);
    const found = route(req, url);
    if (found === undefined) return undefined;
    const [r, key] = found;
    if (req.method === "OPTIONS") {
      o.counters.requests.preflight++;
      const h = cors(req, { "access-control-allow-methods": "GET,HEAD" });
      const asked = req.headers.get("access-control-request-headers");
      if (asked !== null) {
        h.set("access-control-allow-headers", asked);
        h.append("vary", "Access-Control-Request-Headers");
      }
      h.set("content-length", "0");
      return new Response(null, { status: 204, headers: h });
    }
    if (req.method !== "GET" && req.method !== "HEAD") return undefined;
    o.counters.requests[r]++;
    const text = { "content-type": "text/plain; charset=utf-8", "cache-control": "no-store" };
    if (r === "description") {
      return answer(req, 200, JSON.stringify(DESCRIPTION), { "content-type": JSON_TYPE });
    }
    if (!o.keys.has(key)) return answer(req, 401, "Invalid key provided\n", text);
    if (r === "id") {
      return answer(req, 200, o.newId(), {
        "content-type": "text/html; charset=utf-8",
        "cache-control": "no-store",
      });
    }
    if (!o.allowDiscovery) return answer(req, 401, "Unauthorized\n", text);
    return answer(req, 200, JSON.stringify(o.ids(key)), {
      "content-type": JSON_TYPE,
      "cache-control": "no-store",
    });
  };
}
