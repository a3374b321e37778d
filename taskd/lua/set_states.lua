-- SET each task's state (KEYS[i] = ARGV[i]) with the same expiry (ARGV[#ARGV] seconds): one
-- command for a batch, far cheaper for the client than a pipeline. Where ARGV[#ARGV - 1] has
-- "1" or "2" for a key, the stored record's TaskName and CreatedAt are kept (machinery's merge
-- rule, as taskd.wire.state.merged; tests/backends/test_merge_rule.py holds both to the same
-- cases). Both records are Go-ordered JSON, so each value is spliced between its key and the
-- next one. "2" marks a final state: it is pushed to the list of every client waiting for the
-- task (the set ARGV[#ARGV - 3] .. 'waiting:' .. key; see taskd.backends.redis.wait_states),
-- which keeps it ARGV[#ARGV - 2] seconds.
-- Those keys are named here, not passed in KEYS: taskd's Redis is never a cluster.
local ttl = ARGV[#ARGV]
local merge = ARGV[#ARGV - 1]
local waiter_ttl = ARGV[#ARGV - 2]
local prefix = ARGV[#ARGV - 3]
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
for i = 1, #KEYS do
  local state = ARGV[i]
  local code = string.sub(merge, i, i)
  if code ~= '0' then
    local old = redis.call('GET', KEYS[i])
    if old then
      state = keep(state, old, 'TaskName', 'State', '""')
      state = keep(state, old, 'CreatedAt', 'TTL', '"0001-01-01T00:00:00Z"')
    end
  end
  redis.call('SET', KEYS[i], state, 'EX', ttl)
  if code == '2' then
    local waiting = prefix .. 'waiting:' .. KEYS[i]
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
return #KEYS
