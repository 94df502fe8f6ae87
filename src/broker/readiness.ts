import type { RedisContext } from './keys.ts'

export type ReadinessOptions = RedisContext

/**
 * What `/readyz` checks: Redis answers, and the audit trail can be written. Issuing fails closed
 * when the audit event cannot be written, so readiness must say so too: both audit streams must be
 * streams (or not exist yet) and Redis must accept writes (not out of memory, not a replica).
 */
export class Readiness {
  readonly #o: ReadinessOptions

  constructor (opts: ReadinessOptions) {
    this.#o = opts
  }

  /** Each check: 'ok' or what is wrong. */
  async check (): Promise<Record<string, string>> {
    const { redis, keys, call, now } = this.#o
    const checks: Record<string, string> = {}
    try {
      await call(() => redis.ping())
      checks.redis = 'ok'
    } catch {
      checks.redis = 'unreachable'
      return checks
    }
    try {
      const types = await Promise.all([keys.audit, keys.auditServes].map(async (k) => await call(() => redis.type(k))))
      await call(() => redis.set(keys.readiness, String(now()), 'PX', 60_000))
      checks.audit = types.every((type) => type === 'stream' || type === 'none') ? 'ok' : 'not writable'
    } catch {
      checks.audit = 'not writable'
    }
    return checks
  }
}
