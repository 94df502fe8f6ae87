import pino, { type DestinationStream, type Logger } from 'pino'
import type { Config, ServerConfig } from './config/index.ts'
import { AdminTokenHealth } from './broker/admin-token-health.ts'
import { AuditLog } from './broker/audit-log.ts'
import { AuditWriter } from './broker/audit-writer.ts'
import { Clock } from './broker/clock.ts'
import { keyRing } from './broker/crypto.ts'
import { PmsEventWatcher } from './broker/event-watcher.ts'
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
import { UndecryptableTokens } from './broker/undecryptable.ts'
import { RateLimiter } from './broker/rate-limiter.ts'
import { RefusalTrail } from './broker/refusal-trail.ts'
import { StreamLeases } from './broker/stream-leases.ts'
import { WindowCounters } from './broker/window-counters.ts'
import { JobProducer } from './jobs/producer.ts'
import { createQueues, type Queues } from './jobs/queues.ts'
import { JobRunner, lockDuration, sweepInterval } from './worker/runner.ts'
import { loggerOptions } from './logger.ts'
import { Metrics } from './metrics.ts'
import { PlexClient } from './plex/client.ts'
import { PlexTv } from './plex/plextv.ts'
import { PmsUpstream } from './plex/upstream.ts'
import { ProxyKeyCache } from './proxy/key-cache.ts'
import { ProxyKeys } from './proxy/proxy-keys.ts'
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
  /**
   * The proxy's local view of proxy keys (proxy/key-cache.ts): on by default where a server has a
   * proxy listener; `false` reads every key from Redis. `connect` opens the reader's connection
   * (tests), `freshMs` and `blockMs` as there.
   */
  proxyKeyCache?: false | { connect?: () => RedisClient, freshMs?: number, blockMs?: number }
  /** How long a lease of a concurrency limit lives unrenewed (broker/stream-leases.ts; default 30 s). */
  leaseMs?: number
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
  /** Redis, its keys, the deadline wrapper and the clock, as domain classes receive them (`rc` everywhere). */
  rc: RedisContext
  connections: Connections
  clock: Clock
  /** Seals, opens and fingerprints tokens under BROKER_SECRET (and the previous secrets). */
  sealer: Sealer
  /** Short Redis locks: mints, probes, admin-token rechecks, scheduler changes. */
  locks: Locks
  /** Writes the audit events that are not part of a token script, and makes security events durable. */
  auditWriter: AuditWriter
  store: TokenStore
  /** Every connection to PMS, per origin (plex/upstream.ts): the PMS client's admin pool, the proxy's api and media pools. */
  upstream: PmsUpstream
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
  /**
   * Proxy keys (src/proxy/proxy-keys.ts), checked against this instance's configuration: the one
   * instance the key routes and the PMS proxy share, so a revocation here drops the key from the
   * local view at once.
   */
  proxyKeys: ProxyKeys
  /** The local view of proxy keys the proxy's checks read (proxy/key-cache.ts); undefined without a proxy listener or when turned off. */
  proxyKeyCache: ProxyKeyCache | undefined
  /** The PMS event streams (a drop queues a probe); undefined when BROKER_ROLE is `api`. */
  events: PmsEventWatcher | undefined
  /** The background worker of this instance; undefined when BROKER_ROLE is `api`. */
  runner: JobRunner | undefined
  /** Starts the background parts: the job runner and the event streams (worker role), and the token-file watcher. */
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
 * Builds the service graph of one instance. This is the only place that constructs services, and
 * each gets the instances it uses (never a callback standing in for one), so "go to definition"
 * leads from any call to the code it runs. Shutdown order (`closeServices`) sits next to it.
 */
