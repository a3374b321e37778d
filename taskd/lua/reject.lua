-- Set the message ARGV[1] aside: out of the processing list KEYS[1], its dead-letter entry
-- ARGV[2] onto KEYS[2], its count of failed deliveries out of KEYS[3]. Then the oldest
-- entries go: those rejected before ARGV[4] (Unix ms; 0: no limit), read from the head, at
-- most 100 a call, and then any beyond the newest ARGV[3] (0: no cap). An entry's age is its
-- leading "rejected_unix_ms" (taskd/brokers/redis/dead.py); one without it (written by an
-- older taskd) ends the age trim, and only the count cap reaches it.
-- Returns {1 if it was set aside (0: not held), how many the count cap dropped}.
must_be_list(KEYS[2])
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[3], redis.sha1hex(ARGV[1]))
  local oldest_ms = tonumber(ARGV[4])
  if oldest_ms > 0 then
    for _ = 1, 100 do
      local head = redis.call('LINDEX', KEYS[2], 0)
      local ms = head and tonumber(string.match(head, '^{"rejected_unix_ms":(%d+)'))
      if not ms or ms >= oldest_ms then break end
      redis.call('LPOP', KEYS[2])
    end
  end
  local max_count, dropped = tonumber(ARGV[3]), 0
  if max_count > 0 then
    dropped = math.max(redis.call('LLEN', KEYS[2]) - max_count, 0)
    if dropped > 0 then redis.call('LTRIM', KEYS[2], -max_count, -1) end
  end
  return {1, dropped}
end
return {0, 0}
