import { Type } from 'typebox'
import { NAME_PATTERN } from '../config/names.ts'

/** The body of every error answer. */
export const ErrorSchema = Type.Object({
  statusCode: Type.Integer(),
  code: Type.String({ description: 'Stable machine-readable code, e.g. UNAUTHENTICATED' }),
  error: Type.String({ description: 'HTTP reason phrase' }),
  message: Type.String({ description: 'Human-readable and safe to show' }),
  requestId: Type.String(),
}, { $id: 'Error', title: 'Error' })

/** The config's rule (NAME_PATTERN): a name the config cannot hold is refused as malformed, not looked up. */
export const NameSchema = Type.String({ pattern: NAME_PATTERN, description: 'A server name or client id' })
export const TokenIdSchema = Type.String({ pattern: '^tk_[A-Za-z0-9_-]{22}$', description: 'Opaque token id' })
export const IsoDate = Type.String({ format: 'date-time' })

/**
 * The 401 answer: the Error body with the RFC 6750 challenge. `WWW-Authenticate: Bearer` when no
 * bearer credential was sent, `Bearer error="invalid_token"` when one was sent but is unknown.
 */
export const unauthenticatedResponse = {
  $ref: 'Error#',
  description: 'Missing or unknown bearer credential',
  headers: {
    'WWW-Authenticate': {
      type: 'string',
      description: '`Bearer` when no credential was sent; `Bearer error="invalid_token"` when the one sent is unknown (RFC 6750)',
    },
  },
} as const

/** An error answer (the Error body, always JSON) with what it means on this route. */
export const errorResponse = <D extends string>(description: D) => ({ $ref: 'Error#', description }) as const

/** Error responses shared by authenticated routes. */
export const authErrors = {
  400: errorResponse('`BAD_REQUEST`: the query, parameters or body do not match the schema; the message names the field'),
  401: unauthenticatedResponse,
  403: errorResponse('`FORBIDDEN`: the client lacks the scope, or the server (or source) is not in its list'),
  429: errorResponse('`RATE_LIMITED`: too many requests from this client or address; `Retry-After` says when to try again'),
  500: errorResponse('`INTERNAL`: an unexpected failure; the body carries no internals (the broker\'s log has them under the request id)'),
  503: errorResponse('`STORE_UNAVAILABLE` (Redis) or `UPSTREAM_UNAVAILABLE` (PMS, or the broker shutting down), with `Retry-After`'),
} as const

/** Error responses of routes that take a JSON body. */
export const bodyErrors = {
  413: errorResponse('`PAYLOAD_TOO_LARGE`: the body is larger than the broker accepts'),
  415: errorResponse('`UNSUPPORTED_MEDIA_TYPE`: the body was not sent as `Content-Type: application/json`'),
} as const
