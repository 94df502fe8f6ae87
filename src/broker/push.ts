import { createRedis, type RedisClient, type RedisTarget } from '../redis.ts'
import type { Logger } from 'pino'
import { BrokerError, storeUnavailable } from '../errors.ts'
import type { RedisContext } from './keys.ts'
import type { RateLimiter } from './rate-limiter.ts'
import { compareIds, parsePushEntry, type PushEntry } from './push-log.ts'

/** What the change log holds, as `snapshot` read it. */
export interface PushSnapshot {
  /** The last id the log generated; every entry up to it has been written. `0-0`: none ever. */
  last: string
  /** The oldest entry kept, if any. */
  first: string | undefined
  /** Whether entries were ever trimmed (undefined: Redis 6.2 cannot tell). */
  trimmed: boolean | undefined
}

/** One open push stream of this instance, as the hub sees it. */
export interface PushSubscriber {
  client: string
  server: string
  /** Called with every change-log entry for this client and server, and every `server` entry of this server, in order. */
  deliver: (entry: PushEntry) => void
}

export interface PushHubOptions {
  /** Reads of the change log (last id, history) on the request-path connection, with its deadline. */
  rc: RedisContext
  /** Where the reader's own connection goes (createRedis role `push`, opened with the first stream): its blocking XREAD must not hold up other commands. */
  target: RedisTarget
  logger: Logger
  /** STREAM_MAX_PER_CLIENT and STREAM_MAX_TOTAL: open streams on this instance. */
  maxPerClient: number
  maxTotal: number
  /** How long one XREAD blocks before it is issued again (default 5 s). */
  blockMs?: number
  /** Counts a stream refused at a limit (the `streams` limit). */
  limiter: RateLimiter
}

/**
 * How far back a resume (`Last-Event-ID`) may go, in change-log entries of all clients. Replaying
 * means reading every entry since the id; an old id (`0-0` on a log that was never trimmed) would
 * read the whole log for each reconnect. Further back, the stream starts from the current token,
 * as when the history is gone: the token events in between would collapse into it anyway.
 */
export const RESUME_MAX_ENTRIES = 1000

/** Whether a change-log entry concerns a stream of (client, server): `*` stands for every client or server. */
export function concerns (e: PushEntry, client: string, server: string): boolean {
  if (e.type === 'server') return e.server === server
  return (e.server === server || e.server === '*') && (e.client === client || e.client === '*')
}

/** Seconds a client refused at a stream limit is told to wait. */
export const STREAM_LIMIT_RETRY_AFTER = 5

/**
 * The push channel's fan-out on one instance: the registry of open streams (with the limits per
 * client and in total) and ONE reader of the shared change log (push-log.ts) that hands each entry
 * to the streams it concerns. The reader starts with the first stream, on a connection of its
 * own (a blocking XREAD must not hold up the request path), keeps its position across Redis
 * reconnects (nothing written meanwhile is lost: the log keeps it), and stops on close.
 */
export class PushHub {
  readonly #o: PushHubOptions
  readonly #subs = new Map<string, Set<PushSubscriber>>()
  readonly #perClient = new Map<string, number>()
  #size = 0
  #redis: RedisClient | undefined
  #starting: Promise<void> | undefined
  #loop: Promise<void> | undefined
  #position = '0-0'
  #closed = false

  constructor (opts: PushHubOptions) {
    this.#o = opts
  }

