import type { Logger } from 'pino'
import type { ServerConfig } from '../config/index.ts'
import type { Clock } from './clock.ts'
import type { Metrics } from '../metrics.ts'
import type { TokenIssuer } from './issuer.ts'
import { CANARY_CLIENT } from './probe.ts'
import type { ServerStates } from './server-state.ts'
import type { TokenStore } from './token-store.ts'
import { parseSlot } from './tokens.ts'

import type { RotationReason } from '../jobs/queues.ts'
export type { RotationReason }

export type RotationOutcome = 'rotated' | 'gone' | 'superseded' | 'idle' | 'unknown_server' | 'conflict'

export interface DueRotation {
  tokenId: string
  client: string
  server: string
}

export interface RotatorOptions {
  store: TokenStore
  /** Where each sweep leaves its counts for every instance's /metrics. */
  states: ServerStates
  clock: Clock
  issuer: TokenIssuer
  servers: Map<string, ServerConfig>
  logger: Logger
  /** A client that asked within this window (TOKEN_LIFETIME) is active; idle tokens are left to expire. */
  activeWindowMs: number
  /** Rotations by server and reason. */
  metrics: Metrics
}

/**
 * Rotation: replaces a token before PMS's 48-hour limit. The sweep finds what is due; `rotate`
 * does one replacement with a compare-and-set, so a duplicate or late job never replaces a newer
 * token. Job data carries ids only (BullMQ keeps job data in clear text).
 */
export class Rotator {
  readonly #o: RotatorOptions

  constructor (opts: RotatorOptions) {
    this.#o = opts
  }

  /**
   * Every active client's current token that is due: at or past `renewAt`, or issued "in the
   * future" (the broker's clock stepped back, so its age is unknown and it is treated as due).
   * One pipelined round trip per server for the ids, one for the records.
   */
  async due (): Promise<DueRotation[]> {
    const { store, clock, activeWindowMs } = this.#o
    const now = clock.now()
    const out: DueRotation[] = []
    for (const server of this.#o.servers.keys()) {
      const clients = (await store.activeClients(server, activeWindowMs)).filter((c) => c !== CANARY_CLIENT)
      let active = 0
      let oldest = 0
      for (let i = 0; i < clients.length; i += 1000) {
        for (const t of await store.currentTokens(server, clients.slice(i, i + 1000))) {
          if (t.state !== 'active' || now >= t.expiresAt) continue
          active++
          if (oldest === 0 || t.expiresAt < oldest) oldest = t.expiresAt
          if (clock.due(t, now)) out.push({ tokenId: t.tokenId, client: t.client, server })
        }
      }
      // Shared with every instance's /metrics through the server hash.
      await this.#o.states.update(server, { activeTokens: active, oldestExpiresAt: oldest === 0 ? '' : oldest })
    }
    return out
  }

  /**
   * Replaces `tokenId` with a fresh token if it is still the one served and its client is still
   * active. Throws the issuer's BrokerError when PMS fails (the job retries with backoff).
   */
  async rotate (tokenId: string, reason: RotationReason): Promise<RotationOutcome> {
    const { store, issuer, logger } = this.#o
    const rec = await store.get(tokenId)
    if (rec === undefined || rec.state !== 'active') return 'gone'
    const target = rec.target === '' ? undefined : rec.target
    if (await store.peek(rec.client, rec.server, target) !== tokenId) return 'superseded'
    const server = this.#o.servers.get(rec.server)
    if (server === undefined) return 'unknown_server'
    const lastAsked = await store.lastAsked(rec.server, rec.slot)
    if (lastAsked === undefined || lastAsked < this.#o.clock.now() - this.#o.activeWindowMs) return 'idle'
    const newId = await issuer.mint(rec.client, server, {
      expectCurrent: tokenId,
      target,
      audit: { action: 'token.rotate', detail: { reason, previous: tokenId, ...(target === undefined ? {} : { target }) } },
    })
    if (newId === undefined) return 'conflict'
    this.#o.metrics.rotations.inc({ server: rec.server, reason })
    logger.info({ client: rec.client, server: rec.server, tokenId: newId, previous: tokenId, reason }, 'token rotated')
    return 'rotated'
  }

  /** After a PMS restart: a fresh token for a slot (client, or client and source) that has none (single-flight with requests). */
  async remint (slot: string, serverName: string): Promise<boolean> {
    const server = this.#o.servers.get(serverName)
    if (server === undefined) return false
    const { client, target } = parseSlot(slot)
    const reason: RotationReason = 'restart'
    const minted = await this.#o.issuer.ensure(client, server, { audit: { action: 'token.rotate', detail: { reason } }, target })
    if (minted) this.#o.metrics.rotations.inc({ server: serverName, reason })
    return minted
  }
}
