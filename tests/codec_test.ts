/**
 * The wire codec and naming rules: decoding every call shape and fault,
 * binary frames, and the raw-data fast path of `encodeSignal`.
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import {
  type Call,
  CALL_NAMES,
  decode,
  encodeBye,
  encodeError,
  encodeIce,
  encodeIdent,
  encodeJoin,
  encodeLeave,
  encodeSignal,
  encodeStun,
  ERROR_CODES,
  type Fault,
  isFault,
  PONG,
} from "../lib/diva/codec.ts";
import { globalColon, isJsonPlain, isName, MAX_NAME_LENGTH } from "../lib/diva/names.ts";

const enc = new TextEncoder();

function fault(x: Call | Fault): Fault {
  assert.ok(isFault(x), `expected a fault, got ${JSON.stringify(x)}`);
  return x;
}

function call(x: Call | Fault): Call {
  assert.ok(!isFault(x), `expected a call, got ${JSON.stringify(x)}`);
  return x;
}

function signalCall(raw: string | Uint8Array): Call & { 0: "signal" } {
  const c = call(decode(raw));
  assert.equal(c[0], "signal");
  return c as Call & { 0: "signal" };
}

// ---------------------------------------------------------------- names

/** The naming rule of PROTOCOL.md, written independently of lib/diva/names.ts. */
const NAME_RE = /^[\x21-\x39\x3b-\x7e]{1,256}$/;

Deno.test("isName: 1–256 printable ASCII characters other than ':'", () => {
  assert.equal(MAX_NAME_LENGTH, 256);
  assert.ok(isName("a"));
  assert.ok(isName("a".repeat(256)));
  assert.ok(isName("!\"#$%&'()*+,-./0123456789;<=>?@AZ[\\]^_`az{|}~"));
  for (const bad of ["", "a".repeat(257), "a:b", ":", " ", "a b", "\t", "\x7f", "é", "😀", "\0"]) {
    assert.ok(!isName(bad), JSON.stringify(bad));
  }
  for (const bad of [1, null, undefined, true, ["a"], { a: 1 }]) assert.ok(!isName(bad));
  for (let c = 0; c < 0x110; c++) {
    const s = String.fromCharCode(c);
    assert.equal(isName(s), c >= 0x21 && c <= 0x7e && c !== 0x3a, `char ${c}`);
  }
});

Deno.test("isName agrees with the rule for any string", () => {
  fc.assert(
    fc.property(
      fc.oneof(
        fc.string({ maxLength: 300 }),
        fc.string({ unit: "binary", maxLength: 20 }),
        fc.string({ minLength: 250, maxLength: 260, unit: fc.constantFrom("a", ":", " ", "~") }),
      ),
      (s) => assert.equal(isName(s), NAME_RE.test(s)),
    ),
    { numRuns: 2000 },
  );
});

Deno.test("globalColon: exactly one ':' splitting two valid names", () => {
  assert.equal(globalColon("lobby:bob"), 5);
  assert.equal(globalColon("a:b"), 1);
  const max = `${"r".repeat(256)}:${"i".repeat(256)}`;
  assert.equal(globalColon(max), 256);
  for (
    const bad of [
      "lobby",
      ":bob",
      "lobby:",
      ":",
      "a:b:c",
      "a::b",
      `${"r".repeat(257)}:i`,
      `r:${"i".repeat(257)}`,
      "a :b",
      "a:é",
      "",
    ]
  ) assert.equal(globalColon(bad), -1, bad);
  for (const bad of [1, null, undefined, ["a:b"]]) assert.equal(globalColon(bad), -1);
  fc.assert(
    fc.property(
      fc.string({ maxLength: 12, unit: fc.constantFrom("a", "b", ":", " ", '"', "é") }),
      (g) => {
        const parts = g.split(":");
        const valid = parts.length === 2 && NAME_RE.test(parts[0]) && NAME_RE.test(parts[1]);
        assert.equal(globalColon(g), valid ? parts[0].length : -1, JSON.stringify(g));
      },
    ),
    { numRuns: 2000 },
  );
});

