-- Prepended to the scripts that take a message off one list and push it onto another. A
-- script's writes before a failing command stay (Redis has no rollback): a push refused with
-- WRONGTYPE after the message left its list would lose it, so the target is checked first.
local function must_be_list(key)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'list' and kind ~= 'none' then
    error(redis.error_reply('WRONGTYPE the key ' .. key .. ' holds a ' .. kind ..
                            ', where taskd keeps a list: nothing was moved'))
  end
end
