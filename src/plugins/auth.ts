import type { FastifyInstance, FastifyReply, FastifyRequest, preHandlerAsyncHookHandler } from 'fastify'
import fp from 'fastify-plugin'
import type { ClientConfig, Scope } from '../config.ts'
import { digestEquals, sha256 } from '../broker/crypto.ts'
import { forbidden, unauthenticated } from '../errors.ts'
import type { Limits } from './rate-limits.ts'

declare module 'fastify' {
  interface FastifyRequest {
    /** The authenticated client, set by the `authenticate` pre-handler. */
    client: ClientConfig | null
  }
  interface FastifyInstance {
    /** Pre-handler: a known bearer secret holding the scope (or one of the scopes), else 401/403. */
    authenticate: (scope: Scope | Scope[]) => preHandlerAsyncHookHandler
  }
}

export type DenialReason = 'missing_credential' | 'unknown_secret' | 'missing_scope' | 'forbidden_server' | 'forbidden_source'

export interface AuthOptions {
  clients: readonly ClientConfig[]
  /** Audit and count a denial. Must not throw. */
  onDenied: (request: FastifyRequest, reason: DenialReason, client?: string, detail?: Record<string, unknown>) => void
  /** Brute-force protection per IP and the per-client limit, applied around authentication. */
  limits?: Limits
}

/**
 * Finds the client whose secret this is: SHA-256 of the presented secret, looked up by digest,
 * then confirmed with a constant-time comparison. The lookup is O(1) however many clients there
 * are (a scan over 50,000 digests per request would be the bottleneck). Its timing can only
 * reveal something about a SHA-256 digest, which says nothing usable about any secret.
 */
export function clientIndex (clients: readonly ClientConfig[]): (secret: string) => ClientConfig | undefined {
  const byDigest = new Map(clients.map((c) => [c.secretSha256.toString('hex'), c]))
  return (secret) => {
    const digest = sha256(secret)
    const c = byDigest.get(digest.toString('hex'))
    return c !== undefined && digestEquals(digest, c.secretSha256) ? c : undefined
  }
}

export function bearer (request: FastifyRequest): string | undefined {
  const h = request.headers.authorization
  if (typeof h !== 'string') return undefined
  const m = /^Bearer\s+(\S{1,512})\s*$/i.exec(h)
  return m?.[1]
}

async function auth (app: FastifyInstance, opts: AuthOptions): Promise<void> {
  app.decorateRequest('client', null)
  const { limits } = opts
  const findClient = clientIndex(opts.clients)
  app.decorate('authenticate', (scope: Scope | Scope[]) => async function authenticate (request: FastifyRequest, reply: FastifyReply) {
    const secret = bearer(request)
    const client = secret === undefined ? undefined : findClient(secret)
    if (client === undefined) {
      // An address that failed too often is refused before its secret is even looked at.
      await limits?.checkAuthFailures(request)
      opts.onDenied(request, secret === undefined ? 'missing_credential' : 'unknown_secret')
      await limits?.recordAuthFailure(request)
      throw unauthenticated(secret === undefined ? 'Missing bearer credential: send Authorization: Bearer <client secret>.' : 'Unknown client credential.')
    }
    request.client = client
    // A known secret from a blocked address is refused too (a correct guess is not confirmed).
    // Both checks go to Redis in one pipelined round trip rather than two.
    await Promise.all([limits?.checkAuthFailures(request), limits?.client(request, reply)])
    const wanted = Array.isArray(scope) ? scope : [scope]
    if (!wanted.some((s) => client.scopes.includes(s))) {
      opts.onDenied(request, 'missing_scope', client.id, { scope: wanted.join(' or ') })
      throw forbidden(`Client "${client.id}" lacks the scope ${wanted.join(' or ')}.`)
    }
  })
}

/** Whether a client may ask for tokens of this server. */
export function mayUseServer (client: ClientConfig, server: string): boolean {
  return client.servers === '*' || client.servers.includes(server)
}

export default fp(auth, { name: 'auth' })
