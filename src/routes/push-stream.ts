import type { FastifyBaseLogger } from 'fastify'
import type { ServerConfig } from '../config/index.ts'
import type { IssueResult } from '../broker/issuer.ts'
import { compareIds, type PushEntry, STREAM_ID, type TokenReason } from '../broker/push-log.ts'
import type { PushSubscriber } from '../broker/push.ts'
import type { Meter } from '../broker/rate-limiter.ts'
import type { RequestContext } from '../broker/audit-writer.ts'
import type { LongResponse, LongResponseOptions } from '../http/long-response.ts'
import type { Services } from '../services.ts'
import { issuedTokenBody } from './common.ts'

/** The push channel's slow-consumer bounds: 256 KiB queued, 30 s to drain by default (tests shorten them). */
export type StreamOptions = Partial<LongResponseOptions>

/** The `retry:` advice every stream opens with: clients reconnect after this many ms. */
export const SSE_RETRY_MS = 2000
/** Change-log entries a stream may have waiting for their token reads before it counts as slow. */
const MAX_QUEUED = 10_000

export type EndReason = 'closed' | 'slow' | 'shutdown' | 'revoked' | 'error'

export interface Frame {
  id: string
  event: 'token' | 'revoked' | 'server'
  data: unknown
  /** The stream ends after this event (a revocation of all the client's tokens). */
  last?: true
}

const frameText = (f: Frame): string => `id: ${f.id}\nevent: ${f.event}\ndata: ${JSON.stringify(f.data)}\n\n`

/** The data of a `token` event: the answer of POST /v1/tokens, and why it is sent. */
function tokenData (server: ServerConfig, t: IssueResult, reason: TokenReason): Record<string, unknown> {
  return { ...issuedTokenBody(server, t), reason }
}

/** Of a replayed history, the token entries before the last one are dropped: a token event always carries the current token. */
function collapse (entries: PushEntry[]): PushEntry[] {
  const last = entries.findLastIndex((e) => e.type === 'token')
  return entries.filter((e, i) => e.type !== 'token' || i === last)
}

/**
 * One open push stream: a subscriber of the hub (broker/push.ts) that turns change-log entries
 * for its client and server into Server-Sent Events. Entries are handled one at a time, in log
 * order; a `token` entry is answered with the client's current token, read (and audited, `via:
 * stream`) through the token store like POST /v1/tokens, so no token ever travels through Redis
 * in clear text and a stale token is never sent. The socket side (slow consumers, the end) is
 * http/long-response.ts.
 */
export class PushStream implements PushSubscriber {
  readonly client: string
  readonly server: string
  /** The close reason once ended. */
  ended: EndReason | undefined
  unregister: () => void = () => {}
  readonly #b: Services
  /** The server's settings when the stream opened: used only if the server left the config since. */
  readonly #opened: ServerConfig
  readonly #ctx: RequestContext
  readonly #log: FastifyBaseLogger
  readonly #onEnd: (s: PushStream) => void
  readonly #queue: PushEntry[] = []
  /** Entries up to this id are already reflected in what the stream sent first. */
  #floor: string | undefined
  #lastTokenId: string | undefined
  #out: LongResponse | undefined
  #busy = false
  #heartbeat: NodeJS.Timeout | undefined
  #events = 0
  readonly #openedAt = Date.now()

  constructor (b: Services, server: ServerConfig, client: string, ctx: RequestContext, log: FastifyBaseLogger,
    onEnd: (s: PushStream) => void) {
    this.#b = b
    this.#opened = server
    this.server = server.name
    this.client = client
    this.#ctx = ctx
    this.#log = log
    this.#onEnd = onEnd
  }

