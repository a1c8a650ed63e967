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
 * channel carries the room's joins, leaves and moves in the order Redis
 * applied them.
 *
 * Resumable sessions: `sig:sess:<h>` (hash, `h` the hex SHA-256 of the
 * session token, never the token itself): `i` the holding instance, `g` its
 * global idents separated by spaces, `t` the grace it was given (ms) while
 * its socket is gone (the key then expires with the grace); a session that
 * moved leaves a tombstone (`m` = 1, `i` the new holder, `c` the connection
 * id there) for {@link TOMBSTONE_MS}. `sig:ss:<id>` (set) lists the hashes of
 * an instance's sessions, so the reaper and a goodbye drop them.
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

/** Drops the session records of instance `id` (Lua, shared by the reaper and the goodbye). */
const DROP_SESSIONS = `
local function drop_sessions(id)
  for _, h in ipairs(redis.call('SMEMBERS', 'sig:ss:' .. id)) do
    local k = 'sig:sess:' .. h
    if redis.call('HGET', k, 'i') == id and redis.call('HEXISTS', k, 'm') == 0 then
      redis.call('DEL', k)
    end
  end
  redis.call('DEL', 'sig:ss:' .. id)
end
`;

/**
 * Releases every member of every instance whose liveness key expired, and
 * drops its sessions: a session in grace there ends as its socket's close
 * would have ended it, with leaves (peers say `bye`).
 */
export const REAP: string = DROP_SESSIONS + `
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
    drop_sessions(id)
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
export const GOODBYE: string = DROP_SESSIONS + `
redis.call('DEL', 'sig:alive:' .. ARGV[1])
redis.call('SREM', 'sig:insts', ARGV[1])
redis.call('DEL', 'sig:im:' .. ARGV[1])
drop_sessions(ARGV[1])
return 1
`;

/** How long a moved session's tombstone stays (ms): its old holder may learn of the move late. */
export const TOMBSTONE_MS = 60_000;

/**
 * Records a session this instance holds: `h`, the idents, and the grace
 * (ms; 0 while a socket holds it, and the key then never expires). Modes:
 * `new` (a fresh token; also drops the record of `prev`, the token it
 * replaces, if this instance holds it), `set` (an update: only if this
 * instance holds the record, so a session that moved away is never written
 * back) and `restore` (after Redis came back: create or update, unless the
 * session moved meanwhile). Answers `{'ok'}`, `{'no'}`, or, for a session
 * that moved, `{'moved', instance, conn}`.
 */
export const SESS_PUT: string = `
local h, inst, idents, ttl, mode, prev = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6]
local key = 'sig:sess:' .. h
if prev ~= '' then
  local pk = 'sig:sess:' .. prev
  if redis.call('HGET', pk, 'i') == inst and redis.call('HEXISTS', pk, 'm') == 0 then
    redis.call('DEL', pk)
  end
  redis.call('SREM', 'sig:ss:' .. inst, prev)
end
local holder = redis.call('HGET', key, 'i')
if holder and redis.call('HEXISTS', key, 'm') == 1 then
  if mode == 'restore' and holder ~= inst then
    return {'moved', holder, redis.call('HGET', key, 'c')}
  end
  return {'no'}
end
if mode == 'new' and holder then return {'no'} end
if mode == 'set' and holder ~= inst then return {'no'} end
if mode == 'restore' and holder and holder ~= inst then return {'no'} end
redis.call('HSET', key, 'i', inst, 'g', idents, 't', ttl)
if ttl > 0 then redis.call('PEXPIRE', key, ttl) else redis.call('PERSIST', key) end
redis.call('SADD', 'sig:ss:' .. inst, h)
return {'ok'}
`;

/** Drops the record of a session this instance held (it ended). */
export const SESS_DROP: string = `
local h, inst = ARGV[1], ARGV[2]
local key = 'sig:sess:' .. h
if redis.call('HGET', key, 'i') == inst and redis.call('HEXISTS', key, 'm') == 0 then
  redis.call('DEL', key)
end
redis.call('SREM', 'sig:ss:' .. inst, h)
return 1
`;

/**
 * Shared by {@link SESS_PEEK} and {@link SESS_MOVE}: the holder of a
 * session another instance may take over, or nil. Not a tombstone, not
 * held by the asker, held by a live instance, and not in the last moments
 * of its grace (`margin`: a quarter of the grace, at most a second), so its
 * holder's own timer cannot end it while the move is on its way.
 */
const MOVABLE = `
local function movable(key, asker)
  local holder = redis.call('HGET', key, 'i')
  if not holder or redis.call('HEXISTS', key, 'm') == 1 or holder == asker then return nil end
  if redis.call('EXISTS', 'sig:alive:' .. holder) == 0 then return nil end
  local ttl = redis.call('PTTL', key)
  local margin = math.min(1000, (tonumber(redis.call('HGET', key, 't')) or 0) / 4)
  if ttl >= 0 and ttl < margin then return nil end
  return holder
