import { setTimeout as sleep } from 'node:timers/promises'
import type { Logger } from 'pino'
import type { RedisContext } from './keys.ts'
import type { ServerConfig } from '../config/index.ts'
import { BrokerError } from '../errors.ts'
import type { Metrics } from '../metrics.ts'
import { PlexBadResponseError, type PlexClient, PlexNotFoundError, PlexRejectedError, PlexUnavailableError } from '../plex/client.ts'
import type { RequestContext } from './audit-writer.ts'
import type { Clock } from './clock.ts'
import type { Locks } from './locks.ts'
import type { Meter } from './rate-limiter.ts'
import type { TokenReason } from './push-log.ts'
import type { AdminTokenHealth } from './admin-token-health.ts'
import type { ServerStates } from './server-state.ts'
import type { TokenStore } from './token-store.ts'
import { type ServedToken, slotKey, type TokenAudit } from './tokens.ts'

export interface IssuerOptions {
  store: TokenStore
  /** Redis, its keys and the deadline wrapper (keys.ts RedisContext). */
  rc: RedisContext
  /** The mint lock. */
  locks: Locks
  clock: Clock
  plex: PlexClient
  logger: Logger
  tokenLifetimeMs: number
  tokenRenewAfterMs: number
  /**
   * Fraction of TOKEN_RENEW_AFTER by which each token's renewAt is brought forward at random
   * (default 0.1), so tokens minted together (a herd, a restart re-mint) do not renew together.
   */
  renewJitter?: number
  /** Longest a request waits for another mint of the same (client, server) before answering 503. */
  mintWaitMs: number
  /**
   * Mint lock lifetime: short enough that a crashed holder does not block for long. A live holder
   * renews it every third of this while it mints (a mint can outlast it: the machineIdentifier
   * lookup, the mint, their retries and the wait for a free PMS slot), so it never expires under
   * a mint in progress and another instance never mints the same token twice.
   */
  lockTtlMs: number
  /** Longest a holder keeps renewing the mint lock; after that it lapses. Default 10 × lockTtlMs. */
  maxLockHoldMs?: number
  /** The server hash: what a mint needs in one read (`mintFacts`), and the machineIdentifier (asked of PMS once when unknown). */
  states: ServerStates
  /**
   * The admin-token verdict: a token known to be rejected fails fast without calling PMS; one PMS
   * rejects during a mint is recorded before the client gets its 502, so its next request is
   * already blocked.
   */
  adminHealth: AdminTokenHealth
  /** Every upstream mint attempt and its result (`ptb_mints_total`). */
  metrics: Metrics
  /** Called when a served token is past its renewAt: the rotation job was lost or is failing. */
  onOverdue?: (client: string, server: string, tokenId: string) => void
}

/** What `issue` hands back: the served token and where it came from (the HTTP answer is schemas/tokens.ts IssuedToken). */
export type IssueResult = ServedToken & {
  source: 'cache' | 'upstream'
}

export interface IssueOptions {
  /** A source PMS knows (`server://…`, `provider://…`) instead of a PMS token. */
  target?: string
  /**
   * The request's count against its client's limit, when it was not counted yet: the first serve
   * script counts it (429 `RATE_LIMITED` beyond it), so a cache hit stays one round trip.
   */
  meter?: Meter
  /**
   * What the push channel says of a token minted here (default `issued`; `reminted` when the
   * cached one had to be invalidated first because it could not be opened, `replaced` after a report).
   */
  reason?: TokenReason
}

export interface EnsureOptions {
  /** The audit event of the mint, if it is one (a restart re-mint is a `token.rotate`). */
  audit?: TokenAudit
  target?: string
  /** The push channel's `reason` for the new token (default: from `audit`, push-log.ts tokenReason). */
  reason?: TokenReason
}

export interface MintOptions extends EnsureOptions {
  /** The new token replaces this one only if it is still current (rotation: a compare-and-set). */
  expectCurrent?: string
  ctx?: RequestContext
}

