-- Take up to ARGV[1] messages from the queue KEYS[1] into the processing list KEYS[2].
-- With ARGV[2] == "1" the consumer holds nothing, so anything left in its processing list is
-- a stray from a fetch whose reply was lost: put it back first.
-- Returns the messages and, where consumers died holding them before (KEYS[3], by SHA-1 of
-- the message), how many times; a count that is no whole number (another program's value)
-- counts none, as in RedisBroker's blocking fetch.
local function count(value)
  local n = tonumber(value)
  if n and n >= 0 and n < 1e9 and n == math.floor(n) then return n end
  return 0
end
must_be_list(KEYS[2])
if ARGV[2] == '1' then
  while redis.call('LMOVE', KEYS[2], KEYS[1], 'RIGHT', 'LEFT') do end
end
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
local failed = {}
if #items > 0 then
  redis.call('LTRIM', KEYS[1], #items, -1)
  redis.call('RPUSH', KEYS[2], unpack(items))
  if redis.call('HLEN', KEYS[3]) > 0 then
    for i, item in ipairs(items) do
      failed[i] = count(redis.call('HGET', KEYS[3], redis.sha1hex(item)))
    end
  end
end
return {items, failed}
