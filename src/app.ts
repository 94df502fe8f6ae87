import { randomUUID } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyRequest } from 'fastify'
import type { Redis } from 'ioredis'
import pino, { type DestinationStream, type Logger } from 'pino'
import type { Config, ServerConfig } from './config/index.ts'
import { keyRing } from './broker/crypto.ts'
import { TokenIssuer, type IssuedToken } from './broker/issuer.ts'
import { createKeys } from './broker/keys.ts'
import { ServerStates } from './broker/server-state.ts'
import { type RequestContext, TokenStore } from './broker/token-store.ts'
import { RejectionCheck } from './broker/rejection-check.ts'
import { AuditLog } from './broker/audit-log.ts'
import { AdminTokenHealth } from './broker/admin-token-health.ts'
import { TokenFileWatcher } from './broker/token-files.ts'
import { PlexTv } from './plex/plextv.ts'
import { ServerProbe } from './broker/probe.ts'
import { Rotator } from './broker/rotator.ts'
import { createQueues, type Queues } from './jobs/queues.ts'
import { JobRunner, lockDuration, queueRemints, sweepInterval, triggerProbe } from './jobs/runner.ts'
import { PlexClient } from './plex/client.ts'
import auth, { type DenialReason } from './plugins/auth.ts'
import errorHandler, { describe, sendError } from './plugins/error-handler.ts'
import { loggerOptions } from './logger.ts'
import { strictBodyValidator } from './validation.ts'
import { createRedis } from './redis.ts'
import { Metrics } from './metrics.ts'
import metricsPlugin from './plugins/metrics.ts'
import rateLimits from './plugins/rate-limits.ts'
import requestIdentity, { requestContext } from './plugins/request-identity.ts'
import docs from './plugins/docs.ts'
import healthRoutes from './routes/health.ts'
import tokenRoutes from './routes/tokens.ts'
import opsRoutes from './routes/ops.ts'
import sourceRoutes from './routes/sources.ts'
import { ErrorSchema } from './schemas/common.ts'

/** The broker's services, shared by routes and jobs. */
export interface Broker {
  config: Readonly<Config>
  logger: Logger
  servers: Map<string, ServerConfig>
  redis: Redis
  store: TokenStore
  plex: PlexClient
  states: ServerStates
  issuer: TokenIssuer
  queues: Queues
  rotator: Rotator
  probe: ServerProbe
  /** The background worker of this instance; undefined when BROKER_ROLE is `api`. */
  runner: JobRunner | undefined
  audit: AuditLog
  /** Counts revocations by selector kind. */
  revoked: (selector: string, count: number) => void
  metrics: Metrics
  /** Audits and counts a refused request; never throws. */
  denied: (request: FastifyRequest, reason: DenialReason, client?: string, detail?: Record<string, unknown>) => void
  /** Counts a token handed out. */
  served: (server: string, source: 'cache' | 'upstream') => void
  /** Counts a source connection handed out. */
  sourceServed: (server: string, source: 'cache' | 'upstream') => void
  /** `POST /v1/tokens` with `rejectedTokenId`. */
  reportRejected: (client: string, server: ServerConfig, tokenId: string, ctx: RequestContext) => Promise<IssuedToken>
  /** Each readiness check: 'ok' or what is wrong. */
  readiness: () => Promise<Record<string, string>>
}

declare module 'fastify' {
  interface FastifyInstance {
    broker: Broker
  }
}

export interface AppOverrides {
  /** Where logs go (tests capture them). */
  logStream?: DestinationStream
  now?: () => number
  /** Skip Node's default process metrics (tests that build many apps in one process). */
  defaultMetrics?: boolean
  /** How often token files are polled for changes (default 5 s). */
  tokenWatchIntervalMs?: number
  /** Stable X-Plex-Client-Identifier; by default derived from REDIS_PREFIX so all instances share one. */
  plexClientIdentifier?: string
  /** HTTP server timeouts (tests shorten them); defaults in HTTP_TIMEOUTS. */
  httpTimeouts?: Partial<HttpTimeouts>
}

export interface HttpTimeouts {
  /** A connection idle this long is closed (none sent yet, a stalled body, or a client not reading the answer). */
  connectionTimeoutMs: number
  /** An idle keep-alive connection is closed after this long (above common load-balancer idle timeouts of 60 s). */
  keepAliveTimeoutMs: number
  /** The headers must arrive within this long (slowloris). */
  headersTimeoutMs: number
  /** The whole request must arrive within this long. */
  requestTimeoutMs: number
}

