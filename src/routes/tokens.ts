import type { FastifyInstance } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { canReadToken } from '../broker/policy.ts'
import { notFound } from '../errors.ts'
import { iso, issuedTokenBody, requireServer } from './common.ts'
import { requestContext } from '../plugins/request-identity.ts'
import { authErrors, bodyErrors, errorResponse } from '../schemas/common.ts'
import { IssueBodySchema, IssuedTokenSchema, TokenIdParamsSchema, TokenInfoSchema } from '../schemas/tokens.ts'
import type { Services } from '../services.ts'

export default async function tokenRoutes (fastify: FastifyInstance): Promise<void> {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>()
  // Typed as the service graph itself (not only through Fastify's decorator), so a call on it leads
  // straight to its class.
  const broker: Services = app.broker

  app.post('/v1/tokens', {
    // The client's rate limit is counted in the serve script (one Redis round trip per cache hit).
    onRequest: app.authenticate('token:issue', { countedBy: 'serve' }),
    schema: {
      operationId: 'issueToken',
      summary: 'Get this client\'s transient token for a PMS server',
      description: 'Returns the cached token while it is live; mints one upstream (once, across all broker instances) otherwise. ' +
        'Send `rejectedTokenId` when PMS answered 401 to the token you hold: the broker checks it and replaces it if PMS really lost it.',
      tags: ['tokens'],
      security: [{ bearer: [] }],
      body: IssueBodySchema,
      response: {
        200: IssuedTokenSchema,
        404: errorResponse('`NOT_FOUND`: no server with this name'),
        502: errorResponse('`UPSTREAM_REJECTED`: PMS refused to mint a token (the admin token is no longer valid)'),
        ...authErrors,
        ...bodyErrors,
      },
    },
  }, async (request) => {
    const client = request.client!
    const server = await requireServer(app, request, request.body.server)
    const ctx = requestContext(request)
    const meter = request.meter ?? undefined
    // A report is rare and costs a PMS check: it is counted before the check.
    const t = request.body.rejectedTokenId === undefined
      ? await broker.issuer.issue(client.id, server, ctx, { meter })
      : await broker.rejection.report(client.id, server, request.body.rejectedTokenId, ctx, { meter })
    broker.metrics.tokensServed.inc({ server: server.name, source: t.source })
    return issuedTokenBody(server, t)
  })

  app.get('/v1/tokens/:tokenId', {
    onRequest: app.authenticate(['token:issue', 'audit:read']),
    schema: {
      operationId: 'getToken',
      summary: 'State of one token (never the token itself)',
      description: 'Answers the client that owns the token, and clients with scope audit:read whose servers list holds the token\'s server.',
      tags: ['tokens'],
      security: [{ bearer: [] }],
      params: TokenIdParamsSchema,
      response: { 200: TokenInfoSchema, 404: errorResponse('`NOT_FOUND`: no such token among those this client may see'), ...authErrors },
    },
  }, async (request) => {
    const record = await broker.store.get(request.params.tokenId)
    const client = request.client!
    // A token the client may not read answers 404 like a missing one: ids of others are not confirmed.
    if (record === undefined || !canReadToken(client, record)) throw notFound('No such token.')
    const retired = record.retiredAt === undefined
      ? {}
      : record.state === 'revoked'
        ? { revokedAt: iso(record.retiredAt), reason: record.reason }
        : record.state === 'invalidated' ? { invalidatedAt: iso(record.retiredAt), reason: record.reason } : {}
    return {
      tokenId: record.tokenId,
      client: record.client,
      server: record.server,
      state: record.state,
      issuedAt: iso(record.issuedAt),
      expiresAt: iso(record.expiresAt),
      ...retired,
    }
  })
}
