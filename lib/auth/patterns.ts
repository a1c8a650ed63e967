/**
 * Name patterns for grants and settings: an exact name, or a name with `*`
 * standing for any run of characters (`team-*`, `*-public`, `*`).
 *
 * @module
 */

/** True when `name` matches `pattern`, where `*` matches any run of characters. */
function matches(pattern: string, name: string): boolean {
  const parts = pattern.split("*");
  if (parts.length === 1) return pattern === name;
  const first = parts[0];
  const last = parts[parts.length - 1];
  if (name.length < first.length + last.length) return false;
  if (!name.startsWith(first) || !name.endsWith(last)) return false;
  let at = first.length;
  const end = name.length - last.length;
  for (let i = 1; i < parts.length - 1; i++) {
    const p = parts[i];
    if (p === "") continue;
    const found = name.indexOf(p, at);
    if (found < 0 || found + p.length > end) return false;
    at = found + p.length;
  }
  return true;
}

/**
 * A predicate for a list of patterns: true when any matches. Exact names
 * are looked up in a set, so a long list of plain names costs one lookup.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const allowed = matcher(["lobby", "team-*", "*-public"]);
 * assert.equal(allowed("lobby"), true);
 * assert.equal(allowed("team-red"), true);
 * assert.equal(allowed("chess-public"), true);
 * assert.equal(allowed("team"), false);
 * assert.equal(matcher([])("anything"), false);
 * assert.equal(matcher(["*"])("anything"), true);
 * ```
 */
export function matcher(patterns: readonly string[]): (name: string) => boolean {
  const exact = new Set(patterns.filter((p) => !p.includes("*")));
  const wild = patterns.filter((p) => p.includes("*"));
  if (wild.includes("*")) return () => true;
  if (wild.length === 0) return (name) => exact.has(name);
  return (name) => exact.has(name) || wild.some((p) => matches(p, name));
}
