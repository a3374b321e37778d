-- Pin entries on the board KEYS[1] (a hash: key -> "<expiry ms> <JSON>"), by Redis's clock.
-- ARGV[1]: time to live (ms); then pairs of key and JSON ("" takes the key down).
-- Expired entries are pruned in the same call, and the hash lives as long as its last entry.
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local ttl_ms = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], (now_ms + ttl_ms) .. ' ' .. ARGV[i + 1])
  end
end
local longest = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local expiry = tonumber(string.match(fields[i + 1], '^(%d+) '))
  if not expiry or expiry <= now_ms then
    redis.call('HDEL', KEYS[1], fields[i])
  elseif expiry - now_ms > longest then
    longest = expiry - now_ms
  end
end
if longest > 0 then redis.call('PEXPIRE', KEYS[1], longest) end
return 1
