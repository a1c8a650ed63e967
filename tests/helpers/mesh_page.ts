/**
 * A Chromium page running the served `/client.js` (a {@link SignalClient}
 * and a {@link Mesh}) in a room, with NO candidate filtering: unlike
 * {@link PeerPage}, no loopback-only script is installed, so ICE uses every
 * host candidate the browser gathers. The page's socket records every frame
 * it sends and every `error` frame the server answers.
 *
 * @module
 */

import type { Browser, BrowserContext, Page } from "playwright-core";
import { BROWSER_TIMEOUT_MS } from "./browser.ts";
import type { SentFrame } from "./frame_stats.ts";

/** The client module as the page imports it. */
type ClientModule = typeof import("../../lib/client/client.js");

/** The in-page harness, kept on `globalThis.__mesh`. */
interface Harness {
  mesh: InstanceType<ClientModule["Mesh"]>;
  client: InstanceType<ClientModule["SignalClient"]>;
  /** Text messages received: sender and text. */
  messages: { peer: string; data: string }[];
  /** Frames the socket sent. */
  sent: SentFrame[];
  /** `error` frames the server sent. */
  errorFrames: unknown[][];
  /** Errors the mesh reported for a peer. */
  meshErrors: string[];
  /** Resolves when `check()` holds, re-checked on every event; bounded by `ms`. */
  until(check: () => boolean, ms: number, what: string): Promise<void>;
}

/** The harness of the page this function runs in. */
type HarnessHost = { __mesh: Harness };

/** A page in its own browser context, joined to a room, candidates unfiltered. */
export class MeshPage {
  /** Our global ident in the room. */
  readonly self: string;
  /** Uncaught errors the page's scripts threw. */
  readonly errors: string[];
  readonly #context: BrowserContext;
  readonly #page: Page;

  private constructor(context: BrowserContext, page: Page, self: string, errors: string[]) {
    this.#context = context;
    this.#page = page;
    this.self = self;
    this.errors = errors;
  }

  /** Opens a page on `baseUrl`, loads `/client.js` and joins `room` (as `ident`, if given). */
  static async open(
    browser: Browser,
    baseUrl: string,
    room: string,
    ident?: string,
  ): Promise<MeshPage> {
    const context = await browser.newContext();
    try {
      const page = await context.newPage();
      page.setDefaultTimeout(BROWSER_TIMEOUT_MS);
      const errors: string[] = [];
      page.on("pageerror", (e) => errors.push(String(e)));
      await page.goto(`${baseUrl}/healthz`);
      const self = await page.evaluate(async (o) => {
        const url = "/client.js";
        const { SignalClient, Mesh } = (await import(url)) as ClientModule;
        const listeners = new Set<() => void>();
        const poke = () => {
          for (const l of [...listeners]) l();
        };
        const sent: SentFrame[] = [];
        const errorFrames: unknown[][] = [];
        const encoder = new TextEncoder();
        // The socket the client makes: records what it sends and error answers.
        class RecordingSocket extends WebSocket {
          constructor(...args: ConstructorParameters<typeof WebSocket>) {
            super(...args);
            this.addEventListener("message", (e: MessageEvent) => {
              if (typeof e.data !== "string" || !e.data.startsWith('["error"')) return;
              errorFrames.push(JSON.parse(e.data));
              poke();
            });
          }
          override send(data: string | ArrayBufferLike | Blob | ArrayBufferView): void {
            if (typeof data === "string") {
              const m = JSON.parse(data) as unknown[];
              const f: SentFrame = {
                t: Date.now(),
                bytes: encoder.encode(data).length,
                call: String(m[0]),
              };
              if (m[0] === "signal") {
                f.from = String(m[1]);
                f.to = String(m[2]);
                const d = m[3] as Record<string, unknown> | null;
                f.kind = typeof d?.type === "string" ? d.type : "other";
              }
              sent.push(f);
            }
            super.send(data);
          }
        }
        const client = new SignalClient(undefined, { WebSocket: RecordingSocket });
        const mesh = new Mesh(client);
        const h: Harness = {
          client,
          mesh,
          messages: [],
          sent,
          errorFrames,
          meshErrors: [],
          until(check, ms, what) {
            return new Promise((resolve, reject) => {
              if (check()) return resolve();
              const test = () => {
                if (!check()) return;
                clearTimeout(timer);
                listeners.delete(test);
                resolve();
              };
              const timer = setTimeout(() => {
                listeners.delete(test);
                reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
              }, ms);
              listeners.add(test);
            });
          },
        };
        mesh.on("message", (e) => {
          if (typeof e.data === "string") h.messages.push({ peer: e.peer, data: e.data });
          poke();
        });
        mesh.on("error", (e) => {
          h.meshErrors.push(`${e.peer}: ${String(e.error)}`);
          poke();
        });
        for (const t of ["peer", "open", "close", "state"] as const) mesh.on(t, poke);
        (globalThis as unknown as HarnessHost).__mesh = h;
        return await mesh.join(o.room, o.ident);
      }, { room, ident });
      return new MeshPage(context, page, self, errors);
    } catch (e) {
      await context.close();
      throw e;
    }
  }

