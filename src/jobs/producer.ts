import {
  ADMIN_CHECK_EVERY_MS, ADMIN_SCHEDULER_ID, probeSchedulerId, type Queues, remintJobId, rotateJobId, SWEEP_SCHEDULER_ID,
} from './queues.ts'
import type { Locks } from '../broker/locks.ts'
import type { RotationReason } from '../broker/rotator.ts'

export type ProbeTrigger = 'eventsource' | 'rejection' | 'manual'
/** A rotation job's reason: a restart re-mints instead (`remint`). */
export type RotateReason = Exclude<RotationReason, 'restart'>

export interface JobProducerOptions {
  queues: Queues
  /** The scheduler lock serialises scheduler changes across instances. */
  locks: Locks
  /** Key of that lock (keys.ts). */
  schedulerLockKey: string
}

/**
 * How long the scheduler lock lives. A setup takes milliseconds; the TTL only bounds how long an
 * instance killed in the middle of one blocks the others (a booting instance waits that long).
 */
export const SCHEDULER_LOCK_TTL_MS = 10_000

export interface ScheduleWanted {
  servers: Iterable<string>
  probeIntervalMs: number
  sweepIntervalMs: number
  /** Schedule the hourly admin-token check too. */
  adminChecks: boolean
}

/**
 * Every job the broker queues is queued here: rotations (the sweep's and ops'), re-mints after a
 * PMS restart, probes on demand, and the schedulers of the periodic probes, sweep and admin check.
 * The runner (jobs/runner.ts) only consumes. Job ids carry token ids, server names and slots, never
 * tokens; the same id queued twice is one job (BullMQ ignores the duplicate while it exists).
 */
export class JobProducer {
  readonly #o: JobProducerOptions

  constructor (opts: JobProducerOptions) {
    this.#o = opts
  }

  /** Rotation jobs, one per token, in batches of 500. */
  async rotate (items: Array<{ tokenId: string, reason: RotateReason }>): Promise<void> {
    for (let i = 0; i < items.length; i += 500) {
      await this.#o.queues.tokens.addBulk(items.slice(i, i + 500).map((d) => ({
        name: 'rotate',
        data: { tokenId: d.tokenId, reason: d.reason },
        opts: { jobId: rotateJobId(d.tokenId) },
      })))
    }
  }

  /** Fresh tokens for the active slots of a restarted server, as jobs: bounded concurrency, retried. */
  async remint (server: string, slots: string[], restartAt: number): Promise<void> {
    for (let i = 0; i < slots.length; i += 500) {
      await this.#o.queues.tokens.addBulk(slots.slice(i, i + 500).map((slot) => ({
        name: 'remint',
        data: { slot, server },
        opts: { jobId: remintJobId(server, slot, restartAt) },
      })))
    }
  }

  /**
   * A probe now (an event stream dropped, a client reported a dead token). At most one per server
   * per second. API-only instances queue it too; a worker instance runs it.
   */
  async probeNow (server: string, trigger: ProbeTrigger): Promise<void> {
    const second = Math.floor(Date.now() / 1000)
    await this.#o.queues.probes.add('probe', { server, trigger }, { jobId: `probe.${server}.now.${second}` })
  }

  /**
   * Creates the probe, sweep and admin-check schedulers when missing or changed, and removes stale
   * ones. Idempotent, and serialised across instances by a Redis lock: several replicas upserting
   * the same scheduler at the same moment have duplicated or lost schedulers (bullmq #2988, #3085,
   * #3262, #3381). With `waitMs`, waits that long for a lock another instance holds (a booting
   * instance must not keep the previous config's cadence until its next periodic check); returns
   * false when the lock stayed taken.
   */
  async ensureSchedulers (w: ScheduleWanted, waitMs = 0): Promise<boolean> {
    const { queues, schedulerLockKey } = this.#o
    const until = Date.now() + waitMs
    let owner = await this.#o.locks.acquire(schedulerLockKey, SCHEDULER_LOCK_TTL_MS)
    while (owner === undefined && Date.now() < until) {
      await new Promise((resolve) => setTimeout(resolve, 100))
      owner = await this.#o.locks.acquire(schedulerLockKey, SCHEDULER_LOCK_TTL_MS)
    }
    if (owner === undefined) return false
    try {
      const wanted = new Map<string, { every: number, name: string, data: Record<string, unknown> }>()
      for (const name of w.servers) {
        wanted.set(probeSchedulerId(name), { every: w.probeIntervalMs, name: 'probe', data: { server: name, trigger: 'schedule' } })
      }
      wanted.set(SWEEP_SCHEDULER_ID, { every: w.sweepIntervalMs, name: 'sweep', data: {} })
      if (w.adminChecks) wanted.set(ADMIN_SCHEDULER_ID, { every: ADMIN_CHECK_EVERY_MS, name: 'admin', data: {} })
      const existing = await queues.probes.getJobSchedulers(0, -1)
      for (const e of existing) {
        if (!wanted.has(e.key)) await queues.probes.removeJobScheduler(e.key)
      }
      for (const [id, s] of wanted) {
        const e = existing.find((x) => x.key === id)
        if (e !== undefined && Number(e.every) === s.every && e.name === s.name && e.template?.data?.server === s.data.server) continue
        await queues.probes.upsertJobScheduler(id, { every: s.every }, { name: s.name, data: s.data })
      }
      return true
    } finally {
      await this.#o.locks.release(schedulerLockKey, owner).catch(() => {})
    }
  }
}
