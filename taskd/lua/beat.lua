-- A beat for each consumer id in ARGV (its queue in the following ARGV), on Redis's clock:
-- the consumers sorted set KEYS[1] scored in ms, their queues in the hash KEYS[2].
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
for i = 1, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], ms, ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return ms
