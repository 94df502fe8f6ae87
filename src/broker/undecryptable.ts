import type { Logger } from 'pino'
import type { Metrics } from '../metrics.ts'

/**
 * Where the token store reports a stored token it cannot open (sealed under another
 * BROKER_SECRET, or altered): counted per server (`ptb_undecryptable_tokens_total`), and the
 * first of each server logged. The token itself has been invalidated by then.
 */
export class UndecryptableTokens {
  readonly #metrics: Metrics
  readonly #logger: Logger
  readonly #warned = new Set<string>()

  constructor (metrics: Metrics, logger: Logger) {
    this.#metrics = metrics
    this.#logger = logger
  }

  report (server: string): void {
    this.#metrics.undecryptable.inc({ server })
    if (this.#warned.has(server)) return
    this.#warned.add(server)
    this.#logger.warn({ server }, 'cached tokens cannot be opened (BROKER_SECRET changed, or the data was altered): ' +
      'each is invalidated and re-minted on its next request')
  }
}
