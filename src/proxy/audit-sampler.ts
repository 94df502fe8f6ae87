/**
 * Audit events of the proxy's refusals and shadow decisions, sampled so that no caller can flood
 * the capped audit trail (and push real history, revocations included, out of it): per
 * (key, path, what) at most one event when it first happens in a window, and one summary with the
 * count of the repeats when the window ends. Allowed requests are never audited: a player makes
 * thousands of them. Memory is bounded: beyond `maxEntries` distinct entries in a window, further
 * ones are only counted in metrics.
 */
export interface SampledEvent {
  action: string
  client?: string
  server?: string
  detail: Record<string, unknown>
}

export interface AuditSamplerOptions {
  write: (e: SampledEvent) => void
  windowMs?: number
  maxEntries?: number
}

export class AuditSampler {
  readonly #o: AuditSamplerOptions
  readonly #entries = new Map<string, { event: SampledEvent, repeats: number }>()
  #timer: NodeJS.Timeout | undefined

  constructor (opts: AuditSamplerOptions) {
    this.#o = opts
  }

  /** Records one occurrence; `key` says what counts as the same event (key id, path, reason). */
  record (key: string, event: SampledEvent): void {
    const e = this.#entries.get(key)
    if (e !== undefined) {
      e.repeats++
      return
    }
    if (this.#entries.size >= (this.#o.maxEntries ?? 10_000)) return
    this.#entries.set(key, { event, repeats: 0 })
    this.#o.write(event)
    if (this.#timer === undefined) {
      this.#timer = setTimeout(() => this.flush(), this.#o.windowMs ?? 60_000)
      this.#timer.unref()
    }
  }

  /** Ends the window: one summary per entry that repeated. */
  flush (): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer)
    this.#timer = undefined
    const entries = [...this.#entries.values()]
    this.#entries.clear()
    for (const { event, repeats } of entries) {
      if (repeats > 0) this.#o.write({ ...event, detail: { ...event.detail, repeats, windowMs: this.#o.windowMs ?? 60_000 } })
    }
  }
}
