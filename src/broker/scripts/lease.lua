--[[
  A lease of a concurrency limit (broker/stream-leases.ts): one open thing (a proxied long answer)
  counted in a sorted set of member → expiry (ms). Expired members are dropped first, so a lease
  whose holder died (a broker killed with answers open) stops counting once it lapses; a live
  holder renews its leases long before.

  Input:
    KEYS[1] set       the limit's sorted set for one subject
    ARGV[1] now       ms
    ARGV[2] expiry    ms: the lease's expiry
    ARGV[3] member    the lease's id
    ARGV[4] max       leases allowed at once
    ARGV[5] ttl       ms: the set's own expiry (a set whose holders all died goes away)

  Output: {1, count} taken (count includes it), {0, count} over the limit (nothing taken)
]]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[4]) then return {0, n} end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {1, n + 1}
