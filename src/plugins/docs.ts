import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import { VERSION } from '../version.ts'

export interface DocsOptions {
  /** The broker's base URL as its clients reach it; the document's `servers` is the relative `/` without it. */
  publicUrl?: string
}

/**
 * OpenAPI 3 document generated from the route schemas (so it cannot drift from the code),
 * served at `/docs/json` with a browsable UI at `/docs`. Register before the routes.
 *
 * Every route names an `operationId` (what generated clients call the method) and its security:
 * `[]` for the public ones, `bearer` (a client secret) or `metricsToken` for the others. The test
 * in test/openapi.test.ts generates types from the document and validates it against the
 * OpenAPI 3.1 schema, so a route without an operationId fails the build.
 */
async function docs (app: FastifyInstance, opts: DocsOptions = {}): Promise<void> {
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'plex-token-broker',
        version: VERSION,
        license: { name: 'MIT', identifier: 'MIT' },
        description: 'Brokers Plex Media Server transient tokens to internal services: cached, encrypted, rotated, revocable and audited. ' +
          'Every error answer is `{statusCode, code, error, message, requestId}`.',
      },
      servers: [{ url: opts.publicUrl ?? '/' }],
      tags: [
        { name: 'tokens', description: 'Clients get their transient tokens' },
        { name: 'sources', description: 'Connection details and tokens for sources a PMS knows' },
        { name: 'ops', description: 'Revocation' },
        { name: 'audit', description: 'The append-only audit trail' },
        { name: 'servers', description: 'PMS servers and their probed state' },
        { name: 'health', description: 'Liveness, readiness and metrics' },
      ],
      components: {
        securitySchemes: {
          bearer: { type: 'http', scheme: 'bearer', description: 'The client secret. A 401 answer carries `WWW-Authenticate: Bearer` (RFC 6750), with `error="invalid_token"` when the secret sent is unknown.' },
          metricsToken: { type: 'http', scheme: 'bearer', description: 'METRICS_TOKEN, when set (required unless HOST is loopback)' },
        },
      },
    },
    refResolver: { buildLocalReference: (json, _baseUri, _fragment, i) => String(json.$id ?? `def-${i}`) },
  })
  await app.register(swaggerUi, { routePrefix: '/docs', uiConfig: { docExpansion: 'list' } })
}

export default fp(docs, { name: 'docs' })
