-- the waiting arguments, which the fast path does not read
local wttl, maxWaiters = tonumber(ARGV[6]), tonumber(ARGV[7])
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
    local fence = grant()
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
