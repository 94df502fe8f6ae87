--[[
  Stores a freshly minted token and makes it the one served. A client's new current token is
  logged on the push stream in the same step (`token` entry), so no change can be stored without
  every instance's streams hearing of it. The arguments are built by scripts.ts storeArgs.

  Input:
    KEYS[1] current           the slot's current-token pointer
    KEYS[2] byClient          ZSET tokenId → expiresAt
    KEYS[3] byServer          ZSET tokenId → expiresAt
    KEYS[4] allTokens         ZSET tokenId → expiresAt
    KEYS[5] audit             the security stream
    KEYS[6] newToken          the new token record
    KEYS[7] fingerprintIndex  fingerprint → `tokenId|client|server|issuedAt`
    KEYS[8] push              the push channel's change log

    ARGV[1]  tokPrefix        prefix of token records
    ARGV[2]  client
    ARGV[3]  server
    ARGV[4]  tokenId
    ARGV[5]  enc              the sealed token
    ARGV[6]  fp               its fingerprint
    ARGV[7]  issuedAt
    ARGV[8]  expiresAt
    ARGV[9]  renewAt
    ARGV[10] mid              the server's machineIdentifier
    ARGV[11] now
    ARGV[12] expectCurrent    '' = only if there is no live active token; else compare-and-set
    ARGV[13] oldState         what the replaced token becomes ('rotated')
    ARGV[14] auditAction      '' = no audit event
    ARGV[15] requestId
    ARGV[16] ip
    ARGV[17] detail           audit detail (JSON)
    ARGV[18] recordTtlMs      how long the record (and its index entries) outlive its expiry
    ARGV[19] slot
    ARGV[20] target           source id, or ''
    ARGV[21] meta             the source's connection details (JSON), or ''
    ARGV[22] kid              key id of the secret that sealed enc
    ARGV[23] retentionMs      how long the fingerprint index entry lives (AUDIT_RETENTION)
    ARGV[24] pushReason       the push channel's `reason`: issued, rotated, reminted, replaced
    ARGV[25] pushMaxlen       cap of the push stream

  Output: {'ok', previousId or ''} | {'conflict', currentId or ''}
]]
--@include include/audit.lua
--@include include/push.lua
local tp = ARGV[1]
local now = tonumber(ARGV[11])
local old = redis.call('GET', KEYS[1])
if ARGV[12] ~= '' then
  if old ~= ARGV[12] then return {'conflict', old or ''} end
elseif old then
  local f = redis.call('HMGET', tp .. old, 'state', 'expiresAt')
  if f[1] == 'active' and now < tonumber(f[2]) then return {'conflict', old} end
end
local exp = tonumber(ARGV[8])
local ttl = tonumber(ARGV[18])
redis.call('HSET', KEYS[6], 'client', ARGV[2], 'server', ARGV[3], 'state', 'active', 'enc', ARGV[5],
  'fp', ARGV[6], 'issuedAt', ARGV[7], 'expiresAt', ARGV[8], 'renewAt', ARGV[9], 'mid', ARGV[10], 'lastUsedAt', ARGV[11],
  'slot', ARGV[19], 'target', ARGV[20], 'meta', ARGV[21], 'kid', ARGV[22])
redis.call('PEXPIREAT', KEYS[6], exp + ttl)
if old then
  local ok = tp .. old
  if redis.call('HGET', ok, 'state') == 'active' then redis.call('HSET', ok, 'state', ARGV[13]) end
end
redis.call('SET', KEYS[1], ARGV[4], 'PXAT', exp)
redis.call('SET', KEYS[7], ARGV[4] .. '|' .. ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[7], 'PXAT', now + tonumber(ARGV[23]))
for i = 2, 4 do
  redis.call('ZADD', KEYS[i], exp, ARGV[4])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - ttl)
end
if ARGV[14] ~= '' then
  audit(KEYS[5], 0, ARGV[11], ARGV[14], ARGV[2], ARGV[3], ARGV[4], ARGV[6], ARGV[15], ARGV[16], ARGV[17])
end
if pushable(ARGV[19], ARGV[20]) then
  push(KEYS[8], ARGV[25], 'type', 'token', 'client', ARGV[2], 'server', ARGV[3], 'tokenId', ARGV[4], 'reason', ARGV[24])
end
return {'ok', old or ''}
