/**
 * The Lua scripts of PeerJS's cluster mode (see `lib/cluster/peers.ts`), as
 * text, and the commands ioredis makes of them.
 *
 * Keys (a PeerJS key holds no colon, so `<key>:<id>` names one id):
 * - `pj:h:<key>`: hash, id → its holder, `<instance>|<conn>|<token>`;
 * - `pj:im:<instance>`: set of the `<key>:<id>` an instance holds;
 * - `pj:insts`: set of instances holding ids (for the reaper);
 * - `pj:q:<key>:<id>`: list, the messages waiting for an id that no live
 *   instance holds, oldest first (each `<srclen>:<src><frame>`);
 * - `pj:qs:<key>:<id>`: set, the senders of those messages;
 * - `pj:qdue`: sorted set, `<key>:<id>` by when its queue expires (ms,
 *   Redis' clock: its first message plus the expire timeout); a queue
 *   exists exactly while it is here;
 * - `pj:qb`: hash, `<key>:<id>` → the bytes its messages count;
 * - `pj:qn`, `pj:qbytes`: messages and bytes in every queue;
 * - `pj:t:<instance>:<conn>`: list, a queue a claim took for connection
 *   `conn`, until the instance says it delivered it (`pjTaken`): a header
 *   `<due>|<bytes>|<senders>`, the senders, then the messages. A release
 *   that finds it puts the messages back at the front of the queue (the
 *   claimant left before it got them), so they stay ahead of any queued
 *   since; it expires after {@link STASH_TTL_MS} (an instance that died).
 *
 * Liveness is the DIVA backplane's: an instance is alive while its
 * `sig:alive:<instance>` key exists (refreshed every second, expiring 5 s
 * later). An id whose holder is not alive counts as free for claims and
 * relays at once; the reaper deletes such holders for good.
 *
 * Channels: each instance listens on `pj:i:<instance>`: `m<conn>\n<frame>`
 * is a frame for its connection `conn`; `r<conn>` says that another
 * instance took over the id `conn` held.
 *
 * @module
 */

import { RELAY_OUTCOMES, type RelayOutcome } from "../peerjs/directory.ts";
import type { ExpiredQueue, PeerClaimReply, PeerRelayAnswer } from "./peers.ts";

/** How long a taken queue waits for its claimant to say it delivered it, ms. */
export const STASH_TTL_MS = 60_000;

