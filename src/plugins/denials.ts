import type { FastifyRequest } from 'fastify'
import { normalizeIP } from '@fastify/rate-limit'
import type { DenialReason } from '../broker/policy.ts'
import type { Refused, RefusalTrail } from '../broker/refusal-trail.ts'
import type { Metrics } from '../metrics.ts'
import { requestContext } from './request-identity.ts'

export type { DenialReason }

/**
 * The address a request's failures and refusals are counted for. IPv6 addresses count per /64
 * (what one host or one customer usually holds), so an attacker cannot step through a subnet to
 * get a fresh allowance (and fresh audit events) per address.
 */
export function addressOf (request: FastifyRequest): string {
  return normalizeIP(request.ip)
}

/**
 * Records refused requests: a log line, `ptb_auth_failures_total{reason}`, and the refusals trail
 * (broker/refusal-trail.ts: the first of a client or address and reason per window written at
 * once, the rest counted into one event). Never throws: the refusal itself must go out even when
 * Redis is down.
 */
export class Denials {
  readonly #trail: Pick<RefusalTrail, 'record' | 'count' | 'now'>
  readonly #metrics: Metrics

  constructor (trail: Pick<RefusalTrail, 'record' | 'count' | 'now'>, metrics: Metrics) {
    this.#trail = trail
    this.#metrics = metrics
  }

  /** A refusal: counted, and audited once per window with the count of the others. */
  record (request: FastifyRequest, reason: DenialReason, client?: string, detail?: Record<string, unknown>): void {
    request.log.info({ reason, client }, 'request denied')
    this.#metrics.authFailures.inc({ reason })
    this.#trail.record(this.#refused(request, reason, client, detail))
  }

  /** The failure that made its address throttled: one event of its own, written at once. */
  throttled (request: FastifyRequest, reason: DenialReason, detail: Record<string, unknown>): void {
    request.log.info({ reason }, 'request denied; address throttled')
    this.#metrics.authFailures.inc({ reason })
    this.#trail.now(this.#refused(request, reason, undefined, detail))
  }

  /**
   * A failure with no event of its own. With `request` (a throttled address, or a failure the
   * throttle could not count because Redis was too slow or down): added to its window's count.
   * Without: metrics only.
   */
  counted (reason: DenialReason, request?: FastifyRequest): void {
    this.#metrics.authFailures.inc({ reason })
    if (request !== undefined) this.#trail.count(this.#refused(request, reason))
  }

  #refused (request: FastifyRequest, reason: DenialReason, client?: string, detail?: Record<string, unknown>): Refused {
    return {
      reason,
      subject: client ?? addressOf(request),
      client,
      detail: { route: request.routeOptions.url, ...detail },
      ctx: requestContext(request),
    }
  }
}
