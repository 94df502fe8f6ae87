import pino, { type DestinationStream, type Logger } from 'pino'
import type { Config, ServerConfig } from './config/index.ts'
import { AdminTokenHealth } from './broker/admin-token-health.ts'
import { AuditLog } from './broker/audit-log.ts'
import { AuditWriter } from './broker/audit-writer.ts'
import { Clock } from './broker/clock.ts'
import { keyRing } from './broker/crypto.ts'
import { TokenIssuer } from './broker/issuer.ts'
import { createKeys, type Keys, type RedisContext, redisContext } from './broker/keys.ts'
import { Locks } from './broker/locks.ts'
import { ServerProbe } from './broker/probe.ts'
import { PushHub } from './broker/push.ts'
import { Readiness } from './broker/readiness.ts'
import { RejectionCheck } from './broker/rejection-check.ts'
import { Rotator } from './broker/rotator.ts'
import { Sealer } from './broker/sealer.ts'
import { ServerStates } from './broker/server-state.ts'
import { TokenFileWatcher } from './broker/token-files.ts'
import { TokenStore } from './broker/token-store.ts'
import { RateLimiter } from './broker/rate-limiter.ts'
import { RefusalTrail } from './broker/refusal-trail.ts'
import { WindowCounters } from './broker/window-counters.ts'
import { JobProducer } from './jobs/producer.ts'
import { createQueues, type Queues } from './jobs/queues.ts'
import { JobRunner, lockDuration, sweepInterval } from './jobs/runner.ts'
import { loggerOptions } from './logger.ts'
import { Metrics } from './metrics.ts'
import { PlexClient } from './plex/client.ts'
import { PlexTv } from './plex/plextv.ts'
import { ProxyKeys } from './proxy/proxy-keys.ts'
import { describe } from './plugins/error-handler.ts'
import { createRedis, type RedisClient } from './redis.ts'

export interface ServiceOverrides {
  /** Where logs go (tests capture them). */
  logStream?: DestinationStream
  now?: () => number
  /** Skip Node's default process metrics (tests that build many apps in one process). */
  defaultMetrics?: boolean
  /** How often token files are polled for changes (default 5 s). */
  tokenWatchIntervalMs?: number
  /** Stable X-Plex-Client-Identifier; by default derived from REDIS_PREFIX so all instances share one. */
  plexClientIdentifier?: string
  /** How long refusals of one client or address are counted into one audit event (default 1 minute). */
  refusalWindowMs?: number
}

/** The Redis connections of one instance, one per role (redis.ts). */
export interface Connections {
  /** The request path: token store, audit, readiness. */
  cache: RedisClient
  /** Rate-limit counters (fail open, short deadline). */
  ratelimit: RedisClient
  /** BullMQ producers. */
  queue: RedisClient
  /** BullMQ workers (blocking); only with the worker role. */
  worker: RedisClient | undefined
  /**
   * Security audit events and their WAIT, only with REDIS_WAIT_REPLICAS (a WAIT holds up the
   * commands behind it, so cache hits keep their own connection). Its command timeout leaves
   * room for two WAITs (the one in flight and its own).
   */
  audit: RedisClient | undefined
}

/**
 * Every service of one broker instance, built once by `createServices`: the routes, plugins and
 * jobs use these instances (`app.broker`), never copies or closures standing in for them.
 */
