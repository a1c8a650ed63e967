/**
 * Real browsers on a real server for end-to-end tests: starts the signal
 * server in-process on a free loopback port, launches Debian's Chromium
 * through playwright-core, and opens pages that run the served `/client.js`
 * (a {@link SignalClient} and a {@link Mesh}) in a room.
 *
 * WebRTC is kept on loopback: Chromium is told to gather 127.0.0.1
 * candidates, and every page drops remote candidates on other addresses, so
 * peer traffic never targets anything but 127.0.0.1 (or a TURN relay the
 * test runs there).
 *
 * @module
 */

import fs from "node:fs";
import type { Browser, BrowserContext, Page } from "playwright-core";
import type { RtcConfiguration } from "../../lib/client/client.d.ts";
import { parseConfig } from "../../lib/config.ts";
import { type SignalServer, startServer } from "../../lib/server.ts";

/** Where Debian installs Chromium. */
export const CHROMIUM_PATH = "/usr/bin/chromium";

/** Default bound on any single wait in a browser test, in ms. */
export const BROWSER_TIMEOUT_MS = 20_000;

/** Chromium flags: headless and quiet, plus WebRTC on loopback. */
export const CHROMIUM_ARGS: readonly string[] = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  // Loopback candidates are only gathered with this switch, and only when
  // the page may enumerate interfaces, which the fake media UI grants.
  "--allow-loopback-in-peer-connection",
  "--use-fake-ui-for-media-stream",
  // Hidden (mDNS) host names would need multicast on the real network.
  "--disable-features=WebRtcHideLocalIpsWithMdns",
];

/**
 * Installed in every page before its scripts run: remote ICE candidates
 * whose address is not loopback are dropped (in trickle and in SDP), so
 * connectivity checks only ever target 127.0.0.1 / ::1.
 */
const LOOPBACK_ONLY = `(() => {
  const isLoopback = (line) => {
    const addr = String(line).replace(/^a=/, "").split(" ")[4] ?? "";
    return addr.startsWith("127.") || addr === "::1";
  };
  const P = RTCPeerConnection.prototype;
  const addIceCandidate = P.addIceCandidate;
  P.addIceCandidate = function (c, ...rest) {
    const line = c && typeof c === "object" ? c.candidate : undefined;
    if (line && !isLoopback(line)) return Promise.resolve();
    return addIceCandidate.call(this, c, ...rest);
  };
  const setRemoteDescription = P.setRemoteDescription;
  P.setRemoteDescription = function (d, ...rest) {
    if (d && typeof d.sdp === "string") {
      const sdp = d.sdp.split("\\r\\n")
        .filter((l) => !l.startsWith("a=candidate:") || isLoopback(l)).join("\\r\\n");
      d = { type: d.type, sdp };
    }
    return setRemoteDescription.call(this, d, ...rest);
  };
})();`;

/** A signal server running in this process. */
export interface TestServer {
  /** The server. */
  readonly server: SignalServer;
  /** Its port on 127.0.0.1. */
  readonly port: number;
  /** `http://127.0.0.1:<port>`. */
  readonly url: string;
  /** `ws://127.0.0.1:<port>/`. */
  readonly wsUrl: string;
  /** Shuts it down and waits until it has stopped. */
  stop(): Promise<void>;
}

/** Starts the server on 127.0.0.1 (port 0 unless `--port` is in `args`) with extra flags. */
export function startTestServer(args: readonly string[] = []): Promise<TestServer> {
  const cmd = parseConfig({
    args: ["--host", "127.0.0.1", "--port", "0", "--shutdown-timeout", "5", ...args],
    env: () => undefined,
    readTextFile: (p) => Deno.readTextFileSync(p),
  });
  if (cmd.kind !== "run") throw new Error("unexpected config");
  // Deno.serve binds before it returns, so the port is known at once.
  const server = startServer(cmd.config, { version: "test" });
  const port = server.port;
  return Promise.resolve({
    server,
    port,
    url: `http://127.0.0.1:${port}`,
    wsUrl: `ws://127.0.0.1:${port}/`,
    async stop() {
      await server.shutdown();
      await server.finished;
    },
  });
}

/** Whether the test run is CI, where a missing browser is a failure. */
export function inCI(): boolean {
  try {
    return (Deno.env.get("CI") ?? "") !== "";
  } catch {
    return false;
  }
}

/**
 * Why browser tests cannot run here, or `undefined` when they can. In CI a
 * missing Chromium throws instead: it must be installed there.
 */
export function browserMissing(): string | undefined {
  try {
    Deno.statSync(CHROMIUM_PATH);
    return undefined;
  } catch {
    const why = `${CHROMIUM_PATH} not found (apt-get install chromium)`;
    if (inCI()) throw new Error(`CI needs Chromium: ${why}`);
    return why;
  }
}

