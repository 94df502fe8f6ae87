import type { Logger } from 'pino'
import type { RedisContext } from './keys.ts'
import type { ServerConfig } from '../config/index.ts'
import type { JobProducer } from '../jobs/producer.ts'
import type { Metrics } from '../metrics.ts'
import { PlexRejectedError, type PlexClient } from '../plex/client.ts'
import type { AuditWriter } from './audit-writer.ts'
import type { Clock } from './clock.ts'
import type { TokenIssuer } from './issuer.ts'
import type { Locks } from './locks.ts'
import { isVulnerable, type ServerStates } from './server-state.ts'
import type { TokenStore } from './token-store.ts'

/**
 * The broker's own transient token per server, used as a canary: PMS keeps no expiry and gives
 * no restart marker, but a restart destroys every transient token, so a canary that PMS suddenly
 * rejects means PMS restarted (docs/plex-api.md §4). The id contains `~`, which NAME_PATTERN
 * (`src/config/names.ts`) never allows in a client id, so it can never collide with a real client.
 */
export const CANARY_CLIENT = '~canary'

export type RestartReason = 'machine_identifier_changed' | 'version_changed' | 'canary_rejected' | 'back_after_down'

export interface ProbeResult {
  state: 'up' | 'down' | 'busy'
  restart: RestartReason[]
}

export interface ServerProbeOptions {
  store: TokenStore
  /** Redis, its keys and the deadline wrapper (keys.ts RedisContext). */
  rc: RedisContext
  /** The probe lock. */
  locks: Locks
  /** Server events (down, up, restart) go to the security trail. */
  audit: AuditWriter
  clock: Clock
  states: ServerStates
  plex: PlexClient
  issuer: TokenIssuer
  /** Where the re-mints after a restart are queued (the active slots get fresh tokens before they ask). */
  jobs: JobProducer
  /** Restarts detected and the tokens they invalidated. */
  metrics: Metrics
  logger: Logger
  /** Window in which a client counts as active (TOKEN_LIFETIME). */
  activeWindowMs: number
}

/**
 * One probe of one PMS, layered (docs/plex-api.md §4): `/identity` (a changed machineIdentifier or version
 * is a restart), then the canary (a rejected canary is a restart). A server that was down and
 * answers again is checked by the canary too: a network blip must not throw away every token,
 * but when there is no canary to tell, it is treated as a restart, the safe side.
 */
/** How long a probe's lock lasts when its holder cannot release it (a broker killed mid-probe). */
const PROBE_LOCK_TTL_MS = 30_000

export class ServerProbe {
  readonly #o: ServerProbeOptions

  constructor (opts: ServerProbeOptions) {
    this.#o = opts
  }

