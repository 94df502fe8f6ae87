import { newTokenId } from './crypto.ts'
import type { RedisContext } from './keys.ts'
import { RENEW_LOCK, UNLOCK } from './scripts.ts'

/**
 * Short-lived Redis locks (SET NX PX): the mint lock, the probe lock, the admin-token recheck's
 * rate lock and the scheduler lock. Each holder gets an unguessable owner string, and only that
 * owner can release or renew the lock, so a holder whose lock expired cannot free its successor's.
 */
export class Locks {
  readonly #rc: RedisContext

  constructor (rc: RedisContext) {
    this.#rc = rc
  }

  /** Takes the lock for `ttlMs`; returns the owner string when taken, undefined when someone else holds it. */
  async acquire (key: string, ttlMs: number): Promise<string | undefined> {
    const owner = newTokenId()
    const ok = await this.#rc.call(() => this.#rc.redis.set(key, owner, 'PX', ttlMs, 'NX'))
    return ok === 'OK' ? owner : undefined
  }

  /** Releases the lock if `owner` still holds it. */
  async release (key: string, owner: string): Promise<void> {
    await this.#rc.call(() => UNLOCK.evaluate(this.#rc.redis, { key, owner }))
  }

  /** Resets the lock's expiry to `ttlMs` if `owner` still holds it; false when it was lost. */
  async renew (key: string, owner: string, ttlMs: number): Promise<boolean> {
    return await this.#rc.call(() => RENEW_LOCK.evaluate(this.#rc.redis, { key, owner, ttlMs }))
  }
}
