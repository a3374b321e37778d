-- ack(processing, deliveries, argv, first): remove settled messages (argv[first] onwards) from
-- the processing list, and their count of failed deliveries from the hash deliveries.
-- A function, so that one script can store states and then ack their messages (taskd.pairs).
local function ack(processing, deliveries, argv, first)
  local counted = redis.call('HLEN', deliveries) > 0
  for i = first, #argv do
    redis.call('LREM', processing, 1, argv[i])
    if counted then redis.call('HDEL', deliveries, redis.sha1hex(argv[i])) end
  end
  return #argv - first + 1
end
