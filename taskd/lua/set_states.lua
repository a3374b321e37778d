-- set_states(n, keys, argv): SET each task's state (keys[i] = argv[i], i <= n) with the same
-- expiry (argv[n + 4] seconds): one command for a batch, far cheaper for the client than a
-- pipeline. Where argv[n + 3] has "1" or "2" for a key, the stored record's TaskName and
-- CreatedAt are kept (machinery's merge rule, as taskd.wire.state.merged;
-- tests/backends/test_merge_rule.py holds both to the same cases). Both records are Go-ordered
-- JSON, so each value is spliced between its key and the next one. "2" marks a final state: it
-- is pushed to the list of every client waiting for the task (the set argv[n + 1] ..
-- 'waiting:' .. key; see taskd.backends.redis.wait_states), which keeps it argv[n + 2] seconds.
-- A function, so that one script can store states and then ack their messages (taskd.pairs).
-- Those keys are named here, not passed in KEYS: taskd's Redis is never a cluster.
local function span(json, key, after)
  local s = string.find(json, '"' .. key .. '":', 1, true)
  if not s then return nil end
  local from = s + #key + 3
  local e = string.find(json, ',"' .. after .. '":', from, true)
  if not e then return nil end
  return from, e - 1
end
local function keep(new, old, key, after, unset)
  local os, oe = span(old, key, after)
  if not os or string.sub(old, os, oe) == unset then return new end
  local ns, ne = span(new, key, after)
  if not ns then return new end
  return string.sub(new, 1, ns - 1) .. string.sub(old, os, oe) .. string.sub(new, ne + 1)
end
local function set_states(n, keys, argv)
  local prefix, waiter_ttl, merge, ttl = argv[n + 1], argv[n + 2], argv[n + 3], argv[n + 4]
  for i = 1, n do
    local state = argv[i]
    local code = string.sub(merge, i, i)
    if code ~= '0' then
      local old = redis.call('GET', keys[i])
      if old then
        state = keep(state, old, 'TaskName', 'State', '""')
        state = keep(state, old, 'CreatedAt', 'TTL', '"0001-01-01T00:00:00Z"')
      end
    end
    redis.call('SET', keys[i], state, 'EX', ttl)
    if code == '2' then
      local waiting = prefix .. 'waiting:' .. keys[i]
      local waiters = redis.call('SMEMBERS', waiting)
      if #waiters > 0 then
        for _, waiter in ipairs(waiters) do
          redis.call('RPUSH', waiter, state)
          redis.call('EXPIRE', waiter, waiter_ttl)
        end
        redis.call('DEL', waiting)  -- a waiter that comes later reads the state itself
      end
    end
  end
  return n
end
