import type { Logger } from 'pino'
import { describe } from '../errors.ts'
import type { AuditWriter, RequestContext } from './audit-writer.ts'

/** One refused request, as the trail records it (`auth.denied`). */
export interface Refused {
  /** Why (policy.ts DenialReason). */
  reason: string
  /**
   * Whose refusals are counted together (with the reason): the client's id when it authenticated,
   * else its address (IPv6 per /64, like the failed-authentication throttle).
   */
  subject: string
  /** The client, when it authenticated. */
  client?: string
  detail: Record<string, unknown>
  ctx: RequestContext
}

export interface RefusalTrailOptions {
  /** Appends each event to the refusals stream (`AuditWriter.refusal`). */
  audit: AuditWriter
  /** How long the refusals of one subject and reason are counted together (default 1 minute). */
  windowMs?: number
  /** Subjects with an open window at most; beyond, refusals are counted per reason only (default 10,000). */
  maxSubjects?: number
  /** A write that failed is logged (the refusal itself is answered anyway). */
  logger: Logger
}

interface Open {
  /** The first refusal of the window (its request id, address and detail stand for the rest). */
  first: Refused
  firstAt: number
  /** Refusals since the first one that no event recorded yet. */
  more: number
  timer: NodeJS.Timeout
}

/** What stands for every subject once `maxSubjects` windows are open (one flood from many addresses). */
const OVERFLOW = '*'

/**
 * The refusals part of the audit trail (`auth.denied`), kept so that no flood of refused requests
 * costs the trail more than a few events. The first refusal of a subject (client or address) and
 * reason in a window is written at once (`detail.count: 1`); the ones after it in the same window
 * are counted, and one event says how many when the window closes (`detail.count: n`,
 * `detail.repeated: true`), so the counts of all `auth.denied` events add up to the refusals.
 * Events go to their own stream (keys.ts `auditRefusals`), capped on its own: they can never push
 * a revocation or a mint out of the security stream. Windows are kept per instance (a fleet of N
 * writes at most N events per subject, reason and window) and closed early at shutdown.
 */
export class RefusalTrail {
  readonly #o: RefusalTrailOptions
  readonly #windowMs: number
  readonly #maxSubjects: number
  readonly #open = new Map<string, Open>()

  constructor (opts: RefusalTrailOptions) {
    this.#o = opts
    this.#windowMs = opts.windowMs ?? 60_000
    this.#maxSubjects = opts.maxSubjects ?? 10_000
  }

  /** Records one refusal: written when it is the first of its window, counted otherwise. Never throws. */
  record (r: Refused): void {
    this.#add(r, true)
  }

  /**
   * Counts a refusal without an event of its own (a request answered 429 by the failed-
   * authentication throttle): it is in the window's count, and opens a window when none is open.
   */
  count (r: Refused): void {
    this.#add(r, false)
  }

  /** Writes an event now, outside any window (the one event saying an address is now throttled). Never throws. */
  now (r: Refused): void {
    void this.#write(r, { ...r.detail, reason: r.reason })
  }

  /** Closes every open window, writing the counts not yet recorded (at shutdown; tests). */
  async flush (): Promise<void> {
    await Promise.all([...this.#open.keys()].map(async (k) => await this.#close(k)))
  }

  #add (r: Refused, write: boolean): void {
    let subject = r.subject
    if (!this.#open.has(`${subject}\u0000${r.reason}`) && this.#open.size >= this.#maxSubjects) subject = OVERFLOW
    const k = `${subject}\u0000${r.reason}`
    const open = this.#open.get(k)
    if (open !== undefined) {
      open.more++
      return
    }
    const timer = setTimeout(() => { void this.#close(k) }, this.#windowMs)
    timer.unref()
    const first = subject === OVERFLOW ? { ...r, subject, client: undefined, detail: { overflow: true } } : r
    this.#open.set(k, { first, firstAt: Date.now(), more: write && subject !== OVERFLOW ? 0 : 1, timer })
    if (write && subject !== OVERFLOW) void this.#write(first, { ...first.detail, reason: r.reason, count: 1 })
  }

  async #close (k: string): Promise<void> {
    const open = this.#open.get(k)
    if (open === undefined) return
    this.#open.delete(k)
    clearTimeout(open.timer)
    if (open.more === 0) return
    const { first } = open
    await this.#write(first, {
      ...first.detail,
      reason: first.reason,
      count: open.more,
      repeated: true,
      since: new Date(open.firstAt).toISOString(),
      windowMs: this.#windowMs,
    })
  }

  async #write (r: Refused, detail: Record<string, unknown>): Promise<void> {
    try {
      await this.#o.audit.refusal({ action: 'auth.denied', client: r.client, detail }, r.ctx)
    } catch (err) {
      this.#o.logger.warn({ err: describe(err) }, 'audit write failed')
    }
  }
}