Deno.test("isJsonPlain: names without quote or backslash", () => {
  assert.ok(isJsonPlain("lobby:bob"));
  assert.ok(!isJsonPlain('a"b'));
  assert.ok(!isJsonPlain("a\\b"));
});

// ---------------------------------------------------------------- decode: calls

Deno.test("decode: every well-formed call comes back as the parsed array", () => {
  const calls: unknown[][] = [
    ["ident"],
    ["join", "bob", "lobby"],
    ["join", "lobby"],
    ["signal", "lobby:bob", "lobby:kqzv", { type: "offer", sdp: "…" }],
    ["signal", "a:b", "a:c", null],
    ["leave", "lobby:bob"],
    ["ice"],
    ["ping"],
    ["auth", "eyJ.a.b"],
    ["challenge"],
    ["prove", "A".repeat(43), "c2lnbmF0dXJl"],
    ["session"],
    ["resume", "dG9rZW4"],
  ];
  for (const c of calls) {
    assert.deepEqual(decode(JSON.stringify(c)), c);
    assert.deepEqual(decode(enc.encode(JSON.stringify(c))), c);
    assert.deepEqual(decode(JSON.stringify(c, null, 3)), c);
  }
  assert.deepEqual(CALL_NAMES, [
    "ident",
    "join",
    "signal",
    "leave",
    "ice",
    "ping",
    "auth",
    "challenge",
    "prove",
    "session",
    "resume",
  ]);
});

Deno.test("decode: signal data may be any JSON value", () => {
  fc.assert(
    fc.property(fc.jsonValue(), (data) => {
      const text = JSON.stringify(["signal", "r:a", "r:b", data]);
      assert.deepEqual(decode(text), JSON.parse(text));
    }),
    { numRuns: 500 },
  );
});

// ---------------------------------------------------------------- decode: faults

Deno.test("decode: bad-json for text that is not JSON", () => {
  for (const f of ["", "[", "ping", "['ping']", '["ping",]', '["ping"] x', "\uFEFF[1]", "{a:1}"]) {
    const x = fault(decode(f));
    assert.deepEqual([x.call, x.code], ["frame", "bad-json"], f);
    assert.ok(x.detail.length > 0);
  }
});

Deno.test("decode: bad-json for binary frames that are not UTF-8", () => {
  const bad = [
    [0xff],
    [0xfe, 0xff],
    [0x5b, 0xc3], // truncated 2-byte sequence
    [0x5b, 0x22, 0xed, 0xa0, 0x80, 0x22, 0x5d], // a surrogate, encoded
    [0x5b, 0x22, 0xc0, 0x80, 0x22, 0x5d], // overlong NUL
    [0x5b, 0x22, 0xf4, 0x90, 0x80, 0x80, 0x22, 0x5d], // above U+10FFFF
    [0x80],
  ];
  for (const b of bad) {
    const x = fault(decode(new Uint8Array(b)));
    assert.deepEqual([x.call, x.code], ["frame", "bad-json"], JSON.stringify(b));
  }
  // Valid UTF-8 that is not JSON is bad JSON too.
  assert.equal(fault(decode(enc.encode("nope"))).code, "bad-json");
  assert.equal(fault(decode(new Uint8Array())).code, "bad-json");
});

Deno.test("decode: binary frames decode multibyte UTF-8 exactly", () => {
  const c = ["signal", "r:a", "r:b", "grüße 日本 😀"];
  assert.deepEqual(decode(enc.encode(JSON.stringify(c))), c);
  // A BOM is not JSON whitespace, in binary as in text.
  const bom = new Uint8Array([0xef, 0xbb, 0xbf, ...enc.encode('["ping"]')]);
  assert.equal(fault(decode(bom)).code, "bad-json");
  assert.equal(fault(decode('\uFEFF["ping"]')).code, "bad-json");
});

Deno.test("decode: bad-frame for JSON that is not a non-empty array led by a string", () => {
  for (const f of ["{}", "[]", "[1]", "[null]", '[["ping"]]', '"ping"', "null", "0", "false"]) {
    const x = fault(decode(f));
    assert.deepEqual([x.call, x.code], ["frame", "bad-frame"], f);
  }
});

