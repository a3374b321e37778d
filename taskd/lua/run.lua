-- Run the commands in ARGV, each given as its number of words, then its words, and return
-- their replies, each error in its command's place (as a pipeline's). For writes that must go
-- out on a full Redis too (taskd.redis_scripts.RUNS_WHEN_FULL): the daemon's own sends.
local replies, i = {}, 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  replies[#replies + 1] = redis.pcall(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return replies