/** Maps a PMS failure to the error a client sees. Never includes a token. */
export function upstreamError (server: string, err: unknown): BrokerError {
  if (err instanceof PlexRejectedError) {
    return new BrokerError('UPSTREAM_REJECTED',
      `PMS "${server}" rejected the broker's admin token. The broker rechecks it and serves tokens again as soon as PMS accepts it ` +
      '(PMS refuses it for a while when it cannot reach plex.tv); if this lasts, ops must replace the server\'s token in the broker configuration (`ptb login`).',
      { cause: err })
  }
  if (err instanceof PlexUnavailableError) {
    return new BrokerError('UPSTREAM_UNAVAILABLE', `PMS "${server}" is unavailable; try again later.`,
      { retryAfter: err.retryAfterSeconds, cause: err })
  }
  if (err instanceof PlexNotFoundError) {
    return new BrokerError('SOURCE_NOT_FOUND', `PMS "${server}" does not know this source.`, { cause: err })
  }
  if (err instanceof PlexBadResponseError) {
    return new BrokerError('UPSTREAM_UNAVAILABLE', `PMS "${server}" sent an unusable answer; try again later.`, { retryAfter: 5, cause: err })
  }
  if (err instanceof BrokerError) return err
  return new BrokerError('INTERNAL', 'Internal error.', { cause: err })
}

/**
 * Issues tokens: serves the cached one when it is live, otherwise mints exactly one upstream.
 * Single-flight has two layers: an in-process map (one waiter per key per process, so a herd of
 * requests costs one Redis lock attempt) and a Redis lock (one mint across every broker process).
 */
export class TokenIssuer {
  readonly #o: IssuerOptions
  readonly #flights = new Map<string, Promise<boolean>>()

  constructor (opts: IssuerOptions) {
    this.#o = opts
  }

