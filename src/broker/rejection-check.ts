import type { Logger } from 'pino'
import type { ServerConfig } from '../config/index.ts'
import { describe, notFound } from '../errors.ts'
import type { JobProducer } from '../jobs/producer.ts'
import type { Metrics } from '../metrics.ts'
import type { PlexClient } from '../plex/client.ts'
import type { RequestContext } from './audit-writer.ts'
import { type IssueResult, type TokenIssuer, upstreamError } from './issuer.ts'
import type { Meter } from './rate-limiter.ts'
import type { TokenStore } from './token-store.ts'

export interface RejectionCheckOptions {
  store: TokenStore
  plex: PlexClient
  issuer: TokenIssuer
  /** A confirmed rejection hints that PMS restarted: a probe of the server is queued now. */
  jobs: JobProducer
  /** Invalidations of confirmed rejections. */
  metrics: Metrics
  logger: Logger
}

/**
 * A client says PMS answered 401 to its token. The broker checks that token itself and only
 * replaces it when PMS really rejects it: a client cannot force mints. Reports that arrive while a
 * check of the same token is in flight share its answer (single flight); a report that arrives
 * after it gets a check of its own, because PMS may have killed the token since (a restart, a
 * sign-out): a "still valid" answer must not outlive the call that produced it. Reports cannot
 * hammer PMS: each client's rate limit and PLEX_CONCURRENCY bound the checks.
 */
export class RejectionCheck {
  readonly #o: RejectionCheckOptions
  readonly #inFlight = new Map<string, Promise<'valid' | 'rejected'>>()

  constructor (opts: RejectionCheckOptions) {
    this.#o = opts
  }

  /** `meter`: the request's count against its client's limit, counted before anything else (a report costs a PMS check). */
  async report (client: string, server: ServerConfig, tokenId: string, ctx: RequestContext, { meter }: { meter?: Meter } = {}): Promise<IssueResult> {
    await meter?.count()
    const record = await this.#o.store.get(tokenId)
    if (record === undefined || record.client !== client || record.server !== server.name) {
      throw notFound('No such token for this client and server.')
    }
    if (record.state === 'active' || record.state === 'rotated') {
      let check = this.#inFlight.get(tokenId)
      if (check === undefined) {
        check = this.#verdict(server, tokenId).finally(() => this.#inFlight.delete(tokenId))
        this.#inFlight.set(tokenId, check)
      }
      if (await check === 'rejected') {
        await this.#o.store.retire({ tokenId }, 'invalidated', 'token.invalidate',
          { reason: 'rejected_by_pms', reportedBy: client }, ctx)
        this.#o.logger.info({ client, server: server.name, tokenId }, 'reported token confirmed dead at PMS; invalidated')
        this.#o.metrics.invalidations.inc({ server: server.name, reason: 'rejected' })
        this.#o.jobs.probeNow(server.name, 'rejection').catch((err: unknown) => this.#o.logger.warn({ err: describe(err) }, 'could not queue a probe'))
      }
    }
    // A token minted now replaces the one PMS rejected: streams announce it as `replaced`.
    return await this.#o.issuer.issue(client, server, ctx, { reason: 'replaced' })
  }

  async #verdict (server: ServerConfig, tokenId: string): Promise<'valid' | 'rejected'> {
    const token = await this.#o.store.reveal(tokenId)
    if (token === undefined) return 'rejected'
    try {
      return await this.#o.plex.checkToken(server, token)
    } catch (err) {
      throw upstreamError(server.name, err)
    }
  }
}