export function createServices (config: Readonly<Config>, overrides: ServiceOverrides = {}): Services {
  const logger = createLogger(config, overrides.logStream)
  if (config.exposedConfigFile !== undefined) {
    // Path and mode only: the file's content is admin tokens.
    logger.warn({ path: config.exposedConfigFile.path, mode: config.exposedConfigFile.mode },
      'BROKER_CONFIG holds admin tokens and other users may read it: chmod 600 it (or move each token to a tokenFile)')
  }
  const metrics = new Metrics({ defaultMetrics: overrides.defaultMetrics })
  const connections = createConnections(config, logger)
  // Redis Cluster: every key under the `{prefix}` hash tag, so the deployment lives in one slot.
  const keys = createKeys(config.redisPrefix, { hashTag: config.redisCluster !== undefined })
  const clientIdentifier = overrides.plexClientIdentifier ?? `plex-token-broker-${config.redisPrefix}`
  const servers = new Map(config.servers.map((s) => [s.name, s]))
  const clock = new Clock(overrides.now)
  // What domain classes get: Redis, its keys, the deadline, the clock.
  const rc = redisContext(connections.cache, keys, clock.now)
  const sealer = new Sealer(keyRing(config.brokerSecret, config.brokerSecretPrevious))
  const locks = new Locks(rc)
  const auditWriter = new AuditWriter({
    rc,
    maxEvents: config.auditMaxEvents,
    durable: connections.audit,
    waitReplicas: config.redisWaitReplicas,
    waitTimeoutMs: config.redisWaitTimeoutMs,
    metrics,
    logger,
  })
  const store = new TokenStore({
    rc,
    sealer,
    audit: auditWriter,
    auditRetentionMs: config.auditRetentionMs,
    recordTtlMs: config.tokenLifetimeMs,
    undecryptable: new UndecryptableTokens(metrics, logger),
  })
  const plexLimits = { timeoutMs: config.plexTimeoutMs, concurrency: config.plexConcurrency }
  const upstream = new PmsUpstream(PlexClient.upstreamOptions(plexLimits))
  const plex = new PlexClient({ clientIdentifier, ...plexLimits, upstream, metrics })
  const plexTv = config.plexTvUrl === undefined ? undefined : new PlexTv({ baseUrl: config.plexTvUrl, clientIdentifier, timeoutMs: config.plexTimeoutMs })
  const states = new ServerStates(rc, plex)
  const queues = createQueues(connections.queue, keys.queuePrefix)
  const jobs = new JobProducer(queues)
  const adminHealth = new AdminTokenHealth({ rc, locks, sealer, audit: auditWriter, states, plex, plexTv, metrics, logger, probeIntervalMs: config.probeIntervalMs })
  const issuer = new TokenIssuer({
    store,
    rc,
    locks,
    clock,
    plex,
    states,
    adminHealth,
    metrics,
    logger,
    tokenLifetimeMs: config.tokenLifetimeMs,
    tokenRenewAfterMs: config.tokenRenewAfterMs,
    mintWaitMs: config.plexTimeoutMs * 2 + 2000,
    lockTtlMs: config.plexTimeoutMs * 2 + 1000,
  })
  const activeWindowMs = config.tokenLifetimeMs
  const rotator = new Rotator({ store, states, clock, issuer, servers, metrics, logger, activeWindowMs })
  const probe = new ServerProbe({ store, rc, locks, audit: auditWriter, clock, states, plex, issuer, jobs, metrics, logger, activeWindowMs })
  const rejection = new RejectionCheck({ store, plex, issuer, jobs, metrics, logger })
  const audit = new AuditLog(rc, { metrics, logger })
  const readiness = new Readiness({ ...rc, target: config })
  const refusals = new RefusalTrail({ audit: auditWriter, logger, windowMs: overrides.refusalWindowMs })
  const limiter = new RateLimiter({
    counters: new WindowCounters(connections.ratelimit), leases: new StreamLeases(connections.ratelimit, { leaseMs: overrides.leaseMs }), keys, clientDefault: config.defaultRateLimit, metrics, logger,
  })
  const push = new PushHub({ rc, target: config, logger, limiter, maxPerClient: config.streamMaxPerClient, maxTotal: config.streamMaxTotal })
  const watcher = new TokenFileWatcher(servers, logger, adminHealth)
  const worker = connections.worker
  const events = worker === undefined ? undefined : new PmsEventWatcher({ servers, plex, adminHealth, jobs, logger, probeIntervalMs: config.probeIntervalMs })
  const runner = worker === undefined
    ? undefined
    : new JobRunner({
      jobs,
      connection: worker,
      keys,
      locks,
      servers,
      rotator,
      probe,
      adminHealth,
      audit,
      logger,
      auditRetentionMs: config.auditRetentionMs,
      auditMaxEvents: config.auditMaxEvents,
      probeIntervalMs: config.probeIntervalMs,
      sweepIntervalMs: sweepInterval(config.tokenRenewAfterMs),
      lockDurationMs: lockDuration(config.tokenRenewAfterMs),
      concurrency: config.plexConcurrency,
    })
  const cacheOpts = overrides.proxyKeyCache
  const proxyKeyCache = cacheOpts === false || !config.servers.some((s) => s.proxy !== undefined)
    ? undefined
    : new ProxyKeyCache({
      rc,
      // The reader's XREAD blocks: a connection of its own, like the push channel's reader.
      connect: cacheOpts?.connect ?? (() => createRedis(config, 'push', logger)),
      logger,
      freshMs: cacheOpts?.freshMs,
      blockMs: cacheOpts?.blockMs,
    })
  proxyKeyCache?.start()
  const proxyKeys = new ProxyKeys(rc, config, proxyKeyCache)
  const parts = { config, logger, metrics, servers, keys, rc, connections, clock, sealer, locks, auditWriter, store, upstream, plex, plexTv, states, adminHealth, issuer, rejection, queues, jobs, rotator, probe, audit, readiness, limiter, refusals, push, watcher, proxyKeys, proxyKeyCache, events, runner }
  return {
    ...parts,
    start: async () => {
      await runner?.start()
      events?.start()
      watcher.start(overrides.tokenWatchIntervalMs ?? 5000)
    },
    close: async () => { await closeServices(parts) },
  }
}

