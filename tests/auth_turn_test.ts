/**
 * TURN credentials once tokens are in use, against a real coturn: without
 * a grant's `turn` an `["ice"]` answer has no TURN entry; with it, the TURN
 * user names the token's subject and the global ident, and coturn
 * allocates a relay with the credential (`turnutils_uclient`).
 *
 * In CI (`CI` set) a missing turnserver fails the test instead of skipping it.
 */

import assert from "node:assert/strict";
import type { IceServer } from "../lib/ice/turn.ts";
import { closeAll, hs256, newSecret, serve, Ws } from "./helpers/auth_harness.ts";
import { coturnAvailable, inCI, startCoturn, uclientAllocate } from "./helpers/coturn.ts";

const available = await coturnAvailable();

async function ice(ws: Ws): Promise<IceServer[]> {
  const m = await ws.call(["ice"]) as [string, IceServer[]];
  assert.equal(m[0], "ice", JSON.stringify(m));
  return m[1];
}

Deno.test({
  name:
    "turn: only a grant with turn gets TURN credentials, made out to its subject; coturn relays",
  ignore: !available && !inCI(),
  async fn() {
    const turnSecret = `turn-${crypto.randomUUID()}`;
    const coturn = await startCoturn({ secret: turnSecret });
    const jwtSecret = newSecret();
    const sockets: Ws[] = [];
    try {
      await using s = serve([
        "--jwt-secrets",
        jwtSecret,
        "--turn-secret",
        turnSecret,
        "--turn-urls",
        coturn.url,
        "--stun-urls",
        coturn.stunUrl,
      ]);
      const open = async (protocols?: string[]) => {
        const ws = await Ws.open(s.ws, protocols);
        sockets.push(ws);
        return ws;
      };
      const stunOnly = [{ urls: [coturn.stunUrl] }];

      // No token, and a token without the turn claim (or with turn: false): STUN only.
      const anon = await open();
      assert.deepEqual(await ice(anon), stunOnly);
      const plain = await open(["jwt", await hs256(jwtSecret, { rooms: ["*"] }, { sub: "u-1" })]);
      await plain.call(["join", "p", "room"]);
      assert.deepEqual(await ice(plain), stunOnly);
      const no = await open(["jwt", await hs256(jwtSecret, { turn: false }, { sub: "u-2" })]);
      assert.deepEqual(await ice(no), stunOnly);

      // turn: true, in the subprotocol.
      const relay = await open(["jwt", await hs256(jwtSecret, { turn: true }, { sub: "user-7" })]);
      assert.deepEqual(await relay.call(["join", "alice", "room"]), ["join", "room:alice"]);
      await relay.drain();
      const servers = await ice(relay);
      assert.equal(servers.length, 2, JSON.stringify(servers));
      const entry = servers[1];
      assert.deepEqual(entry.urls, [coturn.url]);
      const m = /^(\d+):user-7\/room:alice$/.exec(entry.username ?? "");
      assert.ok(m, entry.username);
      const r = await uclientAllocate(coturn.port, entry.username!, entry.credential!);
      assert.equal(r.code, 0, `uclient failed:\n${r.output}`);
      assert.ok(r.allocated && r.received > 0, r.output);
      const log = await coturn.log();
      assert.ok(
        log.includes(`user <${entry.username}>: incoming packet ALLOCATE processed, success`),
        "coturn logged the allocation under the subject's user name",
      );

      // turn: true granted later, by an ["auth"] refresh, on an anonymous socket.
      const later = await open();
      assert.deepEqual(await ice(later), stunOnly);
      const grant = await hs256(jwtSecret, { turn: true }, { sub: "user-8" });
      assert.equal((await later.call(["auth", grant]) as string[])[0], "auth");
      const after = await ice(later);
      assert.equal(after.length, 2);
      assert.match(after[1].username!, /^\d+:user-8\/[a-z]{24}$/);
    } finally {
      await closeAll(sockets);
      await coturn.stop();
    }
  },
});
