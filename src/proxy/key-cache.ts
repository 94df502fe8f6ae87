import type { Logger } from 'pino'
import type { RedisContext } from '../broker/keys.ts'
import type { RedisClient } from '../redis.ts'

/**
 * A local view of proxy key records, so that a proxied request does not read its key from Redis
 * every time (docs/proxy.md, *Redis round trips*). It is kept current by the change log: a
 * revocation writes a `proxy-key` entry to the push channel's stream (`keys.push`) in the same
 * script that marks the record revoked (proxy-keys.ts), and this instance's reader, blocked in
 * XREAD on that stream, drops the record as soon as Redis hands it the entry.
 *
 * It fails closed. The view is used only while the reader has confirmed a round recently: every
 * XREAD returns at least every `blockMs` (with entries or empty), and a round counts from the
 * moment it was sent, since everything written before then is in its answer. When the last
 * confirmed round is older than `freshMs` (Redis slow, the connection lost, the event loop
 * stalled), the view is emptied and every check reads Redis again, as without a cache, until the
 * reader is back. What stays local is only what does not change in Redis: the digest (compared in
 * constant time for every request, as before) and the expiry (compared with the clock for every
 * request). Only usable records are kept; unknown, revoked and malformed ones are always read.
 *
 * A record read from Redis is stored only if no revocation was seen, and the view was not emptied,
 * between the moment the read was sent and its answer (`generation`): a read that raced a
 * revocation cannot put the old record back.
 */

export interface KeyCacheOptions {
  rc: Pick<RedisContext, 'keys'>
  /** Opens the reader's own connection (its XREAD blocks). */
  connect: () => RedisClient
  logger: Logger
  /** Longest time since the last confirmed round for the view to be used (default 500 ms). */
  freshMs?: number
  /** How long one XREAD blocks (default 150 ms); well under `freshMs`. */
  blockMs?: number
  /** Records kept; the view is emptied when full (default 10,000). */
  maxEntries?: number
  /** A monotonic clock in ms (tests). */
  clock?: () => number
}

/** The change-log entry a revocation writes (`type proxy-key`, the key's `id`). */
export const PROXY_KEY_ENTRY_TYPE = 'proxy-key'

const BATCH = 1000

export class ProxyKeyCache {
  readonly #o: KeyCacheOptions
  readonly #entries = new Map<string, Record<string, string>>()
  readonly #clock: () => number
  readonly #freshMs: number
  #generation = 0
  /** When the last round that covers everything written before it was sent. */
  #confirmedAt = -Infinity
  #redis: RedisClient | undefined
  #loop: Promise<void> | undefined
  #closed = false
  #wasFresh = false
  readonly #subscribers: Array<(type: string, fields: string[]) => void> = []

  constructor (opts: KeyCacheOptions) {
    this.#o = opts
    this.#clock = opts.clock ?? (() => performance.now())
    this.#freshMs = opts.freshMs ?? 500
  }

  /** Changes whenever a revocation is seen or the view is emptied: taken before a read, passed to `set`. */
  get generation (): number {
    this.#fresh()
    return this.#generation
  }

  /** Whether the view is in use now (the reader confirmed a round within `freshMs`). */
  get usable (): boolean {
    return this.#fresh()
  }

  get size (): number { return this.#entries.size }

  /** A record as Redis had it, or undefined: not kept, or the view cannot be trusted now. */
  get (id: string): Record<string, string> | undefined {
    return this.#fresh() ? this.#entries.get(id) : undefined
  }

  /** Keeps a record read from Redis, unless a revocation or a stall came between the read (`generation`) and now. */
  set (id: string, record: Record<string, string>, generation: number): void {
    if (!this.#fresh() || generation !== this.#generation) return
    if (this.#entries.size >= (this.#o.maxEntries ?? 10_000)) this.#entries.clear()
    this.#entries.set(id, record)
  }

  /**
   * Calls `fn` with every change-log entry the reader sees (its `type` and raw fields), before the
   * round that brought it is confirmed: the proxy's view of tokens (token-view.ts) follows the
   * same reader, so one XREAD per instance keeps both current.
   */
  onEntry (fn: (type: string, fields: string[]) => void): void {
    this.#subscribers.push(fn)
  }

  /** Drops a record at once (a revocation made through this instance). */
  forget (id: string): void {
    this.#generation++
    this.#entries.delete(id)
  }

  /** Starts the reader (its position: the log's newest entry now; the view starts empty). */
  start (): void {
    if (this.#loop !== undefined || this.#closed) return
    const redis = this.#redis = this.#o.connect()
    this.#loop = this.#read(redis)
  }

  async close (): Promise<void> {
    this.#closed = true
    this.#entries.clear()
    this.#redis?.disconnect()
    await this.#loop?.catch(() => {})
  }

  /** Whether the view may be used; empties it when it may not (so nothing from before a stall survives it). */
  #fresh (): boolean {
    const fresh = this.#clock() - this.#confirmedAt <= this.#freshMs
    if (!fresh && this.#wasFresh) {
      this.#wasFresh = false
      this.#generation++
      this.#entries.clear()
      if (!this.#closed) this.#o.logger.warn('proxy key cache: the change-log reader is behind; keys are read from Redis until it is back')
    }
    return fresh
  }

  async #read (redis: RedisClient): Promise<void> {
    const stream = this.#o.rc.keys.push
    let position: string | undefined
    let pause = 50
    let lastLog = 0
    while (!this.#closed) {
      try {
        if (position === undefined) {
          const last = await redis.xrevrange(stream, '+', '-', 'COUNT', 1)
          position = last[0]?.[0] ?? '0-0'
        }
        const sent = this.#clock()
        const res = await redis.xread('COUNT', BATCH, 'BLOCK', this.#o.blockMs ?? 150, 'STREAMS', stream, position)
        pause = 50
        let n = 0
        for (const [, entries] of res ?? []) {
          for (const [id, fields] of entries) {
            position = id
            n++
            const type = field(fields, 'type') ?? ''
            if (type === PROXY_KEY_ENTRY_TYPE) {
              const key = field(fields, 'id')
              if (key !== undefined) this.forget(key)
            }
            for (const fn of this.#subscribers) fn(type, fields)
          }
        }
        // A full batch may have left entries written before `sent` unread: not a confirmed round.
        if (n < BATCH) {
          // Back from a stall: a read sent during it may predate an entry the reader never sees
          // (trimmed meanwhile), so no such read is kept.
          if (!this.#fresh()) this.#generation++
          this.#confirmedAt = sent
          this.#wasFresh = true
        }
      } catch (err) {
        if (this.#closed) return
        const now = Date.now()
        if (now - lastLog > 10_000) {
          lastLog = now
          this.#o.logger.warn({ err: { message: (err as Error).message } }, 'proxy key cache: change-log read failed; retrying')
        }
        await new Promise((resolve) => setTimeout(resolve, pause))
        pause = Math.min(pause * 2, 1000)
      }
    }
  }
}

/** A field of a change-log entry (its flat name/value list), undefined when absent. */
function field (fields: string[], name: string): string | undefined {
  for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i] === name) return fields[i + 1]
  return undefined
}
