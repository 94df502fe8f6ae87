import { STATUS_CODES } from 'node:http'
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { BrokerError, type ErrorCode, describe } from '../errors.ts'

const BY_STATUS: Record<number, ErrorCode> = {
  400: 'BAD_REQUEST',
  401: 'UNAUTHENTICATED',
  403: 'FORBIDDEN',
  404: 'NOT_FOUND',
  405: 'METHOD_NOT_ALLOWED',
  413: 'PAYLOAD_TOO_LARGE',
  415: 'UNSUPPORTED_MEDIA_TYPE',
  429: 'RATE_LIMITED',
}

/** The challenge of a 401 that did not name one (RFC 7235: every 401 carries WWW-Authenticate). */
const BEARER_CHALLENGE = 'Bearer'

export function sendError (reply: FastifyReply, request: FastifyRequest, statusCode: number, code: string, message: string, retryAfter?: number): FastifyReply {
  if (retryAfter !== undefined) reply.header('retry-after', String(retryAfter))
  if (statusCode === 401 && !reply.hasHeader('www-authenticate')) reply.header('www-authenticate', BEARER_CHALLENGE)
  return reply.code(statusCode).type('application/json; charset=utf-8').send({
    statusCode,
    code,
    error: STATUS_CODES[statusCode] ?? 'Error',
    message,
    requestId: request.id,
  })
}

/**
 * One error shape everywhere: {statusCode, code, error, message, requestId}. Client errors keep
 * their (safe) message; anything 5xx that is not a BrokerError becomes INTERNAL with a generic
 * message, and only the log sees the cause.
 */
async function errorHandler (app: FastifyInstance, opts: { notFoundPreHandler?: (request: FastifyRequest, reply: FastifyReply) => Promise<void> }): Promise<void> {
  app.setErrorHandler((err: FastifyError | BrokerError, request, reply) => {
    if (err instanceof BrokerError) {
      if (err.statusCode >= 500) request.log.warn({ code: err.code, cause: describe(err.cause) }, err.message)
      if (err.headers !== undefined) reply.headers(err.headers)
      if (err.statusCode === 401 && err.challenge !== undefined) reply.header('www-authenticate', err.challenge)
      return sendError(reply, request, err.statusCode, err.code, err.message, err.retryAfter)
    }
    const status = err.statusCode ?? 500
    if (err.validation !== undefined) {
      return sendError(reply, request, 400, 'BAD_REQUEST', `Invalid ${err.validationContext ?? 'request'}: ${err.message.replace(/^(body|querystring|params|headers)\s*/, '')}`)
    }
    if (status === 429) {
      const retry = reply.getHeader('retry-after')
      return sendError(reply, request, 429, 'RATE_LIMITED', err.message || 'Too many requests.', retry === undefined ? undefined : Number(retry))
    }
    if (status >= 400 && status < 500) {
      return sendError(reply, request, status, BY_STATUS[status] ?? 'BAD_REQUEST', err.message)
    }
    request.log.error({ err: describe(err) }, 'unhandled error')
    return sendError(reply, request, 500, 'INTERNAL', 'Internal error.')
  })

  app.setNotFoundHandler({ preHandler: opts.notFoundPreHandler }, (request, reply) => {
    return sendError(reply, request, 404, 'NOT_FOUND', `Route ${request.method} ${request.url.split('?')[0]} not found.`)
  })
}

export default fp(errorHandler, { name: 'error-handler' })
