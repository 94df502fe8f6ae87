import { randomUUID } from 'node:crypto'
import type { RedisClient } from '../redis.ts'
import { LEASE } from './scripts.ts'

/**
 * Concurrency limits counted across instances (broker/rate-limiter.ts names them): each open
 * thing holds a **lease**, a member of a sorted set in Redis scored with its expiry. Taking one
 * (scripts/lease.lua) drops the lapsed members, counts the rest and adds the new one if there is
 * room, in one step. The holder renews its leases every third of their life (one pipelined write
 * per instance for all of them) and removes each when its thing ends.
 *
 * Leases rather than a counter: a counter incremented at the start and decremented at the end is
 * wrong for good after a broker dies with things open (killed, out of memory, a lost host), and
 * only a flushed Redis would clear it. A dead instance's leases lapse within `leaseMs` instead,
 * and so does the set itself (its TTL is renewed with them).
 */

export interface StreamLeasesOptions {
  /** How long a lease lives without renewal (default 30 s): the longest a dead instance's leases keep counting. */
  leaseMs?: number
  now?: () => number
}

export interface Lease {
  readonly key: string
  readonly member: string
}

export class StreamLeases {
  readonly #redis: RedisClient
  readonly #leaseMs: number
  readonly #now: () => number
  /** Open leases of this instance: set key → members. */
  readonly #held = new Map<string, Set<string>>()
  #timer: NodeJS.Timeout | undefined

  constructor (redis: RedisClient, opts: StreamLeasesOptions = {}) {
    this.#redis = redis
    this.#leaseMs = opts.leaseMs ?? 30_000
    this.#now = opts.now ?? Date.now
  }

  get leaseMs (): number {
    return this.#leaseMs
  }

  /** Leases this instance holds. */
  get size (): number {
    let n = 0
    for (const s of this.#held.values()) n += s.size
    return n
  }

  /** Takes a lease in `key` if fewer than `max` are held (by every instance together); `current` counts them, this one included. */
  async acquire (key: string, max: number): Promise<{ lease?: Lease, current: number }> {
    const member = randomUUID()
    const now = this.#now()
    const { taken, count: current } = await LEASE.evaluate(this.#redis, { key, now, expiry: now + this.#leaseMs, member, max, ttlMs: this.#leaseMs })
    if (!taken) return { current }
    let set = this.#held.get(key)
    if (set === undefined) this.#held.set(key, set = new Set())
    set.add(member)
    this.#start()
    return { lease: { key, member }, current }
  }

  /** Gives a lease back (its thing ended). Idempotent; a failed removal lapses by itself. */
  release (lease: Lease): void {
    const set = this.#held.get(lease.key)
    if (set === undefined || !set.delete(lease.member)) return
    if (set.size === 0) this.#held.delete(lease.key)
    if (this.#held.size === 0) this.#stop()
    this.#redis.zrem(lease.key, lease.member).catch(() => {})
  }

  /** One renewal of every held lease (the timer runs it; tests may too). */
  async renew (): Promise<void> {
    if (this.#held.size === 0) return
    const expiry = this.#now() + this.#leaseMs
    const pipe = this.#redis.pipeline()
    for (const [key, members] of this.#held) {
      const args: Array<string | number> = []
      for (const m of members) args.push(expiry, m)
      pipe.zadd(key, ...args)
      pipe.pexpire(key, this.#leaseMs)
    }
    await pipe.exec()
  }

  /** Stops renewing without releasing (shutdown releases through the things ending; tests simulate a dead instance). */
  stop (): void {
    this.#stop()
    this.#held.clear()
  }

  #start (): void {
    if (this.#timer !== undefined) return
    this.#timer = setInterval(() => { this.renew().catch(() => {}) }, Math.max(10, Math.floor(this.#leaseMs / 3)))
    this.#timer.unref()
  }

  #stop (): void {
    if (this.#timer !== undefined) clearInterval(this.#timer)
    this.#timer = undefined
  }
}