export const HTTP_TIMEOUTS: Readonly<HttpTimeouts> = Object.freeze({
  connectionTimeoutMs: 10_000,
  keepAliveTimeoutMs: 72_000,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 15_000,
})

/**
 * The HTTP server. Fastify applies connectionTimeout and keepAliveTimeout only to servers it
 * creates itself, so with a serverFactory they are set here.
 *
 * The connection timeout is a socket idle timeout. It must not cut off a request the broker is
 * still working on (a mint may wait for another instance's for up to 2 × PLEX_TIMEOUT + 2 s, longer
 * than 10 s): while the request has arrived and no answer has started, the connection is kept (the
 * handler's own deadlines bound that wait). A connection idle before or between requests, while
 * sending a request, or while not reading an answer already started, is closed.
 */
export function createHttpServer (handler: (req: IncomingMessage, res: ServerResponse) => void, t: HttpTimeouts): Server {
  // Node enforces headersTimeout and requestTimeout only when it checks connections (every 30 s by
  // default): check every second, so a slowloris client that dribbles header bytes is cut off in
  // about headersTimeout, not 30-60 s.
  const server = createServer({ connectionsCheckingInterval: 1000, headersTimeout: t.headersTimeoutMs, requestTimeout: t.requestTimeoutMs }, (req, res) => {
    // With a listener, Node leaves the decision to it instead of destroying the socket.
    res.on('timeout', () => {
      if (!req.complete || res.headersSent) res.socket?.destroy()
    })
    handler(req, res)
  })
  server.keepAliveTimeout = t.keepAliveTimeoutMs
  server.setTimeout(t.connectionTimeoutMs)
  return server
}

/**
 * Builds the whole application: production (server.ts) and tests use the same function.
 * Plugins are registered by hand, in dependency order (STYLE.md §2).
 */
