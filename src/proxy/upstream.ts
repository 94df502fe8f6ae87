import { AsyncLocalStorage } from 'node:async_hooks'
import { Pool, type Dispatcher } from 'undici'

/**
 * The connections from the proxy to one PMS: two undici pools, so API calls never wait behind
 * media. A film download or a transcode session holds its connection for as long as it plays;
 * with one pool, a few of them would leave `/library/sections` queueing behind them.
 *
 * - `media`: `/library/parts/**`, `/video/:/transcode/**`, `/photo/:/transcode`, downloads and the
 *   event feed: long answers, no body timeout (a player that pauses stops reading, and TCP
 *   backpressure then stops PMS; that must not count as PMS being silent).
 * - `api`: everything else: short answers, with header and body timeouts.
 *
 * TLS certificates are verified (`rejectUnauthorized`): the transient token travels on these
 * connections. Nothing is retried here: on PMS, GETs have side effects.
 */

export type PoolKind = 'api' | 'media'

const MEDIA_PATHS = [
  /^\/library\/parts(\/|$)/,
  /^\/video\/:\/transcode(\/|$)/,
  /^\/photo\/:\/transcode(\/|$)/,
  /^\/music\/:\/transcode(\/|$)/,
  /^\/sync\/items\/[^/]+\/download/,
  /^\/:\/eventsource\/notifications$/,
]

/** Which pool a canonical path uses. */
export function poolFor (path: string): PoolKind {
  return MEDIA_PATHS.some((re) => re.test(path)) ? 'media' : 'api'
}

export interface UpstreamOptions {
  /** Connections to PMS per pool. */
  apiConnections?: number
  mediaConnections?: number
  /** Longest wait for PMS's answer headers (the API pool); the media pool waits twice as long (a transcode start is slow). */
  headersTimeoutMs?: number
  /** Longest silence in an API answer's body. */
  bodyTimeoutMs?: number
}

/** Per request: the server's pools, which of them, and the signal that aborts the upstream request when the caller goes away. */
export interface ForwardContext {
  pools: UpstreamPools
  kind: PoolKind
  signal: AbortSignal
}

/** The forwarding context of the request being forwarded (set around `reply.from`). */
export const forwardContext = new AsyncLocalStorage<ForwardContext>()

/**
 * What @fastify/reply-from gets as its `undici` option: it calls `request(opts, cb)`, and this
 * picks the server's pool (api or media) and adds the caller's abort signal, both from the
 * request's async context. reply-from has no way to pass a signal: a caller who hangs up before
 * PMS answers would otherwise leave PMS working for nobody.
 */
export const upstreamRouter = {
  request (opts: Dispatcher.RequestOptions, cb: (err: Error | null, data?: Dispatcher.ResponseData) => void): void {
    const ctx = forwardContext.getStore()
    if (ctx === undefined) {
      cb(new Error('proxy: no forwarding context'))
      return
    }
    ctx.pools.pool(ctx.kind).request({ ...opts, signal: ctx.signal }, (err, data) => {
      if (err !== null) cb(err)
      else cb(null, data)
    })
  },
}

export class UpstreamPools {
  readonly #pools: Record<PoolKind, Pool>

  constructor (origin: string, opts: UpstreamOptions = {}) {
    const headersTimeout = opts.headersTimeoutMs ?? 30_000
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
    }
  }

  pool (kind: PoolKind): Pool {
    return this.#pools[kind]
  }

  async close (): Promise<void> {
    await Promise.all([this.#pools.api.destroy(), this.#pools.media.destroy()])
  }
}
