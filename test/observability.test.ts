import t from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import { buildTestApp, makeClient, monitorRedis, REDIS_URL, serverFor, startSim, testConfig, uniquePrefix } from './helper.ts'
import { havePromtool, promtool } from './promtool.ts'

const ERROR_KEYS = ['code', 'error', 'message', 'requestId', 'statusCode']

t.test('/metrics exposes the broker\'s metrics with bounded labels and no secrets', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('metered')
  const ops = makeClient('ops', { scopes: ['token:revoke'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('metrics'), [serverFor(sim)], [a, ops]))
  const tok = (await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })).json()
  await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })
  await app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: 'Bearer nope' }, payload: { server: 'default' } })
  await app.inject({ method: 'GET', url: `/v1/tokens/${tok.tokenId}?secret=${a.secret}`, headers: a.auth })
  await app.inject({ method: 'POST', url: '/v1/revoke', headers: ops.auth, payload: { client: 'metered', reason: 'metrics test' } })

  const r = await app.inject({ method: 'GET', url: '/metrics' })
  t.equal(r.statusCode, 200)
  t.match(r.headers['content-type'], /text\/plain/)
  const text = r.body
  t.match(text, /ptb_tokens_served_total\{server="default",source="upstream"\} 1/)
  t.match(text, /ptb_tokens_served_total\{server="default",source="cache"\} 1/)
  t.match(text, /ptb_mints_total\{server="default",result="ok"\} 1/)
  t.match(text, /ptb_revocations_total\{selector="client"\} 1/)
  t.match(text, /ptb_auth_failures_total\{reason="unknown_secret"\} 1/)
  t.match(text, /ptb_audit_events_total\{action="token.issue"\} 2/)
  t.match(text, /ptb_upstream_request_duration_seconds_count\{server="default",endpoint="[a-z_]+",outcome="ok"\} \d/)
  t.match(text, /http_request_duration_seconds_bucket\{le="0.001",method="POST",route="\/v1\/tokens",status_code="200"\}/)
  t.match(text, /route="\/v1\/tokens\/:tokenId"/, 'route label is the pattern')
  t.notMatch(text, new RegExp(tok.tokenId), 'never a raw URL or token id in a label')
  t.match(text, /ptb_queue_jobs\{queue="tokens",state="waiting"\} 0/)
  t.match(text, /process_cpu_user_seconds_total/, 'default process metrics')
  for (const secret of [tok.token, a.secret, sim.adminToken]) t.notOk(text.includes(secret), 'no secret in metrics')

  // Lint-clean by promtool's rules, checked here whether promtool is installed or not: no gauge
  // named *_total, no type in a metric name.
  const types = [...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => ({ name: m[1] ?? '', type: m[2] }))
  t.same(types.filter((m) => m.type !== 'counter' && m.name.endsWith('_total')).map((m) => m.name), [], 'only counters end in _total')
  t.same(types.filter((m) => /_(histogram|summary|gauge|counter)(_|$)/.test(m.name)).map((m) => m.name), [], 'no type in a metric name')
  t.ok(types.some((m) => m.name === 'nodejs_active_handles'), 'handle count kept (without the _total duplicate)')
  t.match(text, /^nodejs_eventloop_utilization_ratio 0(\.\d+)?(e-\d+)?$|^nodejs_eventloop_utilization_ratio 1$/m, 'event-loop utilization as a 0..1 ratio')
  t.match(text, /# TYPE ptb_undecryptable_tokens_total counter/, 'undecryptable-token counter is exported')
  if (havePromtool(t, 'the /metrics exposition')) {
    const check = promtool(['check', 'metrics'], text)
    t.equal(check.status, 0, `promtool check metrics: ${check.output}`)
  }
  // Minimal exposition-format check that always runs: every sample line parses.
  const bad = text.split('\n').filter((l) => l !== '' && !l.startsWith('#') &&
    !/^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? -?(\d+(\.\d+)?(e[+-]?\d+)?|NaN|\+Inf|-Inf)$/.test(l))
  t.same(bad, [], 'every sample line is valid exposition format')
})

t.test('METRICS_TOKEN protects /metrics', async (t) => {
  const sim = await startSim(t)
  const app = await buildTestApp(t, testConfig(uniquePrefix('metrics'), [serverFor(sim)], [], { metricsToken: 'scrape-me' }), { defaultMetrics: false })
  const denied = await app.inject({ method: 'GET', url: '/metrics' })
  t.equal(denied.statusCode, 401)
  t.same(Object.keys(denied.json()).sort(), ERROR_KEYS)
  t.equal((await app.inject({ method: 'GET', url: '/metrics', headers: { authorization: 'Bearer wrong' } })).statusCode, 401)
  t.equal((await app.inject({ method: 'GET', url: '/metrics', headers: { authorization: 'Bearer scrape-me' } })).statusCode, 200)
})

