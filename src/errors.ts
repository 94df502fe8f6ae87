/**
 * The error catalogue: every error the HTTP API can answer with has a stable `code`,
 * a default status and a message that is safe to show a client. 5xx bodies never carry
 * internals (stack, upstream body, Redis reply): the route's logger gets those instead.
 */

export const ErrorCodes = {
  BAD_REQUEST: 400,
  UNAUTHENTICATED: 401,
  FORBIDDEN: 403,
  NOT_FOUND: 404,
  METHOD_NOT_ALLOWED: 405,
  PAYLOAD_TOO_LARGE: 413,
  UNSUPPORTED_MEDIA_TYPE: 415,
  SOURCE_NOT_FOUND: 404,
  /** A proxy key asked for a client id the configuration does not hold. */
  UNKNOWN_CLIENT: 400,
  /** A proxy key asked for a client without a `proxy` section: its keys would reach nothing. */
  PROXY_NOT_CONFIGURED: 400,
  /** A proxy key asked for a server name the configuration does not hold. */
  UNKNOWN_SERVER: 400,
  /** A proxy key asked for a server outside its client's `servers` list. */
  SERVER_NOT_IN_CLIENT_LIST: 400,
  RATE_LIMITED: 429,
  INTERNAL: 500,
  UPSTREAM_REJECTED: 502,
  UPSTREAM_UNSUPPORTED: 502,
  UPSTREAM_UNAVAILABLE: 503,
  STORE_UNAVAILABLE: 503,
} as const

export type ErrorCode = keyof typeof ErrorCodes

/** An error that may be shown to the client as is. */
export class BrokerError extends Error {
  readonly code: ErrorCode
  readonly statusCode: number
  /** Seconds, sent as `Retry-After` on 429 and 503. */
  readonly retryAfter?: number
  /** Extra response headers (the `x-ratelimit-*` of a 429). */
  readonly headers?: Readonly<Record<string, string>>
  /** Sent as `WWW-Authenticate` on a 401 (RFC 6750); the error handler sends plain `Bearer` without it. */
  readonly challenge?: string

  constructor (code: ErrorCode, message: string, opts: { retryAfter?: number, cause?: unknown, headers?: Record<string, string>, challenge?: string } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause })
    this.name = 'BrokerError'
    this.code = code
    this.statusCode = ErrorCodes[code]
    if (opts.retryAfter !== undefined) this.retryAfter = Math.max(1, Math.ceil(opts.retryAfter))
    if (opts.headers !== undefined) this.headers = opts.headers
    if (opts.challenge !== undefined) this.challenge = opts.challenge
  }
}

export const badRequest = (message: string): BrokerError => new BrokerError('BAD_REQUEST', message)
/**
 * 401. `credentialSent`: a bearer credential came with the request but matched nothing, so the
 * challenge says `error="invalid_token"`; without one it is a bare `Bearer` (RFC 6750 §3.1: no
 * error code when the request carried no authentication).
 */
export const unauthenticated = (message = 'Missing or unknown client credential.', credentialSent = false): BrokerError =>
  new BrokerError('UNAUTHENTICATED', message, { challenge: credentialSent ? 'Bearer error="invalid_token"' : 'Bearer' })
export const forbidden = (message: string): BrokerError => new BrokerError('FORBIDDEN', message)
export const notFound = (message: string): BrokerError => new BrokerError('NOT_FOUND', message)
export const storeUnavailable = (cause?: unknown): BrokerError =>
  new BrokerError('STORE_UNAVAILABLE', 'The token store (Redis) is not answering; try again shortly.', { retryAfter: 2, cause })

/** An error for a log line: name, code and message, never the object graph (which may hold a request). */
export function describe (err: unknown): unknown {
  if (!(err instanceof Error)) return err
  return { type: err.name, code: (err as { code?: unknown }).code, message: err.message }
}
