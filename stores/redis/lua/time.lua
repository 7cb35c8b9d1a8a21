
local t = redis.call('TIME')
local ts, tus = tonumber(t[1]), tonumber(t[2]) -- each string read once: tonumber is strtod
local now = ts * 1000 + math.floor(tus / 1000)
local nowus = ts * 1000000 + tus
