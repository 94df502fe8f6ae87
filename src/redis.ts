import { Redis, type RedisOptions } from 'ioredis'
import type { Logger } from 'pino'
import type { Config } from './config/index.ts'
import { BrokerError, storeUnavailable } from './errors.ts'

/** `push`: the push channel's reader (broker/push.ts), one blocking XREAD per instance, opened with the first stream. */
export type RedisRole = 'cache' | 'ratelimit' | 'queue' | 'worker' | 'push'

/**
 * One named connection per role. The request path fails fast: a command that does
 * not answer within a second is rejected, so a stalled Redis becomes a quick 503 instead of a hang.
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
    // own batch is written (and this timer armed), so this alone bounds a call at twice the
    // timeout: the token store's hot call adds a CoarseDeadline of its own (below).
    commandTimeout: role === 'ratelimit' ? 250 : requestPath ? 1000 : undefined,
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

/**
 * A deadline for the hottest call without a timer per call: pending calls sit in a set that one
 * coarse timer sweeps every `resolutionMs`, so a call fails with STORE_UNAVAILABLE at most
 * `timeoutMs + resolutionMs` after it started, wherever it waits (an ioredis command queued behind
 * an auto-pipelined batch in flight has not armed its own commandTimeout yet). A timer per call
 * cost 1.5 % of the cache-hit profile (docs/benchmarks.md); this costs a Set insert and delete.
 */
export class CoarseDeadline {
  readonly #pending = new Set<{ at: number, reject: (err: Error) => void }>()
  #timer: NodeJS.Timeout | undefined

  readonly timeoutMs: number
  readonly resolutionMs: number

  constructor (timeoutMs: number, resolutionMs = 50) {
    this.timeoutMs = timeoutMs
    this.resolutionMs = resolutionMs
  }

  async run<T> (fn: () => Promise<T>): Promise<T> {
    let entry!: { at: number, reject: (err: Error) => void }
    const deadline = new Promise<never>((_resolve, reject) => { entry = { at: Date.now() + this.timeoutMs, reject } })
    this.#pending.add(entry)
    this.#timer ??= setInterval(() => { this.#sweep() }, this.resolutionMs).unref()
    try {
      return await Promise.race([fn(), deadline])
    } catch (err) {
      throw err instanceof BrokerError ? err : storeUnavailable(err)
    } finally {
      this.#pending.delete(entry)
    }
  }

  #sweep (): void {
    const now = Date.now()
    for (const e of this.#pending) {
      if (e.at <= now) {
        this.#pending.delete(e)
        e.reject(new Error('redis call timed out'))
      }
    }
    if (this.#pending.size === 0 && this.#timer !== undefined) {
      clearInterval(this.#timer)
      this.#timer = undefined
    }
  }
}
