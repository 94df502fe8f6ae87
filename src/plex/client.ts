import { errors as undiciErrors, request } from 'undici'
import type { ServerConfig } from '../config/index.ts'
import type { Histogram } from '@prometheus-io/client'
import { MAX_BODY_BYTES, readCapped } from './body.ts'
import { CircuitBreaker } from './breaker.ts'
import { parsePlex } from './parse.ts'
import { PmsUpstream } from './upstream.ts'

/** PMS answered 401 or 403: the token used was rejected (docs/plex-api.md §4: decide on status only). */
export class PlexRejectedError extends Error {
  readonly code = 'PLEX_REJECTED'
  readonly status: number
  constructor (message: string, status: number) {
    super(message)
    this.name = 'PlexRejectedError'
    this.status = status
  }
}

/** PMS could not be reached, timed out, answered 5xx, or its circuit breaker is open. */
export class PlexUnavailableError extends Error {
  readonly code = 'PLEX_UNAVAILABLE'
  readonly retryAfterSeconds: number
  constructor (message: string, retryAfterSeconds = 5) {
    super(message)
    this.name = 'PlexUnavailableError'
    this.retryAfterSeconds = Math.max(1, Math.ceil(retryAfterSeconds))
  }
}

/** PMS answered 2xx with a body the broker cannot use (unparsable, or larger than MAX_BODY_BYTES). */
export class PlexBadResponseError extends Error {
  readonly code = 'PLEX_BAD_RESPONSE'
  constructor (message: string) {
    super(message)
    this.name = 'PlexBadResponseError'
  }
}

/** PMS does not know what was asked for (unknown source: 400; endpoint missing on an old PMS: 404). */
export class PlexNotFoundError extends Error {
  readonly code = 'PLEX_NOT_FOUND'
  readonly status: number
  constructor (message: string, status: number) {
    super(message)
    this.name = 'PlexNotFoundError'
    this.status = status
  }
}

export type CallOutcome = 'ok' | 'rejected' | 'unavailable' | 'bad_response' | 'not_found'

export interface PlexClientOptions {
  /** Stable X-Plex-Client-Identifier of the broker (shared by all its instances). */
  clientIdentifier: string
  /** Per-call deadline, connect to last byte. */
  timeoutMs: number
  /** In-flight requests per server; more wait in FIFO order (upstream protection). */
  concurrency: number
  product?: string
  version?: string
  /** Opens after `failureThreshold` (5) consecutive failures for `openMs` (5 s); `/identity` probes bypass it and close it. */
  breaker?: { failureThreshold?: number, openMs?: number }
  /**
   * The connections to PMS (src/plex/upstream.ts), shared with the proxy; calls use each
   * origin's `admin` pool. Without it the client opens (and closes) connections of its own.
   */
  upstream?: PmsUpstream
  /**
   * Where each call's duration and outcome are recorded: the instance's `Metrics`
   * (`ptb_upstream_request_duration_seconds`). Typed by the histogram alone, so this layer does not
   * import the metric registry (which imports the proxy's metrics, above this layer).
   */
  metrics?: { upstreamDuration: Histogram<'server' | 'endpoint' | 'outcome'> }
  /** Largest answer body, and largest event of the event stream, in bytes. Default {@link MAX_BODY_BYTES} (1 MiB). */
  maxBodyBytes?: number
}

export interface SourceConnection { uri: string, protocol: string, address: string, port: number, local: boolean, relay: boolean }

export interface SourceResources {
  source: string
  name: string
  clientIdentifier: string
  token: string
  connections: SourceConnection[]
}

export interface WatchHandlers {
  signal: AbortSignal
  onOpen?: () => void
  onEvent?: (event: string) => void
  onClose: (reason: string) => void
}

type Attrs = Record<string, unknown>

