import { type Job, UnrecoverableError, Worker } from 'bullmq'
import type { RedisClient } from '../redis.ts'
import type { Logger } from 'pino'
import type { ServerConfig } from '../config/index.ts'
import { BrokerError } from '../errors.ts'
import type { ServerProbe } from '../broker/probe.ts'
import type { Rotator } from '../broker/rotator.ts'
import type { PlexClient } from '../plex/client.ts'
import { type JobProducer, type ProbeTrigger, SCHEDULER_LOCK_TTL_MS } from './producer.ts'
import { PROBES_QUEUE, type ProbeJob, TOKENS_QUEUE, type TokenJob, backoffDelay } from './queues.ts'

/** After the PMS event stream drops, reconnect this often for QUICK_RECONNECT_WINDOW_MS (a restart). */
const QUICK_RECONNECT_MS = 500
const QUICK_RECONNECT_WINDOW_MS = 10_000

export interface JobRunnerOptions {
  /** Where the jobs this runner's work leads to are queued (sweep → rotations, stream drop → probe). */
  jobs: JobProducer
  /** Blocking connection for the workers (`maxRetriesPerRequest: null`). */
  connection: RedisClient
  prefix: string
  servers: Map<string, ServerConfig>
  plex: PlexClient
  rotator: Rotator
  probe: ServerProbe
  logger: Logger
  probeIntervalMs: number
  sweepIntervalMs: number
  /**
   * How long a job stays locked to a worker without a heartbeat: a job of a killed instance is
   * picked up by another after about this long (BullMQ's stalled-job check). Default 30 s.
   */
  lockDurationMs?: number
  /** Token jobs run at once per instance: the bound on upstream mints from background work. */
  concurrency: number
  /** Validates every server's admin token (at start and hourly). */
  checkAdminTokens?: () => Promise<void>
  /**
   * Rechecks a server's admin token when it is known to be rejected and the fleet-wide recheck is
   * due (a no-op otherwise): run after every probe, so a token PMS accepts again unblocks minting
   * even when no client is asking.
   */
  recheckAdminToken?: (server: ServerConfig) => Promise<unknown>
  /** True while the server's admin token is known to be rejected (a Redis read, never a PMS call). */
  adminTokenRejected?: (server: ServerConfig) => Promise<boolean>
  /** Extra housekeeping on every sweep (audit retention). */
  onSweep?: () => Promise<void>
  /** Keep a `/:/eventsource/notifications` stream open per server (a drop triggers a probe). */
  watchEvents?: boolean
}

/** Job lock: a quarter of TOKEN_RENEW_AFTER between 5 s and 30 s, so short renewal periods recover fast from a killed worker. */
export function lockDuration (renewAfterMs: number): number {
  return Math.min(30_000, Math.max(5000, Math.round(renewAfterMs / 4)))
}

/** Sweep cadence: a twentieth of TOKEN_RENEW_AFTER, between 1 s and 1 min. */
export function sweepInterval (renewAfterMs: number): number {
  return Math.min(60_000, Math.max(1000, Math.round(renewAfterMs / 20)))
}

/**
 * Runs the background work of an instance with the worker role: token jobs (rotate, remint),
 * probe and sweep jobs from job schedulers, and one event stream per server.
 * Any number of instances can run this on one Redis: schedulers make each probe and sweep run
 * once per period in total, job ids make each rotation run once, and a job of a killed instance
 * is picked up by another after BullMQ's stalled-job check.
 */
export class JobRunner {
  readonly #o: JobRunnerOptions
  readonly #workers: Worker[] = []
  readonly #abort = new AbortController()
  #timer: NodeJS.Timeout | undefined
  /** The scheduler setup in progress: close waits for it, so its lock is released, not left to expire. */
  #ensuring: Promise<boolean> | undefined

  constructor (opts: JobRunnerOptions) {
    this.#o = opts
  }

