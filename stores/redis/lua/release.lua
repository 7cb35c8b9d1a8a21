
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
-- How long the lock was held, in µs: as the holder measured it (ARGV[4]),
-- which spares reading the grant time and the server clock; a release
-- that does not know it (the undoing of an unanswered acquire) measures
-- it here.
local held = tonumber(ARGV[4])
if not held then
  local v = redis.call('HGET', KEYS[3], ARGV[1])
  local s = tonumber(v and string.match(v, '^(%d+)'))
  if s then
    local t = redis.call('TIME')
    held = tonumber(t[1]) * 1000000 + tonumber(t[2]) - s
  end
end
redis.call('HDEL', KEYS[3], ARGV[1])
if held then
  -- The first holdWindow holds are averaged plainly, so that the first
  -- one sets the estimate instead of moving it part of the way from
  -- zero; after that each weighs 1/holdWindow (as in the memory store).
  -- holds stays at holdWindow once there, and is not written again.
  local m = redis.call('HMGET', KEYS[4], 'avg', 'holds')
  local avg = tonumber(m[1] or '0') or 0
  local h = tonumber(m[2] or '0') or 0
  local n = math.min(h + 1, {{HOLD_WINDOW}})
  avg = string.format('%d', math.floor(avg + (held / 1000 - avg) / n))
  if n == h then
    redis.call('HSET', KEYS[4], 'avg', avg)
  else
    redis.call('HSET', KEYS[4], 'avg', avg, 'holds', n)
  end
end
-- Only queued waiters listen (a waiter is queued by the same script call
-- that finds the key taken): with none in the zone, nobody is told.
if redis.call('ZCARD', KEYS[5]) > 0 then redis.call('PUBLISH', ARGV[3], ARGV[2]) end
return 1
