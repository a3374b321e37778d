-- Remove settled messages (ARGV) from the processing list KEYS[1], and their count of failed
-- deliveries from KEYS[2].
local counted = redis.call('HLEN', KEYS[2]) > 0
for i = 1, #ARGV do
  redis.call('LREM', KEYS[1], 1, ARGV[i])
  if counted then redis.call('HDEL', KEYS[2], redis.sha1hex(ARGV[i])) end
end
return #ARGV
