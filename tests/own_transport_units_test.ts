/**
 * The pure parts of our own transport, checked as properties: however the
 * bytes are split, the HTTP parser and the frame decoder see the same
 * requests and messages; the encoder and decoder agree at every length
 * boundary; random input never throws.
 *
 * @module
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { createHash } from "node:crypto";
import { type ParseResult, RequestParser } from "../lib/transport/own/http1.ts";
import { type TimerEntry, TimerHeap } from "../lib/transport/own/timer_heap.ts";
import { ReadScheduler } from "../lib/transport/own/read_scheduler.ts";
import { acceptKey, sha1Base64 } from "../lib/transport/own/ws_handshake.ts";
import { FrameBatch, unmask, WsDecoder, type WsEvent } from "../lib/transport/own/ws_frame.ts";
import { clientFrame } from "./helpers/own_raw.ts";

const encoder = new TextEncoder();

/** Splits `bytes` at the given cut points (taken modulo its length). */
function split(bytes: Uint8Array, cuts: number[]): Uint8Array[] {
  const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  const out: Uint8Array[] = [];
  let from = 0;
  for (const p of points) {
    out.push(bytes.slice(from, p));
    from = p;
  }
  out.push(bytes.slice(from));
  return out;
}

/**
 * Parses `chunks` in turn. With `reuse`, each goes through one buffer that is
 * overwritten by the next read and scribbled over in between, as a
 * connection's reader does: the parser may only keep what it copied.
 */
function parseAll(chunks: Uint8Array[], reuse = false): ParseResult[] {
  const p = new RequestParser();
  const out: ParseResult[] = [];
  const shared = new Uint8Array(Math.max(0, ...chunks.map((c) => c.length)));
  for (const chunk of chunks) {
    let c = chunk;
    if (reuse) {
      shared.fill(0x7e);
      shared.set(chunk);
      c = shared.subarray(0, chunk.length);
    }
    p.push(c);
    for (let r = p.next(); r.kind !== "more"; r = p.next()) {
      out.push(r);
      if (r.kind === "error") return out;
    }
  }
  return out;
}

Deno.test("HTTP parser: pipelined requests parse the same however the bytes are split", () => {
  const stream = encoder.encode(
    "GET /a HTTP/1.1\r\nHost: x\r\nAccept: a\r\nACCEPT: b\r\n\r\n" +
      "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world" +
      "\r\nHEAD /c?q=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
  );
  const whole = parseAll([stream]);
  assert.deepEqual(whole.map((r) => r.kind === "head" && [r.head.method, r.head.target]), [
    ["GET", "/a"],
    ["POST", "/b"],
    ["HEAD", "/c?q=1"],
  ]);
  fc.assert(
    fc.property(fc.array(fc.nat(), { maxLength: 20 }), fc.boolean(), (cuts, reuse) => {
      assert.deepEqual(parseAll(split(stream, cuts), reuse), whole);
    }),
  );
  // Byte by byte too, in fresh chunks and through one reused buffer.
  const bytes = [...stream].map((b) => new Uint8Array([b]));
  assert.deepEqual(parseAll(bytes), whole);
  assert.deepEqual(parseAll(bytes, true), whole);
});

Deno.test("HTTP parser: arbitrary bytes never throw and never yield an unknown status", () => {
  const statuses = new Set([400, 411, 413, 414, 431, 505]);
  fc.assert(
    fc.property(fc.array(fc.uint8Array({ maxLength: 300 }), { maxLength: 8 }), (chunks) => {
      for (const r of parseAll(chunks)) {
        if (r.kind === "error") assert.ok(statuses.has(r.status), String(r.status));
      }
    }),
  );
  // And heads built from near-valid pieces.
  const piece = fc.constantFrom(
    "GET",
    " ",
    "/",
    "HTTP/1.1",
    "\r\n",
    "\n",
    "Host: x",
    ":",
    "Content-Length: 3",
    "Transfer-Encoding: chunked",
    "\t",
    "\x00",
    "é",
  );
  fc.assert(
    fc.property(fc.array(piece, { maxLength: 30 }), (parts) => {
      for (const r of parseAll([encoder.encode(parts.join(""))])) {
        if (r.kind === "error") assert.ok(statuses.has(r.status));
      }
    }),
  );
});

