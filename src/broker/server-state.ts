import type { ServerConfig } from '../config/index.ts'
import type { PlexClient } from '../plex/client.ts'
import type { RedisContext } from './keys.ts'
import { PUSH_MAXLEN } from './push-log.ts'

export type ServerHealth = 'up' | 'down' | 'unknown'

export interface ServerState {
  state: ServerHealth
  machineIdentifier: string | null
  version: string | null
  lastProbeAt: number | null
  lastRestartAt: number | null
  /** Last verdict on the admin token (AdminTokenHealth): PMS or plex.tv rejected it → invalid; an outage → unknown. */
  adminToken: 'valid' | 'invalid' | 'unknown'
  adminCheckedAt: number | null
  /** Fingerprint of the admin token the verdict is about. */
  adminFp: string | null
  /** Written by each rotation sweep: active tokens and the earliest expiry among them. */
  activeTokens: number | null
  oldestExpiresAt: number | null
}

/**
 * PMS through 1.42.2.10156 lets a transient token be turned into a permanent one
 * (CVE-2025-69414, docs/plex-api.md §7): a server at or below it is flagged `vulnerable`.
 */
export const LAST_VULNERABLE_VERSION = '1.42.2.10156'

/** Compares dotted PMS versions numerically, ignoring the `-<hash>` build suffix. */
export function compareVersions (a: string, b: string): number {
  const [va = ''] = a.split('-')
  const [vb = ''] = b.split('-')
  const pa = va.split('.').map(Number)
  const pb = vb.split('.').map(Number)
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] || 0) - (pb[i] || 0)
    if (d !== 0) return Math.sign(d)
  }
  return 0
}

export function isVulnerable (version: string | null): boolean {
  // compareVersions answers -1, 0 or 1: "at or below" is anything but 1 (written so, not `<= 0`,
  // because a `<` right after a call reads as type arguments to ctags-based code indexes).
  return version !== null && compareVersions(version, LAST_VULNERABLE_VERSION) !== 1
}

/**
 * Every field of a server's hash (keys.ts `server`). This module alone reads and writes the hash;
 * other classes go through ServerStates.
 */
export type ServerField = 'state' | 'mid' | 'version' | 'lastProbeAt' | 'lastRestartAt' | 'adminToken' | 'adminCheckedAt' | 'adminFp' |
  'adminRecheckMs' | 'activeTokens' | 'oldestExpiresAt'

const num = (v: string | undefined): number | null => (v === undefined || v === '' ? null : Number(v))

/** The server-hash fields a mint reads (one HMGET). */
export interface MintFacts {
  mid: string | null
  adminToken: string | null
  adminFp: string | null
  adminRecheckMs: string | null
}

/** What the broker knows of each PMS, kept in Redis so every instance shares it. */
export class ServerStates {
  readonly #rc: RedisContext
  readonly #plex: PlexClient

  constructor (rc: RedisContext, plex: PlexClient) {
    this.#rc = rc
    this.#plex = plex
  }

  async get (name: string): Promise<ServerState> {
    const h = await this.#rc.call(() => this.#rc.redis.hgetall(this.#rc.keys.server(name)))
    return {
      state: (h.state as ServerHealth | undefined) ?? 'unknown',
      machineIdentifier: h.mid || null,
      version: h.version || null,
      lastProbeAt: num(h.lastProbeAt),
      lastRestartAt: num(h.lastRestartAt),
      adminToken: (h.adminToken as ServerState['adminToken'] | undefined) ?? 'unknown',
      adminCheckedAt: num(h.adminCheckedAt),
      adminFp: h.adminFp || null,
      activeTokens: num(h.activeTokens),
      oldestExpiresAt: num(h.oldestExpiresAt),
    }
  }

  /**
   * Writes server-hash fields. `flipped`: the broker's view of the server changed to up or down;
   * the push channel's `server` entry is written in the same transaction (push-log.ts), so
   * every instance's streams hear of each flip that is stored.
   */
  async update (name: string, fields: Partial<Record<ServerField, string | number>>, flipped?: 'up' | 'down'): Promise<void> {
    const { redis, keys } = this.#rc
    if (flipped === undefined) {
      await this.#rc.call(() => redis.hset(keys.server(name), fields))
      return
    }
    await this.#rc.call(async () => await redis.multi()
      .hset(keys.server(name), fields)
      .xadd(keys.push, 'MAXLEN', '~', PUSH_MAXLEN, '*', 'type', 'server', 'server', name, 'up', flipped === 'up' ? '1' : '0')
      .exec())
  }

  /**
   * What a mint needs from the server hash, in one read: the machineIdentifier and the admin-token
   * verdict with its fingerprint and recheck interval (admin-token-health.ts).
   */
  async mintFacts (name: string): Promise<MintFacts> {
    const fields: ServerField[] = ['mid', 'adminToken', 'adminFp', 'adminRecheckMs']
    const [mid = null, adminToken = null, adminFp = null, adminRecheckMs = null] = await this.#rc.call(() =>
      this.#rc.redis.hmget(this.#rc.keys.server(name), ...fields))
    return { mid, adminToken, adminFp, adminRecheckMs }
  }

  /**
   * A rejected admin token's recheck backoff starts (admin-token-health.ts): its interval in the
   * hash, and the fleet's rate lock (keys.ts `adminRecheck`) held for that long, in one step.
   */
  async startRecheck (name: string, intervalMs: number): Promise<void> {
    const { redis, keys } = this.#rc
    const field: ServerField = 'adminRecheckMs'
    await this.#rc.call(() => redis.multi().hset(keys.server(name), field, intervalMs).set(keys.adminRecheck(name), 'rejected', 'PX', intervalMs).exec())
  }

  /** The admin token is accepted (or no longer known bad): the next rejection starts the backoff afresh. */
  async clearRecheck (name: string): Promise<void> {
    const { redis, keys } = this.#rc
    const field: ServerField = 'adminRecheckMs'
    await this.#rc.call(() => redis.multi().hdel(keys.server(name), field).del(keys.adminRecheck(name)).exec())
  }

  /** The server's machineIdentifier, asking PMS `/identity` once when it is not known yet. */
  async machineIdentifier (server: ServerConfig, known?: string | null): Promise<string> {
    const field: ServerField = 'mid'
    if (known === undefined) known = await this.#rc.call(() => this.#rc.redis.hget(this.#rc.keys.server(server.name), field))
    if (known) return known
    const id = await this.#plex.identity(server)
    await this.update(server.name, { mid: id.machineIdentifier, version: id.version })
    return id.machineIdentifier
  }
}