Deno.test("decode: unknown-call names the call, bounded in length", () => {
  for (
    const name of ["nope", "", "PING", "stun", "bye", "error", "pong", "__proto__", "constructor"]
  ) {
    const x = fault(decode(JSON.stringify([name, 1])));
    assert.deepEqual([x.call, x.code], [name, "unknown-call"]);
  }
  const x = fault(decode(JSON.stringify(["y".repeat(5000)])));
  assert.equal(x.code, "unknown-call");
  assert.ok(x.call.length > 0 && x.call.length <= 256 && "y".repeat(5000).startsWith(x.call));
});

Deno.test("decode: signal names are left to the broker, which checks them only on a miss", () => {
  // tests/broker_test.ts ("bad-args: malformed global idents…") checks the
  // broker answers these with bad-args.
  for (const c of [["signal", "r", "r:b", 1], ["signal", "r:a", "b", 1]]) {
    assert.deepEqual(decode(JSON.stringify(c)), c);
  }
});

Deno.test("decode: bad-args names the call for every wrong shape", () => {
  const cases: unknown[][] = [
    ["ident", 1],
    ["ice", "x"],
    ["ping", null],
    ["join"],
    ["join", "a", "b", "c"],
    ["join", 1],
    ["join", "a", 2],
    ["join", "a:b", "r"],
    ["join", "a", "r:s"],
    ["join", ""],
    ["join", "a".repeat(257)],
    ["join", "a b", "r"],
    ["join", "ä"],
    ["signal"],
    ["signal", "r:a", "r:b"],
    ["signal", "r:a", "r:b", 1, 2],
    ["signal", 1, "r:b", 1],
    ["signal", "r:a", ["r:b"], 1],
    ["leave"],
    ["leave", "r:a", "r:b"],
    ["leave", "ra"],
    ["leave", 1],
  ];
  for (const c of cases) {
    const x = fault(decode(JSON.stringify(c)));
    assert.deepEqual([x.call, x.code], [c[0], "bad-args"], JSON.stringify(c));
    assert.ok(x.detail.length > 0);
  }
});

Deno.test("decode never throws, and a fault always carries a protocol code", () => {
  const frames = fc.oneof(
    fc.string(),
    fc.string({ unit: "binary" }),
    fc.jsonValue().map((v) => JSON.stringify(v)),
    fc.tuple(fc.constantFrom(...CALL_NAMES, "x"), fc.array(fc.jsonValue({ maxDepth: 1 })))
      .map(([n, args]) => JSON.stringify([n, ...args])),
    fc.uint8Array(),
  );
  fc.assert(
    fc.property(frames, (f) => {
      const x = decode(f);
      if (isFault(x)) {
        assert.ok(ERROR_CODES.includes(x.code));
        assert.ok(["bad-json", "bad-frame", "unknown-call", "bad-args"].includes(x.code));
        assert.equal(typeof x.detail, "string");
      } else {
        assert.ok(CALL_NAMES.includes(x[0]));
        // Binary and text forms of the same frame decode alike.
        const text = typeof f === "string" ? f : new TextDecoder().decode(f);
        assert.deepEqual(decode(enc.encode(text)), x);
      }
    }),
    { numRuns: 2000 },
  );
});

// ---------------------------------------------------------------- encodeSignal

Deno.test("encodeSignal: the sender's data text is relayed verbatim", () => {
  const raw = '["signal","lobby:bob","lobby:kqzv",{"type":"offer","sdp":"v=0\\r\\n…"}]';
  assert.equal(
    encodeSignal(raw, signalCall(raw)),
    '["signal","lobby:kqzv","lobby:bob",{"type":"offer","sdp":"v=0\\r\\n…"}]',
  );
  // Text JSON.stringify would write differently is kept as the sender wrote it.
  const odd = '["signal","r:a","r:b",{"n":1.50,"u":"\\u00e9"}]';
  assert.equal(
    encodeSignal(odd, signalCall(odd)),
    '["signal","r:b","r:a",{"n":1.50,"u":"\\u00e9"}]',
  );
});