end
`;

/** A session held elsewhere: `{'ok', holder, idents}` or `{'none'}`. */
export const SESS_PEEK: string = MOVABLE + `
local key = 'sig:sess:' .. ARGV[1]
local holder = movable(key, ARGV[2])
if not holder then return {'none'} end
return {'ok', holder, redis.call('HGET', key, 'g')}
`;

/**
 * Moves a session, and every global ident it holds, from its holder to this
 * instance, atomically: checks the holder (as {@link SESS_PEEK} found it)
 * and the idents (as the resuming broker checked them) have not changed and
 * that the holder still owns each ident; then, ident by ident, hands it over
 * in `sig:owner` and the `sig:im:` sets (its place in its room's join order
 * stays) and PUBLISHes `seq|m|<to>|g` on its room's channel; leaves a
 * tombstone for the old token and records the fresh one; and last tells the
 * old holder on `sig:to:<holder>`: `\x01m|<h>|<to>|<conn>`. Answers
 * `{'ok', seq, n, g, owner…(n pairs), seq, n, …}` (per ident, in the order
 * moved: its event's seq and its room's members before it), or `{'gone'}`
 * or `{'changed'}`.
 */
export const SESS_MOVE: string = MOVABLE + `
local h, fresh, to, expect, idents, conn, tomb = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])
local key = 'sig:sess:' .. h
local holder = movable(key, to)
if holder ~= expect then return {'gone'} end
if redis.call('HGET', key, 'g') ~= idents then return {'changed'} end
local gs = {}
for g in string.gmatch(idents, '%S+') do
  if redis.call('HGET', '${OWNER}', g) ~= holder then return {'changed'} end
  gs[#gs + 1] = g
end
local out = {'ok'}
for _, g in ipairs(gs) do
  local room = string.sub(g, 1, string.find(g, ':', 1, true) - 1)
  local members = redis.call('ZRANGE', 'sig:room:' .. room, 0, -1)
  local seq = redis.call('INCR', 'sig:seq')
  out[#out + 1] = seq
  out[#out + 1] = #members
  for _, m in ipairs(members) do
    out[#out + 1] = m
    out[#out + 1] = redis.call('HGET', '${OWNER}', m) or ''
  end
  redis.call('HSET', '${OWNER}', g, to)
  redis.call('SREM', 'sig:im:' .. holder, g)
  redis.call('SADD', 'sig:im:' .. to, g)
  redis.call('PUBLISH', 'sig:ev:' .. room, seq .. '|m|' .. to .. '|' .. g)
end
redis.call('DEL', key)
redis.call('HSET', key, 'i', to, 'm', '1', 'c', conn)
redis.call('PEXPIRE', key, tomb)
redis.call('SREM', 'sig:ss:' .. holder, h)
local fk = 'sig:sess:' .. fresh
redis.call('DEL', fk)
redis.call('HSET', fk, 'i', to, 'g', idents, 't', 0)
redis.call('SADD', 'sig:ss:' .. to, fresh)
redis.call('PUBLISH', 'sig:to:' .. holder, '\\1m|' .. h .. '|' .. to .. '|' .. conn)
return out
`;

/**
 * A resume on the instance that holds the session: replaces the record of
 * token `h` with one for the fresh token, if this instance still holds it
 * (or Redis lost it); 0 if it moved or another instance holds it.
 */
export const SESS_ROTATE: string = `
local h, fresh, inst, idents = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key = 'sig:sess:' .. h
local holder = redis.call('HGET', key, 'i')
if holder and (holder ~= inst or redis.call('HEXISTS', key, 'm') == 1) then return 0 end
redis.call('DEL', key)
redis.call('SREM', 'sig:ss:' .. inst, h)
redis.call('HSET', 'sig:sess:' .. fresh, 'i', inst, 'g', idents, 't', 0)
redis.call('SADD', 'sig:ss:' .. inst, fresh)
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
  /** {@link SESS_PUT}: `['ok']`, `['no']` or `['moved', instance, conn]`. */
  sigSessPut(
    h: string,
    inst: string,
    idents: string,
    ttl: number,
    mode: "new" | "set" | "restore",
    prev: string,
  ): Promise<Reply>;
  /** {@link SESS_DROP}: 1. */
  sigSessDrop(h: string, inst: string): Promise<number>;
  /** {@link SESS_PEEK}: `['ok', holder, idents]` or `['none']`. */
  sigSessPeek(h: string, inst: string): Promise<Reply>;
  /** {@link SESS_MOVE}: `['ok', seq, n, g, owner…, …]`, `['gone']` or `['changed']`. */
  sigSessMove(
    h: string,
    fresh: string,
    to: string,
    holder: string,
    idents: string,
    conn: number,
    tombstoneMs: number,
  ): Promise<Reply>;
  /** {@link SESS_ROTATE}: 1 if rotated, 0 if the session is not this instance's. */
  sigSessRotate(h: string, fresh: string, inst: string, idents: string): Promise<number>;
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
  ["sigSessPut", SESS_PUT],
  ["sigSessDrop", SESS_DROP],
  ["sigSessPeek", SESS_PEEK],
  ["sigSessMove", SESS_MOVE],
  ["sigSessRotate", SESS_ROTATE],
];
