import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import swagger, { type SwaggerTransformObject } from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import { VERSION } from '../version.ts'

export interface DocsOptions {
  /** The broker's base URL as its clients reach it; the document's `servers` is the relative `/` without it. */
  publicUrl?: string
}

type Doc = { paths?: Record<string, Record<string, { security?: Array<Record<string, unknown>>, responses?: Record<string, { content?: Record<string, unknown> }> }>>, components?: { securitySchemes?: Record<string, unknown> } }

/**
 * What the route schemas cannot say by themselves. A route's `produces` (text/event-stream,
 * NDJSON, Prometheus text) is the media type of its success answer only: every error answer is
 * the JSON Error body, whatever the route streams. And a security scheme is declared only where
 * some operation applies it (metricsToken exists only with METRICS_TOKEN).
 */
export function finishDocument<D extends Doc> (doc: D): D {
  const applied = new Set<string>()
  for (const item of Object.values(doc.paths ?? {})) {
    for (const op of Object.values(item)) {
      for (const req of op.security ?? []) for (const name of Object.keys(req)) applied.add(name)
      for (const [status, response] of Object.entries(op.responses ?? {})) {
        if (Number(status) < 400 || response.content === undefined) continue
        const media = Object.values(response.content)[0]
        response.content = { 'application/json': media }
      }
    }
  }
  const schemes = doc.components?.securitySchemes
  if (schemes !== undefined) for (const name of Object.keys(schemes)) if (!applied.has(name)) delete schemes[name]
  return doc
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
        { name: 'proxy-keys', description: 'Keys that tools present to the PMS proxy instead of a PMS token' },
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
    // Always the openapi branch: the document above is OpenAPI, not Swagger 2.
    transformObject: (d) => finishDocument(('openapiObject' in d ? d.openapiObject : d.swaggerObject) as Doc) as ReturnType<SwaggerTransformObject>,
  })
  await app.register(swaggerUi, { routePrefix: '/docs', uiConfig: { docExpansion: 'list' } })
}

export default fp(docs, { name: 'docs' })
