import assert from "node:assert/strict";
import fc from "fast-check";
import { matcher } from "../lib/auth/patterns.ts";

/** The reference meaning of a pattern: `*` is `.*`, everything else literal. */
function reference(pattern: string): RegExp {
  const body = pattern.split("*").map((p) => p.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"))
    .join(".*");
  return new RegExp(`^${body}$`, "s");
}

Deno.test("patterns: several wildcards match middle parts in order", () => {
  const m = matcher(["a*b*c"]);
  assert.equal(m("abc"), true);
  assert.equal(m("a-b-c"), true);
  assert.equal(m("axxbyyc"), true);
  assert.equal(m("ac"), false);
  assert.equal(m("acb"), false);
  // The middle part may not overlap the last part.
  assert.equal(m("ab"), false);
  assert.equal(matcher(["a*bc*c"])("abc"), false);
  assert.equal(matcher(["a*bc*c"])("abcc"), true);
});

Deno.test("patterns: a first and last part must not overlap", () => {
  assert.equal(matcher(["a*a"])("a"), false);
  assert.equal(matcher(["a*a"])("aa"), true);
  assert.equal(matcher(["ab*ba"])("aba"), false);
  assert.equal(matcher(["ab*ba"])("abba"), true);
});

Deno.test("patterns: empty middle parts (**) act as one wildcard", () => {
  const m = matcher(["team-**-x"]);
  assert.equal(m("team--x"), true);
  assert.equal(m("team-red-x"), true);
  assert.equal(m("team-red"), false);
});

Deno.test("patterns: exact names and wildcards mix in one list", () => {
  const m = matcher(["lobby", "room-*-open", "*-public"]);
  assert.equal(m("lobby"), true);
  assert.equal(m("lobby2"), false);
  assert.equal(m("room-7-open"), true);
  assert.equal(m("room-7-closed"), false);
  assert.equal(m("x-public"), true);
  assert.equal(m("-public"), true);
  assert.equal(m("public"), false);
});

Deno.test("patterns: agree with a regular-expression reference on random input", () => {
  const alphabet = fc.constantFrom("a", "b", "*", "-");
  const text = fc.constantFrom("a", "b", "-");
  fc.assert(
    fc.property(
      fc.array(alphabet, { maxLength: 8 }).map((c) => c.join("")),
      fc.array(text, { maxLength: 10 }).map((c) => c.join("")),
      (pattern, name) => matcher([pattern])(name) === reference(pattern).test(name),
    ),
    { numRuns: 5000 },
  );
});
