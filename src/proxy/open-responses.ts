import type { Logger } from 'pino'
import { LongResponses } from '../http/long-response.ts'

/** Why an open answer is ended: its key is gone, its key cannot be checked, or the broker is stopping. */
export type EndReason = 'revoked' | 'unchecked' | 'shutdown'

/** Something the proxy has open for a key: a streaming answer or a websocket. */
export interface OpenResponse {
  keyId: string
  /** Ends it at once (the caller sees the connection end; a websocket gets a close frame). */
  end: (why: EndReason) => void
}

export interface OpenResponsesOptions {
  /** The ids among these whose keys can no longer be used (ProxyKeys.unusable): one round trip. */
  unusable: (ids: readonly string[]) => Promise<Set<string>>
  logger: Logger
  /** How often the keys of open responses are checked. Default 500 ms: a revocation ends them within a second. */
  intervalMs?: number
  /** How long the checks may keep failing (Redis down) before open responses are ended anyway. Default 3 s. */
  failClosedAfterMs?: number
  onEnded?: (why: EndReason, n: number) => void
}

/**
 * Revocation reaches answers already under way (docs/proxy.md, *Revocation*): a key checked when
 * a download or a websocket started must not keep it going after the key is revoked on any
 * instance. Every open answer is registered here by key id; twice a second the ids with open
 * answers are checked in one pipelined Redis read, and the answers of a revoked, expired or
 * deleted key are ended. No change-log subscription is needed: the check reads the records
 * themselves, so nothing can be missed, and it costs one round trip per tick only while something
 * is open. When Redis cannot answer for `failClosedAfterMs`, open answers are ended too: a key
 * whose state cannot be read is not kept serving. The answers themselves are held, and ended at
 * shutdown, by the long-response registry the push channel uses too (http/long-response.ts); what
 * is the proxy's own is the index by key and its recheck.
 */
export class OpenResponses {
  readonly #o: OpenResponsesOptions
  /** Every open answer (what shutdown ends). */
  readonly #all = new LongResponses<OpenResponse>()
  /** The same answers by key id (what the recheck reads and a revocation ends). */
  readonly #byKey = new Map<string, Set<OpenResponse>>()
  #timer: NodeJS.Timeout | undefined
  #checking = false
  #lastGood = Date.now()

  constructor (opts: OpenResponsesOptions) {
    this.#o = opts
  }

  get size (): number {
    return this.#all.size
  }

  /** Registers an open answer; returns the function that unregisters it (call it when it ends). */
  add (r: OpenResponse): () => void {
    let set = this.#byKey.get(r.keyId)
    if (set === undefined) this.#byKey.set(r.keyId, set = new Set())
    set.add(r)
    this.#all.add(r)
    this.#start()
    return () => {
      this.#all.delete(r)
      const s = this.#byKey.get(r.keyId)
      if (s === undefined) return
      s.delete(r)
      if (s.size === 0) this.#byKey.delete(r.keyId)
      if (this.#byKey.size === 0) this.#stop()
    }
  }

  /** Ends every open answer of a key now (a revocation seen by this instance). */
  endKey (keyId: string, why: EndReason): number {
    const set = this.#byKey.get(keyId)
    if (set === undefined) return 0
    this.#byKey.delete(keyId)
    for (const r of set) {
      this.#all.delete(r)
      r.end(why)
    }
    if (this.#byKey.size === 0) this.#stop()
    this.#o.onEnded?.(why, set.size)
    return set.size
  }

  endAll (why: EndReason): void {
    for (const id of [...this.#byKey.keys()]) this.endKey(id, why)
  }

  #start (): void {
    if (this.#timer !== undefined) return
    this.#lastGood = Date.now()
    this.#timer = setInterval(() => { void this.check() }, this.#o.intervalMs ?? 500)
    this.#timer.unref()
  }

  #stop (): void {
    if (this.#timer !== undefined) clearInterval(this.#timer)
    this.#timer = undefined
  }

  /** One round of checks (the timer runs it; tests may too). */
  async check (): Promise<void> {
    if (this.#checking || this.#byKey.size === 0) return
    this.#checking = true
    try {
      const dead = await this.#o.unusable([...this.#byKey.keys()])
      this.#lastGood = Date.now()
      for (const id of dead) {
        const n = this.endKey(id, 'revoked')
        if (n > 0) this.#o.logger.info({ keyId: id, ended: n }, 'proxy key no longer valid: its open answers were ended')
      }
    } catch (err) {
      if (Date.now() - this.#lastGood >= (this.#o.failClosedAfterMs ?? 3000)) {
        this.#o.logger.warn({ err: { message: (err as Error).message } }, 'proxy keys of open answers cannot be checked: ending them')
        this.endAll('unchecked')
      }
    } finally {
      this.#checking = false
    }
  }

  /** Shutdown: every open answer ends (websockets are told to reconnect elsewhere). */
  close (): void {
    this.#stop()
    const n = this.#all.size
    this.#byKey.clear()
    this.#all.close()
    if (n > 0) this.#o.onEnded?.('shutdown', n)
  }
}
