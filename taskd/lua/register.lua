-- Register the waiter ARGV[1] for each task KEYS[i] (in the set ARGV[3] .. 'waiting:' .. key,
-- kept ARGV[2] seconds; set_states.lua pushes each final state to the lists it names) and
-- return the tasks' stored states, with 1 where every one is final already: then an empty
-- push to the waiter's list ends at once the BLPOP the client sent after this script, in the
-- same write (taskd.backends.redis.wait_states). Atomic, so no state slips in between.
local states = {}
local all_final = 1
for i, key in ipairs(KEYS) do  -- GET by GET: a group's thousands of ids would overflow unpack
  states[i] = redis.call('GET', key)
  local waiting = ARGV[3] .. 'waiting:' .. key
  redis.call('SADD', waiting, ARGV[1])
  redis.call('EXPIRE', waiting, ARGV[2])
  -- Go-ordered JSON as taskd and machinery write it; any other writer's record reads as
  -- not final here, and the client ends its block itself.
  local state = states[i] and string.match(states[i], '"State":"(%u+)"')
  if state ~= 'SUCCESS' and state ~= 'FAILURE' then all_final = 0 end
end
if all_final == 1 then
  redis.call('RPUSH', ARGV[1], '')
  redis.call('EXPIRE', ARGV[1], ARGV[2])
end
return {states, all_final}
