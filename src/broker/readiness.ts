import { inspectRedis, type RedisTarget, type RedisView } from '../redis.ts'
import type { RedisContext } from './keys.ts'

export type ReadinessOptions = RedisContext & {
  /** How the broker reaches Redis (standalone, Sentinel or Cluster): readiness names the mode and asks Sentinels in a failover. */
  target: RedisTarget
}

export interface ReadinessResult {
  /** Each check: 'ok' or what is wrong. */
  checks: Record<string, string>
  /** Which node the broker writes to, when it is a reachable primary. */
  redis?: RedisView
}

/**
 * What `/readyz` checks: Redis answers on a primary, and the audit trail can be written. Issuing
 * fails closed when the audit event cannot be written, so readiness must say so too: both audit
 * streams must be streams (or not exist yet) and Redis must accept writes (not out of memory, not
 * a replica). With Sentinel, a failover in progress is named as such (the Sentinels are asked);
 * an unreachable Redis says why (TLS, authentication, ACL), from the connection's last error.
 */
export class Readiness {
  readonly #o: ReadinessOptions
  #last: { at: number, result: Promise<ReadinessResult> } | undefined

  constructor (opts: ReadinessOptions) {
    this.#o = opts
  }

  async check (): Promise<Record<string, string>> {
    return (await this.inspect()).checks
  }

  /**
   * `inspect`, at most once per `maxAgeMs` (shared by concurrent callers): `/readyz` is open to
   * anyone who reaches the port, and each check writes Redis; a flood of probes must not.
   */
  async recent (maxAgeMs = 1000): Promise<ReadinessResult> {
    const now = Date.now()
    if (this.#last === undefined || now - this.#last.at >= maxAgeMs) {
      const result = this.inspect()
      this.#last = { at: now, result }
      // A check that threw is not kept: the next call checks again.
      result.catch(() => { if (this.#last?.result === result) this.#last = undefined })
    }
    return await this.#last.result
  }

  async inspect (): Promise<ReadinessResult> {
    const { redis, keys, call, now } = this.#o
    const checks: Record<string, string> = {}
    const seen = await inspectRedis(redis, this.#o.target, keys.readiness, call)
    if (seen.view === undefined) {
      checks.redis = seen.problem ?? 'unreachable'
      return { checks }
    }
    checks.redis = 'ok'
    try {
      const types = await Promise.all([keys.audit, keys.auditServes, keys.auditRefusals].map(async (k) => await call(() => redis.type(k))))
      await call(() => redis.set(keys.readiness, String(now()), 'PX', 60_000))
      checks.audit = types.every((type) => type === 'stream' || type === 'none') ? 'ok' : 'not writable'
    } catch {
      checks.audit = 'not writable'
    }
    return { checks, redis: seen.view }
  }
}