  /**
   * A probe that ended while Redis was unreachable could not release its lock, and a Redis that
   * comes back with its data (AOF) would keep that lock for its whole 30 s: no probe, so no
   * restart detection, for half a minute after the outage. Retry the release until Redis answers
   * (only the owner's own lock is deleted), giving up when the lock would have expired anyway.
   */
  #releaseLater (key: string, owner: string): void {
    const until = Date.now() + PROBE_LOCK_TTL_MS
    const retry = (): void => {
      if (Date.now() >= until) return
      this.#o.locks.release(key, owner).catch(() => { setTimeout(retry, 250).unref() })
    }
    setTimeout(retry, 250).unref()
  }

  /**
   * Probes of one server never overlap, across all instances (a Redis lock): a probe that read
   * the old identity just before a restart must not write it back after one that saw the new
   * identity, or the next probe would detect the same restart twice.
   */
  async probe (server: ServerConfig): Promise<ProbeResult> {
    const { locks } = this.#o
    const lockKey = this.#o.rc.keys.probeLock(server.name)
    const deadline = Date.now() + 3000
    let owner = await locks.acquire(lockKey, PROBE_LOCK_TTL_MS)
    while (owner === undefined && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50))
      owner = await locks.acquire(lockKey, PROBE_LOCK_TTL_MS)
    }
    if (owner === undefined) return { state: 'busy', restart: [] }
    try {
      return await this.#probe(server)
    } finally {
      await locks.release(lockKey, owner).catch(() => { this.#releaseLater(lockKey, owner) })
    }
  }

  async #probe (server: ServerConfig): Promise<ProbeResult> {
    const { states, plex, logger, audit } = this.#o
    const prev = await states.get(server.name)
    const now = this.#o.clock.now()
    let id: { machineIdentifier: string, version: string }
    try {
      id = await plex.identity(server)
    } catch (err) {
      await states.update(server.name, { state: 'down', lastProbeAt: now }, prev.state === 'down' ? undefined : 'down')
      if (prev.state !== 'down') {
        logger.warn({ server: server.name, err: { type: (err as Error).name, message: (err as Error).message } }, 'PMS is down')
        await audit.write({ action: 'server.down', server: server.name, detail: { error: (err as Error).name } })
      }
      return { state: 'down', restart: [] }
    }

    const reasons: RestartReason[] = []
    if (prev.machineIdentifier !== null && prev.machineIdentifier !== id.machineIdentifier) reasons.push('machine_identifier_changed')
    if (prev.version !== null && prev.version !== id.version) reasons.push('version_changed')
    const canary = await this.#canaryVerdict(server)
    if (canary === 'rejected') reasons.push('canary_rejected')
    if (prev.state === 'down' && canary === 'none' && reasons.length === 0) reasons.push('back_after_down')

    await states.update(server.name, { state: 'up', mid: id.machineIdentifier, version: id.version, lastProbeAt: now }, prev.state === 'up' ? undefined : 'up')
    if (prev.state !== 'up') {
      logger.info({ server: server.name, version: id.version }, 'PMS is up')
      if (prev.state === 'down') await audit.write({ action: 'server.up', server: server.name, detail: { version: id.version } })
      if (isVulnerable(id.version)) {
        logger.warn({ server: server.name, version: id.version },
          'PMS version is affected by CVE-2025-69414 (a transient token can be turned into a permanent one): upgrade PMS')
      }
    }
    if (reasons.length > 0) await this.restarted(server, reasons, id.version)
    await this.#keepCanary(server)
    return { state: 'up', restart: reasons }
  }

  /**
   * PMS restarted: every token it issued is dead. Invalidate them all, record the restart, and
   * queue re-mints for the active slots so they get fresh tokens before they ask.
   */
  async restarted (server: ServerConfig, reasons: RestartReason[], version: string | null): Promise<void> {
    const { store, states, logger } = this.#o
    const { count } = await store.retire({ server: server.name }, 'invalidated', 'token.invalidate', { reason: 'server_restart' })
    await states.update(server.name, { lastRestartAt: this.#o.clock.now() })
    this.#o.metrics.restarts.inc({ server: server.name })
    this.#o.metrics.invalidations.inc({ server: server.name, reason: 'restart' }, count)
    await this.#o.audit.write({ action: 'server.restart', server: server.name, detail: { reasons, version, invalidated: count } })
    const clients = (await store.activeClients(server.name, this.#o.activeWindowMs)).filter((c) => c !== CANARY_CLIENT)
    logger.warn({ server: server.name, reasons, invalidated: count, active: clients.length }, 'PMS restart detected; tokens invalidated')
    await this.#o.jobs.remint(server.name, clients, this.#o.clock.now())
  }

  /** 'none' when there is no live canary to ask (never minted, revoked, invalidated). */
  async #canaryVerdict (server: ServerConfig): Promise<'valid' | 'rejected' | 'none'> {
    const { store, plex } = this.#o
    const tokenId = await store.peek(CANARY_CLIENT, server.name)
    if (tokenId === undefined) return 'none'
    const token = await store.reveal(tokenId)
    if (token === undefined) return 'none'
    try {
      return await plex.checkToken(server, token)
    } catch (err) {
      if (err instanceof PlexRejectedError) return 'rejected'
      // PMS answered /identity but not the canary: no verdict this round.
      return 'none'
    }
  }

  /** Mints the canary when missing and rotates it when due, so it never dies of old age. */
  async #keepCanary (server: ServerConfig): Promise<void> {
    const { store, issuer, logger } = this.#o
    try {
      const tokenId = await store.peek(CANARY_CLIENT, server.name)
      if (tokenId === undefined) {
        await issuer.ensure(CANARY_CLIENT, server)
        return
      }
      const rec = await store.get(tokenId)
      if (rec !== undefined && this.#o.clock.due(rec)) {
        await issuer.mint(CANARY_CLIENT, server, { expectCurrent: tokenId })
      }
    } catch (err) {
      logger.warn({ server: server.name, err: { type: (err as Error).name, message: (err as Error).message } }, 'could not mint the canary token')
    }
  }
}
