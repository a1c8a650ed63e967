/**
 * The Lua scripts of y-webrtc's cluster mode (see `lib/cluster/topics.ts`),
 * as text, and the commands ioredis makes of them.
 *
 * Topics appear in their wire form (their JSON text, see `wireTopic`).
 * Keys: `yws:n:<wire>` (hash: instance → how many of its connections
 * subscribe the topic; the topic's holders), `yws:m:<inst>:<wire>` (set:
 * those connections' ids), `yws:it:<inst>` (set: the topics an instance
 * holds) and `yws:insts` (set: instances holding any topic, for the reaper).
 * Liveness is the DIVA backplane's: an instance is dead once its
 * `sig:alive:<inst>` key expired.
 *
 * Channels: each instance listens on `yws:i:<inst>`. Every script that
 * changes a topic's counts sends each holder `c<total>|<own>|<seq>|<wire>`
 * from inside the script (`own` is that holder's count; `seq` is the
 * caller's sequence number on the caller's copy, 0 on the others), so each
 * holder sees the counts change in the order Redis applied them. A forwarded
 * publish goes to every holder but the sender as given (`p<wire>\n<frame>`).
 *
 * @module
 */

/**
 * Lua: `notify(wire, caller, seq)` tells every holder of `wire` (and the
 * caller, even when it no longer holds it) the topic's total and its own
 * count; returns the total.
 */
const NOTIFY = `
local function notify(wire, caller, seq)
  local counts = redis.call('HGETALL', 'yws:n:' .. wire)
  local total = 0
  for i = 2, #counts, 2 do total = total + tonumber(counts[i]) end
  local told = false
  for i = 1, #counts, 2 do
    local s = 0
    if counts[i] == caller then
      s = seq
      told = true
    end
    redis.call('PUBLISH', 'yws:i:' .. counts[i],
      'c' .. total .. '|' .. counts[i + 1] .. '|' .. s .. '|' .. wire)
  end
  if caller and not told then
    redis.call('PUBLISH', 'yws:i:' .. caller, 'c' .. total .. '|0|' .. seq .. '|' .. wire)
  end
  return total
end
`;

/** Lua: `drop(inst, wire)` forgets every subscriber `inst` has in `wire` and tells the rest. */
const DROP = `
local function drop(inst, wire)
  redis.call('DEL', 'yws:m:' .. inst .. ':' .. wire)
  redis.call('HDEL', 'yws:n:' .. wire, inst)
  redis.call('SREM', 'yws:it:' .. inst, wire)
  notify(wire, false, 0)
end
`;

/**
 * Counts a connection in a topic unless the topic is full cluster-wide:
 * `['ok', total, own]` or `['full', total, own]`. Counting twice is a no-op.
 */
export const SUBSCRIBE: string = NOTIFY + `
local wire, inst, member, max, seq = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local nk = 'yws:n:' .. wire
local mk = 'yws:m:' .. inst .. ':' .. wire
if redis.call('SISMEMBER', mk, member) == 0 then
  local total = 0
  for _, v in ipairs(redis.call('HVALS', nk)) do total = total + tonumber(v) end
  if max > 0 and total >= max then
    local own = tonumber(redis.call('HGET', nk, inst) or '0')
    redis.call('PUBLISH', 'yws:i:' .. inst, 'c' .. total .. '|' .. own .. '|' .. seq .. '|' .. wire)
    return {'full', total, own}
  end
  redis.call('SADD', mk, member)
  redis.call('HINCRBY', nk, inst, 1)
  redis.call('SADD', 'yws:it:' .. inst, wire)
  redis.call('SADD', 'yws:insts', inst)
end
local total = notify(wire, inst, seq)
return {'ok', total, tonumber(redis.call('HGET', nk, inst) or '0')}
`;

/** Stops counting a connection in a topic; 1 if it was counted. */
export const UNSUBSCRIBE: string = NOTIFY + `
local wire, inst, member, seq = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('SREM', 'yws:m:' .. inst .. ':' .. wire, member) == 0 then return 0 end
local nk = 'yws:n:' .. wire
if redis.call('HINCRBY', nk, inst, -1) <= 0 then
  redis.call('HDEL', nk, inst)
  redis.call('SREM', 'yws:it:' .. inst, wire)
end
notify(wire, inst, seq)
return 1
`;

