import type { RedisClient } from '../redis.ts'

/**
 * Fixed-window counters in Redis: the first hit of a window creates the key with the window as
 * its expiry, later hits only increment it. SET NX PX + INCR + PTTL in one MULTI is atomic and
 * works on Redis 6.2 (PEXPIRE NX would need 7.0). The serve script (scripts/serve.lua) counts a
 * client's key the same way inside its one round trip, so both paths share one counter per client.
 * Keys come whole from keys.ts `rateLimit` (through broker/rate-limiter.ts).
 */
export class WindowCounters {
  private readonly redis: RedisClient

  constructor (redis: RedisClient) {
    this.redis = redis
  }

  async hit (key: string, windowMs: number): Promise<{ current: number, ttl: number }> {
    const replies = await this.redis.multi().set(key, '0', 'PX', windowMs, 'NX').incr(key).pttl(key).exec()
    if (replies === null) throw new Error('rate-limit transaction aborted')
    for (const [err] of replies) if (err !== null) throw err
    const [, counted, left] = replies
    if (counted === undefined || left === undefined) throw new Error(`rate-limit transaction returned ${replies.length} replies, expected 3`)
    const ttl = Number(left[1])
    return { current: Number(counted[1]), ttl: ttl > 0 ? ttl : windowMs }
  }
}