/** The Redis connections of one instance, one per role (redis.ts createRedis). */
function createConnections (config: Readonly<Config>, logger: Logger): Connections {
  return {
    cache: createRedis(config, 'cache', logger),
    ratelimit: createRedis(config, 'ratelimit', logger),
    queue: createRedis(config, 'queue', logger),
    worker: config.role === 'api' ? undefined : createRedis(config, 'worker', logger),
    audit: config.redisWaitReplicas === 0 ? undefined : createRedis(config, 'audit', logger, { commandTimeout: 750 + 2 * config.redisWaitTimeoutMs }),
  }
}

/** Stops everything in reverse order of construction: workers first (they finish or leave in-flight jobs), then the clients, then the connections they use. */
async function closeServices (s: Omit<Services, 'start' | 'close'>): Promise<void> {
  s.watcher.stop()
  s.events?.stop()
  // Counts of refusals not yet written reach the trail while Redis is still open.
  await s.refusals.flush()
  // The streams themselves were ended by the route's preClose hook; this stops the reader.
  await s.push.close()
  await s.proxyKeyCache?.close()
  await s.runner?.close()
  await s.plexTv?.close()
  await s.queues.close()
  await s.plex.close()
  // The proxy's listeners closed before the services (app.ts), so no answer is still using these.
  await s.upstream.close()
  const c = s.connections
  for (const r of [c.worker, c.queue, c.audit, c.ratelimit, c.cache]) {
    await r?.quit().catch(() => r.disconnect())
  }
  // The last lines (shutdown included) reach stdout before the process exits.
  await new Promise<void>((resolve) => s.logger.flush(() => resolve()))
}

/** Gauges that live in Redis (shared by every instance), read at scrape time. */
export async function refreshGauges (s: Pick<Services, 'metrics' | 'rc' | 'servers' | 'states' | 'queues'>): Promise<void> {
  const { metrics, rc } = s
  const now = rc.now()
  for (const name of s.servers.keys()) {
    const st = await s.states.get(name)
    if (st.state === 'unknown') metrics.serverUp.remove({ server: name })
    else metrics.serverUp.set({ server: name }, st.state === 'up' ? 1 : 0)
    metrics.adminTokenValid.set({ server: name }, st.adminToken === 'valid' ? 1 : st.adminToken === 'invalid' ? 0 : -1)
    metrics.activeTokens.set({ server: name }, st.activeTokens ?? 0)
    if (st.oldestExpiresAt === null) metrics.oldestExpiry.remove({ server: name })
    else metrics.oldestExpiry.set({ server: name }, Math.max(0, (st.oldestExpiresAt - now) / 1000))
  }
  for (const [queue, q] of [['tokens', s.queues.tokens], ['probes', s.queues.probes], ['housekeeping', s.queues.housekeeping]] as const) {
    const counts = await rc.call(() => q.getJobCounts('waiting', 'active', 'delayed', 'failed', 'prioritized', 'waiting-children'))
    for (const [state, n] of Object.entries(counts)) metrics.queueJobs.set({ queue, state }, n)
  }
}