export interface Services {
  config: Readonly<Config>
  logger: Logger
  metrics: Metrics
  /** The configured PMS servers by name (token files may replace an entry's admin token). */
  servers: Map<string, ServerConfig>
  keys: Keys
  /** Redis, its keys, the deadline wrapper and the clock, as domain classes receive them. */
  db: RedisContext
  connections: Connections
  clock: Clock
  /** Seals, opens and fingerprints tokens under BROKER_SECRET (and the previous secrets). */
  sealer: Sealer
  /** Short Redis locks: mints, probes, admin-token rechecks, scheduler changes. */
  locks: Locks
  /** Writes the audit events that are not part of a token script, and makes security events durable. */
  auditWriter: AuditWriter
  store: TokenStore
  plex: PlexClient
  /** Absent with PLEX_TV_URL=off. */
  plexTv?: PlexTv
  states: ServerStates
  adminHealth: AdminTokenHealth
  issuer: TokenIssuer
  rejection: RejectionCheck
  queues: Queues
  jobs: JobProducer
  rotator: Rotator
  probe: ServerProbe
  audit: AuditLog
  readiness: Readiness
  /** Every rate limit, by name: per client, failed authentications and unknown routes per address, streams (broker/rate-limiter.ts). */
  limiter: RateLimiter
  /** The refusals part of the audit trail, coalesced per client or address and window (broker/refusal-trail.ts). */
  refusals: RefusalTrail
  /** The push channel's registry of open streams and its reader of the shared change log (broker/push.ts). */
  push: PushHub
  watcher: TokenFileWatcher
  /** Proxy keys (src/proxy/proxy-keys.ts), checked against this instance's configuration. */
  proxyKeys: ProxyKeys
  /** The background worker of this instance; undefined when BROKER_ROLE is `api`. */
  runner: JobRunner | undefined
  /** Starts the background parts: the job runner (worker role) and the token-file watcher. */
  start: () => Promise<void>
  /** Stops everything in reverse order of construction: workers, then clients, then connections. */
  close: () => Promise<void>
}

/**
 * The instance's logger. On a terminal, pino-pretty when installed; otherwise JSON lines to stdout
 * through an asynchronous buffered destination: the per-request line then costs a memory copy, not
 * a write(2) on the request's path (measured in docs/benchmarks.md). The buffer is flushed when
 * the services close, and pino flushes it synchronously if the process exits first.
 */
export function createLogger (config: Readonly<Config>, stream?: DestinationStream): Logger {
  if (stream !== undefined) return pino(loggerOptions(config.logLevel), stream)
  const tty = process.stdout.isTTY === true
  const options = loggerOptions(config.logLevel, tty)
  if (options.transport !== undefined) return pino(options)
  return pino(options, pino.destination({ dest: 1, sync: false, minLength: 4096 }))
}

/**
 * Builds the service graph of one instance. This is the only place that constructs services;
 * shutdown order (`close`) sits next to construction so the two cannot drift apart.
 */
