/**
 * @plex-token-broker/client: a live PMS token for a Node service, from the broker.
 *
 * ```ts
 * import { createTokenSource } from '@plex-token-broker/client'
 * const plex = createTokenSource({ brokerUrl, secretFile: '/run/secrets/ptb', server: 'default', pmsUrl })
 * const res = await plex.fetchPms('/library/sections', { headers: { accept: 'application/json' } })
 * ```
 *
 * Imports node built-ins, undici and eventsource-parser only, never the server code: these
 * files are the package in packages/client, whose only dependencies are those two.
 */
import { EventEmitter } from 'node:events'
import { readFileSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { Agent, type Dispatcher, fetch, Headers, request, type RequestInit, type Response } from 'undici'
import { backoff, BrokerError, isReplayable, joinUrl, PmsRedirectError, PmsUnavailableError, retryAfterMs } from './http.ts'
import { readStream, type StreamEvent } from './stream.ts'

export { BrokerError, PmsRedirectError, PmsUnavailableError } from './http.ts'

/** The broker's answer to `POST /v1/tokens` (times are ISO 8601). */
export interface IssuedToken {
  tokenId: string
  /** Send as `X-Plex-Token`. Never log it. */
  token: string
  server: { name: string, machineIdentifier: string }
  issuedAt: string
  renewAt: string
  expiresAt: string
}

/** Why the token changed, as the `token` event reports it. */
export interface TokenChange extends IssuedToken {
  /** How it arrived: pushed by the stream, asked for (`poll`), or the answer to a 401 report. */
  via: 'stream' | 'poll' | 'report'
  /** The stream's reason (`current`, `rotated`, `reminted`, `replaced`, `issued`); absent when polled. */
  reason?: string
}

/** pino-compatible: `logger.warn({ fields }, 'message')`. Only ids, statuses and modes are logged, never a token or secret. */
export interface ClientLogger {
  debug?: (obj: Record<string, unknown>, msg: string) => void
  info?: (obj: Record<string, unknown>, msg: string) => void
  warn?: (obj: Record<string, unknown>, msg: string) => void
}

export interface TokenSourceOptions {
  /** The broker's base URL, e.g. `http://broker:8080`. */
  brokerUrl: string | URL
  /** The client's bearer secret. Give this or `secretFile`. */
  secret?: string
  /** A file holding the secret; read at start and again whenever the broker answers 401 (a rotated secret). */
  secretFile?: string
  /** The PMS server name in the broker's config. */
  server: string
  /** The PMS base URL, for `fetchPms`. */
  pmsUrl?: string | URL
  /** Listen to the broker's token stream (default true); false polls only. */
  stream?: boolean
  logger?: ClientLogger
  /** An undici dispatcher for every call (broker and PMS). Default: an Agent of the source's own, closed by `close()`. */
  dispatcher?: Dispatcher
  /** Wait for the headers of a broker call (default 10 s). */
  requestTimeoutMs?: number
  /** Stream silence after which it counts as dead and is reopened (default 37.5 s: 2.5 × the broker's 15 s heartbeat). */
  heartbeatTimeoutMs?: number
  /** Cap of every wait: stream reconnects, refresh retries, `Retry-After` (default 60 s). */
  maxBackoffMs?: number
  /** Attempts of a `POST /v1/tokens` that the caller waits for, on 429/502/503/no connection (default 3). */
  brokerAttempts?: number
  /** Retries of a PMS call answered 503, or not answered at all while PMS restarts (default 2). */
  pmsRetries?: number
  /**
   * After the stream says the current token is dead, how long to wait for the replacement it
   * pushes by itself (after a PMS restart or a confirmed rejection) before asking the broker
   * (needed after an ops revocation). Default 2 s. `token()` asks at once meanwhile.
   */
  replacementWaitMs?: number
}

export type TokenSourceMode = 'connecting' | 'stream' | 'polling' | 'closed'

interface Events {
  /** A token other than the one held before: on start, rotation, re-mint after a PMS restart, replacement. */
  token: [TokenChange]
  /** The stream said a token is no longer valid (revoked by ops, or lost by PMS). */
  revoked: [{ tokenId: string, reason: string | undefined }]
  /** The stream reported the server up or down. */
  server: [{ server: string, up: boolean }]
  /** The source switched between the stream and polling. */
  mode: [TokenSourceMode]
}

/** A token is used until this long before its `expiresAt`, then fetched anew. */
const EXPIRY_MARGIN_MS = 5000
/** The first wait of every backoff. */
const BASE_BACKOFF_MS = 1000
/** setTimeout's limit; a longer wait is taken in steps. */
const MAX_TIMER_MS = 2 ** 31 - 1
/** A stream that lived this long counts as healthy even without events (a resume with nothing missed). */
const HEALTHY_STREAM_MS = 30_000
/** Methods that may be sent again after a dropped connection. */
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE'])
/** Connection failures after which nothing reached the server: any method may be sent again. */
const NOT_SENT = new Set(['ECONNREFUSED', 'UND_ERR_CONNECT_TIMEOUT', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH'])
/** Statuses whose `Location` fetch follows. */
const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308])
/** Redirects followed per PMS call (fetch allows 20; PMS itself redirects seldom if ever). */
const MAX_REDIRECTS = 5
/** Tokens the stream declared dead, remembered so that a late answer never brings one back. */
const DEAD_IDS_KEPT = 256

/**
 * Keeps one client's token for one PMS server live. `token()` answers from memory while the token
 * is live and shares one broker call among concurrent callers otherwise; the token is refreshed at
 * its `renewAt` and replaced as soon as the broker's stream says so.
 */
export class TokenSource {
  readonly #events = new EventEmitter<Events>()
  readonly #brokerUrl: URL
  readonly #pmsUrl: URL | undefined
  readonly #server: string
  readonly #secretFile: string | undefined
  #secret: string
  readonly #log: ClientLogger | undefined
  readonly #dispatcher: Dispatcher
  readonly #ownAgent: Agent | undefined
  readonly #requestTimeoutMs: number
  readonly #heartbeatTimeoutMs: number
  readonly #maxBackoffMs: number
  readonly #brokerAttempts: number
  readonly #pmsRetries: number
  readonly #replacementWaitMs: number
  readonly #closing = new AbortController()

  #current: IssuedToken | undefined
  readonly #dead = new Set<string>()
  #refreshing: Promise<IssuedToken> | undefined
  readonly #reports = new Map<string, Promise<IssuedToken>>()
  #mode: TokenSourceMode = 'connecting'
  #timer: NodeJS.Timeout | undefined
  #refreshFailures = 0
  #lastEventId: string | undefined
  #retryMs = 2000
  #streamLoop: Promise<void> | undefined

  constructor (opts: TokenSourceOptions) {
    if (typeof opts.server !== 'string' || opts.server === '') throw new TypeError('createTokenSource: `server` is required')
    this.#brokerUrl = new URL(opts.brokerUrl)
    this.#pmsUrl = opts.pmsUrl === undefined ? undefined : new URL(opts.pmsUrl)
    this.#server = opts.server
    this.#secretFile = opts.secretFile
    if (opts.secret === undefined && opts.secretFile === undefined) throw new TypeError('createTokenSource: give `secret` or `secretFile`')
    this.#secret = opts.secret ?? this.#readSecret()
    if (this.#secret === '') throw new TypeError('createTokenSource: the secret is empty')
    this.#log = opts.logger
    this.#ownAgent = opts.dispatcher === undefined ? new Agent({ keepAliveTimeout: 10_000 }) : undefined
    this.#dispatcher = opts.dispatcher ?? this.#ownAgent!
    this.#requestTimeoutMs = opts.requestTimeoutMs ?? 10_000
    this.#heartbeatTimeoutMs = opts.heartbeatTimeoutMs ?? 37_500
    this.#maxBackoffMs = opts.maxBackoffMs ?? 60_000
    this.#brokerAttempts = Math.max(1, opts.brokerAttempts ?? 3)
    this.#pmsRetries = Math.max(0, opts.pmsRetries ?? 2)
    this.#replacementWaitMs = Math.max(0, opts.replacementWaitMs ?? 2000)
    if (opts.stream === false) {
      this.#setMode('polling')
    } else {
      this.#streamLoop = this.#runStream()
    }
  }

  /** `stream` while the broker's stream is open, `polling` while it cannot be, `closed` after `close()`. */
  get mode (): TokenSourceMode { return this.#mode }

  /** A live token: from memory when it has one, else from the broker (one call shared by all callers). */
  async token (): Promise<string> {
    return (await this.current()).token
  }

  /** Like `token()`, with its id and times. */
  async current (): Promise<IssuedToken> {
    if (this.#mode === 'closed') throw new Error('the token source is closed')
    const c = this.#current
    if (c !== undefined && this.#isLive(c)) return c
    return await this.#refresh()
  }

  on<E extends keyof Events> (event: E, listener: (...args: Events[E]) => void): this {
    this.#events.on(event, listener as never)
    return this
  }

  off<E extends keyof Events> (event: E, listener: (...args: Events[E]) => void): this {
    this.#events.off(event, listener as never)
    return this
  }

  /**
   * `fetch` (undici) against `pmsUrl` with the token as `X-Plex-Token`. A 401 is reported to the
   * broker once (`rejectedTokenId`) and the call made once more with the token it answers; a 503
   * is retried after its `Retry-After` (capped), or a growing wait without one, and so is a call
   * PMS did not answer at all (it is restarting), within the same `pmsRetries`. Redirects are
   * followed on `pmsUrl`'s origin only. Returns the last response, whatever its status; throws
   * `PmsUnavailableError` when PMS never answered, `PmsRedirectError` for a redirect elsewhere.
   * The 401 handling keeps the contract of docs/architecture.md (*A 401 from PMS*), which the
   * broker's proxy keeps too, by copy (this package imports no server code).
   */
  async fetchPms (path: string, init: RequestInit = {}): Promise<Response> {
    if (this.#pmsUrl === undefined) throw new TypeError('fetchPms needs `pmsUrl` in createTokenSource')
    const url = joinUrl(this.#pmsUrl, path)
    const replayable = isReplayable(init.body)
    const method = (init.method ?? 'GET').toUpperCase()
    let t = await this.current()
    let reported = false
    let retries = 0
    let attempts = 0
    for (;;) {
      let res: Response
      attempts++
      try {
        res = await this.#send(url, init, t.token, replayable)
      } catch (err) {
        const code = networkCode(err)
        if (code === undefined) throw err
        // Refused or not connected in time: nothing reached PMS, so any call may go again.
        // Otherwise PMS may have acted on it: only an idempotent call goes again.
        const resend = replayable && (NOT_SENT.has(code) || IDEMPOTENT.has(method))
        if (!resend || retries >= this.#pmsRetries) {
          throw new PmsUnavailableError(`PMS at ${this.#pmsUrl.origin} did not answer: ${code}`, { attempts, cause: (err as Error).cause ?? err })
        }
        retries++
        const wait = backoff(retries, BASE_BACKOFF_MS, this.#maxBackoffMs)
        this.#log?.debug?.({ server: this.#server, code, waitMs: wait }, 'PMS did not answer; retrying')
        await sleep(wait, undefined, { signal: init.signal ?? undefined })
        t = await this.current()
        continue
      }
      if (res.status === 401 && !reported) {
        reported = true
        const next = await this.#reportRejected(t)
        // The broker checked the token and PMS accepts it: this 401 is about something else. Or
        // the body was a stream, spent by the first attempt: the next call gets the new token.
        if (next.tokenId === t.tokenId || !replayable) return res
        await discard(res)
        t = next
        continue
      }
      if (res.status === 503 && retries < this.#pmsRetries && replayable) {
        retries++
        const wait = backoff(retries, BASE_BACKOFF_MS, this.#maxBackoffMs, retryAfterMs(res.headers.get('retry-after')))
        await discard(res)
        this.#log?.debug?.({ server: this.#server, status: 503, waitMs: wait }, 'PMS busy; retrying')
        await sleep(wait, undefined, { signal: init.signal ?? undefined })
        t = await this.current()
        continue
      }
      return res
    }
  }

  /**
   * One PMS call with `token`, following redirects by hand. undici's own following drops only
   * `Authorization` when the origin changes, so it would hand `X-Plex-Token` to whatever host a
   * redirect names. Here only redirects on `pmsUrl`'s origin are followed (same scheme, so never
   * https to http); any other is refused rather than followed without the token, since an answer
   * from another host is not PMS's answer, and `pmsUrl` should name the address PMS serves on.
   */
  async #send (first: URL, init: RequestInit, token: string, replayable: boolean): Promise<Response> {
    const origin = this.#pmsUrl!.origin
    const follow = init.redirect ?? 'follow'
    const headers = new Headers(init.headers)
    headers.set('X-Plex-Token', token)
    let url = first
    let method = (init.method ?? 'GET').toUpperCase()
    let body = init.body
    for (let hops = 0; ; hops++) {
      const res = await this.#fetchOnce(url, { ...init, method, body, headers, redirect: 'manual', dispatcher: init.dispatcher ?? this.#dispatcher }, replayable)
      const location = res.headers.get('location')
      if (follow === 'manual' || !REDIRECT_STATUSES.has(res.status) || location === null) return res
      let next: URL
      try {
        next = new URL(location, url)
      } catch {
        return res
      }
      // As fetch does: a 303 (but to GET and HEAD), or a 301/302 to a POST, goes on as a GET
      // without the body. The others resend the body, which a stream cannot be: the caller gets the redirect.
      const toGet = res.status === 303 ? method !== 'GET' && method !== 'HEAD' : (res.status === 301 || res.status === 302) && method === 'POST'
      if (!toGet && body !== undefined && body !== null && !replayable) return res
      await discard(res)
      if (follow === 'error' || next.origin !== origin) {
        throw new PmsRedirectError(`PMS answered ${res.status} to ${next.origin}; fetchPms sends the token to ${origin} only${follow === 'error' ? '' : ' (set pmsUrl to the address PMS serves on)'}`,
          { code: 'PMS_REDIRECT_REFUSED', statusCode: res.status, location: next.origin })
      }
      if (hops >= MAX_REDIRECTS) {
        throw new PmsRedirectError(`PMS redirected more than ${MAX_REDIRECTS} times`, { code: 'PMS_TOO_MANY_REDIRECTS', statusCode: res.status, location: next.origin })
      }
      if (toGet) {
        method = 'GET'
        body = undefined
        for (const h of ['content-type', 'content-length', 'content-encoding', 'content-language', 'content-location']) headers.delete(h)
      }
      this.#log?.debug?.({ server: this.#server, status: res.status }, 'PMS redirected on its own origin; following')
      url = next
    }
  }

  /**
   * One PMS request. A kept-alive connection that PMS closed meanwhile (it restarted, or timed the
   * connection out) fails at once; an idempotent call is then sent again once, on a new connection.
   */
  async #fetchOnce (url: URL, init: RequestInit, replayable: boolean): Promise<Response> {
    try {
      return await fetch(url, init)
    } catch (err) {
      const code = networkCode(err)
      if (!replayable || !IDEMPOTENT.has(init.method ?? 'GET') || (code !== 'UND_ERR_SOCKET' && code !== 'ECONNRESET')) throw err
      this.#log?.debug?.({ server: this.#server, code }, 'PMS closed a kept-alive connection; sending again')
      return await fetch(url, init)
    }
  }

  /** Stops the stream, the timers and (unless a dispatcher was given) the connections. */
  async close (): Promise<void> {
    if (this.#mode === 'closed') return
    this.#setMode('closed')
    this.#closing.abort()
    clearTimeout(this.#timer)
    this.#timer = undefined
    await this.#streamLoop
    await this.#ownAgent?.close()
  }

  // ---- tokens ----

  #isLive (t: IssuedToken): boolean {
    return !this.#dead.has(t.tokenId) && Date.now() < Date.parse(t.expiresAt) - EXPIRY_MARGIN_MS
  }

  /** A plain `POST /v1/tokens`, shared by everyone who asks while it runs. */
  #refresh (): Promise<IssuedToken> {
    this.#refreshing ??= this.#ask(undefined).finally(() => { this.#refreshing = undefined })
    return this.#refreshing
  }

  /** PMS answered 401 to `t`: report it, once for everyone holding it. */
  async #reportRejected (t: IssuedToken): Promise<IssuedToken> {
    const c = this.#current
    // Already replaced (by the stream, or by another caller's report): use the new one.
    if (c !== undefined && c.tokenId !== t.tokenId && this.#isLive(c)) return c
    let report = this.#reports.get(t.tokenId)
    if (report === undefined) {
      this.#log?.info?.({ server: this.#server, tokenId: t.tokenId }, 'PMS rejected the token; reporting it to the broker')
      report = this.#ask(t.tokenId).finally(() => this.#reports.delete(t.tokenId))
      this.#reports.set(t.tokenId, report)
    }
    return await report
  }

  /** `POST /v1/tokens`, retried on 429/5xx/no connection up to `brokerAttempts`; takes the answer in. */
  async #ask (rejectedTokenId: string | undefined): Promise<IssuedToken> {
    for (let attempt = 1; ; attempt++) {
      try {
        const t = await this.#post(rejectedTokenId)
        const via = rejectedTokenId === undefined ? 'poll' : 'report'
        if (this.#accept(t, via)) return t
        // A stale answer (the stream brought a newer token meanwhile).
        const c = this.#current
        return c !== undefined && this.#isLive(c) ? c : t
      } catch (err) {
        if (this.#mode === 'closed' || !(err instanceof BrokerError) || !err.retryable || attempt >= this.#brokerAttempts) throw err
        const wait = backoff(attempt, BASE_BACKOFF_MS, this.#maxBackoffMs, err.retryAfterMs)
        this.#log?.warn?.({ server: this.#server, status: err.statusCode, code: err.code, waitMs: wait }, 'broker could not issue a token; retrying')
        await sleep(wait, undefined, { signal: this.#closing.signal, ref: false })
      }
    }
  }

  async #post (rejectedTokenId: string | undefined, secretReread = false): Promise<IssuedToken> {
    const body = rejectedTokenId === undefined ? { server: this.#server } : { server: this.#server, rejectedTokenId }
    let res: Dispatcher.ResponseData
    try {
      res = await request(joinUrl(this.#brokerUrl, '/v1/tokens'), {
        method: 'POST',
        headers: { authorization: `Bearer ${this.#secret}`, 'content-type': 'application/json', accept: 'application/json' },
        body: JSON.stringify(body),
        dispatcher: this.#dispatcher,
        headersTimeout: this.#requestTimeoutMs,
        bodyTimeout: this.#requestTimeoutMs,
        signal: this.#closing.signal,
      })
    } catch (cause) {
      throw new BrokerError(`broker unreachable: ${(cause as Error).message}`, { statusCode: 0, code: 'BROKER_UNREACHABLE', cause })
    }
    let json: unknown
    try {
      json = JSON.parse(await res.body.text())
    } catch (cause) {
      throw new BrokerError(`broker answered ${res.statusCode} without JSON`, { statusCode: res.statusCode === 200 ? 0 : res.statusCode, code: 'BAD_RESPONSE', cause })
    }
    if (res.statusCode === 200) {
      if (!isIssuedToken(json)) throw new BrokerError('broker answered 200 without a token', { statusCode: 0, code: 'BAD_RESPONSE' })
      return json
    }
    if (res.statusCode === 401 && this.#secretFile !== undefined && !secretReread) {
      // The secret may have been rotated in its file since it was read.
      const before = this.#secret
      this.#secret = this.#readSecret()
      if (this.#secret !== before) return await this.#post(rejectedTokenId, true)
    }
    const e = (json ?? {}) as { code?: unknown, message?: unknown, requestId?: unknown }
    throw new BrokerError(typeof e.message === 'string' ? e.message : `broker answered ${res.statusCode}`, {
      statusCode: res.statusCode,
      code: typeof e.code === 'string' ? e.code : 'BROKER_ERROR',
      requestId: typeof e.requestId === 'string' ? e.requestId : undefined,
      retryAfterMs: retryAfterMs(res.headers['retry-after']),
    })
  }

  /**
   * Makes `t` the current token unless it is dead or older than the one held. Emits `token` when
   * the token changes (dedup by tokenId). True when `t` is (now) current.
   */
  #accept (t: IssuedToken, via: TokenChange['via'], reason?: string): boolean {
    if (this.#dead.has(t.tokenId) || this.#mode === 'closed') return false
    const c = this.#current
    if (c !== undefined && c.tokenId !== t.tokenId && this.#isLive(c) && Date.parse(t.issuedAt) < Date.parse(c.issuedAt)) return false
    this.#current = t
    this.#refreshFailures = 0
    this.#schedule()
    if (c?.tokenId !== t.tokenId) {
      this.#log?.info?.({ server: this.#server, tokenId: t.tokenId, via, reason }, 'new token')
      this.#emit('token', { ...t, via, ...(reason === undefined ? {} : { reason }) })
    }
    return true
  }

  #markDead (tokenId: string): void {
    this.#dead.add(tokenId)
    if (this.#dead.size > DEAD_IDS_KEPT) this.#dead.delete(this.#dead.values().next().value!)
  }

  /**
   * The next refresh: at `renewAt` while polling; while the stream is open it brings the new token,
   * so only halfway from `renewAt` to `expiresAt`, as a safety net.
   */
  #schedule (delayMs?: number): void {
    clearTimeout(this.#timer)
    this.#timer = undefined
    const c = this.#current
    if (this.#mode === 'closed' || c === undefined) return
    if (delayMs === undefined) {
      const renew = Date.parse(c.renewAt)
      const at = this.#mode === 'stream' ? renew + (Date.parse(c.expiresAt) - renew) / 2 : renew
      delayMs = Math.max(0, at - Date.now())
    }
    this.#timer = setTimeout(() => { void this.#renew(delayMs > MAX_TIMER_MS) }, Math.min(delayMs, MAX_TIMER_MS))
    this.#timer.unref()
  }

  async #renew (early: boolean): Promise<void> {
    if (early) return this.#schedule()
    const before = this.#current
    try {
      const t = await this.#refresh()
      // Past renewAt and the broker still serves the same token: its rotation is queued; ask again shortly.
      if (t.tokenId === before?.tokenId && Date.now() >= Date.parse(t.renewAt) && this.#current?.tokenId === t.tokenId) {
        const lifeLeft = Date.parse(t.expiresAt) - Date.parse(t.renewAt)
        this.#schedule(Math.min(this.#maxBackoffMs, Math.max(BASE_BACKOFF_MS, lifeLeft / 20)))
      }
    } catch (err) {
      if (this.#mode === 'closed') return
      this.#refreshFailures++
      const wait = backoff(this.#refreshFailures, BASE_BACKOFF_MS, this.#maxBackoffMs, (err as BrokerError).retryAfterMs)
      this.#log?.warn?.({ server: this.#server, status: (err as BrokerError).statusCode, code: (err as BrokerError).code, waitMs: wait }, 'token refresh failed; retrying')
      this.#schedule(wait)
    }
  }

  // ---- the stream ----

  async #runStream (): Promise<void> {
    let failures = 0
    while (this.#mode !== 'closed') {
      const openedAt = Date.now()
      const outcome = await readStream({
        url: joinUrl(this.#brokerUrl, `/v1/tokens/stream?server=${encodeURIComponent(this.#server)}`),
        secret: this.#secret,
        lastEventId: this.#lastEventId,
        dispatcher: this.#dispatcher,
        idleTimeoutMs: this.#heartbeatTimeoutMs,
        headersTimeoutMs: this.#requestTimeoutMs,
        signal: this.#closing.signal,
        onOpen: () => this.#setMode('stream'),
        onEvent: (e) => this.#onStreamEvent(e),
        onId: (id) => { this.#lastEventId = id },
        onRetry: (ms) => { this.#retryMs = Math.min(ms, this.#maxBackoffMs) },
      })
      if (this.#closing.signal.aborted) return
      let wait: number
      if (outcome.opened) {
        // A stream that delivered events, or stayed open a while, ended normally: back after
        // `retry`. One that died at once (or keeps dying) backs off.
        failures = outcome.events > 0 || Date.now() - openedAt >= HEALTHY_STREAM_MS ? 0 : failures + 1
        wait = failures === 0 ? this.#retryMs : backoff(failures, this.#retryMs, this.#maxBackoffMs)
        this.#log?.info?.({ server: this.#server, events: outcome.events, waitMs: wait, error: describe(outcome.error) }, 'token stream ended; reconnecting')
      } else {
        failures++
        wait = backoff(failures, this.#retryMs, this.#maxBackoffMs, outcome.retryAfterMs)
        if (outcome.statusCode === 401 && this.#secretFile !== undefined) {
          try {
            this.#secret = this.#readSecret()
          } catch (err) {
            this.#log?.warn?.({ server: this.#server, error: describe(err) }, 'could not read secretFile')
          }
        }
        if (this.#mode !== 'polling') {
          this.#log?.warn?.({ server: this.#server, status: outcome.statusCode, code: outcome.code, error: describe(outcome.error), waitMs: wait },
            'token stream unavailable; polling the broker meanwhile')
        }
        this.#setMode('polling')
      }
      try {
        await sleep(wait, undefined, { signal: this.#closing.signal, ref: false })
      } catch {
        return
      }
    }
  }

  #onStreamEvent (e: StreamEvent): void {
    let data: unknown
    try {
      data = JSON.parse(e.data)
    } catch {
      this.#log?.warn?.({ server: this.#server, event: e.event }, 'token stream: event data is not JSON; ignored')
      return
    }
    const d = data as Record<string, unknown>
    switch (e.event) {
      case 'token':
        if (!isIssuedToken(data)) {
          this.#log?.warn?.({ server: this.#server }, 'token stream: token event without a token; ignored')
          return
        }
        if (data.server.name !== this.#server) return
        this.#accept(stripReason(data), 'stream', typeof d.reason === 'string' ? d.reason : undefined)
        return
      case 'revoked': {
        if (typeof d.tokenId !== 'string') return
        const reason = typeof d.reason === 'string' ? d.reason : undefined
        this.#markDead(d.tokenId)
        if (this.#current?.tokenId !== d.tokenId) return
        this.#log?.info?.({ server: this.#server, tokenId: d.tokenId, reason }, 'token no longer valid')
        this.#emit('revoked', { tokenId: d.tokenId, reason })
        // After a PMS restart or a confirmed rejection the stream brings the replacement by
        // itself (`next: "pushed"`): wait a moment for it, then ask anyway. After an ops
        // revocation (`next: "ask"`) the next token comes only when asked: ask at once. A broker
        // that does not say waits too. (The renewal timer: #renew asks while the token is dead.)
        this.#schedule(d.next === 'ask' ? 0 : this.#replacementWaitMs)
        return
      }
      case 'server':
        if (typeof d.server === 'string' && typeof d.up === 'boolean') this.#emit('server', { server: d.server, up: d.up })
    }
  }

  #setMode (mode: TokenSourceMode): void {
    if (this.#mode === mode || this.#mode === 'closed') return
    this.#mode = mode
    if (mode !== 'closed') this.#schedule()
    this.#emit('mode', mode)
  }

  #emit<E extends keyof Events> (event: E, ...args: Events[E]): void {
    try {
      this.#events.emit(event, ...args as never)
    } catch (err) {
      this.#log?.warn?.({ event, error: describe(err) }, 'a listener threw')
    }
  }

  #readSecret (): string {
    return readFileSync(this.#secretFile!, 'utf8').trim()
  }
}

export function createTokenSource (opts: TokenSourceOptions): TokenSource {
  return new TokenSource(opts)
}

function isIssuedToken (x: unknown): x is IssuedToken {
  if (typeof x !== 'object' || x === null) return false
  const t = x as Record<string, unknown>
  const s = t.server as Record<string, unknown> | null | undefined
  return typeof t.tokenId === 'string' && typeof t.token === 'string' && t.token !== '' &&
    typeof s === 'object' && s !== null && typeof s.name === 'string' && typeof s.machineIdentifier === 'string' &&
    [t.issuedAt, t.renewAt, t.expiresAt].every((v) => typeof v === 'string' && !Number.isNaN(Date.parse(v)))
}

function stripReason (t: IssuedToken): IssuedToken {
  return { tokenId: t.tokenId, token: t.token, server: { name: t.server.name, machineIdentifier: t.server.machineIdentifier }, issuedAt: t.issuedAt, renewAt: t.renewAt, expiresAt: t.expiresAt }
}

/** An error's name and code for a log line: never its message, which could quote a header. */
function describe (err: unknown): string | undefined {
  if (err === undefined || err === null) return undefined
  const e = err as { name?: unknown, code?: unknown }
  return [e.name, e.code].filter((v) => typeof v === 'string').join(' ') || 'error'
}

/**
 * The code of a network failure of undici's `fetch` (a `TypeError: fetch failed` whose cause
 * says what happened), or undefined for anything else (an abort, a bad argument).
 */
function networkCode (err: unknown): string | undefined {
  if (!(err instanceof TypeError) || err.cause === undefined) return undefined
  const code = (err.cause as { code?: unknown } | null)?.code
  return typeof code === 'string' ? code : 'ERR_NETWORK'
}

async function discard (res: Response): Promise<void> {
  try {
    await res.arrayBuffer()
  } catch {
    // The connection went away: nothing left to read.
  }
}