/** Forwards a publish to every holder of the topic but the sender; how many were sent it. */
export const PUBLISH: string = `
local n = 0
for _, i in ipairs(redis.call('HKEYS', 'yws:n:' .. ARGV[1])) do
  if i ~= ARGV[2] then
    redis.call('PUBLISH', 'yws:i:' .. i, ARGV[3])
    n = n + 1
  end
end
return n
`;

/**
 * Sets an instance's subscribers of a topic to exactly the given ones
 * (after Redis lost or missed some); no limit is checked: they were admitted.
 */
export const RESTORE: string = NOTIFY + `
local wire, inst, seq = ARGV[1], ARGV[2], ARGV[3]
local nk = 'yws:n:' .. wire
local mk = 'yws:m:' .. inst .. ':' .. wire
redis.call('DEL', mk)
if #ARGV > 3 then
  for i = 4, #ARGV do redis.call('SADD', mk, ARGV[i]) end
  redis.call('HSET', nk, inst, redis.call('SCARD', mk))
  redis.call('SADD', 'yws:it:' .. inst, wire)
  redis.call('SADD', 'yws:insts', inst)
else
  redis.call('HDEL', nk, inst)
  redis.call('SREM', 'yws:it:' .. inst, wire)
end
notify(wire, inst, seq)
return 1
`;

/** Forgets an instance's subscribers of every topic but the given ones; how many topics. */
export const PRUNE: string = NOTIFY + DROP + `
local inst = ARGV[1]
local keep = {}
for i = 2, #ARGV do keep[ARGV[i]] = true end
local n = 0
for _, wire in ipairs(redis.call('SMEMBERS', 'yws:it:' .. inst)) do
  if not keep[wire] then
    drop(inst, wire)
    n = n + 1
  end
end
return n
`;

/** Forgets every subscriber of every instance whose liveness key expired; how many topics. */
export const REAP: string = NOTIFY + DROP + `
local n = 0
for _, id in ipairs(redis.call('SMEMBERS', 'yws:insts')) do
  if redis.call('EXISTS', 'sig:alive:' .. id) == 0 then
    for _, wire in ipairs(redis.call('SMEMBERS', 'yws:it:' .. id)) do
      drop(id, wire)
      n = n + 1
    end
    redis.call('DEL', 'yws:it:' .. id)
    redis.call('SREM', 'yws:insts', id)
  end
end
return n
`;

/** Forgets every subscriber of this instance on a graceful stop. */
export const GOODBYE: string = NOTIFY + DROP + `
local inst = ARGV[1]
for _, wire in ipairs(redis.call('SMEMBERS', 'yws:it:' .. inst)) do drop(inst, wire) end
redis.call('DEL', 'yws:it:' .. inst)
redis.call('SREM', 'yws:insts', inst)
return 1
`;

/** The scripts as commands on an ioredis client (see {@link TOPIC_SCRIPTS}). */
export interface TopicScripts {
  /** {@link SUBSCRIBE}. */
  ywsSubscribe(
    wire: string,
    inst: string,
    member: string,
    max: number,
    seq: number,
  ): Promise<[string, number, number]>;
  /** {@link UNSUBSCRIBE}. */
  ywsUnsubscribe(wire: string, inst: string, member: string, seq: number): Promise<number>;
  /** {@link PUBLISH}. */
  ywsPublish(wire: string, inst: string, payload: string): Promise<number>;
  /** {@link RESTORE}. */
  ywsRestore(wire: string, inst: string, seq: number, ...members: string[]): Promise<number>;
  /** {@link PRUNE}. */
  ywsPrune(inst: string, ...keep: string[]): Promise<number>;
  /** {@link REAP}. */
  ywsReap(): Promise<number>;
  /** {@link GOODBYE}. */
  ywsGoodbye(inst: string): Promise<number>;
}

/** Each command name with its script, for ioredis's `defineCommand`. */
export const TOPIC_SCRIPTS: readonly (readonly [keyof TopicScripts, string])[] = [
  ["ywsSubscribe", SUBSCRIBE],
  ["ywsUnsubscribe", UNSUBSCRIBE],
  ["ywsPublish", PUBLISH],
  ["ywsRestore", RESTORE],
  ["ywsPrune", PRUNE],
  ["ywsReap", REAP],
  ["ywsGoodbye", GOODBYE],
];
