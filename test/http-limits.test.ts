import t from 'tap'
import { connect, type Socket } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import { buildTestApp, makeClient, serverFor, startSim, testConfig, uniquePrefix } from './helper.ts'

const ERROR_KEYS = ['code', 'error', 'message', 'requestId', 'statusCode']
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

/** A raw connection to the app: what it received, and when (ms after connecting) it was closed. */
async function rawConnection (app: FastifyInstance): Promise<{ socket: Socket, received: () => string, closed: Promise<number> }> {
  const { port } = app.server.address() as { port: number }
  const socket = connect(port, '127.0.0.1')
  await new Promise((resolve) => socket.once('connect', resolve))
  const started = Date.now()
  let data = ''
  socket.on('data', (d) => { data += String(d) })
  socket.on('error', () => {})
  const closed = new Promise<number>((resolve) => socket.once('close', () => resolve(Date.now() - started)))
  return { socket, received: () => data, closed }
}

t.test('HTTP timeouts apply to the server the broker creates', async (t) => {
  const sim = await startSim(t)

  t.test('production defaults: keep-alive is advertised as 72 s, not Node\'s 5 s', async (t) => {
    const app = await buildTestApp(t, testConfig(uniquePrefix('timeouts'), [serverFor(sim)], []), { defaultMetrics: false })
    await app.listen({ host: '127.0.0.1', port: 0 })
    t.equal(app.server.keepAliveTimeout, 72_000)
    t.equal(app.server.timeout, 10_000)
    const c = await rawConnection(app)
    c.socket.write('GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\n')
    await sleep(200)
    t.match(c.received(), /^HTTP\/1\.1 200 .*\r\nkeep-alive: timeout=72\r\n/is)
    c.socket.destroy()
  })

  t.test('an idle keep-alive connection is closed after keepAliveTimeout', async (t) => {
    const app = await buildTestApp(t, testConfig(uniquePrefix('timeouts'), [serverFor(sim)], []),
      { defaultMetrics: false, httpTimeouts: { keepAliveTimeoutMs: 1000, connectionTimeoutMs: 8000 } })
    await app.listen({ host: '127.0.0.1', port: 0 })
    const c = await rawConnection(app)
    c.socket.write('GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\n')
    const closedAfter = await c.closed
    t.match(c.received(), /^HTTP\/1\.1 200 .*keep-alive: timeout=1\r\n/is, 'the answer advertises the timeout')
    // Node keeps the socket up to 1 s longer than it advertises (keepAliveTimeoutBuffer).
    t.ok(closedAfter >= 900 && closedAfter < 3500, `closed ${closedAfter} ms after the answer (Node's default would be about 6 s)`)
  })

  t.test('a connection that sends nothing is closed after connectionTimeout', async (t) => {
    const app = await buildTestApp(t, testConfig(uniquePrefix('timeouts'), [serverFor(sim)], []),
      { defaultMetrics: false, httpTimeouts: { connectionTimeoutMs: 500 } })
    app.post('/test/slow', async () => { await sleep(1500); return { done: true } })
    await app.listen({ host: '127.0.0.1', port: 0 })
    const silent = await rawConnection(app)
    const closedAfter = await silent.closed
    t.ok(closedAfter >= 400 && closedAfter < 2500, `closed after ${closedAfter} ms (headersTimeout alone would take 10 s)`)
    t.equal(silent.received(), '', 'just closed')

    // A body that stops arriving is cut off as well, long before requestTimeout (15 s).
    const stalled = await rawConnection(app)
    stalled.socket.write('POST /test/slow HTTP/1.1\r\nHost: broker\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"a":')
    const stalledAfter = await stalled.closed
    t.ok(stalledAfter < 2500, `a stalled body: closed after ${stalledAfter} ms`)

    // The broker still working on an answer is not a reason to drop the connection.
    const working = await rawConnection(app)
    working.socket.write('POST /test/slow HTTP/1.1\r\nHost: broker\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}')
    await sleep(1800)
    t.match(working.received(), /^HTTP\/1\.1 200 .*\{"done":true\}$/s, 'a handler slower than connectionTimeout still answers')
    working.socket.destroy()
  })
})

t.test('X-Request-Id: the broker\'s own id is the request id; the caller\'s is recorded apart', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('caller')
  const ops = makeClient('ops', { scopes: ['audit:read', 'token:revoke'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('reqid'), [serverFor(sim)], [a, ops]), { defaultMetrics: false })
  const r = await app.inject({ method: 'POST', url: '/v1/tokens', headers: { ...a.auth, 'x-request-id': 'caller-42' }, payload: { server: 'default' } })
  t.equal(r.statusCode, 200)
  const id = r.headers['x-request-id'] as string
  t.match(id, UUID, 'the answer names the broker\'s id')
  await app.inject({ method: 'POST', url: '/v1/revoke', headers: { ...ops.auth, 'x-request-id': 'ticket-7' }, payload: { client: 'caller', reason: 'test' } })

  const events = (await app.inject({ method: 'GET', url: '/v1/audit', headers: ops.auth })).json().events as Array<Record<string, unknown>>
  t.match(events.find((e) => e.action === 'token.issue'), { requestId: id, clientRequestId: 'caller-42' })
  t.match(events.find((e) => e.action === 'token.revoke'), { requestId: UUID, clientRequestId: 'ticket-7' })
  const exported = (await app.inject({ method: 'GET', url: '/v1/audit/export?action=token.issue', headers: ops.auth })).body
  t.match(JSON.parse(exported.trim()), { requestId: id, clientRequestId: 'caller-42' }, 'the export too')

  // Invalid ids are dropped: too long, spaces, the `|` the trail uses as separator.
  // (From four addresses: repeated refusals of one address are counted into one event.)
  for (const [i, bad] of ['x'.repeat(65), 'has space', 'a|b', 'semi;colon'].entries()) {
    const denied = await app.inject({ method: 'POST', url: '/v1/tokens', remoteAddress: `198.51.100.${i + 1}`, headers: { authorization: 'Bearer wrong', 'x-request-id': bad }, payload: { server: 'default' } })
    t.equal(denied.statusCode, 401)
    t.match(denied.json().requestId, UUID)
    t.equal(denied.json().requestId, denied.headers['x-request-id'], 'the error body and the header name the same id')
  }
  const denials = (await app.inject({ method: 'GET', url: '/v1/audit?action=auth.denied', headers: ops.auth })).json().events as Array<Record<string, unknown>>
  t.equal(denials.length, 4)
  for (const e of denials) {
    t.equal(e.clientRequestId, null, 'an invalid id is not recorded')
    t.match(e.requestId, UUID)
  }
  const valid = await app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: 'Bearer wrong', 'x-request-id': 'mine' }, payload: { server: 'default' } })
  t.not(valid.json().requestId, 'mine', 'even a valid caller id is never answered as the broker\'s')
})

