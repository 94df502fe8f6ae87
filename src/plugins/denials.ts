import type { FastifyRequest } from 'fastify'
import type { TokenStore } from '../broker/token-store.ts'
import type { Metrics } from '../metrics.ts'
import { describe } from './error-handler.ts'
import { requestContext } from './request-identity.ts'

export type DenialReason = 'missing_credential' | 'unknown_secret' | 'missing_scope' | 'forbidden_server' | 'forbidden_source' | 'metrics_token'

/**
 * Records a refused request: a log line, `ptb_auth_failures_total{reason}` and an `auth.denied`
 * audit event. Never throws: the refusal itself must go out even when Redis is down.
 */
export class Denials {
  readonly #store: TokenStore
  readonly #metrics: Metrics

  constructor (store: TokenStore, metrics: Metrics) {
    this.#store = store
    this.#metrics = metrics
  }

  record (request: FastifyRequest, reason: DenialReason | string, client?: string, detail?: Record<string, unknown>): void {
    request.log.info({ reason, client }, 'request denied')
    this.#metrics.authFailures.inc({ reason })
    this.#store.audit({ action: 'auth.denied', client, detail: { reason, route: request.routeOptions.url, ...detail } },
      requestContext(request)).catch((err: unknown) => request.log.warn({ err: describe(err) }, 'audit write failed'))
  }

  /** A failure counted but not audited (the failed-authentication throttle decided so). */
  counted (reason: string): void {
    this.#metrics.authFailures.inc({ reason })
  }
}