/** FIFO semaphore: at most `max` holders. */
class Gate {
  readonly #max: number
  #active = 0
  readonly #queue: Array<() => void> = []
  constructor (max: number) { this.#max = Math.max(1, max) }
  async run<T> (fn: () => Promise<T>): Promise<T> {
    if (this.#active >= this.#max) await new Promise<void>((resolve) => this.#queue.push(resolve))
    else this.#active++
    try {
      return await fn()
    } finally {
      const next = this.#queue.shift()
      if (next !== undefined) next()
      else this.#active--
    }
  }
}

const asBool = (v: unknown): boolean => v === true || v === 1 || v === '1' || v === 'true'
const RELAY_LAST = (c: SourceConnection): number => (c.relay ? 2 : c.local ? 0 : 1)

/**
 * The PMS client (undici). Tokens travel only in the `X-Plex-Token` header, never in a URL, so
 * no error message or log line can carry one. Every call has a deadline, a per-server
 * concurrency cap and a per-server circuit breaker; 401/403 never count as breaker failures.
 */
export class PlexClient {
  readonly #o: PlexClientOptions
  readonly #upstream: PmsUpstream
  /** Set when the connections are this client's own (no `upstream` given): closed by `close()`. */
  readonly #ownUpstream: boolean
  readonly #gates = new Map<string, Gate>()
  readonly #breakers = new Map<string, CircuitBreaker>()

  constructor (opts: PlexClientOptions) {
    this.#o = opts
    this.#ownUpstream = opts.upstream === undefined
    this.#upstream = opts.upstream ?? new PmsUpstream(PlexClient.upstreamOptions(opts))
  }

  /** The admin pool's size and timeout for these options: the concurrency cap plus the event stream, PLEX_TIMEOUT. */
  static upstreamOptions (opts: Pick<PlexClientOptions, 'timeoutMs' | 'concurrency'>): { adminConnections: number, adminTimeoutMs: number } {
    return { adminConnections: Math.max(1, opts.concurrency) + 1, adminTimeoutMs: opts.timeoutMs }
  }

  #record (server: string, endpoint: string, outcome: CallOutcome, durationMs: number): void {
    this.#o.metrics?.upstreamDuration.observe({ server, endpoint, outcome }, durationMs / 1000)
  }

  #headers (token?: string): Record<string, string> {
    return {
      accept: 'application/json',
      'x-plex-client-identifier': this.#o.clientIdentifier,
      'x-plex-product': this.#o.product ?? 'plex-token-broker',
      'x-plex-version': this.#o.version ?? '0.1.0',
      ...(token === undefined ? {} : { 'x-plex-token': token }),
    }
  }

  #breaker (server: string): CircuitBreaker {
    let b = this.#breakers.get(server)
    if (b === undefined) {
      b = new CircuitBreaker(this.#o.breaker?.failureThreshold ?? 5, this.#o.breaker?.openMs ?? 5000)
      this.#breakers.set(server, b)
    }
    return b
  }

  breakerState (server: string): 'closed' | 'open' | 'half-open' {
    return this.#breakers.get(server)?.state ?? 'closed'
  }

