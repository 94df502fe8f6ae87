import type { FastifyInstance } from 'fastify'
import { Type } from 'typebox'
import { sendError } from '../plugins/error-handler.ts'

export default async function healthRoutes (app: FastifyInstance): Promise<void> {
  const { broker } = app

  app.get('/healthz', {
    schema: {
      operationId: 'getHealth',
      summary: 'Liveness: the process is running',
      description: 'Use for container health checks and restarts; it does not look at Redis or PMS, so a Redis outage does not restart every broker.',
      tags: ['health'],
      security: [],
      response: { 200: Type.Object({ status: Type.Literal('ok') }) },
    },
  }, async () => ({ status: 'ok' as const }))

  app.get('/readyz', {
    schema: {
      operationId: 'getReadiness',
      summary: 'Readiness: Redis answers and the audit trail can be written',
      description: 'Use to route traffic: 503 while tokens could not be issued (issuing fails closed when the audit trail cannot be written).',
      tags: ['health'],
      security: [],
      response: {
        200: Type.Object({ status: Type.Literal('ready'), checks: Type.Record(Type.String(), Type.String()) }),
        503: { $ref: 'Error#' },
      },
    },
  }, async (request, reply) => {
    const checks = await broker.readiness.check()
    const failed = Object.entries(checks).filter(([, v]) => v !== 'ok')
    if (failed.length > 0) {
      return sendError(reply, request, 503, 'STORE_UNAVAILABLE', `Not ready: ${failed.map(([k, v]) => `${k} ${v}`).join(', ')}.`, 2)
    }
    return { status: 'ready' as const, checks }
  })
}