export async function buildApp (config: Readonly<Config>, overrides: AppOverrides = {}): Promise<FastifyInstance> {
  const logger = overrides.logStream === undefined
    ? pino(loggerOptions(config.logLevel, process.stdout.isTTY === true))
    : pino(loggerOptions(config.logLevel), overrides.logStream)
  const timeouts: HttpTimeouts = { ...HTTP_TIMEOUTS, ...overrides.httpTimeouts }
  const app = Fastify({
    loggerInstance: logger as FastifyBaseLogger,
    // Our own onResponse hook writes the one line per request (with the client id).
    logController: new LogController({ disableRequestLogging: true }),
    // The request id is always the broker's own: a caller's X-Request-Id is kept apart as
    // request.clientRequestId (plugins/request-identity.ts) and never taken for the broker's.
    genReqId: () => randomUUID(),
    requestIdHeader: false,
    // Only the listed proxies' X-Forwarded-For is believed (config.ts refuses `true` and hop counts);
    // plugins/request-identity.ts then validates the address proxy-addr picks.
    trustProxy: config.trustProxy.length === 0 ? false : [...config.trustProxy],
    bodyLimit: 16 * 1024,
    // Explicit timeouts: slow clients (slowloris) cannot hold sockets forever. Fastify hands
    // these to serverFactory, which applies them (createHttpServer).
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
  })
  app.addSchema(ErrorSchema)
  // The API speaks JSON only: anything else is 415, not a string a schema then rejects.
  app.removeContentTypeParser('text/plain')

  const metrics = new Metrics({ defaultMetrics: overrides.defaultMetrics })
  const redis = createRedis(config, 'cache', logger)
  const keys = createKeys(config.redisPrefix)
  const undecryptableWarned = new Set<string>()
  const store = new TokenStore({
    onAudit: (action, n) => metrics.auditEvents.inc({ action }, n),
    onUndecryptable: (server) => {
      metrics.undecryptable.inc({ server })
      if (undecryptableWarned.has(server)) return
      undecryptableWarned.add(server)
      logger.warn({ server }, 'cached tokens cannot be opened (BROKER_SECRET changed, or the data was altered): ' +
        'each is invalidated and re-minted on its next request')
    },
    redis,
    keys,
    crypto: keyRing(config.brokerSecret, config.brokerSecretPrevious),
    auditMaxEvents: config.auditMaxEvents,
    auditRetentionMs: config.auditRetentionMs,
    recordTtlMs: config.tokenLifetimeMs,
    now: overrides.now,
  })
  const plex = new PlexClient({
    clientIdentifier: overrides.plexClientIdentifier ?? `plex-token-broker-${config.redisPrefix}`,
    timeoutMs: config.plexTimeoutMs,
    concurrency: config.plexConcurrency,
    onCall: (e) => metrics.upstreamDuration.observe({ server: e.server, endpoint: e.endpoint, outcome: e.outcome }, e.durationMs / 1000),
  })
  const states = new ServerStates(store, plex)
  const plexTv = new PlexTv({ baseUrl: config.plexTvUrl, clientIdentifier: overrides.plexClientIdentifier ?? `plex-token-broker-${config.redisPrefix}`, timeoutMs: config.plexTimeoutMs })
  const adminHealth = new AdminTokenHealth({
    store,
    states,
    plex,
    logger,
    accountCheck: async (token) => await plexTv.checkAccountToken(token),
    keepAlive: async (token) => { await plexTv.ping(token) },
    onResult: (server, verdict) => metrics.adminTokenValid.set({ server }, verdict === 'valid' ? 1 : verdict === 'invalid' ? 0 : -1),
    probeIntervalMs: config.probeIntervalMs,
  })
  const issuer = new TokenIssuer({
    store,
    plex,
    logger,
    tokenLifetimeMs: config.tokenLifetimeMs,
    tokenRenewAfterMs: config.tokenRenewAfterMs,
    mintWaitMs: config.plexTimeoutMs * 2 + 2000,
    lockTtlMs: config.plexTimeoutMs * 2 + 1000,
    machineIdentifier: (s) => states.machineIdentifier(s),
    onMint: (server, result) => metrics.mints.inc({ server, result }),
    adminTokenBlocked: async (server) => await adminHealth.blocked(server),
    onAdminRejected: async (server) => {
      await adminHealth.record(server, 'invalid', { reason: 'mint_rejected' }).catch(() => {})
    },
  })
  const queueRedis = createRedis(config, 'queue', logger)
  const queues = createQueues(queueRedis, keys.queuePrefix)
  const servers = new Map(config.servers.map((s) => [s.name, s]))
  const rotator = new Rotator({
    store,
    issuer,
    servers,
    logger,
    activeWindowMs: config.tokenLifetimeMs,
    onRotate: (server, reason) => metrics.rotations.inc({ server, reason }),
  })
  const probe = new ServerProbe({
    store,
    states,
    plex,
    issuer,
    logger,
    activeWindowMs: config.tokenLifetimeMs,
    onRestart: async (server, clients) => { await queueRemints(queues, server, clients, store.now()) },
    onRestartDetected: (server, invalidated) => {
      metrics.restarts.inc({ server })
      metrics.invalidations.inc({ server, reason: 'restart' }, invalidated)
    },
  })
  const rejection = new RejectionCheck({
    store,
    plex,
    issuer,
    logger,
    onConfirmed: (server) => {
      metrics.invalidations.inc({ server, reason: 'rejected' })
      triggerProbe(queues, server, 'rejection').catch((err: unknown) => logger.warn({ err: describe(err) }, 'could not queue a probe'))
    },
  })
  const audit = new AuditLog(store, {
    onDropped: (n) => {
      metrics.auditDropped.inc(n)
      logger.warn({ dropped: n, max: config.auditMaxEvents }, 'security audit events cut before AUDIT_RETENTION: the trail exceeded AUDIT_MAX_EVENTS; raise it or export the trail more often')
    },
  })
  const watcher = new TokenFileWatcher(servers, logger, (server) => {
    adminHealth.check(server).catch(() => {})
  })
  let runner: JobRunner | undefined
  let workerRedis: Redis | undefined
  if (config.role !== 'api') {
    workerRedis = createRedis(config, 'worker', logger)
    runner = new JobRunner({
      store,
      queues,
      connection: workerRedis,
      prefix: keys.queuePrefix,
      servers,
      plex,
      rotator,
      probe,
      logger,
      probeIntervalMs: config.probeIntervalMs,
      sweepIntervalMs: sweepInterval(config.tokenRenewAfterMs),
      lockDurationMs: lockDuration(config.tokenRenewAfterMs),
      concurrency: config.plexConcurrency,
      onSweep: async () => { await audit.trim(config.auditRetentionMs, config.auditMaxEvents) },
      checkAdminTokens: async () => {
        for (const s of servers.values()) await adminHealth.check(s)
      },
      recheckAdminToken: async (server) => await adminHealth.recheck(server),
      adminTokenRejected: async (server) => await adminHealth.rejected(server),
    })
  }

  const broker: Broker = {
    config,
    logger,
    servers,
    redis,
    store,
    plex,
    states,
    issuer,
    queues,
    rotator,
    probe,
    runner,
    audit,
    metrics,
    revoked: (selector, n) => metrics.revocations.inc({ selector }, n),
    denied: (request, reason, client, detail) => {
      request.log.info({ reason, client }, 'request denied')
      metrics.authFailures.inc({ reason })
      store.audit({ action: 'auth.denied', client, detail: { reason, route: request.routeOptions.url, ...detail } },
        requestContext(request)).catch((err: unknown) => request.log.warn({ err: describe(err) }, 'audit write failed'))
    },
    served: (server, source) => metrics.tokensServed.inc({ server, source }),
    sourceServed: (server, source) => metrics.sourceConnections.inc({ server, source }),
    reportRejected: (client, server, tokenId, ctx) => rejection.report(client, server, tokenId, ctx),
    readiness: async () => {
      const checks: Record<string, string> = {}
      try {
        await store.call(() => redis.ping())
        checks.redis = 'ok'
      } catch {
        checks.redis = 'unreachable'
        return checks
      }
      // Issuing fails closed when the audit trail cannot be written, so readiness must say so too:
      // the stream must be a stream (or not exist yet) and Redis must accept writes (not OOM, not a replica).
      try {
        const types = await Promise.all([keys.audit, keys.auditServes].map(async (k) => await store.call(() => redis.type(k))))
        await store.call(() => redis.set(`${keys.prefix}:readyz`, String(store.now()), 'PX', 60_000))
        checks.audit = types.every((type) => type === 'stream' || type === 'none') ? 'ok' : 'not writable'
      } catch {
        checks.audit = 'not writable'
      }
      return checks
    },
  }
  app.decorate('broker', broker)

  await app.register(requestIdentity)
  const rateRedis = createRedis(config, 'ratelimit', logger)
  await app.register(rateLimits, { redis: rateRedis, prefix: config.redisPrefix, defaultLimit: config.defaultRateLimit, metrics })
  await app.register(errorHandler, { notFoundPreHandler: app.limits.notFound })
  await app.register(docs, { version: '0.1.0' })
  const failedAuth = {
    onDenied: broker.denied,
    onUnaudited: (_request: FastifyRequest, reason: string) => metrics.authFailures.inc({ reason }),
    limits: app.limits,
  }
  await app.register(metricsPlugin, { metrics, token: config.metricsToken, refresh: () => refreshGauges(broker), ...failedAuth })
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
  if (runner !== undefined) {
    const r = runner
    app.addHook('onReady', async () => { await r.start() })
  }
  app.addHook('onReady', async () => { watcher.start(overrides.tokenWatchIntervalMs ?? 5000) })
  app.addHook('onClose', async () => {
    // Workers first (they finish or leave in-flight jobs), then the connections they use.
    watcher.stop()
    await runner?.close()
    await plexTv.close()
    await queues.close()
    await plex.close()
    for (const c of [workerRedis, queueRedis, rateRedis]) await c?.quit().catch(() => c.disconnect())
    await redis.quit().catch(() => redis.disconnect())
  })

  await app.register(healthRoutes)
  await app.register(tokenRoutes)
  await app.register(sourceRoutes)
  await app.register(opsRoutes)
  return app
}

