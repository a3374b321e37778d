-- Claim the chord of the group KEYS[1] for the claimant ARGV[1].
-- 1: claimed now (or before, by a claim it covers); 0: claimed by another; -1: no such group.
-- A claimant covers its own claim, and a bare task id covers any run of it, <task id>/<run>
-- (taskd.backends.base.claim_covers). The claimant is kept beside the group (KEYS[2], for
-- ARGV[2] seconds); ChordTriggered is flipped inside the stored GroupMeta too, editing the
-- JSON in place so it keeps Go's bytes.
local owner = redis.call('GET', KEYS[2])
if owner then
  if owner == ARGV[1] or string.sub(owner, 1, #ARGV[1] + 1) == ARGV[1] .. '/' then return 1 end
  return 0
end
local meta = redis.call('GET', KEYS[1])
if not meta then return -1 end
local s, e = string.find(meta, '"ChordTriggered"%s*:%s*false')
if not s then return 0 end
redis.call('SET', KEYS[1], string.sub(meta, 1, s - 1) .. '"ChordTriggered":true' ..
           string.sub(meta, e + 1), 'KEEPTTL')
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
return 1
