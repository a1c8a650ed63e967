/**
 * A Chromium page running the real, unmodified PeerJS client: the `peerjs`
 * 1.5.5 browser bundle (`dist/peerjs.min.js` from the npm package, served to
 * the page by the test itself) on a page of the server under test, driven
 * from the test. The page records what the client reports (its events, the
 * data connections it makes or accepts, the data they carry, the messages
 * its server socket receives); every wait is event-driven in the page and
 * bounded. No candidate filtering: ICE uses the host candidates Chromium
 * gathers with the project's flags, and the `Peer` is given no ICE servers.
 *
 * @module
 */

import bundle from "peerjs/dist/peerjs.min.js" with { type: "text" };
import type { Browser, BrowserContext, Page } from "playwright-core";
import { BROWSER_TIMEOUT_MS } from "./browser.ts";

/** What the test uses of a PeerJS `DataConnection` (Deno has no DOM types). */
interface PageConn {
  readonly peer: string;
  readonly open: boolean;
  readonly peerConnection: {
    readonly signalingState: string;
    addEventListener(type: string, f: () => void): void;
  } | null;
  send(data: unknown): void;
  on(event: string, f: (arg: unknown) => void): void;
}

/** What the test uses of a PeerJS `Peer`. */
interface PagePeer {
  readonly id: string | null;
  readonly options: { readonly token: string };
  readonly socket: {
    on(event: "message", f: (m: Record<string, unknown>) => void): void;
    send(m: unknown): void;
  };
  connect(id: string): PageConn;
  on(event: string, f: (arg: unknown) => void): void;
  disconnect(): void;
  reconnect(): void;
  destroy(): void;
}

/** The in-page harness, kept on `globalThis.__pj`. */
interface Harness {
  peer: PagePeer | undefined;
  /** What the Peer reported, in order: `["open", id]`, `["error", type, message]`, … */
  events: unknown[][];
  /** Data connections by remote id, oldest first. */
  conns: Record<string, PageConn[]>;
  /** Data received: remote id and the data. */
  messages: [string, unknown][];
  /** Messages the Peer's server socket received. */
  serverMessages: Record<string, unknown>[];
  /** A socket of the page's own, beside the Peer's. */
  raw: { socket: WebSocket; messages: unknown[]; closed: number | undefined } | undefined;
  poke(): void;
  watch(conn: PageConn): void;
  until(check: () => boolean, ms: number, what: string): Promise<void>;
}

type HarnessHost = { __pj: Harness; peerjs: { Peer: new (...args: unknown[]) => PagePeer } };

/** A page with the PeerJS bundle loaded, on its own browser context. */
export class PeerjsPage {
  /** The page. */
  readonly page: Page;
  /** Uncaught errors the page's scripts threw (a test expects none). */
  readonly errors: string[];
  readonly #context: BrowserContext;

  private constructor(context: BrowserContext, page: Page, errors: string[]) {
    this.#context = context;
    this.page = page;
    this.errors = errors;
  }

