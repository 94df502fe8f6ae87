import type { Logger } from 'pino'
import type { ServerConfig } from '../config.ts'
import { PlexRejectedError, type PlexClient } from '../plex/client.ts'
import type { ServerStates } from './server-state.ts'
import type { TokenStore } from './token-store.ts'

export type Verdict = 'valid' | 'invalid' | 'unknown'

export interface AdminTokenHealthOptions {
  store: TokenStore
  states: ServerStates
  plex: PlexClient
  logger: Logger
  /**
   * plex.tv's opinion of an account token (`GET /api/v2/user`: 200 valid, 401 invalid, anything
   * else unknown). Absent when plex.tv is not configured.
   */
  accountCheck?: (token: string) => Promise<Verdict>
  /** Keeps an account token alive (`GET /api/v2/ping`); failures are ignored. */
  keepAlive?: (token: string) => Promise<void>
  onResult?: (server: string, verdict: Verdict) => void
}

/**
 * Validates each server's admin token (issue 8): against PMS (`GET /` with the admin token) and,
 * for account tokens, at plex.tv. An outage is `unknown`, never `invalid`: only a 401/403 from
 * the party that owns the token condemns it. The verdict lives in the server hash (shared by all
 * instances), changes are audited, and an invalid token makes the issuer fail fast instead of
 * sending PMS a stream of 401s (fail2ban in front of PMS bans such hosts, plex-api.md §9).
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
    if (this.#o.accountCheck !== undefined) {
      account = await this.#o.accountCheck(server.adminToken).catch(() => 'unknown' as const)
    }
    // PMS decides when it answers: it is the one that mints. plex.tv speaks when PMS cannot.
    const verdict: Verdict = pms !== 'unknown' ? pms : account
    if (account === 'valid') await this.#o.keepAlive?.(server.adminToken).catch(() => {})
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
    const { states, store } = this.#o
    const before = await states.get(server.name)
    const fp = store.fingerprint(server.adminToken)
    await states.update(server.name, { adminToken: verdict, adminCheckedAt: store.now(), adminFp: fp })
    this.#o.onResult?.(server.name, verdict)
    if (before.adminToken !== verdict || before.adminFp !== fp) {
      await store.audit({ action: 'server.admin_token', server: server.name, detail: { state: verdict, previous: before.adminToken, ...detail } })
    }
  }

  /** True while this very admin token is known to be rejected: minting would only earn PMS 401s. */
  async blocked (server: ServerConfig): Promise<boolean> {
    const st = await this.#o.states.get(server.name)
    return st.adminToken === 'invalid' && st.adminFp === this.#o.store.fingerprint(server.adminToken)
  }
}