/**
 * Loads playwright-core. Deno's `fs.existsSync` throws NotCapable for some
 * `/proc/sys` paths unless the process has `--allow-all`, where Node (and
 * Deno with `-A`) answers false; playwright probes such a path when it loads
 * (WSL detection). The wrapper answers false in that one case, so the tests
 * run with the test task's flags.
 */
async function playwright(): Promise<typeof import("playwright-core")> {
  const existsSync = fs.existsSync;
  if (!Object.hasOwn(existsSync, "canProbeProc")) {
    const wrapped = (path: fs.PathLike) => {
      try {
        return existsSync(path);
      } catch (e) {
        if (e instanceof Deno.errors.NotCapable) return false;
        throw e;
      }
    };
    Object.defineProperty(wrapped, "canProbeProc", { value: true });
    fs.existsSync = wrapped;
  }
  return await import("playwright-core");
}

/** Launches headless Chromium with {@link CHROMIUM_ARGS} and a fresh profile. */
export async function launchBrowser(): Promise<Browser> {
  const { chromium } = await playwright();
  return await chromium.launch({
    executablePath: CHROMIUM_PATH,
    args: [...CHROMIUM_ARGS],
    timeout: BROWSER_TIMEOUT_MS,
  });
}

/** A page in its own browser context, and the uncaught errors its scripts threw. */
export interface IsolatedPage {
  /** The context (own storage); closing it closes the page. */
  context: BrowserContext;
  /** The page. */
  page: Page;
  /** Uncaught exceptions and unhandled rejections in the page, as text. */
  errors: string[];
}

/** A page on its own browser context (own storage), with the loopback-only ICE filter. */
export async function newIsolatedPage(browser: Browser): Promise<IsolatedPage> {
  const context = await browser.newContext();
  await context.addInitScript({ content: LOOPBACK_ONLY });
  const page = await context.newPage();
  page.setDefaultTimeout(BROWSER_TIMEOUT_MS);
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  return { context, page, errors };
}

/** What {@link PeerPage.open} joins with. */
export interface PeerPageOptions {
  /** The room. */
  room: string;
  /** The ident (a fresh one from the server when omitted). */
  ident?: string;
  /** Passed to the mesh, e.g. `{ iceTransportPolicy: "relay" }`. */
  rtcConfig?: RtcConfiguration;
}

/** A message a page received over a data channel. */
export interface PageMessage {
  /** The sender's global ident. */
  peer: string;
  /** The text (binary messages are not recorded). */
  data: string;
}

/** Candidate types of the pair a connection uses, from `getStats()`. */
export interface SelectedPair {
  /** The local candidate's type: host, srflx, prflx or relay. */
  local: string;
  /** The remote candidate's type. */
  remote: string;
  /** The local candidate's address. */
  localAddress: string;
  /** The remote candidate's address. */
  remoteAddress: string;
}

/** What the harness needs of a page's `RTCPeerConnection` (Deno has no DOM types). */
interface PagePeerConnection {
  readonly signalingState: string;
  readonly connectionState: string;
  getStats(): Promise<ReadonlyMap<string, Record<string, unknown>>>;
}

/** The client module as the page imports it. */
type ClientModule = typeof import("../../lib/client/client.js");

/** The in-page harness, kept on `globalThis.__peer`. */
interface Harness {
  mesh: InstanceType<ClientModule["Mesh"]>;
  client: InstanceType<ClientModule["SignalClient"]>;
  byes: string[];
  closes: { peer: string; reason: string }[];
  messages: PageMessage[];
  connections: { peer: string; pc: PagePeerConnection }[];
  /** Resolves when `check()` holds, re-checked on every client or mesh event; bounded by `ms`. */
  until(check: () => boolean, ms: number, what: string): Promise<void>;
}

/** The harness of the page this function runs in. */
type HarnessHost = { __peer: Harness };

/**
 * A browser page running a {@link Mesh} in a room, driven from the test.
 * Every wait is event-driven in the page and bounded by a timeout.
 */
export class PeerPage {
  /** The page. */
  readonly page: Page;
  /** Our global ident in the room. */
  readonly self: string;
  /** Uncaught errors the page's scripts threw (a test expects none). */
  readonly errors: string[];
  readonly #context: BrowserContext;

  private constructor(p: IsolatedPage, self: string) {
    this.#context = p.context;
    this.page = p.page;
    this.errors = p.errors;
    this.self = self;
  }

