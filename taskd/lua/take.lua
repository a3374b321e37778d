-- Up to ARGV[1] of the states pushed to the waiter's list KEYS[1] behind the one its BLPOP
-- took, read and trimmed in one step, so no push lands in between. A script, not MULTI: a
-- full Redis refuses commands queued in a transaction, and runs this (no write takes memory).
local taken = redis.call('LRANGE', KEYS[1], 0, ARGV[1] - 1)
redis.call('LTRIM', KEYS[1], #taken, -1)
return taken
