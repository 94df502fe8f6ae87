--[[
  Appends one audit event that is not tied to a token handed out (server.restart, auth.denied…).

  Input:
    KEYS[1] stream        the audit stream to append to

    ARGV[1]  maxlen       0: no cap (the security stream); else approximately capped
    ARGV[2]  now
    ARGV[3]  action
    ARGV[4]  client
    ARGV[5]  server
    ARGV[6]  tokenId
    ARGV[7]  fingerprint
    ARGV[8]  requestId
    ARGV[9]  ip
    ARGV[10] detail       JSON

  Output: the stream entry id
]]
--@include include/audit.lua
return audit(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10])
