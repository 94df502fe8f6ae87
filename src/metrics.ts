import { performance } from 'node:perf_hooks'
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from '@prometheus-io/client'
import { ProxyMetrics } from './proxy/proxy-metrics.ts'

/**
 * Default collectors whose names fail `promtool check metrics`: gauges named `*_total` (the
 * unsuffixed `nodejs_active_handles`/`_requests`/`_resources` gauges carry the same numbers and
 * stay) and the event-loop utilization pair with its type in the name (replaced below by
 * `nodejs_eventloop_utilization_ratio`).
 */
export const DROPPED_DEFAULT_METRICS = [
  'nodejs_active_handles_total',
  'nodejs_active_requests_total',
  'nodejs_active_resources_total',
  'nodejs_eventloop_utilization_histogram',
  'nodejs_eventloop_utilization_summary',
] as const

/**
 * Every metric the broker exports, in one registry per app (tests build many apps in one process).
 * Labels are bounded by configuration: server names, route patterns, fixed enums. Never a token,
 * a secret, a raw URL or a client-supplied string.
 */
export class Metrics {
  readonly registry = new Registry()
  /** The PMS proxy's metrics (proxy/proxy-metrics.ts), in the same registry. */
  readonly proxy = new ProxyMetrics(this.registry)

  readonly httpDuration = new Histogram({
    name: 'http_request_duration_seconds',
    help: 'HTTP request duration by route pattern',
    labelNames: ['method', 'route', 'status_code'] as const,
    // The hot path answers in well under a millisecond; 1 ms … 1 s resolves it and the slow tail.
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
    registers: [this.registry],
  })

  readonly tokensServed = new Counter({
    name: 'ptb_tokens_served_total',
    help: 'Tokens handed to clients, from cache or freshly minted upstream',
    labelNames: ['server', 'source'] as const,
    registers: [this.registry],
  })

  readonly sourceConnections = new Counter({
    name: 'ptb_source_connections_total',
    help: 'Source connections (shared servers, providers) handed to clients, from cache or upstream',
    labelNames: ['server', 'source'] as const,
    registers: [this.registry],
  })

  readonly mints = new Counter({
    name: 'ptb_mints_total',
    help: 'Upstream /security/token calls by result',
    labelNames: ['server', 'result'] as const,
    registers: [this.registry],
  })

  readonly rotations = new Counter({
    name: 'ptb_rotations_total',
    help: 'Tokens replaced by reason: scheduled (age), restart (PMS restarted), rejected (client report), manual (ops)',
    labelNames: ['server', 'reason'] as const,
    registers: [this.registry],
  })

  readonly revocations = new Counter({
    name: 'ptb_revocations_total',
    help: 'Tokens revoked by ops, by selector kind',
    labelNames: ['selector'] as const,
    registers: [this.registry],
  })

  readonly invalidations = new Counter({
    name: 'ptb_invalidations_total',
    help: 'Tokens invalidated because PMS lost them (restart or rejection)',
    labelNames: ['server', 'reason'] as const,
    registers: [this.registry],
  })

  readonly restarts = new Counter({
    name: 'ptb_restarts_detected_total',
    help: 'PMS restarts detected',
    labelNames: ['server'] as const,
    registers: [this.registry],
  })

