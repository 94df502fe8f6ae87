import type { Result } from 'ioredis'
import type { RedisClient } from '../redis.ts'
import { type BrokerKeys, fingerprint, type KeyRing, newTokenId, open, seal, type SealBinding } from './crypto.ts'
import type { Keys } from './keys.ts'
import { CoarseDeadline, waitForReplicas, withDeadline } from '../redis.ts'
import { PUSH_MAXLEN, tokenReason, type TokenReason } from './push-log.ts'
import { AUDIT, PEEK, RESEAL, RETIRE, SERVE, STORE, UNLOCK } from './scripts.ts'

export type TokenState = 'active' | 'rotated' | 'revoked' | 'invalidated' | 'expired'

/** What the broker hands a client. */
export interface ServedToken {
  tokenId: string
  token: string
  issuedAt: number
  expiresAt: number
  renewAt: number
  machineIdentifier: string
  /** For a source token: the connection details PMS returned with it (JSON). */
  meta: string
}

/**
 * A slot is what one current token is kept for: a client's PMS token (the client id), or a
 * client's token for a source that PMS knows (`client~<base64url(source)>`). `~` never occurs in
 * client ids, and base64url has no `:`, so a slot fits in a key and decodes back.
 */
export function slotKey (client: string, target?: string): string {
  return target === undefined || target === '' ? client : `${client}~${Buffer.from(target).toString('base64url')}`
}

export function parseSlot (slot: string): { client: string, target?: string } {
  const i = slot.indexOf('~', 1)
  if (i < 0) return { client: slot }
  return { client: slot.slice(0, i), target: Buffer.from(slot.slice(i + 1), 'base64url').toString() }
}

export interface TokenRecord {
  tokenId: string
  client: string
  server: string
  state: TokenState
  issuedAt: number
  expiresAt: number
  renewAt: number
  lastUsedAt: number
  fingerprint: string
  slot: string
  /** The source id for a source token, '' for a PMS token. */
  target: string
  /** When the token was revoked or invalidated, and why (the reason given by ops or the broker). */
  retiredAt?: number
  reason?: string
}

/** Who asked: recorded on every audit event. */
export interface RequestContext {
  /** The broker's own id of the request (never a client-supplied value). */
  requestId: string
  /** The client's address (validated: an IP address, see plugins/request-identity.ts). */
  ip: string
  /** The caller's X-Request-Id, when it sent a valid one: recorded apart from `requestId`. */
  clientRequestId?: string
  /**
   * How the token is handed out: absent for an HTTP answer, `stream` on the push channel (audited
   * as `detail.via`), `proxy` when the PMS proxy attaches it to a request (cache hits of the proxy
   * are not written to the serves stream: one per proxied request would flood it).
   */
  via?: 'stream' | 'proxy'
}

/**
 * The audit stream's `requestId` field: the broker's id, then `|` and the caller's X-Request-Id
 * when there is one (neither can contain `|`). AuditLog splits it into `requestId` and
 * `clientRequestId`, so the Lua scripts need no extra argument.
 */
export function requestIdField (ctx: RequestContext): string {
  return ctx.clientRequestId === undefined || ctx.clientRequestId === '' ? ctx.requestId : `${ctx.requestId}|${ctx.clientRequestId}`
}

export const SYSTEM_CONTEXT: RequestContext = { requestId: '', ip: '' }

export interface AuditInput {
  action: string
  client?: string
  server?: string
  tokenId?: string
  fingerprint?: string
  detail?: Record<string, unknown>
}

/** `target`: only tokens of this source; '-' only PMS tokens; absent: both. */
export type RetireSelector =
  | { tokenId: string }
  | { client: string, server?: string, target?: string }
  | { server: string, target?: string }
  | { all: true, target?: string }
  | { target: string }