t.test('audit since/until before 1970 or unreadable are 400, not 503', async (t) => {
  const sim = await startSim(t)
  const ops = makeClient('ops', { scopes: ['audit:read'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('since'), [serverFor(sim)], [ops]), { defaultMetrics: false })
  for (const path of ['/v1/audit', '/v1/audit/export']) {
    for (const q of ['since=1969-12-31T23:59:59Z', 'until=1900-01-01T00:00:00Z', 'since=1970-01-01T00:30:00%2B01:00',
      'until=2016-12-31T23:59:60Z', 'since=yesterday', 'until=2024-13-01T00:00:00Z']) {
      const r = await app.inject({ method: 'GET', url: `${path}?${q}`, headers: ops.auth })
      t.equal(r.statusCode, 400, `${path}?${q}`)
      t.same(Object.keys(r.json()).sort(), ERROR_KEYS)
      t.equal(r.json().code, 'BAD_REQUEST')
    }
    t.equal((await app.inject({ method: 'GET', url: `${path}?since=1970-01-01T00:00:00Z`, headers: ops.auth })).statusCode, 200, `${path}: 1970 itself is fine`)
  }
  t.match((await app.inject({ method: 'GET', url: '/v1/audit?since=1969-12-31T23:59:59Z', headers: ops.auth })).json().message,
    /since must be a date-time at or after 1970-01-01T00:00:00Z/)
})

t.test('failed METRICS_TOKEN attempts are counted, audited and throttled like failed client authentications', async (t) => {
  const sim = await startSim(t)
  const ops = makeClient('ops', { scopes: ['audit:read'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('metricsauth'), [serverFor(sim)], [ops], { metricsToken: 'scrape-me' }), { defaultMetrics: false })
  const scrape = async (authorization?: string, remoteAddress = '192.0.2.7') =>
    await app.inject({ method: 'GET', url: '/metrics', remoteAddress, headers: authorization === undefined ? {} : { authorization } })

  // One allowance per address for every kind of failed authentication.
  for (let i = 0; i < 10; i++) {
    const r = await app.inject({ method: 'POST', url: '/v1/tokens', remoteAddress: '192.0.2.7', headers: { authorization: 'Bearer wrong' }, payload: { server: 'default' } })
    t.equal(r.statusCode, 401)
  }
  const answers: number[] = []
  for (let i = 0; i < 14; i++) answers.push((await scrape(i % 2 === 0 ? `Bearer guess-${i}` : undefined)).statusCode)
  t.same(answers, [...Array(10).fill(401), ...Array(4).fill(429)], 'the 21st failure from the address is 429')
  const limited = await scrape('Bearer guess')
  t.same(Object.keys(limited.json()).sort(), ERROR_KEYS)
  t.equal(limited.json().code, 'RATE_LIMITED')
  t.ok(Number(limited.headers['retry-after']) >= 1, 'Retry-After')
  t.equal((await scrape('Bearer scrape-me')).statusCode, 200, 'the right token is never throttled')
  t.equal((await scrape('Bearer guess', '192.0.2.8')).statusCode, 401, 'another address has its own allowance')

  const text = (await scrape('Bearer scrape-me')).body
  t.match(text, /ptb_auth_failures_total\{reason="metrics_token"\} 16\n/, 'every metrics failure counted')
  t.match(text, /ptb_rate_limited_total\{limit="auth_failures"\} 5\n/)
  await app.broker.refusals.flush()
  const denials = (await app.inject({ method: 'GET', url: '/v1/audit?action=auth.denied&limit=100', headers: ops.auth })).json().events as Array<{ ip: string, detail: Record<string, unknown> }>
  const metricsDenials = denials.filter((e) => e.detail.route === '/metrics')
  const fromAddress = metricsDenials.filter((e) => e.ip === '192.0.2.7')
  t.equal(fromAddress.length, 3, 'the first failure, the one that became throttled and one count of the rest: not an event per failure')
  t.equal(fromAddress.reduce((n, e) => n + Number(e.detail.count ?? 1), 0), 15, 'the counts add up to the 15 failed scrapes')
  t.match(metricsDenials.find((e) => e.detail.throttled === true), { ip: '192.0.2.7', detail: { reason: 'metrics_token' } })
})