  /**
   * The server's settings now, looked up at each use: a stream lives for hours, and a reloaded
   * token file replaces the admin token a re-mint needs (the one the stream opened with may be
   * revoked at plex.tv by then).
   */
  get #srv (): ServerConfig {
    return this.#b.servers.get(this.server) ?? this.#opened
  }

  deliver (entry: PushEntry): void {
    if (this.ended !== undefined) return
    if (this.#queue.length >= MAX_QUEUED) {
      this.end('slow')
      return
    }
    this.#queue.push(entry)
    if (this.#out !== undefined) void this.#pump()
  }

  /**
   * What the stream sends first, prepared before any byte is written so a failure is still an
   * ordinary JSON error. A fresh stream (or a resume whose history is gone): the current token,
   * minted if needed, with the request's meter counted like POST /v1/tokens (in the serve
   * script). A resume: what the client missed since `lastEventId` (the meter counted first).
   */
  async opening (lastEventId: string | undefined, meter: Meter | undefined): Promise<Frame[]> {
    const { push, issuer } = this.#b
    const log = await push.snapshot()
    const last = log.last
    this.#floor = last
    const missed = lastEventId !== undefined && STREAM_ID.test(lastEventId) && push.covers(log, lastEventId)
      ? await push.history(this.client, this.server, lastEventId, last)
      : undefined
    if (missed !== undefined) {
      await meter?.count()
      const frames: Frame[] = []
      for (const e of collapse(missed)) {
        const f = await this.#frame(e)
        if (f !== undefined) frames.push(f)
        if (f?.last === true) break
      }
      return frames
    }
    const t = await issuer.issue(this.client, this.#srv, this.#ctx, { meter })
    this.#served(t)
    this.#lastTokenId = t.tokenId
    return [{ id: last, event: 'token', data: tokenData(this.#srv, t, 'current') }]
  }

  /** Starts the event stream on the taken-over response: headers, `retry:`, the opening events, then live entries and heartbeats. */
  attach (out: LongResponse, frames: Frame[]): void {
    this.#out = out
    this.#b.metrics.streamsOpen.inc()
    // The client may have gone while the opening events were read.
    if (out.gone) {
      this.end('closed')
      return
    }
    out.open(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', 'x-accel-buffering': 'no' })
    out.write(`retry: ${SSE_RETRY_MS}\n\n`)
    for (const f of frames) {
      this.#send(f)
      if (f.last === true) {
        this.end('revoked')
        return
      }
    }
    this.#heartbeat = setInterval(() => out.write(': ping\n\n'), this.#b.config.streamHeartbeatMs)
    this.#heartbeat.unref()
    void this.#pump()
  }

  /** Ends the stream (idempotent): a client that went away, or the broker's decision (counted as a drop). */
  end (reason: EndReason): void {
    if (this.ended !== undefined) return
    this.ended = reason
    clearInterval(this.#heartbeat)
    this.unregister()
    this.#onEnd(this)
    const out = this.#out
    if (out === undefined) return
    const { metrics } = this.#b
    if (reason !== 'closed') metrics.streamDrops.inc({ reason })
    metrics.streamsOpen.dec()
    this.#log.info({ client: this.client, server: this.server, reason, events: this.#events, durationMs: Date.now() - this.#openedAt }, 'stream closed')
    out.end(reason === 'slow' ? 'abort' : 'graceful')
  }

  async #pump (): Promise<void> {
    if (this.#busy) return
    this.#busy = true
    try {
      while (this.ended === undefined) {
        const entry = this.#queue.shift()
        if (entry === undefined) break
        if (this.#floor !== undefined && compareIds(entry.id, this.#floor) <= 0) continue
        const f = await this.#frame(entry)
        if (this.ended !== undefined) break
        if (f === undefined) continue
        this.#send(f)
        if (f.last === true) this.end('revoked')
      }
    } catch (err) {
      // Redis failed while reading a token: end cleanly; the client resumes with Last-Event-ID.
      this.#log.warn({ client: this.client, server: this.server, err: { message: (err as Error).message } }, 'stream ended: could not read the token')
      this.end('error')
    } finally {
      this.#busy = false
    }
  }

  /** The event for one entry, or undefined when there is nothing to tell (a token the client already has, or none any more). */
  async #frame (e: PushEntry): Promise<Frame | undefined> {
    if (e.type === 'server') return { id: e.id, event: 'server', data: { server: e.server, up: e.up } }
    if (e.type === 'revoked') {
      // The client's stream ends after an ops revocation of all its tokens; after anything else the next token follows.
      const all = e.action === 'token.revoke' && (e.selector === 'client' || e.selector === 'all')
      // `next` tells the client whether to wait for the broker's replacement (an invalidation:
      // it re-mints by itself) or to ask for a new token (an ops revocation).
      const next = e.action === 'token.invalidate' ? 'pushed' : 'ask'
      // A client-wide entry names no token: it is the one this stream last handed out, if any.
      const tokenId = e.tokenId === '' ? this.#lastTokenId ?? '' : e.tokenId
      return { id: e.id, event: 'revoked', data: { tokenId, server: this.server, reason: e.reason, next }, ...(all ? { last: true as const } : {}) }
    }
    if (e.tokenId === this.#lastTokenId) return undefined
    const { store, issuer } = this.#b
    const r = await store.serveCounted(this.client, this.server, 'cache', this.#ctx)
    let t: IssueResult | undefined = r.token === undefined ? undefined : { ...r.token, source: 'cache' }
    // A cached token that could not be opened was just invalidated: mint its replacement now.
    if (t === undefined && r.invalidated === true) t = await issuer.issue(this.client, this.#srv, this.#ctx, { reason: 'reminted' })
    if (t === undefined || t.tokenId === this.#lastTokenId) return undefined
    this.#served(t)
    this.#lastTokenId = t.tokenId
    return { id: e.id, event: 'token', data: tokenData(this.#srv, t, e.reason) }
  }

  #served (t: IssueResult): void {
    this.#b.metrics.tokensServed.inc({ server: this.server, source: t.source })
  }

  #send (f: Frame): void {
    this.#events++
    this.#b.metrics.streamEvents.inc({ event: f.event })
    this.#out?.write(frameText(f))
  }
}
