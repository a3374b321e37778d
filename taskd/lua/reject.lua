-- Set the message ARGV[1] aside: out of the processing list KEYS[1], its dead-letter entry
-- ARGV[2] onto KEYS[2], its count of failed deliveries out of KEYS[3].
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[3], redis.sha1hex(ARGV[1]))
  return 1
end
return 0
