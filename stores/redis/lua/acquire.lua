
local exp, held, info, meta, q, wexp, wseq, xidx = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local key, tok = ARGV[1], ARGV[2]
local ttl, maxLocks = tonumber(ARGV[3]), tonumber(ARGV[4])
local wtok, chan = ARGV[5], ARGV[8]
local hier = ARGV[9] == '1'
-- the BYLEX range of the keys strictly below key (see descRange)
local dlo, dhi = '', ''
if hier and string.byte(key, 1) == 47 then
  if key == '/' then dlo, dhi = '[/\1', '(0' else dlo, dhi = '[' .. key .. '/', '(' .. key .. '0' end
end
local M = key .. '\0' .. tok
local want = string.sub(tok, 1, 1)
local qlo, qhi = '[' .. key .. '\0', '(' .. key .. '\1'
local mine = false -- set when onKey meets M, this call's own member
local TL = 34 -- "\0" and a token (kind letter, 32 hex digits)

-- The fence is the counter's next value or the server clock in µs,
-- whichever is greater: a failover that loses grants also loses their
-- increments, and the clock still puts the new primary's numbers
-- above them (see the README on fencing).
-- The fence and grant time go as TIME's own digits unless the counter is
-- ahead of the clock: Lua turns a number into a command's argument with
-- printf, which showed in perf of redis-server.
local function grant()
  local fence = (tonumber(redis.call('HGET', meta, 'fence')) or 0) + 1
  local us = t[1] .. string.rep('0', 6 - #t[2]) .. t[2] -- nowus
  local fs = us
  if fence > nowus then fs = string.format('%d', fence) else fence = nowus end
  redis.call('HSET', meta, 'fence', fs)
  redis.call('ZADD', exp, now + ttl, M)
  redis.call('ZADD', held, '0', M)
  redis.call('HSET', info, M, us .. ' ' .. fs)
  return fence
end

local nw = redis.call('ZCARD', wexp)
local qfree = nw == 0 or not redis.call('ZRANGEBYLEX', q, qlo, qhi, 'LIMIT', 0, 1)[1]
-- Without hierarchy, a key that nobody holds at all (no member in held,
-- live or not) is free: it is granted before the helpers below are
-- created, which Lua does on every call. Anything on the key takes the
-- checks below.
if qfree and not hier and not redis.call('ZRANGEBYLEX', held, qlo, qhi, 'LIMIT', 0, 1)[1]
    and redis.call('ZCARD', exp) + nw < maxLocks then
  return {1, grant(), redis.call('ZCARD', xidx)}
end

local function live(m)
  local e = redis.call('ZSCORE', exp, m)
  return e and tonumber(e) > now
end
local function since(m)
  local v = redis.call('HGET', info, m)
  return tonumber(v and string.match(v, '^(%d+)')) or nowus
end
-- holders of k that conflict with kind want: their kind and earliest grant
local function onKey(k, want)
  local kind, s = nil, nil
  for _, m in ipairs(redis.call('ZRANGEBYLEX', held, '[' .. k .. '\0', '(' .. k .. '\1')) do
    local hk = string.sub(m, #k + 2, #k + 2)
    if m == M then mine = true end
    if (want == 'X' or hk == 'X') and live(m) then
      if hk == 'X' then kind = 'X' elseif not kind then kind = 'S' end
      local ms = since(m)
      if not s or ms < s then s = ms end
    end
  end
  return kind, s
end
-- the first holder below key that conflicts with want
local function below(want)
  if dlo == '' then return nil end
  local off = 0
  while true do
    local ms = redis.call('ZRANGEBYLEX', held, dlo, dhi, 'LIMIT', off, 128)
    for _, m in ipairs(ms) do
      local hk = string.sub(m, #m - 32, #m - 32)
      if (want == 'X' or hk == 'X') and string.sub(m, 1, #m - TL) ~= key and live(m) then
        return hk, since(m)
      end
    end
    if #ms < 128 then return nil end
    off = off + 128
  end
end
local function blocker(want)
  local kind, s = onKey(key, want)
  if kind then return key, kind, s, 0 end
  kind, s = below(want)
  if kind then return key, kind, s, 1 end
  if hier then
    for a in ancestorsOf(key) do
      kind, s = onKey(a, want)
      if kind then return a, kind, s, 0 end
    end
  end
  return nil
end

-- Fast path: a key with nobody queued on it, no live holder in the way,
-- not already ours and room in the table is granted without purging
-- expired entries first (they cannot be in the way: holders are checked
-- for expiry one by one, an expired waiter would head the key's queue,
-- and a table that looks full takes the slow path, which purges). The
-- first call that takes the slow path purges them; until then every
-- check skips them, as it skips those the bounded purge leaves.
-- A queue entry always has its expiry in wexp: with none there, no queue
-- need be looked at.
if qfree and not blocker(want) and not mine and redis.call('ZCARD', exp) + nw < maxLocks then
  return {1, grant(), redis.call('ZCARD', xidx)}
end