/** Lua helpers: a holder's parts, an instance's liveness, taking an id's queue and giving it back. */
const HELPERS = `
local function holder(h)
  local a = string.find(h, '|', 1, true)
  local b = string.find(h, '|', a + 1, true)
  return string.sub(h, 1, a - 1), string.sub(h, a + 1, b - 1), string.sub(h, b + 1)
end
local function alive(inst)
  return redis.call('EXISTS', 'sig:alive:' .. inst) == 1
end
local function take(kid, stash)
  local due = redis.call('ZSCORE', 'pj:qdue', kid)
  if not due then return {}, {} end
  local q, qs = 'pj:q:' .. kid, 'pj:qs:' .. kid
  local entries = redis.call('LRANGE', q, 0, -1)
  local senders = redis.call('SMEMBERS', qs)
  redis.call('DEL', q, qs)
  redis.call('ZREM', 'pj:qdue', kid)
  local bytes = tonumber(redis.call('HGET', 'pj:qb', kid) or '0')
  redis.call('HDEL', 'pj:qb', kid)
  if bytes > 0 then redis.call('DECRBY', 'pj:qbytes', bytes) end
  if #entries > 0 then redis.call('DECRBY', 'pj:qn', #entries) end
  if stash and #entries > 0 then
    redis.call('DEL', stash)
    redis.call('RPUSH', stash, due .. '|' .. bytes .. '|' .. #senders)
    for i = 1, #senders do redis.call('RPUSH', stash, senders[i]) end
    for i = 1, #entries do redis.call('RPUSH', stash, entries[i]) end
    redis.call('PEXPIRE', stash, ${STASH_TTL_MS})
  end
  return entries, senders
end
local function giveback(stash, kid)
  local s = redis.call('LRANGE', stash, 0, -1)
  if #s == 0 then return 0 end
  redis.call('DEL', stash)
  local a = string.find(s[1], '|', 1, true)
  local b = string.find(s[1], '|', a + 1, true)
  local due, bytes = tonumber(string.sub(s[1], 1, a - 1)), tonumber(string.sub(s[1], a + 1, b - 1))
  local ns = tonumber(string.sub(s[1], b + 1))
  local q = 'pj:q:' .. kid
  for i = #s, ns + 2, -1 do redis.call('LPUSH', q, s[i]) end
  for i = 2, ns + 1 do redis.call('SADD', 'pj:qs:' .. kid, s[i]) end
  local cur = redis.call('ZSCORE', 'pj:qdue', kid)
  if not cur or tonumber(cur) > due then redis.call('ZADD', 'pj:qdue', due, kid) end
  redis.call('HINCRBY', 'pj:qb', kid, bytes)
  redis.call('INCRBY', 'pj:qbytes', bytes)
  redis.call('INCRBY', 'pj:qn', #s - ns - 1)
  return #s - ns - 1
end
local function forget(inst)
  local n = 0
  local p = inst .. '|'
  for _, kid in ipairs(redis.call('SMEMBERS', 'pj:im:' .. inst)) do
    local c = string.find(kid, ':', 1, true)
    local hk, id = 'pj:h:' .. string.sub(kid, 1, c - 1), string.sub(kid, c + 1)
    local h = redis.call('HGET', hk, id)
    if h and string.sub(h, 1, #p) == p then
      redis.call('HDEL', hk, id)
      n = n + 1
    end
  end
  redis.call('DEL', 'pj:im:' .. inst)
  return n
end
`;

/**
 * Claims an id: `{'fresh'|'takeover', replaced, entry…}` (`replaced` is the
 * connection of this instance that held it before a takeover, or ''; the
 * entries are what waited for the id, now taken and stashed until the
 * instance says it delivered them), or `{'taken', ''}`. A takeover from
 * another instance tells it on its channel.
 */
export const CLAIM: string = HELPERS + `
local key, id, inst, conn, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local hk, kid = 'pj:h:' .. key, key .. ':' .. id
local outcome, old = 'fresh', ''
local h = redis.call('HGET', hk, id)
if h then
  local hinst, hconn, htoken = holder(h)
  if hinst == inst or alive(hinst) then
    if htoken ~= token then return {'taken', ''} end
    outcome = 'takeover'
    if hinst == inst then
      old = hconn
    else
      redis.call('PUBLISH', 'pj:i:' .. hinst, 'r' .. hconn)
    end
  end
  if hinst ~= inst then redis.call('SREM', 'pj:im:' .. hinst, kid) end
end
redis.call('HSET', hk, id, inst .. '|' .. conn .. '|' .. token)
redis.call('SADD', 'pj:im:' .. inst, kid)
redis.call('SADD', 'pj:insts', inst)
local out = {outcome, old}
local entries = take(kid, 'pj:t:' .. inst .. ':' .. conn)
for i = 1, #entries do out[#out + 1] = entries[i] end
return out
`;

/** The instance delivered what its connection's claim took: forgets the stash. */
export const TAKEN: string = `
return redis.call('DEL', 'pj:t:' .. ARGV[1] .. ':' .. ARGV[2])
`;

/**
 * Relays a frame: published to the holder's instance (`delivered`), or
 * `s<conn>` when the holder is the caller's own connection `conn` (the
 * caller delivers it with the reply, in order with its other relays), or,
 * when no live instance holds the id, queued (`queued`, `full-id`,
 * `full-total`) or not (`dropped`).
 */
