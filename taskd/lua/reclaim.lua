-- (after requeue.lua) Give the messages of up to ARGV[3] consumers silent for ARGV[2] ms back
-- to the head of their queues (ARGV[4] where a consumer's queue is unknown).
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms - tonumber(ARGV[2]),
                        'LIMIT', 0, tonumber(ARGV[3]))
local moved = 0
for _, id in ipairs(dead) do moved = moved + requeue(id, ARGV[4]) end
return {#dead, moved}