  /** Opens a page of the server at `baseUrl` and loads the PeerJS bundle into it. */
  static async open(browser: Browser, baseUrl: string): Promise<PeerjsPage> {
    const context = await browser.newContext();
    try {
      const page = await context.newPage();
      page.setDefaultTimeout(BROWSER_TIMEOUT_MS);
      const errors: string[] = [];
      page.on("pageerror", (e) => errors.push(String(e)));
      await page.goto(`${baseUrl}/healthz`);
      await page.addScriptTag({ content: bundle });
      await page.evaluate(() => {
        const listeners = new Set<() => void>();
        const h: Harness = {
          peer: undefined,
          events: [],
          conns: {},
          messages: [],
          serverMessages: [],
          raw: undefined,
          poke() {
            for (const l of [...listeners]) l();
          },
          watch(conn) {
            (h.conns[conn.peer] ??= []).push(conn);
            conn.on("open", () => h.poke());
            conn.on("data", (d) => {
              h.messages.push([conn.peer, d]);
              h.poke();
            });
            conn.on("error", (e) => {
              h.events.push(["conn-error", conn.peer, String(e)]);
              h.poke();
            });
            conn.peerConnection?.addEventListener("signalingstatechange", () => h.poke());
            h.poke();
          },
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
        (globalThis as unknown as HarnessHost).__pj = h;
      });
      return new PeerjsPage(context, page, errors);
    } catch (e) {
      await context.close();
      throw e;
    }
  }

  /**
   * Makes the page's `Peer` (with `id`, or one the server hands out) against
   * this server, path `/` and key `peerjs`, and records what it reports.
   */
  async create(id?: string): Promise<void> {
    await this.page.evaluate((id) => {
      const host = globalThis as unknown as HarnessHost;
      const h = host.__pj;
      const options = {
        host: location.hostname,
        port: Number(location.port),
        path: "/",
        key: "peerjs",
        config: { iceServers: [] },
        debug: 0,
      };
      const peer = id === null ? new host.peerjs.Peer(options) : new host.peerjs.Peer(id, options);
      h.peer = peer;
      for (const event of ["open", "disconnected", "close"]) {
        peer.on(event, (arg) => {
          h.events.push(arg === undefined ? [event] : [event, arg]);
          h.poke();
        });
      }
      peer.on("error", (e) => {
        const err = e as { type?: string; message?: string };
        h.events.push(["error", err.type, err.message]);
        h.poke();
      });
      peer.on("connection", (c) => h.watch(c as PageConn));
      peer.socket.on("message", (m) => {
        h.serverMessages.push(m);
        h.poke();
      });
    }, id ?? null);
  }

  /** Waits until the Peer has reported `count` events of `kind`; returns the last one. */
  event(kind: string, count = 1, ms = BROWSER_TIMEOUT_MS): Promise<unknown[]> {
    return this.page.evaluate(async ({ kind, count, ms }) => {
      const h = (globalThis as unknown as HarnessHost).__pj;
      const of = () => h.events.filter((e) => e[0] === kind);
      await h.until(() => of().length >= count, ms, `${count} "${kind}" event(s)`);
      return of()[count - 1];
    }, { kind, count, ms });
  }

  /** Every event the Peer reported so far. */
  events(): Promise<unknown[][]> {
    return this.page.evaluate(() => (globalThis as unknown as HarnessHost).__pj.events);
  }

  /** Creates the Peer and waits for `open`; returns its id. */
  async start(id?: string): Promise<string> {
    await this.create(id);
    const [, opened] = await this.event("open");
    return String(opened);
  }

  /** Connects a data connection to `remote` (a second one to the same peer is counted apart). */
  async connect(remote: string): Promise<void> {
    await this.page.evaluate((remote) => {
      const h = (globalThis as unknown as HarnessHost).__pj;
      h.watch(h.peer!.connect(remote));
    }, remote);
  }

  /** Waits until the `count`-th data connection with `remote` (either side's) is open. */
  async connected(remote: string, count = 1, ms = BROWSER_TIMEOUT_MS): Promise<void> {
    await this.page.evaluate(({ remote, count, ms }) => {
      const h = (globalThis as unknown as HarnessHost).__pj;
      return h.until(
        () => (h.conns[remote]?.length ?? 0) >= count && h.conns[remote][count - 1].open,
        ms,
        `data connection #${count} with ${remote} to open`,
      );
    }, { remote, count, ms });
  }

  /** Sends `text` over the latest data connection with `remote`. */
  async send(remote: string, text: string): Promise<void> {
    await this.page.evaluate(({ remote, text }) => {
      (globalThis as unknown as HarnessHost).__pj.conns[remote].at(-1)!.send(text);
    }, { remote, text });
  }

  /** Waits for `text` from `remote` over any data connection. */
  async received(remote: string, text: string, ms = BROWSER_TIMEOUT_MS): Promise<void> {
    await this.page.evaluate(({ remote, text, ms }) => {
      const h = (globalThis as unknown as HarnessHost).__pj;
      return h.until(
        () => h.messages.some(([p, d]) => p === remote && d === text),
        ms,
        `"${text}" from ${remote}`,
      );
    }, { remote, text, ms });
  }

  /**
   * Waits until the latest data connection to `remote` has sent its offer
   * to the server, then until the server has handled it: the page sends its
   * own id a `LEAVE` (which the client shrugs off) on the Peer's socket and
   * waits for it to come back; one connection's frames are handled in order.
   */
  async offerHandled(remote: string, ms = BROWSER_TIMEOUT_MS): Promise<void> {
    await this.page.evaluate(async ({ remote, ms }) => {
      const h = (globalThis as unknown as HarnessHost).__pj;
      const conn = h.conns[remote].at(-1)!;
      await h.until(
        () => conn.peerConnection?.signalingState === "have-local-offer",
        ms,
        `the offer to ${remote}`,
      );
      // The client sends the offer right after setLocalDescription resolves.
      await new Promise((r) => setTimeout(r, 0));
      const self = h.peer!.id!;
      const seen = h.serverMessages.length;
      h.peer!.socket.send({ type: "LEAVE", dst: self });
      await h.until(
        () => h.serverMessages.slice(seen).some((m) => m.type === "LEAVE" && m.src === self),
        ms,
        "the server to echo the barrier",
      );
    }, { remote, ms });
  }

  /** The Peer's token (the client makes one at random). */
  token(): Promise<string> {
    return this.page.evaluate(() =>
      (globalThis as unknown as HarnessHost).__pj.peer!.options.token
    );
  }

  /**
   * Opens a socket of the page's own to the server with the Peer's id and
   * token, as a second tab of the same session would, and waits for `OPEN`.
   */
  async takeOverWithRawSocket(ms = BROWSER_TIMEOUT_MS): Promise<void> {
    await this.page.evaluate(({ ms }) => {
      const h = (globalThis as unknown as HarnessHost).__pj;
      const q = new URLSearchParams({
        key: "peerjs",
        id: h.peer!.id!,
        token: h.peer!.options.token,
        version: "1.5.5",
      });
      const socket = new WebSocket(`ws://${location.host}/peerjs?${q}`);
      const raw = { socket, messages: [] as unknown[], closed: undefined as number | undefined };
      h.raw = raw;
      socket.onmessage = (e) => {
        raw.messages.push(JSON.parse(String(e.data)));
        h.poke();
      };
      socket.onclose = (e) => {
        raw.closed = e.code;
        h.poke();
      };
      return h.until(() => raw.messages.length > 0, ms, "OPEN on the page's own socket");
    }, { ms });
  }

  /** What the page's own socket got, and its close code once it closed. */
  async rawSocketClosed(ms = BROWSER_TIMEOUT_MS): Promise<{ messages: unknown[]; code: number }> {
    return await this.page.evaluate(async ({ ms }) => {
      const h = (globalThis as unknown as HarnessHost).__pj;
      await h.until(() => h.raw?.closed !== undefined, ms, "the page's own socket to close");
      return { messages: h.raw!.messages, code: h.raw!.closed! };
    }, { ms });
  }

  /** Calls the Peer's `disconnect()`. */
  async disconnect(): Promise<void> {
    await this.page.evaluate(() => (globalThis as unknown as HarnessHost).__pj.peer!.disconnect());
  }

  /** Calls the Peer's `reconnect()`. */
  async reconnect(): Promise<void> {
    await this.page.evaluate(() => (globalThis as unknown as HarnessHost).__pj.peer!.reconnect());
  }

  /** Closes the page's context (its sockets and peer connections die with it). */
  async close(): Promise<void> {
    await this.#context.close();
  }
}
