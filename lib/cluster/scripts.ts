/**
 * The Lua scripts of the Redis backplane, as text (so `deno compile` bundles
 * them with the code), and the commands ioredis makes of them.
 *
 * Keys: `sig:owner` (hash: global ident → holding instance), `sig:room:<room>`
 * (sorted set: members scored by their join's sequence number), `sig:im:<id>`
 * (set: an instance's members), `sig:seq` (the global sequence number),
 * `sig:alive:<id>` (an instance's liveness, with a TTL) and `sig:insts` (the
 * instances to watch). Every script that changes a room PUBLISHes its event
 * `seq|kind|instance|g` on `sig:ev:<room>` from inside the script, so the
 * channel carries the room's joins and leaves in the order Redis applied
 * them.
 *
 * @module
 */

const OWNER = "sig:owner";

/** Claims a global ident and joins its room, or says why not. */
export const CLAIM: string = `
local g, room, inst, max = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('HEXISTS', '${OWNER}', g) == 1 then return {'taken'} end
local rk = 'sig:room:' .. room
if redis.call('ZCARD', rk) >= max then return {'full'} end
local out = {'ok', 0}
for _, m in ipairs(redis.call('ZRANGE', rk, 0, -1)) do
  out[#out + 1] = m
  out[#out + 1] = redis.call('HGET', '${OWNER}', m) or ''
end
local seq = redis.call('INCR', 'sig:seq')
out[2] = seq
redis.call('HSET', '${OWNER}', g, inst)
redis.call('ZADD', rk, seq, g)
redis.call('SADD', 'sig:im:' .. inst, g)
redis.call('PUBLISH', 'sig:ev:' .. room, seq .. '|j|' .. inst .. '|' .. g)
return out
`;

/** Gives up a global ident held by this instance. */
export const RELEASE: string = `
local g, room, inst = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', '${OWNER}', g) ~= inst then return 0 end
redis.call('HDEL', '${OWNER}', g)
redis.call('ZREM', 'sig:room:' .. room, g)
redis.call('SREM', 'sig:im:' .. inst, g)
local seq = redis.call('INCR', 'sig:seq')
redis.call('PUBLISH', 'sig:ev:' .. room, seq .. '|l|' .. inst .. '|' .. g)
return 1
`;

/** Re-registers a member this instance holds (after Redis lost it). */
export const RESTORE: string = `
local g, room, inst = ARGV[1], ARGV[2], ARGV[3]
local owner = redis.call('HGET', '${OWNER}', g)
if owner and owner ~= inst then return 'conflict' end
local rk = 'sig:room:' .. room
if owner == inst and redis.call('ZSCORE', rk, g) then return 'kept' end
local seq = redis.call('INCR', 'sig:seq')
redis.call('HSET', '${OWNER}', g, inst)
redis.call('ZADD', rk, seq, g)
redis.call('SADD', 'sig:im:' .. inst, g)
redis.call('PUBLISH', 'sig:ev:' .. room, seq .. '|r|' .. inst .. '|' .. g)
return 'restored'
`;

/** Refreshes this instance's liveness; 1 if it was still alive. */
export const HEARTBEAT: string = `
local existed = redis.call('EXISTS', 'sig:alive:' .. ARGV[1])
redis.call('SET', 'sig:alive:' .. ARGV[1], '1', 'PX', ARGV[2])
redis.call('SADD', 'sig:insts', ARGV[1])
return existed
`;

/** Releases every member of every instance whose liveness key expired. */
export const REAP: string = `
local reaped = 0
for _, id in ipairs(redis.call('SMEMBERS', 'sig:insts')) do
  if redis.call('EXISTS', 'sig:alive:' .. id) == 0 then
    for _, g in ipairs(redis.call('SMEMBERS', 'sig:im:' .. id)) do
      local room = string.sub(g, 1, string.find(g, ':', 1, true) - 1)
      if redis.call('HGET', '${OWNER}', g) == id then redis.call('HDEL', '${OWNER}', g) end
      redis.call('ZREM', 'sig:room:' .. room, g)
      local seq = redis.call('INCR', 'sig:seq')
      redis.call('PUBLISH', 'sig:ev:' .. room, seq .. '|l|' .. id .. '|' .. g)
      reaped = reaped + 1
    end
    redis.call('DEL', 'sig:im:' .. id)
    redis.call('SREM', 'sig:insts', id)
  end
end
return reaped
`;

/** A room's members with their holders, and the sequence number they are current at. */
export const SNAPSHOT: string = `
local out = {tonumber(redis.call('GET', 'sig:seq') or '0')}
for _, m in ipairs(redis.call('ZRANGE', 'sig:room:' .. ARGV[1], 0, -1)) do
  out[#out + 1] = m
  out[#out + 1] = redis.call('HGET', '${OWNER}', m) or ''
end
return out
`;

/** Deletes this instance's registration on a graceful stop. */
export const GOODBYE: string = `
redis.call('DEL', 'sig:alive:' .. ARGV[1])
redis.call('SREM', 'sig:insts', ARGV[1])
redis.call('DEL', 'sig:im:' .. ARGV[1])
return 1
`;

/** A script's array reply. */
export type Reply = (string | number)[];

/** The scripts as commands on an ioredis client (see {@link SCRIPTS}). */
export interface Scripts {
  /** {@link CLAIM}: `['taken']`, `['full']` or `['ok', seq, g, owner, g, owner…]`. */
  sigClaim(g: string, room: string, inst: string, max: number): Promise<Reply>;
  /** {@link RELEASE}: 1 if released, 0 if not held by `inst`. */
  sigRelease(g: string, room: string, inst: string): Promise<number>;
  /** {@link RESTORE}: `restored`, `kept` or `conflict`. */
  sigRestore(g: string, room: string, inst: string): Promise<string>;
  /** {@link HEARTBEAT}: 1 if `inst` was still alive. */
  sigHeartbeat(inst: string, ttl: number): Promise<number>;
  /** {@link REAP}: how many members were released. */
  sigReap(): Promise<number>;
  /** {@link SNAPSHOT}: `[seq, g, owner, g, owner…]`. */
  sigSnapshot(room: string): Promise<Reply>;
  /** {@link GOODBYE}: 1. */
  sigGoodbye(inst: string): Promise<number>;
}

/** Each command name with its script, for ioredis's `defineCommand`. */
export const SCRIPTS: readonly (readonly [keyof Scripts, string])[] = [
  ["sigClaim", CLAIM],
  ["sigRelease", RELEASE],
  ["sigRestore", RESTORE],
  ["sigHeartbeat", HEARTBEAT],
  ["sigReap", REAP],
  ["sigSnapshot", SNAPSHOT],
  ["sigGoodbye", GOODBYE],
];
