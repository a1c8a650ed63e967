import assert from "node:assert/strict";
import { clientAddress, isTrusted, normalizeAddress } from "../lib/transport/own/client_address.ts";

const trust = { header: "x-forwarded-for", proxies: ["10.0.0.1", "10.0.0.2", "::1"] };

Deno.test("client address: without trust the TCP peer is the answer", () => {
  assert.equal(clientAddress("192.0.2.7", "1.1.1.1", undefined), "192.0.2.7");
  assert.equal(isTrusted("10.0.0.1", undefined), false);
});

Deno.test("client address: a chain of trusted proxies is skipped from the right", () => {
  assert.equal(clientAddress("10.0.0.1", "198.51.100.4, 10.0.0.2", trust), "198.51.100.4");
  // A client that writes its own header cannot choose its address: the
  // rightmost untrusted entry is the one the first trusted proxy saw.
  assert.equal(clientAddress("10.0.0.1", "6.6.6.6, 198.51.100.4", trust), "198.51.100.4");
});

Deno.test("client address: when every entry is a trusted proxy the last one seen stands", () => {
  assert.equal(clientAddress("10.0.0.1", "10.0.0.2, 10.0.0.1", trust), "10.0.0.2");
  assert.equal(clientAddress("10.0.0.1", "", trust), "10.0.0.1");
});

Deno.test("client address: an entry that is not an address ends the walk", () => {
  assert.equal(clientAddress("10.0.0.1", "evil<script>, 10.0.0.2", trust), "10.0.0.2");
  assert.equal(clientAddress("10.0.0.1", "unknown", trust), "10.0.0.1");
  assert.equal(clientAddress("10.0.0.1", "1.1.1.1, _hidden", trust), "10.0.0.1");
});

Deno.test("client address: IPv6 forms are normalised before comparing", () => {
  assert.equal(clientAddress("[::1]", "2001:DB8::5", trust), "2001:db8::5");
  assert.equal(clientAddress("::ffff:10.0.0.1", "[2001:db8::9]", trust), "2001:db8::9");
  assert.equal(clientAddress("::FFFF:10.0.0.2", " ::ffff:203.0.113.9 ", trust), "203.0.113.9");
  assert.equal(isTrusted("[::1]", trust), true);
  assert.equal(isTrusted("::ffff:10.0.0.2", trust), true);
  assert.equal(isTrusted("10.0.0.3", trust), false);
});

Deno.test("client address: normalising keeps non-mapped IPv6 and plain IPv4 as they are", () => {
  assert.equal(normalizeAddress("127.0.0.1"), "127.0.0.1");
  assert.equal(normalizeAddress("fe80::1"), "fe80::1");
  assert.equal(normalizeAddress("::ffff:abcd"), "::ffff:abcd");
});
