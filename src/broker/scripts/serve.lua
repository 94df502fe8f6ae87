--[[
  The hot path: the current live token of a slot, with its audit event, in one round trip.

  Input:
    KEYS[1] current      the slot's current-token pointer
    KEYS[2] active       ZSET slot → last time it asked (the server's active clients)
    KEYS[3] audit        the security stream
    KEYS[4] auditServes  the capped serves stream
    KEYS[5] rateLimit    the client's counter

    ARGV[1]  tokPrefix   prefix of token records
    ARGV[2]  slot
    ARGV[3]  server
    ARGV[4]  now
    ARGV[5]  requestId
    ARGV[6]  ip
    ARGV[7]  source      'cache' | 'upstream'
    ARGV[8]  maxlen      cap of the serves stream
    ARGV[9]  client
    ARGV[10] action      'token.issue' | 'source.connect'
    ARGV[11] target      the source id, '' for a PMS token
    ARGV[12] kids        every key id the broker can open, comma-separated
    ARGV[13] limitMax    rate-limit max (0 = do not count)
    ARGV[14] limitWindow rate-limit window (ms)
    ARGV[15] via         '' for POST, 'stream' for the push channel, 'proxy' for the PMS proxy

  Output (every reply starts with the count and the window's ms left):
    {'limited', count, ttl}
    {'hit', count, ttl, id, enc, issuedAt, expiresAt, renewAt, mid, meta, kid}
    {'miss', count, ttl, reason}
    {'foreign', count, ttl, id}       sealed under a secret the broker does not know: not served, not audited
    {'unstamped', count, ttl, id, enc} a record from before key ids: the caller tries to open it

  A slot is what a current token is kept for: the client id, or `client~<source>` for a source.
  A record that belongs to another slot or server (a pointer altered in Redis) is never served:
  the pointer is dropped and a `token.mismatch` event audited.

  The client's rate limit is counted here too (KEYS[5], ARGV[13] and ARGV[14]), so a cache hit
  costs one round trip: a fixed window (SET NX PX, INCR, PTTL), and over the limit nothing else
  happens.
]]
--@include include/audit.lua
local count, ttl = 0, 0
local max = tonumber(ARGV[13])
if max > 0 then
  redis.call('SET', KEYS[5], '0', 'PX', ARGV[14], 'NX')
  count = redis.call('INCR', KEYS[5])
  ttl = redis.call('PTTL', KEYS[5])
  if ttl < 0 then ttl = tonumber(ARGV[14]) end
  if count > max then return {'limited', count, ttl} end
end
local function reply(kind, ...)
  return {kind, count, ttl, ...}
end
local id = redis.call('GET', KEYS[1])
if not id then return reply('miss', 'none') end
local tk = ARGV[1] .. id
local f = redis.call('HMGET', tk, 'state', 'enc', 'issuedAt', 'expiresAt', 'renewAt', 'mid', 'fp', 'meta', 'kid', 'slot', 'server', 'client', 'activeAt')
if not f[1] then return reply('miss', 'none') end
if (f[10] or f[12]) ~= ARGV[2] or f[11] ~= ARGV[3] then
  redis.call('DEL', KEYS[1])
  audit(KEYS[3], 0, ARGV[4], 'token.mismatch', ARGV[9], ARGV[3], id, f[7] or '', ARGV[5], ARGV[6],
    cjson.encode({slot = ARGV[2], ownerClient = f[12] or '', ownerServer = f[11] or ''}))
  return reply('miss', 'mismatch')
end
if f[1] ~= 'active' then return reply('miss', f[1]) end
local now = tonumber(ARGV[4])
if now >= tonumber(f[4]) then return reply('miss', 'expired') end
if not f[9] then return reply('unstamped', id, f[2]) end
if not string.find(',' .. ARGV[12] .. ',', ',' .. f[9] .. ',', 1, true) then return reply('foreign', id) end
-- Activity ("asked within TOKEN_LIFETIME") needs no finer grain than a second: a client asking
-- in a tight loop costs these two writes once a second, not on every request.
-- (activeAt is this token's last such write; a fresh token has none, so its first serve writes.)
if now - (tonumber(f[13]) or 0) >= 1000 then
  redis.call('ZADD', KEYS[2], now, ARGV[2])
  redis.call('HSET', tk, 'lastUsedAt', now, 'activeAt', now)
end
local d = {source = ARGV[7]}
if ARGV[11] ~= '' then d.target = ARGV[11] end
if ARGV[15] ~= '' then d.via = ARGV[15] end
local detail = cjson.encode(d)
-- The first serve of a fresh mint is a security event; cache hits go to the capped serves stream,
-- except the PMS proxy's: it serves the token for every request a tool makes (a player's every
-- segment), which would flood that stream; the proxy audits its own refusals instead.
if ARGV[7] == 'upstream' then
  audit(KEYS[3], 0, ARGV[4], ARGV[10], ARGV[9], ARGV[3], id, f[7], ARGV[5], ARGV[6], detail)
elseif ARGV[15] ~= 'proxy' then
  audit(KEYS[4], ARGV[8], ARGV[4], ARGV[10], ARGV[9], ARGV[3], id, f[7], ARGV[5], ARGV[6], detail)
end
return reply('hit', id, f[2], f[3], f[4], f[5], f[6] or '', f[8] or '', f[9])
