import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { Redis } from 'ioredis'
import { buildTestApp, makeClient, REDIS_URL, serverFor, startSim, testConfig, uniquePrefix } from './helper.ts'

// Refused requests (403s, failed authentications) must not be able to flood the audit trail:
// they count against the client's limit, repeated ones are recorded once per window with a count,
// and they are kept apart from the security events, so no trim can cut a revocation for them.

interface Event { id: string, action: string, client: string | null, ip: string | null, detail: Record<string, unknown> }

async function denials (app: FastifyInstance, auth: Record<string, string>): Promise<Event[]> {
  return (await app.inject({ method: 'GET', url: '/v1/audit?action=auth.denied&limit=1000', headers: auth })).json().events
}

const total = (events: Event[]): number => events.reduce((n, e) => n + Number(e.detail.count ?? 1), 0)

async function inBatches<T> (n: number, size: number, one: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = []
  for (let i = 0; i < n; i += size) out.push(...await Promise.all(Array.from({ length: Math.min(size, n - i) }, async (_, j) => await one(i + j))))
  return out
}

t.test('1,500 refusals and a trim at AUDIT_MAX_EVENTS=1000 leave another client\'s revocation in the trail', async (t) => {
  const sim = await startSim(t)
  const flooder = makeClient('flooder', { servers: ['default'] })
  const victim = makeClient('victim')
  const ops = makeClient('ops', { scopes: ['token:revoke', 'audit:read'] })
  const prefix = uniquePrefix('refusalcap')
  const app = await buildTestApp(t, testConfig(prefix, [serverFor(sim)], [flooder, victim, ops], { auditMaxEvents: 1000 }))
  const held = (await app.inject({ method: 'POST', url: '/v1/tokens', headers: victim.auth, payload: { server: 'default' } })).json()
  const revoke = await app.inject({ method: 'POST', url: '/v1/revoke', headers: ops.auth, payload: { client: 'victim', reason: 'leaked' } })
  t.equal(revoke.json().revoked, 1)

  const statuses = await inBatches(1500, 50, async () =>
    (await app.inject({ method: 'POST', url: '/v1/tokens', headers: flooder.auth, payload: { server: 'elsewhere' } })).statusCode)
  t.same(new Set(statuses), new Set([403]), 'every request for a server outside the list is refused')
  // The sweep's trim, as the worker runs it.
  await app.broker.audit.trim(app.broker.config.auditRetentionMs, 1000)

  const revocations = (await app.inject({ method: 'GET', url: '/v1/audit?action=token.revoke', headers: ops.auth })).json().events as Event[]
  t.match(revocations, [{ client: 'victim', detail: { reason: 'leaked', actor: 'ops' } }], 'the revocation is still in GET /v1/audit')
  t.equal((revocations[0] as unknown as { tokenId: string }).tokenId, held.tokenId)
  // The rest of the window's refusals are written as one event when it closes (a minute; here, now).
  await app.broker.refusals.flush()
  const refused = (await denials(app, ops.auth)).filter((e) => e.client === 'flooder')
  t.equal(refused.length, 2, 'two events for 1,500 refusals')
  t.equal(total(refused), 1500, 'the refusals are in GET /v1/audit too, every one counted')
  t.match(refused.find((e) => e.detail.repeated === true)?.detail, { reason: 'forbidden_server', server: 'elsewhere', count: 1499, windowMs: 60_000 })

  const redis = new Redis(REDIS_URL)
  t.teardown(() => redis.disconnect())
  const security = await redis.xrange(`${prefix}:audit`, '-', '+')
  t.notOk(security.some(([, fields]) => fields.includes('auth.denied')), 'the security stream holds no refusals')

  // Pages walk all three streams (security, refusals, serves) without skipping or repeating.
  const all = (await app.inject({ method: 'GET', url: '/v1/audit?limit=1000', headers: ops.auth })).json().events as Event[]
  const seen: Event[] = []
  let cursor: string | null = null
  do {
    const page: { events: Event[], next: string | null } = (await app.inject({ method: 'GET', url: `/v1/audit?limit=2${cursor === null ? '' : `&cursor=${cursor}`}`, headers: ops.auth })).json()
    seen.push(...page.events)
    cursor = page.next
  } while (cursor !== null)
  t.same(seen.map((e) => `${e.id}/${e.action}`), all.map((e) => `${e.id}/${e.action}`), 'pages of 2 = the whole list')
  t.same(new Set(all.map((e) => e.action)), new Set(['token.issue', 'token.revoke', 'auth.denied']), 'all three kinds of event')
})

