import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { ServerConfig } from '../config/index.ts'
import { canUseServer, refusals } from '../broker/policy.ts'
import type { ServedToken } from '../broker/tokens.ts'
import type { IssuedToken } from '../schemas/tokens.ts'
import { notFound } from '../errors.ts'

const isoCache = new Map<number, string>()

/**
 * A time as ISO 8601. A token's three times repeat on every cache hit, so the strings are kept
 * (a bounded memo, cleared when full): formatting dates was 1.6 % of the hot path's profile.
 */
export function iso (ms: number): string {
  let s = isoCache.get(ms)
  if (s === undefined) {
    if (isoCache.size >= 4096) isoCache.clear()
    s = new Date(ms).toISOString()
    isoCache.set(ms, s)
  }
  return s
}

/** A client's token as POST /v1/tokens answers it and the push channel's `token` event carries it. */
export function issuedTokenBody (server: ServerConfig, t: ServedToken): IssuedToken {
  return {
    tokenId: t.tokenId,
    token: t.token,
    server: { name: server.name, machineIdentifier: t.machineIdentifier },
    issuedAt: iso(t.issuedAt),
    renewAt: iso(t.renewAt),
    expiresAt: iso(t.expiresAt),
  }
}

/**
 * The server a route asks for, after asking the policy whether the client may use it (refused:
 * counted, recorded, 403) and checking that it exists (404). The permission comes first, so a
 * client cannot probe which server names exist outside its list.
 */
export async function requireServer (app: FastifyInstance, request: FastifyRequest, name: string): Promise<ServerConfig> {
  const client = request.client!
  if (!canUseServer(client, name)) await app.refuse(request, refusals.server(client, name))
  const server = app.broker.servers.get(name)
  if (server === undefined) throw notFound(`No server named "${name}".`)
  return server
}