Deno.test("encodeSignal: data that looks like frame syntax stays data", () => {
  const tricky: unknown[] = [
    '","r:x","',
    "]",
    '"]',
    "\\",
    '\\"]',
    ["signal", "r:b", "r:a", 1],
    { '","': '"]' },
    "",
  ];
  for (const data of tricky) {
    for (
      const raw of [
        JSON.stringify(["signal", "r:a", "r:b", data]),
        JSON.stringify(["signal", "r:a", "r:b", data], null, 1),
      ]
    ) {
      const out = encodeSignal(raw, signalCall(raw));
      assert.deepEqual(JSON.parse(out), ["signal", "r:b", "r:a", data], raw);
    }
  }
});

Deno.test("encodeSignal: non-compact layouts relay the same data", () => {
  const layouts = [
    '[ "signal","r:a","r:b",{"x":[1,2]}]',
    '["signal" ,"r:a","r:b",{"x":[1,2]}]',
    '["signal","r:a" ,"r:b",{"x":[1,2]}]',
    '["signal","r:a","r:b" ,{"x":[1,2]}]',
    '["signal","r:a","r:b",{"x":[1,2]}] ',
    ' ["signal","r:a","r:b",{"x":[1,2]}]',
    '["signal","r:a","r:b",\n{"x":[1,2]}\n]',
    '["signal","r:\\u0061","r:b",{"x":[1,2]}]',
    '["signal","r:a","\\u0072:b",{"x":[1,2]}]',
    '["\\u0073ignal","r:a","r:b",{"x":[1,2]}]',
  ];
  for (const raw of layouts) {
    const out = encodeSignal(raw, signalCall(raw));
    assert.deepEqual(JSON.parse(out), ["signal", "r:b", "r:a", { x: [1, 2] }], raw);
  }
});

Deno.test("encodeSignal: number literals JSON.stringify cannot reproduce survive any layout", () => {
  // 1e400 parses to Infinity (re-encoded: null) and -0 to -0 (re-encoded: 0);
  // relaying the sender's text keeps them as sent, whatever the layout.
  const data = '{"big":1e400,"neg":-0,"long":12345678901234567890123}';
  const layouts = [
    `["signal","r:a","r:b",${data}]`,
    `[ "signal", "r:a", "r:b", ${data} ]`,
    `["signal","r:\\u0061","r:b",${data}]`,
    `["signal","r\\"x:a","r\\"x:b",${data}]`,
  ];
  for (const raw of layouts) {
    for (const frame of [raw, enc.encode(raw)]) {
      const out = encodeSignal(frame, signalCall(frame));
      const sent = signalCall(raw);
      assert.deepEqual(JSON.parse(out), ["signal", sent[2], sent[1], JSON.parse(data)], raw);
      assert.ok(out.includes(data), `data text not kept verbatim: ${out}`);
    }
  }
});

/** Valid names drawn from an alphabet that includes every JSON-significant character. */
const nameArb = fc.string({
  minLength: 1,
  maxLength: 6,
  unit: fc.constantFrom("a", "Z", "0", '"', "\\", ",", "[", "]", "{", "}", "/", "~"),
});

Deno.test("encodeSignal: compact, pretty and binary frames give the same parsed result", () => {
  fc.assert(
    fc.property(nameArb, nameArb, nameArb, fc.jsonValue(), (room, a, b, data) => {
      const from = `${room}:${a}`;
      const to = `${room}:${b}`;
      // What a receiver must see: the sender's data as JSON carries it.
      const expected = ["signal", to, from, JSON.parse(JSON.stringify(data))];
      const compact = JSON.stringify(["signal", from, to, data]);
      const frames: (string | Uint8Array)[] = [
        compact,
        JSON.stringify(["signal", from, to, data], null, 2),
        JSON.stringify(["signal", from, to, data], null, "\t"),
        enc.encode(compact),
        ` ${compact}`,
      ];
      for (const raw of frames) {
        const out = encodeSignal(raw, signalCall(raw));
        assert.deepEqual(JSON.parse(out), expected);
      }
      // Plain names in a compact frame take the fast path: the relayed text is
      // the sender's text with the two names swapped.
      if (isJsonPlain(from) && isJsonPlain(to)) {
        const out = encodeSignal(compact, signalCall(compact));
        const dataText = compact.slice(`["signal","${from}","${to}",`.length, -1);
        assert.equal(out, `["signal","${to}","${from}",${dataText}]`);
      }
    }),
    { numRuns: 1000 },
  );
});

