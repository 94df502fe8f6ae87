--[[
  Moves tokens to a terminal state (revoked or invalidated), drops them from being served and
  audits each one. Tokens already expired or already terminal are left alone and not counted.
  A retired token that was a client's current one is logged on the push stream (`revoked` entry
  with the reason, the action and the revocation's selector kind), so every instance's streams
  hear of it. The arguments are built by scripts.ts retireArgs.

  Input:
    KEYS[1] audit          the security stream
    KEYS[2] index          ZSET tokenId → expiresAt (ignored in 'one' mode)
    KEYS[3] push           the push channel's change log

    ARGV[1]  tokPrefix     prefix of token records
    ARGV[2]  curPrefix     prefix of current-token pointers
    ARGV[3]  now
    ARGV[4]  mode          'one' | 'index'
    ARGV[5]  tokenId       ('one' mode)
    ARGV[6]  filterClient  '' = any
    ARGV[7]  filterServer  '' = any
    ARGV[8]  newState      'revoked' | 'invalidated'
    ARGV[9]  action        the audit action
    ARGV[10] requestId
    ARGV[11] ip
    ARGV[12] detail        audit detail (JSON; its `reason` and `selector` go to the push entry)
    ARGV[13] filterTarget  '' = any, '-' = PMS tokens only, else one source
    ARGV[14] pushMaxlen    cap of the push stream

  Output: {count, latestExpiresAt}
]]
--@include include/audit.lua
--@include include/push.lua
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
     and (ARGV[13] == '' or ARGV[13] == target or (ARGV[13] == '-' and target == '')) then
    redis.call('HSET', tk, 'state', ARGV[8], 'retiredAt', ARGV[3], 'reason', why)
    local slot = f[6] or f[2]
    local ck = cp .. slot .. ':' .. f[3]
    if redis.call('GET', ck) == id then
      redis.call('DEL', ck)
      if pushable(slot, target) then
        push(KEYS[3], ARGV[14], 'type', 'revoked', 'client', f[2], 'server', f[3], 'tokenId', id, 'reason', why,
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
  push(KEYS[3], ARGV[14], 'type', 'revoked', 'client', c, 'server', s, 'tokenId', '', 'reason', why,
    'action', ARGV[9], 'selector', selector)
end
return {count, latest}
