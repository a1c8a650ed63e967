/**
 * The naming rules of the protocol: idents, rooms and global idents.
 *
 * @module
 */

/** Longest ident or room name the protocol allows, in characters. */
export const MAX_NAME_LENGTH = 256;

/**
 * True when `s` is a valid ident or room name: 1–256 printable ASCII
 * characters (0x21–0x7E) other than `:`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.equal(isName("lobby"), true);
 * assert.equal(isName("a:b"), false);
 * ```
 */
export function isName(s: unknown): s is string {
  if (typeof s !== "string") return false;
  const n = s.length;
  if (n === 0 || n > MAX_NAME_LENGTH) return false;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x21 || c > 0x7e || c === 0x3a) return false;
  }
  return true;
}

/**
 * Position of the `:` that splits a global ident (`room:ident`) into its two
 * valid names, or -1 when `g` is not a valid global ident.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.equal(globalColon("lobby:bob"), 5);
 * assert.equal(globalColon("lobby"), -1);
 * ```
 */
export function globalColon(g: unknown): number {
  if (typeof g !== "string") return -1;
  const n = g.length;
  if (n < 3 || n > 2 * MAX_NAME_LENGTH + 1) return -1;
  let colon = -1;
  for (let i = 0; i < n; i++) {
    const c = g.charCodeAt(i);
    if (c === 0x3a) {
      if (colon !== -1) return -1;
      colon = i;
    } else if (c < 0x21 || c > 0x7e) return -1;
  }
  if (
    colon < 1 || colon > MAX_NAME_LENGTH || n - colon - 1 < 1 || n - colon - 1 > MAX_NAME_LENGTH
  ) {
    return -1;
  }
  return colon;
}

/**
 * True when `s` needs no escaping inside a JSON string: it holds neither `"`
 * nor `\`. Valid names are printable ASCII, so this is the only difference
 * between a name and its JSON text.
 */
export function isJsonPlain(s: string): boolean {
  return s.indexOf('"') === -1 && s.indexOf("\\") === -1;
}
