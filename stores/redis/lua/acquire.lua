
local exp, held, info, meta, q, wexp, wseq, xidx = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local key, tok = ARGV[1], ARGV[2]
local ttl, maxLocks = tonumber(ARGV[3]), tonumber(ARGV[4])
local wtok, wttl, maxWaiters, chan = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local hier = ARGV[9] == '1'
-- the BYLEX range of the keys strictly below key (see descRange)
local dlo, dhi = '', ''
if hier and string.byte(key, 1) == 47 then
  if key == '/' then dlo, dhi = '[/\1', '(0' else dlo, dhi = '[' .. key .. '/', '(' .. key .. '0' end
end
local TL = 34 -- "\0" and a token (kind letter, 32 hex digits)

-- Purge expired holders and waiters (a bounded batch per call; whatever
-- is left is still recognised as expired below). Their keys may now be
-- free: tell the waiters.
local dead = redis.call('ZRANGEBYSCORE', exp, '-inf', now, 'LIMIT', 0, 256)
if #dead > 0 then
  for _, m in ipairs(dead) do
    redis.call('ZREM', held, m)
    redis.call('HDEL', info, m)
    redis.call('PUBLISH', chan, string.sub(m, 1, #m - TL))
  end
  redis.call('ZREM', exp, unpack(dead))
end
-- tell the head of k's queue, if any, that it is now the head
local function newHead(k)
  local h = redis.call('ZRANGEBYLEX', q, '[' .. k .. '\0', '(' .. k .. '\1', 'LIMIT', 0, 1)[1]
  if h then redis.call('PUBLISH', chan, k .. '\0' .. string.sub(h, -33)) end
end
dead = redis.call('ZRANGEBYSCORE', wexp, '-inf', now, 'LIMIT', 0, 256)
if #dead > 0 then
  for _, wm in ipairs(dead) do
    local w = redis.call('HGET', wseq, wm)
    if w then redis.call('ZREM', q, w) end
    redis.call('HDEL', wseq, wm)
    newHead(string.sub(wm, 1, #wm - TL))
  end
  redis.call('ZREM', wexp, unpack(dead))
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

local M = key .. '\0' .. tok
local e = redis.call('ZSCORE', exp, M)
if e and tonumber(e) > now then
  local v = redis.call('HGET', info, M) or ''
  return {1, tonumber(string.match(v, ' (%d+)$')) or 0, redis.call('ZCARD', xidx)}
end

local wm, W = nil, false
if wtok ~= '' then
  wm = key .. '\0' .. wtok
  W = redis.call('HGET', wseq, wm)
end
-- Every holder and waiter takes a place of max_locks; a queued waiter has
-- its place already. As in MemLocker, a conflict that will not queue is
-- reported as such even when the table is full: the lock in the way is
-- the more useful answer.
local full = not W and redis.call('ZCARD', exp) + redis.call('ZCARD', wexp) >= maxLocks

local want = string.sub(tok, 1, 1)
local qlo, qhi = '[' .. key .. '\0', '(' .. key .. '\1'
local head = redis.call('ZRANGEBYLEX', q, qlo, qhi, 'LIMIT', 0, 1)[1]
local bk, bkind, bs, bbelow
if head and head ~= W then
  -- Never overtake a queue: report what blocks its head.
  bk, bkind, bs, bbelow = blocker(string.sub(head, -33, -33))
  if not bk then bk, bkind, bs, bbelow = key, 'S', nowus, 0 end
else
  bk, bkind, bs, bbelow = blocker(want)
  if not bk then
    if full then return {2} end
    -- The fence is the counter's next value or the server clock in µs,
    -- whichever is greater: a failover that loses grants also loses their
    -- increments, and the clock still puts the new primary's numbers
    -- above them (see the README on fencing).
    local fence = math.max((tonumber(redis.call('HGET', meta, 'fence')) or 0) + 1, nowus)
    redis.call('HSET', meta, 'fence', string.format('%d', fence))
    redis.call('ZADD', exp, now + ttl, M)
    redis.call('ZADD', held, 0, M)
    redis.call('HSET', info, M, string.format('%d %d', nowus, fence))
    if W then
      redis.call('ZREM', q, W)
      redis.call('HDEL', wseq, wm)
      redis.call('ZREM', wexp, wm)
      newHead(key)
    end
    return {1, fence, redis.call('ZCARD', xidx)}
  end
end

local queued = 0
if W then
  redis.call('ZADD', wexp, now + wttl, wm)
elseif wtok ~= '' and redis.call('ZLEXCOUNT', q, qlo, qhi) < maxWaiters then
  if full then return {2} end
  local seq = redis.call('HINCRBY', meta, 'wseq', 1)
  W = key .. '\0' .. string.format('%016d', seq) .. '\0' .. wtok
  redis.call('ZADD', q, 0, W)
  redis.call('HSET', wseq, wm, W)
  redis.call('ZADD', wexp, now + wttl, wm)
  if not head then head = W end
end
if W then
  queued = 2
  if head == W then queued = 1 end
end
local avg = tonumber(redis.call('HGET', meta, 'avg') or '0') or 0
local kind = 1
if bkind == 'X' then kind = 2 end
return {0, bk, kind, nowus - bs, bbelow, math.floor(avg), queued}
