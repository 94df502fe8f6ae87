import type { Logger } from 'pino'
import type { RedisContext } from './keys.ts'
import type { ServerConfig } from '../config/index.ts'
import type { Metrics } from '../metrics.ts'
import { PlexRejectedError, type PlexClient } from '../plex/client.ts'
import type { AuditWriter } from './audit-writer.ts'
import type { Locks } from './locks.ts'
import type { Sealer } from './sealer.ts'
import type { PlexTv } from '../plex/plextv.ts'
import type { MintFacts, ServerStates } from './server-state.ts'

export type Verdict = 'valid' | 'invalid' | 'unknown'

export interface AdminTokenHealthOptions {
  /** Redis's keys and the clock (keys.ts RedisContext). */
  rc: RedisContext
  /** The fleet's recheck rate lock. */
  locks: Locks
  /** Fingerprints the admin token, so a verdict is tied to the token it is about. */
  sealer: Sealer
  audit: AuditWriter
  states: ServerStates
  plex: PlexClient
  logger: Logger
  /**
   * plex.tv: its opinion of an account token (`GET /api/v2/user`: 200 valid, 401 invalid, anything
   * else unknown), and a ping that keeps a valid one alive. Absent when plex.tv is not configured.
   */
  plexTv?: PlexTv
  /** The verdict of each server's admin token (`ptb_admin_token_valid`). */
  metrics: Metrics
  /** PLEX_PROBE_INTERVAL: sets the first recheck interval of a rejected token (see `recheckStartMs`). */
  probeIntervalMs?: number
}

/** Longest wait between two rechecks of a rejected admin token. */
export const ADMIN_RECHECK_MAX_MS = 60_000

/**
 * First wait before rechecking a rejected admin token: the probe interval, but never more than
 * 5 s (PMS rejects account tokens for a moment after a restart, and a token file can be fixed in
 * place), and never less than 100 ms. The wait then doubles after each rejection, up to 1 min.
 */
export function recheckStartMs (probeIntervalMs: number): number {
  return Math.max(100, Math.min(probeIntervalMs, 5000))
}

/**
 * What one `recheck` did: `accepted` (PMS took the token again: verdict valid, requests flow),
 * `rejected` / `unknown` (PMS still refuses / did not answer: still blocked, the interval doubled),
 * `skipped` (someone in the fleet asked PMS within the current interval), `not_rejected`.
 */
export type RecheckResult = 'accepted' | 'rejected' | 'unknown' | 'skipped' | 'not_rejected'

/**
 * Validates each server's admin token, at boot and hourly: against PMS (`GET /` with the admin token) and,
 * for account tokens, at plex.tv. An outage is `unknown`, never `invalid`: only a 401/403 from
 * the party that owns the token condemns it. The verdict lives in the server hash (shared by all
 * instances), changes are audited, and an invalid token makes the issuer fail fast instead of
 * sending PMS a stream of 401s (fail2ban in front of PMS bans such hosts).
 *
 * An invalid verdict is not final: PMS answers 401 to an account token while it cannot reach
 * plex.tv (right after a restart, during an internet outage), and a token file can be fixed in
 * place. So while the verdict is invalid the token is rechecked against PMS with backoff
 * (`recheckStartMs`, doubling up to 1 min): inline by `blocked()` when a mint wants it, and by
 * the worker's probe job. A Redis lock held for the current interval (`keys.adminRecheck`) makes
 * the whole fleet ask PMS at most once per interval however many clients ask; the interval lives
 * in the server hash (`adminRecheckMs`) next to the verdict, so every instance shares it. See the
 * README, "Getting an admin token".
 */
export class AdminTokenHealth {
  readonly #o: AdminTokenHealthOptions

  constructor (opts: AdminTokenHealthOptions) {
    this.#o = opts
  }

  async check (server: ServerConfig): Promise<Verdict> {
    const { plex, logger } = this.#o
    let pms: Verdict = 'unknown'
    try {
      pms = (await plex.checkToken(server, server.adminToken)) === 'valid' ? 'valid' : 'invalid'
    } catch (err) {
      if (err instanceof PlexRejectedError) pms = 'invalid'
    }
    let account: Verdict = 'unknown'
    if (this.#o.plexTv !== undefined) {
      account = await this.#o.plexTv.checkAccountToken(server.adminToken).catch(() => 'unknown' as const)
    }
    // PMS decides when it answers: it is the one that mints. plex.tv speaks when PMS cannot.
    const verdict: Verdict = pms !== 'unknown' ? pms : account
    if (account === 'valid') await this.#o.plexTv?.ping(server.adminToken).catch(() => {})
    await this.record(server, verdict, { pms, plextv: account })
    logger[verdict === 'invalid' ? 'error' : 'info']({ server: server.name, verdict, pms, plextv: account }, verdict === 'invalid'
      ? 'admin token rejected: run `ptb login` (or fix the token file / Preferences.xml) and update the broker configuration'
      : 'admin token checked')
    return verdict
  }

