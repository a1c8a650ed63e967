/**
 * Where a browser can put a token on a WebSocket upgrade. A browser cannot
 * set headers on a WebSocket, so a token comes either in the URL's query
 * (`?token=…`) or as a subprotocol: `new WebSocket(url, ["jwt", token])`.
 * In the second case the server answers with the `jwt` subprotocol, which
 * the browser requires before it opens the socket.
 *
 * @module
 */

/** The subprotocol that announces a token in the next subprotocol entry. */
export const TOKEN_PROTOCOL = "jwt";

/** A token found on a request, and the subprotocol to answer with, if any. */
export interface PresentedToken {
  /** The token. */
  readonly token: string;
  /** `jwt` when the token came as a subprotocol. */
  readonly protocol?: string;
}

/**
 * The token a WebSocket upgrade carries, if any: the `token` query parameter
 * first, else the subprotocol entry after `jwt`. When the subprotocols name
 * `jwt` with no token after it, the answer still says to echo `jwt`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const q = new Request("http://x/?token=abc");
 * assert.deepEqual(presentedToken(q, new URL(q.url)), { token: "abc" });
 * const p = new Request("http://x/", { headers: { "sec-websocket-protocol": "jwt, abc" } });
 * assert.deepEqual(presentedToken(p, new URL(p.url)), { token: "abc", protocol: "jwt" });
 * const n = new Request("http://x/");
 * assert.equal(presentedToken(n, new URL(n.url)), undefined);
 * ```
 */
export function presentedToken(req: Request, url: URL): PresentedToken | undefined {
  const protocols = (req.headers.get("sec-websocket-protocol") ?? "").split(",")
    .map((p) => p.trim()).filter((p) => p !== "");
  const at = protocols.indexOf(TOKEN_PROTOCOL);
  const protocol = at >= 0 ? TOKEN_PROTOCOL : undefined;
  const query = url.searchParams.get("token");
  if (query !== null && query !== "") {
    return protocol ? { token: query, protocol } : { token: query };
  }
  const fromProtocol = at >= 0 ? protocols[at + 1] : undefined;
  if (fromProtocol !== undefined) return { token: fromProtocol, protocol };
  return protocol === undefined ? undefined : { token: "", protocol };
}
