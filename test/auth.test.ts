import t from 'tap'
import type { InjectOptions } from 'fastify'
import { Redis } from 'ioredis'
import { createKeys } from '../src/broker/keys.ts'
import { describeWindow, RateLimiter } from '../src/broker/rate-limiter.ts'
import type { WindowCounters } from '../src/broker/window-counters.ts'
import { buildTestApp, makeClient, REDIS_URL, serverFor, startSim, testConfig, uniquePrefix } from './helper.ts'

const ERROR_KEYS = ['code', 'error', 'message', 'requestId', 'statusCode']
const OPS_SCOPES = ['token:revoke', 'audit:read', 'server:read', 'server:rotate'] as const

/** The value of one sample in a Prometheus exposition, 0 when absent. */
function sample (text: string, name: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name} `))
  return line === undefined ? 0 : Number(line.split(' ')[1])
}

t.test('one address, many services: a flood of bad secrets never stops valid clients', async (t) => {
  const sim = await startSim(t)
  const clients = Array.from({ length: 10 }, (_, i) => makeClient(`svc${i}`))
  const ops = makeClient('ops', { scopes: [...OPS_SCOPES] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('sharedip'), [serverFor(sim)], [...clients, ops]), { defaultMetrics: false })
  const shared = '10.20.30.40'
  const issue = (headers: Record<string, string>) =>
    app.inject({ method: 'POST', url: '/v1/tokens', headers, payload: { server: 'default' }, remoteAddress: shared })

  // Each service holds a token already (a cache hit is the common case).
  for (const c of clients) t.equal((await issue(c.auth)).statusCode, 200)
  // The sender keeps 25 bad requests in flight at a time; meanwhile each service keeps asking,
  // and a few times more after the flood.
  let flooding = true
  const bad = (async () => {
    const answers = []
    for (let i = 0; i < 500; i += 25) {
      answers.push(...await Promise.all(Array.from({ length: 25 }, (_, j) => issue({ authorization: `Bearer wrong-${i + j}` }))))
    }
    return answers
  })().finally(() => { flooding = false })
  let duringFlood = 0
  const good = Promise.all(clients.map(async (c) => {
    const statuses: number[] = []
    let after = 0
    while (flooding || after < 5) {
      statuses.push((await issue(c.auth)).statusCode)
      if (flooding) duringFlood++
      else after++
    }
    return statuses
  }))
  const [badAnswers, goodStatuses] = await Promise.all([bad, good])

  const all = goodStatuses.flat()
  t.ok(duringFlood >= 50, `the services got ${duringFlood} answers during the flood`)
  t.same(new Set(all), new Set([200]), 'every request with a valid secret got 200, during and after the flood')
  const count = (s: number) => badAnswers.filter((r) => r.statusCode === s).length
  t.equal(count(401), 20, 'the first 20 failures are 401')
  t.equal(count(429), 480, 'every further failure is 429')
  const limited = badAnswers.find((r) => r.statusCode === 429)!
  t.same(Object.keys(limited.json()).sort(), ERROR_KEYS)
  t.equal(limited.json().code, 'RATE_LIMITED')
  t.ok(Number(limited.headers['retry-after']) >= 1 && Number(limited.headers['retry-after']) <= 60, 'Retry-After within the window')

  // Still throttled for bad secrets, still open for good ones.
  const again = await issue({ authorization: 'Bearer still-wrong' })
  t.equal(again.statusCode, 429)
  const missing = await issue({})
  t.equal(missing.statusCode, 429, 'a missing credential counts as a failure too')
  t.equal((await issue(clients[0]!.auth)).statusCode, 200)
  const elsewhere = await app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: 'Bearer wrong' }, payload: { server: 'default' }, remoteAddress: '10.20.30.41' })
  t.equal(elsewhere.statusCode, 401, 'another address has its own allowance')

  const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.equal(sample(metrics, 'ptb_auth_failures_total{reason="unknown_secret"}'), 502, 'every failure counted')
  t.equal(sample(metrics, 'ptb_auth_failures_total{reason="missing_credential"}'), 1)
  t.equal(sample(metrics, 'ptb_rate_limited_total{limit="auth_failures"}'), 482, 'every 429 counted')
  t.equal(sample(metrics, 'ptb_rate_limited_total{limit="client"}'), 0, 'no client was limited')

  // Audit: the first failure at once, one event when the address became throttled, and the count
  // of all the others in one event when the window closes (here: the flush at shutdown).
  await app.broker.refusals.flush()
  const page = (await app.inject({ method: 'GET', url: '/v1/audit?action=auth.denied&limit=1000', headers: ops.auth })).json()
  const events = (page.events as Array<{ ip: string, detail: Record<string, unknown> }>).filter((e) => e.ip === shared)
  t.equal(events.length, 4, 'four events for 502 failed requests')
  const throttled = events.filter((e) => e.detail.throttled === true)
  t.equal(throttled.length, 1, 'one event says the address is throttled')
  t.match(throttled[0]!.detail, { reason: 'unknown_secret', throttled: true, limit: 20, windowMs: 60_000, retryAfter: Number })
  const unknown = events.filter((e) => e.detail.reason === 'unknown_secret' && e.detail.throttled === undefined)
  t.same(unknown.map((e) => e.detail.count).sort(), [1, 499], 'the first failure at once, then the count of the others but the throttle event')
  t.match(unknown.find((e) => e.detail.count === 499)?.detail, { repeated: true, windowMs: 60_000, since: String })
  t.match(events.filter((e) => e.detail.reason === 'missing_credential'), [{ detail: { count: 1, repeated: true } }], 'the throttled missing credential, counted')
  t.equal(events.reduce((n, e) => n + Number(e.detail.count ?? 1), 0), 502, 'the counts add up to the failed requests')
  const after = (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.equal(sample(after, 'ptb_audit_events_total{action="auth.denied"}'), 5, 'the audit metric agrees (3 + 1 + the other address)')
  t.notOk(app.logs.text.includes('throttle unavailable'), 'every failure was counted in Redis')
})

t.test('failures on any route count against one allowance per address; valid secrets still pass', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('victim')
  const app = await buildTestApp(t, testConfig(uniquePrefix('authwindow'), [serverFor(sim)], [a]), { defaultMetrics: false })
  const statuses: number[] = []
  for (let i = 0; i < 23; i++) {
    statuses.push((await app.inject({ method: 'GET', url: '/v1/servers', headers: { authorization: `Bearer guess-${i}` } })).statusCode)
  }
  t.same(statuses, [...Array(20).fill(401), 429, 429, 429], 'failures on any route share the allowance')
  const good = await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })
  t.equal(good.statusCode, 200, 'a valid secret from a throttled address is served')
})

t.test('authentication and scope run before the body or query is looked at, on every authenticated route', async (t) => {
  const sim = await startSim(t)
  const issuer = makeClient('issuer', { scopes: ['token:issue'] })
  const sourcer = makeClient('sourcer', { scopes: ['source:connect'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('authorder'), [serverFor(sim)], [issuer, sourcer]), { defaultMetrics: false })
  const junk = { server: 5, extra: [true], nested: { a: 1 } }
  const routes: Array<{ method: 'GET' | 'POST', url: string, body?: unknown, scopeless: typeof issuer }> = [
    { method: 'POST', url: '/v1/tokens', body: junk, scopeless: sourcer },
    { method: 'GET', url: `/v1/tokens/${'x'.repeat(100)}`, scopeless: sourcer },
    { method: 'GET', url: '/v1/tokens/stream?server=..%2F&bogus=1', scopeless: sourcer },
    { method: 'POST', url: '/v1/sources/connection', body: junk, scopeless: issuer },
    { method: 'POST', url: '/v1/revoke', body: junk, scopeless: issuer },
    { method: 'GET', url: '/v1/audit?limit=abc&bogus=1', scopeless: issuer },
    { method: 'GET', url: '/v1/audit/export?since=yesterday&bogus=1', scopeless: issuer },
    { method: 'POST', url: '/v1/audit/trace', body: junk, scopeless: issuer },
    { method: 'GET', url: '/v1/servers', scopeless: issuer },
    { method: 'POST', url: '/v1/servers/..%2F..%2Fetc/rotate', body: junk, scopeless: issuer },
  ]
  let address = 0
  for (const r of routes) {
    const bodies: Array<[string, InjectOptions['payload'] | undefined, Record<string, string>]> = r.body === undefined
      ? [['no body', undefined, {}]]
      : [['invalid body', JSON.stringify(r.body), { 'content-type': 'application/json' }], ['malformed JSON', '{"server":', { 'content-type': 'application/json' }]]
    for (const [what, payload, headers] of bodies) {
      const name = `${r.method} ${r.url.slice(0, 40)} (${what})`
      // A fresh address for each anonymous call, so the failed-authentication throttle stays out of it.
      const anon = await app.inject({ method: r.method, url: r.url, headers, payload, remoteAddress: `10.50.0.${++address}` })
      t.equal(anon.statusCode, 401, `${name}: no credential → 401`)
      t.equal(anon.json().code, 'UNAUTHENTICATED')
      t.same(Object.keys(anon.json()).sort(), ERROR_KEYS)
      t.notMatch(anon.body, /must|should|body|querystring|params/i, `${name}: nothing about the schema`)
      const scoped = await app.inject({ method: r.method, url: r.url, headers: { ...headers, ...r.scopeless.auth }, payload })
      t.equal(scoped.statusCode, 403, `${name}: without the scope → 403`)
      t.equal(scoped.json().code, 'FORBIDDEN')
      t.notMatch(scoped.body, /must|should|body|querystring|params/i, `${name}: nothing about the schema`)
    }
  }
  // With the right credential the same invalid input is a 400 that does describe the problem.
  const ok = await app.inject({ method: 'POST', url: '/v1/tokens', headers: issuer.auth, payload: junk })
  t.equal(ok.statusCode, 400)
  t.equal(ok.json().code, 'BAD_REQUEST')
})

t.test('bodies are not coerced: numbers, booleans and arrays where strings are expected are 400', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('strict', { scopes: ['token:issue', 'source:connect'], sources: '*' })
  const ops = makeClient('ops', { scopes: [...OPS_SCOPES] })
  // A server named "5": with coercion, {"server": 5} would have asked for it.
  const app = await buildTestApp(t, testConfig(uniquePrefix('coerce'), [serverFor(sim), serverFor(sim, '5'), serverFor(sim, 'true')], [a, ops]), { defaultMetrics: false })
  const cases: Array<[string, string, typeof a, unknown]> = [
    ['number for server', '/v1/tokens', a, { server: 5 }],
    ['boolean for server', '/v1/tokens', a, { server: true }],
    ['array for server', '/v1/tokens', a, { server: ['default'] }],
    ['null for server', '/v1/tokens', a, { server: null }],
    ['number for rejectedTokenId', '/v1/tokens', a, { server: 'default', rejectedTokenId: 1 }],
    ['number for source', '/v1/sources/connection', a, { server: 'default', source: 5 }],
    ['array for source', '/v1/sources/connection', a, { server: 'default', source: ['server://abc'] }],
    ['number for revoke reason', '/v1/revoke', ops, { client: 'strict', reason: 5 }],
    ['string "true" for all', '/v1/revoke', ops, { all: 'true', reason: 'test' }],
    ['number for client', '/v1/revoke', ops, { client: 5, reason: 'test' }],
    ['number for trace token', '/v1/audit/trace', ops, { token: 123456 }],
    ['array for trace token', '/v1/audit/trace', ops, { token: ['abc'] }],
  ]
  for (const [name, url, c, body] of cases) {
    const r = await app.inject({ method: 'POST', url, headers: c.auth, payload: body as Record<string, unknown> })
    t.equal(r.statusCode, 400, `${name}: 400`)
    t.equal(r.json().code, 'BAD_REQUEST', `${name}: code`)
    t.same(Object.keys(r.json()).sort(), ERROR_KEYS, `${name}: error shape`)
    t.match(r.json().message, /^Invalid body: /, `${name}: says what is wrong`)
  }
  t.equal(sim.counters.mints, 0, 'no token was minted for any of them')
  const revoked = await app.inject({ method: 'GET', url: '/v1/audit?action=token.revoke', headers: ops.auth })
  t.same(revoked.json().events, [], 'nothing was revoked')

  // Querystrings are strings on the wire: numbers there still work.
  await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })
  await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: '5' } })
  const page = await app.inject({ method: 'GET', url: '/v1/audit?limit=1', headers: ops.auth })
  t.equal(page.statusCode, 200, 'limit=1 is the integer 1')
  t.equal(page.json().events.length, 1)
  t.type(page.json().next, 'string')
  const bad = await app.inject({ method: 'GET', url: '/v1/audit?limit=abc', headers: ops.auth })
  t.equal(bad.statusCode, 400)
  t.match(bad.json(), { code: 'BAD_REQUEST', message: /^Invalid querystring: / })
  t.same(Object.keys(bad.json()).sort(), ERROR_KEYS)
})

t.test('per-client 429 names the configured window; rate-limit keys carry no "undefined"', async (t) => {
  const sim = await startSim(t)
  const busy = makeClient('busy', { rateLimit: { max: 600, timeWindowMs: 60_000 } })
  const brisk = makeClient('brisk', { rateLimit: { max: 2, timeWindowMs: 30_000 } })
  const prefix = uniquePrefix('rlwindow')
  const app = await buildTestApp(t, testConfig(prefix, [serverFor(sim)], [busy, brisk]), { defaultMetrics: false })
  const call = (c: typeof busy) => app.inject({ method: 'POST', url: '/v1/tokens', headers: c.auth, payload: { server: 'default' } })
  for (let i = 0; i < 600; i += 50) {
    const batch = await Promise.all(Array.from({ length: 50 }, () => call(busy)))
    if (batch.some((r) => r.statusCode !== 200)) t.fail(`request ${i}: ${batch.find((r) => r.statusCode !== 200)!.body}`)
  }
  const limited = await call(busy)
  t.equal(limited.statusCode, 429)
  t.same(Object.keys(limited.json()).sort(), ERROR_KEYS)
  t.equal(limited.json().code, 'RATE_LIMITED')
  t.equal(limited.json().message, 'Rate limit exceeded: 600 requests per 1 minute; retry later.')
  const retry = Number(limited.headers['retry-after'])
  t.ok(retry >= 1 && retry <= 60, `Retry-After ${retry} is within the minute`)
  t.equal(limited.headers['x-ratelimit-limit'], '600')
  t.equal(limited.headers['x-ratelimit-remaining'], '0')
  t.ok(Number(limited.headers['x-ratelimit-reset']) >= 1)

  await call(brisk)
  await call(brisk)
  const brisker = await call(brisk)
  t.equal(brisker.json().message, 'Rate limit exceeded: 2 requests per 30 seconds; retry later.')
  t.ok(Number(brisker.headers['retry-after']) <= 30)

  // Every limiter writes a key: the per-client one, failed authentication, unknown routes.
  await app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: 'Bearer nope' }, payload: { server: 'default' } })
  await app.inject({ method: 'GET', url: '/no-such-route' })
  const redis = new Redis(REDIS_URL)
  t.teardown(() => redis.disconnect())
  const keys: string[] = []
  let cursor = '0'
  do {
    const [next, batch] = await redis.scan(cursor, 'MATCH', `${prefix}:rl:*`, 'COUNT', 1000)
    cursor = next
    keys.push(...batch)
  } while (cursor !== '0')
  t.same(keys.filter((k) => k.includes('undefined')), [], 'no key contains "undefined"')
  t.same(keys.sort(), [`${prefix}:rl:authfail:127.0.0.1`, `${prefix}:rl:client:brisk`, `${prefix}:rl:client:busy`, `${prefix}:rl:notfound:127.0.0.1`].sort())
  for (const k of keys) t.ok(await redis.pttl(k) > 0, `${k} expires`)
})

t.test('describeWindow says windows exactly', async (t) => {
  t.equal(describeWindow(60_000), '1 minute')
  t.equal(describeWindow(30_000), '30 seconds')
  t.equal(describeWindow(90_000), '90 seconds')
  t.equal(describeWindow(3_600_000), '1 hour')
  t.equal(describeWindow(2 * 86_400_000), '2 days')
  t.equal(describeWindow(1500), '1500 milliseconds')
  t.equal(describeWindow(1), '1 millisecond')
})

t.test('a failure the throttle cannot count is a 401, in metrics and its window\'s count, no event of its own', async (t) => {
  const { default: Fastify } = await import('fastify')
  const { default: auth } = await import('../src/plugins/auth.ts')
  const { default: errorHandler } = await import('../src/plugins/error-handler.ts')
  const a = makeClient('a')
  const denied: string[] = []
  const unaudited: string[] = []
  let verdict = { failures: 0, counted: false, max: 20, throttled: false, becameThrottled: false, retryAfter: 60, windowMs: 60_000 }
  // The client's limit never refuses here: its counter always says "first hit".
  const limiter = new RateLimiter({ counters: { hit: async () => ({ current: 1, ttl: 60_000 }) } as unknown as WindowCounters, keys: createKeys('auth-unit'), clientDefault: { max: 10, timeWindowMs: 60_000 } })
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(errorHandler)
  await app.register(auth, {
    clients: [a.config],
    denials: { record: (_r, reason) => { denied.push(reason) }, throttled: (_r, reason) => { denied.push(reason) }, counted: (reason, r) => { unaudited.push(r === undefined ? reason : `${reason} (window)`) } },
    limits: { meter: (client) => limiter.meter(client), authFailure: async () => verdict },
  })
  app.get('/x', { onRequest: app.authenticate('token:issue') }, async () => ({ ok: true }))
  t.equal((await app.inject({ method: 'GET', url: '/x', headers: { authorization: 'Bearer nope' } })).statusCode, 401)
  t.same([denied, unaudited], [[], ['unknown_secret (window)']], 'Redis did not count it: no event of its own, but in the window\'s count')
  verdict = { ...verdict, failures: 3, counted: true }
  t.equal((await app.inject({ method: 'GET', url: '/x' })).statusCode, 401)
  t.same(denied, ['missing_credential'], 'counted: audited')
  verdict = { ...verdict, failures: 22, throttled: true }
  const r = await app.inject({ method: 'GET', url: '/x' })
  t.equal(r.statusCode, 429)
  t.equal(r.headers['retry-after'], '60')
  t.same(denied, ['missing_credential'], 'throttled, not the first: not audited')
  t.equal((await app.inject({ method: 'GET', url: '/x', headers: a.auth })).statusCode, 200, 'a valid secret never asks the throttle')
})
