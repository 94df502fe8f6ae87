import { AsyncLocalStorage } from 'node:async_hooks'
import type { Dispatcher } from 'undici'
import type { UpstreamPools } from '../plex/upstream.ts'

/**
 * How a proxied request reaches its PMS's pools (src/plex/upstream.ts owns them, shared with the
 * PMS client): the pool a request uses and the signal that aborts it, carried to
 * @fastify/reply-from through the request's async context.
 */

/** Per request: the server's pools, which of them, and the signal that aborts the upstream request when the caller goes away. */
export interface ForwardContext {
  pools: UpstreamPools
  kind: 'api' | 'media'
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
