
local h, gone = KEYS[3], KEYS[4]
local m = redis.call('HGET', h, 'm')
if not m then
  if redis.call('HGET', gone, 'by') == ARGV[1] then return redis.call('HGETALL', gone) end
  return false
end
local v = redis.call('HGETALL', h)
redis.call('ZREM', idx, m)
redis.call('ZREM', xexp, m)
unaccount(m)
redis.call('RENAME', h, gone)
redis.call('HSET', gone, 'by', ARGV[1])
redis.call('PEXPIRE', gone, tonumber(ARGV[2]))
return v
