/**
 * Our own transport against the WebSocket clients people run besides the
 * browser and Deno (those are in `own_transport_ws_test.ts`): the `ws`
 * package (Node's most used client, which offers permessage-deflate by
 * default and sends fragments and pings on request) and Node's built-in
 * WebSocket (undici), run by the real `node` binary.
 *
 * @module
 */

import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import WebSocket from "ws";
import { withTimeout } from "./helpers/own_raw.ts";
import { eventually, startOwn } from "./helpers/own_server.ts";

/** Opens a `ws` client with its messages queued. */
async function wsClient(url: string) {
  const ws = new WebSocket(url);
  const queue: { data: Buffer; binary: boolean }[] = [];
  const waiters: ((m: { data: Buffer; binary: boolean }) => void)[] = [];
  ws.on("message", (data: Buffer, binary: boolean) => {
    const m = { data, binary };
    const w = waiters.shift();
    if (w) w(m);
    else queue.push(m);
  });
  const closed = new Promise<[number, string]>((resolve) =>
    ws.on("close", (code: number, reason: Buffer) => resolve([code, reason.toString()]))
  );
  await withTimeout(
    new Promise<void>((resolve, reject) => {
      ws.once("open", () => resolve());
      ws.once("error", reject);
    }),
    5000,
    "ws to open",
  );
  const next = () =>
    withTimeout(
      queue.length > 0
        ? Promise.resolve(queue.shift()!)
        : new Promise<{ data: Buffer; binary: boolean }>((r) => waiters.push(r)),
      5000,
      "a message",
    );
  return { ws, next, closed };
}

Deno.test("ws client: deflate declined, text/binary/fragmented echo, ping, close with reason", async () => {
  await using t = startOwn();
  const c = await wsClient(`ws://127.0.0.1:${t.port}/`);
  // ws offered permessage-deflate; we do not implement it, so none is agreed.
  assert.equal(c.ws.extensions, "");

  c.ws.send("héllo ✓");
  let m = await c.next();
  assert.deepEqual([m.binary, m.data.toString()], [false, "héllo ✓"]);

  const bytes = new Uint8Array(70_000).map((_, i) => i % 251);
  c.ws.send(bytes);
  m = await c.next();
  assert.equal(m.binary, true);
  assert.deepEqual(new Uint8Array(m.data), bytes);

  // One message in three fragments.
  c.ws.send("one ", { fin: false });
  c.ws.send("two ", { fin: false });
  c.ws.send("three", { fin: true });
  m = await c.next();
  assert.deepEqual([m.binary, m.data.toString()], [false, "one two three"]);

  const pong = new Promise<string>((resolve) =>
    c.ws.once("pong", (d: Buffer) => resolve(d.toString()))
  );
  c.ws.ping("are you there");
  assert.equal(await withTimeout(pong, 5000, "pong"), "are you there");

  c.ws.close(4100, "done here");
  assert.deepEqual(await withTimeout(c.closed, 5000, "close"), [4100, "done here"]);
  await eventually("the server sees the close", () => t.side.closes.length === 1);
  assert.deepEqual(t.side.closes, [{ code: 4100, reason: "done here", wasClean: true }]);
});

Deno.test("ws client: a server-initiated close reaches it with code and reason", async () => {
  await using t = startOwn();
  const c = await wsClient(`ws://127.0.0.1:${t.port}/`);
  c.ws.send("close-me");
  assert.deepEqual(await withTimeout(c.closed, 5000, "close"), [4000, "asked"]);
});

const NODE_CLIENT = `
const url = process.argv[1];
const out = [];
const ws = new WebSocket(url);
ws.binaryType = "arraybuffer";
const next = () => new Promise((r) => ws.addEventListener("message", (e) => r(e.data), { once: true }));
ws.onerror = (e) => { console.log(JSON.stringify({ error: String(e.message ?? e) })); process.exit(1); };
ws.onopen = async () => {
  ws.send("héllo from node");
  out.push(await next());
  ws.send(new Uint8Array([0, 1, 2, 255]));
  out.push(Array.from(new Uint8Array(await next())));
  ws.send("x".repeat(200000));
  out.push((await next()).length);
  ws.onclose = (e) => {
    console.log(JSON.stringify({ out, code: e.code, reason: e.reason, clean: e.wasClean }));
    process.exit(0);
  };
  ws.close(1000, "node done");
};
setTimeout(() => { console.log(JSON.stringify({ error: "timeout", out })); process.exit(1); }, 10000);
`;

Deno.test("Node's built-in WebSocket (undici): echo and a clean close", async () => {
  await using t = startOwn();
  // Node 20 has the client behind a flag; from 22 on it is always there.
  const version = new TextDecoder().decode(
    (await new Deno.Command("node", { args: ["--version"], stdout: "piped" }).output()).stdout,
  );
  const flag = Number(version.slice(1).split(".")[0]) < 22 ? ["--experimental-websocket"] : [];
  const cmd = new Deno.Command("node", {
    args: [
      ...flag,
      "--no-warnings",
      "-e",
      NODE_CLIENT,
      `ws://127.0.0.1:${t.port}/`,
    ],
    stdout: "piped",
    stderr: "piped",
  });
  const r = await cmd.output();
  const text = new TextDecoder().decode(r.stdout).trim();
  assert.equal(r.code, 0, `node said: ${text} ${new TextDecoder().decode(r.stderr)}`);
  assert.deepEqual(JSON.parse(text), {
    out: ["héllo from node", [0, 1, 2, 255], 200000],
    code: 1000,
    reason: "node done",
    clean: true,
  });
  await eventually("the server sees the close", () => t.side.closes.length === 1);
  assert.deepEqual(t.side.closes, [{ code: 1000, reason: "node done", wasClean: true }]);
});
