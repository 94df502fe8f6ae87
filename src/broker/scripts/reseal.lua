--[[
  Re-seals a token under the current secret after a BROKER_SECRET rotation, unless the record
  changed meanwhile.

  Input:
    KEYS[1] token    the token record

    ARGV[1] oldKid   key id the caller opened it with
    ARGV[2] oldEnc   the ciphertext the caller opened
    ARGV[3] newKid   key id of the current secret
    ARGV[4] newEnc   the token sealed under it

  Output: 1 re-sealed, 0 the record changed (left alone)
]]
local f = redis.call('HMGET', KEYS[1], 'kid', 'enc')
if f[1] ~= ARGV[1] or f[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'kid', ARGV[3], 'enc', ARGV[4])
return 1
