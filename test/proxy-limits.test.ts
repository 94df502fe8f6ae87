import t from 'tap'
import { pino } from 'pino'
import { request, type Dispatcher } from 'undici'
import { WebSocket } from 'ws'
import { RateLimiter } from '../src/broker/rate-limiter.ts'
import { createKeys } from '../src/broker/keys.ts'
import { StreamLeases } from '../src/broker/stream-leases.ts'
import { WindowCounters } from '../src/broker/window-counters.ts'
import { createRedis } from '../src/redis.ts'
import { buildTestApp, deleteKeys, testConfig, uniquePrefix, until } from './helper.ts'
import { get, proxyClient, proxySetup } from './proxy-helper.ts'

/**
 * Per-key limits of the PMS proxy (docs/proxy.md, *Per-key limits*): requests per key and minute,
 * and long answers open at once per key, across instances, with leases that lapse when their
 * instance dies.
 */

const PART = '/library/parts/1/1700000000/file.mp4'

t.test('requests per key and minute: 429 with Retry-After beyond the limit; another key is not touched', async (t) => {
  const s = await proxySetup(t, [proxyClient('tautulli', { preset: 'read', limits: { requestsPerMinute: 5 } })])
  const a = await s.key('tautulli')
  const b = await s.key('tautulli')
  // The first request mints the client's token at PMS too: count from the second.
  t.equal((await s.raw('GET', '/library/sections', { 'x-plex-token': a.key })).status, 200)
  const before = s.sim.counters.requests
  for (let i = 0; i < 4; i++) t.equal((await s.raw('GET', '/library/sections', { 'x-plex-token': a.key })).status, 200)
  t.equal(s.sim.counters.requests, before + 4)
  const refused = await s.raw('GET', '/library/sections', { 'x-plex-token': a.key })
  t.equal(refused.status, 429)
  const body = JSON.parse(refused.body) as Record<string, unknown>
  t.match(body, { statusCode: 429, code: 'RATE_LIMITED', error: 'Too Many Requests', message: /5 requests per minute for this proxy key/, requestId: String })
  const retry = Number(refused.headers['retry-after'])
  t.ok(retry >= 1 && retry <= 60, `Retry-After ${retry}`)
  for (let i = 0; i < 20; i++) t.equal((await s.raw('GET', '/library/sections', { 'x-plex-token': a.key })).status, 429)
  t.equal(s.sim.counters.requests, before + 4, 'nothing beyond the limit reached PMS')
  t.equal((await s.raw('GET', '/library/sections', { 'x-plex-token': b.key })).status, 200, 'another key of the same client is served')

  const m = await s.app.proxy.metrics.requests.get()
  const throttled = m.values.find((v) => (v.labels as Record<string, unknown>).decision === 'throttled' && (v.labels as Record<string, unknown>).client === 'tautulli')
  t.equal(throttled?.value, 21, 'counted as throttled')
  const limited = (await s.app.broker.metrics.rateLimited.get()).values.find((v) => v.labels.limit === 'proxy_key_requests')
  t.equal(limited?.value, 21)
  t.ok(await until(2000, async () => (await s.app.broker.audit.page({ action: 'proxy.throttled' }, 100)).events.length === 1), 'one audit event for 21 refusals')
  const [event] = (await s.app.broker.audit.page({ action: 'proxy.throttled' }, 100)).events
  t.match(event, { client: 'tautulli', detail: { keyId: a.id, limit: 'proxy_key_requests', max: 5 } })
})

