import { randomUUID } from 'node:crypto'
import Fastify, { type FastifyBaseLogger, type FastifyHttpOptions, type FastifyInstance, LogController } from 'fastify'
import type { Server } from 'node:http'
import type { Logger } from 'pino'
import type { Config } from './config/index.ts'
import { createHttpServer, HTTP_TIMEOUTS, type HttpTimeouts } from './http-server.ts'
import auth from './plugins/auth.ts'
import { Denials } from './plugins/denials.ts'
import docs from './plugins/docs.ts'
import errorHandler, { sendError } from './plugins/error-handler.ts'
import metricsPlugin from './plugins/metrics.ts'
import rateLimits from './plugins/rate-limits.ts'
import requestIdentity from './plugins/request-identity.ts'
import { PmsProxy, type ProxyOptions } from './proxy/index.ts'
import healthRoutes from './routes/health.ts'
import opsRoutes from './routes/ops.ts'
import proxyKeyRoutes from './routes/proxy-keys.ts'
import sourceRoutes from './routes/sources.ts'
import streamRoutes, { type StreamOptions } from './routes/stream.ts'
import tokenRoutes from './routes/tokens.ts'
import { ErrorSchema } from './schemas/common.ts'
import { createServices, refreshGauges, type ServiceOverrides, type Services } from './services.ts'
import { strictBodyValidator } from './validation.ts'

export { createHttpServer, HTTP_TIMEOUTS, type HttpTimeouts }

declare module 'fastify' {
  interface FastifyInstance {
    /** This instance's services (services.ts), shared by routes, plugins and jobs. */
    broker: Services
    /** The PMS proxy's listeners (proxy/index.ts); they listen when server.ts says so. */
    proxy: PmsProxy
  }
}

export interface AppOverrides extends ServiceOverrides {
  /** HTTP server timeouts (tests shorten them); defaults in HTTP_TIMEOUTS. */
  httpTimeouts?: Partial<HttpTimeouts>
  /** The push channel's slow-consumer bounds (tests shorten them); defaults in routes/stream.ts. */
  stream?: StreamOptions
  /** The PMS proxy's timeouts and intervals (tests shorten them). */
  proxy?: ProxyOptions
}

/** Fastify's options: logging, request ids, proxies, limits, timeouts and validation, in one place. */
export function serverOptions (config: Readonly<Config>, logger: Logger, timeouts: HttpTimeouts): FastifyHttpOptions<Server> {
  return {
    loggerInstance: logger as FastifyBaseLogger,
    // Our own onResponse hook writes the one line per request (with the client id).
    logController: new LogController({ disableRequestLogging: true }),
    // The request id is always the broker's own: a caller's X-Request-Id is kept apart as
    // request.clientRequestId (plugins/request-identity.ts) and never taken for the broker's.
    genReqId: () => randomUUID(),
    requestIdHeader: false,
    // Only the listed proxies' X-Forwarded-For is believed (the config refuses `true` and hop
    // counts); plugins/request-identity.ts then validates the address proxy-addr picks.
    trustProxy: config.trustProxy.length === 0 ? false : [...config.trustProxy],
    bodyLimit: 16 * 1024,
    // Explicit timeouts: slow clients (slowloris) cannot hold sockets forever. Fastify hands these
    // to serverFactory, which applies them (http-server.ts).
    connectionTimeout: timeouts.connectionTimeoutMs,
    requestTimeout: timeouts.requestTimeoutMs,
    keepAliveTimeout: timeouts.keepAliveTimeoutMs,
    serverFactory: (handler) => createHttpServer(handler, timeouts),
    routerOptions: { maxParamLength: 128 },
    // Errors Fastify raises before routing (a malformed %-escape in the URL) get the one error
    // shape too, not Fastify's own body without a requestId.
    frameworkErrors: (err, request, reply) => {
      sendError(reply, request, 400, 'BAD_REQUEST', err.message)
    },
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', allErrors: false } },
    // Coercion for querystrings and params only: a JSON body says its types ({"server": 5} is a 400).
    schemaController: { compilersFactory: { buildValidator: strictBodyValidator } },
  }
}

/**
 * Builds the whole application: production (server.ts), the demo and tests use this one function.
 * The services come from createServices; here Fastify is created and the plugins and routes are
 * registered by hand, in dependency order.
 */
export async function buildApp (config: Readonly<Config>, overrides: AppOverrides = {}): Promise<FastifyInstance> {
  const services = createServices(config, overrides)
  const app = Fastify(serverOptions(config, services.logger, { ...HTTP_TIMEOUTS, ...overrides.httpTimeouts }))
  app.decorate('broker', services)
  app.addSchema(ErrorSchema)
  // The API speaks JSON only: anything else is 415, not a string a schema then rejects.
  app.removeContentTypeParser('text/plain')

  await app.register(requestIdentity)
  await app.register(rateLimits, { limiter: services.limiter })
  await app.register(errorHandler, { notFoundPreHandler: app.limits.notFound })
  await app.register(docs)
  const failedAuth = { denials: new Denials(services.refusals, services.metrics), limits: app.limits }
  await app.register(metricsPlugin, { metrics: services.metrics, token: config.metricsToken, refresh: async () => { await refreshGauges(services) }, ...failedAuth })
  await app.register(auth, { clients: config.clients, ...failedAuth })

  // One log line per request: id, client, route pattern, status and duration (pino adds time).
  app.addHook('onResponse', async (request, reply) => {
    request.log.info({
      client: request.client?.id,
      ...(request.clientRequestId === null ? {} : { clientRequestId: request.clientRequestId }),
      method: request.method,
      route: request.routeOptions.url ?? 'unmatched',
      statusCode: reply.statusCode,
      durationMs: Math.round(reply.elapsedTime * 1000) / 1000,
    }, 'request')
  })
  // While shutting down, answers to in-flight requests close their connection: a keep-alive
  // client would otherwise hold the server open until keepAliveTimeout and past the grace period.
  let closing = false
  app.addHook('preClose', async () => { closing = true })
  app.addHook('onSend', async (_request, reply, payload) => {
    if (closing) reply.header('connection', 'close')
    return payload
  })
  // The proxy's listeners close first: their open answers end before the services they use.
  const proxy = await PmsProxy.create(services, overrides.proxy)
  app.decorate('proxy', proxy)
  app.addHook('preClose', async () => { await proxy.close() })
  app.addHook('onReady', async () => { await services.start() })
  app.addHook('onClose', async () => { await services.close() })

  await app.register(healthRoutes)
  await app.register(tokenRoutes)
  await app.register(streamRoutes, overrides.stream ?? {})
  await app.register(sourceRoutes)
  await app.register(opsRoutes)
  await app.register(proxyKeyRoutes)
  return app
}
