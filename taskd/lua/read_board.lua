-- The unexpired entries of the board KEYS[1] (see post.lua), by Redis's clock: key, JSON, ...
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local live = {}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local expiry, entry = string.match(fields[i + 1], '^(%d+) (.*)$')
  if expiry and tonumber(expiry) > now_ms then
    live[#live + 1] = fields[i]
    live[#live + 1] = entry
  end
end
return live
