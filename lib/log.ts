/**
 * Logging setup with LogTape: human text or JSON lines on stderr.
 *
 * @module
 */

import {
  configureSync,
  getJsonLinesFormatter,
  getLogger,
  getTextFormatter,
  type LogRecord,
  resetSync,
} from "@logtape/logtape";

/** Log levels, most verbose first. */
export const LOG_LEVELS = ["trace", "debug", "info", "warning", "error", "fatal"] as const;

/** One of {@link LOG_LEVELS}. */
export type LogLevel = typeof LOG_LEVELS[number];

/** The logging calls the server makes: a message template and its values. */
export interface Log {
  /** Detail for debugging; signal payloads only ever at this level or below. */
  debug(message: string, properties?: Record<string, unknown>): void;
  /** Normal events: listening, shutdown, refusals. */
  info(message: string, properties?: Record<string, unknown>): void;
  /** Something went wrong that the server works around. */
  warn(message: string, properties?: Record<string, unknown>): void;
  /** Something failed. */
  error(message: string, properties?: Record<string, unknown>): void;
}

/** The logger of the server; categories below it name the concern. */
export function logger(...sub: string[]): Log {
  return getLogger(["signal", ...sub]);
}

/**
 * Sends log records at `level` and above to stderr, as text or JSON lines.
 * Signal payloads are only ever logged at debug level or below.
 */
export function setupLogging(level: LogLevel, format: "text" | "json"): void {
  const encoder = new TextEncoder();
  const formatter = format === "json"
    ? getJsonLinesFormatter({ message: "template" })
    : getTextFormatter({ value: (v) => (typeof v === "string" ? v : Deno.inspect(v)) });
  // A synchronous sink: log lines are short, and a crash must not lose them.
  const stderr = (record: LogRecord) => {
    Deno.stderr.writeSync(encoder.encode(formatter(record)));
  };
  resetSync();
  configureSync({
    sinks: { stderr },
    loggers: [
      { category: ["signal"], lowestLevel: level, sinks: ["stderr"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["stderr"] },
    ],
  });
}
