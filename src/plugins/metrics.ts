import { isIP } from 'node:net'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { digestEquals, sha256 } from '../broker/crypto.ts'
import { forbidden } from '../errors.ts'
import type { Metrics } from '../metrics.ts'
import { unauthenticatedResponse } from '../schemas/common.ts'
import { type AuthOptions, bearer, refuseFailedAuthentication } from './auth.ts'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** A long-lived response (http/long-response.ts, the push channel): its duration is no request latency, so it stays out of the histogram. */
    stream?: boolean
  }
  interface FastifyInstance {
    /**
     * Whether the caller may see operational detail (`/readyz`'s checks and Redis node): it sent
     * METRICS_TOKEN, or no token is configured (a loopback-only broker) and the `Host` header
     * names a loopback address. A wrong token is a failed authentication (401, throttled).
     */
    opsView: (request: FastifyRequest) => Promise<boolean>
  }
}

/**
 * Whether a `Host` header names this machine's loopback: `localhost`, a 127.0.0.0/8 address or
 * `[::1]`, with or without a port. A page in a browser on the broker's host that rebinds its own
 * domain name to 127.0.0.1 still sends that domain name as `Host`, so it is refused.
 */
export function loopbackHostHeader (host: string | undefined): boolean {
  if (host === undefined) return false
  const m = /^(\[[^\]]*\]|[^:]+)(?::\d{1,5})?$/.exec(host.trim().toLowerCase())
  if (m === null) return false
  const [, hostname = ''] = m
  const name = hostname.replace(/^\[(.*)\]$/, '$1')
  return name === 'localhost' || name === '::1' || (isIP(name) === 4 && name.startsWith('127.'))
}

export interface MetricsPluginOptions extends Pick<AuthOptions, 'denials' | 'limits'> {
  metrics: Metrics
  /**
   * When set, `/metrics` requires `Authorization: Bearer <token>` (METRICS_TOKEN; the config
   * requires it unless HOST is loopback). A wrong or missing token is a failed authentication:
   * counted, audited and throttled per address like a client's (denials, limits).
   */
  token?: string
  /** Refreshes gauges read from Redis (server state, queue depth) just before a scrape. */
  refresh: () => Promise<void>
}

/** Request duration for every route, and `GET /metrics` in Prometheus text format. */
async function metricsPlugin (app: FastifyInstance, opts: MetricsPluginOptions): Promise<void> {
  const { metrics } = opts
  const expected = opts.token === undefined ? undefined : sha256(opts.token)

  app.decorate('opsView', async (request: FastifyRequest): Promise<boolean> => {
    if (expected === undefined) return loopbackHostHeader(request.headers.host)
    const sent = bearer(request)
    if (sent === undefined) return false
    if (digestEquals(sha256(sent), expected)) return true
    return await refuseFailedAuthentication(request, 'metrics_token', opts, 'Send Authorization: Bearer <METRICS_TOKEN>, or no Authorization header.')
  })

  app.addHook('onResponse', async (request, reply) => {
    // An open push stream lasts minutes or days; its error answers are ordinary requests.
    if (request.routeOptions.config.stream === true && reply.statusCode === 200) return
    metrics.httpDuration.observe({
      method: request.method,
      // The route pattern, never the raw URL: unknown paths share one label value.
      route: request.routeOptions.url ?? 'unmatched',
      status_code: String(reply.statusCode),
    }, reply.elapsedTime / 1000)
  })

  app.get('/metrics', {
    schema: {
      operationId: 'getMetrics',
      summary: 'Prometheus metrics',
      description: 'Text exposition format. Requires `Authorization: Bearer <METRICS_TOKEN>` when METRICS_TOKEN is set; ' +
        'without it (a loopback HOST only) the `Host` header must name a loopback address (localhost, 127.0.0.1, [::1]), else 403.',
      tags: ['health'],
      // Public without METRICS_TOKEN; with it, a bearer credential of its own (not a client secret).
      security: expected === undefined ? [] : [{ metricsToken: [] }],
      produces: ['text/plain'],
      response: expected === undefined
        ? { 200: { type: 'string', description: 'The metrics, in the Prometheus text exposition format' }, 403: { $ref: 'Error#', description: '`FORBIDDEN`: without a metrics token, only a loopback `Host` is answered (DNS rebinding)' } }
        : { 200: { type: 'string', description: 'The metrics, in the Prometheus text exposition format' }, 401: unauthenticatedResponse, 429: { $ref: 'Error#', description: '`RATE_LIMITED`: too many failed attempts from this address' } },
    },
  }, async (request, reply) => {
    if (expected !== undefined) {
      if (!digestEquals(sha256(bearer(request) ?? ''), expected)) {
        await refuseFailedAuthentication(request, 'metrics_token', opts, 'Send Authorization: Bearer <METRICS_TOKEN>.')
      }
    } else if (!loopbackHostHeader(request.headers.host)) {
      // No token on a loopback broker: only this machine may scrape, and a browser page on it
      // that rebinds a domain to 127.0.0.1 (DNS rebinding) must not read the metrics.
      throw forbidden('Without METRICS_TOKEN, /metrics answers only requests whose Host is localhost, 127.0.0.1 or [::1]; ' +
        'scrape it by that address, or set METRICS_TOKEN.')
    }
    // Gauges read from Redis are best effort: a Redis outage must not hide the process metrics.
    await opts.refresh().catch(() => {})
    return await reply.type(metrics.registry.contentType).send(await metrics.registry.metrics())
  })
}

export default fp(metricsPlugin, { name: 'metrics' })
