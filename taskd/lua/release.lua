-- Hand messages (ARGV) from the processing list KEYS[1] back to the head of their queue
-- KEYS[2], last first so their order holds. Their count of failed deliveries is untouched.
must_be_list(KEYS[2])
for i = #ARGV, 1, -1 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then redis.call('LPUSH', KEYS[2], ARGV[i]) end
end
return #ARGV
