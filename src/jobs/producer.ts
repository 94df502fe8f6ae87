import type { Queue } from 'bullmq'
import {
  ADMIN_CHECK_EVERY_MS, ADMIN_SCHEDULER_ID, probeSchedulerId, type Queues, remintJobId, type RotateReason, rotateJobId, SWEEP_SCHEDULER_ID,
} from './queues.ts'

export type ProbeTrigger = 'eventsource' | 'rejection' | 'manual'
export type { RotateReason }

export interface ScheduleWanted {
  servers: Iterable<string>
  probeIntervalMs: number
  sweepIntervalMs: number
}

/**
 * Every job the broker queues is queued here: rotations (the sweep's and ops'), re-mints after a
 * PMS restart, probes on demand, and the schedulers of the periodic probes, sweep and admin check.
 * The runner (worker/runner.ts) only consumes. Job ids carry token ids, server names and slots, never
 * tokens; the same id queued twice is one job (BullMQ ignores the duplicate while it exists).
 */
export class JobProducer {
  readonly #queues: Queues

  constructor (queues: Queues) {
    this.#queues = queues
  }

  /** Rotation jobs, one per token, in batches of 500. */
  async rotate (items: Array<{ tokenId: string, reason: RotateReason }>): Promise<void> {
    for (let i = 0; i < items.length; i += 500) {
      await this.#queues.tokens.addBulk(items.slice(i, i + 500).map((d) => ({
        name: 'rotate',
        data: { tokenId: d.tokenId, reason: d.reason },
        opts: { jobId: rotateJobId(d.tokenId) },
      })))
    }
  }

  /** Fresh tokens for the active slots of a restarted server, as jobs: bounded concurrency, retried. */
  async remint (server: string, slots: string[], restartAt: number): Promise<void> {
    for (let i = 0; i < slots.length; i += 500) {
      await this.#queues.tokens.addBulk(slots.slice(i, i + 500).map((slot) => ({
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
    await this.#queues.probes.add('probe', { server, trigger }, { jobId: `probe.${server}.now.${second}` })
  }

  /**
   * Creates the probe, sweep and admin-check schedulers when missing or changed, and removes stale
   * ones: each queue holds only the schedulers of what it carries, so the sweep and admin
   * schedulers an older version kept on `probes` are removed here (queues.ts HOUSEKEEPING_QUEUE).
   * Idempotent. Call it with the scheduler lock held (worker/runner.ts): several replicas
   * upserting the same scheduler at the same moment can end with it duplicated or lost, a race
   * in BullMQ's scheduler bookkeeping that serialising the setup avoids.
   */
  async ensureSchedulers (w: ScheduleWanted): Promise<void> {
    const probes = new Map<string, Scheduled>()
    for (const name of w.servers) {
      probes.set(probeSchedulerId(name), { every: w.probeIntervalMs, name: 'probe', data: { server: name, trigger: 'schedule' } })
    }
    const housekeeping = new Map<string, Scheduled>([
      [SWEEP_SCHEDULER_ID, { every: w.sweepIntervalMs, name: 'sweep', data: {} }],
      [ADMIN_SCHEDULER_ID, { every: ADMIN_CHECK_EVERY_MS, name: 'admin', data: {} }],
    ])
    await schedule(this.#queues.probes, probes)
    await schedule(this.#queues.housekeeping, housekeeping)
  }
}

interface Scheduled { every: number, name: string, data: Record<string, unknown> }

/** Makes `queue`'s schedulers exactly `wanted`: removes the others, upserts the missing and changed. */
async function schedule (queue: Queue, wanted: Map<string, Scheduled>): Promise<void> {
  const existing = await queue.getJobSchedulers(0, -1)
  for (const e of existing) {
    if (!wanted.has(e.key)) await queue.removeJobScheduler(e.key)
  }
  for (const [id, s] of wanted) {
    const e = existing.find((x) => x.key === id)
    if (e !== undefined && Number(e.every) === s.every && e.name === s.name && e.template?.data?.server === s.data.server) continue
    await queue.upsertJobScheduler(id, { every: s.every }, { name: s.name, data: s.data })
  }
}
