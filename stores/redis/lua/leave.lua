
local wm = ARGV[1] .. '\0' .. ARGV[2]
local W = redis.call('HGET', KEYS[3], wm)
redis.call('ZREM', KEYS[2], wm)
if not W then return 0 end
redis.call('HDEL', KEYS[3], wm)
local lo, hi = '[' .. ARGV[1] .. '\0', '(' .. ARGV[1] .. '\1'
local head = redis.call('ZRANGEBYLEX', KEYS[1], lo, hi, 'LIMIT', 0, 1)[1]
redis.call('ZREM', KEYS[1], W)
if head == W then
  local h = redis.call('ZRANGEBYLEX', KEYS[1], lo, hi, 'LIMIT', 0, 1)[1]
  if h then redis.call('PUBLISH', ARGV[3], ARGV[1] .. '\0' .. string.sub(h, -33)) end
end
return 1