  /** Open streams on this instance. */
  get size (): number { return this.#size }

  /** Open streams of one client on this instance. */
  countFor (client: string): number { return this.#perClient.get(client) ?? 0 }

  /**
   * Registers a stream: 429 beyond the limits (counted at once, so concurrent opens cannot
   * overshoot), 503 while shutting down or when the reader cannot start. Every entry the reader
   * reads after this resolves is delivered; entries up to `snapshot().last` read afterwards may be too,
   * and the stream ignores those (push-log.ts ids are ordered). Returns the unregister function.
   */
  async register (sub: PushSubscriber): Promise<() => void> {
    if (this.#closed) throw new BrokerError('UPSTREAM_UNAVAILABLE', 'The broker is shutting down; reconnect to another instance.', { retryAfter: 2 })
    if (this.countFor(sub.client) >= this.#o.maxPerClient) {
      this.#o.limiter.limited('streams')
      throw new BrokerError('RATE_LIMITED', `Too many open streams: at most ${this.#o.maxPerClient} per client on this instance; close one or retry later.`,
        { retryAfter: STREAM_LIMIT_RETRY_AFTER })
    }
    if (this.#size >= this.#o.maxTotal) {
      this.#o.limiter.limited('streams')
      throw new BrokerError('RATE_LIMITED', 'Too many open streams on this broker instance; retry later.', { retryAfter: STREAM_LIMIT_RETRY_AFTER })
    }
    const key = `${sub.client}\u0000${sub.server}`
    let set = this.#subs.get(key)
    if (set === undefined) this.#subs.set(key, set = new Set())
    set.add(sub)
    this.#size++
    this.#perClient.set(sub.client, this.countFor(sub.client) + 1)
    let registered = true
    const unregister = (): void => {
      if (!registered) return
      registered = false
      set.delete(sub)
      if (set.size === 0 && this.#subs.get(key) === set) this.#subs.delete(key)
      this.#size--
      const n = this.countFor(sub.client) - 1
      if (n <= 0) this.#perClient.delete(sub.client)
      else this.#perClient.set(sub.client, n)
    }
    try {
      await this.#start()
    } catch (err) {
      unregister()
      throw err instanceof BrokerError ? err : storeUnavailable(err)
    }
    return unregister
  }

  /**
   * Where the change log stands: the last id it ever generated (kept through trimming; `0-0` when
   * it never held anything), and what `covers` needs to tell whether the history after an id is
   * still all there.
   */
  async snapshot (): Promise<PushSnapshot> {
    const { rc } = this.#o
    const info = await rc.call(async () => await rc.redis.xinfo('STREAM', rc.keys.push).catch((err: Error) => {
      if (/no such key/i.test(err.message)) return []
      throw err
    })) as unknown[]
    const field = (name: string): unknown => {
      const i = info.indexOf(name)
      return i < 0 ? undefined : info[i + 1]
    }
    const first = field('first-entry') as [string, string[]] | null | undefined
    const added = field('entries-added')
    const length = field('length')
    return {
      last: typeof field('last-generated-id') === 'string' ? field('last-generated-id') as string : '0-0',
      first: Array.isArray(first) ? first[0] : undefined,
      // Redis 7 counts every entry ever added; on 6.2 whether anything was trimmed is unknown.
      trimmed: typeof added === 'number' && typeof length === 'number' ? added > length : undefined,
    }
  }

  /**
   * Whether the log still holds every entry after `id` (up to `s.last`): it does when `id` is at
   * or past the oldest entry kept, or when nothing was ever trimmed. An id past `s.last` is not
   * one of this log's (another Redis, a log that was deleted): false.
   */
  covers (s: PushSnapshot, id: string): boolean {
    if (compareIds(id, s.last) > 0) return false
    if (compareIds(id, s.last) === 0) return true
    if (s.first !== undefined && compareIds(id, s.first) >= 0) return true
    return s.trimmed === false
  }

  /**
   * The entries after `after` up to and including `upTo` that concern (client, server), oldest
   * first; undefined when more than `max` entries (of anyone) lie in between: one bounded read.
   */
  async history (client: string, server: string, after: string, upTo: string, max = RESUME_MAX_ENTRIES): Promise<PushEntry[] | undefined> {
    const { rc } = this.#o
    const batch = await rc.call(() => rc.redis.xrange(rc.keys.push, `(${after}`, upTo, 'COUNT', max + 1))
    if (batch.length > max) return undefined
    const out: PushEntry[] = []
    for (const [id, fields] of batch) {
      const e = parsePushEntry(id, fields)
      if (e !== undefined && concerns(e, client, server)) out.push(e)
    }
    return out
  }

  /** Stops the reader and closes its connection. Streams are ended by their owner (routes/stream.ts, routes/push-stream.ts) first. */
  async close (): Promise<void> {
    this.#closed = true
    this.#redis?.disconnect()
    await this.#loop?.catch(() => {})
  }

  #dispatch (entry: PushEntry): void {
    const targets: PushSubscriber[] = []
    if (entry.type === 'server') {
      for (const set of this.#subs.values()) {
        for (const sub of set) if (sub.server === entry.server) targets.push(sub)
      }
    } else if (entry.client === '*' || entry.server === '*') {
      // A revocation of a whole client (or of everyone), written once whatever tokens it found.
      for (const set of this.#subs.values()) {
        for (const sub of set) if (concerns(entry, sub.client, sub.server)) targets.push(sub)
      }
    } else {
      targets.push(...(this.#subs.get(`${entry.client}\u0000${entry.server}`) ?? []))
    }
    for (const sub of targets) {
      try {
        sub.deliver(entry)
      } catch (err) {
        this.#o.logger.warn({ err: { message: (err as Error).message } }, 'push channel: a stream failed to take an entry')
      }
    }
  }

  /** Starts the reader once: its position is the log's newest entry when it starts. */
  async #start (): Promise<void> {
    if (this.#loop !== undefined) return
    this.#starting ??= (async () => {
      try {
        this.#position = (await this.snapshot()).last
      } catch (err) {
        this.#starting = undefined
        throw err
      }
      if (this.#closed) return
      this.#redis = createRedis(this.#o.target, 'push', this.#o.logger)
      this.#loop = this.#read(this.#redis)
    })()
    await this.#starting
  }

  async #read (redis: RedisClient): Promise<void> {
    const { rc, logger } = this.#o
    let pause = 100
    let lastLog = 0
    while (!this.#closed) {
      try {
        const res = await redis.xread('COUNT', 500, 'BLOCK', this.#o.blockMs ?? 5000, 'STREAMS', rc.keys.push, this.#position)
        pause = 100
        if (res === null) continue
        for (const [, entries] of res) {
          for (const [id, fields] of entries) {
            this.#position = id
            const entry = parsePushEntry(id, fields)
            if (entry !== undefined) this.#dispatch(entry)
          }
        }
      } catch (err) {
        if (this.#closed) return
        // The position is kept: after a reconnect the reader continues where it stopped.
        const now = Date.now()
        if (now - lastLog > 10_000) {
          lastLog = now
          logger.warn({ err: { message: (err as Error).message } }, 'push channel reader: Redis read failed; retrying')
        }
        await new Promise((resolve) => setTimeout(resolve, pause))
        pause = Math.min(pause * 2, 5000)
      }
    }
  }
}
