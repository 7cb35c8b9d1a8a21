
local function ancestorsOf(k)
  local ps = {}
  if #k >= 2 and string.byte(k, 1) == 47 then
    local p = string.find(k, '/', 1, true)
    while p do
      ps[#ps + 1] = p
      p = string.find(k, '/', p + 1, true)
    end
  end
  local i = #ps + 1
  return function()
    i = i - 1
    if i < 1 then return nil end
    if ps[i] == 1 then return '/' end
    return string.sub(k, 1, ps[i] - 1)
  end
end
