
local h = KEYS[3]
local m = redis.call('HGET', h, 'm')
if not m or not live(m) then return false end
local ttl = tonumber(ARGV[1])
redis.call('HSET', h, 'timeout', ttl, 'expires', now + ttl)
redis.call('PEXPIRE', h, ttl)
redis.call('ZADD', xexp, now + ttl, m)
return redis.call('HGETALL', h)
