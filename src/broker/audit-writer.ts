import type { Logger } from 'pino'
import type { Metrics } from '../metrics.ts'
import { type RedisClient, waitForReplicas } from '../redis.ts'
import type { RedisContext } from './keys.ts'
import { AUDIT_EVENT, type auditArgs } from './scripts.ts'

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

export interface AuditWriterOptions {
  /** The request path's connection (refusals), its keys, deadline and clock. */
  rc: RedisContext
  /** AUDIT_MAX_EVENTS: cap of the serves stream (cache hits) and of the refusals stream; the security stream is trimmed by retention only. */
  maxEvents: number
  /**
   * The connection security events are written and WAITed on (services.ts: role `audit`, only
   * with REDIS_WAIT_REPLICAS). A WAIT holds up every command behind it on its connection, so it
   * must not sit in front of cache hits. Default: `rc.redis`.
   */
  durable?: RedisClient
  /**
   * REDIS_WAIT_REPLICAS / REDIS_WAIT_TIMEOUT: after each security audit event the writer waits
   * (WAIT) until this many replicas have it, so a failover right after cannot take it back unnoticed.
   */
  waitReplicas?: number
  waitTimeoutMs?: number
  /**
   * Counts every audit event written (`ptb_audit_events_total`), and every security event fewer
   * replicas acknowledged than asked (`ptb_redis_unreplicated_writes_total`).
   */
  metrics?: Metrics
  /** Says when a security event is at risk in a failover (fewer replicas than asked), at most every 10 s. */
  logger?: Logger
}

/**
 * Writes the audit trail's events that are not part of a token script (the token store's scripts
 * write theirs in the same step as the change), and makes security events durable: every one,
 * whichever writes it, is followed by `replicated`.
 */
export class AuditWriter {
  readonly #rc: RedisContext
  /** Where security events are written (and WAITed on): the token store's scripts that write one use it too. */
  readonly durable: RedisClient
  readonly maxEvents: number
  readonly #waitReplicas: number
  readonly #waitTimeoutMs: number
  readonly #metrics: Metrics | undefined
  readonly #logger: Logger | undefined
  #unreplicatedLogged = 0
  /** The WAIT in flight on `durable`, and the one queued behind it (group commit, see #barrier). */
  readonly #waits: { inflight?: Promise<number>, next?: Promise<number> } = {}

  constructor (opts: AuditWriterOptions) {
    this.#rc = opts.rc
    this.durable = opts.durable ?? opts.rc.redis
    this.maxEvents = opts.maxEvents
    this.#waitReplicas = opts.waitReplicas ?? 0
    this.#waitTimeoutMs = opts.waitTimeoutMs ?? 100
    this.#metrics = opts.metrics
    this.#logger = opts.logger
  }

  /** Counts events a script wrote (metrics). */
  written (action: string, count = 1): void {
    this.#metrics?.auditEvents.inc({ action }, count)
  }

  /** Appends a security event not tied to handing out a token. Fails (STORE_UNAVAILABLE) when Redis does. */
  async write (e: AuditInput, ctx: RequestContext = SYSTEM_CONTEXT): Promise<string> {
    const id = await this.#rc.call(() => AUDIT_EVENT.evaluate(this.durable, this.#event(this.#rc.keys.audit, e, ctx, 0)))
    this.written(e.action)
    await this.replicated(e.action)
    return id
  }

  /**
   * Appends a refusal (`auth.denied`, broker/refusal-trail.ts) to its own stream, capped at
   * AUDIT_MAX_EVENTS like the serves stream: refusals never share a cap with revocations and mints.
   * No WAIT: a refusal changed nothing a failover could lose.
   */
  async refusal (e: AuditInput, ctx: RequestContext): Promise<string> {
    const id = await this.#rc.call(() => AUDIT_EVENT.evaluate(this.#rc.redis, this.#event(this.#rc.keys.auditRefusals, e, ctx, this.maxEvents)))
    this.written(e.action)
    return id
  }

  #event (stream: string, e: AuditInput, ctx: RequestContext, maxlen: number): Parameters<typeof auditArgs>[0] {
    return {
      stream,
      maxlen,
      now: this.#rc.now(),
      action: e.action,
      client: e.client ?? '',
      server: e.server ?? '',
      tokenId: e.tokenId ?? '',
      fingerprint: e.fingerprint ?? '',
      requestId: requestIdField(ctx),
      ip: ctx.ip,
      detail: JSON.stringify(e.detail ?? {}),
    }
  }

  /**
   * The durability step of a security event (README, *Failover and the audit trail*): WAIT for
   * REDIS_WAIT_REPLICAS acknowledgements of `durable`'s writes so far. A shortfall does not
   * fail the request (the event is on the primary, and refusing would turn a lagging replica into
   * an outage); it is reported, so ops know which events a failover could lose.
   */
  async replicated (action: string): Promise<void> {
    if (this.#waitReplicas === 0) return
    const acked = await this.#barrier().catch(() => -1)
    if (acked < this.#waitReplicas) this.#unreplicated(action, acked)
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
      const p: Promise<number> = this.#rc.call(() => waitForReplicas(this.durable, this.#rc.keys.audit, this.#waitReplicas, this.#waitTimeoutMs))
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

  /** A security event fewer replicas acknowledged (`acked` -1: the WAIT itself failed): counted, and logged at most every 10 s. */
  #unreplicated (action: string, acked: number): void {
    this.#metrics?.unreplicated.inc({ action })
    const t = Date.now()
    if (t - this.#unreplicatedLogged < 10_000) return
    this.#unreplicatedLogged = t
    this.#logger?.warn({ action, acked, wanted: this.#waitReplicas, timeoutMs: this.#waitTimeoutMs },
      'a security audit event reached fewer Redis replicas than REDIS_WAIT_REPLICAS: a failover now could lose it (counted in ptb_redis_unreplicated_writes_total)')
  }
}
