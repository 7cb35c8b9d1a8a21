
local h = KEYS[3]
local root, tok, scope, depth = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('EXISTS', h) == 1 then
  return {1, redis.call('HGETALL', h)}
end
local conflicts = {}
local function check(ms, onlyInfinite)
  for _, m in ipairs(ms) do
    local s, d = string.match(m, '%z([SX])([0I])%z')
    if (not onlyInfinite or d == 'I') and (scope == 'X' or s == 'X') then
      conflicts[#conflicts + 1] = redis.call('HGETALL', ARGV[11] .. tokenOf(m))
      if #conflicts >= 64 then return true end -- enough to report
    end
  end
  return false
end
-- ARGV[11] is the hash key prefix
-- locks on the root itself
if check(inRange('[' .. root .. '\0', '(' .. root .. '\1', 0, {}), false) then return {0, conflicts} end
-- infinite locks on ancestors cover the root
for a in ancestorsOf(root) do
  if check(inRange('[' .. a .. '\0', '(' .. a .. '\1', 0, {}), true) then return {0, conflicts} end
end
-- an infinite lock covers the locks below its root
if depth == 'I' and ARGV[9] ~= '' then
  -- every lock below conflicts with an exclusive one, so 64 will do; a
  -- shared one conflicts only with the exclusive ones, which may come
  -- after any number of shared ones
  local lim = 64
  if scope ~= 'X' then lim = 0 end
  check(inRange(ARGV[9], ARGV[10], lim, {}), false)
end
if #conflicts > 0 then return {0, conflicts} end
-- the zone is full only for a lock that could be granted: a conflicting
-- one is refused as such, as in memory
if redis.call('ZCARD', xexp) - redis.call('ZCOUNT', xexp, '-inf', now) >= tonumber(ARGV[12]) then
  return {2}
end
local who, bytes = ARGV[7], tonumber(ARGV[13])
local maxBytes, perOwner = tonumber(ARGV[14]), tonumber(ARGV[15])
local function over()
  if perOwner > 0 and tonumber(redis.call('HGET', xown, who) or '0') >= perOwner then return 4 end
  if tonumber(redis.call('GET', xbytes) or '0') + bytes > maxBytes then return 3 end
  return 0
end
-- the counters include expired locks not purged yet: purge more before
-- refusing, in bounded steps
local limited = over()
for _ = 1, 16 do
  if limited == 0 or purge(256) == 0 then break end
  limited = over()
end
if limited > 0 then return {limited} end
local ttl = tonumber(ARGV[8])
local m = root .. '\0' .. scope .. depth .. '\0' .. tok
redis.call('HSET', h, 'root', root, 'href', ARGV[5], 'scope', scope, 'depth', depth,
  'owner', ARGV[6], 'creator', who, 'created', now, 'timeout', ttl, 'expires', now + ttl, 'm', m)
redis.call('PEXPIRE', h, ttl)
redis.call('ZADD', idx, 0, m)
redis.call('ZADD', xexp, now + ttl, m)
account(m, bytes, who)
return {1, redis.call('HGETALL', h)}