t.test('open streams per key: counted across instances, released when the answer ends, API calls unaffected', async (t) => {
  const player = (): ReturnType<typeof proxyClient> => proxyClient('player', { preset: 'stream', allow: [{ methods: ['GET'], path: '/library/sections' }, { methods: ['GET'], path: '/:/websockets/notifications' }], limits: { openStreams: 2 } })
  const s = await proxySetup(t, [player()], { sim: { partSizes: { 1: 256 * 1024 * 1024 } } })
  const other = await buildTestApp(t, testConfig(s.config.redisPrefix, s.config.servers, [player()], { brokerSecret: s.config.brokerSecret }), { defaultMetrics: false })
  await other.proxy.listen('127.0.0.1', { default: 0 })
  const otherBase = `http://127.0.0.1:${other.proxy.port('default')}`
  const { key } = await s.key('player')
  const headers = { 'x-plex-token': key }

  // Two downloads that are not read: they stay open.
  const open: Dispatcher.ResponseData[] = []
  for (let i = 0; i < 2; i++) {
    const r = await request(`${s.base}${PART}`, { headers })
    t.equal(r.statusCode, 200)
    open.push(r)
  }
  const third = await get(`${s.base}${PART}`, headers)
  t.equal(third.status, 429, 'a third one is refused')
  t.match(JSON.parse(third.body.toString()), { code: 'RATE_LIMITED', message: /2 at once for this proxy key/ })
  t.equal(third.headers['retry-after'], '5')
  t.equal((await get(`${otherBase}${PART}`, headers)).status, 429, 'on the other instance too')
  const ws = await new Promise<number>((resolve) => {
    const w = new WebSocket(`${otherBase.replace('http', 'ws')}/:/websockets/notifications`, { headers })
    w.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0))
    w.on('open', () => { w.close(); resolve(101) })
    w.on('error', () => {})
  })
  t.equal(ws, 429, 'a websocket counts as a stream')
  t.equal((await get(`${s.base}/library/sections`, headers)).status, 200, 'a short answer is not a stream')
  const another = await s.key('player')
  const r = await request(`${otherBase}${PART}`, { headers: { 'x-plex-token': another.key } })
  t.equal(r.statusCode, 200, 'another key has streams of its own')
  r.body.destroy()

  // One download ends: its place is free, here and on the other instance.
  open.pop()!.body.destroy()
  t.ok(await until(3000, async () => {
    const again = await request(`${otherBase}${PART}`, { headers })
    if (again.statusCode === 200) open.push(again)
    else await again.body.dump()
    return again.statusCode === 200
  }), 'a new one is served once one has ended')
  for (const o of open) o.body.destroy()
})

t.test('leases lapse when their instance dies, and are renewed while it lives', async (t) => {
  const prefix = uniquePrefix('lease')
  const keys = createKeys(prefix)
  const conns = [0, 1].map(() => createRedis(testConfig(prefix, [], []), 'ratelimit', pino({ level: 'silent' })))
  t.teardown(async () => {
    for (const c of conns) c.disconnect()
    await deleteKeys(prefix)
  })
  const limiterOn = (i: number): { limiter: RateLimiter, leases: StreamLeases } => {
    const leases = new StreamLeases(conns[i]!, { leaseMs: 600 })
    return { leases, limiter: new RateLimiter({ counters: new WindowCounters(conns[i]!), leases, keys, clientDefault: { max: 10, timeWindowMs: 60_000 } }) }
  }
  const dying = limiterOn(0)
  const living = limiterOn(1)
  const counter = dying.limiter.proxyKeyStreams('k1', 2)
  t.match(await dying.limiter.lease(counter), { limited: false, counted: true, current: 1 })
  t.match(await dying.limiter.lease(counter), { limited: false, current: 2 })
  t.match(await living.limiter.lease(counter), { limited: true, current: 2 }, 'full, whoever asks')
  // The instance dies: nothing is released, nothing renewed.
  dying.leases.stop()
  t.match(await living.limiter.lease(counter), { limited: true })
  await new Promise((resolve) => setTimeout(resolve, 700))
  const held = await living.limiter.lease(counter)
  t.match(held, { limited: false, current: 1 }, 'the dead instance\'s leases lapsed')
  // A living holder renews its lease: still counted long after the lease's lifetime.
  await new Promise((resolve) => setTimeout(resolve, 1500))
  t.match(await living.limiter.lease(counter), { limited: false, current: 2 }, 'the held lease still counts')
  t.match(await living.limiter.lease(counter), { limited: true })
  held.release()
  t.ok(await until(1000, async () => !(await living.limiter.lease(counter)).limited), 'a released lease frees its place at once')
  living.leases.stop()
  t.ok(await conns[1]!.pttl(keys.rateLimit('proxy_key_streams', 'k1')) <= 600, 'the set itself expires with its leases')
})

t.test('without configured limits a key is never throttled: 40 downloads at once and 300 requests pass', async (t) => {
  const s = await proxySetup(t, [proxyClient('family', { preset: 'stream', allow: [{ methods: ['GET'], path: '/library/sections' }] })])
  const { key } = await s.key('family')
  const downloads = await Promise.all(Array.from({ length: 40 }, async () => {
    const r = await request(`${s.base}${PART}`, { headers: { 'x-plex-token': key, range: 'bytes=0-1023' } })
    await r.body.arrayBuffer()
    return r.statusCode
  }))
  t.same([...new Set(downloads)], [206], '40 concurrent media answers, none refused')
  const statuses = new Set<number>()
  for (let i = 0; i < 300; i++) statuses.add((await s.raw('GET', '/library/sections', { 'x-plex-token': key })).status)
  t.same([...statuses], [200], '300 requests in a row, none refused')
  const limited = (await s.app.broker.metrics.rateLimited.get()).values.filter((v) => String(v.labels.limit).startsWith('proxy_key'))
  t.same(limited.map((v) => v.value).filter((v) => v > 0), [], 'nothing counted as throttled')
})
