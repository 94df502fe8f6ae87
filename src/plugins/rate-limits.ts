import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fastifyRateLimit, { normalizeIP, type FastifyRateLimitStore, type FastifyRateLimitStoreCtor } from '@fastify/rate-limit'
import fp from 'fastify-plugin'
import type { WindowCounters } from '../broker/window-counters.ts'
import type { RateLimitConfig } from '../config/index.ts'
import { BrokerError } from '../errors.ts'
import { rateLimitExceeded } from '../broker/client-limit.ts'
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
  /** The Redis counters behind every limit (broker/window-counters.ts). */
  counters: WindowCounters
  defaultLimit: RateLimitConfig
  metrics: Metrics
  /** Failed authentications answered 401 per address and window; further failures get 429. */
  authFailures?: RateLimitConfig
  /** Requests to unknown routes allowed per IP and window. */
  notFoundLimit?: RateLimitConfig
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
  const { counters } = opts
  let lastUnavailableLog = 0
  await app.register(fastifyRateLimit, {
    global: false,
    store: storeFor(counters),
    skipOnError: true,
  })

  // The window in the message is the configured one. (@fastify/rate-limit's `context.after` is
  // the time left in the current window, which said "per 30 seconds" for a 1-minute limit.)
  const tooMany = (max: number, windowMs: number, ttlMs: number): BrokerError => rateLimitExceeded({ max, windowMs }, ttlMs)
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
