import { Queue, type JobsOptions } from 'bullmq'
import type { RedisClient } from '../redis.ts'
import type { RotateReason } from './producer.ts'

/**
 * Queue and job names. BullMQ ids must not contain `:` and must not be all digits
 * because BullMQ reserves them; server names and client ids are `[a-z0-9_-]`, so `.` separates parts safely.
 */
export const TOKENS_QUEUE = 'tokens'
export const PROBES_QUEUE = 'probes'

export type TokenJob =
  | { name: 'rotate', data: { tokenId: string, reason: RotateReason } }
  /** `slot`: a client's PMS token, or a client's token for one source (broker/tokens.ts slotKey). */
  | { name: 'remint', data: { slot: string, server: string } }

export type ProbeJob =
  | { name: 'probe', data: { server: string, trigger: 'schedule' | 'eventsource' | 'rejection' | 'manual' } }
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
 * BullMQ really delays the job by this much (Vault once computed a backoff and never slept on it:
 * hashicorp/vault #25712, #26367).
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

/** Probes are periodic: a failed probe is simply the next period's job. */
export const PROBE_JOB_DEFAULTS: JobsOptions = {
  attempts: 1,
  removeOnComplete: true,
  removeOnFail: true,
}

export interface Queues {
  tokens: Queue
  probes: Queue
  close: () => Promise<void>
}

/** Both queues under `<REDIS_PREFIX>:q` (BullMQ's own prefix; ioredis keyPrefix is never used). */
export function createQueues (connection: RedisClient, prefix: string): Queues {
  const tokens = new Queue(TOKENS_QUEUE, { connection, prefix, defaultJobOptions: TOKEN_JOB_DEFAULTS })
  const probes = new Queue(PROBES_QUEUE, { connection, prefix, defaultJobOptions: PROBE_JOB_DEFAULTS })
  // Without a listener, a Redis outage would surface as an unhandled 'error' event.
  tokens.on('error', () => {})
  probes.on('error', () => {})
  return {
    tokens,
    probes,
    close: async () => {
      await Promise.allSettled([tokens.close(), probes.close()])
    },
  }
}
