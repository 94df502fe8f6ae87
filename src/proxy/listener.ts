import { randomUUID } from 'node:crypto'
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest, LogController } from 'fastify'
import replyFrom from '@fastify/reply-from'
import type { Logger } from 'pino'
import { afterRejection, answer401 } from '../broker/fresh-token-retry.ts'
import type { IssueResult } from '../broker/issuer.ts'
import type { ServerConfig } from '../config/index.ts'
import type { HttpTimeouts } from '../http-server.ts'
import { describe } from '../errors.ts'
import errorHandler, { sendError } from '../plugins/error-handler.ts'
import requestIdentity, { requestContext } from '../plugins/request-identity.ts'
import { encodeCanonicalPath } from './canonical-path.ts'
import { attachCors, isPreflight } from './cors.ts'
import { type Admitted, isLongAnswer, type Refused } from './gate.ts'
import { manifestKind, signM3u8, signMpd } from './media-urls.ts'
import { statusClass } from './proxy-metrics.ts'
import { DROPPED_REQUEST_HEADERS } from './request-rewrite.ts'
import { isScannableType, LeakScrubber, MAX_FILTERED_BODY, removeAttributes, rewriteLocation, scrubBuffer, scrubPlan, secretBuffers } from './response-rewrite.ts'
import { responseAttributesToRemove } from './rules.ts'
import { poolFor, type UpstreamPools } from '../plex/upstream.ts'
import { forwardContext, upstreamRouter } from './upstream-router.ts'
import type { ProxyListenerDeps } from './listener-deps.ts'
import { attachWebsockets } from './websocket.ts'

export type { ProxyListenerDeps }

/**
 * One proxy listener: a Fastify instance of its own on a server's proxy port, mirroring that
 * PMS's paths at its root (and every server's under `/pms/<server>/…`). The broker's API is not
 * served here, and nothing of PMS is served on the API's port.
 */

declare module 'fastify' {
  interface FastifyRequest {
    /** What the proxy's gate decided (set before forwarding). */
    proxied?: Admitted
    proxyRefusal?: Refused
  }
}

/**
 * The HTTP server of a proxy listener. Like the API's (http-server.ts), with one difference: a
 * connection whose answer is under way is never cut for being idle. A player that pauses stops
 * reading, and the stream must survive the pause; idle connections before and between requests,
 * and requests that do not arrive in time, are still cut.
 */
function createProxyServer (handler: (req: IncomingMessage, res: ServerResponse) => void, t: HttpTimeouts): Server {
  const server = createServer({ connectionsCheckingInterval: 1000, headersTimeout: t.headersTimeoutMs, requestTimeout: 0 }, (req, res) => {
    res.on('timeout', () => {
      if (!req.complete) res.socket?.destroy()
    })
    handler(req, res)
  })
  server.keepAliveTimeout = t.keepAliveTimeoutMs
  server.setTimeout(t.connectionTimeoutMs)
  return server
}

const ORIGINS = new WeakMap<ServerConfig, string>()

/** A server's origin (scheme, host, port), parsed once. */
function originOf (server: ServerConfig): string {
  let origin = ORIGINS.get(server)
  if (origin === undefined) ORIGINS.set(server, origin = new URL(server.url).origin)
  return origin
}

/** Whether a request carries a body (a 401 is retried only without one: the body is gone). */
function hasBody (headers: IncomingHttpHeaders): boolean {
  return headers['transfer-encoding'] !== undefined || (headers['content-length'] !== undefined && headers['content-length'] !== '0')
}

