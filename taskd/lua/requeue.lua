-- Shared by reclaim.lua and leave.lua (prepended to each): a gone consumer's messages go back
-- to the head of their queue, each counted as a failed delivery (KEYS[3], by SHA-1 of the
-- message) so one that kills every worker that takes it can be set aside instead of looping.
-- KEYS[1] consumers (sorted set), KEYS[2] their queues (hash); ARGV[1] processing-list prefix.
local function requeue(id, fallback)
  local queue = redis.call('HGET', KEYS[2], id) or fallback
  local proc = ARGV[1] .. id
  local moved = 0
  while true do
    local body = redis.call('LMOVE', proc, queue, 'RIGHT', 'LEFT')
    if not body then break end
    local sum = redis.sha1hex(body)
    if type(redis.pcall('HINCRBY', KEYS[3], sum, 1)) == 'table' then  -- its error: a count
      redis.call('HSET', KEYS[3], sum, 1)                                -- that is no integer
    end
    moved = moved + 1
  end
  if moved > 0 then redis.call('EXPIRE', KEYS[3], 604800) end
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  return moved
end
