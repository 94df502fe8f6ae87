import { createHash, randomBytes, timingSafeEqual } from 'node:crypto'
import type { RedisContext } from '../broker/keys.ts'
import { canUseServer } from '../broker/policy.ts'
import type { ClientConfig, Config } from '../config/index.ts'
import { isName } from '../config/names.ts'
import { badRequest } from '../errors.ts'
import { PUSH_MAXLEN } from '../broker/push-log.ts'
import { PROXY_KEY_ENTRY_TYPE, type ProxyKeyCache } from './key-cache.ts'

/**
 * Proxy keys (docs/proxy.md, *Proxy keys*): the credential a tool presents to the PMS proxy where
 * it would put a PMS token. `pbk_<id>.<secret>`: the id (9 random bytes, base64url) names the
 * record and may appear in listings, logs and audit events; the secret (32 random bytes,
 * base64url) is shown once, at creation, and stored only as its SHA-256.
 *
 * Why a plain SHA-256 and not an HMAC keyed from BROKER_SECRET: the secret carries 256 random
 * bits, so its digest cannot be reversed or guessed, and a key would add nothing; tying the digest
 * to BROKER_SECRET would, on the other hand, lock out every proxy key when that secret is rotated.
 * Client secrets are stored the same way for the same reason.
 *
 * Every check reads the record from Redis (one HGETALL), or, on the proxy's hot path, from a local
 * view kept current by the change log (key-cache.ts): a revocation writes its change-log entry in
 * the same script, and a view whose reader is behind is not used.
 */

export const PROXY_KEY_PREFIX = 'pbk_'
const ID_PATTERN = /^[A-Za-z0-9_-]{12}$/
const KEY_PATTERN = /^pbk_([A-Za-z0-9_-]{12})\.([A-Za-z0-9_-]{43})$/
const MAX_LABEL = 100

export interface ProxyKeyRecord {
  id: string
  /** The client whose proxy rules apply. */
  client: string
  /** The one server the key may reach; null: any server the client may use. */
  server: string | null
  label: string
  createdAt: number
  expiresAt: number | null
  revokedAt: number | null
}

/** Why a presented value is refused (all answered alike, 401, to the caller; kept apart for logs and metrics). */
export type ProxyKeyRefusal = 'malformed' | 'unknown' | 'mismatch' | 'revoked' | 'expired' | 'orphaned' | 'wrong-server'

/**
 * Why the configuration no longer backs a key: its client was removed or lost its `proxy` section,
 * its server was removed or left the client's `servers` list. Such a key is refused (`orphaned`)
 * and listed as such; it is not revoked, so it works again if the configuration comes back:
 * revoke it to end it for good.
 */
export type ProxyKeyOrphan = 'client-removed' | 'no-proxy-section' | 'server-removed' | 'server-not-allowed'

/** A key's state for listings: revocation wins over expiry, expiry over the configuration. */
export type ProxyKeyState = 'active' | 'revoked' | 'expired' | 'orphaned'

export type ProxyKeyCheck = { ok: true, record: ProxyKeyRecord } | { ok: false, reason: ProxyKeyRefusal }

/**
 * The id and secret of a proxy key, or undefined for anything else, a real PMS or plex.tv token
 * included, so such a value is refused instead of being passed on.
 */
export function parseProxyKey (value: string): { id: string, secret: string } | undefined {
  const [, id, secret] = KEY_PATTERN.exec(value) ?? []
  return id === undefined || secret === undefined ? undefined : { id, secret }
}

export function isProxyKeyId (id: string): boolean {
  return ID_PATTERN.test(id)
}

function digestOf (secret: string): Buffer {
  return createHash('sha256').update(secret).digest()
}

// A tool sends the same key on every request: its digest is kept rather than hashed each time
// (a sha256 was ~2 % of a proxied request's CPU). Only digests of secrets whose key verified are
// kept, so a flood of made-up keys cannot churn it; cleared when full.
const VERIFIED_DIGESTS = new Map<string, Buffer>()
const MAX_VERIFIED_DIGESTS = 4096

