-- Included (--@include include/push.lua) by the scripts that write the push channel's change log
-- (push.ts). Only a client's own PMS token matters there: not source tokens (a target) nor the
-- canary (`~` in its slot). Ids only, never a token or its ciphertext.
local function pushable(slot, target)
  return (target == nil or target == '') and slot ~= nil and not string.find(slot, '~', 1, true)
end
local function push(stream, maxlen, ...)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', ...)
end
