/**
 * Static assets the server serves: the client library at `/client.js` (with
 * its types at `/client.d.ts`) and the demo page at `/demo`.
 *
 * The files are imported as text, so they are part of the module graph:
 * `deno compile` embeds them and no read permission is needed at run time.
 *
 * @module
 */

import clientJs from "../client/client.js" with { type: "text" };
import clientDts from "../client/client.d.ts" with { type: "text" };
import demoHtml from "../client/demo.html" with { type: "text" };

/** A static file: its body and headers. */
interface Asset {
  readonly body: string;
  readonly headers: Readonly<Record<string, string>>;
}

/** A weak validator from the content (FNV-1a), so browsers revalidate cheaply. */
function etag(text: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return `"${(h >>> 0).toString(16)}-${text.length.toString(16)}"`;
}

function asset(body: string, type: string, extra: Record<string, string> = {}): Asset {
  return {
    body,
    headers: {
      "content-type": type,
      "cache-control": "no-cache",
      etag: etag(body),
      ...extra,
    },
  };
}

// Pages on other origins import the library as a module, which needs CORS.
const CORS = { "access-control-allow-origin": "*" };

const ASSETS: ReadonlyMap<string, Asset> = new Map([
  [
    "/client.js",
    asset(clientJs, "text/javascript; charset=utf-8", {
      ...CORS,
      // Deno importing the URL finds the types here.
      "x-typescript-types": "/client.d.ts",
    }),
  ],
  ["/client.d.ts", asset(clientDts, "application/typescript; charset=utf-8", CORS)],
  ["/demo", asset(demoHtml, "text/html; charset=utf-8")],
]);

/** The source of the client library, exactly as served at `/client.js`. */
export const CLIENT_JS: string = clientJs;

/**
 * The response for a static asset at `path`, or `undefined` if there is none.
 * Answers `304` when the request's `if-none-match` matches.
 */
export function assetResponse(req: Request, path: string): Response | undefined {
  const a = ASSETS.get(path);
  if (a === undefined) return undefined;
  if (req.headers.get("if-none-match") === a.headers.etag) {
    return new Response(null, { status: 304, headers: a.headers });
  }
  return new Response(a.body, { headers: a.headers });
}
