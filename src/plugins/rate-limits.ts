import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fastifyRateLimit, { normalizeIP, type FastifyRateLimitStore, type FastifyRateLimitStoreCtor } from '@fastify/rate-limit'
import fp from 'fastify-plugin'
import type { Redis } from 'ioredis'
import type { RateLimitConfig } from '../config/index.ts'
import { BrokerError } from '../errors.ts'
import type { Metrics } from '../metrics.ts'

declare module 'fastify' {
  interface FastifyInstance {
    limits: Limits
  }
}

/** What counting one failed authentication decided for its address. */
export interface AuthFailureVerdict {
  /** Failed authentications from this address in the current window, this one included. */
  failures: number
  /** False when Redis did not answer in time: the failure could not be counted (fail open). */
  counted: boolean
  /** Failures answered 401 per window; every further one is answered 429. */
  max: number
  /** This failure is over the limit: answer 429, do not audit it. */
  throttled: boolean
  /** This failure is the first one over the limit in its window (exactly one request, across instances). */
  becameThrottled: boolean
  /** Seconds until the window ends (the address is throttled until then). */
  retryAfter: number
  windowMs: number
}

export interface Limits {
  /** Per-client limit (the client's `rateLimit`, else RATE_LIMIT_DEFAULT); run after authentication. */
  client: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
  /**
   * Counts one failed authentication (a missing or unknown secret) for the request's address and
   * says whether the address is throttled. Only failures are counted and only failures are
   * throttled: a valid secret from the same address is never looked at here.
   */
  authFailure: (request: FastifyRequest) => Promise<AuthFailureVerdict>
  /** Per-IP limit on unknown routes: an attacker cannot probe URLs at full speed. */
  notFound: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
}

export interface RateLimitsOptions {
  redis: Redis
  prefix: string
  defaultLimit: RateLimitConfig
  metrics: Metrics
  /** Failed authentications answered 401 per address and window; further failures get 429. */
  authFailures?: RateLimitConfig
  /** Requests to unknown routes allowed per IP and window. */
  notFoundLimit?: RateLimitConfig
}

const UNITS: Array<[number, string]> = [[86_400_000, 'day'], [3_600_000, 'hour'], [60_000, 'minute'], [1000, 'second'], [1, 'millisecond']]

/** A window as people say it, exactly: 60000 → "1 minute", 90000 → "90 seconds", 1500 → "1500 milliseconds". */
export function describeWindow (ms: number): string {
  const [size, unit] = UNITS.find(([size]) => ms >= size && ms % size === 0) ?? [1, 'millisecond']
  const n = Math.round(ms / size)
  return `${n} ${unit}${n === 1 ? '' : 's'}`
}

/**
 * Fixed-window counters in Redis: the first hit of a window creates the key with the window as
 * its expiry, later hits only increment it. SET NX PX + INCR + PTTL in one MULTI is atomic and
 * works on Redis 6.2 (PEXPIRE NX would need 7.0).
 */
class WindowCounters {
  private readonly redis: Redis
  private readonly namespace: string

