import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import type { RetireSelector } from '../broker/tokens.ts'
import { parseRevokeSelector, type SelectorKind } from '../broker/revoke-selector.ts'
import { isVulnerable } from '../broker/server-state.ts'
import { canSeeAuditOf, canUseServer, refusals, revocationScope } from '../broker/policy.ts'
import { badRequest } from '../errors.ts'
import { requireServer } from './common.ts'
import { requestContext } from '../plugins/request-identity.ts'
import { authErrors, bodyErrors, errorResponse } from '../schemas/common.ts'
import {
  AuditExportQuerySchema, AuditPageSchema, AuditQuerySchema, RevokeBodySchema, RevokeResultSchema, RotateResultSchema,
  ServerInfoSchema, ServerParamsSchema, TraceBodySchema, TraceResultSchema,
} from '../schemas/ops.ts'
import type { Services } from '../services.ts'

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
  // Typed as the service graph itself (not only through Fastify's decorator), so a call on it leads
  // straight to its class.
  const broker: Services = app.broker

  app.post('/v1/revoke', {
    onRequest: app.authenticate('token:revoke'),
    schema: {
      operationId: 'revokeTokens',
      summary: 'Revoke tokens: one, per client, per server, per client and server, or all',
      description: 'Revoked tokens are never served again, by any broker instance; the client\'s next request mints a new token. ' +
        'PMS has no call to kill a transient token: it stays valid at PMS until `upstreamStillValidUntil` or the next PMS restart. ' +
        'To cut a leaked token off at once, revoke it, then restart PMS (the broker recovers by itself).',
      tags: ['ops'],
      security: [{ bearer: [] }],
      body: RevokeBodySchema,
      response: { 200: RevokeResultSchema, ...authErrors, ...bodyErrors },
    },
  }, async (request) => {
    const { reason } = request.body
    const caller = request.client!
    const { selector, kind } = parseRevokeSelector(request.body)
    const selectors = await scoped(request, selector, kind)
    let count = 0
    let latestExpiresAt = 0
    for (const sel of selectors) {
      const r = await broker.store.retire(sel, 'revoked', 'token.revoke',
        { reason, actor: caller.id, selector: kind }, requestContext(request))
      count += r.count
      latestExpiresAt = Math.max(latestExpiresAt, r.latestExpiresAt)
    }
    broker.metrics.revocations.inc({ selector: kind }, count)
    request.log.info({ selector: kind, revoked: count, actor: caller.id }, 'tokens revoked')
    return { revoked: count, upstreamStillValidUntil: count === 0 ? null : iso(latestExpiresAt) }
  })

  /** The selectors a revocation may touch (policy.ts `revocationScope`); refused: counted, recorded, 403. */
  async function scoped (request: FastifyRequest, selector: RetireSelector, kind: SelectorKind): Promise<RetireSelector[]> {
    // A token id is weighed by the server of its token (an unknown id: no server, nothing matches).
    const tokenServer = 'tokenId' in selector ? (await broker.store.get(selector.tokenId))?.server : undefined
    const scope = revocationScope(request.client!, selector, kind, tokenServer)
    if ('refusal' in scope) return await app.refuse(request, scope.refusal)
    return scope.selectors
  }

  app.get('/v1/audit', {
    onRequest: app.authenticate('audit:read'),
    schema: {
      operationId: 'listAudit',
      summary: 'Read the audit trail, newest first',
      description: 'Filters combine with AND. Pass `next` back as `cursor` for the following page. ' +
        'A caller limited to some servers sees only events of those servers (not events without a server); `server` outside its list is 403.',
      tags: ['audit'],
      security: [{ bearer: [] }],
      querystring: AuditQuerySchema,
      response: { 200: AuditPageSchema, ...authErrors },
    },
  }, async (request) => {
    const q = request.query
    return await broker.audit.page({ ...q, since: ms('since', q.since), until: ms('until', q.until), visible: await auditScope(request, q.server) }, q.limit ?? 100, q.cursor)
  })

  app.get('/v1/audit/export', {
    onRequest: app.authenticate('audit:read'),
    schema: {
      operationId: 'exportAudit',
      summary: 'Export the audit trail as NDJSON, oldest first (for a SIEM)',
      description: 'A caller limited to some servers gets only events of those servers.',
      tags: ['audit'],
      security: [{ bearer: [] }],
      querystring: AuditExportQuerySchema,
      produces: ['application/x-ndjson'],
      response: { 200: Type.String({ description: 'One AuditEvent JSON object per line' }), ...authErrors },
    },
  }, async (request, reply) => {
    const q = request.query
    const events = broker.audit.export({ ...q, since: ms('since', q.since), until: ms('until', q.until), visible: await auditScope(request, q.server) })
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
      operationId: 'traceToken',
      summary: 'Who held this token? Finds the events for a token value by its fingerprint',
      description: 'The token is hashed on arrival (HMAC under a key derived from BROKER_SECRET); it is never stored or logged. ' +
        'A caller limited to some servers gets a token of another server answered like an unknown one.',
      tags: ['audit'],
      security: [{ bearer: [] }],
      body: TraceBodySchema,
      response: { 200: TraceResultSchema, ...authErrors, ...bodyErrors },
    },
  }, async (request) => {
    // Under every known secret: a token minted before a BROKER_SECRET rotation keeps its old fingerprint.
    const fingerprints = broker.sealer.fingerprints(request.body.token)
    const visible = await auditScope(request)
    // The holder comes from the index written at mint (kept for AUDIT_RETENTION), so it is found
    // however many events were written since; the events are the newest that mention it.
    // A holder on a server outside a limited caller's list answers like an unknown token.
    const found = await broker.audit.holder(fingerprints)
    const held = found !== undefined && visible(found.server) ? found : undefined
    if (found !== undefined && held === undefined) return { fingerprint: fingerprints[0], holder: null, events: [] }
    const { events } = await broker.audit.page(held === undefined ? { fingerprint: fingerprints, visible } : { tokenId: held.tokenId, visible }, 1000)
    const fromEvents = events.find((e) => e.client !== null && e.tokenId !== null && e.server !== null)
    return {
      fingerprint: held?.fingerprint ?? fromEvents?.fingerprint ?? fingerprints[0],
      holder: held !== undefined
        ? { client: held.client, server: held.server, tokenId: held.tokenId }
        : fromEvents === undefined ? null : { client: fromEvents.client!, server: fromEvents.server!, tokenId: fromEvents.tokenId! },
      events,
    }
  })

  /**
   * Which audit events the caller sees (policy.ts `canSeeAuditOf`). Asking for a server outside
   * its list by name is refused (403).
   */
  async function auditScope (request: FastifyRequest, server?: string): Promise<(server: string | null) => boolean> {
    const caller = request.client!
    if (server !== undefined && !canSeeAuditOf(caller, server)) await app.refuse(request, refusals.server(caller, server))
    return (s) => canSeeAuditOf(caller, s)
  }

  app.get('/v1/servers', {
    onRequest: app.authenticate('server:read'),
    schema: {
      operationId: 'listServers',
      summary: 'The PMS servers the broker serves, with their probed state (only those in the caller\'s servers list)',
      tags: ['servers'],
      security: [{ bearer: [] }],
      response: { 200: Type.Object({ servers: Type.Array(ServerInfoSchema) }, { description: 'The servers, in config order' }), ...authErrors },
    },
  }, async (request) => {
    const servers = []
    for (const s of broker.servers.values()) {
      if (!canUseServer(request.client!, s.name)) continue
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
      operationId: 'rotateServer',
      summary: 'Rotate every active token of a server now',
      description: 'Queues one rotation per active client; answers before they run.',
      tags: ['servers'],
      security: [{ bearer: [] }],
      params: ServerParamsSchema,
      response: { 202: RotateResultSchema, 404: errorResponse('`NOT_FOUND`: no server with this name'), ...authErrors },
    },
  }, async (request, reply) => {
    // 403 for a server outside the caller's list (before the 404, so names are not probed).
    const name = (await requireServer(app, request, request.params.name)).name
    const clients = await broker.store.activeClients(name, broker.config.tokenLifetimeMs)
    const jobs: Array<{ tokenId: string, reason: 'manual' }> = []
    for (const client of clients) {
      const tokenId = await broker.store.peek(client, name)
      if (tokenId !== undefined) jobs.push({ tokenId, reason: 'manual' })
    }
    await broker.rc.call(() => broker.jobs.rotate(jobs))
    await broker.auditWriter.write({ action: 'server.rotate', server: name, detail: { actor: request.client!.id, tokens: jobs.length } },
      requestContext(request))
    return await reply.code(202).send({ rotating: jobs.length })
  })
}
