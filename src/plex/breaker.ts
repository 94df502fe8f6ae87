/**
 * A per-server circuit breaker: after `threshold` consecutive failures it opens for `openMs`
 * (calls fail fast, PMS is left alone), then lets one half-open trial through: success closes it,
 * failure re-opens it. An outage or a flood of clients never becomes a flood against PMS.
 */
export class CircuitBreaker {
  readonly #threshold: number
  readonly #openMs: number
  readonly #now: () => number
  #failures = 0
  #openUntil = 0
  #trial = false

  constructor (threshold: number, openMs: number, now: () => number = Date.now) {
    this.#threshold = threshold
    this.#openMs = openMs
    this.#now = now
  }

  get state (): 'closed' | 'open' | 'half-open' {
    if (this.#failures < this.#threshold) return 'closed'
    return this.#now() < this.#openUntil ? 'open' : 'half-open'
  }

  /** 0 when a call may go ahead; otherwise how many ms until it may. */
  admit (): number {
    const state = this.state
    if (state === 'closed') return 0
    if (state === 'open') return this.#openUntil - this.#now()
    if (this.#trial) return 1000 // one trial at a time
    this.#trial = true
    return 0
  }

  success (): void {
    this.#failures = 0
    this.#trial = false
  }

  failure (): void {
    this.#failures++
    this.#trial = false
    if (this.#failures >= this.#threshold) this.#openUntil = this.#now() + this.#openMs
  }
}