  /** Waits until the data channel to every one of `peers` is open. */
  async waitForOpen(peers: readonly string[], ms: number): Promise<void> {
    await this.#page.evaluate(({ peers, ms }) => {
      const h = (globalThis as unknown as HarnessHost).__mesh;
      return h.until(
        () => peers.every((p) => h.mesh.isOpen(p)),
        ms,
        `open channels to [${peers.join(",")}]`,
      );
    }, { peers: [...peers], ms });
  }

  /** The peers whose data channel is open now. */
  openPeers(): Promise<string[]> {
    return this.#page.evaluate(() => {
      const h = (globalThis as unknown as HarnessHost).__mesh;
      return h.mesh.peerIds().filter((p) => h.mesh.isOpen(p));
    });
  }

  /** Sends `text` to each of `peers`; the peers it could not send to (channel not open). */
  sendTo(peers: readonly string[], text: (peer: string) => string): Promise<string[]> {
    const texts = Object.fromEntries(peers.map((p) => [p, text(p)]));
    return this.#page.evaluate((texts) => {
      const h = (globalThis as unknown as HarnessHost).__mesh;
      return Object.entries(texts).filter(([p, t]) => !h.mesh.send(p, t)).map(([p]) => p);
    }, texts);
  }

  /** Waits until, from every peer in `texts`, its text arrived. */
  async waitForMessages(texts: Record<string, string>, ms: number): Promise<void> {
    await this.#page.evaluate(({ texts, ms }) => {
      const h = (globalThis as unknown as HarnessHost).__mesh;
      return h.until(
        () =>
          Object.entries(texts).every(([p, t]) =>
            h.messages.some((m) => m.peer === p && m.data === t)
          ),
        ms,
        `messages from [${Object.keys(texts).join(",")}]`,
      );
    }, { texts, ms });
  }

  /** The peers a message arrived from. */
  greetedBy(): Promise<string[]> {
    return this.#page.evaluate(() => [
      ...new Set((globalThis as unknown as HarnessHost).__mesh.messages.map((m) => m.peer)),
    ]);
  }

  /** Frames sent, `error` frames received and peer errors, so far. */
  record(): Promise<{ sent: SentFrame[]; errorFrames: unknown[][]; meshErrors: string[] }> {
    return this.#page.evaluate(() => {
      const h = (globalThis as unknown as HarnessHost).__mesh;
      return { sent: h.sent, errorFrames: h.errorFrames, meshErrors: h.meshErrors };
    });
  }

  /** Closes the page's context (its socket and peer connections die with it). */
  async close(): Promise<void> {
    await this.#context.close();
  }
}
