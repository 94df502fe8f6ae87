import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { canManageProxyKey, canUseServer, refusals } from '../broker/policy.ts'
import { badRequest, BrokerError, notFound } from '../errors.ts'
import { requestContext } from '../plugins/request-identity.ts'
import type { ProxyKeyRecord } from '../proxy/proxy-keys.ts'
import { authErrors, bodyErrors, errorResponse } from '../schemas/common.ts'
import {
  CreatedProxyKeySchema, CreateProxyKeyBodySchema, PROXY_KEY_MAX_LIFE_MS, ProxyKeyListQuerySchema, ProxyKeyListSchema, ProxyKeyParamsSchema,
  ProxyKeySchema, RevokedProxyKeySchema, RevokeProxyKeyQuerySchema,
} from '../schemas/proxy-keys.ts'

const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString())

/**
 * Proxy keys (docs/proxy.md): created, listed and revoked by ops (scope `proxy-key:manage`). The
 * key itself appears once, in the creation's answer; records, logs and audit events carry its id,
 * and the creation event the key's fingerprint (HMAC, as for tokens) so `POST /v1/audit/trace`
 * finds the events of a leaked key.
 */
export default async function proxyKeyRoutes (fastify: FastifyInstance): Promise<void> {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>()
  const { broker } = app
  const keys = broker.proxyKeys

  const view = (r: ProxyKeyRecord) => ({
    id: r.id,
    client: r.client,
    server: r.server,
    label: r.label,
    createdAt: new Date(r.createdAt).toISOString(),
    expiresAt: iso(r.expiresAt),
    revokedAt: iso(r.revokedAt),
    state: keys.state(r),
    orphaned: keys.orphaned(r),
  })

  /** The key, if it exists and the caller may manage it; otherwise 404 alike, so ids outside its reach are not confirmed. */
  async function visible (request: FastifyRequest, id: string): Promise<ProxyKeyRecord> {
    const record = await keys.get(id)
    if (record === undefined || !canManageProxyKey(request.client!, record)) throw notFound(`No proxy key "${id}".`)
    return record
  }

  app.post('/v1/proxy-keys', {
    onRequest: app.authenticate('proxy-key:manage'),
    schema: {
      operationId: 'createProxyKey',
      summary: 'Create a proxy key for a client (shown once)',
      description: 'The key is answered once and never again: the broker keeps only a digest of its secret. ' +
        'The client must be in the configuration with a `proxy` section; `server`, when given, must be one of the client\'s. ' +
        'A caller limited to some servers creates only keys bound to one of them (without `server`, or with another, 403).',
      tags: ['proxy-keys'],
      security: [{ bearer: [] }],
      body: CreateProxyKeyBodySchema,
      response: {
        201: CreatedProxyKeySchema,
        ...authErrors,
        400: errorResponse('`BAD_REQUEST` (the body does not match the schema; `expiresAt` not in the future or more than 366 days ahead), ' +
          '`UNKNOWN_CLIENT`, `PROXY_NOT_CONFIGURED` (the client has no `proxy` section), `UNKNOWN_SERVER`, `SERVER_NOT_IN_CLIENT_LIST`'),
        ...bodyErrors,
      },
    },
  }, async (request, reply) => {
    const caller = request.client!
    const { client: clientId, server, label, expiresAt } = request.body
    // The caller's reach first, so a limited caller cannot probe names outside its list.
    if (!canManageProxyKey(caller, { server: server ?? null })) {
      await app.refuse(request, server === undefined ? refusals.unboundProxyKey(caller) : refusals.server(caller, server))
    }
    const client = broker.config.clients.find((c) => c.id === clientId)
    if (client === undefined) throw new BrokerError('UNKNOWN_CLIENT', `No client "${clientId}" in the configuration.`)
    if (client.proxy === undefined) {
      throw new BrokerError('PROXY_NOT_CONFIGURED', `Client "${clientId}" has no proxy section in the configuration, so its keys would reach nothing; give it one (e.g. proxy: { preset: read }) first.`)
    }
    if (server !== undefined) {
      if (!broker.servers.has(server)) throw new BrokerError('UNKNOWN_SERVER', `No server "${server}" in the configuration.`)
      if (!canUseServer(client, server)) throw new BrokerError('SERVER_NOT_IN_CLIENT_LIST', `Client "${clientId}" may not use server "${server}" (its servers list), so a key bound to it would reach nothing.`)
    }
    let expires: number | undefined
    if (expiresAt !== undefined) {
      expires = Date.parse(expiresAt)
      const now = broker.clock.now()
      if (!Number.isFinite(expires) || expires <= now) throw badRequest('Invalid body: expiresAt must be in the future.')
      // A key held by a third-party tool for years is a key nobody remembers: renew it instead.
      if (expires > now + PROXY_KEY_MAX_LIFE_MS) throw badRequest('Invalid body: expiresAt must be at most 366 days ahead; leave it out for a key that does not expire.')
    }
    const { key, record } = await keys.create({ client: clientId, server, label, expiresAt: expires })
    // An answer of 503 here leaves a record whose secret nobody ever saw: the key cannot be used.
    await broker.auditWriter.write({
      action: 'proxy-key.create',
      client: clientId,
      server,
      fingerprint: broker.sealer.fingerprint(key),
      detail: { actor: caller.id, keyId: record.id, label, expiresAt: iso(record.expiresAt) },
    }, requestContext(request))
    request.log.info({ keyId: record.id, client: clientId, server, actor: caller.id }, 'proxy key created')
    return await reply.code(201).header('cache-control', 'no-store').send({ key, record: view(record) })
  })

  app.get('/v1/proxy-keys', {
    onRequest: app.authenticate('proxy-key:manage'),
    schema: {
      operationId: 'listProxyKeys',
      summary: 'List proxy keys (never their secrets)',
      description: 'Revoked, expired and orphaned keys are listed too, with their `state`. `client` lists one client\'s, also a client removed from the configuration. ' +
        'A caller limited to some servers sees only keys bound to one of them.',
      tags: ['proxy-keys'],
      security: [{ bearer: [] }],
      querystring: ProxyKeyListQuerySchema,
      response: { 200: ProxyKeyListSchema, ...authErrors },
    },
  }, async (request) => {
    const records = await keys.list({ client: request.query.client })
    return { keys: records.filter((r) => canManageProxyKey(request.client!, r)).map(view) }
  })

  app.get('/v1/proxy-keys/:id', {
    onRequest: app.authenticate('proxy-key:manage'),
    schema: {
      operationId: 'getProxyKey',
      summary: 'One proxy key\'s record (never its secret)',
      tags: ['proxy-keys'],
      security: [{ bearer: [] }],
      params: ProxyKeyParamsSchema,
      response: { 200: ProxyKeySchema, 404: errorResponse('`NOT_FOUND`: no such key, or one bound to a server outside the caller\'s list'), ...authErrors },
    },
  }, async (request) => view(await visible(request, request.params.id)))

  app.delete('/v1/proxy-keys/:id', {
    onRequest: app.authenticate('proxy-key:manage'),
    schema: {
      operationId: 'revokeProxyKey',
      summary: 'Revoke a proxy key: refused by every instance on its next request',
      description: 'Idempotent: revoking a revoked key answers 200 again with `alreadyRevoked: true` and the first revocation\'s time. ' +
        'The record stays, for listings and the audit trail.',
      tags: ['proxy-keys'],
      security: [{ bearer: [] }],
      params: ProxyKeyParamsSchema,
      querystring: RevokeProxyKeyQuerySchema,
      response: { 200: RevokedProxyKeySchema, 404: errorResponse('`NOT_FOUND`: no such key, or one bound to a server outside the caller\'s list'), ...authErrors },
    },
  }, async (request) => {
    const { id } = request.params
    const caller = request.client!
    const before = await visible(request, id)
    const result = await keys.revoke(id)
    if (result === 'not-found') throw notFound(`No proxy key "${id}".`)
    // Every call is recorded, a repeated one too: a retry after a failed write still leaves its event.
    await broker.auditWriter.write({
      action: 'proxy-key.revoke',
      client: before.client,
      server: before.server ?? undefined,
      detail: { actor: caller.id, keyId: id, label: before.label, ...(request.query.reason === undefined ? {} : { reason: request.query.reason }), ...(result === 'already-revoked' ? { alreadyRevoked: true } : {}) },
    }, requestContext(request))
    request.log.info({ keyId: id, client: before.client, actor: caller.id, alreadyRevoked: result === 'already-revoked' }, 'proxy key revoked')
    const after = await keys.get(id) ?? before
    return { alreadyRevoked: result === 'already-revoked', record: view(after) }
  })
}
