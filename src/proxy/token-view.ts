import type { RequestContext } from '../broker/audit-writer.ts'
import type { IssueResult } from '../broker/issuer.ts'
import { parsePushEntry } from '../broker/push-log.ts'
import type { ServerConfig } from '../config/index.ts'
import type { ProxyKeyCache } from './key-cache.ts'

/**
 * The proxy's local view of the clients' live tokens, so a proxied request does not read its
 * token from Redis every time (docs/proxy.md, *Redis round trips*). Like the view of keys
 * (key-cache.ts), whose change-log reader it shares, it fails closed:
 *
 * - an entry is dropped as soon as the change log says the client's token of that server changed
 *   (`token`: minted, rotated, re-minted; `revoked`, including a whole client's or everyone's; a
 *   server's up/down flip drops the server's entries), and whenever the reader is behind or the
 *   view of keys moved (nothing is kept until the reader is back);
 * - an entry is used for at most `maxAgeMs` (1 s): at least once a second per client and server a
 *   request goes through the issuer's serve script, which keeps the client's activity (what
 *   rotation follows), checks the record's owner, state and key id, and reports an overdue
 *   rotation, as before;
 * - never past the token's `expiresAt`;
 * - a read that raced a change (the generation moved between the read and its answer) is not kept.
 *
 * A rotated or revoked token is thus used for at most the reader's bound (0.5 s) after the change
 * reached Redis. PMS accepts it until it expires anyway (it has no revoke call); what a revocation
 * must stop is the broker handing the token out, and no caller ever sees a proxied token. A token
 * PMS rejected is dropped at once (`forget`). Requests whose key has a request limit do not use the
 * view: they are counted by the serve script (listener.ts).
 */

export interface TokenViewOptions {
  /** The issuer: the source of truth on a miss. */
  issuer: { issue: (client: string, server: ServerConfig, ctx: RequestContext) => Promise<IssueResult> }
  /** The view of keys whose change-log reader this view follows; without one nothing is kept. */
  keyCache: ProxyKeyCache | undefined
  /** Wall clock (the token's expiresAt). */
  now: () => number
  /** Monotonic clock for the entries' age (tests). */
  clock?: () => number
  /** Longest an entry is used (default 1000 ms). */
  maxAgeMs?: number
  /** Entries kept; emptied when full (default 10,000). */
  maxEntries?: number
}

interface Entry {
  issued: IssueResult
  at: number
}

export class ProxyTokenView {
  readonly #o: TokenViewOptions
  readonly #entries = new Map<string, Entry>()
  readonly #clock: () => number
  readonly #maxAgeMs: number
  #generation = 0
  #keysGeneration = -1

  constructor (opts: TokenViewOptions) {
    this.#o = opts
    this.#clock = opts.clock ?? (() => performance.now())
    this.#maxAgeMs = opts.maxAgeMs ?? 1000
    opts.keyCache?.onEntry((type, fields) => { this.#changed(type, fields) })
  }

  get size (): number { return this.#entries.size }

  /** The client's live token of `server`: from the view when it may be used, else from the issuer (and kept). */
  async issue (client: string, server: ServerConfig, ctx: RequestContext): Promise<IssueResult> {
    const key = `${client}\u0000${server.name}`
    const generation = this.#current()
    if (generation !== undefined) {
      const e = this.#entries.get(key)
      if (e !== undefined) {
        if (this.#clock() - e.at < this.#maxAgeMs && e.issued.expiresAt > this.#o.now()) return e.issued.source === 'cache' ? e.issued : { ...e.issued, source: 'cache' }
        this.#entries.delete(key)
      }
    }
    const at = this.#clock()
    const issued = await this.#o.issuer.issue(client, server, ctx)
    if (generation !== undefined && this.#current() === generation) {
      if (this.#entries.size >= (this.#o.maxEntries ?? 10_000)) this.#entries.clear()
      this.#entries.set(key, { issued, at })
    }
    return issued
  }

  /** Drops the client's token of `server` (PMS rejected it: the report replaces it). */
  forget (client: string, server: string): void {
    this.#generation++
    this.#entries.delete(`${client}\u0000${server}`)
  }

  /**
   * The generation to check a read against, or undefined when the view may not be used (no
   * reader, or it is behind). Whatever moves the view of keys (a stall, a return from one, a key
   * revoked) empties this view too: it is cheap to refill.
   */
  #current (): string | undefined {
    const cache = this.#o.keyCache
    if (cache === undefined || !cache.usable) {
      if (this.#entries.size > 0) this.#entries.clear()
      return undefined
    }
    const keys = cache.generation
    if (keys !== this.#keysGeneration) {
      this.#keysGeneration = keys
      this.#generation++
      this.#entries.clear()
    }
    return `${keys}:${this.#generation}`
  }

  #changed (type: string, fields: string[]): void {
    if (type !== 'token' && type !== 'revoked' && type !== 'server') return
    this.#generation++
    const e = parsePushEntry('0-0', fields)
    if (e === undefined) {
      // Not understood: nothing kept can be trusted to be unaffected.
      this.#entries.clear()
      return
    }
    if (e.type === 'server') {
      for (const key of this.#entries.keys()) if (key.endsWith(`\u0000${e.server}`)) this.#entries.delete(key)
      return
    }
    if (e.client === '*' || e.server === '*') {
      // A whole client's, or everyone's, revocation.
      for (const key of this.#entries.keys()) {
        const [c, s] = key.split('\u0000')
        if ((e.client === '*' || c === e.client) && (e.server === '*' || s === e.server)) this.#entries.delete(key)
      }
      return
    }
    this.#entries.delete(`${e.client}\u0000${e.server}`)
  }
}
