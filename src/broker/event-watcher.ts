import type { Logger } from 'pino'
import type { ServerConfig } from '../config/index.ts'
import type { JobProducer } from '../jobs/producer.ts'
import type { PlexClient } from '../plex/client.ts'
import type { AdminTokenHealth } from './admin-token-health.ts'

/** After the PMS event stream drops, reconnect this often for QUICK_RECONNECT_WINDOW_MS (a restart). */
const QUICK_RECONNECT_MS = 500
const QUICK_RECONNECT_WINDOW_MS = 10_000

export interface EventWatcherOptions {
  /** The configured servers by name, looked up again before every (re)connect (token files replace entries). */
  servers: Map<string, ServerConfig>
  plex: PlexClient
  /** While a server's admin token is known to be rejected, its stream is not reopened. */
  adminHealth: AdminTokenHealth
  /** Where the probes a drop or a reconnect asks for are queued. */
  jobs: JobProducer
  logger: Logger
  /** PLEX_PROBE_INTERVAL: how long to wait before looking again at a rejected admin token. */
  probeIntervalMs: number
}

/**
 * Keeps one `/:/eventsource/notifications` stream open per server, on instances with the worker
 * role. It is not a job: it is a long-lived connection whose drop is the fastest sign of a PMS
 * restart, so a drop (and a reconnect) queues a probe now instead of waiting for the next period.
 */
export class PmsEventWatcher {
  readonly #o: EventWatcherOptions
  #abort = new AbortController()

  constructor (opts: EventWatcherOptions) {
    this.#o = opts
  }

  /** Opens one stream per configured server. */
  start (): void {
    this.#abort = new AbortController()
    for (const name of this.#o.servers.keys()) void this.#watch(name, this.#abort.signal)
  }

  /** Closes every stream; no reconnect follows. */
  stop (): void {
    this.#abort.abort()
  }

  /**
   * Keeps `/:/eventsource/notifications` open with the admin token. PMS drops it when it stops,
   * so a drop triggers a probe at once instead of at the next period; so does a reconnect, which
   * is often the first sign that PMS is back. For 10 s after a drop it reconnects every 500 ms (a
   * restarting PMS is back within seconds, and the reconnect is what reveals it: with a doubling
   * wait, a PMS back just after an attempt went unseen for up to 2.4 s); after that, and when it
   * never opened, reconnects back off from 1 s to 30 s. While the
   * admin token is known to be rejected the stream is not reopened (each attempt would be one more
   * 401): the rechecks decide when PMS accepts the token again, and the stream follows.
   * The server is looked up again before every (re)connect: a reloaded token file replaces the
   * server's config, and the stream must reopen with the new admin token, not the one it started with.
   */
  async #watch (name: string, signal: AbortSignal): Promise<void> {
    const { plex, logger, jobs, adminHealth } = this.#o
    let pause = 1000
    let droppedAt = Number.NEGATIVE_INFINITY
    while (!signal.aborted) {
      const server = this.#o.servers.get(name)
      if (server === undefined) return
      if (await adminHealth.rejected(server).catch(() => false)) {
        await sleep(this.#o.probeIntervalMs, signal)
        continue
      }
      let reason = ''
      let openedAt = 0
      const opened = await new Promise<boolean>((resolve) => {
        let wasOpen = false
        plex.watchEvents(server, {
          signal,
          onOpen: () => {
            wasOpen = true
            openedAt = Date.now()
            pause = 1000
            jobs.probeNow(server.name, 'eventsource').catch(() => {})
          },
          onClose: (why) => {
            reason = why
            resolve(wasOpen)
          },
        })
      })
      if (signal.aborted) return
      if (opened) {
        // A stream that lived a while and dropped: PMS stopping. One that keeps dropping right
        // after opening (a proxy, a broken PMS) gets the ordinary backoff, not quick reconnects.
        if (Date.now() - openedAt >= QUICK_RECONNECT_WINDOW_MS / 2) droppedAt = Date.now()
        logger.info({ server: server.name, reason }, 'PMS event stream dropped; probing now')
        await jobs.probeNow(server.name, 'eventsource').catch(() => {})
      }
      if (Date.now() - droppedAt < QUICK_RECONNECT_WINDOW_MS) {
        await sleep(QUICK_RECONNECT_MS, signal)
        continue
      }
      await sleep(pause + Math.random() * pause * 0.2, signal)
      pause = Math.min(pause * 2, 30_000)
    }
  }
}

async function sleep (ms: number, signal: AbortSignal): Promise<void> {
  await new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms)
    signal.addEventListener('abort', () => { clearTimeout(t); resolve() }, { once: true })
  })
}
