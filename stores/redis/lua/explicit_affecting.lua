
local ms = inRange('[' .. ARGV[1] .. '\0', '(' .. ARGV[1] .. '\1', 0, {})
for a in ancestorsOf(ARGV[1]) do
  for _, m in ipairs(inRange('[' .. a .. '\0', '(' .. a .. '\1', 0, {})) do
    if string.match(m, '%z[SX]I%z') then ms[#ms + 1] = m end
  end
end
if ARGV[2] ~= '' then inRange(ARGV[2], ARGV[3], 0, ms) end
local out = {}
for _, m in ipairs(ms) do
  local v = redis.call('HGETALL', ARGV[4] .. tokenOf(m))
  if #v > 0 then out[#out + 1] = v end
end
return out