export async function buildProxyListener (deps: ProxyListenerDeps, server: ServerConfig): Promise<FastifyInstance> {
  const { services, gate, metrics, open } = deps
  const { config } = services
  const logger: Logger = services.logger.child({ proxy: server.name })
  const app = Fastify({
    loggerInstance: logger as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    genReqId: () => randomUUID(),
    requestIdHeader: false,
    trustProxy: config.trustProxy.length === 0 ? false : [...config.trustProxy],
    connectionTimeout: deps.timeouts.connectionTimeoutMs,
    keepAliveTimeout: deps.timeouts.keepAliveTimeoutMs,
    serverFactory: (handler) => createProxyServer(handler, deps.timeouts),
    routerOptions: { maxParamLength: 4096, ignoreTrailingSlash: false },
    frameworkErrors: (err, request, reply) => {
      sendError(reply, request, 400, 'BAD_REQUEST', err.message)
    },
  })
  // Bodies (poster uploads, playlist edits) stream to PMS as they come: never parsed or buffered.
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('*', (_request, payload, done) => { done(null, payload) })
  await app.register(requestIdentity)
  await app.register(errorHandler, {})
  attachCors(app, server.proxy?.corsOrigins ?? config.proxyCorsOrigins)
  await app.register(replyFrom, {
    // The router picks the server's pool (api or media) and adds the caller's abort signal (upstream-router.ts).
    undici: upstreamRouter as never,
    // PMS GETs have side effects: nothing is retried, neither on a socket error nor on a 503.
    retryMethods: [],
    disableRequestLogging: true,
    disableCache: false,
  })
  function poolsOf (name: string): UpstreamPools {
    const p = deps.pools.get(name)
    if (p === undefined) throw new Error(`no upstream pools for server ${name}`)
    return p
  }

  // The access line: one per request, built without the logger's redaction pass and without
  // Fastify's per-request child logger (the redaction walks every field against its wildcard
  // paths, a measurable share of a proxied request's CPU). Every field here is a configuration
  // name, an id, a number or the canonical path without its query, never a credential.
  const access = logger.child({}, { redact: [] })
  const log = (request: FastifyRequest, reply: FastifyReply): void => {
    const a = request.proxied
    const r = request.proxyRefusal
    const decision = r !== undefined ? r.decision : a === undefined ? (isPreflight(request) ? 'preflight' : 'error') : a.shadowed ? 'shadow' : 'allow'
    const client = a?.client.id ?? r?.client ?? ''
    const srv = a?.server.name ?? r?.server ?? server.name
    metrics.requests.inc({ client, server: srv, decision, status_class: statusClass(reply.statusCode) })
    if (!access.isLevelEnabled('info')) return
    access.info({
      reqId: request.id,
      client: client === '' ? undefined : client,
      keyId: a?.keyId,
      server: srv,
      method: request.method,
      // The canonical path only: the query may carry a credential.
      path: a?.path,
      decision,
      statusCode: reply.statusCode,
      durationMs: Math.round(reply.elapsedTime * 1000) / 1000,
    }, 'proxy request')
  }
  app.addHook('onResponse', (request, reply, done) => {
    log(request, reply)
    done()
  })

  const handler = async (request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> => {
    const admitted = await gate.admit({ method: request.method, url: request.raw.url ?? '/', header: request.headers['x-plex-token'], ip: request.ip })
    if (!admitted.ok) {
      request.proxyRefusal = admitted
      // The request body (if any) is not read: the connection closes after the answer.
      if (hasBody(request.headers)) reply.header('connection', 'close')
      return sendError(reply, request, admitted.status, admitted.code, admitted.message, admitted.retryAfter)
    }
    request.proxied = admitted
    const ctx = { ...requestContext(request), via: 'proxy' as const }
    // The key's limits are counted with the token's serve (gate.ts `issue`); a key without a
    // request limit takes its token from the local view (token-view.ts).
    const counted = admitted.policy.limits.requestsPerMinute > 0
    const got = await gate.issue(admitted, isLongAnswer(admitted.path), async (meter) => counted
      ? await services.issuer.issue(admitted.client.id, admitted.server, ctx, { meter })
      : await deps.tokens.issue(admitted.client.id, admitted.server, ctx))
    if (!got.ok) {
      request.proxyRefusal = got
      if (hasBody(request.headers)) reply.header('connection', 'close')
      return sendError(reply, request, got.status, got.code, got.message, got.retryAfter)
    }
    reply.raw.once('close', got.release)
    return forward(request, reply, admitted, got.issued, false)
  }

  function forward (request: FastifyRequest, reply: FastifyReply, a: Admitted, issued: IssueResult, retried: boolean): FastifyReply {
    const pools = poolsOf(a.server.name)
    const pool = poolFor(a.path)
    const abort = new AbortController()
    const started = performance.now()
    const unregister = open.add({ keyId: a.keyId, end: () => { abort.abort(); reply.raw.destroy() } })
    const socket = reply.raw.socket
    const written = socket?.bytesWritten ?? 0
    // One listener for everything that happens when the answer is over (or the caller gone).
    const onClose = (): void => {
      // The caller hung up before the answer ended: PMS stops working for nobody.
      if (!reply.raw.writableFinished) abort.abort()
      unregister()
      if (socket !== null && socket !== undefined) metrics.bytes.inc({ server: a.server.name, direction: 'downstream' }, Math.max(0, socket.bytesWritten - written))
      const length = Number(request.headers['content-length'])
      if (Number.isFinite(length) && length > 0) metrics.bytes.inc({ server: a.server.name, direction: 'upstream' }, length)
    }
    reply.raw.once('close', onClose)
    const secrets = [issued.token, a.server.adminToken]
    const target = encodeCanonicalPath(a.path)

    return forwardContext.run({ pools, kind: pool, signal: abort.signal }, () => reply.from(target, {
      getUpstream: () => a.server.url,
      queryString: () => a.query,
      rewriteRequestHeaders: (_req, headers) => {
        for (const h of DROPPED_REQUEST_HEADERS) delete headers[h]
        // Every X-Plex-* header a tool sends is forwarded (client identification), except the token.
        headers['x-plex-token'] = issued.token
        // PMS decides local or remote from this; the caller's own value was dropped above.
        headers['x-forwarded-for'] = request.ip
        // Compressed answers could hide a credential from the checks below.
        headers['accept-encoding'] = 'identity'
        return headers
      },
      rewriteHeaders: (headers) => {
        const out: Record<string, string | string[] | undefined> = { ...headers }
        for (const [name, value] of Object.entries(out)) {
          if (value === undefined) continue
          // PMS's CORS headers (it allows every origin) never pass: the listener's own list
          // decides which browser origins may read answers (cors.ts).
          if (name.startsWith('access-control-')) {
            delete out[name]
            continue
          }
          if (name === 'location' && typeof value === 'string') {
            out[name] = rewriteLocation(value, { pmsOrigin: originOf(a.server), proxyOrigin: `${request.protocol}://${request.host}`, prefix: a.prefix })
            continue
          }
          // Last line of defence on headers: a credential in any other header is blanked. A string
          // search first: the secrets are found in the text exactly when they are in its bytes.
          if (Array.isArray(value)) {
            out[name] = value.map((v) => scrubHeader(a, v, secrets))
          } else {
            out[name] = scrubHeader(a, String(value), secrets)
          }
        }
        return out as never
      },
      onError: (_rep, { error }) => {
        const rep = reply
        if (rep.sent || rep.raw.headersSent) return
        const timeout = /timeout/i.test(error.message) || (error as { statusCode?: number }).statusCode === 504
        request.log.warn({ err: describe((error as { cause?: unknown }).cause ?? error) }, 'proxy: PMS request failed')
        sendError(rep, request, timeout ? 504 : 502, 'UPSTREAM_UNAVAILABLE', `PMS "${a.server.name}" did not answer; try again later.`)
      },
      onResponse: (_req, _rep, upstreamRes) => {
        const req = request
        const rep = reply
        const res = upstreamRes as unknown as { statusCode: number, headers: Record<string, string | string[] | undefined>, stream: NodeJS.ReadableStream }
        metrics.upstreamDuration.observe({ server: a.server.name, pool }, (performance.now() - started) / 1000)
        const stream = res.stream as unknown as NodeJS.ReadableStream & { destroy: () => void, resume: () => void }
        if (res.statusCode === 401) {
          stream.resume()
          for (const name of Object.keys(res.headers)) rep.removeHeader(name)
          // PMS refused the broker's token: report it, and one retry with a fresh token
          // (broker/fresh-token-retry.ts). The body streamed to PMS is gone: only a GET or HEAD
          // without one is replayable, and a write is never sent twice on the caller's behalf.
          const replayable = (req.method === 'GET' || req.method === 'HEAD') && !hasBody(req.headers)
          reply.raw.off('close', onClose)
          unregister()
          deps.tokens.forget(a.client.id, a.server.name)
          const ctx = { ...requestContext(req), via: 'proxy' as const }
          void afterRejection(services.rejection, { client: a.client.id, server: a.server, ctx, used: issued, replayable, retried }).then((after) => {
            if (after.retry) forward(req, rep, a, after.token, true)
            else sendError(rep, req, 401, 'UNAUTHENTICATED', answer401(a.server.name, after))
          }, (err: unknown) => {
            const e = err as { statusCode?: number, code?: string, message?: string }
            sendError(rep, req, e.statusCode ?? 502, e.code ?? 'UPSTREAM_UNAVAILABLE', e.statusCode !== undefined ? e.message ?? '' : `PMS "${a.server.name}" is unavailable.`)
          })
          return
        }
        const contentType = res.headers['content-type'] as string | undefined
        const encoding = String(res.headers['content-encoding'] ?? 'identity').toLowerCase()
        const attributes = responseAttributesToRemove(a.policy, a.path)
        const manifest = res.statusCode === 200 ? manifestKind(contentType, a.path) : undefined
        const scannable = isScannableType(contentType) || manifest !== undefined
        if ((scannable || attributes.length > 0) && encoding !== 'identity') {
          stream.destroy()
          for (const name of Object.keys(res.headers)) rep.removeHeader(name)
          sendError(rep, req, 502, 'UPSTREAM_UNAVAILABLE', 'PMS sent a compressed answer the proxy cannot check for credentials.')
          return
        }
        if (attributes.length > 0 || manifest !== undefined) {
          // Small answers only (credential endpoints, manifests): buffered, rewritten, checked.
          bufferCapped(stream, MAX_FILTERED_BODY).then((body) => {
            if (body === undefined) {
              for (const name of Object.keys(res.headers)) rep.removeHeader(name)
              sendError(rep, req, 502, 'UPSTREAM_UNAVAILABLE', 'PMS sent an answer too large for the proxy to check.')
              return
            }
            let text: string | undefined = body.toString('utf8')
            if (attributes.length > 0) text = removeAttributes(text, contentType, attributes)
            if (text === undefined) {
              for (const name of Object.keys(res.headers)) rep.removeHeader(name)
              sendError(rep, req, 502, 'UPSTREAM_UNAVAILABLE', 'PMS sent an answer the proxy cannot check for credentials.')
              return
            }
            if (manifest !== undefined) {
              const sign = (prefix: string): string => deps.sessions.sign(a.keyId, a.server.name, prefix)
              text = manifest === 'm3u8' ? signM3u8(text, a.path, sign) : signMpd(text, a.path, sign)
            }
            const out = Buffer.from(text)
            const found = scrubBuffer(out, secretBuffers(secrets))
            if (found > 0) leak(a, found)
            rep.removeHeader('content-range')
            rep.header('content-length', String(out.length))
            rep.send(out)
          }, () => { rep.raw.destroy() })
          return
        }
        if (scannable) {
          // A small answer of known length (most API answers) is scanned in one piece: cheaper than
          // a scanning stream per request. Anything else (feeds, big or unknown lengths) streams.
          const length = Number(res.headers['content-length'])
          if (req.method !== 'HEAD' && Number.isInteger(length) && length > 0 && length <= SMALL_ANSWER) {
            bufferCapped(stream, SMALL_ANSWER).then((body) => {
              if (body === undefined) {
                rep.raw.destroy()
                return
              }
              const found = scrubBuffer(body, secretBuffers(secrets))
              if (found > 0) leak(a, found)
              rep.send(body)
            }, () => { rep.raw.destroy() })
            return
          }
          const scrubber = new LeakScrubber(scrubPlan(secrets), (n) => leak(a, n))
          stream.pipe(scrubber)
          scrubber.on('error', () => stream.destroy())
          rep.send(scrubber)
          return
        }
        rep.send(res.stream)
      },
    }))
  }

  function scrubHeader (a: Admitted, v: string, secrets: readonly string[]): string {
    if (!secrets.some((s) => s !== '' && v.includes(s))) return v
    const b = Buffer.from(v)
    const n = scrubBuffer(b, secretBuffers(secrets))
    if (n > 0) leak(a, n)
    return b.toString()
  }

  function leak (a: Admitted, n: number): void {
    metrics.leaks.inc({ server: a.server.name, secret: 'pms_token' }, n)
    logger.error({ client: a.client.id, server: a.server.name, path: a.path, found: n },
      'a PMS credential was found in an answer and blanked before it left the proxy')
  }

  app.all('/', handler)
  app.all('/*', handler)
  attachWebsockets(app, { ...deps, logger, server })
  return app
}

/** Answers this small (with a known length) are scanned in one piece rather than streamed. */
const SMALL_ANSWER = 64 * 1024

/** Reads a stream to its end into memory, at most `max` bytes; undefined beyond. */
async function bufferCapped (stream: NodeJS.ReadableStream & { destroy: () => void }, max: number): Promise<Buffer | undefined> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    size += chunk.length
    if (size > max) {
      stream.destroy()
      return undefined
    }
    chunks.push(chunk)
  }
  return Buffer.concat(chunks)
}
