import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fastifyRateLimit from '@fastify/rate-limit'
import fp from 'fastify-plugin'
import type { Redis } from 'ioredis'
import type { RateLimitConfig } from '../config.ts'
import { BrokerError } from '../errors.ts'
import type { Metrics } from '../metrics.ts'

declare module 'fastify' {
  interface FastifyInstance {
    limits: Limits
  }
}

export interface Limits {
  /** Per-client limit (the client's `rateLimit`, else RATE_LIMIT_DEFAULT); run after authentication. */
  client: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
  /** Throws 429 while this IP has failed authentication too often (brute-force protection). */
  checkAuthFailures: (request: FastifyRequest) => Promise<void>
  /** Counts one failed authentication for this IP. */
  recordAuthFailure: (request: FastifyRequest) => Promise<void>
  /** Per-IP limit on unknown routes: an attacker cannot probe URLs at full speed. */
  notFound: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
}

export interface RateLimitsOptions {
  redis: Redis
  prefix: string
  defaultLimit: RateLimitConfig
  metrics: Metrics
  /** Failed authentications allowed per IP and window before every request from it gets 429. */
  authFailures?: RateLimitConfig
  /** Requests to unknown routes allowed per IP and window. */
  notFoundLimit?: RateLimitConfig
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
  await app.register(fastifyRateLimit, {
    global: false,
    redis: opts.redis,
    nameSpace: `${opts.prefix}:rl:`,
    skipOnError: true,
    errorResponseBuilder: (_request, context) => new BrokerError('RATE_LIMITED',
      `Rate limit exceeded: ${context.max} requests per ${context.after}; retry later.`, { retryAfter: context.ttl / 1000 }),
  })

  const clientLimit = app.rateLimit({
    hook: 'preHandler',
    keyGenerator: (request) => `client:${request.client?.id ?? request.ip}`,
    max: (request) => (request.client?.rateLimit ?? opts.defaultLimit).max,
    timeWindow: (request) => (request.client?.rateLimit ?? opts.defaultLimit).timeWindowMs,
    onExceeded: () => metrics.rateLimited.inc({ limit: 'client' }),
  })
  const notFound = app.rateLimit({
    keyGenerator: (request) => `notfound:${request.ip}`,
    max: notFoundLimit.max,
    timeWindow: notFoundLimit.timeWindowMs,
    onExceeded: () => metrics.rateLimited.inc({ limit: 'not_found' }),
  })
  const failures = app.createRateLimit({
    keyGenerator: (request) => `authfail:${request.ip}`,
    max: authFailures.max,
    timeWindow: authFailures.timeWindowMs,
    skipOnError: true,
  })

  app.decorate('limits', {
    client: async (request, reply) => { await clientLimit.call(app, request, reply) },
    notFound: async (request, reply) => { await notFound.call(app, request, reply) },
    checkAuthFailures: async (request) => {
      const r = await failures(request, { increment: false })
      if (!r.isAllowed && r.remaining <= 0) {
        metrics.rateLimited.inc({ limit: 'auth_failures' })
        throw new BrokerError('RATE_LIMITED', 'Too many failed authentications from this address; retry later.', { retryAfter: r.ttlInSeconds })
      }
    },
    recordAuthFailure: async (request) => { await failures(request) },
  } satisfies Limits)
}

export default fp(rateLimits, { name: 'rate-limits' })
