/**
 * DIVA's reference client as its own process: one WebSocket, `["ident"]`,
 * then `["join", "<ident>_<n>", room]` for n = 1…count, and a simple-peer on
 * `@roamhq/wrtc` for every `stun`, with trickled signals relayed both ways
 * and no candidate filtering. Each peer sends one message over its data
 * channel once it opens.
 *
 * Run as a script:
 *
 * ```sh
 * deno run --allow-all tests/helpers/diva_reference_client.ts <wsUrl> <room> <count> <peersPerIdent>
 * ```
 *
 * It writes one JSON {@link ClientEvent} per line on stdout and, on the
 * line `close` on stdin (or at its end), destroys its peers, closes its
 * socket, writes a `report` event and exits. {@link ReferenceClient} spawns
 * and drives it from a test.
 *
 * @module
 */

import Peer from "simple-peer";
import wrtc from "@roamhq/wrtc";
import { openFds, processCpuMs, type SentFrame, signalKind } from "./frame_stats.ts";

/** What the script reports, one JSON object per stdout line. */
export type ClientEvent =
  /** All joins answered: the global idents this socket holds. */
  | { event: "joined"; t: number; idents: string[] }
  /** The data channel between `own` and `remote` opened. */
  | { event: "connected"; t: number; own: string; remote: string }
  /** `own` received `text` from `remote` over the data channel. */
  | { event: "message"; t: number; own: string; remote: string; text: string }
  /** The server answered an `error` frame. */
  | { event: "error-frame"; t: number; frame: unknown[] }
  /** A peer failed. */
  | { event: "peer-error"; t: number; own: string; remote: string; message: string }
  /** The socket closed before it was asked to. */
  | { event: "socket-closed"; t: number; code: number; reason: string }
  /** Everything the socket sent, and what it cost; the last line. */
  | {
    event: "report";
    t: number;
    frames: SentFrame[];
    connected: number;
    messages: number;
    /** Signals that arrived before the `stun` that announced their sender. */
    early: number;
    /** CPU time of the process (user + system), ms; null if unreadable. */
    cpuMs: number | null;
    /** Open file descriptors just before closing (wrtc's ICE-TCP sockets), or null. */
    fds: number | null;
    /** From the start of the process to the report, ms. */
    elapsedMs: number;
    /** How long destroying the peers and closing the socket took, ms. */
    closeMs: number;
  };

/** The text each side sends over a freshly opened channel. */
export function greeting(own: string, remote: string): string {
  return `hello ${remote} from ${own}`;
}

/** A signal payload as simple-peer emits and accepts it. */
type SignalData = Record<string, unknown>;

/** The part of simple-peer's instances used here. */
interface SimplePeer {
  signal(data: SignalData): void;
  send(data: string): void;
  destroy(): void;
  on(event: "signal", fn: (data: SignalData) => void): void;
  on(event: "connect" | "close", fn: () => void): void;
  on(event: "data", fn: (data: Uint8Array) => void): void;
  on(event: "error", fn: (e: Error) => void): void;
  readonly destroyed: boolean;
}

const SimplePeerCtor = Peer as unknown as new (opts: object) => SimplePeer;

/** Runs the client; resolves when asked to close. */
async function main(url: string, room: string, count: number): Promise<void> {
  const started = Date.now();
  const emit = (e: ClientEvent) => console.log(JSON.stringify(e));
  const frames: SentFrame[] = [];
  const peers = new Map<string, SimplePeer>();
  const early = new Map<string, SignalData[]>();
  const joined: string[] = [];
  let earlyCount = 0;
  let connected = 0;
  let messages = 0;
  let closing = false;
  const encoder = new TextEncoder();

  const ws = new WebSocket(url);
  const send = (msg: unknown[]) => {
    const text = JSON.stringify(msg);
    const f: SentFrame = {
      t: Date.now(),
      bytes: encoder.encode(text).length,
      call: String(msg[0]),
    };
    if (msg[0] === "signal") {
      f.from = String(msg[1]);
      f.to = String(msg[2]);
      f.kind = signalKind(msg[3]);
    }
    frames.push(f);
    if (ws.readyState === WebSocket.OPEN) ws.send(text);
  };
  const key = (own: string, remote: string) => `${own} ${remote}`;

  ws.onopen = () => send(["ident"]);
  ws.onclose = (e) => {
    if (!closing) emit({ event: "socket-closed", t: Date.now(), code: e.code, reason: e.reason });
  };
  ws.onmessage = (e) => {
    const msg = JSON.parse(String(e.data)) as unknown[];
    switch (msg[0]) {
      case "ident": {
        const id = String(msg[1]);
        for (let n = 1; n <= count; n++) send(["join", `${id}_${n}`, room]);
        break;
      }
      case "join":
        joined.push(String(msg[1]));
        if (joined.length === count) emit({ event: "joined", t: Date.now(), idents: joined });
        break;
      case "stun": {
        const [, own, remote, initiator] = msg as [string, string, string, boolean];
        const p = new SimplePeerCtor({ initiator, wrtc, trickle: true });
        peers.set(key(own, remote), p);
        p.on("signal", (data) => send(["signal", own, remote, data]));
        p.on("connect", () => {
          connected++;
          emit({ event: "connected", t: Date.now(), own, remote });
          p.send(greeting(own, remote));
        });
        p.on("data", (d) => {
          messages++;
          const text = new TextDecoder().decode(d);
          emit({ event: "message", t: Date.now(), own, remote, text });
        });
        p.on("error", (e) => {
          if (!closing) {
            emit({ event: "peer-error", t: Date.now(), own, remote, message: String(e) });
          }
        });
        for (const data of early.get(key(own, remote)) ?? []) p.signal(data);
        early.delete(key(own, remote));
        break;
      }
      case "signal": {
        const [, own, from, data] = msg as [string, string, string, SignalData];
        const p = peers.get(key(own, from));
        if (p === undefined) {
          earlyCount++;
          early.set(key(own, from), [...early.get(key(own, from)) ?? [], data]);
        } else if (!p.destroyed) p.signal(data);
        break;
      }
      case "bye": {
        const k = key(String(msg[1]), String(msg[2]));
        peers.get(k)?.destroy();
        peers.delete(k);
        break;
      }
      case "error":
        emit({ event: "error-frame", t: Date.now(), frame: msg });
        break;
    }
  };

  // Wait for "close" on stdin (or its end).
  const lines = Deno.stdin.readable.pipeThrough(new TextDecoderStream());
  let buf = "";
  for await (const chunk of lines) {
    buf += chunk;
    if (buf.split("\n").some((l) => l.trim() === "close")) break;
  }
  closing = true;
  const fds = openFds() ?? null;
  const cpu = processCpuMs() ?? null;
  const closeStart = Date.now();
  for (const p of peers.values()) p.destroy();
  peers.clear();
  if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.close();
  emit({
    event: "report",
    t: Date.now(),
    frames,
    connected,
    messages,
    early: earlyCount,
    cpuMs: cpu,
    fds,
    elapsedMs: Date.now() - started,
    closeMs: Date.now() - closeStart,
  });
}