/** A message to send as client frames, with where to fragment it and pings to insert. */
const messageArb = fc.record({
  binary: fc.boolean(),
  text: fc.string({ unit: "grapheme", maxLength: 300 }),
  bytes: fc.uint8Array({ maxLength: 300 }),
  cuts: fc.array(fc.nat(), { maxLength: 4 }),
  pingAfter: fc.array(fc.boolean(), { maxLength: 5 }),
});

Deno.test("frame decoder: messages and interleaved control frames survive any split", () => {
  fc.assert(
    fc.property(fc.array(messageArb, { maxLength: 6 }), fc.array(fc.nat(), { maxLength: 30 }), (
      msgs,
      cuts,
    ) => {
      const frames: Uint8Array[] = [];
      const expected: WsEvent[] = [];
      for (const m of msgs) {
        const payload = m.binary ? m.bytes : encoder.encode(m.text);
        // Fragments may split a UTF-8 sequence: the decoder must not care.
        const parts = split(payload, m.cuts);
        parts.forEach((part, i) => {
          const opcode = i === 0 ? (m.binary ? 0x2 : 0x1) : 0x0;
          frames.push(clientFrame(opcode, part, { fin: i === parts.length - 1 }));
          if (m.pingAfter[i] && i < parts.length - 1) {
            frames.push(clientFrame(0x9, `p${i}`));
            expected.push({ type: "ping", data: encoder.encode(`p${i}`) });
          }
        });
        expected.push(
          m.binary
            ? { type: "binary", data: new Uint8Array(m.bytes) }
            : { type: "text", data: m.text },
        );
      }
      frames.push(clientFrame(0x8, new Uint8Array([0x03, 0xe8, 0x6f, 0x6b])));
      expected.push({ type: "close", code: 1000, reason: "ok" });
      const all = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
      let at = 0;
      for (const f of frames) {
        all.set(f, at);
        at += f.length;
      }
      const d = new WsDecoder();
      const got = split(all, cuts).flatMap((c) => d.feed(c));
      assert.deepEqual(got, expected);
    }),
  );
});

Deno.test("frame decoder: arbitrary bytes never throw; a failure ends the stream", () => {
  fc.assert(
    fc.property(fc.array(fc.uint8Array({ maxLength: 200 }), { maxLength: 6 }), (chunks) => {
      const d = new WsDecoder({ maxMessageBytes: 1000 });
      let ended = false;
      for (const c of chunks) {
        const evs = d.feed(c);
        if (ended) assert.deepEqual(evs, []);
        if (evs.some((e) => e.type === "fail" || e.type === "close")) ended = true;
      }
    }),
  );
});

Deno.test("encoder and decoder agree at every length boundary, text and binary", () => {
  const lengths = [0, 1, 125, 126, 127, 65535, 65536, 70000];
  for (const n of lengths) {
    const b = new FrameBatch();
    const bytes = new Uint8Array(n).map((_, i) => i & 0xff);
    b.binary(bytes);
    // Multi-byte text whose byte length crosses the header-size boundaries.
    const text = "é".repeat(Math.ceil(n / 2)) + "✓".repeat(n % 3);
    b.text(text);
    b.text("a".repeat(n));
    b.ping(new Uint8Array([1, 2]));
    b.close(4001, "bye");
    const d = new WsDecoder({ requireMask: false, maxMessageBytes: 1 << 20 });
    assert.deepEqual(d.feed(b.take()), [
      { type: "binary", data: bytes },
      { type: "text", data: text },
      { type: "text", data: "a".repeat(n) },
      { type: "ping", data: new Uint8Array([1, 2]) },
      { type: "close", code: 4001, reason: "bye" },
    ], `length ${n}`);
  }
  fc.assert(
    fc.property(fc.string({ unit: "grapheme", maxLength: 2000 }), (s) => {
      const b = new FrameBatch();
      b.text(s);
      const d = new WsDecoder({ requireMask: false });
      assert.deepEqual(d.feed(b.take()), [{ type: "text", data: s }]);
    }),
  );
});

