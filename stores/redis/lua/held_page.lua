
local page = redis.call('ZSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local out = {page[1]}
local es = page[2]
for i = 1, #es, 2 do
  if tonumber(es[i + 1]) > now then
    out[#out + 1] = es[i]
    out[#out + 1] = KEYS[2] and (redis.call('HGET', KEYS[2], es[i]) or '') or ''
  end
end
return out
