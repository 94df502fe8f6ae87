import type { Logger } from 'pino'
import type { RateLimitConfig } from '../config/index.ts'
import { BrokerError, describe } from '../errors.ts'
import type { Metrics } from '../metrics.ts'
import type { CountedLimit, Keys, LeasedLimit } from './keys.ts'
import type { Lease, StreamLeases } from './stream-leases.ts'
import type { WindowCounters } from './window-counters.ts'

/**
 * Every rate limit of the broker, by name (the `limit` label of `ptb_rate_limited_total`):
 *
 * - `client`: requests per client and window (the client's `rateLimit`, else RATE_LIMIT_DEFAULT).
 *   Every request with a valid secret counts once, before any permission is checked, refusals
 *   included, so a client flooding 403s gets 429s. Where it is counted: a request that reaches the
 *   serve script is counted inside it (the hot path stays one Redis round trip: the script is
 *   handed this limit's counter); any other is counted in Redis first (`Meter`).
 * - `auth_failures`: failed authentications per address (IPv6 per /64) and window. Only failures
 *   count and only failures are throttled: a valid secret from the same address is never refused
 *   for someone else's failures.
 * - `not_found`: requests to unknown routes per address and window.
 * - `proxy_key_failures`: missing or unusable proxy keys per address and window on the PMS proxy's
 *   listeners; like `auth_failures`, a valid key from the same address is never refused.
 * - `proxy_key_requests`: requests per PMS proxy key and minute (the key's client's
 *   `proxy.limits.requestsPerMinute`, else PROXY_KEY_REQUESTS_PER_MINUTE). Counted inside the serve
 *   script, like `client`, so a proxied request stays one Redis round trip.
 * - `proxy_key_streams`: long answers (media, event feeds, websockets) open at once per proxy key,
 *   across instances: leases in Redis (broker/stream-leases.ts) that lapse when their instance dies.
 * - `streams`: open push streams per client and per instance, a concurrency cap counted in memory
 *   by the hub (broker/push.ts), reported here.
 *
 * A limit the counter cannot count (Redis too slow or down) fails open: issuing itself fails
 * closed with 503 then, so nothing is handed out unchecked.
 */
export type LimitName = CountedLimit | LeasedLimit | 'streams'

/** The limits counted per client address. */
export type AddressLimit = Exclude<CountedLimit, 'client' | 'proxy_key_requests'>

/** `max` hits per `windowMs`. */
export interface Window { max: number, windowMs: number }

/** One counter of a named limit: what is counted (the Redis key) and against which window. */
export interface Counter extends Window {
  limit: CountedLimit
  key: string
}

/** One subject's share of a leased limit: at most `max` leases at once in the set `key`. */
export interface LeaseCounter {
  limit: LeasedLimit
  key: string
  max: number
}

/** What asking for a lease found. */
export interface LeaseCount {
  limit: LeasedLimit
  max: number
  /** Leases held, this one included when taken (0 when Redis could not count). */
  current: number
  /** False when Redis did not answer: the limit failed open and nothing is held. */
  counted: boolean
  limited: boolean
  /** Gives the lease back (idempotent; a no-op when none was taken). */
  release: () => void
}

/** What counting one hit found. */
export interface Count extends Window {
  limit: CountedLimit
  /** Hits in the current window, this one included (0 when it could not be counted). */
  current: number
  /** Milliseconds left in the window. */
  ttlMs: number
  /** False when Redis did not answer in time: the limit failed open. */
  counted: boolean
  /** Over the limit: the request is answered 429. */
  limited: boolean
}

export interface RateLimiterOptions {
  counters: WindowCounters
  keys: Pick<Keys, 'rateLimit'>
  /** RATE_LIMIT_DEFAULT: the limit of a client without a `rateLimit` of its own. */
  clientDefault: RateLimitConfig
  /** Failed authentications answered 401 per address and window (default 20 per minute). */
  authFailures?: RateLimitConfig
  /** Requests to unknown routes per address and window (default 60 per minute). */
  notFound?: RateLimitConfig
  /** Failed proxy keys per address and window on the proxy listeners (default 20 per minute). */
  proxyKeyFailures?: RateLimitConfig
  /** The leases of `proxy_key_streams`; without them that limit is not counted (fails open). */
  leases?: StreamLeases
  /** Counts every request refused at a limit (`ptb_rate_limited_total`). */
  metrics?: Metrics
  /** Says when a counter Redis could not count (the limit failed open), at most once per limit and 10 s. */
  logger?: Logger
}

