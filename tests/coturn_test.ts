/**
 * The TURN credentials the server hands out, tried against a real coturn in
 * `use-auth-secret` mode with `turnutils_uclient`: minted ones allocate a
 * relay and carry data, forged, tampered and expired ones get 401.
 *
 * In CI (`CI` set) a missing turnserver fails the test instead of skipping it.
 */

import assert from "node:assert/strict";
import { type Config, parseConfig } from "../lib/config.ts";
import { startServer } from "../lib/server.ts";
import { type IceServer, turnCredential } from "../lib/ice/turn.ts";
import {
  type Coturn,
  coturnAvailable,
  inCI,
  startCoturn,
  uclientAllocate,
  type UclientResult,
} from "./helpers/coturn.ts";
import { WsClient } from "./helpers/ws_client.ts";

const available = await coturnAvailable();

function config(args: string[]): Config {
  const cmd = parseConfig({
    args: ["--host", "127.0.0.1", "--port", "0", ...args],
    env: () => undefined,
    readTextFile: Deno.readTextFileSync,
  });
  assert.equal(cmd.kind, "run");
  return (cmd as { kind: "run"; config: Config }).config;
}

/** Runs a real signal server with `args` and asks it for ICE servers over WebSocket as `ident`. */
async function iceFromServer(args: string[], ident: string): Promise<IceServer[]> {
  const server = startServer(config(args), { version: "test" });
  try {
    const c = await WsClient.connect(`ws://127.0.0.1:${server.port}/`);
    try {
      c.send(["join", ident, "room"]);
      assert.deepEqual(await c.next(), ["join", `room:${ident}`]);
      c.send(["ice"]);
      const m = await c.next();
      assert.ok(Array.isArray(m) && m[0] === "ice" && m.length === 2, `not an ice reply: ${m}`);
      return m[1] as IceServer[];
    } finally {
      await c.close();
    }
  } finally {
    await server.shutdown();
    await server.finished;
  }
}

/** The TURN entry of an ICE list; fails unless there is exactly one. */
function turnEntry(servers: IceServer[]): Required<IceServer> {
  const turn = servers.filter((s) => s.username !== undefined);
  assert.equal(turn.length, 1, `expected one TURN entry in ${JSON.stringify(servers)}`);
  const t = turn[0];
  assert.equal(typeof t.username, "string");
  assert.equal(typeof t.credential, "string");
  return t as Required<IceServer>;
}

function assertAllocated(r: UclientResult, log: string, username: string): void {
  assert.equal(r.code, 0, `uclient failed:\n${r.output}`);
  assert.ok(r.received > 0, `nothing came back through the relays:\n${r.output}`);
  assert.ok(r.allocated);
  assert.ok(
    log.includes(`user <${username}>: incoming packet ALLOCATE processed, success`),
    `coturn did not log a successful ALLOCATE for ${username}`,
  );
}

function assertRefused(r: UclientResult, log: string, username: string): void {
  assert.notEqual(r.code, 0, `uclient succeeded:\n${r.output}`);
  assert.equal(r.received, 0);
  assert.ok(!r.allocated);
  assert.match(r.output, /Cannot complete Allocation/);
  assert.ok(
    log.includes(`user <${username}>: incoming packet message processed, error 401`),
    `coturn did not log a 401 for ${username}`,
  );
  assert.ok(
    !log.includes(`user <${username}>: incoming packet ALLOCATE processed, success`),
    `coturn allocated for ${username}`,
  );
}

function secret(label: string): string {
  return `${label}-${crypto.randomUUID()}`;
}

