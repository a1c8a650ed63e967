/**
 * Drives Yjs peers, each a `Y.Doc` with the real y-webrtc `WebrtcProvider`
 * in a process of its own (see `yjs_peer.ts`), from a test. Every wait is
 * event-driven (it is re-checked on each line the peer prints) and bounded.
 *
 * @module
 */

import type { YjsPeerArgs } from "./yjs_peer.ts";

/** Default bound on a single wait, in ms. */
export const PEER_TIMEOUT_MS = 30_000;

const SCRIPT = new URL("./yjs_peer.ts", import.meta.url).pathname;

/** A Yjs peer process. */
export class YjsPeer {
  /** What the peer was started with. */
  readonly args: YjsPeerArgs;
  /** The doc's text, as last reported. */
  text = "";
  /** The peer ids it has WebRTC connections with, as last reported. */
  webrtcPeers: string[] = [];
  /** Whether the provider reported it is synced with all its peers. */
  synced = false;
  /** Set once the provider was destroyed. */
  destroyed = false;
  /** Everything the process wrote to stderr. */
  stderr = "";
  readonly #child: Deno.ChildProcess;
  readonly #stdin: WritableStreamDefaultWriter<Uint8Array>;
  readonly #listeners = new Set<() => void>();
  readonly #done: Promise<unknown>;
  #exited = false;

  private constructor(args: YjsPeerArgs) {
    this.args = args;
    this.#child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-net",
        "--allow-env",
        "--allow-read",
        "--allow-ffi",
        "--allow-sys",
        SCRIPT,
        JSON.stringify(args),
      ],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#stdin = this.#child.stdin.getWriter();
    const lines = this.#read(this.#child.stdout, (line) => this.#event(line));
    const errs = this.#read(this.#child.stderr, (line) => this.stderr += line + "\n");
    this.#done = Promise.all([lines, errs, this.#child.status.then(() => this.#exited = true)])
      .finally(() => this.#poke());
  }

  /** Starts a peer process and waits until its provider is made. */
  static async start(args: YjsPeerArgs): Promise<YjsPeer> {
    const p = new YjsPeer(args);
    try {
      await p.until(() => p.#started, "the peer to start");
    } catch (e) {
      await p.stop();
      throw e;
    }
    return p;
  }

  #started = false;

  async #read(stream: ReadableStream<Uint8Array>, line: (l: string) => void): Promise<void> {
    let buf = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      buf += chunk;
      for (let i = buf.indexOf("\n"); i >= 0; i = buf.indexOf("\n")) {
        line(buf.slice(0, i));
        buf = buf.slice(i + 1);
      }
    }
    if (buf !== "") line(buf);
  }

  #event(line: string): void {
    let e: Record<string, unknown>;
    try {
      e = JSON.parse(line);
    } catch {
      // Libraries may log to stdout; only our JSON lines are events.
      this.stderr += line + "\n";
      return;
    }
    switch (e.ev) {
      case "started":
        this.#started = true;
        break;
      case "text":
        this.text = String(e.text);
        break;
      case "peers":
        this.webrtcPeers = e.webrtcPeers as string[];
        break;
      case "synced":
        this.synced = e.synced === true;
        break;
      case "destroyed":
        this.destroyed = true;
        break;
    }
    this.#poke();
  }

  #poke(): void {
    for (const l of [...this.#listeners]) l();
  }

  /** Resolves once `check()` holds; rejects after `ms` or if the process ends first. */
  until(check: () => boolean, what: string, ms = PEER_TIMEOUT_MS): Promise<void> {
    return new Promise((resolve, reject) => {
      const test = () => {
        if (check()) {
          done();
          resolve();
        } else if (this.#exited) {
          done();
          reject(new Error(`peer exited while waiting for ${what}\n${this.stderr}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`timed out after ${ms} ms waiting for ${what}\n${this.stderr}`));
      }, ms);
      const done = () => {
        clearTimeout(timer);
        this.#listeners.delete(test);
      };
      this.#listeners.add(test);
      test();
    });
  }

  /** Waits until the doc's text is `text`. */
  waitForText(text: string, ms = PEER_TIMEOUT_MS): Promise<void> {
    return this.until(() => this.text === text, `text ${JSON.stringify(text)}`, ms);
  }

  /** Inserts `text` at `index` of the doc's text. */
  insert(index: number, text: string): Promise<void> {
    return this.#send({ cmd: "insert", index, text });
  }

  /** Destroys the provider (the process stays). */
  async destroy(): Promise<void> {
    await this.#send({ cmd: "destroy" });
    await this.until(() => this.destroyed, "the provider to be destroyed");
  }

  async #send(c: Record<string, unknown>): Promise<void> {
    await this.#stdin.write(new TextEncoder().encode(JSON.stringify(c) + "\n"));
  }

  /** Ends the process (asking first, killing after a bound) and waits for it. */
  async stop(): Promise<void> {
    if (!this.#exited) {
      try {
        await this.#send({ cmd: "exit" });
      } catch {
        // Already gone.
      }
    }
    const timer = setTimeout(() => {
      try {
        this.#child.kill("SIGKILL");
      } catch {
        // Already gone.
      }
    }, 5000);
    await this.#done;
    clearTimeout(timer);
    try {
      await this.#stdin.close();
    } catch {
      // The process closed its end already.
    }
  }
}