export function createServices (config: Readonly<Config>, overrides: ServiceOverrides = {}): Services {
  const logger = createLogger(config, overrides.logStream)
  if (config.exposedConfigFile !== undefined) {
    // Path and mode only: the file's content is admin tokens.
    logger.warn({ path: config.exposedConfigFile.path, mode: config.exposedConfigFile.mode },
      'BROKER_CONFIG holds admin tokens and other users may read it: chmod 600 it (or move each token to a tokenFile)')
  }
  const metrics = new Metrics({ defaultMetrics: overrides.defaultMetrics })
  const connections: Connections = {
    cache: createRedis(config, 'cache', logger),
    ratelimit: createRedis(config, 'ratelimit', logger),
    queue: createRedis(config, 'queue', logger),
    worker: config.role === 'api' ? undefined : createRedis(config, 'worker', logger),
    audit: config.redisWaitReplicas === 0 ? undefined : createRedis(config, 'audit', logger, { commandTimeout: 750 + 2 * config.redisWaitTimeoutMs }),
  }
  // Redis Cluster: every key under the `{prefix}` hash tag, so the deployment lives in one slot.
  const keys = createKeys(config.redisPrefix, { hashTag: config.redisCluster !== undefined })
  const clientIdentifier = overrides.plexClientIdentifier ?? `plex-token-broker-${config.redisPrefix}`
  const servers = new Map(config.servers.map((s) => [s.name, s]))

  const clock = new Clock(overrides.now)
  // What domain classes get: Redis, its keys, the deadline, the clock.
  const db = redisContext(connections.cache, keys, clock.now)
  const sealer = new Sealer(keyRing(config.brokerSecret, config.brokerSecretPrevious))
  const locks = new Locks(db)
  let unreplicatedLogged = 0
  const auditWriter = new AuditWriter({
    db,
    maxEvents: config.auditMaxEvents,
    durable: connections.audit,
    waitReplicas: config.redisWaitReplicas,
    waitTimeoutMs: config.redisWaitTimeoutMs,
    onAudit: (action, n) => metrics.auditEvents.inc({ action }, n),
    onUnreplicated: (action, acked) => {
      metrics.unreplicated.inc({ action })
      const now = Date.now()
      if (now - unreplicatedLogged < 10_000) return
      unreplicatedLogged = now
      logger.warn({ action, acked, wanted: config.redisWaitReplicas, timeoutMs: config.redisWaitTimeoutMs },
        'a security audit event reached fewer Redis replicas than REDIS_WAIT_REPLICAS: a failover now could lose it (counted in ptb_redis_unreplicated_writes_total)')
    },
  })
  const undecryptableWarned = new Set<string>()
  const store = new TokenStore({
    db,
    sealer,
    audit: auditWriter,
    auditRetentionMs: config.auditRetentionMs,
    recordTtlMs: config.tokenLifetimeMs,
    onUndecryptable: (server) => {
      metrics.undecryptable.inc({ server })
      if (undecryptableWarned.has(server)) return
      undecryptableWarned.add(server)
      logger.warn({ server }, 'cached tokens cannot be opened (BROKER_SECRET changed, or the data was altered): ' +
        'each is invalidated and re-minted on its next request')
    },
  })
  const plex = new PlexClient({
    clientIdentifier,
    timeoutMs: config.plexTimeoutMs,
    concurrency: config.plexConcurrency,
    onCall: (e) => metrics.upstreamDuration.observe({ server: e.server, endpoint: e.endpoint, outcome: e.outcome }, e.durationMs / 1000),
  })
  const plexTv = config.plexTvUrl === undefined ? undefined : new PlexTv({ baseUrl: config.plexTvUrl, clientIdentifier, timeoutMs: config.plexTimeoutMs })
  const states = new ServerStates(db, plex)
  const queues = createQueues(connections.queue, keys.queuePrefix)
  const jobs = new JobProducer({
    queues,
    locks,
    schedulerLockKey: keys.schedulerLock,
  })
  const adminHealth = new AdminTokenHealth({
    db,
    locks,
    sealer,
    audit: auditWriter,
    states,
    plex,
    logger,
    ...(plexTv === undefined
      ? {}
      : { accountCheck: async (token: string) => await plexTv.checkAccountToken(token), keepAlive: async (token: string) => { await plexTv.ping(token) } }),
    onResult: (server, verdict) => metrics.adminTokenValid.set({ server }, verdict === 'valid' ? 1 : verdict === 'invalid' ? 0 : -1),
    probeIntervalMs: config.probeIntervalMs,
  })
  const issuer = new TokenIssuer({
    store,
    db,
    locks,
    clock,
    plex,
    logger,
    tokenLifetimeMs: config.tokenLifetimeMs,
    tokenRenewAfterMs: config.tokenRenewAfterMs,
    mintWaitMs: config.plexTimeoutMs * 2 + 2000,
    lockTtlMs: config.plexTimeoutMs * 2 + 1000,
    mintFacts: async (s) => await states.mintFacts(s.name),
    machineIdentifier: async (s, known) => await states.machineIdentifier(s, known),
    onMint: (server, result) => metrics.mints.inc({ server, result }),
    adminTokenBlocked: async (server, facts) => await adminHealth.blocked(server, facts),
    onAdminRejected: async (server) => {
      await adminHealth.record(server, 'invalid', { reason: 'mint_rejected' }).catch(() => {})
    },
  })
  const rotator = new Rotator({
    store,
    states,
    clock,
    issuer,
    servers,
    logger,
    activeWindowMs: config.tokenLifetimeMs,
    onRotate: (server, reason) => metrics.rotations.inc({ server, reason }),
  })
  const probe = new ServerProbe({
    store,
    db,
    locks,
    audit: auditWriter,
    clock,
    states,
    plex,
    issuer,
    logger,
    activeWindowMs: config.tokenLifetimeMs,
    onRestart: async (server, slots) => { await jobs.remint(server, slots, clock.now()) },
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
      jobs.probeNow(server, 'rejection').catch((err: unknown) => logger.warn({ err: describe(err) }, 'could not queue a probe'))
    },
  })
  const audit = new AuditLog(db, {
    onDropped: (n) => {
      metrics.auditDropped.inc(n)
      logger.warn({ dropped: n, max: config.auditMaxEvents }, 'security audit events cut before AUDIT_RETENTION: the trail exceeded AUDIT_MAX_EVENTS; raise it or export the trail more often')
    },
  })
  const readiness = new Readiness({ ...db, target: config })
  const refusals = new RefusalTrail({
    write: async (e, ctx) => await auditWriter.refusal(e, ctx),
    windowMs: overrides.refusalWindowMs,
    onError: (err) => logger.warn({ err: describe(err) }, 'audit write failed'),
  })
  const unavailableLogged = new Map<string, number>()
  const limiter = new RateLimiter({
    counters: new WindowCounters(connections.ratelimit),
    keys,
    clientDefault: config.defaultRateLimit,
    onLimited: (limit) => metrics.rateLimited.inc({ limit }),
    onUnavailable: (limit, err) => {
      // Fails open. A down Redis fails every request: one line per limit and 10 s is enough.
      const now = Date.now()
      if (now - (unavailableLogged.get(limit) ?? 0) < 10_000) return
      unavailableLogged.set(limit, now)
      logger.warn({ limit, err: describe(err) }, limit === 'auth_failures' ? 'failed-authentication throttle unavailable' : 'rate limit unavailable; failing open')
    },
  })
  const push = new PushHub({
    db,
    // The reader's blocking XREAD gets a connection of its own, opened with the first stream.
    connect: () => createRedis(config, 'push', logger),
    logger,
    maxPerClient: config.streamMaxPerClient,
    maxTotal: config.streamMaxTotal,
    onLimited: () => limiter.limited('streams'),
  })
  const watcher = new TokenFileWatcher(servers, logger, (server) => {
    adminHealth.check(server).catch(() => {})
  })
  const runner = connections.worker === undefined
    ? undefined
    : new JobRunner({
      jobs,
      connection: connections.worker,
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

  return {
    config,
    logger,
    metrics,
    servers,
    keys,
    db,
    connections,
    clock,
    sealer,
    locks,
    auditWriter,
    store,
    plex,
    plexTv,
    states,
    adminHealth,
    issuer,
    rejection,
    queues,
    jobs,
    rotator,
    probe,
    audit,
    readiness,
    limiter,
    refusals,
    push,
    watcher,
    proxyKeys: new ProxyKeys(db, config),
    runner,
    start: async () => {
      await runner?.start()
      watcher.start(overrides.tokenWatchIntervalMs ?? 5000)
    },
    close: async () => {
      // Workers first (they finish or leave in-flight jobs), then the clients, then the connections they use.
      watcher.stop()
      // Counts of refusals not yet written reach the trail while Redis is still open.
      await refusals.flush()
      // The streams themselves were ended by the route's preClose hook; this stops the reader.
      await push.close()
      await runner?.close()
      await plexTv?.close()
      await queues.close()
      await plex.close()
      for (const c of [connections.worker, connections.queue, connections.audit, connections.ratelimit, connections.cache]) {
        await c?.quit().catch(() => c.disconnect())
      }
      // The last lines (shutdown included) reach stdout before the process exits.
      await new Promise<void>((resolve) => logger.flush(() => resolve()))
    },
  }
}

/** Gauges that live in Redis (shared by every instance), read at scrape time. */
export async function refreshGauges (s: Pick<Services, 'metrics' | 'db' | 'servers' | 'states' | 'queues'>): Promise<void> {
  const { metrics, db } = s
  const now = db.now()
  for (const name of s.servers.keys()) {
    const st = await s.states.get(name)
    if (st.state === 'unknown') metrics.serverUp.remove({ server: name })
    else metrics.serverUp.set({ server: name }, st.state === 'up' ? 1 : 0)
    metrics.adminTokenValid.set({ server: name }, st.adminToken === 'valid' ? 1 : st.adminToken === 'invalid' ? 0 : -1)
    metrics.activeTokens.set({ server: name }, st.activeTokens ?? 0)
    if (st.oldestExpiresAt === null) metrics.oldestExpiry.remove({ server: name })
    else metrics.oldestExpiry.set({ server: name }, Math.max(0, (st.oldestExpiresAt - now) / 1000))
  }
  for (const [queue, q] of [['tokens', s.queues.tokens], ['probes', s.queues.probes]] as const) {
    const counts = await db.call(() => q.getJobCounts('waiting', 'active', 'delayed', 'failed', 'prioritized', 'waiting-children'))
    for (const [state, n] of Object.entries(counts)) metrics.queueJobs.set({ queue, state }, n)
  }
}
