import type { FastifyInstance } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { compareVersions } from '../broker/server-state.ts'
import { canUseSource, refusals } from '../broker/policy.ts'
import { BrokerError } from '../errors.ts'
import { iso, requireServer } from './common.ts'
import { requestContext } from '../plugins/request-identity.ts'
import { authErrors, bodyErrors, errorResponse } from '../schemas/common.ts'
import { ConnectBodySchema, SourceConnectionSchema } from '../schemas/sources.ts'
import type { Services } from '../services.ts'

/** PMS learned `/security/resources` in 1.15.4 (docs/plex-api.md §3). */
export const FIRST_RESOURCES_VERSION = '1.15.4'

/** Connection details and a transient token for a source a PMS knows: a shared server or a cloud provider. */
export default async function sourceRoutes (fastify: FastifyInstance): Promise<void> {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>()
  // Typed as the service graph itself (not only through Fastify's decorator), so a call on it leads
  // straight to its class.
  const broker: Services = app.broker

  app.post('/v1/sources/connection', {
    onRequest: app.authenticate('source:connect'),
    schema: {
      operationId: 'connectSource',
      summary: 'Connection details and a token for a source this PMS knows',
      description: 'Cached, encrypted, single-flight, rotated and revocable like PMS tokens (revoke by `source`). ' +
        'A client may ask only for the sources its config lists.',
      tags: ['sources'],
      security: [{ bearer: [] }],
      body: ConnectBodySchema,
      response: {
        200: SourceConnectionSchema,
        404: errorResponse('`NOT_FOUND`: no server with this name; `SOURCE_NOT_FOUND`: PMS knows no such source'),
        502: errorResponse('`UPSTREAM_REJECTED`: PMS refused; `UPSTREAM_UNSUPPORTED`: the PMS version has no source connections'),
        ...authErrors,
        ...bodyErrors,
      },
    },
  }, async (request) => {
    const client = request.client!
    const { server: name, source } = request.body
    const server = await requireServer(app, request, name)
    if (!canUseSource(client, source)) await app.refuse(request, refusals.source(client, name, source))
    // The version decides whether PMS can answer at all; learn it (from /identity) on first contact.
    await broker.states.machineIdentifier(server)
    const { version } = await broker.states.get(name)
    if (version !== null && compareVersions(version, FIRST_RESOURCES_VERSION) < 0) {
      throw new BrokerError('UPSTREAM_UNSUPPORTED', `PMS "${name}" is version ${version}; source connections need PMS ${FIRST_RESOURCES_VERSION} or newer.`)
    }
    const t = await broker.issuer.issue(client.id, server, requestContext(request), { target: source })
    broker.metrics.sourceConnections.inc({ server: name, source: t.source })
    const meta = JSON.parse(t.meta || '{}') as { name?: string, clientIdentifier?: string, connections?: unknown[] }
    return {
      source,
      name: meta.name ?? '',
      clientIdentifier: meta.clientIdentifier ?? '',
      token: t.token,
      connections: (meta.connections ?? []) as never,
      issuedAt: iso(t.issuedAt),
      renewAt: iso(t.renewAt),
      expiresAt: iso(t.expiresAt),
      tokenId: t.tokenId,
    }
  })
}
