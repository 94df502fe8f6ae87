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

/** Error responses shared by authenticated routes. */
export const authErrors = {
  400: { $ref: 'Error#' },
  401: unauthenticatedResponse,
  403: { $ref: 'Error#' },
  429: { $ref: 'Error#' },
  500: { $ref: 'Error#' },
  503: { $ref: 'Error#' },
} as const
