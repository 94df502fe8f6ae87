import { Redis, type RedisOptions } from 'ioredis'
import type { Logger } from 'pino'
import type { Config } from './config/index.ts'
import { BrokerError, storeUnavailable } from './errors.ts'

/** `push`: the push channel's reader (broker/push.ts), one blocking XREAD per instance, opened with the first stream. */
export type RedisRole = 'cache' | 'ratelimit' | 'queue' | 'worker' | 'push'

/**
 * One named connection per role. The request path fails fast: a command that does
 * not answer within 750 ms is rejected, so a stalled Redis becomes a quick 503 instead of a hang.
 * BullMQ workers need `maxRetriesPerRequest: null` (they block on Redis by design).
 * The password (REDIS_PASSWORD_FILE) is an option, not part of the URL: it never reaches a log line.
 */
export function createRedis (target: Pick<Config, 'redisUrl' | 'redisPassword'>, role: RedisRole, logger: Logger, extra: RedisOptions = {}): Redis {
  const requestPath = role === 'cache' || role === 'ratelimit'
  const redis = new Redis(target.redisUrl, {
    ...(target.redisPassword === undefined ? {} : { password: target.redisPassword }),
    connectionName: `ptb-${role}`,
    // Concurrent requests share one write per event-loop tick (+30% measured on the cache path).
    enableAutoPipelining: requestPath,
    maxRetriesPerRequest: role === 'worker' ? null : 1,
    // Rate limits fail open, so they must give up quickly: a stalled Redis costs a request at
    // most 250 ms per limit check before the token store's own deadline answers 503.
    // With auto-pipelining a command waits for the batch in flight on its connection before its
    // own batch is written (and its timer armed), so a stalled Redis answers within twice the
    // command timeout: 750 ms keeps the request path's 503 within 1.5 s (test/faults/redis.test.ts).
    commandTimeout: role === 'ratelimit' ? 250 : requestPath ? 750 : undefined,
    connectTimeout: 2000,
    // Reconnect quickly but never spin: 50 ms doubling up to 2 s.
    retryStrategy: (times) => Math.min(50 * 2 ** times, 2000),
    ...extra,
  })
  let lastLog = 0
  redis.on('error', (err: Error) => {
    // A down Redis errors on every reconnect attempt; one line per 10 s is enough.
    const now = Date.now()
    if (now - lastLog > 10_000) {
      lastLog = now
      logger.warn({ role, err: { message: err.message, code: (err as { code?: string }).code } }, 'redis connection error')
    }
  })
  return redis
}

/**
 * Runs one Redis call with a hard deadline; any failure becomes STORE_UNAVAILABLE (503). The
 * request path goes through this so a stalled Redis is a quick answer, never a hang.
 */
export async function withDeadline<T> (fn: () => Promise<T>, timeoutMs: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const deadline = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error('redis call timed out')), timeoutMs)
  })
  try {
    return await Promise.race([fn(), deadline])
  } catch (err) {
    throw err instanceof BrokerError ? err : storeUnavailable(err)
  } finally {
    clearTimeout(timer)
  }
}
