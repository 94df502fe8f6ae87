import type { OutgoingHttpHeaders, ServerResponse } from 'node:http'
import type { FastifyInstance, FastifyReply } from 'fastify'

/**
 * The mechanics of a response that stays open for minutes or hours, apart from what it carries:
 * taking the response over from Fastify and bounding what a peer that does not read can make the
 * broker hold (`LongResponse`, the push channel's streams), and ending every such response before
 * the server closes (`LongResponses`, the push channel's and the proxy's). Why the proxy's
 * downloads and websockets bound slow peers their own way: docs/architecture.md.
 */

export interface LongResponseOptions {
  /** Bytes the response may have queued in its socket before the peer counts as a slow consumer. */
  maxBufferedBytes: number
  /** How long a full socket may take to drain before the peer counts as a slow consumer. */
  drainTimeoutMs: number
}

/** Why a long response ended from the peer's side: it went away, or it did not read fast enough. */
export type PeerEnd = 'closed' | 'slow'

/** How long a peer that does not read may keep the socket after a graceful end. */
const END_GRACE_MS = 1000

/**
 * One response taken over from Fastify (`reply.hijack()`): the owner writes to it directly. A
 * write that leaves more than `maxBufferedBytes` queued, or a full socket that does not drain
 * within `drainTimeoutMs`, ends it as `slow`; the peer closing ends it as `closed`. Either is
 * reported once to `onPeerEnd`, which decides what else ends (and calls `end`).
 */
export class LongResponse {
  readonly #res: ServerResponse
  readonly #headers: OutgoingHttpHeaders
  readonly #opts: LongResponseOptions
  readonly #onPeerEnd: (reason: PeerEnd) => void
  #drainTimer: NodeJS.Timeout | undefined
  #ended = false

  /**
   * Takes the response over from Fastify. The headers Fastify's hooks set so far (request id,
   * rate-limit headers) are kept for `open`.
   */
  static hijack (reply: FastifyReply, opts: LongResponseOptions, onPeerEnd: (reason: PeerEnd) => void): LongResponse {
    const headers: OutgoingHttpHeaders = {}
    for (const [k, v] of Object.entries(reply.getHeaders())) if (v !== undefined) headers[k] = v
    reply.hijack()
    return new LongResponse(reply.raw, headers, opts, onPeerEnd)
  }

  constructor (res: ServerResponse, headers: OutgoingHttpHeaders, opts: LongResponseOptions, onPeerEnd: (reason: PeerEnd) => void) {
    this.#res = res
    this.#headers = headers
    this.#opts = opts
    this.#onPeerEnd = onPeerEnd
  }

  /** True when the peer is gone already (it may leave while the opening was being prepared). */
  get gone (): boolean {
    const res = this.#res
    return res.destroyed || res.socket === null || res.socket.destroyed
  }

  /** Sends the status line and headers; from now on the peer closing ends the response. */
  open (statusCode: number, headers: OutgoingHttpHeaders): void {
    const res = this.#res
    res.writeHead(statusCode, {
      ...this.#headers,
      ...headers,
      // One long response per connection: when it ends, so does the connection (nothing lingers at shutdown).
      connection: 'close',
    })
    // The server's idle timeout (HTTP_TIMEOUTS) is for requests; a long response may be quiet for
    // a while by design. A peer that stops reading is caught by the slow-consumer bounds instead.
    res.socket?.setTimeout(0)
    res.on('close', () => this.#peerEnd('closed'))
  }

  /** Writes a chunk; a peer that lets too much pile up, or does not drain in time, is ended as `slow`. */
  write (chunk: string | Uint8Array): void {
    const res = this.#res
    if (this.#ended) return
    const flushed = res.write(chunk)
    if (res.writableLength > this.#opts.maxBufferedBytes) {
      this.#peerEnd('slow')
      return
    }
    if (!flushed && this.#drainTimer === undefined) {
      this.#drainTimer = setTimeout(() => this.#peerEnd('slow'), this.#opts.drainTimeoutMs)
      this.#drainTimer.unref()
      res.once('drain', () => {
        clearTimeout(this.#drainTimer)
        this.#drainTimer = undefined
      })
    }
  }

  /**
   * Ends the response (idempotent). `graceful`: the end is sent, and a peer that does not read
   * cannot hold shutdown up: the socket goes after a second. `abort`: the socket goes now (a slow
   * consumer, whose unsent bytes would never leave).
   */
  end (how: 'graceful' | 'abort'): void {
    if (this.#ended) return
    this.#ended = true
    clearTimeout(this.#drainTimer)
    const res = this.#res
    if (how === 'abort') {
      res.destroy()
    } else if (!res.writableEnded) {
      res.end()
      const t = setTimeout(() => res.destroy(), END_GRACE_MS)
      t.unref()
      res.once('close', () => clearTimeout(t))
    }
  }

  #peerEnd (reason: PeerEnd): void {
    if (this.#ended) return
    this.#onPeerEnd(reason)
  }
}

/**
 * The long responses one owner holds open: the push channel's streams (routes/stream.ts), the
 * proxy's downloads and websockets (proxy/open-responses.ts). Once the server begins to close, no
 * new one may open (`closing`), and `close` ends every open one as `shutdown`; given the app, that
 * happens in its `preClose` hook, before the server stops accepting, so app.close() finishes
 * within the grace period.
 */
export class LongResponses<T extends { end: (reason: 'shutdown') => void }> {
  readonly #open = new Set<T>()
  #closing = false

  constructor (app?: FastifyInstance) {
    app?.addHook('preClose', async () => { this.close() })
  }

  get closing (): boolean {
    return this.#closing
  }

  get size (): number {
    return this.#open.size
  }

  add (s: T): void {
    this.#open.add(s)
  }

  delete (s: T): void {
    this.#open.delete(s)
  }

  /** Ends every open response as `shutdown` (each one's `end` may call `delete`). */
  close (): void {
    this.#closing = true
    for (const s of [...this.#open]) s.end('shutdown')
  }
}