t.test('without METRICS_TOKEN (loopback HOST), /metrics answers only a loopback Host: a DNS-rebinding page gets 403', async (t) => {
  const sim = await startSim(t)
  const app = await buildTestApp(t, testConfig(uniquePrefix('metrics-host'), [serverFor(sim)], []), { defaultMetrics: false })
  for (const host of ['localhost', 'localhost:3000', '127.0.0.1:3000', '127.0.0.1', '[::1]:3000', 'LOCALHOST:3000']) {
    t.equal((await app.inject({ method: 'GET', url: '/metrics', headers: { host } })).statusCode, 200, `Host: ${host}`)
  }
  for (const host of ['evil.example:3000', 'localhost.evil.example', '127.0.0.1.nip.io:3000', 'evil.example']) {
    const r = await app.inject({ method: 'GET', url: '/metrics', headers: { host } })
    t.equal(r.statusCode, 403, `Host: ${host}`)
    t.same(Object.keys(r.json()).sort(), ERROR_KEYS, 'the JSON error shape')
    t.match(r.json().message, /Host is localhost, 127\.0\.0\.1 or \[::1\].*METRICS_TOKEN/)
    t.notMatch(r.body, /ptb_/, 'no metric in it')
  }
  // With a token the Host does not matter: the token is what a rebinding page cannot send.
  const tokened = await buildTestApp(t, testConfig(uniquePrefix('metrics-host2'), [serverFor(sim)], [], { metricsToken: 'scrape-me' }), { defaultMetrics: false })
  t.equal((await tokened.inject({ method: 'GET', url: '/metrics', headers: { host: 'broker.internal:3000', authorization: 'Bearer scrape-me' } })).statusCode, 200)
})

t.test('/readyz: anyone gets ready or not ready, from a check shared for a second; the metrics token (or a loopback Host without one) gets the detail', async (t) => {
  const sim = await startSim(t)
  const prefix = uniquePrefix('readyz')
  const app = await buildTestApp(t, testConfig(prefix, [serverFor(sim)], [], { metricsToken: 'scrape-me' }), { defaultMetrics: false })
  await app.ready()
  const anonymous = await app.inject({ method: 'GET', url: '/readyz' })
  t.equal(anonymous.statusCode, 200)
  t.same(anonymous.json(), { status: 'ready' }, 'ready, and nothing about Redis')
  const ops = await app.inject({ method: 'GET', url: '/readyz', headers: { authorization: 'Bearer scrape-me' } })
  t.match(ops.json(), { status: 'ready', checks: { redis: 'ok', audit: 'ok' }, redis: { mode: 'standalone', role: 'primary', address: /:\d+$/ } })
  const wrong = await app.inject({ method: 'GET', url: '/readyz', headers: { authorization: 'Bearer guess' } })
  t.equal(wrong.statusCode, 401, 'a wrong token is a failed authentication, not a quiet "no detail"')

  // A flood of anonymous probes: Redis is written about once a second, not once a call.
  const writes: string[][] = []
  const stop = await monitorRedis((words) => { if (words[1] === `${prefix}:readyz`) writes.push(words) })
  t.teardown(stop)
  await sleep(1100)
  for (let i = 0; i < 100; i++) t.equal((await app.inject({ method: 'GET', url: '/readyz' })).statusCode, 200)
  await sleep(300)
  stop()
  t.ok(writes.length >= 1 && writes.length <= 2, `100 probes, ${writes.length} Redis write(s) of the readiness key`)

  // Not ready: anonymous callers are told so, without what is wrong; the token holder is told what.
  const redis = new Redis(REDIS_URL)
  t.teardown(() => redis.disconnect())
  await redis.set(`${prefix}:audit`, 'not a stream')
  await sleep(1100)
  const down = await app.inject({ method: 'GET', url: '/readyz' })
  t.equal(down.statusCode, 503)
  t.same(Object.keys(down.json()).sort(), ERROR_KEYS)
  t.equal(down.json().message, 'Not ready.')
  const why = await app.inject({ method: 'GET', url: '/readyz', headers: { authorization: 'Bearer scrape-me' } })
  t.match(why.json().message, /^Not ready: audit not writable/)
  await redis.del(`${prefix}:audit`)

  // No METRICS_TOKEN (a loopback broker): the detail goes to a loopback Host only.
  const local = await buildTestApp(t, testConfig(uniquePrefix('readyz2'), [serverFor(sim)], []), { defaultMetrics: false })
  t.ok((await local.inject({ method: 'GET', url: '/readyz', headers: { host: '127.0.0.1:3000' } })).json().redis, 'loopback Host: detail')
  t.same((await local.inject({ method: 'GET', url: '/readyz', headers: { host: 'rebound.example:3000' } })).json(), { status: 'ready' }, 'another Host: none')
})