t.test('a flood of refusals gets 429s and a handful of audit events carrying the count', async (t) => {
  const sim = await startSim(t)
  const limit = { max: 50, timeWindowMs: 60_000 }
  const flooder = makeClient('flooder', { servers: ['default'], rateLimit: limit })
  const streamer = makeClient('streamer', { servers: ['default'], rateLimit: { max: 20, timeWindowMs: 60_000 } })
  const bystander = makeClient('bystander')
  const ops = makeClient('ops', { scopes: ['audit:read'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('refusalflood'), [serverFor(sim)], [flooder, streamer, bystander, ops]),
    { defaultMetrics: false })

  const issued = await inBatches(300, 25, async () =>
    await app.inject({ method: 'POST', url: '/v1/tokens', headers: flooder.auth, payload: { server: 'elsewhere' } }))
  const count = (rs: typeof issued, s: number): number => rs.filter((r) => r.statusCode === s).length
  t.equal(count(issued, 403), 50, 'refusals up to the client\'s limit are 403')
  t.equal(count(issued, 429), 250, 'every further one is 429')
  const limited = issued.find((r) => r.statusCode === 429)!
  t.match(limited.json(), { code: 'RATE_LIMITED', message: 'Rate limit exceeded: 50 requests per 1 minute; retry later.' })
  t.equal(limited.headers['x-ratelimit-limit'], '50')
  t.equal(limited.headers['x-ratelimit-remaining'], '0')

  const streams = await inBatches(60, 20, async () =>
    await app.inject({ method: 'GET', url: '/v1/tokens/stream?server=elsewhere', headers: streamer.auth }))
  t.equal(count(streams, 403), 20, 'the push channel refuses up to the limit')
  t.equal(count(streams, 429), 40, 'then 429s')

  const good = await app.inject({ method: 'POST', url: '/v1/tokens', headers: bystander.auth, payload: { server: 'default' } })
  t.equal(good.statusCode, 200, 'another client is not held back by the flood')

  await app.broker.refusals.flush()
  const events = await denials(app, ops.auth)
  t.equal(total(events.filter((e) => e.client === 'flooder')) + total(events.filter((e) => e.client === 'streamer')), 70, 'every 403 is counted in the trail; no 429 is')
  for (const who of ['flooder', 'streamer']) {
    const mine = events.filter((e) => e.client === who)
    t.equal(mine.length, 2, `${who}: the first refusal, then one event with the count of the rest`)
    t.same(mine.map((e) => e.detail.count).sort((a, b) => Number(a) - Number(b)), [1, who === 'flooder' ? 49 : 19])
  }
  const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.match(metrics, /ptb_rate_limited_total\{limit="client"\} 290\n/, 'the 429s are counted in metrics')
  t.match(metrics, /ptb_auth_failures_total\{reason="forbidden_server"\} 70\n/, 'and the refusals')
})

t.test('failed authentications from many addresses write a few events per address, not one per failure', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('a')
  const ops = makeClient('ops', { scopes: ['audit:read'] })
  const prefix = uniquePrefix('authflood')
  const app = await buildTestApp(t, testConfig(prefix, [serverFor(sim)], [a, ops]), { defaultMetrics: false })
  const addresses = Array.from({ length: 40 }, (_, i) => `203.0.113.${i + 1}`)
  await inBatches(addresses.length * 30, 50, async (i) =>
    await app.inject({ method: 'POST', url: '/v1/tokens', remoteAddress: addresses[i % addresses.length], headers: { authorization: `Bearer guess-${i}` }, payload: { server: 'default' } }))
  // A valid secret from one of those addresses is still served.
  const good = await app.inject({ method: 'POST', url: '/v1/tokens', remoteAddress: addresses[0], headers: a.auth, payload: { server: 'default' } })
  t.equal(good.statusCode, 200)

  const redis = new Redis(REDIS_URL)
  t.teardown(() => redis.disconnect())
  t.equal(await redis.xlen(`${prefix}:audit`), 1, 'the security stream holds only the mint')
  await app.broker.refusals.flush()
  const events = await denials(app, ops.auth)
  t.equal(total(events), 1200, 'every failure is counted in the trail')
  for (const ip of addresses) {
    const mine = events.filter((e) => e.ip === ip)
    if (mine.length > 3 || total(mine) !== 30) t.fail(`${ip}: ${mine.length} events counting ${total(mine)} failures`)
  }
  t.ok(events.length <= 3 * addresses.length, `${events.length} events for 1,200 failures from ${addresses.length} addresses`)
})