  async start (): Promise<void> {
    const { connection, prefix, logger, concurrency } = this.#o
    const settings = { backoffStrategy: (attemptsMade: number) => backoffDelay(attemptsMade) }
    const tokens = new Worker(TOKENS_QUEUE, async (job: Job) => await this.#tokenJob(job as unknown as TokenJob),
      { connection, prefix, concurrency, settings, lockDuration: this.#o.lockDurationMs ?? 30_000, stalledInterval: this.#o.lockDurationMs ?? 30_000 })
    const probes = new Worker(PROBES_QUEUE, async (job: Job) => await this.#probeJob(job as unknown as ProbeJob),
      { connection, prefix, concurrency: Math.max(2, this.#o.servers.size + 1), settings })
    for (const w of [tokens, probes]) {
      w.on('error', (err) => logger.warn({ err: { message: err.message } }, 'job worker error'))
      w.on('failed', (job, err) => {
        logger.warn({ job: job?.name, jobId: job?.id, attempts: job?.attemptsMade, err: { type: err.name, message: err.message } }, 'job failed')
      })
      this.#workers.push(w)
    }
    // At boot the setup waits out a lock held by another instance (or left by a killed one): the
    // schedulers of the config this instance runs with are in place by the time it is ready.
    try {
      if (!await this.ensureSchedulers(SCHEDULER_LOCK_TTL_MS + 1000)) logger.warn('scheduler lock still held by another instance; schedulers are set up at the next periodic check')
    } catch (err) {
      logger.warn({ err: { message: (err as Error).message } }, 'scheduler setup failed; retrying later')
    }
    // Re-checked periodically (5 probe periods, 5 s to 1 min): heals a Redis that restarted empty,
    // and a setup another instance lost.
    this.#timer = setInterval(() => {
      this.ensureSchedulers().catch(() => {})
    }, Math.max(5000, Math.min(60_000, this.#o.probeIntervalMs * 5)))
    this.#timer.unref()
    this.#o.checkAdminTokens?.().catch((err: unknown) => logger.warn({ err: { message: (err as Error).message } }, 'admin token check failed'))
    if (this.#o.watchEvents !== false) {
      for (const name of this.#o.servers.keys()) void this.#watch(name)
    }
  }

  /** The periodic probes, sweep and admin check (created by the producer, serialised across instances). */
  async ensureSchedulers (waitMs = 0): Promise<boolean> {
    const { jobs, servers, probeIntervalMs, sweepIntervalMs } = this.#o
    const run = jobs.ensureSchedulers({ servers: servers.keys(), probeIntervalMs, sweepIntervalMs, adminChecks: this.#o.checkAdminTokens !== undefined }, waitMs)
    this.#ensuring = run
    try {
      return await run
    } finally {
      if (this.#ensuring === run) this.#ensuring = undefined
    }
  }

  /** Runs the admin token checks now (ops and tests). */
  async checkAdminTokensNow (): Promise<void> {
    await this.#o.checkAdminTokens?.()
  }

  /** Queues a probe now (an event stream dropped, a client reported a dead token). At most one per server per second. */
  async triggerProbe (server: string, trigger: ProbeTrigger): Promise<void> {
    await this.#o.jobs.probeNow(server, trigger)
  }

  async close (): Promise<void> {
    clearInterval(this.#timer)
    this.#abort.abort()
    await this.#ensuring?.catch(() => {})
    // Worker.close waits for in-flight jobs; whatever does not finish is picked up by another instance.
    await Promise.allSettled(this.#workers.map((w) => w.close()))
  }

  async #tokenJob (job: TokenJob): Promise<string> {
    try {
      if (job.name === 'rotate') return await this.#o.rotator.rotate(job.data.tokenId, job.data.reason)
      // `client` is the field name of re-mint jobs queued before it was called `slot`.
      const slot = job.data.slot ?? (job.data as { client?: string }).client ?? ''
      return (await this.#o.rotator.remint(slot, job.data.server)) ? 'minted' : 'not_needed'
    } catch (err) {
      // A rejected admin token will not heal by retrying: ops must act (UnrecoverableError = no retry).
      if (err instanceof BrokerError && err.code === 'UPSTREAM_REJECTED') throw new UnrecoverableError(err.message)
      throw err
    }
  }

  async #probeJob (job: ProbeJob): Promise<unknown> {
    if (job.name === 'admin') {
      await this.#o.checkAdminTokens?.()
      return { checked: this.#o.servers.size }
    }
    if (job.name === 'sweep') {
      await this.#o.onSweep?.()
      const due = await this.#o.rotator.due()
      await this.#o.jobs.rotate(due.map((d) => ({ tokenId: d.tokenId, reason: 'scheduled' })))
      return { due: due.length }
    }
    const server = this.#o.servers.get(job.data.server)
    if (server === undefined) return { skipped: 'unknown server' }
    const result = await this.#o.probe.probe(server)
    if (result.state === 'down' || this.#o.recheckAdminToken === undefined) return result
    const admin = await this.#o.recheckAdminToken(server).catch((err: unknown) => {
      this.#o.logger.warn({ server: server.name, err: { type: (err as Error).name, message: (err as Error).message } }, 'admin token recheck failed')
      return 'error'
    })
    return { ...result, admin }
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
  async #watch (name: string): Promise<void> {
    const { plex, logger } = this.#o
    const signal = this.#abort.signal
    let pause = 1000
    let droppedAt = Number.NEGATIVE_INFINITY
    while (!signal.aborted) {
      const server = this.#o.servers.get(name)
      if (server === undefined) return
      if (await this.#o.adminTokenRejected?.(server).catch(() => false) === true) {
        await this.#sleep(this.#o.probeIntervalMs, signal)
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
            this.triggerProbe(server.name, 'eventsource').catch(() => {})
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
        await this.triggerProbe(server.name, 'eventsource').catch(() => {})
      }
      if (Date.now() - droppedAt < QUICK_RECONNECT_WINDOW_MS) {
        await this.#sleep(QUICK_RECONNECT_MS, signal)
        continue
      }
      await this.#sleep(pause + Math.random() * pause * 0.2, signal)
      pause = Math.min(pause * 2, 30_000)
    }
  }

  async #sleep (ms: number, signal: AbortSignal): Promise<void> {
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, ms)
      signal.addEventListener('abort', () => { clearTimeout(t); resolve() }, { once: true })
    })
  }
}
