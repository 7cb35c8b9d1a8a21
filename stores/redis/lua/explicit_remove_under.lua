
local lim = tonumber(ARGV[5])
local ms = inRange('[' .. ARGV[1] .. '\0', '(' .. ARGV[1] .. '\1', lim, {})
if ARGV[2] ~= '' and #ms < lim then
  inRange(ARGV[2], ARGV[3], lim, ms)
end
for _, m in ipairs(ms) do
  redis.call('DEL', ARGV[4] .. tokenOf(m))
  redis.call('ZREM', idx, m)
  redis.call('ZREM', xexp, m)
  unaccount(m)
end
local more = 0
if #ms >= lim then more = 1 end
return {#ms, more}
