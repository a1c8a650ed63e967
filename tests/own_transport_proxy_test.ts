/**
 * Our own transport behind a trusted proxy that keeps its upstream
 * connections alive: one connection carries requests of many clients in
 * turn, and each request is the client its header names.
 *
 * @module
 */

import assert from "node:assert/strict";
import { RawConn } from "./helpers/own_raw.ts";
import { startOwn } from "./helpers/own_server.ts";

const REQ = (xff: string) =>
  `GET /client HTTP/1.1\r\nHost: test\r\nX-Forwarded-For: ${xff}\r\n\r\n`;

Deno.test("trusted proxy, kept-alive: each request is its own client, and the cap follows it", async () => {
  await using t = startOwn({
    maxConnectionsPerAddress: 1,
    trustProxy: { header: "X-Forwarded-For", proxies: ["127.0.0.1"] },
  });
  const upstream = await RawConn.connect(t.port);
  const other = await RawConn.connect(t.port);
  try {
    await upstream.write(REQ("198.51.100.1"));
    assert.equal((await upstream.response()).body, "198.51.100.1");
    // The same connection now carries another client's request.
    await upstream.write(REQ("198.51.100.2"));
    assert.equal((await upstream.response()).body, "198.51.100.2");
    // The first client holds no connection any more, so its next one is let in;
    // a request for it on the upstream connection is then over the cap of 1.
    await other.write(REQ("198.51.100.1"));
    assert.equal((await other.response()).body, "198.51.100.1");
    await upstream.write(REQ("198.51.100.1"));
    const r = await upstream.response();
    assert.equal(r.status, 503);
    assert.equal(t.server.counters.refusedAddress, 1);
  } finally {
    upstream.close();
    other.close();
  }
});