const window = (c: RateLimitConfig): Window => ({ max: c.max, windowMs: c.timeWindowMs })

export class RateLimiter {
  readonly #o: RateLimiterOptions
  readonly #windows: Record<AddressLimit, Window>
  readonly #unavailableLogged = new Map<LimitName, number>()

  constructor (opts: RateLimiterOptions) {
    this.#o = opts
    this.#windows = {
      auth_failures: window(opts.authFailures ?? { max: 20, timeWindowMs: 60_000 }),
      not_found: window(opts.notFound ?? { max: 60, timeWindowMs: 60_000 }),
      proxy_key_failures: window(opts.proxyKeyFailures ?? { max: 20, timeWindowMs: 60_000 }),
    }
  }

  /** The counter of a client's limit. */
  client (client: { id: string, rateLimit?: RateLimitConfig }): Counter {
    return { limit: 'client', key: this.#o.keys.rateLimit('client', client.id), ...window(client.rateLimit ?? this.#o.clientDefault) }
  }

  /** The counter of a per-address limit; `address` as the HTTP layer normalised it (IPv6 per /64). */
  address (limit: AddressLimit, address: string): Counter {
    return { limit, key: this.#o.keys.rateLimit(limit, address), ...this.#windows[limit] }
  }

  /** The counter of a proxy key's requests: `max` a minute. */
  proxyKey (keyId: string, max: number): Counter {
    return { limit: 'proxy_key_requests', key: this.#o.keys.rateLimit('proxy_key_requests', keyId), max, windowMs: 60_000 }
  }

  /** A proxy key's open long answers: at most `max` at once, across instances. */
  proxyKeyStreams (keyId: string, max: number): LeaseCounter {
    return { limit: 'proxy_key_streams', key: this.#o.keys.rateLimit('proxy_key_streams', keyId), max }
  }

  /** A meter for any counted limit, counted once (by the serve script when handed to the issuer). */
  meterOf (counter: Counter): Meter {
    return new Meter(this, counter)
  }

  /**
   * Takes a lease of a leased limit; `release` gives it back when the thing ends. Fails open
   * (`counted: false`, nothing held) when Redis does not answer, like the counted limits.
   */
  async lease (c: LeaseCounter): Promise<LeaseCount> {
    const leases = this.#o.leases
    const open = { limit: c.limit, max: c.max, current: 0, counted: false, limited: false, release: () => {} }
    if (leases === undefined) return open
    let got: { lease?: Lease, current: number }
    try {
      got = await leases.acquire(c.key, c.max)
    } catch (err) {
      this.#unavailable(c.limit, err)
      return open
    }
    const lease = got.lease
    if (lease === undefined) {
      this.#o.metrics?.rateLimited.inc({ limit: c.limit })
      return { ...open, current: got.current, counted: true, limited: true }
    }
    return { ...open, current: got.current, counted: true, release: () => { leases.release(lease) } }
  }

  /** A client's limit for one request: counted once, here or by the serve script. */
  meter (client: { id: string, rateLimit?: RateLimitConfig }): Meter {
    return new Meter(this, this.client(client))
  }

  /** Counts one hit in Redis. Fails open (`counted: false`) when Redis does not answer. */
  async hit (c: Counter): Promise<Count> {
    let r: { current: number, ttl: number }
    try {
      r = await this.#o.counters.hit(c.key, c.windowMs)
    } catch (err) {
      this.#unavailable(c.limit, err)
      return { limit: c.limit, max: c.max, windowMs: c.windowMs, current: 0, ttlMs: c.windowMs, counted: false, limited: false }
    }
    return this.settle(c, r.current, r.ttl)
  }

  /** A hit counted elsewhere (the serve script counts the client's counter in its own step). */
  settle (c: Counter, current: number, ttlMs: number): Count {
    const limited = current > c.max
    if (limited) this.#o.metrics?.rateLimited.inc({ limit: c.limit })
    return { limit: c.limit, max: c.max, windowMs: c.windowMs, current, ttlMs: ttlMs > 0 ? ttlMs : c.windowMs, counted: true, limited }
  }

  /** A request refused at a limit counted outside Redis (the hub's stream caps). */
  limited (limit: LimitName): void {
    this.#o.metrics?.rateLimited.inc({ limit })
  }

  /** Fails open. A down Redis fails every request: one line per limit and 10 s is enough. */
  #unavailable (limit: LimitName, err: unknown): void {
    const now = Date.now()
    const quietUntil = (this.#unavailableLogged.get(limit) ?? 0) + 10_000
    if (quietUntil > now) return
    this.#unavailableLogged.set(limit, now)
    this.#o.logger?.warn({ limit, err: describe(err) }, limit === 'auth_failures' ? 'failed-authentication throttle unavailable' : 'rate limit unavailable; failing open')
  }
}

/**
 * One request's count against its client's limit. Counted exactly once: by `count()` (in Redis,
 * before a refusal or before a route's work), or by the serve script, which takes `pending` and
 * reports back through `settle`. Either way a request over the limit is a 429.
 */
export class Meter {
  readonly #limiter: RateLimiter
  readonly #counter: Counter
  #last: Count | undefined

  constructor (limiter: RateLimiter, counter: Counter) {
    this.#limiter = limiter
    this.#counter = counter
  }

  /** The counter still to be counted, or undefined once this request was counted. */
  get pending (): Counter | undefined {
    return this.#last === undefined ? this.#counter : undefined
  }

  /** What counting this request found (for the x-ratelimit-* headers). */
  get last (): Count | undefined {
    return this.#last
  }

  /** Counts the request now, unless it was counted already; 429 over the limit. */
  async count (): Promise<Count> {
    return this.#verdict(this.#last ?? await this.#limiter.hit(this.#counter))
  }

  /** The serve script counted this request: `current` hits in the window, `ttlMs` left; 429 over the limit. */
  settle (current: number, ttlMs: number): Count {
    return this.#verdict(this.#last ?? this.#limiter.settle(this.#counter, current, ttlMs))
  }

  /** Over the limit: a 429, however often asked. */
  #verdict (c: Count): Count {
    this.#last = c
    if (c.limited) throw rateLimitExceeded(c, rateLimitHeaders(c))
    return c
  }
}

/** The x-ratelimit-* headers of a counted request. */
export function rateLimitHeaders (c: Count): Record<string, string> {
  return {
    'x-ratelimit-limit': String(c.max),
    'x-ratelimit-remaining': String(Math.max(0, c.max - c.current)),
    'x-ratelimit-reset': String(Math.max(c.limited ? 1 : 0, Math.ceil(c.ttlMs / 1000))),
  }
}

/**
 * The 429 of every limit: the configured window in words (not the time left in it) and
 * Retry-After; `headers` adds what the limiter reports (x-ratelimit-*).
 */
export function rateLimitExceeded (limit: Window & { ttlMs: number }, headers?: Record<string, string>): BrokerError {
  return new BrokerError('RATE_LIMITED', `Rate limit exceeded: ${limit.max} requests per ${describeWindow(limit.windowMs)}; retry later.`, {
    retryAfter: limit.ttlMs / 1000,
    ...(headers === undefined ? {} : { headers }),
  })
}

const UNITS: Array<[number, string]> = [[86_400_000, 'day'], [3_600_000, 'hour'], [60_000, 'minute'], [1000, 'second'], [1, 'millisecond']]

/** A window as people say it, exactly: 60000 → "1 minute", 90000 → "90 seconds", 1500 → "1500 milliseconds". */
export function describeWindow (ms: number): string {
  const [size, unit] = UNITS.find(([size]) => ms >= size && ms % size === 0) ?? [1, 'millisecond']
  const n = Math.round(ms / size)
  return `${n} ${unit}${n === 1 ? '' : 's'}`
}