Deno.test("unmask matches a byte loop at every alignment and phase", () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 0, maxLength: 300 }),
      fc.nat(7),
      fc.nat(3),
      fc.uint8Array({ minLength: 4, maxLength: 4 }),
      (data, offset, phase, mask) => {
        const buf = new Uint8Array(data.length + 8);
        const view = buf.subarray(offset, offset + data.length);
        view.set(data);
        unmask(view, mask, phase);
        const want = data.map((b, i) => b ^ mask[(phase + i) & 3]);
        assert.deepEqual(view, want);
      },
    ),
  );
});

Deno.test("read scheduler: waiters are served in order, a fixed number per turn", () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 8 }), fc.integer({ min: 0, max: 40 }), (per, n) => {
      const turns: (() => void)[] = [];
      const s = new ReadScheduler({ readsPerTurn: per, defer: (fn) => turns.push(fn) });
      const order: number[] = [];
      let immediate = 0;
      for (let i = 0; i < n; i++) {
        if (s.acquire()) immediate++;
        else s.wait(() => order.push(i));
      }
      assert.equal(immediate, Math.min(n, per));
      let rounds = 0;
      while (turns.length > 0) {
        const before = order.length;
        turns.shift()!();
        assert.ok(order.length - before <= per);
        rounds++;
      }
      assert.deepEqual(order, [...Array(n - immediate).keys()].map((k) => k + immediate));
      assert.equal(rounds, Math.ceil((n - immediate) / per));
    }),
  );
});

Deno.test("HTTP parser: header bytes 0x80–0xff come through as the same char codes", () => {
  // obs-text (RFC 9110 §5.5): one char per byte, as Headers takes a ByteString;
  // windows-1252 would turn 0x80 into U+20AC, which Headers refuses.
  const value = [0x61, 0x80, 0x9f, 0xa0, 0xe9, 0xff];
  const head = new Uint8Array([
    ...encoder.encode("GET /caf\u0065 HTTP/1.1\r\nHost: x\r\nX-Name: "),
    ...value,
    ...encoder.encode("\r\n\r\n"),
  ]);
  const [r] = parseAll([head]);
  assert.equal(r.kind, "head");
  if (r.kind !== "head") return;
  const got = r.head.headers.find(([n]) => n === "x-name")![1];
  assert.deepEqual([...got].map((c) => c.charCodeAt(0)), value);
  assert.equal(new Headers(r.head.headers).get("x-name"), got);
  // A long value (past one fromCharCode batch) stays whole.
  const long = "v".repeat(10_000);
  const [big] = parseAll([encoder.encode(`GET / HTTP/1.1\r\nHost: x\r\nX-Long: ${long}\r\n\r\n`)]);
  assert.equal(big.kind === "head" && big.head.headers[1][1], long);
});

Deno.test("frame batch: a written batch's buffer holds the next one; never while bytes are queued", () => {
  const b = new FrameBatch();
  // Frames no longer than the first fit its buffer.
  b.text("first");
  const one = b.take();
  b.recycle(one);
  b.text("again");
  const two = b.take();
  assert.equal(two.buffer, one.buffer, "the written buffer was used again");
  assert.equal(new TextDecoder().decode(two.subarray(2)), "again");
  // Appended while the write was in flight: those bytes have a buffer of
  // their own, and the written one is not taken back over them.
  b.text("third");
  b.recycle(two);
  const three = b.take();
  assert.notEqual(three.buffer, two.buffer);
  assert.equal(new TextDecoder().decode(three.subarray(2)), "third");
  // A big batch's buffer is let go: an idle socket keeps at most a small one.
  b.text("x".repeat(10_000));
  const big = b.take();
  b.recycle(big);
  b.text("y");
  assert.notEqual(b.take().buffer, big.buffer);
});

