import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { type Meter, type RateLimiter, rateLimitExceeded, rateLimitHeaders } from '../broker/rate-limiter.ts'
import { addressOf } from './denials.ts'

declare module 'fastify' {
  interface FastifyInstance {
    limits: Limits
  }
  interface FastifyRequest {
    /** The request's count against its client's limit, set by the `authenticate` hook. */
    meter: Meter | null
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

/** The HTTP side of the broker's limits (broker/rate-limiter.ts names and counts them all). */
export interface Limits {
  /** A meter of the client's limit for this request (counted once: see `Meter`). */
  meter: (client: { id: string, rateLimit?: { max: number, timeWindowMs: number } }) => Meter
  /**
   * Counts one failed authentication (a missing or unknown secret) for the request's address and
   * says whether the address is throttled. Only failures are counted and only failures are
   * throttled: a valid secret from the same address is never looked at here.
   */
  authFailure: (request: FastifyRequest) => Promise<AuthFailureVerdict>
  /** Per-address limit on unknown routes: an attacker cannot probe URLs at full speed. */
  notFound: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
}

export interface RateLimitsOptions {
  limiter: RateLimiter
}

/**
 * The limits on the HTTP side: `app.limits` for the auth plugin and the not-found handler, and the
 * x-ratelimit-* headers of every request counted against its client's limit. A request whose
 * meter nothing counted before its answer (a 400 or 404 of a route that counts in the serve
 * script) is counted as the answer goes out, so every request with a valid secret counts.
 */
async function rateLimits (app: FastifyInstance, opts: RateLimitsOptions): Promise<void> {
  const { limiter } = opts
  app.decorateRequest('meter', null)
  app.addHook('onSend', async (request, reply, payload) => {
    const meter = request.meter
    if (meter === null) return payload
    if (meter.pending !== undefined) await meter.count().catch(() => {})
    const last = meter.last
    if (last?.counted === true) reply.headers(rateLimitHeaders(last))
    return payload
  })

  app.decorate('limits', {
    meter: (client) => limiter.meter(client),
    notFound: async (request) => {
      const c = await limiter.hit(limiter.address('not_found', addressOf(request)))
      if (c.limited) throw rateLimitExceeded(c)
    },
    authFailure: async (request) => {
      const c = await limiter.hit(limiter.address('auth_failures', addressOf(request)))
      return {
        failures: c.current,
        counted: c.counted,
        max: c.max,
        throttled: c.limited,
        becameThrottled: c.current === c.max + 1,
        retryAfter: Math.max(1, Math.ceil(c.ttlMs / 1000)),
        windowMs: c.windowMs,
      }
    },
  } satisfies Limits)
}

export default fp(rateLimits, { name: 'rate-limits' })