t.test('per-client rate limit answers 429 RATE_LIMITED with Retry-After and rate-limit headers', async (t) => {
  const sim = await startSim(t)
  const slow = makeClient('slow', { rateLimit: { max: 3, timeWindowMs: 60_000 } })
  const fast = makeClient('fast')
  const cfg = testConfig(uniquePrefix('ratelimit'), [serverFor(sim)], [slow, fast])
  const one = await buildTestApp(t, cfg, { defaultMetrics: false })
  const two = await buildTestApp(t, { ...cfg }, { defaultMetrics: false })
  const call = (app: typeof one, c: typeof slow) => app.inject({ method: 'POST', url: '/v1/tokens', headers: c.auth, payload: { server: 'default' } })
  const first = await call(one, slow)
  t.equal(first.headers['x-ratelimit-limit'], '3')
  t.equal(first.headers['x-ratelimit-remaining'], '2')
  await call(two, slow)
  await call(one, slow)
  const limited = await call(two, slow)
  t.equal(limited.statusCode, 429, 'the limit holds across instances (Redis-backed)')
  t.same(Object.keys(limited.json()).sort(), ERROR_KEYS)
  t.equal(limited.json().code, 'RATE_LIMITED')
  t.ok(Number(limited.headers['retry-after']) > 0, 'Retry-After')
  t.equal((await call(one, fast)).statusCode, 200, 'another client is not affected')
  t.match((await two.inject({ method: 'GET', url: '/metrics' })).body, /ptb_rate_limited_total\{limit="client"\} 1/)
})

t.test('repeated failed authentication from one address is throttled; a good secret from it is not', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('victim')
  const app = await buildTestApp(t, testConfig(uniquePrefix('bruteforce'), [serverFor(sim)], [a]), { defaultMetrics: false })
  const statuses: number[] = []
  for (let i = 0; i < 22; i++) {
    statuses.push((await app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: `Bearer guess-${i}` }, payload: { server: 'default' } })).statusCode)
  }
  t.same(statuses.slice(0, 20), Array(20).fill(401))
  t.same(statuses.slice(20), [429, 429])
  const good = await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })
  t.equal(good.statusCode, 200, 'a valid secret is served: the address is shared, the secret is 256-bit')
  const other = await app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: 'Bearer guess' }, payload: { server: 'default' }, remoteAddress: '10.0.0.9' })
  t.equal(other.statusCode, 401, 'other addresses have their own allowance')
})

t.test('unknown routes are rate limited per address', async (t) => {
  const sim = await startSim(t)
  const app = await buildTestApp(t, testConfig(uniquePrefix('notfound'), [serverFor(sim)], []), { defaultMetrics: false })
  const statuses: number[] = []
  for (let i = 0; i < 61; i++) statuses.push((await app.inject({ method: 'GET', url: `/probe-${i}` })).statusCode)
  t.same(statuses.slice(0, 60), Array(60).fill(404), 'the first 60 unknown routes are 404s')
  t.equal(statuses[60], 429, 'the 61st is throttled')
  const r = await app.inject({ method: 'GET', url: '/admin' })
  t.equal(r.json().code, 'RATE_LIMITED')
  const other = await app.inject({ method: 'GET', url: '/admin', remoteAddress: '10.9.9.9' })
  t.equal(other.statusCode, 404, 'another address is not affected')
})

t.test('OpenAPI document covers every route with its error shape', async (t) => {
  const sim = await startSim(t)
  const app = await buildTestApp(t, testConfig(uniquePrefix('docs'), [serverFor(sim)], []), { defaultMetrics: false })
  const r = await app.inject({ method: 'GET', url: '/docs/json' })
  t.equal(r.statusCode, 200)
  const doc = r.json()
  t.equal(doc.openapi, '3.1.0')
  for (const path of ['/v1/tokens', '/v1/tokens/{tokenId}', '/v1/tokens/stream', '/v1/sources/connection', '/v1/revoke', '/v1/audit', '/v1/audit/export', '/v1/audit/trace', '/v1/servers', '/v1/servers/{name}/rotate', '/healthz', '/readyz', '/metrics']) {
    t.ok(doc.paths[path], `documents ${path}`)
  }
  t.ok(doc.components.schemas.Error, 'the Error schema is shared')
  t.equal((await app.inject({ method: 'GET', url: '/docs' })).statusCode < 400, true, 'UI served')
})