export const RELAY: string = HELPERS + `
local key, src, dst, frame, queue = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local h = redis.call('HGET', 'pj:h:' .. key, dst)
if h then
  local hinst, hconn = holder(h)
  if hinst == ARGV[11] then return 's' .. hconn end
  if alive(hinst) then
    redis.call('PUBLISH', 'pj:i:' .. hinst, 'm' .. hconn .. '\\n' .. frame)
    return 'delivered'
  end
end
if queue ~= '1' then return 'dropped' end
local srclen, size = ARGV[6], tonumber(ARGV[7])
local maxPerId, maxBytes, expireMs = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local kid = key .. ':' .. dst
local q = 'pj:q:' .. kid
local n = redis.call('LLEN', q)
if n >= maxPerId then return 'full-id' end
if tonumber(redis.call('GET', 'pj:qbytes') or '0') + size > maxBytes then return 'full-total' end
if n == 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', 'pj:qdue', now + expireMs, kid)
end
redis.call('RPUSH', q, srclen .. ':' .. src .. frame)
redis.call('SADD', 'pj:qs:' .. kid, src)
redis.call('HINCRBY', 'pj:qb', kid, size)
redis.call('INCRBY', 'pj:qbytes', size)
redis.call('INCR', 'pj:qn')
return 'queued'
`;

/**
 * Gives an id up if this instance's connection holds it (1 if it did), and
 * puts back at the front of the queue what its claim took and it never got.
 */
export const RELEASE: string = HELPERS + `
local key, id, inst, conn = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
giveback('pj:t:' .. inst .. ':' .. conn, key .. ':' .. id)
local hk = 'pj:h:' .. key
local h = redis.call('HGET', hk, id)
local p = inst .. '|' .. conn .. '|'
if h and string.sub(h, 1, #p) == p then
  redis.call('HDEL', hk, id)
  redis.call('SREM', 'pj:im:' .. inst, key .. ':' .. id)
  return 1
end
return 0
`;

/**
 * Registers again an id this instance holds (after Redis lost it, or the
 * instance was reaped): `{'ok', entry…}` with what waited for it meanwhile,
 * or `{'conflict'}` when another live instance holds it now.
 */
export const RESTORE: string = HELPERS + `
local key, id, inst, conn, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local hk, kid = 'pj:h:' .. key, key .. ':' .. id
local h = redis.call('HGET', hk, id)
if h then
  local hinst = holder(h)
  if hinst ~= inst and alive(hinst) then return {'conflict'} end
  if hinst ~= inst then redis.call('SREM', 'pj:im:' .. hinst, kid) end
end
redis.call('HSET', hk, id, inst .. '|' .. conn .. '|' .. token)
redis.call('SADD', 'pj:im:' .. inst, kid)
redis.call('SADD', 'pj:insts', inst)
local out = {'ok'}
local entries = take(kid, 'pj:t:' .. inst .. ':' .. conn)
for i = 1, #entries do out[#out + 1] = entries[i] end
return out
`;

/** Gives up every id this instance holds in Redis but the given `<key>:<id>`s; how many. */
export const PRUNE: string = `
local inst = ARGV[1]
local keep = {}
for i = 2, #ARGV do keep[ARGV[i]] = true end
local p = inst .. '|'
local n = 0
for _, kid in ipairs(redis.call('SMEMBERS', 'pj:im:' .. inst)) do
  if not keep[kid] then
    local c = string.find(kid, ':', 1, true)
    local hk, id = 'pj:h:' .. string.sub(kid, 1, c - 1), string.sub(kid, c + 1)
    local h = redis.call('HGET', hk, id)
    if h and string.sub(h, 1, #p) == p then redis.call('HDEL', hk, id) end
    redis.call('SREM', 'pj:im:' .. inst, kid)
    n = n + 1
  end
end
return n
`;

/**
 * Takes up to ARGV[1] queues that are due: `{kid, n, sender×n, kid, n, …}`
 * (each sender is to be told `EXPIRE`).
 */
export const SWEEP: string = HELPERS + `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', 'pj:qdue', '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, kid in ipairs(due) do
  local _, senders = take(kid)
  out[#out + 1] = kid
  out[#out + 1] = #senders
  for i = 1, #senders do out[#out + 1] = senders[i] end
end
return out
`;