function presentedDigestOf (presented: string, secret: string): Buffer {
  return VERIFIED_DIGESTS.get(presented) ?? digestOf(secret)
}

function rememberDigest (presented: string, digest: Buffer): void {
  if (VERIFIED_DIGESTS.has(presented)) return
  if (VERIFIED_DIGESTS.size >= MAX_VERIFIED_DIGESTS) VERIFIED_DIGESTS.clear()
  VERIFIED_DIGESTS.set(presented, digest)
}

// Compared when there is no record, so an unknown id costs the same work as a wrong secret.
const NO_DIGEST = digestOf('')

const CREATE = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'client', ARGV[1], 'server', ARGV[2], 'label', ARGV[3], 'digest', ARGV[4], 'createdAt', ARGV[5], 'expiresAt', ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[7])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[7])
return 1
`

// revokedAt is absent until revoked, so HSETNX keeps the first revocation time. The change-log
// entry is written in the same step, so every instance's local view of the key (key-cache.ts)
// drops it as soon as the revocation exists.
const REVOKE = `
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local r = redis.call('HSETNX', KEYS[1], 'revokedAt', ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'type', ARGV[3], 'id', ARGV[4])
return r
`

function recordOf (id: string, client: string, h: Record<string, string>): ProxyKeyRecord {
  return {
    id,
    client,
    server: h.server === '' || h.server === undefined ? null : h.server,
    label: h.label ?? '',
    createdAt: Number(h.createdAt),
    expiresAt: h.expiresAt === '' || h.expiresAt === undefined ? null : Number(h.expiresAt),
    revokedAt: h.revokedAt === undefined ? null : Number(h.revokedAt),
  }
}

export class ProxyKeys {
  readonly #rc: RedisContext
  readonly #clients: ReadonlyMap<string, Pick<ClientConfig, 'servers' | 'proxy'>> | undefined
  readonly #servers: ReadonlySet<string> | undefined
  readonly #cache: ProxyKeyCache | undefined

  /**
   * `config`: the clients and servers keys are checked against (the broker always passes its own);
   * without it, no key is ever orphaned. `cache`: the proxy's local view of records (key-cache.ts).
   */
  constructor (rc: RedisContext, config?: Pick<Config, 'clients' | 'servers'>, cache?: ProxyKeyCache) {
    this.#rc = rc
    this.#cache = cache
    if (config !== undefined) {
      this.#clients = new Map(config.clients.map((c) => [c.id, c]))
      this.#servers = new Set(config.servers.map((s) => s.name))
    }
  }

  /** Why the configuration no longer backs this key, or null when it does. */
  orphaned (record: Pick<ProxyKeyRecord, 'client' | 'server'>): ProxyKeyOrphan | null {
    if (this.#clients === undefined || this.#servers === undefined) return null
    const client = this.#clients.get(record.client)
    if (client === undefined) return 'client-removed'
    if (client.proxy === undefined) return 'no-proxy-section'
    if (record.server === null) return null
    if (!this.#servers.has(record.server)) return 'server-removed'
    return canUseServer(client, record.server) ? null : 'server-not-allowed'
  }

  state (record: ProxyKeyRecord): ProxyKeyState {
    if (record.revokedAt !== null) return 'revoked'
    if (record.expiresAt !== null && record.expiresAt <= this.#rc.now()) return 'expired'
    return this.orphaned(record) === null ? 'active' : 'orphaned'
  }

  /**
   * Creates a key for `client` (optionally bound to `server`). The key is returned once and never
   * stored; only its record (without the secret) can be read back. Whether the client and server
   * exist in the configuration is the caller's check; here their form is.
   */
  async create (opts: { client: string, server?: string, label: string, expiresAt?: number }): Promise<{ key: string, record: ProxyKeyRecord }> {
    if (!isName(opts.client)) throw badRequest('client: not a client id')
    if (opts.server !== undefined && !isName(opts.server)) throw badRequest('server: not a server name')
    // Control characters would let a label forge lines in logs and CLI listings.
    if (opts.label.length < 1 || opts.label.length > MAX_LABEL || [...opts.label].some((ch) => ch.charCodeAt(0) < 0x20 || ch.charCodeAt(0) === 0x7f)) {
      throw badRequest(`label: 1 to ${MAX_LABEL} characters, no control characters`)
    }
    const now = this.#rc.now()
    if (opts.expiresAt !== undefined && (!Number.isSafeInteger(opts.expiresAt) || opts.expiresAt <= now)) throw badRequest('expiresAt: must be a time in the future (ms since the epoch)')
    const { keys, redis } = this.#rc
    for (;;) {
      const id = randomBytes(9).toString('base64url')
      const secret = randomBytes(32).toString('base64url')
      const created = await this.#rc.call(() => redis.eval(CREATE, 3, keys.proxyKey(id), keys.proxyKeys, keys.proxyKeysByClient(opts.client),
        opts.client, opts.server ?? '', opts.label, digestOf(secret).toString('hex'), String(now), String(opts.expiresAt ?? ''), id))
      // 0: the id exists already (72 random bits: practically never); draw another.
      if (created === 1) {
        return {
          key: `${PROXY_KEY_PREFIX}${id}.${secret}`,
          record: { id, client: opts.client, server: opts.server ?? null, label: opts.label, createdAt: now, expiresAt: opts.expiresAt ?? null, revokedAt: null },
        }
      }
    }
  }

  async get (id: string): Promise<ProxyKeyRecord | undefined> {
    if (!isProxyKeyId(id)) return undefined
    const h = await this.#rc.call(() => this.#rc.redis.hgetall(this.#rc.keys.proxyKey(id)))
    return h.client === undefined ? undefined : recordOf(id, h.client, h)
  }

  /** Every key (or one client's), oldest first, revoked and expired ones included. */
  async list (opts: { client?: string } = {}): Promise<ProxyKeyRecord[]> {
    const { keys, redis } = this.#rc
    const index = opts.client === undefined ? keys.proxyKeys : keys.proxyKeysByClient(opts.client)
    const ids = await this.#rc.call(() => redis.zrange(index, '0', '-1'))
    if (ids.length === 0) return []
    const pipeline = redis.pipeline()
    for (const id of ids) pipeline.hgetall(keys.proxyKey(id))
    const replies = await this.#rc.call(async () => await pipeline.exec()) ?? []
    const out: ProxyKeyRecord[] = []
    for (const [i, id] of ids.entries()) {
      const [err, h] = replies[i] ?? [null, null]
      const fields = (err === null && typeof h === 'object' && h !== null ? h : {}) as Record<string, string>
      if (fields.client !== undefined) out.push(recordOf(id, fields.client, fields))
    }
    return out
  }

  /** Revokes a key; the record stays, for listings and the audit trail. */
  async revoke (id: string): Promise<'revoked' | 'already-revoked' | 'not-found'> {
    if (!isProxyKeyId(id)) return 'not-found'
    const { keys, redis } = this.#rc
    const r = await this.#rc.call(() => redis.eval(REVOKE, 2, keys.proxyKey(id), keys.push, String(this.#rc.now()), String(PUSH_MAXLEN), PROXY_KEY_ENTRY_TYPE, id))
    this.#cache?.forget(id)
    return r === 1 ? 'revoked' : r === 0 ? 'already-revoked' : 'not-found'
  }

  /**
   * The state of a key known by id alone, for a credential that proved itself another way (a
   * signed media URL, whose signature binds the key id) and for open responses rechecked while
   * they last: revocation, expiry and the server binding, one Redis read.
   */
  async check (id: string, opts: { server?: string } = {}): Promise<ProxyKeyCheck> {
    if (!isProxyKeyId(id)) return { ok: false, reason: 'unknown' }
    const h = await this.#read(id)
    return h.client === undefined ? { ok: false, reason: 'unknown' } : this.#judge(recordOf(id, h.client, h), opts.server)
  }

  /**
   * A key's stored fields for a request's check: from the local view when it has them and may be
   * used, else from Redis (one HGETALL), kept in the view when the key is usable.
   */
  async #read (id: string): Promise<Record<string, string>> {
    const cache = this.#cache
    const cached = cache?.get(id)
    if (cached !== undefined) return cached
    const generation = cache?.generation ?? 0
    const h = await this.#rc.call(() => this.#rc.redis.hgetall(this.#rc.keys.proxyKey(id)))
    if (cache !== undefined && h.client !== undefined && h.digest !== undefined && h.revokedAt === undefined) cache.set(id, h, generation)
    return h
  }

  /**
   * The ids among `ids` whose keys can no longer be used (revoked, expired, orphaned or gone), in one
   * pipelined round trip: what the proxy checks twice a second for its open responses.
   */
  async unusable (ids: readonly string[]): Promise<Set<string>> {
    const out = new Set<string>()
    if (ids.length === 0) return out
    const { keys, redis } = this.#rc
    const pipeline = redis.pipeline()
    for (const id of ids) pipeline.hmget(keys.proxyKey(id), 'client', 'server', 'expiresAt', 'revokedAt')
    const replies = await this.#rc.call(async () => await pipeline.exec()) ?? []
    const now = this.#rc.now()
    for (const [i, id] of ids.entries()) {
      const [err, v] = replies[i] ?? [new Error('no reply'), null]
      if (err !== null) throw err
      // HMGET answers one value (or nil) per field asked for: four here.
      const [client, server, expiresAt, revokedAt] = v as [string | null, string | null, string | null, string | null]
      if (client === null || revokedAt !== null || (expiresAt !== null && expiresAt !== '' && Number(expiresAt) <= now)) out.add(id)
      else if (this.orphaned({ client, server: server === null || server === '' ? null : server }) !== null) out.add(id)
    }
    return out
  }

  /**
   * Checks a presented value: its form, then the record (one Redis read), the secret's digest in
   * constant time, and only then revocation, expiry, the configuration (orphaned) and the server
   * binding, so someone without the secret learns nothing about a key's state. `server`: the
   * server the request is for; a key without a server reaches only those its client may use.
   */
  /** Revocation, expiry, the configuration (orphaned) and the server binding of a known record. */
  #judge (record: ProxyKeyRecord, server: string | undefined): ProxyKeyCheck {
    if (record.revokedAt !== null) return { ok: false, reason: 'revoked' }
    if (record.expiresAt !== null && record.expiresAt <= this.#rc.now()) return { ok: false, reason: 'expired' }
    // A client removed from the configuration (or its proxy access) ends its keys at once.
    if (this.orphaned(record) !== null) return { ok: false, reason: 'orphaned' }
    if (record.server !== null && server !== undefined && record.server !== server) return { ok: false, reason: 'wrong-server' }
    const client = this.#clients?.get(record.client)
    if (record.server === null && server !== undefined && client !== undefined && !canUseServer(client, server)) return { ok: false, reason: 'wrong-server' }
    return { ok: true, record }
  }

  async verify (presented: string, opts: { server?: string } = {}): Promise<ProxyKeyCheck> {
    const parsed = parseProxyKey(presented)
    if (parsed === undefined) return { ok: false, reason: 'malformed' }
    const h = await this.#read(parsed.id)
    const presentedDigest = presentedDigestOf(presented, parsed.secret)
    if (h.client === undefined || h.digest === undefined) {
      timingSafeEqual(presentedDigest, NO_DIGEST)
      return { ok: false, reason: 'unknown' }
    }
    const stored = Buffer.from(h.digest, 'hex')
    if (stored.length !== presentedDigest.length || !timingSafeEqual(stored, presentedDigest)) return { ok: false, reason: 'mismatch' }
    rememberDigest(presented, presentedDigest)
    return this.#judge(recordOf(parsed.id, h.client, h), opts.server)
  }
}