  /** The client's current token of `server` (or of a source, `opts.target`): the cached one when live, else a fresh mint. */
  async issue (client: string, server: ServerConfig, ctx: RequestContext, opts: IssueOptions = {}): Promise<IssueResult> {
    const { store } = this.#o
    const { target, meter } = opts
    let reason = opts.reason ?? 'issued'
    // A revocation or invalidation can land between our mint and our read; a few rounds settle it.
    for (let round = 0; round < 3; round++) {
      const counter = round === 0 ? meter?.pending : undefined
      const first = await store.serveCounted(client, server.name, 'cache', ctx, target, counter)
      // Over the limit the script served and audited nothing: this throws the 429.
      if (counter !== undefined) meter?.settle(first.count, first.ttlMs)
      const hit = first.token
      if (hit !== undefined) return this.#checked(client, server.name, hit, 'cache')
      if (first.invalidated === true) reason = 'reminted'
      const key = `${client}\u0000${server.name}\u0000${target ?? ''}`
      let flight = this.#flights.get(key)
      const leader = flight === undefined
      if (flight === undefined) {
        flight = this.ensure(client, server, { target, reason }).finally(() => this.#flights.delete(key))
        this.#flights.set(key, flight)
      }
      const minted = await flight
      // Even the leader reads its fresh token back through `serve` rather than having store.lua hand
      // it out: that costs one Redis round trip on a cold miss (next to a PMS call of several ms),
      // and keeps one place that hands out a token, audits it (fail closed) and checks its owner,
      // state and key id. A revocation landing between the mint and this read is honoured, too.
      const served = await store.serve(client, server.name, leader && minted ? 'upstream' : 'cache', ctx, target)
      if (served !== undefined) return this.#checked(client, server.name, served, leader && minted ? 'upstream' : 'cache')
    }
    throw new BrokerError('UPSTREAM_UNAVAILABLE', 'Could not settle a token for this server; try again.', { retryAfter: 1 })
  }

  #checked (client: string, server: string, t: ServedToken, source: 'cache' | 'upstream'): IssueResult {
    if (this.#o.clock.due(t)) this.#o.onOverdue?.(client, server, t.tokenId)
    return { ...t, source }
  }

  /**
   * Makes sure (client, server) has a live current token, minting one if needed.
   * Returns true when this call minted it.
   */
  async ensure (client: string, server: ServerConfig, opts: EnsureOptions = {}): Promise<boolean> {
    const { store, locks, mintWaitMs, lockTtlMs } = this.#o
    const { target } = opts
    const lockKey = this.#o.rc.keys.mintLock(slotKey(client, target), server.name)
    const deadline = Date.now() + mintWaitMs
    let pause = 20
    while (true) {
      if (await store.peek(client, server.name, target) !== undefined) return false
      const owner = await locks.acquire(lockKey, lockTtlMs)
      if (owner !== undefined) {
        const heartbeat = this.#renew(lockKey, owner, server.name)
        try {
          // Someone may have minted between our peek and our lock.
          if (await store.peek(client, server.name, target) !== undefined) return false
          const stored = await this.mint(client, server, opts)
          return stored !== undefined
        } finally {
          heartbeat.stop()
          await locks.release(lockKey, owner).catch(() => {})
        }
      }
      if (Date.now() >= deadline) {
        throw new BrokerError('UPSTREAM_UNAVAILABLE', `Timed out waiting for a token from PMS "${server.name}".`, { retryAfter: 2 })
      }
      // Waiters poll with jittered, growing pauses: cheap for Redis, quick to notice the mint.
      await sleep(pause + Math.random() * pause)
      pause = Math.min(pause * 2, 200)
    }
  }

  /**
   * Keeps the mint lock alive while this holder works: every third of its TTL the lock's expiry is
   * reset, only if this owner still holds it (compare-and-set). Stops on `stop()`, when the lock
   * turned out lost, or after `maxLockHoldMs` (a wedged holder must not block the slot forever).
   */
  #renew (key: string, owner: string, server: string): { stop: () => void } {
    const { locks, lockTtlMs, logger } = this.#o
    const until = Date.now() + (this.#o.maxLockHoldMs ?? lockTtlMs * 10)
    let stopped = false
    const timer = setInterval(() => {
      if (stopped) return
      if (Date.now() >= until) {
        stop()
        logger.warn({ server }, 'mint still running after its longest lock hold; the mint lock is left to lapse')
        return
      }
      locks.renew(key, owner, lockTtlMs).then((held) => {
        if (held || stopped) return
        stop()
        logger.warn({ server }, 'mint lock lost while minting; another instance may mint too')
      }).catch(() => {})
    }, Math.max(10, Math.floor(lockTtlMs / 3)))
    timer.unref()
    function stop (): void {
      stopped = true
      clearInterval(timer)
    }
    return { stop }
  }

  /**
   * One upstream mint and store. Call with the mint lock held (or from a rotation job that holds it).
   * With `expectCurrent`, the new token replaces that one only if it is still current (rotation).
   */
  async mint (client: string, server: ServerConfig, opts: MintOptions = {}): Promise<string | undefined> {
    const { store, plex, logger, states, adminHealth, metrics } = this.#o
    let token: string
    let machineIdentifier: string
    let meta = ''
    // One read of the server hash serves both the admin-token verdict and the machineIdentifier.
    const facts = await states.mintFacts(server.name)
    if (await adminHealth.blocked(server, facts)) {
      metrics.mints.inc({ server: server.name, result: 'rejected' })
      throw upstreamError(server.name, new PlexRejectedError('admin token known to be rejected', 401))
    }
    try {
      machineIdentifier = await states.machineIdentifier(server, facts.mid)
      if (opts.target === undefined) {
        token = await plex.mintTransient(server)
      } else {
        const res = await plex.sourceResources(server, server.adminToken, opts.target)
        token = res.token
        meta = JSON.stringify({ name: res.name, clientIdentifier: res.clientIdentifier, connections: res.connections })
      }
      metrics.mints.inc({ server: server.name, result: 'ok' })
    } catch (err) {
      const result = err instanceof PlexRejectedError ? 'rejected' : err instanceof PlexUnavailableError || err instanceof PlexBadResponseError ? 'unavailable' : 'error'
      metrics.mints.inc({ server: server.name, result })
      if (err instanceof PlexRejectedError) await adminHealth.record(server, 'invalid', { reason: 'mint_rejected' }).catch(() => {})
      logger.warn({ client, server: server.name, err: { type: (err as Error).name, message: (err as Error).message } }, 'mint failed')
      throw upstreamError(server.name, err)
    }
    const issuedAt = this.#o.clock.now()
    const jitter = (this.#o.renewJitter ?? 0.1) * Math.random()
    const put = await store.put({
      client,
      server: server.name,
      token,
      issuedAt,
      lifetimeMs: this.#o.tokenLifetimeMs,
      renewAfterMs: Math.round(this.#o.tokenRenewAfterMs * (1 - jitter)),
      machineIdentifier,
      expectCurrent: opts.expectCurrent,
      target: opts.target,
      meta,
      audit: opts.audit,
      ctx: opts.ctx,
      reason: opts.reason,
    })
    if (put === undefined) {
      logger.info({ client, server: server.name }, 'minted token discarded: current token changed meanwhile')
      return undefined
    }
    logger.info({ client, server: server.name, tokenId: put.tokenId, previous: put.previous }, 'token minted')
    return put.tokenId
  }
}
