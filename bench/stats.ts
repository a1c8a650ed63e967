/**
 * Small statistics for the load benchmark: a mergeable latency histogram,
 * Jain's fairness index and number formatting.
 *
 * @module
 */

/** Values below this are stored exactly; above, with 64 sub-buckets per power of two. */
const EXACT = 128;
const SUB = 64;
/** Largest recordable value (µs): about 35 minutes; larger values are clamped. */
const MAX_VALUE = 2 ** 31 - 1;
/** Bucket count: the exact range plus 64 per power of two from 2^7 up to 2^31. */
const BUCKETS = EXACT + (31 - 7) * SUB;

function bucketOf(v: number): number {
  if (v < EXACT) return v;
  const msb = 31 - Math.clz32(v);
  const shift = msb - 6;
  return EXACT + (shift - 1) * SUB + ((v >>> shift) - SUB);
}

/** The middle of bucket `i`, in the recorded unit. */
function valueOf(i: number): number {
  if (i < EXACT) return i;
  const k = i - EXACT;
  const shift = Math.floor(k / SUB) + 1;
  const top = SUB + (k % SUB);
  const low = top * 2 ** shift;
  return low + (2 ** shift - 1) / 2;
}

/**
 * A log-linear histogram of non-negative integers (here: microseconds), with
 * under 1.6 % relative error per bucket, so millions of samples cost 7 KB and
 * histograms from several generator workers can be summed.
 */
export class Histogram {
  /** Samples per bucket. */
  readonly counts: Float64Array;
  /** Samples recorded. */
  total = 0;
  /** Largest sample, exact. */
  max = 0;

  /** An empty histogram, or one restored from {@link Histogram.toJSON} output. */
  constructor(from?: { counts: number[] | Float64Array; total: number; max: number }) {
    this.counts = new Float64Array(BUCKETS);
    if (from !== undefined) {
      this.counts.set(from.counts);
      this.total = from.total;
      this.max = from.max;
    }
  }

  /** Records one sample (rounded, clamped to the recordable range). */
  record(value: number): void {
    const v = Math.min(MAX_VALUE, Math.max(0, Math.round(value)));
    this.counts[bucketOf(v)]++;
    this.total++;
    if (v > this.max) this.max = v;
  }

  /** Adds another histogram's samples to this one. */
  merge(other: Histogram): void {
    for (let i = 0; i < BUCKETS; i++) this.counts[i] += other.counts[i];
    this.total += other.total;
    if (other.max > this.max) this.max = other.max;
  }

  /** Forgets every sample. */
  reset(): void {
    this.counts.fill(0);
    this.total = 0;
    this.max = 0;
  }

  /** The value at quantile `q` (0..1); 0 when empty; never above {@link max}. */
  quantile(q: number): number {
    if (this.total === 0) return 0;
    const rank = Math.max(1, Math.ceil(q * this.total));
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.counts[i];
      if (seen >= rank) return Math.min(valueOf(i), this.max);
    }
    return this.max;
  }

  /** A structured-clone friendly copy (for worker messages). */
  toJSON(): { counts: number[]; total: number; max: number } {
    return { counts: Array.from(this.counts), total: this.total, max: this.max };
  }
}

/**
 * Jain's fairness index of `xs`: 1 when every value is equal, 1/n when one
 * value has everything; 1 for an empty or all-zero list (nothing is unfair).
 */
export function jain(xs: ArrayLike<number>): number {
  let sum = 0;
  let sq = 0;
  for (let i = 0; i < xs.length; i++) {
    sum += xs[i];
    sq += xs[i] * xs[i];
  }
  if (sq === 0) return 1;
  return (sum * sum) / (xs.length * sq);
}

/** Rounds to `digits` significant digits (keeps JSON lines short and readable). */
export function sig(x: number, digits = 4): number {
  if (!Number.isFinite(x) || x === 0) return x;
  return Number(x.toPrecision(digits));
}

/** `12345.6` → `"12,346"`. */
export function grouped(x: number): string {
  return Math.round(x).toLocaleString("en-US");
}

/**
 * For join storms run interleaved: the median of each round's ratio of the
 * two targets' times. Storms of one round run seconds apart, so a slow
 * minute of the machine slows both; the ratio of the two medians can pair
 * a fast storm of one target with a slow storm of the other.
 */
export function pairedRatio(
  server: Record<string, unknown>,
  bound: Record<string, unknown>,
): number | undefined {
  const a = server.runs_total_s;
  const b = bound.runs_total_s;
  if (!server.interleaved || !bound.interleaved || !Array.isArray(a) || !Array.isArray(b)) {
    return undefined;
  }
  if (a.length !== b.length || a.length === 0) return undefined;
  const r = a.map((x, i) => (x as number) / (b[i] as number)).sort((x, y) => x - y);
  const mid = r.length >> 1;
  return r.length % 2 === 1 ? r[mid] : (r[mid - 1] + r[mid]) / 2;
}
