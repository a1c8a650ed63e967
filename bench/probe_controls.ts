/**
 * What each transport candidate does, not how fast: starts the bare relay on
 * each (`--targets`, default all four) and probes, over raw TCP, the
 * controls the transport issue asks about:
 *
 * - **silent**: a connection that sends nothing — closed after how long?
 * - **slow head**: a request head that never ends (slowloris) — closed after
 *   how long, with what answer?
 * - **big head**: a 64 KiB header line — what answer?
 * - **big message**: a WebSocket text frame declaring 2 MiB (the candidates
 *   with a limit are given 1 MiB) — refused at the header (close 1009), or
 *   read whole and the socket still answering `["ping"]`?
 *
 * Each connection is watched at most `--wait` seconds (default 8, above the
 * 5 s header timeouts given). Prints one JSON line per target and a table.
 *
 * ```sh
 * deno run -A bench/probe_controls.ts
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { type BoundName, BOUNDS, isBound, startTarget } from "./target.ts";

/** What a probe saw. */
export interface ProbeResult {
  /** What the server did: `closed`, `answered …`, or `open` at the deadline. */
  outcome: string;
  /** Seconds until it did it (the deadline when `open`). */
  after_s: number;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Reads until EOF, error or `waitMs`; returns the first bytes seen and when the connection ended. */
async function watch(
  conn: Deno.Conn,
  waitMs: number,
  t0: number,
): Promise<{ first: Uint8Array | undefined; endedAt: number | undefined }> {
  const buf = new Uint8Array(64 * 1024);
  let first: Uint8Array | undefined;
  let endedAt: number | undefined;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      conn.close();
    } catch {
      // closed already
    }
  }, waitMs);
  try {
    while (true) {
      const n = await conn.read(buf);
      if (n === null) break;
      first ??= buf.slice(0, n);
    }
  } catch {
    // a reset by the server, or our own close at the deadline
  } finally {
    clearTimeout(timer);
    endedAt = performance.now();
  }
  if (!timedOut) {
    try {
      conn.close();
    } catch {
      // closed already
    }
  }
  return { first, endedAt: timedOut ? undefined : endedAt ?? t0 + waitMs };
}

function statusLine(bytes: Uint8Array | undefined): string | undefined {
  if (bytes === undefined) return undefined;
  const text = dec.decode(bytes.subarray(0, 200));
  return text.startsWith("HTTP/") ? text.split("\r\n")[0] : undefined;
}

async function timed(
  port: number,
  send: Uint8Array | undefined,
  waitMs: number,
): Promise<ProbeResult> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const t0 = performance.now();
  if (send !== undefined) await conn.write(send).catch(() => 0);
  const { first, endedAt } = await watch(conn, waitMs, t0);
  const status = statusLine(first);
  const when = ((endedAt ?? t0 + waitMs) - t0) / 1000;
  const outcome = endedAt === undefined
    ? status === undefined ? "open" : `answered ${status}, then open`
    : status === undefined
    ? "closed"
    : `answered ${status}, closed`;
  return { outcome, after_s: Math.round(when * 100) / 100 };
}

/** A raw WebSocket handshake; resolves with the connection once the 101 is read. */
async function handshake(port: number): Promise<Deno.Conn> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(enc.encode(
    "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
  ));
  const buf = new Uint8Array(4096);
  let head = "";
  while (!head.includes("\r\n\r\n")) {
    const n = await conn.read(buf);
    if (n === null) throw new Error("closed during the handshake");
    head += dec.decode(buf.subarray(0, n));
  }
  if (!head.startsWith("HTTP/1.1 101")) throw new Error(`no upgrade: ${head.split("\r\n")[0]}`);
  return conn;
}

/** A masked client text frame (mask 0, so the payload goes as is). */
function frameHeader(length: number): Uint8Array {
  if (length < 126) return new Uint8Array([0x81, 0x80 | length, 0, 0, 0, 0]);
  const h = new Uint8Array(14);
  h[0] = 0x81;
  h[1] = 0x80 | 127;
  new DataView(h.buffer).setBigUint64(2, BigInt(length));
  return h;
}

async function bigMessage(port: number, bytes: number, waitMs: number): Promise<ProbeResult> {
  const conn = await handshake(port);
  const t0 = performance.now();
  const reader = watch(conn, waitMs, t0);
  const writer = (async () => {
    await conn.write(frameHeader(bytes));
    const chunk = new Uint8Array(64 * 1024).fill(0x20);
    for (let sent = 0; sent < bytes; sent += chunk.length) {
      await conn.write(chunk.subarray(0, Math.min(chunk.length, bytes - sent)));
    }
    const ping = enc.encode('["ping"]');
    await conn.write(frameHeader(ping.length));
    await conn.write(ping);
  })().catch(() => {});
  const { first, endedAt } = await reader;
  await writer;
  const when = Math.round((((endedAt ?? t0 + waitMs) - t0) / 1000) * 100) / 100;
  if (first !== undefined && first[0] === 0x88 && first.length >= 4) {
    return { outcome: `closed ${(first[2] << 8) | first[3]}`, after_s: when };
  }
  if (first !== undefined && dec.decode(first).includes('["pong"]')) {
    return { outcome: "read whole, socket still answers", after_s: when };
  }
  return {
    outcome: endedAt === undefined ? "open, no answer" : "cut, no close frame",
    after_s: when,
  };
}

/** What the four probes of one candidate saw. */
export interface Controls {
  target: BoundName;
  transport: string;
  silent: ProbeResult;
  slow_head: ProbeResult;
  big_head: ProbeResult;
  big: ProbeResult;
}

/** Probes the bare relay on `name`; `waitMs` bounds each watch. */
export async function probe(name: BoundName, waitMs: number): Promise<Controls> {
  const target = await startTarget(name, { cpus: "", denoFlags: [], workers: 2 });
  const port = Number(new URL(target.url).port);
  try {
    const [silent, slowHead, bigHead, big] = await Promise.all([
      timed(port, undefined, waitMs),
      timed(port, enc.encode("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a"), waitMs),
      timed(
        port,
        enc.encode(`GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ${"a".repeat(64 * 1024)}\r\n\r\n`),
        waitMs,
      ),
      bigMessage(port, 2 * 1024 * 1024, waitMs),
    ]);
    return {
      target: name,
      transport: BOUNDS[name],
      silent,
      slow_head: slowHead,
      big_head: bigHead,
      big,
    };
  } finally {
    await target.stop();
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      targets: { type: "string", default: Object.keys(BOUNDS).join(",") },
      wait: { type: "string", default: "8" },
    },
    strict: true,
  });
  const waitMs = Number(values.wait) * 1000;
  const names = values.targets.split(",").map((t) => t.trim());
  for (const n of names) {
    if (!isBound(n)) throw new Error(`--targets: ${n} is not one of ${Object.keys(BOUNDS)}`);
  }
  const rows = await Promise.all((names as BoundName[]).map((n) => probe(n, waitMs)));
  const cell = (r: ProbeResult) => `${r.outcome} (${r.after_s} s)`;
  for (const r of rows) {
    console.log(JSON.stringify({ bench: "controls", wait_s: waitMs / 1000, ...r }));
    console.error(
      `${r.target.padEnd(14)} silent: ${cell(r.silent)}; slow head: ${
        cell(r.slow_head)
      }; 64 KiB header: ${cell(r.big_head)}; 2 MiB message: ${cell(r.big)}`,
    );
  }
}
