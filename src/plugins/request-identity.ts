import { isIP, isIPv4 } from 'node:net'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import type { RequestContext } from '../broker/audit-writer.ts'

declare module 'fastify' {
  interface FastifyRequest {
    /** The caller's X-Request-Id when it is valid (1-64 of `A-Z a-z 0-9 . _ -`), else null. */
    clientRequestId: string | null
  }
}

/** What a caller may send as X-Request-Id: short, and nothing a log or audit reader could trip over. */
export const CLIENT_REQUEST_ID = /^[A-Za-z0-9._-]{1,64}$/

/**
 * The address a request came from, for the throttles, the audit trail and the logs. Fastify
 * (proxy-addr) has already picked the right-most X-Forwarded-For entry that is not a trusted
 * proxy (TRUST_PROXY), or the socket's address when the peer is not one. That entry may still be
 * anything a proxy passed on unchanged ("unknown", "1.2.3.4:5678", text): only an IP address is
 * used, anything else falls back to the socket's address. IPv4-mapped IPv6 (`::ffff:10.0.0.1`,
 * from a dual-stack listener) is written as the IPv4 address.
 */
export function clientAddress (derived: string | undefined, socketAddress: string | undefined): string {
  const ip = derived !== undefined && isIP(derived) !== 0 ? derived : socketAddress ?? ''
  return ip.toLowerCase().startsWith('::ffff:') && isIPv4(ip.slice(7)) ? ip.slice(7) : ip
}

/** Who asked, for the audit trail: the broker's request id, the address and the caller's own id. */
export function requestContext (request: FastifyRequest): RequestContext {
  return request.clientRequestId === null
    ? { requestId: request.id, ip: request.ip }
    : { requestId: request.id, ip: request.ip, clientRequestId: request.clientRequestId }
}

/**
 * Runs first on every request. Settles `request.ip` once (see clientAddress), so every later
 * reader sees the same validated value. Keeps a valid X-Request-Id as `clientRequestId`; the
 * request's own id is always the broker's (genReqId), and answers carry it as X-Request-Id.
 */
async function requestIdentity (app: FastifyInstance): Promise<void> {
  app.decorateRequest('clientRequestId', null)
  app.addHook('onRequest', (request, reply, done) => {
    // An own property shadows Fastify's `ip` getter (which re-parses X-Forwarded-For on every read).
    Object.defineProperty(request, 'ip', { value: clientAddress(request.ip, request.raw.socket?.remoteAddress), enumerable: true })
    const given = request.headers['x-request-id']
    if (typeof given === 'string' && CLIENT_REQUEST_ID.test(given)) request.clientRequestId = given
    reply.header('x-request-id', request.id)
    done()
  })
}

export default fp(requestIdentity, { name: 'request-identity' })
