/**
 * Lua scripts: each runs atomically in one round trip. The hot path (a cache hit) is one call of
 * `serve`, which reads the current token, marks the client active and appends the audit event
 * together, so the audit write costs no extra latency and a token is never handed out unaudited.
 * Scripts address token records by `tokPrefix .. id` (and current pointers by `curPrefix ..`),
 * keys they are not given as KEYS. On Redis Cluster that is allowed only within the node's own
 * slots: every key of a deployment carries the `{prefix}` hash tag there (keys.ts), so the keys a
 * script builds are in the slot of the KEYS it was given, and ioredis routes it by those.
 */

/**
 * Shared by every script that appends to an audit stream. maxlen 0: no cap (the security stream,
 * trimmed by retention only); otherwise approximately capped (the serves stream).
 */
const AUDIT_FN = `
local function audit(stream, maxlen, now, action, client, server, tokenId, fp, requestId, ip, detail)
  if tonumber(maxlen) > 0 then
    return redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*',
      'time', now, 'action', action, 'client', client, 'server', server, 'tokenId', tokenId,
      'fingerprint', fp, 'requestId', requestId, 'ip', ip, 'detail', detail)
  end
  return redis.call('XADD', stream, '*',
    'time', now, 'action', action, 'client', client, 'server', server, 'tokenId', tokenId,
    'fingerprint', fp, 'requestId', requestId, 'ip', ip, 'detail', detail)
end
`

/**
 * Shared by the scripts that write the push channel's change log (push.ts). Only a client's own
 * PMS token matters there: not source tokens (a target) nor the canary (`~` in its slot). Ids only.
 */
const PUSH_FN = `
local function pushable(slot, target)
  return (target == nil or target == '') and slot ~= nil and not string.find(slot, '~', 1, true)
end
local function push(stream, maxlen, ...)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', ...)
end
`

/**
 * KEYS: current, active, audit (security stream), auditServes, rateLimit (the client's counter)
 * ARGV: tokPrefix, slot, server, now, requestId, ip, source ('cache'|'upstream'), maxlen, client,
 *       action ('token.issue' | 'source.connect'), target (the source id, '' for a PMS token),
 *       kid (the key id of the current BROKER_SECRET), kids (every key id the broker can open, comma-separated),
 *       rate-limit max (0 = do not count), rate-limit window (ms), via ('' for POST, 'stream' for the push channel)
 * A slot is what a current token is kept for: the client id, or `client~<source>` for a source.
 * A record that belongs to another slot or server (a pointer altered in Redis) is never served:
 * the pointer is dropped and a `token.mismatch` event audited. A token sealed under a secret the
 * broker does not know is not served and not audited: {'foreign', id}. A record from before key
 * ids has none: {'unstamped', id, enc}, and the caller tries to open it.
 *
 * The client's rate limit is counted here too (KEYS[5], ARGV max and windowMs; max 0 = not
 * counted), so a cache hit costs one round trip: a fixed window (SET NX PX, INCR, PTTL), and over
 * the limit nothing else happens. Every reply starts with the count and the window's ms left.
 * → {'limited', count, ttl} | {'hit', count, ttl, id, enc, issuedAt, expiresAt, renewAt, mid, meta, kid}
 *   | {'miss', count, ttl, reason} | {'foreign', count, ttl, id} | {'unstamped', count, ttl, id, enc}
 */
