import { CoarseDeadline } from '../redis.ts'
import { type AuditWriter, type RequestContext, requestIdField, SYSTEM_CONTEXT } from './audit-writer.ts'
import { newTokenId, type SealBinding } from './crypto.ts'
import { type RedisContext, STORE_TIMEOUT_MS } from './keys.ts'
import { tokenReason } from './push-log.ts'
import type { Counter } from './rate-limiter.ts'
import { PEEK, RESEAL, RETIRE, SERVE, STORE } from './scripts.ts'
import type { Sealer } from './sealer.ts'
import type { UndecryptableTokens } from './undecryptable.ts'
import { type CurrentToken, type NewToken, type RetireSelector, type ServedToken, slotKey, type TokenRecord, type TokenState } from './tokens.ts'

export interface TokenStoreOptions {
  /** The request path's connection, the keys, the deadline wrapper and the clock. */
  rc: RedisContext
  /** Seals, opens and fingerprints tokens under the BROKER_SECRET key ring. */
  sealer: Sealer
  /** Counts the events the scripts write and makes security events durable; its `durable` connection runs the scripts that write one. */
  audit: AuditWriter
  /** AUDIT_RETENTION: how long a token's fingerprint stays traceable. Default 30 days. */
  auditRetentionMs?: number
  /** How long a token record is kept after its expiry, so GET /v1/tokens/:id can still say `expired`. */
  recordTtlMs: number
  /** Upper bound of a serve (a coarse deadline, see #hot). Default keys.ts STORE_TIMEOUT_MS. */
  timeoutMs?: number
  /**
   * Told when a stored token cannot be opened (sealed under another BROKER_SECRET, or corrupt),
   * after the token was invalidated with reason `undecryptable` (a metric, a log line).
   */
  undecryptable?: UndecryptableTokens
}

/**
 * The encrypted token store: serves, stores, reads and retires tokens through the Lua scripts
 * (scripts.ts: SERVE, STORE, RETIRE, PEEK, RESEAL, each naming its `scripts/*.lua` file). Redis
 * holds only sealed tokens and HMAC fingerprints (the Sealer makes them).
 */
export class TokenStore {
  readonly #rc: RedisContext
  readonly #sealer: Sealer
  readonly #audit: AuditWriter
  readonly #recordTtlMs: number
  readonly #retentionMs: number
  /** The hot call's deadline, without a timer per call (a timer cost 1.5 % of the profile; redis.ts CoarseDeadline). */
  readonly #hot: CoarseDeadline
  readonly #undecryptableTokens: UndecryptableTokens | undefined

