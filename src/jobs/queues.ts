import { type ConnectionOptions, Queue, type JobSchedulerJson, type JobsOptions } from 'bullmq'

/**
 * Why a token is replaced before its time: the sweep found it due (`scheduled`), PMS restarted
 * (`restart`, a re-mint), PMS rejected it (`rejected`), or ops asked (`manual`). Rotation jobs
 * carry all but `restart` (a restart re-mint is a job of its own).
 */
export type RotationReason = 'scheduled' | 'restart' | 'rejected' | 'manual'

/** A rotation job's reason: a restart re-mints instead (`remint`). */
export type RotateReason = Exclude<RotationReason, 'restart'>

/**
 * Queue and job names, each queue named by what it carries. BullMQ ids must not contain `:` and
 * must not be all digits because BullMQ reserves them; server names and client ids are
 * `[a-z0-9_-]`, so `.` separates parts safely.
 */
/** Token jobs: `rotate` and `remint`, retried with backoff. */
export const TOKENS_QUEUE = 'tokens'
/** `probe` jobs, periodic per server and on demand. */
export const PROBES_QUEUE = 'probes'
/**
 * The periodic `sweep` and `admin` jobs. Before this queue existed they rode on `probes`: an
 * instance of that version still running in a rolling upgrade keeps their schedulers there, so
 * the scheduler setup removes every non-probe scheduler from `probes` (producer.ts) and the worker
 * still runs a sweep or admin job it finds on `probes` (docs/architecture.md, *Jobs*).
 */
export const HOUSEKEEPING_QUEUE = 'housekeeping'

export type TokenJob =
  | { name: 'rotate', data: { tokenId: string, reason: RotateReason } }
  /** `slot`: a client's PMS token, or a client's token for one source (broker/tokens.ts slotKey). */
  | { name: 'remint', data: { slot: string, server: string } }

export interface ProbeJob { name: 'probe', data: { server: string, trigger: 'schedule' | 'eventsource' | 'rejection' | 'manual' } }

export type HousekeepingJob =
  | { name: 'sweep', data: Record<string, never> }
  | { name: 'admin', data: Record<string, never> }

export const rotateJobId = (tokenId: string): string => `rotate.${tokenId}`
export const remintJobId = (server: string, slot: string, restartAt: number): string => `remint.${server}.${slot}.${restartAt}`
export const probeSchedulerId = (server: string): string => `probe.${server}`
export const SWEEP_SCHEDULER_ID = 'sweep.rotations'
export const ADMIN_SCHEDULER_ID = 'check.admin-tokens'
/** Admin tokens are checked at boot and every hour. */
export const ADMIN_CHECK_EVERY_MS = 3600_000

/** Capped exponential backoff: 1 s, 2 s, 4 s … up to this, each with jitter (see `backoffDelay`). */
export const BACKOFF_CAP_MS = 5 * 60_000

/**
 * The retry wait for a failed token job: exponential from 1 s, capped at 5 min, with "equal
 * jitter" (half fixed, half random) so a fleet of failing jobs does not retry in lockstep.
 * BullMQ applies it as the job's delay (the worker's `backoffStrategy`), so the wait is real and
 * not merely computed: a retry loop that computes a backoff it never sleeps on hammers PMS.
 */
export function backoffDelay (attemptsMade: number, random: () => number = Math.random): number {
  const base = Math.min(BACKOFF_CAP_MS, 1000 * 2 ** Math.max(0, attemptsMade - 1))
  return Math.round(base / 2 + (base / 2) * random())
}

/** Token jobs: retried with our backoff; finished and failed jobs are removed so the same id can be queued again. */
export const TOKEN_JOB_DEFAULTS: JobsOptions = {
  attempts: 10,
  backoff: { type: 'capped' },
  removeOnComplete: true,
  removeOnFail: true,
}

/** Probes, sweeps and admin checks are periodic: a failed one is simply the next period's job. */
export const PROBE_JOB_DEFAULTS: JobsOptions = {
  attempts: 1,
  removeOnComplete: true,
  removeOnFail: true,
}

export interface Queues {
  tokens: Queue
  probes: Queue
  housekeeping: Queue
  /** The job schedulers of every queue (ops and tests). */
  schedulers: () => Promise<JobSchedulerJson[]>
  close: () => Promise<void>
}

/** The queues under `<REDIS_PREFIX>:q` (BullMQ's own prefix; ioredis keyPrefix is never used). */
export function createQueues (connection: ConnectionOptions, prefix: string): Queues {
  const tokens = new Queue(TOKENS_QUEUE, { connection, prefix, defaultJobOptions: TOKEN_JOB_DEFAULTS })
  const probes = new Queue(PROBES_QUEUE, { connection, prefix, defaultJobOptions: PROBE_JOB_DEFAULTS })
  const housekeeping = new Queue(HOUSEKEEPING_QUEUE, { connection, prefix, defaultJobOptions: PROBE_JOB_DEFAULTS })
  const all = [tokens, probes, housekeeping]
  // Without a listener, a Redis outage would surface as an unhandled 'error' event.
  for (const q of all) q.on('error', () => {})
  return {
    tokens,
    probes,
    housekeeping,
    schedulers: async () => (await Promise.all(all.map(async (q) => await q.getJobSchedulers(0, -1)))).flat(),
    close: async () => {
      await Promise.allSettled(all.map(async (q) => { await q.close() }))
    },
  }
}
