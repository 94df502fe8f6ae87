import type { FastifyInstance } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { notFound } from '../errors.ts'
import { mayUseServer } from '../plugins/auth.ts'
import { allowedServer, iso, issuedTokenBody } from './common.ts'
import { requestContext } from '../plugins/request-identity.ts'
import { authErrors, bodyErrors, errorResponse } from '../schemas/common.ts'
import { IssueBodySchema, IssuedTokenSchema, TokenIdParamsSchema, TokenInfoSchema } from '../schemas/tokens.ts'

export default async function tokenRoutes (fastify: FastifyInstance): Promise<void> {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>()
  const { broker } = app

  app.post('/v1/tokens', {
    // The client's rate limit is counted in the serve script (one Redis round trip per cache hit).
    onRequest: app.authenticate('token:issue', { clientLimit: false }),
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
  }, async (request, reply) => {
    const client = request.client!
    const server = allowedServer(app, request, request.body.server)
    const ctx = requestContext(request)
    const { max, timeWindowMs } = client.rateLimit ?? broker.config.defaultRateLimit
    let t
    if (request.body.rejectedTokenId === undefined) {
      t = await broker.issuer.issue(client.id, server, ctx, undefined, { max, windowMs: timeWindowMs })
    } else {
      // A report is rare and costs a PMS check anyway: the ordinary limiter counts it.
      await app.limits.client(request, reply)
      t = await broker.rejection.report(client.id, server, request.body.rejectedTokenId, ctx)
    }
    if (t.rate !== undefined) {
      reply.headers({
        'x-ratelimit-limit': String(t.rate.max),
        'x-ratelimit-remaining': String(Math.max(0, t.rate.max - t.rate.count)),
        'x-ratelimit-reset': String(Math.max(0, Math.ceil(t.rate.ttlMs / 1000))),
      })
    }
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
    // Another client's token answers 404 like a missing one: ids of others are not confirmed.
    // audit:read reaches only tokens of servers in the reader's list.
    const mayRead = (r: { client: string, server: string }): boolean =>
      r.client === client.id || (client.scopes.includes('audit:read') && mayUseServer(client, r.server))
    if (record === undefined || !mayRead(record)) throw notFound('No such token.')
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