Deno.test({
  name: "coturn: server-minted credentials relay; forged, tampered and expired ones are refused",
  ignore: !available && !inCI(),
  async fn(t) {
    const shared = secret("shared");
    const turn: Coturn = await startCoturn({ secret: shared });
    try {
      const args = ["--turn-secret", shared, "--turn-urls", turn.url, "--stun-urls", turn.stunUrl];

      let minted!: Required<IceServer>;
      await t.step('a credential from a real ["ice"] call allocates a relay', async () => {
        const before = Math.floor(Date.now() / 1000);
        const servers = await iceFromServer(args, "alice");
        assert.deepEqual(servers[0], { urls: [turn.stunUrl] });
        minted = turnEntry(servers);
        assert.deepEqual(minted.urls, [turn.url]);
        // The user is the global ident, so one ident in two rooms has two TURN users.
        const m = /^(\d+):room:alice$/.exec(minted.username);
        assert.ok(m, minted.username);
        const expiry = Number(m[1]);
        assert.ok(expiry >= before + 3600 && expiry <= Math.ceil(Date.now() / 1000) + 3600);
        const r = await uclientAllocate(turn.port, minted.username, minted.credential);
        assertAllocated(r, await turn.log(), minted.username);
      });

      await t.step("a credential signed with another secret is refused", async () => {
        const c = await turnCredential(secret("wrong"), "forged", Date.now() / 1000, 3600);
        const r = await uclientAllocate(turn.port, c.username, c.credential);
        assertRefused(r, await turn.log(), c.username);
      });

      await t.step("an expired credential is refused", async () => {
        // Signed with the right secret, but its expiry lies an hour in the past.
        const c = await turnCredential(shared, "expired", Date.now() / 1000 - 7200, 3600);
        assert.ok(Number(c.username.split(":")[0]) < Date.now() / 1000 - 3000);
        const r = await uclientAllocate(turn.port, c.username, c.credential);
        assertRefused(r, await turn.log(), c.username);
      });

      await t.step(
        "a minted credential with another ident or a later expiry is refused",
        async () => {
          const expiry = Number(minted.username.split(":")[0]);
          for (const username of [`${expiry}:mallory`, `${expiry + 86400}:alice`]) {
            const r = await uclientAllocate(turn.port, username, minted.credential);
            assertRefused(r, await turn.log(), username);
          }
        },
      );

      await t.step("with several secrets configured, the first one signs", async () => {
        const old = secret("old");
        const first = turnEntry(
          await iceFromServer(
            ["--turn-secret", `${shared},${old}`, "--turn-urls", turn.url],
            "bob",
          ),
        );
        assertAllocated(
          await uclientAllocate(turn.port, first.username, first.credential),
          await turn.log(),
          first.username,
        );
        const second = turnEntry(
          await iceFromServer(
            ["--turn-secret", `${old},${shared}`, "--turn-urls", turn.url],
            "carol",
          ),
        );
        assertRefused(
          await uclientAllocate(turn.port, second.username, second.credential),
          await turn.log(),
          second.username,
        );
      });
    } finally {
      await turn.stop();
    }
  },
});

Deno.test({
  name:
    "coturn: during a rotation coturn accepts credentials signed with the new and the old secret",
  ignore: !available && !inCI(),
  async fn() {
    const oldSecret = secret("old");
    const newSecret = secret("new");
    // Step 1 of the README's rotation: coturn knows both secrets.
    const turn = await startCoturn({ secret: [newSecret, oldSecret] });
    try {
      // A signal server not yet rotated, and one that signs with the new secret.
      const before = turnEntry(
        await iceFromServer(["--turn-secret", oldSecret, "--turn-urls", turn.url], "dave"),
      );
      const after = turnEntry(
        await iceFromServer(
          ["--turn-secret", `${newSecret},${oldSecret}`, "--turn-urls", turn.url],
          "erin",
        ),
      );
      assertAllocated(
        await uclientAllocate(turn.port, before.username, before.credential),
        await turn.log(),
        before.username,
      );
      assertAllocated(
        await uclientAllocate(turn.port, after.username, after.credential),
        await turn.log(),
        after.username,
      );
    } finally {
      await turn.stop();
    }
  },
});