  constructor (opts: TokenStoreOptions) {
    this.#rc = opts.rc
    this.#sealer = opts.sealer
    this.#audit = opts.audit
    this.#recordTtlMs = opts.recordTtlMs
    this.#retentionMs = opts.auditRetentionMs ?? 30 * 86_400_000
    this.#hot = new CoarseDeadline(opts.timeoutMs ?? STORE_TIMEOUT_MS)
    this.#undecryptableTokens = opts.undecryptable
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
   * `serve`, with the client's rate limit counted in the same script (`limit`, the counter
   * broker/rate-limiter.ts names): one Redis round trip for a cache hit, limit included. Over the limit nothing is served or audited and the
   * answer says so (`limited`); `count` and `ttlMs` describe the client's current window.
   */
  async serveCounted (client: string, server: string, source: 'cache' | 'upstream', ctx: RequestContext, target?: string,
    limit?: Counter): Promise<{ token?: ServedToken, limited: boolean, count: number, ttlMs: number, invalidated?: true }> {
    const { keys } = this.#rc
    const slot = slotKey(client, target)
    const action = target === undefined ? 'token.issue' : 'source.connect'
    // The first serve of a fresh mint writes a security event: on the connection that WAITs for it.
    const conn = source === 'upstream' ? this.#audit.durable : this.#rc.redis
    const r = await this.#hot.run(() => SERVE.evaluate(conn, {
      keys,
      slot,
      server,
      client,
      now: this.#rc.now(),
      requestId: requestIdField(ctx),
      ip: ctx.ip,
      source,
      servesMaxlen: this.#audit.maxEvents,
      action,
      target: target ?? '',
      kids: this.#sealer.kids,
      limitKey: limit?.key ?? keys.rateLimit('client', client),
      limitMax: limit?.max ?? 0,
      limitWindowMs: limit?.windowMs ?? 0,
      via: ctx.via ?? '',
    }))
    const rate = { count: r.count, ttlMs: r.ttlMs }
    if (r.kind === 'limited') return { limited: true, ...rate }
    if (r.kind === 'miss') {
      if (r.reason === 'mismatch') this.#audit.written('token.mismatch')
      return { limited: false, ...rate }
    }
    const binding = { client, server, slot }
    if (r.kind === 'foreign') {
      await this.#undecryptable(r.tokenId, server, 'sealed under another BROKER_SECRET')
      return { limited: false, ...rate, invalidated: true }
    }
    if (r.kind === 'unstamped') {
      // Sealed before records carried a key id: open it here, and stamp it when it opens.
      const { tokenId } = r
      const opened = this.#sealer.open(r.enc, { tokenId, ...binding })
      if (opened === undefined) {
        await this.#undecryptable(tokenId, server, 'cannot be opened')
        return { limited: false, ...rate, invalidated: true }
      }
      await this.#rc.call(() => this.#rc.redis.hsetnx(keys.token(tokenId), 'kid', opened.kid))
      return { token: await this.serve(client, server, source, ctx, target), limited: false, ...rate }
    }
    const { tokenId, kid } = r
    const token = this.#sealer.open(r.enc, { tokenId, ...binding }, kid)?.token
    if (token === undefined) {
      // Same key id but the ciphertext does not authenticate: altered in Redis. The serve event
      // is already written; the invalidation that follows it in the trail says why nobody got it.
      await this.#undecryptable(tokenId, server, 'ciphertext does not authenticate')
      return { limited: false, ...rate, invalidated: true }
    }
    this.#audit.written(action)
    // The first serve of a fresh mint is a security event (cache hits are not, and never wait).
    if (source === 'upstream') await this.#audit.replicated(action)
    if (kid !== this.#sealer.keyId) this.#reseal(tokenId, kid, r.enc, token, { tokenId, ...binding })
    return {
      token: { tokenId, token, issuedAt: r.issuedAt, expiresAt: r.expiresAt, renewAt: r.renewAt, machineIdentifier: r.mid, meta: r.meta },
      limited: false,
      ...rate,
    }
  }

  /**
   * A token sealed under a previous secret is re-sealed under the current one when served, so a
   * rotation completes by itself and the previous secret can be dropped once every active token
   * was served (or after TOKEN_LIFETIME). Best effort: a failure only means it is tried again.
   */
  #reseal (tokenId: string, oldKid: string, oldEnc: string, token: string, binding: SealBinding): void {
    const enc = this.#sealer.seal(token, binding)
    this.#rc.call(() => RESEAL.evaluate(this.#rc.redis, { keys: this.#rc.keys, tokenId, oldKid, oldEnc, newKid: this.#sealer.keyId, newEnc: enc })).catch(() => {})
  }

  /** Takes a token that cannot be opened out of service, so the next request mints a fresh one. */
  async #undecryptable (tokenId: string, server: string, why: string): Promise<void> {
    await this.retire({ tokenId }, 'invalidated', 'token.invalidate', { reason: 'undecryptable', why })
    this.#undecryptableTokens?.report(server)
  }

  /** Id of the live current token of (client, server), without auditing or touching activity. */
  async peek (client: string, server: string, target?: string): Promise<string | undefined> {
    return await this.#rc.call(() => PEEK.evaluate(this.#rc.redis, { keys: this.#rc.keys, slot: slotKey(client, target), server, now: this.#rc.now() }))
  }

  /**
   * Stores a freshly minted token as the one served for (client, server). With `expectCurrent`
   * it is a compare-and-set (rotations). Returns the new id, or undefined on conflict.
   */
  async put (input: NewToken): Promise<{ tokenId: string, previous: string | undefined, renewAt: number, expiresAt: number } | undefined> {
    const tokenId = newTokenId()
    const expiresAt = input.issuedAt + input.lifetimeMs
    const renewAt = input.issuedAt + input.renewAfterMs
    const ctx = input.ctx ?? SYSTEM_CONTEXT
    const slot = slotKey(input.client, input.target)
    const r = await this.#rc.call(() => STORE.evaluate(this.#audit.durable, {
      keys: this.#rc.keys,
      ...input,
      slot,
      tokenId,
      enc: this.#sealer.seal(input.token, { tokenId, client: input.client, server: input.server, slot }),
      kid: this.#sealer.keyId,
      fingerprint: this.#sealer.fingerprint(input.token),
      expiresAt,
      renewAt,
      now: this.#rc.now(),
      requestId: requestIdField(ctx),
      ip: ctx.ip,
      recordTtlMs: this.#recordTtlMs,
      retentionMs: this.#retentionMs,
      pushReason: input.reason ?? tokenReason(input.audit),
    }))
    if (!r.ok) return undefined
    if (input.audit !== undefined) {
      this.#audit.written(input.audit.action)
      await this.#audit.replicated(input.audit.action)
    }
    return { tokenId, previous: r.other, renewAt, expiresAt }
  }

  async get (tokenId: string): Promise<TokenRecord | undefined> {
    const f = await this.#rc.call(() => this.#rc.redis.hmget(this.#rc.keys.token(tokenId),
      'client', 'server', 'state', 'issuedAt', 'expiresAt', 'renewAt', 'lastUsedAt', 'fp', 'slot', 'target', 'retiredAt', 'reason'))
    const [client, server, stored, issuedAt, expires, renewAt, lastUsedAt, fp, slot, target, retiredAt, reason] = f
    if (client === null || client === undefined) return undefined
    const expiresAt = Number(expires)
    let state = stored as TokenState
    if ((state === 'active' || state === 'rotated') && this.#rc.now() >= expiresAt) state = 'expired'
    return {
      tokenId,
      client,
      server: String(server),
      state,
      issuedAt: Number(issuedAt),
      expiresAt,
      renewAt: Number(renewAt),
      lastUsedAt: Number(lastUsedAt),
      fingerprint: String(fp),
      slot: slot ?? client,
      target: target ?? '',
      retiredAt: retiredAt === null || retiredAt === undefined ? undefined : Number(retiredAt),
      reason: reason === null || reason === undefined || reason === '' ? undefined : reason,
    }
  }

  /**
   * The sealed token of a record, opened; for canary checks and rejected-token verification.
   * `undefined` when there is none, or when it cannot be opened (then it is invalidated too).
   */
  async reveal (tokenId: string): Promise<string | undefined> {
    const [enc, client, server, slot, kid] = await this.#rc.call(() => this.#rc.redis.hmget(this.#rc.keys.token(tokenId), 'enc', 'client', 'server', 'slot', 'kid'))
    if (enc === null || enc === undefined) return undefined
    const token = this.#sealer.open(enc, { tokenId, client: client ?? '', server: server ?? '', slot: slot ?? client ?? '' }, kid ?? undefined)?.token
    if (token === undefined) await this.#undecryptable(tokenId, server ?? '', 'cannot be opened')
    return token
  }

  /**
   * Revokes or invalidates every live token the selector names; each one gets its own audit event.
   * Returns how many changed and the latest `expiresAt` among them (until when PMS still honours them).
   */
  async retire (selector: RetireSelector, newState: 'revoked' | 'invalidated', action: string,
    detail: Record<string, unknown>, ctx: RequestContext = SYSTEM_CONTEXT): Promise<{ count: number, latestExpiresAt: number }> {
    const { keys } = this.#rc
    const by = 'tokenId' in selector
      ? { mode: 'one' as const, index: keys.allTokens, tokenId: selector.tokenId, client: '', server: '' }
      : 'client' in selector
        ? { mode: 'index' as const, index: keys.byClient(selector.client), tokenId: '', client: selector.client, server: selector.server ?? '' }
        : 'server' in selector
          ? { mode: 'index' as const, index: keys.byServer(selector.server), tokenId: '', client: '', server: selector.server }
          : { mode: 'index' as const, index: keys.allTokens, tokenId: '', client: '', server: '' }
    const { count, latestExpiresAt } = await this.#rc.call(() => RETIRE.evaluate(this.#audit.durable, {
      keys,
      ...by,
      target: 'target' in selector ? selector.target ?? '' : '',
      now: this.#rc.now(),
      newState,
      action,
      requestId: requestIdField(ctx),
      ip: ctx.ip,
      detail: JSON.stringify(detail),
    }))
    if (count > 0) {
      this.#audit.written(action, count)
      await this.#audit.replicated(action)
    }
    return { count, latestExpiresAt }
  }

  /** Clients that asked for a token of `server` within `windowMs` (the "active" ones). */
  async activeClients (server: string, windowMs: number): Promise<string[]> {
    return await this.#rc.call(() => this.#rc.redis.zrangebyscore(this.#rc.keys.active(server), this.#rc.now() - windowMs, '+inf'))
  }

  /** When a slot last asked for a token of `server` (ms), or undefined when it never did. */
  async lastAsked (server: string, slot: string): Promise<number | undefined> {
    const at = await this.#rc.call(() => this.#rc.redis.zscore(this.#rc.keys.active(server), slot))
    return at === null ? undefined : Number(at)
  }

  /**
   * The current PMS token records of these clients on `server`: one pipelined round trip for the
   * ids, one for the records (a rotation sweep reads thousands). Clients without one are left out.
   */
  async currentTokens (server: string, clients: readonly string[]): Promise<CurrentToken[]> {
    const { redis, keys } = this.#rc
    if (clients.length === 0) return []
    const ids = await this.#rc.call(() => redis.mget(clients.map((c) => keys.current(c, server))))
    const live = ids.flatMap((id, j) => (id === null ? [] : [{ tokenId: id, client: clients[j] ?? '' }]))
    if (live.length === 0) return []
    const pipe = redis.pipeline()
    for (const x of live) pipe.hmget(keys.token(x.tokenId), 'state', 'issuedAt', 'renewAt', 'expiresAt')
    const rows = await this.#rc.call(async () => (await pipe.exec()) ?? [])
    return rows.flatMap(([err, f], j) => {
      const x = live[j]
      if (err !== null || x === undefined) return []
      const [state = null, issuedAt, renewAt, expiresAt] = f as Array<string | null>
      const n = (v: string | null | undefined): number => (v === null || v === undefined ? NaN : Number(v))
      return [{ ...x, state, issuedAt: n(issuedAt), renewAt: n(renewAt), expiresAt: n(expiresAt) }]
    })
  }
}
