import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'

/**
 * OpenAPI 3 document generated from the route schemas (so it cannot drift from the code),
 * served at `/docs/json` with a browsable UI at `/docs`. Register before the routes.
 */
async function docs (app: FastifyInstance, opts: { version: string }): Promise<void> {
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'plex-token-broker',
        version: opts.version,
        description: 'Brokers Plex Media Server transient tokens to internal services: cached, encrypted, rotated, revocable and audited. ' +
          'Every error answer is `{statusCode, code, error, message, requestId}`.',
      },
      tags: [
        { name: 'tokens', description: 'Clients get their transient tokens' },
        { name: 'sources', description: 'Connection details and tokens for sources a PMS knows' },
        { name: 'ops', description: 'Revocation' },
        { name: 'audit', description: 'The append-only audit trail' },
        { name: 'servers', description: 'PMS servers and their probed state' },
        { name: 'health', description: 'Liveness, readiness and metrics' },
      ],
      components: {
        securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'The client secret' } },
      },
    },
    refResolver: { buildLocalReference: (json, _baseUri, _fragment, i) => String(json.$id ?? `def-${i}`) },
  })
  await app.register(swaggerUi, { routePrefix: '/docs', uiConfig: { docExpansion: 'list' } })
}

export default fp(docs, { name: 'docs' })