/** Releases every id of every instance whose liveness key expired; how many. */
export const REAP: string = HELPERS + `
local n = 0
for _, inst in ipairs(redis.call('SMEMBERS', 'pj:insts')) do
  if not alive(inst) then
    n = n + forget(inst)
    redis.call('SREM', 'pj:insts', inst)
  end
end
return n
`;

/** Releases every id of this instance on a graceful stop; how many. */
export const GOODBYE: string = HELPERS + `
local n = forget(ARGV[1])
redis.call('SREM', 'pj:insts', ARGV[1])
return n
`;

/** A script's array reply. */
export type PeerReply = (string | number)[];

/** The scripts as commands on an ioredis client (see {@link PEER_SCRIPTS}). */
export interface PeerScripts {
  /** {@link CLAIM}. */
  pjClaim(key: string, id: string, inst: string, conn: number, token: string): Promise<PeerReply>;
  /** {@link RELAY}. */
  pjRelay(
    key: string,
    src: string,
    dst: string,
    frame: string,
    queue: 0 | 1,
    srclen: number,
    size: number,
    maxPerId: number,
    maxBytes: number,
    expireMs: number,
    inst: string,
  ): Promise<string>;
  /** {@link RELEASE}. */
  pjRelease(key: string, id: string, inst: string, conn: number): Promise<number>;
  /** {@link TAKEN}. */
  pjTaken(inst: string, conn: number): Promise<number>;
  /** {@link RESTORE}. */
  pjRestore(
    key: string,
    id: string,
    inst: string,
    conn: number,
    token: string,
  ): Promise<PeerReply>;
  /** {@link PRUNE}. */
  pjPrune(inst: string, ...keep: string[]): Promise<number>;
  /** {@link SWEEP}. */
  pjSweep(max: number): Promise<PeerReply>;
  /** {@link REAP}. */
  pjReap(): Promise<number>;
  /** {@link GOODBYE}. */
  pjGoodbye(inst: string): Promise<number>;
}

/** Each command name with its script, for ioredis's `defineCommand`. */
export const PEER_SCRIPTS: readonly (readonly [keyof PeerScripts, string])[] = [
  ["pjClaim", CLAIM],
  ["pjRelay", RELAY],
  ["pjRelease", RELEASE],
  ["pjTaken", TAKEN],
  ["pjRestore", RESTORE],
  ["pjPrune", PRUNE],
  ["pjSweep", SWEEP],
  ["pjReap", REAP],
  ["pjGoodbye", GOODBYE],
];

/** Parses a claim script's reply. */
export function claimReply(reply: PeerReply): PeerClaimReply {
  const outcome = String(reply[0]);
  if (outcome === "taken") return { outcome: "taken", waiting: [] };
  const old = String(reply[1] ?? "");
  return {
    outcome: outcome === "takeover" ? "takeover" : "fresh",
    replaced: old === "" ? undefined : Number(old),
    waiting: reply.slice(2).map(String),
  };
}

/** Parses a sweep script's reply: `{kid, n, sender×n, …}`. */
export function sweepReply(reply: PeerReply): ExpiredQueue[] {
  const out: ExpiredQueue[] = [];
  for (let i = 0; i + 1 < reply.length;) {
    const kid = String(reply[i]);
    const n = Number(reply[i + 1]);
    const colon = kid.indexOf(":");
    out.push({
      key: kid.slice(0, colon),
      id: kid.slice(colon + 1),
      senders: reply.slice(i + 2, i + 2 + n).map(String),
    });
    i += 2 + n;
  }
  return out;
}

/** Parses a relay script's reply: an outcome, or `s<conn>` for a holder on this instance. */
export function relayReply(reply: string): PeerRelayAnswer {
  if (reply.charCodeAt(0) === 0x73 /* s */) return { local: Number(reply.slice(1)) };
  return (RELAY_OUTCOMES as readonly string[]).includes(reply) ? reply as RelayOutcome : "dropped";
}
