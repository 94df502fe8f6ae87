/**
 * Small HTTP helpers of the client library: URL joining, Retry-After, capped backoff and the
 * broker's error type. Node built-ins only; nothing from the server code.
 */

/** What the broker answered instead of a token (its JSON error), or why it could not be asked. */
export class BrokerError extends Error {
  override name = 'BrokerError'
  /** The HTTP status; 0 when the broker could not be reached or answered garbage. */
  readonly statusCode: number
  /** The broker's error code (`UNAUTHENTICATED`, `UPSTREAM_UNAVAILABLE`, …), or `BROKER_UNREACHABLE` / `BAD_RESPONSE`. */
  readonly code: string
  /** The broker's request id, to find the request in its log and audit trail. */
  readonly requestId: string | undefined
  /** The broker's `Retry-After`, in milliseconds (429 and 503). */
  readonly retryAfterMs: number | undefined

  constructor (message: string, opts: { statusCode: number, code: string, requestId?: string, retryAfterMs?: number, cause?: unknown }) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause })
    this.statusCode = opts.statusCode
    this.code = opts.code
    this.requestId = opts.requestId
    this.retryAfterMs = opts.retryAfterMs
  }

  /** Worth asking again later: the broker is unreachable, busy, limited or waiting on PMS. */
  get retryable (): boolean {
    return this.statusCode === 0 || this.statusCode === 429 || this.statusCode === 503 || this.statusCode === 502 || this.statusCode >= 504
  }
}

/**
 * PMS could not be reached: no connection (refused, reset, timed out, no such host) before an
 * answer came, after the retries `fetchPms` makes (`attempts` calls in all). `cause` is the
 * network error (its `code` says which, e.g. `ECONNREFUSED`). Transient while PMS restarts:
 * retry later, or answer your own caller 503.
 */
export class PmsUnavailableError extends Error {
  override name = 'PmsUnavailableError'
  readonly code = 'PMS_UNAVAILABLE'
  /** How many times the call was sent. */
  readonly attempts: number

  constructor (message: string, opts: { attempts: number, cause: unknown }) {
    super(message, { cause: opts.cause })
    this.attempts = opts.attempts
  }
}

/**
 * A PMS redirect that `fetchPms` does not follow: to another origin (which would receive the
 * token; https to http is always one), more than the redirect limit, or any redirect with
 * `redirect: 'error'`. `location` is only the target's origin, never its path or query.
 */
export class PmsRedirectError extends Error {
  override name = 'PmsRedirectError'
  /** `PMS_REDIRECT_REFUSED` (another origin, or `redirect: 'error'`) or `PMS_TOO_MANY_REDIRECTS`. */
  readonly code: 'PMS_REDIRECT_REFUSED' | 'PMS_TOO_MANY_REDIRECTS'
  readonly statusCode: number
  /** The origin redirected to. */
  readonly location: string

  constructor (message: string, opts: { code: PmsRedirectError['code'], statusCode: number, location: string }) {
    super(message)
    this.code = opts.code
    this.statusCode = opts.statusCode
    this.location = opts.location
  }
}

/**
 * `base` + `path`, keeping a path prefix of `base` (`https://proxy/plex` + `/identity` →
 * `https://proxy/plex/identity`). An absolute `path` is accepted only on `base`'s origin, so a
 * token is never sent to another host by mistake.
 */
export function joinUrl (base: URL, path: string): URL {
  if (/^[a-z][a-z0-9+.-]*:/i.test(path)) {
    const u = new URL(path)
    if (u.origin !== base.origin) throw new TypeError(`refusing to send the token to ${u.origin}: only ${base.origin} gets it`)
    return u
  }
  return new URL(base.href.replace(/\/+$/, '') + (path.startsWith('/') ? path : `/${path}`))
}

/** `Retry-After` (delta-seconds or an HTTP date) in milliseconds, or undefined when absent or unreadable. */
export function retryAfterMs (value: string | string[] | null | undefined, now = Date.now()): number | undefined {
  const v = Array.isArray(value) ? value[0] : value
  if (v === undefined || v === null || v.trim() === '') return undefined
  if (/^\s*\d+\s*$/.test(v)) return Number(v) * 1000
  const at = Date.parse(v)
  return Number.isNaN(at) ? undefined : Math.max(0, at - now)
}

/**
 * The wait before attempt `attempt + 1` (attempt ≥ 1): `baseMs` doubling, capped at `capMs`, then
 * shortened at random by up to half so that many clients do not retry in step. A server's
 * `Retry-After` wins over the doubling when it is longer, but never over the cap.
 */
export function backoff (attempt: number, baseMs: number, capMs: number, retryAfter?: number, random = Math.random): number {
  const doubled = Math.min(capMs, baseMs * 2 ** Math.max(0, attempt - 1))
  const jittered = Math.round(doubled * (0.5 + random() / 2))
  return Math.min(capMs, Math.max(jittered, retryAfter ?? 0))
}

/** Whether `fetch` can send this body again (a stream is consumed by the first attempt). */
export function isReplayable (body: unknown): boolean {
  return body === undefined || body === null || typeof body === 'string' || body instanceof ArrayBuffer ||
    ArrayBuffer.isView(body) || body instanceof URLSearchParams || body instanceof Blob
}
