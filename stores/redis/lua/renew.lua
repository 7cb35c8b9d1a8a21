
local ttl = tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV do
  local e = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if e and tonumber(e) > now then
    redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i])
  else
    lost[#lost + 1] = i - 1
  end
end
return lost