  readonly upstreamDuration = new Histogram({
    name: 'ptb_upstream_request_duration_seconds',
    help: 'PMS request duration by endpoint and outcome',
    labelNames: ['server', 'endpoint', 'outcome'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  })

  readonly serverUp = new Gauge({
    name: 'ptb_server_up',
    help: '1 when the last probe reached PMS, 0 when it did not (absent while unknown)',
    labelNames: ['server'] as const,
    registers: [this.registry],
  })

  readonly oldestExpiry = new Gauge({
    name: 'ptb_oldest_active_token_expiry_seconds',
    help: 'Seconds until the oldest active token of the server expires (as of the last rotation sweep); alert when low: rotation is failing',
    labelNames: ['server'] as const,
    registers: [this.registry],
  })

  readonly activeTokens = new Gauge({
    name: 'ptb_active_tokens',
    help: 'Active tokens of the server (clients that asked within TOKEN_LIFETIME), as of the last rotation sweep',
    labelNames: ['server'] as const,
    registers: [this.registry],
  })

  readonly adminTokenValid = new Gauge({
    name: 'ptb_admin_token_valid',
    help: '1 valid, 0 invalid, -1 unknown (PMS or plex.tv unreachable): the last admin token check per server',
    labelNames: ['server'] as const,
    registers: [this.registry],
  })

  readonly auditEvents = new Counter({
    name: 'ptb_audit_events_total',
    help: 'Audit events written by this instance, by action',
    labelNames: ['action'] as const,
    registers: [this.registry],
  })

  readonly undecryptable = new Counter({
    name: 'ptb_undecryptable_tokens_total',
    help: 'Cached tokens that could not be opened (sealed under another BROKER_SECRET or corrupt); each is invalidated and re-minted',
    labelNames: ['server'] as const,
    registers: [this.registry],
  })

  readonly auditDropped = new Counter({
    name: 'ptb_audit_dropped_total',
    help: 'Security audit events cut before their retention because the trail exceeded AUDIT_MAX_EVENTS',
    registers: [this.registry],
  })

  readonly unreplicated = new Counter({
    name: 'ptb_redis_unreplicated_writes_total',
    help: 'Security audit events fewer replicas acknowledged than REDIS_WAIT_REPLICAS asks within REDIS_WAIT_TIMEOUT (a failover could lose them)',
    labelNames: ['action'] as const,
    registers: [this.registry],
  })

  readonly rateLimited = new Counter({
    name: 'ptb_rate_limited_total',
    help: 'Requests answered 429, by limit',
    labelNames: ['limit'] as const,
    registers: [this.registry],
  })

  readonly authFailures = new Counter({
    name: 'ptb_auth_failures_total',
    help: 'Requests refused by authentication or authorization, by reason',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  })

  readonly streamsOpen = new Gauge({
    name: 'ptb_streams_open',
    help: 'Push streams (GET /v1/tokens/stream) open on this instance',
    registers: [this.registry],
  })

  readonly streamEvents = new Counter({
    name: 'ptb_stream_events_total',
    help: 'Events sent on push streams by this instance: token, revoked, server',
    labelNames: ['event'] as const,
    registers: [this.registry],
  })

  readonly streamDrops = new Counter({
    name: 'ptb_stream_drops_total',
    help: 'Push streams the broker ended: slow (the client did not read), shutdown, revoked (all its tokens revoked), error (Redis failed mid-stream)',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  })

  readonly queueJobs = new Gauge({
    name: 'ptb_queue_jobs',
    help: 'BullMQ jobs by queue and state',
    labelNames: ['queue', 'state'] as const,
    registers: [this.registry],
  })

  constructor (opts: { defaultMetrics?: boolean } = {}) {
    // Series the alert rules watch with increase()/rate() exist from the first scrape at 0: a
    // counter that appears only at its first increment would make the first one invisible.
    this.rateLimited.inc({ limit: 'auth_failures' }, 0)
    this.authFailures.inc({ reason: 'unknown_secret' }, 0)
    for (const reason of ['slow', 'shutdown']) this.streamDrops.inc({ reason }, 0)
    if (opts.defaultMetrics === false) return
    collectDefaultMetrics({
      register: this.registry,
      // The utilization collector samples on a 100 ms timer that nothing ever clears, feeding the
      // two metrics dropped below; the longest timer Node allows keeps it from running for nothing.
      eventLoopUtilizationTimeout: 2_147_483_647,
    })
    for (const name of DROPPED_DEFAULT_METRICS) this.registry.removeSingleMetric(name)
    // Event-loop utilization between scrapes, read on collect: no timer of its own.
    let last = performance.eventLoopUtilization()
    // Registered on construction (registers: …); nothing else needs a handle on it.
    // eslint-disable-next-line no-new
    new Gauge({
      name: 'nodejs_eventloop_utilization_ratio',
      help: 'Share of time the event loop was busy (not idle in the event provider) since the previous scrape, 0 to 1',
      registers: [this.registry],
      collect () {
        const now = performance.eventLoopUtilization()
        this.set(performance.eventLoopUtilization(now, last).utilization)
        last = now
      },
    })
  }
}
