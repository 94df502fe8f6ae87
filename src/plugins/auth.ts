import type { FastifyInstance, FastifyReply, FastifyRequest, onRequestAsyncHookHandler } from 'fastify'
import fp from 'fastify-plugin'
import type { ClientConfig, Scope } from '../config/index.ts'
import { digestEquals, sha256 } from '../broker/crypto.ts'
import { hasScope, type Refusal, refusals } from '../broker/policy.ts'
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
     * The request counts against its client's limit before any permission is checked (a 429 then
     * comes before a 403). `countedBy: 'serve'`: the route hands `request.meter` to the issuer,
     * whose serve script counts it in the hot path's one Redis round trip; a refusal before that
     * counts it first, and so does the answer if nothing did.
     */
    authenticate: (scope: Scope | Scope[], opts?: { countedBy?: 'serve' }) => onRequestAsyncHookHandler
    /**
     * Refuses an authenticated request with the policy's refusal (broker/policy.ts): counted
     * against the client's limit first (over it: 429, and no audit event), then recorded in the
     * refusals trail (once per client, reason and window, with a count), then 403.
     */
    refuse: (request: FastifyRequest, refusal: Refusal) => Promise<never>
  }
}

export type { DenialReason }
/** The reasons a request fails authentication itself (no valid secret, or a wrong METRICS_TOKEN). */
export type AuthFailureReason = Extract<DenialReason, 'missing_credential' | 'unknown_secret' | 'metrics_token'>

export interface AuthOptions {
  clients: readonly ClientConfig[]
  /**
   * Where refusals go (plugins/denials.ts): `record` counts one and puts it in the refusals trail,
   * `throttled` writes the event of an address that just became throttled, `counted` counts a
   * failure with no event of its own. None throws.
   */
  denials: Pick<Denials, 'record' | 'throttled' | 'counted'>
  /** The failed-authentication throttle per address and the per-client limit. */
  limits?: Pick<Limits, 'authFailure' | 'meter'>
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
  app.decorate('authenticate', (scope: Scope | Scope[], how: { countedBy?: 'serve' } = {}) => async function authenticate (request: FastifyRequest, _reply: FastifyReply) {
    const secret = bearer(request)
    const client = secret === undefined ? undefined : findClient(secret)
    if (client === undefined) return await refuse(request, secret === undefined ? 'missing_credential' : 'unknown_secret')
    // A valid secret is authenticated whatever else its address sent: services share addresses
    // (one host, a NAT, a sidecar, an ingress), and a neighbour's failures must not lock them out.
    // Secrets are 256-bit, so guessing one is not what the failure throttle guards against.
    request.client = client
    if (limits !== undefined) {
      request.meter = limits.meter(client)
      if (how.countedBy !== 'serve') await request.meter.count()
    }
    if (!hasScope(client, scope)) await app.refuse(request, refusals.scope(client, scope))
  })

  app.decorate('refuse', async (request: FastifyRequest, refusal: Refusal): Promise<never> => {
    // Refusals count against the client's limit: a client flooding requests it may not make gets
    // 429s, which are not audited, instead of filling the trail.
    await request.meter?.count()
    opts.denials.record(request, refusal.reason, request.client?.id, refusal.detail)
    throw forbidden(refusal.message)
  })

  async function refuse (request: FastifyRequest, reason: AuthFailureReason): Promise<never> {
    return await refuseFailedAuthentication(request, reason, opts,
      reason === 'missing_credential' ? 'Missing bearer credential: send Authorization: Bearer <client secret>.' : 'Unknown client credential.')
  }
}

/**
 * A failed authentication (a missing or unknown secret, a wrong METRICS_TOKEN): 401, or 429 once
 * its address has failed too often in the current window. The refusals trail gets the first
 * failure of an address and reason in a window at once, one event when the address becomes
 * throttled (detail.throttled), and the count of all the others in one event when the window
 * closes: a flood of bad secrets costs the trail a few events per address and window, in a stream
 * of their own. A failure the throttle could not count (Redis too slow or down) is a 401, added to
 * its window's count without an event of its own. Metrics count every failure.
 */
export async function refuseFailedAuthentication (request: FastifyRequest, reason: AuthFailureReason,
  opts: Pick<AuthOptions, 'denials' | 'limits'>, message: string): Promise<never> {
  const verdict = await opts.limits?.authFailure(request)
  if (verdict?.throttled === true) {
    if (verdict.becameThrottled) {
      opts.denials.throttled(request, reason, { throttled: true, limit: verdict.max, windowMs: verdict.windowMs, retryAfter: verdict.retryAfter })
    } else {
      opts.denials.counted(reason, request)
    }
    throw new BrokerError('RATE_LIMITED', 'Too many failed authentications from this address; retry later.', { retryAfter: verdict.retryAfter })
  }
  // The throttle could not count it (Redis too slow or down): still in the trail's window count,
  // so the counts of the auth.denied events add up to every failure once Redis answers again.
  if (verdict?.counted === false) opts.denials.counted(reason, request)
  else opts.denials.record(request, reason)
  throw unauthenticated(message, bearer(request) !== undefined)
}

export default fp(auth, { name: 'auth' })
