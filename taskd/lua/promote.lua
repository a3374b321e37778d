-- Move up to ARGV[2] ETA messages due by ARGV[1] (Unix ns) from the delayed set KEYS[1] to
-- their queues. The queue is the message's RoutingKey (machinery's layout keeps one delayed
-- set for every queue), read with cjson; a member that is not a machinery message, or names a
-- key that is not a list, goes to the default queue ARGV[3], whose worker sets it aside with
-- a reason. Returns how many moved and the score of the next one, if any.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, body in ipairs(due) do
  local queue = nil
  local ok, msg = pcall(cjson.decode, body)
  if ok and type(msg) == 'table' then
    queue = msg['RoutingKey']
    if type(queue) ~= 'string' then
      for key, value in pairs(msg) do
        if type(key) == 'string' and string.lower(key) == 'routingkey' then queue = value end
      end
    end
  end
  if type(queue) ~= 'string' or queue == '' then queue = ARGV[3] end
  -- Push first, remove after: a push that fails (the key is not a list) must not lose it.
  local pushed = pcall(redis.call, 'RPUSH', queue, body)
  if not pushed and queue ~= ARGV[3] then pushed = pcall(redis.call, 'RPUSH', ARGV[3], body) end
  if pushed then redis.call('ZREM', KEYS[1], body) end
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due, first[2] or false}