  /** Opens a page on `baseUrl`, loads `/client.js` from it and joins the room. */
  static async open(
    browser: Browser,
    baseUrl: string,
    options: PeerPageOptions,
  ): Promise<PeerPage> {
    const isolated = await newIsolatedPage(browser);
    const { context, page } = isolated;
    try {
      await page.goto(`${baseUrl}/healthz`);
      const self = await page.evaluate(async (o) => {
        // A variable keeps the type checker from resolving the page's URL.
        const url = "/client.js";
        const { SignalClient, Mesh } = (await import(url)) as ClientModule;
        const client = new SignalClient();
        const mesh = new Mesh(client, { rtcConfig: o.rtcConfig });
        const listeners = new Set<() => void>();
        const h: Harness = {
          client,
          mesh,
          byes: [],
          closes: [],
          messages: [],
          connections: [],
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
        const poke = () => {
          for (const l of [...listeners]) l();
        };
        mesh.on("peer", (e) => {
          h.connections.push({ peer: e.peer, pc: e.connection as unknown as PagePeerConnection });
          poke();
        });
        mesh.on("message", (e) => {
          if (typeof e.data === "string") h.messages.push({ peer: e.peer, data: e.data });
          poke();
        });
        mesh.on("close", (e) => {
          h.closes.push({ peer: e.peer, reason: e.reason });
          poke();
        });
        client.on("bye", (e) => {
          h.byes.push(e.remote);
          poke();
        });
        mesh.on("state", poke);
        mesh.on("open", poke);
        (globalThis as unknown as HarnessHost).__peer = h;
        return await mesh.join(o.room, o.ident);
      }, { room: options.room, ident: options.ident, rtcConfig: options.rtcConfig });
      return new PeerPage(isolated, self);
    } catch (e) {
      await context.close();
      throw e;
    }
  }

  /** Waits until the mesh knows exactly `peers` and every one's channel is open. */
  async waitForOpenPeers(peers: readonly string[], ms = BROWSER_TIMEOUT_MS): Promise<void> {
    await this.page.evaluate(({ peers, ms }) => {
      const h = (globalThis as unknown as HarnessHost).__peer;
      const want = [...peers].sort().join(",");
      return h.until(
        () => h.mesh.peerIds().sort().join(",") === want && peers.every((p) => h.mesh.isOpen(p)),
        ms,
        `open channels to exactly [${want}]`,
      );
    }, { peers: [...peers], ms });
  }

  /** Waits until a `bye` for `peer` arrived and the mesh forgot it. */
  async waitForGone(peer: string, ms = BROWSER_TIMEOUT_MS): Promise<void> {
    await this.page.evaluate(({ peer, ms }) => {
      const h = (globalThis as unknown as HarnessHost).__peer;
      return h.until(
        () => h.byes.includes(peer) && !h.mesh.peerIds().includes(peer),
        ms,
        `bye from ${peer}`,
      );
    }, { peer, ms });
  }

  /** Sends `text` to `peer` over the data channel; false if it was not open. */
  send(peer: string, text: string): Promise<boolean> {
    return this.page.evaluate(({ peer, text }) => {
      return (globalThis as unknown as HarnessHost).__peer.mesh.send(peer, text);
    }, { peer, text });
  }

  /** Waits for a message with `text` from `peer`. */
  async waitForMessage(peer: string, text: string, ms = BROWSER_TIMEOUT_MS): Promise<void> {
    await this.page.evaluate(({ peer, text, ms }) => {
      const h = (globalThis as unknown as HarnessHost).__peer;
      return h.until(
        () => h.messages.some((m) => m.peer === peer && m.data === text),
        ms,
        `message "${text}" from ${peer}`,
      );
    }, { peer, text, ms });
  }

  /** The mesh's peer count. */
  peerCount(): Promise<number> {
    return this.page.evaluate(() => (globalThis as unknown as HarnessHost).__peer.mesh.peers);
  }

  /** The states of every `RTCPeerConnection` the page ever made, with its peer. */
  connectionStates(): Promise<{ peer: string; signalingState: string; connectionState: string }[]> {
    return this.page.evaluate(() =>
      (globalThis as unknown as HarnessHost).__peer.connections.map(({ peer, pc }) => ({
        peer,
        signalingState: pc.signalingState,
        connectionState: pc.connectionState,
      }))
    );
  }

  /** Why peers were dropped, in order. */
  closes(): Promise<{ peer: string; reason: string }[]> {
    return this.page.evaluate(() => (globalThis as unknown as HarnessHost).__peer.closes);
  }

  /** The candidate types of the pair the connection to `peer` selected. */
  selectedPair(peer: string): Promise<SelectedPair | undefined> {
    return this.page.evaluate(async (peer) => {
      const h = (globalThis as unknown as HarnessHost).__peer;
      const pc = h.mesh.connection(peer) as unknown as PagePeerConnection | undefined;
      if (pc === undefined) return undefined;
      const stats = await pc.getStats();
      let pair: Record<string, unknown> | undefined;
      stats.forEach((s) => {
        if (s.type === "transport" && typeof s.selectedCandidatePairId === "string") {
          pair = stats.get(s.selectedCandidatePairId);
        }
      });
      if (pair === undefined) return undefined;
      const local = stats.get(String(pair.localCandidateId));
      const remote = stats.get(String(pair.remoteCandidateId));
      return {
        local: String(local?.candidateType),
        remote: String(remote?.candidateType),
        localAddress: String(local?.address),
        remoteAddress: String(remote?.address),
      };
    }, peer);
  }

  /** Closes the page and its context (its sockets and peer connections die with it). */
  async close(): Promise<void> {
    await this.#context.close();
  }
}