/** What a test learns from one reference client process. */
export class ReferenceClient {
  /** The process. */
  readonly child: Deno.ChildProcess;
  /** Every event reported so far, in order. */
  readonly events: ClientEvent[] = [];
  /** Lines on stdout that were not events (kept for diagnosis). */
  readonly noise: string[] = [];
  /** The global idents it holds, once joined. */
  idents: string[] = [];
  /** `own remote` for every data channel that opened. */
  readonly connected = new Set<string>();
  /** `own remote` for every greeting `own` received from `remote`. */
  readonly greeted = new Set<string>();
  /** The server's `error` frames. */
  readonly errorFrames: unknown[][] = [];
  /** Peer failures, as text. */
  readonly peerErrors: string[] = [];
  /** The final report, once it came. */
  report?: Extract<ClientEvent, { event: "report" }>;
  /** Set when the process exited, with its code. */
  exitCode?: number;
  readonly #listeners = new Set<() => void>();
  readonly #stdin: WritableStreamDefaultWriter<Uint8Array>;
  readonly #done: Promise<void>;

  private constructor(child: Deno.ChildProcess) {
    this.child = child;
    this.#stdin = child.stdin.getWriter();
    const read = (async () => {
      let buf = "";
      for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
        buf += chunk;
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          this.#line(buf.slice(0, i));
          buf = buf.slice(i + 1);
        }
      }
      if (buf !== "") this.#line(buf);
    })();
    this.#done = Promise.all([read, child.status]).then(([, s]) => {
      this.exitCode = s.code;
      this.#poke();
    });
  }

  /** Spawns the script for a socket joining `room` with `count` idents. */
  static spawn(url: string, room: string, count: number): ReferenceClient {
    const script = new URL(import.meta.url).pathname;
    const config = new URL("../../deno.json", import.meta.url).pathname;
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", "--config", config, script, url, room, String(count)],
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    return new ReferenceClient(child);
  }

  #line(line: string) {
    if (line.trim() === "") return;
    let e: ClientEvent;
    try {
      e = JSON.parse(line);
    } catch {
      this.noise.push(line);
      return;
    }
    this.events.push(e);
    switch (e.event) {
      case "joined":
        this.idents = e.idents;
        break;
      case "connected":
        this.connected.add(`${e.own} ${e.remote}`);
        break;
      case "message":
        if (e.text === greeting(e.remote, e.own)) this.greeted.add(`${e.own} ${e.remote}`);
        break;
      case "error-frame":
        this.errorFrames.push(e.frame);
        break;
      case "peer-error":
        this.peerErrors.push(`${e.own} ← ${e.remote}: ${e.message}`);
        break;
      case "socket-closed":
        this.peerErrors.push(`socket closed ${e.code} ${e.reason}`);
        break;
      case "report":
        this.report = e;
        break;
    }
    this.#poke();
  }

  #poke() {
    for (const l of [...this.#listeners]) l();
  }

  /** Calls `fn` after every event and at exit; returns a function that stops it. */
  onChange(fn: () => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  /**
   * Asks the process to close and waits up to `ms` for its report and exit;
   * kills it if it does not exit in time.
   */
  async close(ms: number): Promise<void> {
    try {
      await this.#stdin.write(new TextEncoder().encode("close\n"));
      await this.#stdin.close();
    } catch { /* already gone */ }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<"late">((r) => timer = setTimeout(() => r("late"), ms));
    const how = await Promise.race([this.#done.then(() => "exited" as const), late]);
    clearTimeout(timer);
    if (how === "late") {
      try {
        this.child.kill("SIGKILL");
      } catch { /* exited meanwhile */ }
      await this.#done;
    }
  }
}

if (import.meta.main) {
  const [url, room, count] = Deno.args;
  if (url === undefined || room === undefined || !(Number(count) >= 1)) {
    console.error("usage: diva_reference_client.ts <wsUrl> <room> <count>");
    Deno.exit(2);
  }
  await main(url, room, Number(count));
  // wrtc keeps native threads alive; the report is written, so leave now.
  Deno.exit(0);
}