Deno.test("timer heap: every armed entry fires once, in deadline order, never early, never after clear", () => {
  type Op = { kind: "set"; who: number; ms: number } | { kind: "clear"; who: number } | {
    kind: "advance";
    ms: number;
  };
  const op: fc.Arbitrary<Op> = fc.oneof(
    fc.record({ kind: fc.constant("set" as const), who: fc.nat(7), ms: fc.nat(50) }),
    fc.record({ kind: fc.constant("clear" as const), who: fc.nat(7) }),
    fc.record({ kind: fc.constant("advance" as const), ms: fc.nat(30) }),
  );
  fc.assert(
    fc.property(fc.array(op, { maxLength: 60 }), (ops) => {
      let now = 0;
      let timer: { fn: () => void; at: number } | undefined;
      const heap = new TimerHeap({
        now: () => now,
        schedule: (fn, ms) => (timer = { fn, at: now + ms }),
        cancel: (h) => {
          if (timer === h) timer = undefined;
        },
      });
      const due = new Map<number, number>(); // the model: who -> deadline
      const fired: { who: number; at: number; deadline: number }[] = [];
      const entries = Array.from({ length: 8 }, (_, who): TimerEntry => ({
        deadline: 0,
        slot: -1,
        fire() {
          assert.ok(due.has(who), `entry ${who} fired without being armed`);
          fired.push({ who, at: now, deadline: due.get(who)! });
          due.delete(who);
        },
      }));
      for (const o of ops) {
        if (o.kind === "set") {
          heap.set(entries[o.who], o.ms);
          due.set(o.who, now + o.ms);
        } else if (o.kind === "clear") {
          heap.clear(entries[o.who]);
          due.delete(o.who);
        } else {
          now += o.ms;
          // The runtime timer runs once it is due (it may find nothing to do).
          while (timer !== undefined && timer.at <= now) {
            const t = timer;
            timer = undefined;
            t.fn();
          }
          for (const [who, deadline] of due) {
            assert.ok(deadline > now, `entry ${who} overdue at ${now} (deadline ${deadline})`);
          }
        }
        assert.equal(heap.size, due.size);
        if (due.size > 0) assert.ok(timer !== undefined, "armed entries but no runtime timer");
        if (due.size === 0) assert.equal(timer, undefined, "a timer left with nothing armed");
      }
      for (const f of fired) assert.ok(f.at >= f.deadline, "fired early");
      const order = fired.map((f) => f.deadline);
      for (let i = 1; i < order.length; i++) {
        if (fired[i].at === fired[i - 1].at) assert.ok(order[i] >= order[i - 1], "out of order");
      }
    }),
  );
});

Deno.test("accept key: the JavaScript SHA-1 agrees with node:crypto for any key", () => {
  const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  const reference = (k: string) => createHash("sha1").update(k + GUID).digest("base64");
  // Real keys (16 random bytes in base64), every length around the one- and
  // two-block edges, non-ASCII text and texts too long for the fast path.
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 16, maxLength: 16 }), (bytes) => {
      const key = btoa(String.fromCharCode(...bytes));
      assert.equal(acceptKey(key), reference(key));
    }),
    { numRuns: 2000 },
  );
  fc.assert(
    fc.property(fc.string({ maxLength: 140, unit: "binary" }), (key) => {
      assert.equal(acceptKey(key), reference(key));
    }),
    { numRuns: 2000 },
  );
  for (let n = 0; n <= 130; n++) {
    const key = "k".repeat(n);
    assert.equal(acceptKey(key), reference(key), `length ${n}`);
    // The JavaScript digest itself, wherever it applies (ASCII, ≤ 119 chars).
    const text = key + GUID;
    const own = sha1Base64(text);
    if (text.length <= 119) assert.equal(own, reference(key), `own digest, length ${n}`);
    else assert.equal(own, undefined);
  }
  assert.equal(sha1Base64("é" + GUID), undefined, "non-ASCII goes to node:crypto");
});