export interface TokenStoreOptions {
  redis: RedisClient
  keys: Keys
  /** The current BROKER_SECRET's keys and the previous ones' (a rotation in progress). */
  crypto: KeyRing
  /** Cap of the serves stream (cache hits); the security stream is trimmed by retention only. */
  auditMaxEvents: number
  /** AUDIT_RETENTION: how long a token's fingerprint stays traceable. Default 30 days. */
  auditRetentionMs?: number
  /** How long a token record is kept after its expiry, so GET /v1/tokens/:id can still say `expired`. */
  recordTtlMs: number
  /** Upper bound of one store call; Redis stalls turn into STORE_UNAVAILABLE instead of hangs. */
  timeoutMs?: number
  now?: () => number
  /** Called for every audit event written (metrics). */
  onAudit?: (action: string, count: number) => void
  /**
   * Called when a stored token cannot be opened (sealed under another BROKER_SECRET, or corrupt);
   * the token has already been invalidated with reason `undecryptable` (metrics, a log line).
   */
  onUndecryptable?: (server: string, tokenId: string) => void
  /**
   * REDIS_WAIT_REPLICAS / REDIS_WAIT_TIMEOUT: after each security audit event the store waits (WAIT)
   * until this many replicas have it, so a failover right after cannot take it back unnoticed.
   */
  waitReplicas?: number
  waitTimeoutMs?: number
  /**
   * The connection security events are written and WAITed on (services.ts: role `audit`, only
   * with REDIS_WAIT_REPLICAS). A WAIT holds up every command behind it on its connection, so it
   * must not sit in front of cache hits. Default: `redis`.
   */
  durable?: RedisClient
  /** Fewer replicas acknowledged than asked (`acked` -1: the WAIT itself failed): the event is at risk in a failover. */
  onUnreplicated?: (action: string, acked: number) => void
}

type Reply = Array<string | number | null>

declare module 'ioredis' {
  interface RedisCommander<Context> {
    ptbServe(...args: Array<string | number>): Result<Reply, Context>
    ptbPeek(...args: Array<string | number>): Result<string | null, Context>
    ptbStore(...args: Array<string | number>): Result<Reply, Context>
    ptbRetire(...args: Array<string | number>): Result<[number, number], Context>
    ptbAudit(...args: Array<string | number>): Result<string, Context>
    ptbUnlock(...args: Array<string | number>): Result<number, Context>
    ptbReseal(...args: Array<string | number>): Result<number, Context>
  }
}

/** Registers the scripts on a connection (idempotent). */
export function defineScripts (redis: RedisClient): void {
  if (typeof (redis as Partial<RedisClient>).ptbServe === 'function') return
  redis.defineCommand('ptbServe', { numberOfKeys: 5, lua: SERVE })
  redis.defineCommand('ptbPeek', { numberOfKeys: 1, lua: PEEK })
  redis.defineCommand('ptbStore', { numberOfKeys: 9, lua: STORE })
  redis.defineCommand('ptbRetire', { numberOfKeys: 3, lua: RETIRE })
  redis.defineCommand('ptbAudit', { numberOfKeys: 1, lua: AUDIT })
  redis.defineCommand('ptbUnlock', { numberOfKeys: 1, lua: UNLOCK })
  redis.defineCommand('ptbReseal', { numberOfKeys: 1, lua: RESEAL })
}

/**
 * The encrypted token store. Redis holds only sealed tokens and HMAC fingerprints; this class is
 * the only place that seals and opens them.
 */
export class TokenStore {
  readonly redis: RedisClient
  readonly keys: Keys
  readonly #ring: KeyRing
  readonly #crypto: BrokerKeys
  readonly #kids: string
  readonly #maxlen: number
  readonly #recordTtlMs: number
  readonly #retentionMs: number
  readonly #timeoutMs: number
  readonly #hotDeadline: CoarseDeadline
  readonly now: () => number
  readonly #onAudit: (action: string, count: number) => void
  readonly #onUndecryptable: (server: string, tokenId: string) => void
  readonly #waitReplicas: number
  /** Where security events are written (and WAITed on); `redis` unless a connection of their own is given. */
  readonly #durable: RedisClient
  /** The WAIT in flight on #durable, and the one queued behind it (group commit, see #replicated). */
  readonly #waits: { inflight?: Promise<number>, next?: Promise<number> } = {}
  readonly #waitTimeoutMs: number
  readonly #onUnreplicated: (action: string, acked: number) => void

