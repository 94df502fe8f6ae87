import t from 'tap'
import { Redis } from 'ioredis'
import pino from 'pino'
import { createKeys } from '../src/broker/keys.ts'
import { RateLimiter } from '../src/broker/rate-limiter.ts'
import { RefusalTrail } from '../src/broker/refusal-trail.ts'
import { WindowCounters } from '../src/broker/window-counters.ts'
import type { AuditInput, AuditWriter } from '../src/broker/audit-writer.ts'
import { Metrics } from '../src/metrics.ts'
import { deleteKeys, REDIS_URL, uniquePrefix } from './helper.ts'

t.test('a meter counts its request once, whoever counts it; over the limit is a 429', async (t) => {
  const prefix = uniquePrefix('limiter')
  const redis = new Redis(REDIS_URL)
  t.teardown(async () => {
    await deleteKeys(prefix)
    redis.disconnect()
  })
  const keys = createKeys(prefix)
  const metrics = new Metrics({ defaultMetrics: false })
  const limited = async (): Promise<string[]> => (await metrics.rateLimited.get()).values.filter((v) => v.value > 0).map((v) => String(v.labels.limit))
  const limiter = new RateLimiter({ counters: new WindowCounters(redis), keys, clientDefault: { max: 2, timeWindowMs: 60_000 }, metrics })
  const c = { id: 'svc' }
  t.equal(limiter.client(c).key, `${prefix}:rl:client:svc`, 'the key comes from keys.ts')

  const first = limiter.meter(c)
  t.equal((await first.count()).current, 1)
  t.equal((await first.count()).current, 1, 'counted once however often asked')
  t.equal(first.pending, undefined)
  t.equal(Number(await redis.get(`${prefix}:rl:client:svc`)), 1)

  const second = limiter.meter(c)
  t.ok(second.pending !== undefined, 'not counted yet: the serve script may take it')
  t.match(second.settle(2, 30_000), { current: 2, limited: false })
  t.equal(second.pending, undefined)

  // (The settled count was made by the serve script, not here: Redis holds 1.)
  t.match(await limiter.meter(c).count(), { current: 2, limited: false })
  const fourth = limiter.meter(c)
  await t.rejects(fourth.count(), { code: 'RATE_LIMITED', message: 'Rate limit exceeded: 2 requests per 1 minute; retry later.', headers: { 'x-ratelimit-remaining': '0' } })
  t.same(await limited(), ['client'])
  await t.rejects(fourth.count(), { code: 'RATE_LIMITED' }, 'still over the limit, and not counted again')
  t.equal(Number(await redis.get(`${prefix}:rl:client:svc`)), 3)
})

t.test('a counter Redis cannot count fails open', async (t) => {
  const unavailable: string[] = []
  const logger = pino({}, { write: (line: string) => { unavailable.push(JSON.parse(line).limit) } })
  const limiter = new RateLimiter({
    counters: { hit: async () => { throw new Error('down') } } as unknown as WindowCounters,
    keys: createKeys('down'),
    clientDefault: { max: 1, timeWindowMs: 1000 },
    logger,
  })
  t.match(await limiter.hit(limiter.address('auth_failures', '192.0.2.1')), { counted: false, limited: false, max: 20 })
  t.match(await limiter.meter({ id: 'x' }).count(), { counted: false, limited: false })
  t.same(unavailable, ['auth_failures', 'client'])
})

t.test('the refusal trail writes the first refusal at once and the rest as one count', async (t) => {
  const written: AuditInput[] = []
  const audit = { refusal: async (e: AuditInput) => { written.push(e) } } as unknown as AuditWriter
  const trail = new RefusalTrail({ audit, logger: pino({ level: 'silent' }), maxSubjects: 2 })
  const ctx = { requestId: 'r', ip: '192.0.2.1' }
  const refused = (subject: string, reason = 'forbidden_server') => ({ reason, subject, client: subject, detail: { server: 'x' }, ctx })
  for (let i = 0; i < 5; i++) trail.record(refused('a'))
  trail.record(refused('a', 'missing_scope'))
  trail.record(refused('b'))
  trail.count(refused('b'))
  t.same(written.map((e) => [e.client, e.detail?.reason, e.detail?.count]), [['a', 'forbidden_server', 1], ['a', 'missing_scope', 1]],
    'at once: the first of each subject and reason (b waits: the two windows allowed are open)')
  await trail.flush()
  const rest = written.slice(2)
  t.match(rest.find((e) => e.client === 'a'), { action: 'auth.denied', detail: { reason: 'forbidden_server', server: 'x', count: 4, repeated: true } })
  t.match(rest.find((e) => e.detail?.overflow === true), { client: undefined, detail: { reason: 'forbidden_server', count: 2, repeated: true } },
    'past maxSubjects, refusals are counted per reason only')
  t.equal(rest.length, 2)
  await trail.flush()
  t.equal(written.length, 4, 'a closed window writes nothing more')
})