// ---------------------------------------------------------------- other encoders

Deno.test("encoders: every server message is the documented JSON array", () => {
  assert.deepEqual(JSON.parse(encodeIdent("kqzvabc")), ["ident", "kqzvabc"]);
  assert.deepEqual(JSON.parse(encodeJoin("lobby:bob")), ["join", "lobby:bob"]);
  assert.deepEqual(JSON.parse(encodeStun("r:a", "r:b", true)), ["stun", "r:a", "r:b", true]);
  assert.deepEqual(JSON.parse(encodeStun("r:a", "r:b", false)), ["stun", "r:a", "r:b", false]);
  assert.deepEqual(JSON.parse(encodeLeave("r:a")), ["leave", "r:a"]);
  assert.deepEqual(JSON.parse(encodeBye("r:a", "r:b")), ["bye", "r:a", "r:b"]);
  assert.deepEqual(JSON.parse(PONG), ["pong"]);
  assert.deepEqual(JSON.parse(encodeError("join", "ident-taken", "r:a")), [
    "error",
    "join",
    "ident-taken",
    "r:a",
  ]);
  const servers = [{ urls: ["stun:s:3478"] }, { urls: "turn:t", username: "1:a", credential: "x" }];
  assert.deepEqual(JSON.parse(encodeIce(servers)), ["ice", servers]);
  assert.deepEqual(JSON.parse(encodeIce([])), ["ice", []]);
});

Deno.test("encoders: names with quote and backslash are escaped", () => {
  const g = 'r"\\:a"\\';
  assert.deepEqual(JSON.parse(encodeJoin(g)), ["join", g]);
  assert.deepEqual(JSON.parse(encodeStun(g, g, true)), ["stun", g, g, true]);
  assert.deepEqual(JSON.parse(encodeLeave(g)), ["leave", g]);
  assert.deepEqual(JSON.parse(encodeBye(g, g)), ["bye", g, g]);
  assert.deepEqual(JSON.parse(encodeError('x"', "unknown-call", 'd"\\')), [
    "error",
    'x"',
    "unknown-call",
    'd"\\',
  ]);
});

Deno.test("ERROR_CODES lists every code of PROTOCOL.md, in its order", () => {
  assert.deepEqual(ERROR_CODES, [
    "bad-json",
    "bad-frame",
    "unknown-call",
    "bad-args",
    "no-ident",
    "ident-taken",
    "not-owner",
    "cross-room",
    "unknown-peer",
    "limit",
    "rate-limited",
    "too-large",
    "forbidden",
    "unavailable",
  ]);
});

Deno.test("encodeSignal: names written with escapes are never copied as raw text", () => {
  const frames = [
    String.raw`["signal","\u0061:b","a:c",1]`,
    String.raw`["signal","a:b","\u0061:c",{"x":[1,2]}]`,
    String.raw`["signal","a\u003ab","a:c","d"]`,
    String.raw`["signal","a:\u0062","a:\u0063",null]`,
  ];
  for (const raw of frames) {
    const call = decode(raw);
    assert.ok(!isFault(call) && call[0] === "signal", raw);
    const out = encodeSignal(raw, call as Call & { 0: "signal" });
    const [, from, to, data] = JSON.parse(raw);
    assert.deepEqual(JSON.parse(out), ["signal", to, from, data], raw);
    assert.ok(!out.includes("\\u00"), `escaped name text copied: ${out}`);
  }
});