  constructor (redis: Redis, namespace: string) {
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

/**
 * The store @fastify/rate-limit uses. Its own RedisStore names the keys of `rateLimit()` and
 * `createRateLimit()` limiters after a route that those limiters do not have, which writes keys
 * like `<prefix>:rl:undefinedundefined-client:x`. Our key generators already say what each
 * limiter counts (`client:<id>`, `notfound:<ip>`), so one flat namespace is all a limiter needs.
 */
function storeFor (counters: WindowCounters): FastifyRateLimitStoreCtor {
  return class implements FastifyRateLimitStore {
    incr (key: string, cb: (err: Error | null, result?: { current: number, ttl: number }) => void, timeWindow: number): void {
      counters.hit(key, timeWindow).then((r) => cb(null, r), (err: Error) => cb(err))
    }

    read (key: string, cb: (err: Error | null, result?: { current: number, ttl: number }) => void): void {
      counters.read(key).then((r) => cb(null, r), (err: Error) => cb(err))
    }

    child (): FastifyRateLimitStore { return this }
  }
}

/**
 * Rate limits backed by Redis, so they hold across broker instances (@fastify/rate-limit).
 * When Redis is down the limits fail open (`skipOnError`): token issuing itself fails closed with
 * 503 in that case, so nothing is handed out unchecked, and health and metrics keep answering.
 */
async function rateLimits (app: FastifyInstance, opts: RateLimitsOptions): Promise<void> {
  const { metrics } = opts
  const authFailures = opts.authFailures ?? { max: 20, timeWindowMs: 60_000 }
  const notFoundLimit = opts.notFoundLimit ?? { max: 60, timeWindowMs: 60_000 }
  const counters = new WindowCounters(opts.redis, `${opts.prefix}:rl:`)
  let lastUnavailableLog = 0
  await app.register(fastifyRateLimit, {
    global: false,
    store: storeFor(counters),
    skipOnError: true,
  })

  // The window in the message is the configured one. (@fastify/rate-limit's `context.after` is
  // the time left in the current window, which said "per 30 seconds" for a 1-minute limit.)
  const tooMany = (max: number, windowMs: number, ttlMs: number): BrokerError => new BrokerError('RATE_LIMITED',
    `Rate limit exceeded: ${max} requests per ${describeWindow(windowMs)}; retry later.`, { retryAfter: ttlMs / 1000 })
  const clientConfig = (request: FastifyRequest): RateLimitConfig => request.client?.rateLimit ?? opts.defaultLimit

  const clientLimit = app.rateLimit({
    keyGenerator: (request) => `client:${request.client?.id ?? normalizeIP(request.ip)}`,
    max: (request) => clientConfig(request).max,
    timeWindow: (request) => clientConfig(request).timeWindowMs,
    onExceeded: () => metrics.rateLimited.inc({ limit: 'client' }),
    errorResponseBuilder: (request, context) => tooMany(context.max, clientConfig(request).timeWindowMs, context.ttl),
  })
  const notFound = app.rateLimit({
    keyGenerator: (request) => `notfound:${normalizeIP(request.ip)}`,
    max: notFoundLimit.max,
    timeWindow: notFoundLimit.timeWindowMs,
    onExceeded: () => metrics.rateLimited.inc({ limit: 'not_found' }),
    errorResponseBuilder: (_request, context) => tooMany(context.max, notFoundLimit.timeWindowMs, context.ttl),
  })

  app.decorate('limits', {
    client: async (request, reply) => { await clientLimit.call(app, request, reply) },
    notFound: async (request, reply) => { await notFound.call(app, request, reply) },
    authFailure: async (request) => {
      const { max, timeWindowMs: windowMs } = authFailures
      // IPv6 addresses count per /64 (what one host or one customer usually holds), so an attacker
      // cannot step through a subnet to get a fresh allowance (and fresh audit events) per address.
      let hit: { current: number, ttl: number }
      try {
        hit = await counters.hit(`authfail:${normalizeIP(request.ip)}`, windowMs)
      } catch (err) {
        // Fails open like the other limits (a 401, not a 429). A down Redis fails every request:
        // one log line per 10 s is enough.
        const now = Date.now()
        if (now - lastUnavailableLog > 10_000) {
          lastUnavailableLog = now
          request.log.warn({ err: { message: (err as Error).message } }, 'failed-authentication throttle unavailable')
        }
        return { failures: 0, counted: false, max, throttled: false, becameThrottled: false, retryAfter: Math.ceil(windowMs / 1000), windowMs }
      }
      const throttled = hit.current > max
      if (throttled) metrics.rateLimited.inc({ limit: 'auth_failures' })
      return { failures: hit.current, counted: true, max, throttled, becameThrottled: hit.current === max + 1, retryAfter: Math.max(1, Math.ceil(hit.ttl / 1000)), windowMs }
    },
  } satisfies Limits)
}

export default fp(rateLimits, { name: 'rate-limits' })
