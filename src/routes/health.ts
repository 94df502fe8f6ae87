import type { FastifyInstance } from 'fastify'
import { Type } from 'typebox'
import { sendError } from '../plugins/error-handler.ts'
import { errorResponse } from '../schemas/common.ts'
import type { Services } from '../services.ts'

export default async function healthRoutes (app: FastifyInstance): Promise<void> {
  // Typed as the service graph itself (not only through Fastify's decorator), so a call on it leads
  // straight to its class.
  const broker: Services = app.broker

  app.get('/healthz', {
    schema: {
      operationId: 'getHealth',
      summary: 'Liveness: the process is running',
      description: 'Use for container health checks and restarts; it does not look at Redis or PMS, so a Redis outage does not restart every broker.',
      tags: ['health'],
      security: [],
      response: { 200: Type.Object({ status: Type.Literal('ok') }, { description: 'The process is alive' }) },
    },
  }, async () => ({ status: 'ok' as const }))

  app.get('/readyz', {
    schema: {
      operationId: 'getReadiness',
      summary: 'Readiness: Redis answers on a primary and the audit trail can be written',
      description: 'Use to route traffic: 503 while tokens could not be issued (issuing fails closed when the audit trail cannot be written). ' +
        'Anyone gets ready or not ready, from a check at most a second old. The checks, the Redis node and what is wrong, freshly ' +
        'checked, only a caller that sends `Authorization: Bearer <METRICS_TOKEN>`, or, without METRICS_TOKEN (a loopback HOST), ' +
        'one whose Host is localhost, 127.0.0.1 or [::1]. A wrong token is 401.',
      tags: ['health'],
      // Public; METRICS_TOKEN, when sent, only adds the detail (see the description).
      security: [],
      response: {
        200: Type.Object({
          status: Type.Literal('ready'),
          checks: Type.Optional(Type.Record(Type.String(), Type.String(), { description: 'Each check and its result (detail: see above)' })),
          redis: Type.Optional(Type.Object({
            mode: Type.Union([Type.Literal('standalone'), Type.Literal('sentinel'), Type.Literal('cluster')], { description: 'How the broker reaches Redis (REDIS_SENTINELS, REDIS_CLUSTER)' }),
            role: Type.String({ description: '`primary`: the node the broker writes to accepts writes' }),
            address: Type.Optional(Type.String({ description: 'host:port of that node' })),
            replicas: Type.Optional(Type.Integer({ description: 'Replicas connected to it (what REDIS_WAIT_REPLICAS can count on)' })),
          })),
        }, { description: 'Ready: tokens can be issued' }),
        503: errorResponse('`STORE_UNAVAILABLE`: not ready; the message names the failed check; `Retry-After`'),
      },
    },
  }, async (request, reply) => {
    const detail = await app.opsView(request)
    // Anonymous probes share one check a second (each writes Redis); ops asking for detail get a fresh one.
    const { checks, redis } = detail ? await broker.readiness.inspect() : await broker.readiness.recent()
    const failed = Object.entries(checks).filter(([, v]) => v !== 'ok')
    if (failed.length > 0) {
      // The message says what is wrong: unreachable (and why: TLS, authentication), a replica, a failover in progress.
      const message = detail ? `Not ready: ${failed.map(([k, v]) => `${k} ${v}`).join(', ')}.` : 'Not ready.'
      return sendError(reply, request, 503, 'STORE_UNAVAILABLE', message, 2)
    }
    if (!detail) return { status: 'ready' as const }
    return { status: 'ready' as const, checks, ...(redis === undefined ? {} : { redis }) }
  })
}
