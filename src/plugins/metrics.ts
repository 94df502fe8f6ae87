import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { digestEquals, sha256 } from '../broker/crypto.ts'
import type { Metrics } from '../metrics.ts'
import { unauthenticatedResponse } from '../schemas/common.ts'
import { type AuthOptions, bearer, refuseFailedAuthentication } from './auth.ts'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** A long-lived stream (routes/stream.ts): its duration is no request latency, so it stays out of the histogram. */
    stream?: boolean
  }
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
      description: 'Text exposition format. Requires `Authorization: Bearer <METRICS_TOKEN>` when METRICS_TOKEN is set.',
      tags: ['health'],
      // Public without METRICS_TOKEN; with it, a bearer credential of its own (not a client secret).
      security: expected === undefined ? [] : [{ metricsToken: [] }],
      produces: ['text/plain'],
      response: expected === undefined
        ? { 200: { type: 'string' } }
        : { 200: { type: 'string' }, 401: unauthenticatedResponse, 429: { $ref: 'Error#' } },
    },
  }, async (request, reply) => {
    if (expected !== undefined) {
      if (!digestEquals(sha256(bearer(request) ?? ''), expected)) {
        await refuseFailedAuthentication(request, 'metrics_token', opts, 'Send Authorization: Bearer <METRICS_TOKEN>.')
      }
    }
    // Gauges read from Redis are best effort: a Redis outage must not hide the process metrics.
    await opts.refresh().catch(() => {})
    return await reply.type(metrics.registry.contentType).send(await metrics.registry.metrics())
  })
}

export default fp(metricsPlugin, { name: 'metrics' })
