/**
 * Measuring what clients sent to the signal server: frames with their time
 * and size, summarised per socket (peak counts in sliding windows, size
 * percentiles) and per peer pair.
 *
 * @module
 */

/** One frame a client sent to the server. */
export interface SentFrame {
  /** When it was sent, ms since the epoch (`Date.now()`). */
  t: number;
  /** Its size in UTF-8 bytes. */
  bytes: number;
  /** The call (first element), e.g. `"signal"`. */
  call: string;
  /** For `signal`: the sender's global ident. */
  from?: string;
  /** For `signal`: the receiver's global ident. */
  to?: string;
  /** For `signal`: what the data is (`offer`, `answer`, `candidate`, …). */
  kind?: string;
}

/** What a signal payload is: its `type`, or `candidate` for a bare candidate. */
export function signalKind(data: unknown): string {
  if (data === null || typeof data !== "object") return typeof data;
  const d = data as Record<string, unknown>;
  if (typeof d.type === "string") return d.type;
  return "candidate" in d ? "candidate" : "other";
}

/** The sliding windows, in ms, that {@link summarise} reports peaks for. */
export const WINDOWS_MS: readonly number[] = [100, 250, 500, 1000, 2000];

/** The most frames in any window of `ms` (half-open `[t, t + ms)`). */
export function maxInWindow(frames: readonly SentFrame[], ms: number): number {
  const ts = frames.map((f) => f.t).sort((a, b) => a - b);
  let best = 0;
  let start = 0;
  for (let end = 0; end < ts.length; end++) {
    while (ts[end] - ts[start] >= ms) start++;
    best = Math.max(best, end - start + 1);
  }
  return best;
}

/** The `p`-th percentile (0–100, nearest rank) of `values`; 0 when empty. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))];
}

/** A summary of one socket's frames. */
export interface SocketSummary {
  /** Frames of any call. */
  total: number;
  /** `signal` frames. */
  signals: number;
  /** Peak frame counts, one per entry of {@link WINDOWS_MS}. */
  peaks: number[];
  /** Frame sizes in bytes. */
  bytes: { max: number; p50: number; p99: number };
  /** From the first frame to the last, in ms. */
  spanMs: number;
}

/** Summarises the frames one socket sent. */
export function summarise(frames: readonly SentFrame[]): SocketSummary {
  const sizes = frames.map((f) => f.bytes);
  const ts = frames.map((f) => f.t);
  return {
    total: frames.length,
    signals: frames.filter((f) => f.call === "signal").length,
    peaks: WINDOWS_MS.map((w) => maxInWindow(frames, w)),
    bytes: { max: Math.max(0, ...sizes), p50: percentile(sizes, 50), p99: percentile(sizes, 99) },
    spanMs: ts.length === 0 ? 0 : Math.max(...ts) - Math.min(...ts),
  };
}

/** `signal` frames per unordered pair of global idents (both directions counted). */
export function framesPerPair(frames: readonly SentFrame[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const f of frames) {
    if (f.call !== "signal" || f.from === undefined || f.to === undefined) continue;
    const key = [f.from, f.to].sort().join(" ");
    out.set(key, (out.get(key) ?? 0) + 1);
  }
  return out;
}

/** One line per socket plus totals, for a test's log. */
export function report(
  label: string,
  sockets: readonly { name: string; frames: readonly SentFrame[]; cpuMs?: number }[],
  pairs: number,
): string {
  const lines: string[] = [];
  const all = sockets.flatMap((s) => s.frames);
  const perPair = [...framesPerPair(all).values()];
  const signals = all.filter((f) => f.call === "signal").length;
  const total = summarise(all);
  const kinds = new Map<string, number>();
  for (const f of all) if (f.kind !== undefined) kinds.set(f.kind, (kinds.get(f.kind) ?? 0) + 1);
  lines.push(
    `[${label}] frames sent by clients: ${all.length} (signal ${signals}); ` +
      `signal frames per pair (of ${pairs}): mean ${(signals / pairs).toFixed(1)}, ` +
      `max ${Math.max(0, ...perPair)}; sizes max ${total.bytes.max} B, ` +
      `p50 ${total.bytes.p50} B, p99 ${total.bytes.p99} B; signal kinds: ` +
      [...kinds].map(([k, n]) => `${k} ${n}`).join(", "),
  );
  const windows = WINDOWS_MS.map((w) => `${w}ms`).join("/");
  for (const s of sockets) {
    const m = summarise(s.frames);
    lines.push(
      `[${label}]   ${s.name}: ${m.total} frames (signal ${m.signals}) over ${m.spanMs} ms; ` +
        `peak in ${windows}: ${m.peaks.join("/")}; ` +
        `sizes max ${m.bytes.max} B, p50 ${m.bytes.p50} B, p99 ${m.bytes.p99} B` +
        (s.cpuMs === undefined ? "" : `; cpu ${s.cpuMs} ms`),
    );
  }
  return lines.join("\n");
}

/** User + system CPU time of this process so far, in ms, from /proc (undefined if unreadable). */
export function processCpuMs(): number | undefined {
  try {
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    const stat = Deno.readTextFileSync("/proc/self/stat");
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(rest[11]) + Number(rest[12])) * 10; // USER_HZ is 100 on Linux
  } catch {
    return undefined;
  }
}

/** How many file descriptors this process has open, from /proc (undefined if unreadable). */
export function openFds(): number | undefined {
  try {
    let n = 0;
    for (const _ of Deno.readDirSync("/proc/self/fd")) n++;
    return n;
  } catch {
    return undefined;
  }
}