export const SERVE = `${AUDIT_FN}
local count, ttl = 0, 0
local max = tonumber(ARGV[14])
if max > 0 then
  redis.call('SET', KEYS[5], '0', 'PX', ARGV[15], 'NX')
  count = redis.call('INCR', KEYS[5])
  ttl = redis.call('PTTL', KEYS[5])
  if ttl < 0 then ttl = tonumber(ARGV[15]) end
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
if not string.find(',' .. ARGV[13] .. ',', ',' .. f[9] .. ',', 1, true) then return reply('foreign', id) end
-- Activity ("asked within TOKEN_LIFETIME") needs no finer grain than a second: a client asking
-- in a tight loop costs these two writes once a second, not on every request.
-- (activeAt is this token's last such write; a fresh token has none, so its first serve writes.)
if now - (tonumber(f[13]) or 0) >= 1000 then
  redis.call('ZADD', KEYS[2], now, ARGV[2])
  redis.call('HSET', tk, 'lastUsedAt', now, 'activeAt', now)
end
local d = {source = ARGV[7]}
if ARGV[11] ~= '' then d.target = ARGV[11] end
if ARGV[16] ~= '' then d.via = ARGV[16] end
local detail = cjson.encode(d)
-- The first serve of a fresh mint is a security event; cache hits go to the capped serves stream,
-- except the PMS proxy's: it serves the token for every request a tool makes (a player's every
-- segment), which would flood that stream; the proxy audits its own refusals instead.
if ARGV[7] == 'upstream' then
  audit(KEYS[3], 0, ARGV[4], ARGV[10], ARGV[9], ARGV[3], id, f[7], ARGV[5], ARGV[6], detail)
elseif ARGV[16] ~= 'proxy' then
  audit(KEYS[4], ARGV[8], ARGV[4], ARGV[10], ARGV[9], ARGV[3], id, f[7], ARGV[5], ARGV[6], detail)
end
return reply('hit', id, f[2], f[3], f[4], f[5], f[6] or '', f[8] or '', f[9])
`

/**
 * Re-seals a token under the current secret after a rotation, unless it changed meanwhile.
 * KEYS: token  ARGV: oldKid, oldEnc, newKid, newEnc
 */
export const RESEAL = `
local f = redis.call('HMGET', KEYS[1], 'kid', 'enc')
if f[1] ~= ARGV[1] or f[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'kid', ARGV[3], 'enc', ARGV[4])
return 1
`

/**
 * KEYS: current
 * ARGV: tokPrefix, now
 * → id of the live active current token, or false. Read-only: used by waiters of a mint lock.
 */
export const PEEK = `
local id = redis.call('GET', KEYS[1])
if not id then return false end
local f = redis.call('HMGET', ARGV[1] .. id, 'state', 'expiresAt')
if f[1] ~= 'active' or tonumber(ARGV[2]) >= tonumber(f[2]) then return false end
return id
`

/**
 * Store a freshly minted token and make it the one served.
 * KEYS: current, active, byClient, byServer, allTokens, audit, newToken, fingerprintIndex, push
 * ARGV: tokPrefix, client, server, tokenId, enc, fp, issuedAt, expiresAt, renewAt, mid, now,
 *       expectCurrent ('' = only if no live active token), oldState, auditAction ('' = none),
 *       requestId, ip, detail, maxlen, recordTtlMs, slot, target (source id or ''), meta (JSON or ''),
 *       kid (key id of the secret that sealed enc), auditRetentionMs (how long the fingerprint index entry lives),
 *       pushReason (the push channel's `reason`: issued, rotated, reminted, replaced), pushMaxlen
 * A client's new current token is logged on the push stream in the same step (`token` entry), so
 * no change can be stored without every instance's streams hearing of it.
 * → {'ok', previousId} | {'conflict', currentId}
 */
export const STORE = `${AUDIT_FN}${PUSH_FN}
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
local ttl = tonumber(ARGV[19])
redis.call('HSET', KEYS[7], 'client', ARGV[2], 'server', ARGV[3], 'state', 'active', 'enc', ARGV[5],
  'fp', ARGV[6], 'issuedAt', ARGV[7], 'expiresAt', ARGV[8], 'renewAt', ARGV[9], 'mid', ARGV[10], 'lastUsedAt', ARGV[11],
  'slot', ARGV[20], 'target', ARGV[21], 'meta', ARGV[22], 'kid', ARGV[23])
redis.call('PEXPIREAT', KEYS[7], exp + ttl)
if old then
  local ok = tp .. old
  if redis.call('HGET', ok, 'state') == 'active' then redis.call('HSET', ok, 'state', ARGV[13]) end
end
redis.call('SET', KEYS[1], ARGV[4], 'PXAT', exp)
redis.call('SET', KEYS[8], ARGV[4] .. '|' .. ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[7], 'PXAT', now + tonumber(ARGV[24]))
for i = 3, 5 do
  redis.call('ZADD', KEYS[i], exp, ARGV[4])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - ttl)
end
if ARGV[14] ~= '' then
  audit(KEYS[6], 0, ARGV[11], ARGV[14], ARGV[2], ARGV[3], ARGV[4], ARGV[6], ARGV[15], ARGV[16], ARGV[17])
end
if pushable(ARGV[20], ARGV[21]) then
  push(KEYS[9], ARGV[26], 'type', 'token', 'client', ARGV[2], 'server', ARGV[3], 'tokenId', ARGV[4], 'reason', ARGV[25])
end
return {'ok', old or ''}
`

