/**
 * Just enough PromQL reading to know which series an expression selects: the
 * metric names, their label matchers, the function each is handed to, and
 * the labels of `by`/`without`/`on`/`ignoring` clauses. Used to check the
 * Grafana dashboard and the alerting rules against a live `/metrics`.
 *
 * @module
 */

/** One label matcher, e.g. `type="signal"`. */
export interface Matcher {
  /** The label. */
  readonly label: string;
  /** `=`, `!=`, `=~` or `!~`. */
  readonly op: string;
  /** The value, unquoted. */
  readonly value: string;
}

/** One vector selector. */
export interface Selector {
  /** The metric name. */
  readonly name: string;
  /** Its label matchers. */
  readonly matchers: Matcher[];
  /** The function or aggregation whose argument list it opens, if any (`rate`, `sum`…). */
  readonly fn: string | undefined;
}

/** What {@link readPromql} found. */
export interface PromqlReading {
  /** Every vector selector, in order. */
  readonly selectors: Selector[];
  /** Labels named in `by`, `without`, `on`, `ignoring`, `group_left` and `group_right`. */
  readonly groupingLabels: string[];
}

const GROUPING = new Set(["by", "without", "on", "ignoring", "group_left", "group_right"]);
const KEYWORDS = new Set(["and", "or", "unless", "offset", "bool", "inf", "nan", "atan2"]);
const AGGREGATORS = new Set([
  "sum",
  "min",
  "max",
  "avg",
  "group",
  "stddev",
  "stdvar",
  "count",
  "count_values",
  "bottomk",
  "topk",
  "quantile",
  "limitk",
  "limit_ratio",
]);

/**
 * Grafana's variables replaced by values PromQL accepts: `$__rate_interval`
 * and friends by `5m`, any other `$name` or `${name}` by `vars[name]`.
 */
export function substituteGrafana(expr: string, vars: Record<string, string>): string {
  return expr.replace(/\$__(rate_interval|interval|range)\b/g, "5m")
    .replace(/\$\{(\w+)\}|\$(\w+)/g, (m, a, b) => vars[a ?? b] ?? m);
}

/**
 * Reads the selectors of a PromQL expression.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const r = readPromql('sum by (code) (rate(x_total{a="b"}[5m])) > 2 * y offset 1h');
 * assert.deepEqual(r.selectors.map((s) => [s.name, s.fn]), [["x_total", "rate"], ["y", undefined]]);
 * assert.deepEqual(r.groupingLabels, ["code"]);
 * ```
 */
export function readPromql(expr: string): PromqlReading {
  const selectors: Selector[] = [];
  const groupingLabels: string[] = [];
  /** Significant tokens so far: identifiers and punctuation. */
  const tokens: string[] = [];
  let i = 0;
  const n = expr.length;
  const peek = (from: number) => {
    let j = from;
    while (j < n && /\s/.test(expr[j])) j++;
    return j;
  };
  const readString = (from: number): [string, number] => {
    const q = expr[from];
    let j = from + 1;
    let out = "";
    while (j < n && expr[j] !== q) {
      if (expr[j] === "\\" && q !== "`") {
        out += expr[j + 1];
        j += 2;
      } else out += expr[j++];
    }
    if (j >= n) throw new SyntaxError(`unterminated string in ${expr}`);
    return [out, j + 1];
  };
  while (i < n) {
    const c = expr[i];
    if (/\s/.test(c)) {
      i++;
    } else if (c === "#") {
      while (i < n && expr[i] !== "\n") i++;
    } else if (c === '"' || c === "'" || c === "`") {
      i = readString(i)[1];
      tokens.push("string");
    } else if (/[0-9.]/.test(c)) {
      const m = expr.slice(i).match(
        /^(0x[0-9a-f]+|\d*\.?\d+(e[+-]?\d+)?)((ms|[smhdwy])(\d+(ms|[smhdwy]))*)?/i,
      );
      if (m === null) throw new SyntaxError(`bad number at ${i} in ${expr}`);
      i += m[0].length;
      tokens.push("number");
    } else if (c === "[") {
      while (i < n && expr[i] !== "]") i++;
      i++;
    } else if (c === "{") {
      // Label matchers of the selector just read (or of a selector without a name).
      const matchers: Matcher[] = [];
      i++;
      for (;;) {
        i = peek(i);
        if (expr[i] === "}") break;
        if (expr[i] === ",") {
          i++;
          continue;
        }
        const m = expr.slice(i).match(/^([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*/);
        if (m === null) throw new SyntaxError(`bad matcher at ${i} in ${expr}`);
        i += m[0].length;
        const [value, next] = readString(i);
        i = next;
        matchers.push({ label: m[1], op: m[2], value });
      }
      i++;
      const last = selectors.at(-1);
      if (tokens.at(-1) === "selector" && last !== undefined) last.matchers.push(...matchers);
    } else if (/[a-zA-Z_:]/.test(c)) {
      const word = expr.slice(i).match(/^[a-zA-Z_:][a-zA-Z0-9_:]*/)![0];
      i += word.length;
      const next = peek(i);
      if (GROUPING.has(word)) {
        if (expr[next] === "(") {
          const close = expr.indexOf(")", next);
          const list = expr.slice(next + 1, close).split(",").map((s) => s.trim());
          groupingLabels.push(...list.filter((s) => s !== ""));
          i = close + 1;
        }
        tokens.push(word);
      } else if (KEYWORDS.has(word)) {
        tokens.push(word);
      } else if (expr[next] === "(" || AGGREGATORS.has(word)) {
        tokens.push(`fn:${word}`);
      } else {
        const fn = tokens.at(-1) === "(" && tokens.at(-2)?.startsWith("fn:")
          ? tokens.at(-2)!.slice(3)
          : tokens.at(-1) === "(" && GROUPING.has(tokens.at(-2) ?? "") &&
              tokens.at(-3)?.startsWith("fn:")
          ? tokens.at(-3)!.slice(3)
          : undefined;
        selectors.push({ name: word, matchers: [], fn });
        tokens.push("selector");
      }
    } else {
      tokens.push(c);
      i++;
    }
  }
  return { selectors, groupingLabels };
}