  /**
   * One call: gate, breaker, deadline, status mapping, body parsing. A connection reset on a
   * reused keep-alive socket (PMS restarted behind it) is retried once on a fresh connection.
   */
  async #call (server: ServerConfig, endpoint: string, path: string, token: string | undefined, method: 'GET' | 'POST' = 'GET', probe = false): Promise<Attrs> {
    let gate = this.#gates.get(server.name)
    if (gate === undefined) {
      gate = new Gate(this.#o.concurrency)
      this.#gates.set(server.name, gate)
    }
    const breaker = this.#breaker(server.name)
    const started = performance.now()
    let outcome: CallOutcome = 'unavailable'
    // The restart probe always goes through (one cheap request per interval): it is how the broker
    // learns that PMS is back, and its success closes the breaker at once instead of after openMs.
    const wait = probe ? 0 : breaker.admit()
    if (wait > 0) {
      // Fail fast without touching PMS; a refused call is not a new failure.
      this.#record(server.name, endpoint, outcome, 0)
      throw new PlexUnavailableError(`PMS "${server.name}" failed repeatedly; not calling it for ${Math.ceil(wait / 1000)} s`, wait / 1000)
    }
    try {
      const result = await gate.run(async () => await this.#send(server, path, token, method))
      outcome = 'ok'
      return result
    } catch (err) {
      outcome = err instanceof PlexRejectedError ? 'rejected' : err instanceof PlexNotFoundError ? 'not_found' : err instanceof PlexBadResponseError ? 'bad_response' : 'unavailable'
      throw err
    } finally {
      if (outcome === 'unavailable') breaker.failure()
      else breaker.success()
      this.#record(server.name, endpoint, outcome, performance.now() - started)
    }
  }

  async #send (server: ServerConfig, path: string, token: string | undefined, method: 'GET' | 'POST', retried = false): Promise<Attrs> {
    const url = new URL(path, server.url.endsWith('/') ? server.url : `${server.url}/`)
    let res
    try {
      res = await request(url, {
        method,
        // Never behind proxied traffic (upstream.ts, the admin pool).
        dispatcher: this.#upstream.pools(url).pool('admin'),
        headers: this.#headers(token),
        signal: AbortSignal.timeout(this.#o.timeoutMs),
        headersTimeout: this.#o.timeoutMs,
        bodyTimeout: this.#o.timeoutMs,
      })
    } catch (err) {
      if (!retried && err instanceof undiciErrors.SocketError) return await this.#send(server, path, token, method, true)
      throw new PlexUnavailableError(`PMS "${server.name}" unreachable: ${describe(err)}`)
    }
    const cap = this.#o.maxBodyBytes ?? MAX_BODY_BYTES
    const status = res.statusCode
    let text: string | undefined
    try {
      // The status alone decides an error (its HTML page is not used): read at most the cap of it,
      // so the keep-alive connection can be reused, and never more.
      if (status >= 300) await res.body.dump({ limit: cap })
      else text = await readCapped(res, cap)
    } catch (err) {
      throw new PlexUnavailableError(`PMS "${server.name}" broke off its answer: ${describe(err)}`)
    }
    if (status === 401 || status === 403) throw new PlexRejectedError(`PMS "${server.name}" answered ${status} to ${url.pathname}`, status)
    if (status === 400 || status === 404) throw new PlexNotFoundError(`PMS "${server.name}" answered ${status} to ${url.pathname}`, status)
    if (status >= 300) {
      const retryAfter = Number(res.headers['retry-after'])
      throw new PlexUnavailableError(`PMS "${server.name}" answered ${status} to ${url.pathname}`, Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter : 5)
    }
    if (text === undefined) throw new PlexBadResponseError(`PMS "${server.name}" sent an answer over ${cap} bytes to ${url.pathname}; not read`)
    const parsed = parsePlex(text, String(res.headers['content-type'] ?? ''))
    if (parsed === undefined) throw new PlexBadResponseError(`PMS "${server.name}" sent an unparsable answer to ${url.pathname}`)
    return parsed
  }

  /** `GET /identity` (no token): who this PMS is. Changes of `version` or `machineIdentifier` mean a restart. */
  async identity (server: ServerConfig): Promise<{ machineIdentifier: string, version: string, claimed?: boolean }> {
    const mc = await this.#call(server, 'identity', 'identity', undefined, 'GET', true)
    if (typeof mc.machineIdentifier !== 'string' || typeof mc.version !== 'string') {
      throw new PlexBadResponseError(`PMS "${server.name}" /identity lacks machineIdentifier or version`)
    }
    return { machineIdentifier: mc.machineIdentifier, version: mc.version, claimed: mc.claimed === undefined ? undefined : asBool(mc.claimed) }
  }

  /** Mints a transient token with the admin token (§2). PMS returns no expiry; the caller stamps the time. */
  async mintTransient (server: ServerConfig): Promise<string> {
    const mc = await this.#call(server, 'security_token', 'security/token?type=delegation&scope=all', server.adminToken)
    if (typeof mc.token !== 'string' || mc.token === '') throw new PlexBadResponseError(`PMS "${server.name}" /security/token answered without a token`)
    return mc.token
  }

  /** One cheap authenticated request with `token`: 'rejected' on 401/403 (§4 canary). */
  async checkToken (server: ServerConfig, token: string): Promise<'valid' | 'rejected'> {
    try {
      await this.#call(server, 'canary', '', token)
      return 'valid'
    } catch (err) {
      if (err instanceof PlexRejectedError) return 'rejected'
      throw err
    }
  }

  /** Connection details and a transient token for a source this PMS knows (§3, PMS ≥ 1.15.4). */
  async sourceResources (server: ServerConfig, token: string, source: string): Promise<SourceResources> {
    const mc = await this.#call(server, 'security_resources', `security/resources?source=${encodeURIComponent(source)}`, token)
    const raw = mc.Device
    const device = (Array.isArray(raw) ? raw[0] : raw) as Attrs | undefined
    if (device === undefined || typeof device.accessToken !== 'string') {
      throw new PlexBadResponseError(`PMS "${server.name}" /security/resources answered without a device token`)
    }
    const list = device.Connection === undefined ? [] : Array.isArray(device.Connection) ? device.Connection as Attrs[] : [device.Connection as Attrs]
    const connections = list.map((c) => ({
      uri: String(c.uri ?? ''),
      protocol: String(c.protocol ?? ''),
      address: String(c.address ?? ''),
      port: Number(c.port ?? 0),
      local: asBool(c.local),
      relay: asBool(c.relay),
    })).sort((a, b) => RELAY_LAST(a) - RELAY_LAST(b))
    return { source, name: String(device.name ?? ''), clientIdentifier: String(device.clientIdentifier ?? ''), token: device.accessToken, connections }
  }

  /**
   * Opens `/:/eventsource/notifications` with the admin token and reads it until it ends.
   * PMS drops it when it stops, so `onClose` is the caller's restart hint. No reconnect here;
   * not subject to the concurrency cap (it is one long-lived stream per server). An event that
   * grows past `maxBodyBytes` without its blank-line end (a stream that never sends one) closes
   * the stream (`onClose('event over … bytes')`): the buffer never grows without bound.
   */
  watchEvents (server: ServerConfig, h: WatchHandlers): void {
    const url = new URL(':/eventsource/notifications', server.url.endsWith('/') ? server.url : `${server.url}/`)
    let closed = false
    const close = (reason: string): void => {
      if (closed) return
      closed = true
      h.onClose(reason)
    }
    // The stream holds one admin connection for as long as it is open (the pool has room for it).
    Promise.resolve().then(async () => await request(url, {
      dispatcher: this.#upstream.pools(url).pool('admin'),
      headers: { ...this.#headers(server.adminToken), accept: 'text/event-stream' },
      signal: h.signal,
      headersTimeout: this.#o.timeoutMs,
      bodyTimeout: 0,
    })).then(async (res) => {
      if (res.statusCode !== 200) {
        await res.body.dump().catch(() => {})
        close(`status ${res.statusCode}`)
        return
      }
      h.onOpen?.()
      const cap = this.#o.maxBodyBytes ?? MAX_BODY_BYTES
      res.body.setEncoding('utf8')
      let buf = ''
      for await (const chunk of res.body) {
        buf += chunk as string
        let i
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i)
          buf = buf.slice(i + 2)
          const ev = /^event: ?(.*)$/m.exec(block)?.[1]
          if (ev !== undefined) h.onEvent?.(ev)
        }
        // Characters, not bytes: close enough for a bound, and cheap.
        if (buf.length > cap) {
          res.body.destroy()
          close(`event over ${cap} bytes`)
          return
        }
      }
      close('ended')
    }).catch((err: unknown) => close(describe(err)))
  }

  /** Closes the connections if they are the client's own; shared ones close with the services. */
  async close (): Promise<void> {
    if (this.#ownUpstream) await this.#upstream.close().catch(() => {})
  }
}

function describe (err: unknown): string {
  if (!(err instanceof Error)) return String(err)
  const code = (err as { code?: string }).code
  return code === undefined ? err.message : `${code}`
}
