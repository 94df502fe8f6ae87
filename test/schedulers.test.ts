import t from 'tap'
import { Queue } from 'bullmq'
import { Redis } from 'ioredis'
import { buildTestApp, makeClient, REDIS_URL, serverFor, startSim, testConfig, uniquePrefix, until } from './helper.ts'

// What the schedulers say right after `ready`: the cadence each periodic job has and when it next runs.
async function schedulers (app: Awaited<ReturnType<typeof buildTestApp>>) {
  const now = Date.now()
  const all = await app.broker.queues.schedulers()
  const get = (key: string) => {
    const s = all.find((x) => x.key === key)
    return { every: Number(s?.every), inMs: (s?.next ?? Number.POSITIVE_INFINITY) - now }
  }
  return { sweep: get('sweep.rotations'), probe: get('probe.default'), keys: all.map((s) => s.key).sort() }
}

for (const lockHeld of [false, true]) {
  const how = lockHeld ? ' while a killed instance still holds the scheduler lock' : ''
  t.test(`restarted on the same Redis with new intervals${how}: the schedulers follow the new config at ready`, async (t) => {
    const sim = await startSim(t)
    const a = makeClient('sched')
    const prefix = uniquePrefix('sched')
    const day = 24 * 3600_000
    const first = await buildTestApp(t, testConfig(prefix, [serverFor(sim)], [a],
      { role: 'all', tokenLifetimeMs: 2 * day, tokenRenewAfterMs: day, probeIntervalMs: 30_000 }))
    await first.ready()
    const old = await schedulers(first)
    t.equal(old.sweep.every, 60_000, 'the first config sweeps every minute')
    t.equal(old.probe.every, 30_000)
    await first.close()
    if (lockHeld) {
      // An instance killed in the middle of its scheduler setup leaves the lock until it expires.
      const redis = new Redis(REDIS_URL)
      t.teardown(() => redis.disconnect())
      t.equal(await redis.set(first.broker.keys.schedulerLock, 'killed-instance', 'PX', 3000, 'NX'), 'OK')
    }
    const second = await buildTestApp(t, testConfig(prefix, [serverFor(sim)], [a],
      { role: 'all', tokenLifetimeMs: 10_000, tokenRenewAfterMs: 4000, probeIntervalMs: 2000 }))
    await second.ready()
    const now = await schedulers(second)
    t.equal(now.sweep.every, 1000, 'sweeps every second: a twentieth of the new 4 s renew-after')
    t.equal(now.probe.every, 2000, 'probes at the new 2 s interval')
    t.ok(now.sweep.inMs <= 1000, `the next sweep is due within a second, not a minute (${now.sweep.inMs} ms)`)
    t.ok(now.probe.inMs <= 2000, `the next probe is due within 2 s (${now.probe.inMs} ms)`)
    t.same(now.keys, ['check.admin-tokens', 'probe.default', 'sweep.rotations'], 'one scheduler each, none left over')
  })
}

t.test('a rolling upgrade: the sweep and admin schedulers an older version kept on `probes` move to `housekeeping`', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('sched')
  const prefix = uniquePrefix('sched')
  // What an instance of the older version set up: every periodic job on the `probes` queue.
  const old = new Queue('probes', { connection: new Redis(REDIS_URL), prefix: `${prefix}:q` })
  t.teardown(async () => {
    await old.close()
    await old.disconnect()
  })
  await old.upsertJobScheduler('sweep.rotations', { every: 60_000 }, { name: 'sweep', data: {} })
  await old.upsertJobScheduler('check.admin-tokens', { every: 3600_000 }, { name: 'admin', data: {} })
  const app = await buildTestApp(t, testConfig(prefix, [serverFor(sim)], [a], { role: 'all', probeIntervalMs: 30_000 }))
  await app.ready()
  const keys = async (q: Queue) => (await q.getJobSchedulers(0, -1)).map((s) => s.key).sort()
  t.same(await keys(app.broker.queues.probes), ['probe.default'], '`probes` carries probes only')
  t.same(await keys(app.broker.queues.housekeeping), ['check.admin-tokens', 'sweep.rotations'])
  // A sweep the older version still queues on `probes` (until it is gone) is run, not left to pile up.
  const job = await old.add('sweep', {}, { jobId: 'old-sweep' })
  t.ok(await until(10_000, async () => await job.getState() === 'completed'), 'the sweep found on `probes` ran')
  t.same((await old.getJob('old-sweep'))?.returnvalue, { due: 0 })
})
