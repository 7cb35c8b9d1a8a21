
local idx, xexp = KEYS[1], KEYS[2]
local zbase = string.sub(idx, 1, #idx - 4)
local xsz, xbytes, xown = zbase .. 'xsz', zbase .. 'xbytes', zbase .. 'xown'
-- account counts a new index entry m against the budget
local function account(m, bytes, who)
  redis.call('HSET', xsz, m, bytes .. ' ' .. who)
  redis.call('INCRBY', xbytes, bytes)
  redis.call('HINCRBY', xown, who, 1)
end
-- unaccount gives back what m counted; running it twice gives back once
local function unaccount(m)
  local v = redis.call('HGET', xsz, m)
  if not v then return end
  local bytes, who = string.match(v, '^(%d+) (.*)$')
  redis.call('HDEL', xsz, m)
  if redis.call('DECRBY', xbytes, tonumber(bytes)) <= 0 then redis.call('DEL', xbytes) end
  if redis.call('HINCRBY', xown, who, -1) <= 0 then redis.call('HDEL', xown, who) end
end
local function purge(lim)
  local dead = redis.call('ZRANGEBYSCORE', xexp, '-inf', now, 'LIMIT', 0, lim)
  if #dead > 0 then
    redis.call('ZREM', idx, unpack(dead))
    redis.call('ZREM', xexp, unpack(dead))
    for _, m in ipairs(dead) do unaccount(m) end
  end
  return #dead
end
purge(256)
local function live(m)
  local e = redis.call('ZSCORE', xexp, m)
  return e and tonumber(e) > now
end
local function tokenOf(m) return string.match(m, '%z[SX][0I]%z(.*)$') end
-- the live index entries in a BYLEX range, at most lim (0 = no limit)
local function inRange(lo, hi, lim, out)
  local off = 0
  while true do
    local ms = redis.call('ZRANGEBYLEX', idx, lo, hi, 'LIMIT', off, 256)
    for _, m in ipairs(ms) do
      if live(m) then
        out[#out + 1] = m
        if lim > 0 and #out >= lim then return out end
      end
    end
    if #ms < 256 then return out end
    off = off + 256
  end
end
