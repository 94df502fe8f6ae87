import type { FastifyInstance } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import type { RetireSelector } from '../broker/token-store.ts'
import { isVulnerable } from '../broker/server-state.ts'
import { badRequest, notFound } from '../errors.ts'
import { rotateJobId } from '../jobs/queues.ts'
import { requestContext } from '../plugins/request-identity.ts'
import { authErrors } from '../schemas/common.ts'
import {
  AuditExportQuerySchema, AuditPageSchema, AuditQuerySchema, RevokeBodySchema, RevokeResultSchema, RotateResultSchema,
  ServerInfoSchema, ServerParamsSchema, TraceBodySchema, TraceResultSchema,
} from '../schemas/ops.ts'

const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString())
/**
 * `since`/`until` as ms since 1970. The schema checks the format; a time before 1970 (audit ids
 * start there) or one Date cannot read (a leap second) is the caller's mistake, a 400.
 */
function ms (name: 'since' | 'until', s: string | undefined): number | undefined {
  if (s === undefined) return undefined
  const t = Date.parse(s)
  if (!Number.isFinite(t) || t < 0) throw badRequest(`Invalid querystring: ${name} must be a date-time at or after 1970-01-01T00:00:00Z.`)
  return t
}

/** Revocation, the audit trail and server status: the routes ops use. */
export default async function opsRoutes (fastify: FastifyInstance): Promise<void> {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>()
  const { broker } = app

  app.post('/v1/revoke', {
    onRequest: app.authenticate('token:revoke'),
    schema: {
      summary: 'Revoke tokens: one, per client, per server, per client and server, or all',
      description: 'Revoked tokens are never served again, by any broker instance; the client\'s next request mints a new token. ' +
        'PMS has no call to kill a transient token: it stays valid at PMS until `upstreamStillValidUntil` or the next PMS restart. ' +
        'To cut a leaked token off at once, revoke it, then restart PMS (the broker recovers by itself).',
      tags: ['ops'],
      security: [{ bearer: [] }],
      body: RevokeBodySchema,
      response: { 200: RevokeResultSchema, ...authErrors },
    },
  }, async (request) => {
    const { tokenId, client, server, all, reason, source } = request.body
    let selector: RetireSelector
    let kind: string
    if (source !== undefined && tokenId === undefined && all === undefined) {
      selector = client !== undefined ? { client, server, target: source } : server !== undefined ? { server, target: source } : { target: source }
      kind = 'source'
    } else if (tokenId !== undefined && client === undefined && server === undefined && all === undefined) {
      selector = { tokenId }
      kind = 'token'
    } else if (all === true && tokenId === undefined && client === undefined && server === undefined) {
      selector = { all: true }
      kind = 'all'
    } else if (tokenId === undefined && all === undefined && client !== undefined) {
      selector = server === undefined ? { client } : { client, server }
      kind = server === undefined ? 'client' : 'client_server'
    } else if (tokenId === undefined && all === undefined && server !== undefined) {
      selector = { server }
      kind = 'server'
    } else {
      throw badRequest('Give exactly one selector: {tokenId}, {client}, {server}, {client, server}, {source} (optionally with client and/or server) or {all: true}.')
    }
    const r = await broker.store.retire(selector, 'revoked', 'token.revoke',
      { reason, actor: request.client!.id, selector: kind }, requestContext(request))
    broker.revoked(kind, r.count)
    request.log.info({ selector: kind, revoked: r.count, actor: request.client!.id }, 'tokens revoked')
    return { revoked: r.count, upstreamStillValidUntil: r.count === 0 ? null : iso(r.latestExpiresAt) }
  })

  app.get('/v1/audit', {
    onRequest: app.authenticate('audit:read'),
    schema: {
      summary: 'Read the audit trail, newest first',
      description: 'Filters combine with AND. Pass `next` back as `cursor` for the following page.',
      tags: ['audit'],
      security: [{ bearer: [] }],
      querystring: AuditQuerySchema,
      response: { 200: AuditPageSchema, ...authErrors },
    },
  }, async (request) => {
    const q = request.query
    return await broker.audit.page({ ...q, since: ms('since', q.since), until: ms('until', q.until) }, q.limit ?? 100, q.cursor)
  })

  app.get('/v1/audit/export', {
    onRequest: app.authenticate('audit:read'),
    schema: {
      summary: 'Export the audit trail as NDJSON, oldest first (for a SIEM)',
      tags: ['audit'],
      security: [{ bearer: [] }],
      querystring: AuditExportQuerySchema,
      produces: ['application/x-ndjson'],
      response: { 200: Type.String({ description: 'One AuditEvent JSON object per line' }), ...authErrors },
    },
  }, async (request, reply) => {
    const q = request.query
    const events = broker.audit.export({ ...q, since: ms('since', q.since), until: ms('until', q.until) })
    // Read the first chunk before answering, so a Redis failure is still a clean JSON error.
    const first = await events.next()
    async function * lines (): AsyncGenerator<string> {
      if (first.done === true) return
      yield JSON.stringify(first.value) + '\n'
      for await (const e of events) yield JSON.stringify(e) + '\n'
    }
    const { Readable } = await import('node:stream')
    return await reply.type('application/x-ndjson').send(Readable.from(lines()))
  })

  app.post('/v1/audit/trace', {
    onRequest: app.authenticate('audit:read'),
    schema: {
      summary: 'Who held this token? Finds the events for a token value by its fingerprint',
      description: 'The token is hashed on arrival (HMAC under a key derived from BROKER_SECRET); it is never stored or logged.',
      tags: ['audit'],
      security: [{ bearer: [] }],
      body: TraceBodySchema,
      response: { 200: TraceResultSchema, ...authErrors },
    },
  }, async (request) => {
    // Under every known secret: a token minted before a BROKER_SECRET rotation keeps its old fingerprint.
    const fingerprints = broker.store.fingerprints(request.body.token)
    // The holder comes from the index written at mint (kept for AUDIT_RETENTION), so it is found
    // however many events were written since; the events are the newest that mention it.
    const held = await broker.store.holder(fingerprints)
    const { events } = await broker.audit.page(held === undefined ? { fingerprint: fingerprints } : { tokenId: held.tokenId }, 1000)
    const fromEvents = events.find((e) => e.client !== null && e.tokenId !== null && e.server !== null)
    return {
      fingerprint: held?.fingerprint ?? fromEvents?.fingerprint ?? fingerprints[0],
      holder: held !== undefined
        ? { client: held.client, server: held.server, tokenId: held.tokenId }
        : fromEvents === undefined ? null : { client: fromEvents.client!, server: fromEvents.server!, tokenId: fromEvents.tokenId! },
      events,
    }
  })

  app.get('/v1/servers', {
    onRequest: app.authenticate('server:read'),
    schema: {
      summary: 'The PMS servers the broker serves, with their probed state',
      tags: ['servers'],
      security: [{ bearer: [] }],
      response: { 200: Type.Object({ servers: Type.Array(ServerInfoSchema) }), ...authErrors },
    },
  }, async () => {
    const servers = []
    for (const s of broker.servers.values()) {
      const st = await broker.states.get(s.name)
      const active = await broker.store.activeClients(s.name, broker.config.tokenLifetimeMs)
      servers.push({
        name: s.name,
        url: s.url,
        machineIdentifier: st.machineIdentifier,
        version: st.version,
        state: st.state,
        lastProbeAt: iso(st.lastProbeAt),
        lastRestartAt: iso(st.lastRestartAt),
        activeTokens: active.length,
        vulnerable: isVulnerable(st.version),
        adminToken: { state: st.adminToken, checkedAt: iso(st.adminCheckedAt), source: s.tokenSource },
      })
    }
    return { servers }
  })

  app.post('/v1/servers/:name/rotate', {
    onRequest: app.authenticate('server:rotate'),
    schema: {
      summary: 'Rotate every active token of a server now',
      description: 'Queues one rotation per active client; answers before they run.',
      tags: ['servers'],
      security: [{ bearer: [] }],
      params: ServerParamsSchema,
      response: { 202: RotateResultSchema, 404: { $ref: 'Error#' }, ...authErrors },
    },
  }, async (request, reply) => {
    const name = request.params.name
    if (!broker.servers.has(name)) throw notFound(`No server named "${name}".`)
    const clients = await broker.store.activeClients(name, broker.config.tokenLifetimeMs)
    const jobs: Array<{ name: string, data: { tokenId: string, reason: 'manual' }, opts: { jobId: string } }> = []
    for (const client of clients) {
      const tokenId = await broker.store.peek(client, name)
      if (tokenId !== undefined) jobs.push({ name: 'rotate', data: { tokenId, reason: 'manual' }, opts: { jobId: rotateJobId(tokenId) } })
    }
    await broker.store.call(() => broker.queues.tokens.addBulk(jobs))
    await broker.store.audit({ action: 'server.rotate', server: name, detail: { actor: request.client!.id, tokens: jobs.length } },
      requestContext(request))
    return await reply.code(202).send({ rotating: jobs.length })
  })
}
