import type { FastifyInstance, FastifyReply, FastifyRequest, onRequestAsyncHookHandler } from 'fastify'
import fp from 'fastify-plugin'
import type { ClientConfig, Scope } from '../config/index.ts'
import { digestEquals, sha256 } from '../broker/crypto.ts'
import { BrokerError, forbidden, unauthenticated } from '../errors.ts'
import type { Limits } from './rate-limits.ts'
import type { DenialReason, Denials } from './denials.ts'

declare module 'fastify' {
  interface FastifyRequest {
    /** The authenticated client, set by the `authenticate` hook. */
    client: ClientConfig | null
  }
  interface FastifyInstance {
    /**
     * An `onRequest` hook: a known bearer secret holding the scope (or one of the scopes), else
     * 401/403. It runs before the body is parsed and validated, so a caller without credentials or
     * scope learns nothing about the body the route expects (use it as the route's `onRequest`).
     * The client's rate limit is applied here too, unless `clientLimit: false`: then the route
     * counts it itself (the hot path counts it inside its one Redis script).
     */
    authenticate: (scope: Scope | Scope[], opts?: { clientLimit?: boolean }) => onRequestAsyncHookHandler
  }
}

export type { DenialReason }
/** The reasons a request fails authentication itself (no valid secret, or a wrong METRICS_TOKEN). */
export type AuthFailureReason = Extract<DenialReason, 'missing_credential' | 'unknown_secret' | 'metrics_token'>

export interface AuthOptions {
  clients: readonly ClientConfig[]
  /**
   * Where refusals go (plugins/denials.ts): `record` audits and counts one, `counted` only counts a
   * failed authentication whose address is throttled, or that the throttle could not count (Redis
   * too slow or down). Neither throws.
   */
  denials: Pick<Denials, 'record' | 'counted'>
  /** The failed-authentication throttle per address and the per-client limit. */
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
  app.decorate('authenticate', (scope: Scope | Scope[], how: { clientLimit?: boolean } = {}) => async function authenticate (request: FastifyRequest, reply: FastifyReply) {
    const secret = bearer(request)
    const client = secret === undefined ? undefined : findClient(secret)
    if (client === undefined) return await refuse(request, secret === undefined ? 'missing_credential' : 'unknown_secret')
    // A valid secret is authenticated whatever else its address sent: services share addresses
    // (one host, a NAT, a sidecar, an ingress), and a neighbour's failures must not lock them out.
    // Secrets are 256-bit, so guessing one is not what the failure throttle guards against.
    request.client = client
    if (how.clientLimit !== false) await limits?.client(request, reply)
    const wanted = Array.isArray(scope) ? scope : [scope]
    if (!wanted.some((s) => client.scopes.includes(s))) {
      opts.denials.record(request, 'missing_scope', client.id, { scope: wanted.join(' or ') })
      throw forbidden(`Client "${client.id}" lacks the scope ${wanted.join(' or ')}.`)
    }
  })

  async function refuse (request: FastifyRequest, reason: AuthFailureReason): Promise<never> {
    return await refuseFailedAuthentication(request, reason, opts,
      reason === 'missing_credential' ? 'Missing bearer credential: send Authorization: Bearer <client secret>.' : 'Unknown client credential.')
  }
}

/**
 * A failed authentication (a missing or unknown secret, a wrong METRICS_TOKEN): 401, or 429 once
 * its address has failed too often in the current window. The audit trail gets each failure up to
 * the limit, then one event when the address becomes throttled (detail.throttled), never one per
 * throttled request: a flood of bad secrets costs the trail at most `max + 1` events per address
 * and window, so it cannot push real history out of the capped trail. A failure the throttle could
 * not count (Redis too slow or down) is a 401 but is not audited either, since nothing would
 * bound it. Metrics count every failure.
 */
export async function refuseFailedAuthentication (request: FastifyRequest, reason: AuthFailureReason,
  opts: Pick<AuthOptions, 'denials' | 'limits'>, message: string): Promise<never> {
  const verdict = await opts.limits?.authFailure(request)
  if (verdict?.throttled === true) {
    if (verdict.becameThrottled) {
      opts.denials.record(request, reason, undefined, { throttled: true, limit: verdict.max, windowMs: verdict.windowMs, retryAfter: verdict.retryAfter })
    } else {
      opts.denials.counted(reason)
    }
    throw new BrokerError('RATE_LIMITED', 'Too many failed authentications from this address; retry later.', { retryAfter: verdict.retryAfter })
  }
  if (verdict?.counted === false) opts.denials.counted(reason)
  else opts.denials.record(request, reason)
  throw unauthenticated(message, bearer(request) !== undefined)
}

/** Whether a client may ask for tokens of this server. */
export function mayUseServer (client: ClientConfig, server: string): boolean {
  return client.servers === '*' || client.servers.includes(server)
}

export default fp(auth, { name: 'auth' })
