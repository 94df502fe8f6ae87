import type { RedisClient } from '../redis.ts'

/**
 * Fixed-window counters in Redis: the first hit of a window creates the key with the window as
 * its expiry, later hits only increment it. SET NX PX + INCR + PTTL in one MULTI is atomic and
 * works on Redis 6.2 (PEXPIRE NX would need 7.0). The serve script (scripts.ts SERVE) counts a
 * client's key the same way inside its one round trip, so both paths share one counter per client.
 */
export class WindowCounters {
  private readonly redis: RedisClient
  private readonly namespace: string

  /** `namespace`: the key prefix of every counter (keys.ts rateLimitPrefix). */
  constructor (redis: RedisClient, namespace: string) {
    this.redis = redis
    this.namespace = namespace
  }

  async hit (key: string, windowMs: number): Promise<{ current: number, ttl: number }> {
    const k = this.namespace + key
    const replies = await this.redis.multi().set(k, '0', 'PX', windowMs, 'NX').incr(k).pttl(k).exec()
    if (replies === null) throw new Error('rate-limit transaction aborted')
    for (const [err] of replies) if (err !== null) throw err
    const ttl = Number(replies[2][1])
    return { current: Number(replies[1][1]), ttl: ttl > 0 ? ttl : windowMs }
  }

  async read (key: string): Promise<{ current: number, ttl: number }> {
    const k = this.namespace + key
    const [[e1, current], [e2, ttl]] = (await this.redis.multi().get(k).pttl(k).exec()) ?? [[null, null], [null, -2]]
    if (e1 !== null || e2 !== null) throw e1 ?? e2
    return current === null ? { current: 0, ttl: 0 } : { current: Number(current), ttl: Math.max(0, Number(ttl)) }
  }
}
