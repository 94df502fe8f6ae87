import t from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { buildTestApp, makeClient, serverFor, startSim, testConfig, uniquePrefix } from './helper.ts'
import { Redis } from 'ioredis'
import { PrivateRedis } from './private-redis.ts'

t.test('Redis stalled: 503 STORE_UNAVAILABLE within 2 s, not ready, then recovery by itself', async (t) => {
  const redis = await PrivateRedis.start(t)
  const sim = await startSim(t)
  const a = makeClient('a')
  const app = await buildTestApp(t, testConfig(uniquePrefix('stall'), [serverFor(sim)], [a], { redisUrl: redis.url }))
  const ok = await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })
  t.equal(ok.statusCode, 200)
  t.equal((await app.inject('/readyz')).statusCode, 200)

  redis.pause()
  const started = Date.now()
  const stalled = await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })
  const took = Date.now() - started
  t.equal(stalled.statusCode, 503)
  t.equal(stalled.json().code, 'STORE_UNAVAILABLE')
  t.ok(took < 2000, `answered in ${took} ms`)
  t.ok(Number(stalled.headers['retry-after']) >= 1)
  t.notOk(stalled.body.includes(ok.json().token), 'no token in the error')
  const ready = await app.inject('/readyz')
  t.equal(ready.statusCode, 503, 'not ready while Redis stalls')
  t.equal((await app.inject('/healthz')).statusCode, 200, 'but alive')

  redis.resume()
  let healed = 0
  for (let i = 0; i < 40 && healed !== 200; i++) {
    await sleep(100)
    healed = (await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })).statusCode
  }
  t.equal(healed, 200, 'recovers without a restart')
  t.equal(sim.counters.mints, 1, 'and serves the cached token, no extra mint')
})

t.test('Redis stalled: a request that queues behind another stalled request still answers within its own deadline', async (t) => {
  const redis = await PrivateRedis.start(t)
  const sim = await startSim(t)
  const a = makeClient('a')
  const app = await buildTestApp(t, testConfig(uniquePrefix('queued'), [serverFor(sim)], [a], { redisUrl: redis.url }))
  t.equal((await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })).statusCode, 200)
  redis.pause()
  t.teardown(() => { redis.resume() })
  // Requests 400 ms apart: each one's Redis call waits behind the batch still in flight on the
  // shared connection. Without a deadline covering that wait, they took up to 2 s (1 s + 1 s).
  const answers = await Promise.all([0, 400, 800].map(async (delay) => {
    await sleep(delay)
    const started = Date.now()
    const r = await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })
    return { status: r.statusCode, code: r.json().code, ms: Date.now() - started }
  }))
  for (const r of answers) {
    t.equal(r.status, 503)
    t.equal(r.code, 'STORE_UNAVAILABLE')
    t.ok(r.ms < 1700, `answered in ${r.ms} ms (deadline 1 s)`)
  }
})

t.test('Redis down: 503 fast, recovery when it comes back (empty: the broker re-mints on demand)', async (t) => {
  const redis = await PrivateRedis.start(t)
  const sim = await startSim(t)
  const a = makeClient('a')
  const app = await buildTestApp(t, testConfig(uniquePrefix('down'), [serverFor(sim)], [a], { redisUrl: redis.url }))
  t.equal((await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })).statusCode, 200)
  await redis.stop()
  const started = Date.now()
  const down = await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })
  t.equal(down.statusCode, 503)
  t.equal(down.json().code, 'STORE_UNAVAILABLE')
  t.ok(Date.now() - started < 2000)
  await redis.start()
  let status = 0
  for (let i = 0; i < 60 && status !== 200; i++) {
    await sleep(100)
    status = (await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })).statusCode
  }
  t.equal(status, 200)
  t.equal(sim.counters.mints, 2, 'the empty Redis lost the token, so one new mint')
})

t.test('Redis forgot the scripts (SCRIPT FLUSH): the next call loads them again, then one EVALSHA per hit', async (t) => {
  const redis = await PrivateRedis.start(t)
  const sim = await startSim(t)
  const a = makeClient('a')
  const app = await buildTestApp(t, testConfig(uniquePrefix('noscript'), [serverFor(sim)], [a], { redisUrl: redis.url }))
  const issue = async () => await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })
  const first = await issue()
  t.equal(first.statusCode, 200)
  const admin = new Redis(redis.url)
  t.teardown(() => admin.disconnect())
  await admin.script('FLUSH')
  const calls = async (cmd: string): Promise<number> => {
    const m = new RegExp(`^cmdstat_${cmd}:calls=(\\d+)`, 'm').exec(await admin.info('commandstats'))
    return Number(m?.[1] ?? 0)
  }
  const [eval0, evalsha0] = [await calls('eval'), await calls('evalsha')]
  for (let i = 0; i < 3; i++) {
    const r = await issue()
    t.equal(r.statusCode, 200)
    t.equal(r.json().tokenId, first.json().tokenId, 'the cached token, served')
  }
  t.equal(await calls('eval') - eval0, 1, 'the script was sent whole once')
  t.equal(await calls('evalsha') - evalsha0, 3, 'every hit tried EVALSHA first (the first one answered NOSCRIPT)')
  t.equal(sim.counters.mints, 1, 'no mint')
})