/**
 * Move tokens to a terminal state (revoked or invalidated), drop them from being served and audit
 * each one. Tokens already expired or already terminal are left alone and not counted.
 * A retired token that was a client's current one is logged on the push stream (`revoked` entry
 * with the reason, the action and the revocation's selector kind), so every instance's streams hear of it.
 * KEYS: audit, index (a ZSET of tokenId → expiresAt; ignored in 'one' mode), push
 * ARGV: tokPrefix, curPrefix, now, mode ('one' | 'index'), tokenId, filterClient, filterServer,
 *       newState, action, requestId, ip, detail, maxlen, filterTarget ('' = any, '-' = PMS tokens only), pushMaxlen
 * → {count, latestExpiresAt}
 */
export const RETIRE = `${AUDIT_FN}${PUSH_FN}
local tp, cp, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local ids
if ARGV[4] == 'one' then ids = {ARGV[5]} else ids = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf') end
local count, latest = 0, 0
local why, selector = '', ''
local ok, d = pcall(cjson.decode, ARGV[12])
if ok and type(d) == 'table' then
  if type(d.reason) == 'string' then why = d.reason end
  if type(d.selector) == 'string' then selector = d.selector end
end
for _, id in ipairs(ids) do
  local tk = tp .. id
  local f = redis.call('HMGET', tk, 'state', 'client', 'server', 'expiresAt', 'fp', 'slot', 'target')
  local target = f[7] or ''
  if (f[1] == 'active' or f[1] == 'rotated') and now < tonumber(f[4])
     and (ARGV[6] == '' or ARGV[6] == f[2]) and (ARGV[7] == '' or ARGV[7] == f[3])
     and (ARGV[14] == '' or ARGV[14] == target or (ARGV[14] == '-' and target == '')) then
    redis.call('HSET', tk, 'state', ARGV[8], 'retiredAt', ARGV[3], 'reason', why)
    local slot = f[6] or f[2]
    local ck = cp .. slot .. ':' .. f[3]
    if redis.call('GET', ck) == id then
      redis.call('DEL', ck)
      if pushable(slot, target) then
        push(KEYS[3], ARGV[15], 'type', 'revoked', 'client', f[2], 'server', f[3], 'tokenId', id, 'reason', why,
          'action', ARGV[9], 'selector', selector)
      end
    end
    audit(KEYS[1], 0, ARGV[3], ARGV[9], f[2], f[3], id, f[5], ARGV[10], ARGV[11], ARGV[12])
    count = count + 1
    if tonumber(f[4]) > latest then latest = tonumber(f[4]) end
  end
end
-- A revocation of a whole client (or of all) ends that client's streams even when it found no
-- current token to retire (one revoked before): one entry for the client, '*' for any.
if ARGV[9] == 'token.revoke' and (selector == 'client' or selector == 'all') then
  local c, s = ARGV[6], ARGV[7]
  if c == '' then c = '*' end
  if s == '' then s = '*' end
  push(KEYS[3], ARGV[15], 'type', 'revoked', 'client', c, 'server', s, 'tokenId', '', 'reason', why,
    'action', ARGV[9], 'selector', selector)
end
return {count, latest}
`

/**
 * Append one audit event that is not tied to a token handed out (auth.denied, server.restart…).
 * KEYS: audit  ARGV: maxlen, now, action, client, server, tokenId, fp, requestId, ip, detail
 */
export const AUDIT = `${AUDIT_FN}
return audit(KEYS[1], 0, ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10])
`

/** Releases a lock only if this owner still holds it. KEYS: lock  ARGV: owner */
export const UNLOCK = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`