/** Gauges that live in Redis (shared by every instance), read at scrape time. */
async function refreshGauges (broker: Broker): Promise<void> {
  const { metrics, store } = broker
  const now = store.now()
  for (const name of broker.servers.keys()) {
    const st = await broker.states.get(name)
    if (st.state === 'unknown') metrics.serverUp.remove({ server: name })
    else metrics.serverUp.set({ server: name }, st.state === 'up' ? 1 : 0)
    metrics.adminTokenValid.set({ server: name }, st.adminToken === 'valid' ? 1 : st.adminToken === 'invalid' ? 0 : -1)
    metrics.activeTokens.set({ server: name }, st.activeTokens ?? 0)
    if (st.oldestExpiresAt === null) metrics.oldestExpiry.remove({ server: name })
    else metrics.oldestExpiry.set({ server: name }, Math.max(0, (st.oldestExpiresAt - now) / 1000))
  }
  for (const [queue, q] of [['tokens', broker.queues.tokens], ['probes', broker.queues.probes]] as const) {
    const counts = await store.call(() => q.getJobCounts('waiting', 'active', 'delayed', 'failed', 'prioritized', 'waiting-children'))
    for (const [state, n] of Object.entries(counts)) metrics.queueJobs.set({ queue, state }, n)
  }
}
