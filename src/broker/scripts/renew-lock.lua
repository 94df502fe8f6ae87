--[[
  Resets a lock's expiry only if this owner still holds it (a mint lock's heartbeat).

  Input:
    KEYS[1] lock
    ARGV[1] owner   the value the lock was taken with
    ARGV[2] ttlMs   the new expiry

  Output: 1 held (expiry reset), 0 lost
]]
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
