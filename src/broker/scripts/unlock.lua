--[[
  Releases a lock only if this owner still holds it.

  Input:
    KEYS[1] lock
    ARGV[1] owner   the value the lock was taken with

  Output: 1 released, 0 not held by this owner
]]
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
