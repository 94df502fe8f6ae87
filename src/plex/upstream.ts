import { Pool } from 'undici'

/**
 * Every connection from the broker to PMS, per PMS origin (docs/architecture.md, *Talking to
 * PMS*): the proxy's forwarding and the PMS client's own calls (mints, checks, probes, event
 * streams) all take their connections from here, so one place sets the timeouts, TLS and pool
 * sizes. Three pools per origin:
 *
 * - `media`: `/library/parts/**`, `/video/:/transcode/**`, `/photo/:/transcode`, downloads and the
 *   event feed through the proxy: long answers, no body timeout (a player that pauses stops
 *   reading, and TCP backpressure then stops PMS; that must not count as PMS being silent).
 * - `api`: every other proxied request: short answers, with header and body timeouts. Kept apart
 *   from `media` so that a few films playing never leave `/library/sections` queueing.
 * - `admin`: the broker's own calls (`PlexClient`): `/security/token`, the token checks, the
 *   `/identity` probe and the event stream. A pool of its own, sized to the client's concurrency
 *   cap plus the event stream, so these never queue behind proxied traffic: a mint is what a
 *   proxied request without a token waits for, and the probe's deadline (PLEX_TIMEOUT) spent in
 *   a queue would read as "PMS down", open the circuit breaker and fail mints, which in turn
 *   fail more proxied requests.
 *
 * TLS certificates are verified (`rejectUnauthorized`): tokens travel on these connections.
 * Nothing is retried here: on PMS, GETs have side effects (callers decide).
 */

export type PoolKind = 'api' | 'media' | 'admin'

const MEDIA_PATHS = [
  /^\/library\/parts(\/|$)/,
  /^\/video\/:\/transcode(\/|$)/,
  /^\/photo\/:\/transcode(\/|$)/,
  /^\/music\/:\/transcode(\/|$)/,
  /^\/sync\/items\/[^/]+\/download/,
  /^\/:\/eventsource\/notifications$/,
]

/** Which pool a proxied request uses, by its canonical path. */
export function poolFor (path: string): 'api' | 'media' {
  return MEDIA_PATHS.some((re) => re.test(path)) ? 'media' : 'api'
}

export interface UpstreamOptions {
  /** Connections to PMS per pool (per origin). Defaults: api 32, media 256, admin 4. */
  apiConnections?: number
  mediaConnections?: number
  adminConnections?: number
  /** Longest wait for PMS's answer headers (the API pool); the media pool waits twice as long (a transcode start is slow). Default 30 s. */
  headersTimeoutMs?: number
  /** Longest silence in an API answer's body. Default 60 s. */
  bodyTimeoutMs?: number
  /** The admin pool's connect, header and body timeout (PLEX_TIMEOUT; each call also has its own deadline). Default 10 s. */
  adminTimeoutMs?: number
}

/** The pools of one PMS origin. */
export class UpstreamPools {
  readonly #pools: Record<PoolKind, Pool>

  constructor (origin: string, opts: UpstreamOptions = {}) {
    const headersTimeout = opts.headersTimeoutMs ?? 30_000
    const adminTimeout = opts.adminTimeoutMs ?? 10_000
    const tls = { rejectUnauthorized: true }
    this.#pools = {
      api: new Pool(origin, {
        connections: opts.apiConnections ?? 32,
        headersTimeout,
        bodyTimeout: opts.bodyTimeoutMs ?? 60_000,
        keepAliveTimeout: 10_000,
        connect: { ...tls, timeout: 5000 },
      }),
      media: new Pool(origin, {
        connections: opts.mediaConnections ?? 256,
        headersTimeout: headersTimeout * 2,
        bodyTimeout: 0,
        keepAliveTimeout: 10_000,
        connect: { ...tls, timeout: 5000 },
      }),
      admin: new Pool(origin, {
        connections: opts.adminConnections ?? 4,
        headersTimeout: adminTimeout,
        bodyTimeout: adminTimeout,
        keepAliveTimeout: 10_000,
        connect: { ...tls, timeout: adminTimeout },
      }),
    }
  }

  pool (kind: PoolKind): Pool {
    return this.#pools[kind]
  }

  async close (): Promise<void> {
    await Promise.all(Object.values(this.#pools).map(async (p) => { await p.destroy() }))
  }
}

/**
 * The pools of every PMS origin the broker talks to, made on first use. One per instance
 * (`createServices`), shared by the PMS client and the proxy, closed with the services.
 */
export class PmsUpstream {
  readonly #opts: UpstreamOptions
  readonly #byOrigin = new Map<string, UpstreamPools>()
  #closed = false

  constructor (opts: UpstreamOptions = {}) {
    this.#opts = opts
  }

  /** The pools of the origin of `url` (a server's configured URL). */
  pools (url: string | URL): UpstreamPools {
    if (this.#closed) throw new Error('PMS connections are closed')
    const origin = new URL(url).origin
    let p = this.#byOrigin.get(origin)
    if (p === undefined) this.#byOrigin.set(origin, p = new UpstreamPools(origin, this.#opts))
    return p
  }

  /** Ends every connection (open answers included). */
  async close (): Promise<void> {
    this.#closed = true
    await Promise.all([...this.#byOrigin.values()].map(async (p) => { await p.close() }))
    this.#byOrigin.clear()
  }
}