t.test('logs: one line per request with id, client, route, status, duration; never a secret on any path', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('logged')
  const ops = makeClient('ops', { scopes: ['token:revoke', 'audit:read', 'server:read', 'server:rotate'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('logs'), [serverFor(sim)], [a, ops]), { defaultMetrics: false })
  const tok = (await app.inject({ method: 'POST', url: '/v1/tokens', headers: { ...a.auth, 'x-request-id': 'req-123' }, payload: { server: 'default' } })).json()
  // Every route and error path, with secrets placed where careless code would log them.
  const calls = [
    { method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default', rejectedTokenId: tok.tokenId } },
    { method: 'POST', url: `/v1/tokens?token=${tok.token}`, headers: a.auth, payload: { server: 'default' } },
    { method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: tok.token } },
    { method: 'POST', url: '/v1/tokens', headers: a.auth, payload: `{"server": "${sim.adminToken}"` },
    { method: 'POST', url: '/v1/tokens', headers: { authorization: `Bearer ${sim.adminToken}` }, payload: { server: 'default' } },
    { method: 'POST', url: '/v1/tokens', headers: { authorization: `Bearer ${tok.token}`, 'x-plex-token': tok.token }, payload: {} },
    { method: 'GET', url: `/v1/tokens/${tok.tokenId}`, headers: a.auth },
    { method: 'GET', url: `/v1/tokens/${tok.token}`, headers: a.auth },
    { method: 'POST', url: '/v1/audit/trace', headers: ops.auth, payload: { token: tok.token } },
    { method: 'GET', url: '/v1/audit?limit=5', headers: ops.auth },
    { method: 'GET', url: '/v1/audit/export', headers: ops.auth },
    { method: 'GET', url: '/v1/servers', headers: ops.auth },
    { method: 'POST', url: '/v1/servers/default/rotate', headers: ops.auth },
    { method: 'POST', url: '/v1/revoke', headers: ops.auth, payload: { tokenId: tok.tokenId, reason: `leaked ${tok.token}` } },
    { method: 'GET', url: `/nope?X-Plex-Token=${sim.adminToken}` },
    { method: 'GET', url: '/healthz' },
    { method: 'GET', url: '/readyz' },
    { method: 'GET', url: '/metrics' },
  ] as const
  const statuses: number[] = []
  for (const c of calls) {
    const r = await app.inject(c as never)
    statuses.push(r.statusCode)
    if (r.statusCode >= 400) t.same(Object.keys(r.json()).sort(), ERROR_KEYS, `${c.method} ${c.url.slice(0, 30)}: error shape`)
    t.notOk(r.body.includes(sim.adminToken), 'no admin token in any answer')
  }
  // Each call's expected outcome, so a path that silently stopped erroring (or started) is seen.
  t.same(statuses, [200, 200, 404, 415, 401, 401, 200, 404, 200, 200, 200, 200, 202, 200, 404, 200, 200, 200], 'every call answered as expected')
  const records = app.logs.records()
  // The caller's X-Request-Id is logged next to the broker's own id, never as it.
  const req = records.find((l) => l.msg === 'request' && l.clientRequestId === 'req-123')
  t.match(req, { reqId: String, clientRequestId: 'req-123', client: 'logged', route: '/v1/tokens', statusCode: 200, durationMs: Number })
  t.not(req?.reqId, 'req-123')
  t.ok(records.some((l) => l.msg === 'token minted'), 'lifecycle: mint at info')
  t.ok(records.some((l) => l.msg === 'tokens revoked'), 'lifecycle: revoke at info')
  for (const [what, secret] of [['token', tok.token], ['admin token', sim.adminToken], ['client secret', a.secret], ['ops secret', ops.secret]]) {
    t.notOk(app.logs.text.includes(secret), `no ${what} in the logs`)
  }
})

t.test('logs are JSON unless a person is watching a terminal', async (t) => {
  const { loggerOptions } = await import('../src/logger.ts')
  t.equal(loggerOptions('info', false).transport, undefined, 'JSON when not a TTY')
  t.match(loggerOptions('info', true).transport, { target: 'pino-pretty' }, 'pretty on a TTY')
  t.ok((loggerOptions('info').redact as { paths: string[] }).paths.includes('req.headers.authorization'))
})
