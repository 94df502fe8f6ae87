import type { FastifyInstance, FastifyRequest } from 'fastify'

/**
 * CORS on a proxy listener (docs/proxy.md, *Browser apps (CORS)*): a dashboard served from another
 * origin calls the proxy with `fetch`, and its browser first sends a preflight `OPTIONS` that
 * carries no key. For an origin on the listener's list (`proxy.corsOrigins`, else
 * PROXY_CORS_ORIGINS) the preflight is answered here, 204, before the gate: nothing reaches PMS
 * and no key is needed to learn what the proxy accepts. Real answers to a listed origin get
 * `Access-Control-Allow-Origin` (that origin, never `*`) and the headers a player needs to read.
 * Any other origin gets no CORS header (its browser then refuses to hand the answer over), and its
 * preflight goes to the gate like any request without a key.
 *
 * No `Access-Control-Allow-Credentials`: the key travels as `X-Plex-Token` (a header or a query
 * parameter), never as a cookie, so the browser has no ambient credential to send. PMS's own CORS
 * headers are dropped: the listener's list decides, not PMS's `*`.
 *
 * Written here rather than with @fastify/cors: that plugin adds an `OPTIONS *` route, which the
 * listener's catch-all routes (every method, PMS's `OPTIONS` included) already own, and it would
 * not drop PMS's headers.
 */

/** Request headers a preflight may ask for besides `X-Plex-*` (client identification and the key). */
const REQUEST_HEADERS = new Set([
  'accept', 'accept-language', 'content-language', 'content-type', 'range', 'if-range', 'if-none-match', 'if-modified-since', 'x-requested-with',
])
const METHODS = 'GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS'
/** Answer headers a page may read besides the CORS-safelisted ones. */
const EXPOSED = 'Content-Length, Content-Range, Accept-Ranges, Content-Disposition, Location, Retry-After, X-Request-Id, X-Plex-Protocol'
const MAX_AGE_S = '600'

const PREFLIGHTS = new WeakSet<FastifyRequest>()

/** Whether the request was a preflight answered by the listener (for the access log's decision). */
export function isPreflight (request: FastifyRequest): boolean {
  return PREFLIGHTS.has(request)
}

/** The request headers of a preflight that the proxy accepts: `X-Plex-*` and the list above. */
function allowedHeaders (requested: string | string[] | undefined): string {
  const names = (Array.isArray(requested) ? requested.join(',') : requested ?? '').split(',').map((h) => h.trim().toLowerCase()).filter((h) => h !== '')
  return names.filter((h) => h.startsWith('x-plex-') || REQUEST_HEADERS.has(h)).join(', ')
}

export function attachCors (app: FastifyInstance, origins: readonly string[]): void {
  if (origins.length === 0) return
  const allowed = new Set(origins)
  app.addHook('onRequest', async (request, reply) => {
    const origin = request.headers.origin
    if (request.method !== 'OPTIONS' || typeof origin !== 'string' || !allowed.has(origin) || request.headers['access-control-request-method'] === undefined) return
    PREFLIGHTS.add(request)
    // The request body (if any) is not read: the connection closes after the answer.
    if (request.headers['content-length'] !== undefined || request.headers['transfer-encoding'] !== undefined) reply.header('connection', 'close')
    await reply.code(204).send()
  })
  app.addHook('onSend', async (request, reply, payload) => {
    for (const name of Object.keys(reply.getHeaders())) if (name.startsWith('access-control-')) reply.removeHeader(name)
    const vary = reply.getHeader('vary')
    if (vary === undefined || vary === '') reply.header('vary', 'Origin')
    else if (!/(^|,)\s*origin\s*(,|$)/i.test(String(vary))) reply.header('vary', `${String(vary)}, Origin`)
    const origin = request.headers.origin
    if (typeof origin !== 'string' || !allowed.has(origin)) return payload
    reply.header('access-control-allow-origin', origin)
    if (PREFLIGHTS.has(request)) {
      reply.header('access-control-allow-methods', METHODS)
      const headers = allowedHeaders(request.headers['access-control-request-headers'])
      if (headers !== '') reply.header('access-control-allow-headers', headers)
      reply.header('access-control-max-age', MAX_AGE_S)
    } else {
      reply.header('access-control-expose-headers', EXPOSED)
    }
    return payload
  })
}
