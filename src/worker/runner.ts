import { type Job, UnrecoverableError, Worker } from 'bullmq'
import type { RedisClient } from '../redis.ts'
import type { Logger } from 'pino'
import type { ServerConfig } from '../config/index.ts'
import { BrokerError } from '../errors.ts'
import type { AdminTokenHealth } from '../broker/admin-token-health.ts'
import type { AuditLog } from '../broker/audit-log.ts'
import type { ServerProbe } from '../broker/probe.ts'
import type { Rotator } from '../broker/rotator.ts'
import type { Keys } from '../broker/keys.ts'
import type { Locks } from '../broker/locks.ts'
import type { JobProducer } from '../jobs/producer.ts'
import { HOUSEKEEPING_QUEUE, type HousekeepingJob, PROBES_QUEUE, type ProbeJob, TOKENS_QUEUE, type TokenJob, backoffDelay } from '../jobs/queues.ts'

/**
 * How long the scheduler lock lives. A setup takes milliseconds; the TTL only bounds how long an
 * instance killed in the middle of one blocks the others (a booting instance waits that long).
 */
export const SCHEDULER_LOCK_TTL_MS = 10_000

export interface JobRunnerOptions {
  /** Where the jobs this runner's work leads to are queued (sweep → rotations, stream drop → probe). */
  jobs: JobProducer
  /** Blocking connection for the workers (`maxRetriesPerRequest: null`). */
  connection: RedisClient
  /** The queues' prefix and the scheduler lock's key. */
  keys: Keys
  /** Holds the scheduler lock (a short Redis lock). */
  locks: Locks
  servers: Map<string, ServerConfig>
  rotator: Rotator
  probe: ServerProbe
  /** Checks every admin token (at start and hourly) and rechecks a rejected one after each probe. */
  adminHealth: AdminTokenHealth
  /** Trimmed on every sweep (AUDIT_RETENTION, AUDIT_MAX_EVENTS). */
  audit: AuditLog
  auditRetentionMs: number
  auditMaxEvents: number
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
 * probe, sweep and admin-check jobs from job schedulers (the PMS event streams that queue probes
 * on a drop are broker/event-watcher.ts).
 * Any number of instances can run this on one Redis: schedulers make each probe and sweep run
 * once per period in total, job ids make each rotation run once, and a job of a killed instance
 * is picked up by another after BullMQ's stalled-job check.
 */
export class JobRunner {
  readonly #o: JobRunnerOptions
  readonly #workers: Worker[] = []
  #timer: NodeJS.Timeout | undefined
  /** The scheduler setup in progress: close waits for it, so its lock is released, not left to expire. */
  #ensuring: Promise<boolean> | undefined

  constructor (opts: JobRunnerOptions) {
    this.#o = opts
  }

  async start (): Promise<void> {
    const { connection, logger, concurrency } = this.#o
    const prefix = this.#o.keys.queuePrefix
    const settings = { backoffStrategy: (attemptsMade: number) => backoffDelay(attemptsMade) }
    const tokens = new Worker(TOKENS_QUEUE, async (job: Job) => await this.#tokenJob(job as unknown as TokenJob),
      { connection, prefix, concurrency, settings, lockDuration: this.#o.lockDurationMs ?? 30_000, stalledInterval: this.#o.lockDurationMs ?? 30_000 })
    // A sweep or admin job is run from `probes` too: an older version still running in a rolling
    // upgrade queues them there (queues.ts HOUSEKEEPING_QUEUE).
    const probes = new Worker(PROBES_QUEUE, async (job: Job) => await this.#scheduledJob(job as unknown as ProbeJob | HousekeepingJob),
      { connection, prefix, concurrency: Math.max(2, this.#o.servers.size + 1), settings })
    const housekeeping = new Worker(HOUSEKEEPING_QUEUE, async (job: Job) => await this.#scheduledJob(job as unknown as HousekeepingJob),
      { connection, prefix, concurrency: 1, settings })
    for (const w of [tokens, probes, housekeeping]) {
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
    this.checkAdminTokensNow().catch((err: unknown) => logger.warn({ err: { message: (err as Error).message } }, 'admin token check failed'))
  }

  /**
   * The periodic probes, sweep and admin check (created by the producer), serialised across
   * instances by a Redis lock. With `waitMs`, waits that long for a lock another instance holds (a
   * booting instance must not keep the previous config's cadence until its next periodic check);
   * false when the lock stayed taken.
   */
  async ensureSchedulers (waitMs = 0): Promise<boolean> {
    const run = this.#ensureSchedulers(waitMs)
    this.#ensuring = run
    try {
      return await run
    } finally {
      if (this.#ensuring === run) this.#ensuring = undefined
    }
  }

  async #ensureSchedulers (waitMs: number): Promise<boolean> {
    const { jobs, servers, probeIntervalMs, sweepIntervalMs, locks } = this.#o
    const lockKey = this.#o.keys.schedulerLock
    const until = Date.now() + waitMs
    let owner = await locks.acquire(lockKey, SCHEDULER_LOCK_TTL_MS)
    while (owner === undefined && Date.now() < until) {
      await new Promise((resolve) => setTimeout(resolve, 100))
      owner = await locks.acquire(lockKey, SCHEDULER_LOCK_TTL_MS)
    }
    if (owner === undefined) return false
    try {
      await jobs.ensureSchedulers({ servers: servers.keys(), probeIntervalMs, sweepIntervalMs })
      return true
    } finally {
      await locks.release(lockKey, owner).catch(() => {})
    }
  }

  /** Validates every server's admin token now (at start, hourly, ops and tests). */
  async checkAdminTokensNow (): Promise<void> {
    for (const s of this.#o.servers.values()) await this.#o.adminHealth.check(s)
  }

  async close (): Promise<void> {
    clearInterval(this.#timer)
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

  async #scheduledJob (job: ProbeJob | HousekeepingJob): Promise<unknown> {
    if (job.name === 'admin') {
      await this.checkAdminTokensNow()
      return { checked: this.#o.servers.size }
    }
    if (job.name === 'sweep') {
      await this.#o.audit.trim(this.#o.auditRetentionMs, this.#o.auditMaxEvents)
      const due = await this.#o.rotator.due()
      await this.#o.jobs.rotate(due.map((d) => ({ tokenId: d.tokenId, reason: 'scheduled' })))
      return { due: due.length }
    }
    const server = this.#o.servers.get(job.data.server)
    if (server === undefined) return { skipped: 'unknown server' }
    const result = await this.#o.probe.probe(server)
    if (result.state === 'down') return result
    // A rejected admin token is rechecked after every probe (a no-op otherwise, or when the fleet
    // rechecked within the interval), so a token PMS accepts again unblocks minting even when no
    // client is asking.
    const admin = await this.#o.adminHealth.recheck(server).catch((err: unknown) => {
      this.#o.logger.warn({ server: server.name, err: { type: (err as Error).name, message: (err as Error).message } }, 'admin token recheck failed')
      return 'error'
    })
    return { ...result, admin }
  }
}
