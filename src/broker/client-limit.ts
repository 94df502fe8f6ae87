import { BrokerError } from '../errors.ts'

/** A per-client limit counted in the serve script (one round trip): `max` requests per `windowMs`. */
export interface ClientLimit { max: number, windowMs: number }

/**
 * The 429 of every limit: the configured window in words (not the time left in it) and
 * Retry-After; `headers` adds what the limiter reports (x-ratelimit-*).
 */
export function rateLimitExceeded (limit: ClientLimit, ttlMs: number, headers?: Record<string, string>): BrokerError {
  return new BrokerError('RATE_LIMITED', `Rate limit exceeded: ${limit.max} requests per ${describeWindow(limit.windowMs)}; retry later.`, {
    retryAfter: ttlMs / 1000,
    ...(headers === undefined ? {} : { headers }),
  })
}

/** The 429 of the per-client limit counted in the serve script, with the x-ratelimit-* headers @fastify/rate-limit would send. */
export function clientLimitExceeded (limit: ClientLimit, ttlMs: number): BrokerError {
  const reset = String(Math.max(1, Math.ceil(ttlMs / 1000)))
  return rateLimitExceeded(limit, ttlMs, { 'x-ratelimit-limit': String(limit.max), 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': reset })
}

const UNITS: Array<[number, string]> = [[86_400_000, 'day'], [3_600_000, 'hour'], [60_000, 'minute'], [1000, 'second'], [1, 'millisecond']]

/** A window as people say it, exactly: 60000 → "1 minute", 90000 → "90 seconds", 1500 → "1500 milliseconds". */
export function describeWindow (ms: number): string {
  const [size, unit] = UNITS.find(([size]) => ms >= size && ms % size === 0) ?? [1, 'millisecond']
  const n = Math.round(ms / size)
  return `${n} ${unit}${n === 1 ? '' : 's'}`
}
