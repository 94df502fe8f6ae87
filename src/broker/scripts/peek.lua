--[[
  The id of a slot's live current token, without auditing or touching activity. Read-only: used
  by waiters of a mint lock and by rotations.

  Input:
    KEYS[1] current     the slot's current-token pointer

    ARGV[1] tokPrefix   prefix of token records
    ARGV[2] now

  Output: the token id, or false when there is no live active current token
]]
local id = redis.call('GET', KEYS[1])
if not id then return false end
local f = redis.call('HMGET', ARGV[1] .. id, 'state', 'expiresAt')
if f[1] ~= 'active' or tonumber(ARGV[2]) >= tonumber(f[2]) then return false end
return id
