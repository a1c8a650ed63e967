/**
 * Message sizes in bytes, as they travel: UTF-8 for text, as is for binary.
 *
 * @module
 */

/**
 * True when `data` takes more than `max` bytes as UTF-8. Strings are only
 * scanned when their length leaves the answer open: each UTF-16 unit is 1 to
 * 3 bytes, so `length > max` is always too large and `3 × length ≤ max`
 * never is.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.equal(utf8Exceeds("abc", 3), false);
 * assert.equal(utf8Exceeds("é", 1), true); // two bytes
 * assert.equal(utf8Exceeds(new Uint8Array(4), 3), true);
 * ```
 */
export function utf8Exceeds(data: string | Uint8Array, max: number): boolean {
  if (typeof data !== "string") return data.byteLength > max;
  const n = data.length;
  if (n > max) return true;
  if (n * 3 <= max) return false;
  let bytes = 0;
  for (let i = 0; i < n; i++) {
    const c = data.charCodeAt(i);
    if (c < 0x80) bytes += 1;
    else if (c < 0x800) bytes += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < n) {
      bytes += 4;
      i++;
    } else bytes += 3;
  }
  return bytes > max;
}

const decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/**
 * A frame as text: strings as they are, bytes decoded as strict UTF-8
 * (a byte-order mark is kept, so the text is exactly what was sent).
 * `undefined` when the bytes are not UTF-8.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.equal(frameText(new TextEncoder().encode("[1]")), "[1]");
 * assert.equal(frameText(new Uint8Array([0xff])), undefined);
 * ```
 */
export function frameText(frame: string | Uint8Array): string | undefined {
  if (typeof frame === "string") return frame;
  try {
    return decoder.decode(frame);
  } catch {
    return undefined;
  }
}

/** What {@link parseJson} answers for text that is not JSON. */
export const NOT_JSON: unique symbol = Symbol("not JSON");

/**
 * `JSON.parse` that answers {@link NOT_JSON} instead of throwing, so a
 * codec can turn bad input into its own fault without a try block each.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.deepEqual(parseJson('{"a":1}'), { a: 1 });
 * assert.equal(parseJson("{"), NOT_JSON);
 * ```
 */
export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return NOT_JSON;
  }
}