  /**
   * Stores a verdict with the fingerprint of the token it is about, so a replaced admin token is
   * never blocked by its predecessor's verdict. Audits and reports changes.
   */
  async record (server: ServerConfig, verdict: Verdict, detail: Record<string, unknown> = {}): Promise<void> {
    const { states, sealer, rc } = this.#o
    const before = await states.get(server.name)
    const fp = sealer.fingerprint(server.adminToken)
    const changed = before.adminToken !== verdict || before.adminFp !== fp
    await states.update(server.name, { adminToken: verdict, adminCheckedAt: rc.now(), adminFp: fp })
    if (verdict !== 'invalid') {
      // Accepted (or no longer known bad): the next rejection starts the backoff afresh.
      await states.clearRecheck(server.name)
    } else if (changed) {
      // Newly rejected (or a new token rejected): the call that just earned the 401 counts as
      // this interval's call, so the first recheck comes one start interval from now.
      await states.startRecheck(server.name, this.#startMs)
    }
    this.#o.metrics.adminTokenValid.set({ server: server.name }, verdict === 'valid' ? 1 : verdict === 'invalid' ? 0 : -1)
    if (changed) {
      await this.#o.audit.write({ action: 'server.admin_token', server: server.name, detail: { state: verdict, previous: before.adminToken, ...detail } })
    }
  }

  /** True while this very admin token is known to be rejected. A pure read: never calls PMS. */
  async rejected (server: ServerConfig): Promise<boolean> {
    return (await this.#rejection(server)) !== undefined
  }

  /**
   * True while this very admin token is known to be rejected: minting would only earn PMS 401s.
   * When the fleet-wide recheck is due (its lock is free), asks PMS once first: if PMS accepts the
   * token now, the verdict becomes valid and the caller's mint proceeds. Every other caller gets
   * `true` at once, without touching PMS.
   */
  async blocked (server: ServerConfig, facts?: Pick<MintFacts, 'adminToken' | 'adminFp' | 'adminRecheckMs'>): Promise<boolean> {
    const rejection = facts === undefined ? await this.#rejection(server) : this.#fromFacts(server, facts.adminToken, facts.adminFp, facts.adminRecheckMs)
    if (rejection === undefined) return false
    return (await this.recheck(server)) !== 'accepted'
  }

  /**
   * One recheck of a rejected admin token against PMS, if the fleet has not made one within the
   * current interval. Never throws for PMS trouble (that is `unknown`); Redis trouble propagates.
   */
  async recheck (server: ServerConfig): Promise<RecheckResult> {
    const { states, rc, plex, logger } = this.#o
    const rejection = await this.#rejection(server)
    if (rejection === undefined) return 'not_rejected'
    // The lock is never released: it expires when the next recheck is due. Taking it doubles the
    // interval for the call after this one, so the gaps run start, 2×start, 4×start … 1 min.
    const interval = Math.min(ADMIN_RECHECK_MAX_MS, rejection.intervalMs * 2)
    if (await this.#o.locks.acquire(rc.keys.adminRecheck(server.name), interval) === undefined) return 'skipped'
    await states.update(server.name, { adminRecheckMs: interval })
    let pms: Verdict = 'unknown'
    try {
      pms = (await plex.checkToken(server, server.adminToken)) === 'valid' ? 'valid' : 'invalid'
    } catch (err) {
      if (err instanceof PlexRejectedError) pms = 'invalid'
    }
    if (pms === 'valid') {
      await this.record(server, 'valid', { pms, reason: 'recheck' })
      logger.info({ server: server.name }, 'admin token accepted by PMS again; token requests unblocked')
      return 'accepted'
    }
    if (pms === 'invalid') await states.update(server.name, { adminCheckedAt: rc.now() })
    logger.warn({ server: server.name, pms, nextRecheckInMs: interval }, pms === 'invalid'
      ? 'admin token still rejected by PMS: run `ptb login` (or fix the token file / Preferences.xml) if this lasts'
      : 'admin token recheck: PMS did not answer')
    return pms === 'invalid' ? 'rejected' : 'unknown'
  }

  get #startMs (): number {
    return recheckStartMs(this.#o.probeIntervalMs ?? 15_000)
  }

  /** The current backoff interval while this very admin token is known to be rejected. */
  async #rejection (server: ServerConfig): Promise<{ intervalMs: number } | undefined> {
    const facts = await this.#o.states.mintFacts(server.name)
    return this.#fromFacts(server, facts.adminToken, facts.adminFp, facts.adminRecheckMs)
  }

  #fromFacts (server: ServerConfig, verdict: string | null, fp: string | null, ms: string | null): { intervalMs: number } | undefined {
    if (verdict !== 'invalid' || fp !== this.#o.sealer.fingerprint(server.adminToken)) return undefined
    const n = Number(ms)
    return { intervalMs: Number.isFinite(n) && n > 0 ? n : this.#startMs }
  }
}
