-- (after requeue.lua) Consumers leaving, or gone from this machine (ARGV[3...]): their
-- messages go back now (to ARGV[2] where a consumer's queue is unknown).
local moved = 0
for i = 3, #ARGV do moved = moved + requeue(ARGV[i], ARGV[2]) end
return moved
