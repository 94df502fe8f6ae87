import type { FastifyInstance } from 'fastify'
import type { AddressInfo } from 'node:net'
import { SYSTEM_CONTEXT } from '../broker/audit-writer.ts'
import { HTTP_TIMEOUTS, type HttpTimeouts } from '../http-server.ts'
import { describe } from '../errors.ts'
import type { Services } from '../services.ts'
import { AuditSampler } from './audit-sampler.ts'
import { ProxyGate } from './gate.ts'
import { buildProxyListener } from './listener.ts'
import { SessionCredentials } from './media-urls.ts'
import { OpenResponses } from './open-responses.ts'
import type { ProxyMetrics } from './proxy-metrics.ts'
import type { ProxyKeys } from './proxy-keys.ts'
import type { UpstreamPools } from '../plex/upstream.ts'

export interface ProxyOptions {
  /** Timeouts of the listeners (tests shorten them); defaults as the API's. */
  timeouts?: Partial<HttpTimeouts>
  /** How often open answers' keys are checked (default 500 ms). */
  recheckIntervalMs?: number
  /** The audit sampler's window (default 60 s). */
  auditWindowMs?: number
  authFailures?: { max: number, timeWindowMs: number }
}

/**
 * The PMS proxy of one broker instance: a listener per server with a proxy port (docs/proxy.md),
 * the upstream pools by server, the revocation watcher of open answers, the audit sampler and the metrics.
 * Built with the app (app.ts), listening when the API does (server.ts), closed before the services.
 */
export class PmsProxy {
  readonly listeners = new Map<string, FastifyInstance>()
  /** The service graph's proxy keys (services.ts), shared with the key routes. */
  readonly keys: ProxyKeys
  readonly open: OpenResponses
  readonly metrics: ProxyMetrics
  readonly sessions: SessionCredentials
  readonly #pools = new Map<string, UpstreamPools>()
  readonly #sampler: AuditSampler
  readonly #services: Services

  private constructor (services: Services, opts: ProxyOptions) {
    this.#services = services
    const { logger, auditWriter } = services
    this.keys = services.proxyKeys
    this.metrics = services.metrics.proxy
    this.sessions = new SessionCredentials(services.config.brokerSecret, services.rc.now)
    this.open = new OpenResponses({
      unusable: async (ids) => await this.keys.unusable(ids),
      logger,
      intervalMs: opts.recheckIntervalMs,
      onEnded: (why, n) => this.metrics.ended.inc({ why }, n),
    })
    this.#sampler = new AuditSampler({
      windowMs: opts.auditWindowMs,
      write: (e) => {
        auditWriter.write({ action: e.action, client: e.client, server: e.server, detail: e.detail }, SYSTEM_CONTEXT)
          .catch((err: unknown) => logger.warn({ err: describe(err) }, 'proxy audit write failed'))
      },
    })
    // The connections are the services' (shared with the PMS client, closed with the services).
    for (const s of services.servers.values()) this.#pools.set(s.name, services.upstream.pools(s.url))
  }

  static async create (services: Services, opts: ProxyOptions = {}): Promise<PmsProxy> {
    const proxy = new PmsProxy(services, opts)
    const timeouts = { ...HTTP_TIMEOUTS, ...opts.timeouts }
    for (const server of services.servers.values()) {
      if (server.proxy === undefined) continue
      const gate = new ProxyGate({
        server,
        servers: services.servers,
        clients: services.config.clients,
        keys: proxy.keys,
        sessions: proxy.sessions,
        limiter: services.limiter,
        metrics: proxy.metrics,
        sampler: proxy.#sampler,
        logger: services.logger,
        authFailures: opts.authFailures,
      })
      proxy.listeners.set(server.name, await buildProxyListener({
        services, gate, pools: proxy.#pools, sessions: proxy.sessions, open: proxy.open, metrics: proxy.metrics, timeouts,
      }, server))
    }
    return proxy
  }

  /** Listens on every proxy port (`ports` overrides them by server name: tests use 0). */
  async listen (host: string, ports: Record<string, number> = {}): Promise<void> {
    for (const [name, app] of this.listeners) {
      const port = ports[name] ?? this.#services.servers.get(name)?.proxy?.port ?? 0
      await app.listen({ host, port })
      this.#services.logger.info({ server: name, host, port: this.port(name) }, 'PMS proxy listening')
    }
  }

  /** The port a server's listener is bound to. */
  port (server: string): number {
    const address = this.listeners.get(server)?.server.address()
    return typeof address === 'object' && address !== null ? (address as AddressInfo).port : 0
  }

  /** Stops the listeners (open answers end) and the watcher; flushes the audit sampler. The pools close with the services. */
  async close (): Promise<void> {
    this.open.close()
    await Promise.all([...this.listeners.values()].map(async (app) => { await app.close() }))
    this.#sampler.flush()
  }
}