  constructor (opts: TokenStoreOptions) {
    this.redis = opts.redis
    this.keys = opts.keys
    this.#ring = opts.crypto
    this.#crypto = opts.crypto.current
    this.#kids = [...opts.crypto.byId.keys()].join(',')
    this.#maxlen = opts.auditMaxEvents
    this.#recordTtlMs = opts.recordTtlMs
    this.#retentionMs = opts.auditRetentionMs ?? 30 * 86_400_000
    // With the two rate-limit checks (250 ms each at most), a stalled Redis still gets a 503 within 2 s.
    this.#timeoutMs = opts.timeoutMs ?? 1000
    this.#hotDeadline = new CoarseDeadline(this.#timeoutMs)
    this.now = opts.now ?? Date.now
    this.#onAudit = opts.onAudit ?? (() => {})
    this.#onUndecryptable = opts.onUndecryptable ?? (() => {})
    this.#waitReplicas = opts.waitReplicas ?? 0
    this.#durable = opts.durable ?? opts.redis
    this.#waitTimeoutMs = opts.waitTimeoutMs ?? 100
    this.#onUnreplicated = opts.onUnreplicated ?? (() => {})
    defineScripts(this.redis)
    defineScripts(this.#durable)
  }

  fingerprint (token: string): string {
    return fingerprint(this.#crypto.fingerprint, token)
  }

  /** The token's fingerprint under every known secret, current first (trace across a rotation). */
  fingerprints (token: string): string[] {
    return [...this.#ring.byId.values()].map((k) => fingerprint(k.fingerprint, token))
  }

  /** Runs one Redis call with this store's deadline (redis.ts withDeadline): a stall is a 503, never a hang. */
  readonly call = async <T>(fn: () => Promise<T>): Promise<T> => await withDeadline(fn, this.#timeoutMs)

  /** The hot call, under the store's deadline without a timer per call (redis.ts CoarseDeadline). */
  async #direct<T> (fn: () => Promise<T>): Promise<T> {
    return await this.#hotDeadline.run(fn)
  }

  /**
   * The durability step of a security event (README, *Failover and the audit trail*): WAIT for
   * REDIS_WAIT_REPLICAS acknowledgements of this connection's writes so far. A shortfall does not
   * fail the request (the event is on the primary, and refusing would turn a lagging replica into
   * an outage); it is reported, so ops know which events a failover could lose.
   */
  async #replicated (action: string): Promise<void> {
    if (this.#waitReplicas === 0) return
    const acked = await this.#barrier().catch(() => -1)
    if (acked < this.#waitReplicas) this.#onUnreplicated(action, acked)
  }

  /**
   * Group commit: one WAIT covers every write its connection sent before it, so concurrent
   * security events share WAITs, and at most one is in flight with one queued behind it. An
   * event whose write completed joins the queued WAIT (not yet sent, so it will follow the write)
   * or queues one. With a replica down, an event therefore waits at most about two
   * REDIS_WAIT_TIMEOUTs, however many there are, instead of a WAIT each piling up on the connection.
   */
  #barrier (): Promise<number> {
    const w = this.#waits
    if (w.next !== undefined) return w.next
    const start = (): Promise<number> => {
      const p: Promise<number> = this.call(() => waitForReplicas(this.#durable, this.keys.audit, this.#waitReplicas, this.#waitTimeoutMs))
        .finally(() => { if (w.inflight === p) w.inflight = undefined })
      w.inflight = p
      return p
    }
    if (w.inflight === undefined) return start()
    const next = w.inflight.catch(() => 0).then(() => {
      w.next = undefined
      return start()
    })
    w.next = next
    return next
  }

  /**
   * The hot path: the current live token of (client, server), with its `token.issue` audit event
   * written in the same script. `undefined` when there is none (the caller mints). A token this
   * broker cannot open (another BROKER_SECRET, corrupt ciphertext) is invalidated with reason
   * `undecryptable` and is a miss too: the caller mints a fresh one instead of failing.
   */
  async serve (client: string, server: string, source: 'cache' | 'upstream', ctx: RequestContext, target?: string): Promise<ServedToken | undefined> {
    return (await this.serveCounted(client, server, source, ctx, target)).token
  }

  /**
   * `serve`, with the client's rate limit counted in the same script (`limit`): one Redis round
   * trip for a cache hit, limit included. Over the limit nothing is served or audited and the
   * answer says so (`limited`); `count` and `ttlMs` describe the client's current window.
   */
  async serveCounted (client: string, server: string, source: 'cache' | 'upstream', ctx: RequestContext, target?: string,
    limit?: { max: number, windowMs: number }): Promise<{ token?: ServedToken, limited: boolean, count: number, ttlMs: number, invalidated?: true }> {
    const k = this.keys
    const slot = slotKey(client, target)
    const action = target === undefined ? 'token.issue' : 'source.connect'
    // A coarse deadline, not a timer per request (a timer cost 1.5 % of the profile).
    // The first serve of a fresh mint writes a security event: on the connection that WAITs for it.
    const conn = source === 'upstream' ? this.#durable : this.redis
    const r = await this.#direct(() => conn.ptbServe(
      k.current(slot, server), k.active(server), k.audit, k.auditServes, k.rateLimitPrefix + `client:${client}`,
      k.tokenPrefix, slot, server, this.now(), requestIdField(ctx), ctx.ip, source, this.#maxlen, client, action, target ?? '',
      this.#crypto.keyId, this.#kids, limit?.max ?? 0, limit?.windowMs ?? 0, ctx.via ?? ''))
    const rate = { count: Number(r[1]), ttlMs: Number(r[2]) }
    if (r[0] === 'limited') return { limited: true, ...rate }
    const v = r.slice(3)
    if (r[0] === 'miss') {
      if (v[0] === 'mismatch') this.#onAudit('token.mismatch', 1)
      return { limited: false, ...rate }
    }
    const binding = { client, server, slot }
    if (r[0] === 'foreign') {
      await this.#undecryptable(String(v[0]), server, 'sealed under another BROKER_SECRET')
      return { limited: false, ...rate, invalidated: true }
    }
    if (r[0] === 'unstamped') {
      // Sealed before records carried a key id: open it here, and stamp it when it opens.
      const tokenId = String(v[0])
      const opened = this.#openWithRing(String(v[1]), { tokenId, ...binding })
      if (opened === undefined) {
        await this.#undecryptable(tokenId, server, 'cannot be opened')
        return { limited: false, ...rate, invalidated: true }
      }
      await this.call(() => this.redis.hsetnx(k.token(tokenId), 'kid', opened.kid))
      return { token: await this.serve(client, server, source, ctx, target), limited: false, ...rate }
    }
    if (r[0] !== 'hit') return { limited: false, ...rate }
    const tokenId = String(v[0])
    const kid = String(v[7])
    const token = this.#tryOpen(String(v[1]), { tokenId, ...binding }, kid)
    if (token === undefined) {
      // Same key id but the ciphertext does not authenticate: altered in Redis. The serve event
      // is already written; the invalidation that follows it in the trail says why nobody got it.
      await this.#undecryptable(tokenId, server, 'ciphertext does not authenticate')
      return { limited: false, ...rate, invalidated: true }
    }
    this.#onAudit(action, 1)
    // The first serve of a fresh mint is a security event (cache hits are not, and never wait).
    if (source === 'upstream') await this.#replicated(action)
    if (kid !== this.#crypto.keyId) this.#reseal(tokenId, kid, String(v[1]), token, { tokenId, ...binding })
    return {
      token: {
        tokenId,
        token,
        issuedAt: Number(v[2]),
        expiresAt: Number(v[3]),
        renewAt: Number(v[4]),
        machineIdentifier: String(v[5] ?? ''),
        meta: String(v[6] ?? ''),
      },
      limited: false,
      ...rate,
    }
  }

  #tryOpen (sealed: string, binding: SealBinding, kid?: string): string | undefined {
    return this.#openWithRing(sealed, binding, kid)?.token
  }

  #openWithRing (sealed: string, binding: SealBinding, kid?: string): { token: string, kid: string } | undefined {
    const keys = kid === undefined ? [...this.#ring.byId.values()] : [this.#ring.byId.get(kid)].filter((k) => k !== undefined)
    for (const k of keys) {
      try {
        return { token: open(k.encryption, sealed, binding), kid: k.keyId }
      } catch {}
    }
    return undefined
  }

  /**
   * A token sealed under a previous secret is re-sealed under the current one when served, so a
   * rotation completes by itself and the previous secret can be dropped once every active token
   * was served (or after TOKEN_LIFETIME). Best effort: a failure only means it is tried again.
   */
  #reseal (tokenId: string, oldKid: string, oldEnc: string, token: string, binding: SealBinding): void {
    const enc = seal(this.#crypto.encryption, token, binding)
    this.call(() => this.redis.ptbReseal(this.keys.token(tokenId), oldKid, oldEnc, this.#crypto.keyId, enc)).catch(() => {})
  }

  /** Takes a token that cannot be opened out of service, so the next request mints a fresh one. */
  async #undecryptable (tokenId: string, server: string, why: string): Promise<void> {
    await this.retire({ tokenId }, 'invalidated', 'token.invalidate', { reason: 'undecryptable', why })
    this.#onUndecryptable(server, tokenId)
  }

  /** Id of the live current token of (client, server), without auditing or touching activity. */
  async peek (client: string, server: string, target?: string): Promise<string | undefined> {
    const id = await this.call(() => this.redis.ptbPeek(this.keys.current(slotKey(client, target), server), this.keys.tokenPrefix, this.now()))
    return id ?? undefined
  }

  /**
   * Stores a freshly minted token as the one served for (client, server).
   * `expectCurrent` makes it a compare-and-set for rotations: the replacement only lands if the
   * token being rotated is still the current one. Returns the new id, or undefined on conflict.
   */
  async put (input: {
    client: string
    server: string
    token: string
    issuedAt: number
    lifetimeMs: number
    renewAfterMs: number
    machineIdentifier: string
    expectCurrent?: string
    audit?: { action: string, detail: Record<string, unknown> }
    ctx?: RequestContext
    /** A source token: the source id and its connection details (JSON). */
    target?: string
    meta?: string
    /** The push channel's `reason` for a client's new token; by default derived from `audit` (push-log.ts tokenReason). */
    reason?: TokenReason
  }): Promise<{ tokenId: string, previous: string | undefined, renewAt: number, expiresAt: number } | undefined> {
    const k = this.keys
    const tokenId = newTokenId()
    const expiresAt = input.issuedAt + input.lifetimeMs
    const renewAt = input.issuedAt + input.renewAfterMs
    const ctx = input.ctx ?? SYSTEM_CONTEXT
    const slot = slotKey(input.client, input.target)
    const fp = this.fingerprint(input.token)
    const r = await this.call(() => this.#durable.ptbStore(
      k.current(slot, input.server), k.active(input.server), k.byClient(input.client), k.byServer(input.server),
      k.allTokens, k.audit, k.token(tokenId), k.fingerprint(fp), k.push,
      k.tokenPrefix, input.client, input.server, tokenId, seal(this.#crypto.encryption, input.token, { tokenId, client: input.client, server: input.server, slot }),
      fp, input.issuedAt, expiresAt, renewAt, input.machineIdentifier, this.now(),
      input.expectCurrent ?? '', 'rotated', input.audit?.action ?? '', requestIdField(ctx), ctx.ip,
      JSON.stringify(input.audit?.detail ?? {}), this.#maxlen, this.#recordTtlMs, slot, input.target ?? '', input.meta ?? '',
      this.#crypto.keyId, this.#retentionMs, input.reason ?? tokenReason(input.audit), PUSH_MAXLEN))
    if (r[0] !== 'ok') return undefined
    if (input.audit !== undefined) {
      this.#onAudit(input.audit.action, 1)
      await this.#replicated(input.audit.action)
    }
    return { tokenId, previous: r[1] === '' ? undefined : String(r[1]), renewAt, expiresAt }
  }

  async get (tokenId: string): Promise<TokenRecord | undefined> {
    const f = await this.call(() => this.redis.hmget(this.keys.token(tokenId),
      'client', 'server', 'state', 'issuedAt', 'expiresAt', 'renewAt', 'lastUsedAt', 'fp', 'slot', 'target', 'retiredAt', 'reason'))
    if (f[0] === null) return undefined
    const expiresAt = Number(f[4])
    let state = f[2] as TokenState
    if ((state === 'active' || state === 'rotated') && this.now() >= expiresAt) state = 'expired'
    return {
      tokenId,
      client: String(f[0]),
      server: String(f[1]),
      state,
      issuedAt: Number(f[3]),
      expiresAt,
      renewAt: Number(f[5]),
      lastUsedAt: Number(f[6]),
      fingerprint: String(f[7]),
      slot: f[8] ?? String(f[0]),
      target: f[9] ?? '',
      retiredAt: f[10] === null ? undefined : Number(f[10]),
      reason: f[11] === null || f[11] === '' ? undefined : f[11],
    }
  }

  /**
   * The sealed token of a record, opened; for canary checks and rejected-token verification.
   * `undefined` when there is none, or when it cannot be opened (then it is invalidated too).
   */
  async reveal (tokenId: string): Promise<string | undefined> {
    const [enc, client, server, slot, kid] = await this.call(() => this.redis.hmget(this.keys.token(tokenId), 'enc', 'client', 'server', 'slot', 'kid'))
    if (enc === null) return undefined
    const token = this.#tryOpen(enc, { tokenId, client: client ?? '', server: server ?? '', slot: slot ?? client ?? '' }, kid ?? undefined)
    if (token === undefined) await this.#undecryptable(tokenId, server ?? '', 'cannot be opened')
    return token
  }

  /**
   * Revokes or invalidates every live token the selector names; each one gets its own audit event.
   * Returns how many changed and the latest `expiresAt` among them (until when PMS still honours them).
   */
  async retire (selector: RetireSelector, newState: 'revoked' | 'invalidated', action: string,
    detail: Record<string, unknown>, ctx: RequestContext = SYSTEM_CONTEXT): Promise<{ count: number, latestExpiresAt: number }> {
    const k = this.keys
    let mode = 'index'
    let index = k.allTokens
    let tokenId = ''
    let client = ''
    let server = ''
    const target = 'target' in selector ? selector.target ?? '' : ''
    if ('tokenId' in selector) {
      mode = 'one'
      tokenId = selector.tokenId
    } else if ('client' in selector) {
      index = k.byClient(selector.client)
      client = selector.client
      server = selector.server ?? ''
    } else if ('server' in selector) {
      index = k.byServer(selector.server)
      server = selector.server
    }
    const [count, latest] = await this.call(() => this.#durable.ptbRetire(k.audit, index, k.push,
      k.tokenPrefix, k.currentPrefix, this.now(), mode, tokenId, client, server, newState, action,
      requestIdField(ctx), ctx.ip, JSON.stringify(detail), this.#maxlen, target, PUSH_MAXLEN))
    if (Number(count) > 0) {
      this.#onAudit(action, Number(count))
      await this.#replicated(action)
    }
    return { count: Number(count), latestExpiresAt: Number(latest) }
  }

  /** Appends an audit event not tied to handing out a token. Fails (STORE_UNAVAILABLE) when Redis does. */
  async audit (e: AuditInput, ctx: RequestContext = SYSTEM_CONTEXT): Promise<string> {
    const id = await this.call(() => this.#durable.ptbAudit(this.keys.audit, this.#maxlen, this.now(), e.action,
      e.client ?? '', e.server ?? '', e.tokenId ?? '', e.fingerprint ?? '', requestIdField(ctx), ctx.ip,
      JSON.stringify(e.detail ?? {})))
    this.#onAudit(e.action, 1)
    await this.#replicated(e.action)
    return id
  }

  /**
   * Who received the token with one of these fingerprints, from the index written at mint (kept
   * for AUDIT_RETENTION): found however many events were written since.
   */
  async holder (fingerprints: readonly string[]): Promise<{ tokenId: string, client: string, server: string, issuedAt: number, fingerprint: string } | undefined> {
    if (fingerprints.length === 0) return undefined
    const found = await this.call(() => this.redis.mget(...fingerprints.map((fp) => this.keys.fingerprint(fp))))
    for (const [i, v] of found.entries()) {
      if (v === null) continue
      const [tokenId, client, server, issuedAt] = v.split('|')
      return { tokenId, client, server, issuedAt: Number(issuedAt), fingerprint: fingerprints[i] }
    }
    return undefined
  }

  /** Takes a short-lived lock; returns the owner string when taken, undefined when someone else holds it. */
  async lock (key: string, ttlMs: number): Promise<string | undefined> {
    const owner = newTokenId()
    const ok = await this.call(() => this.redis.set(key, owner, 'PX', ttlMs, 'NX'))
    return ok === 'OK' ? owner : undefined
  }

  async unlock (key: string, owner: string): Promise<void> {
    await this.call(() => this.redis.ptbUnlock(key, owner))
  }

  /** Clients that asked for a token of `server` within `windowMs` (the "active" ones). */
  async activeClients (server: string, windowMs: number): Promise<string[]> {
    return await this.call(() => this.redis.zrangebyscore(this.keys.active(server), this.now() - windowMs, '+inf'))
  }
}
