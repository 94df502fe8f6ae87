import t from 'tap'
import fc from 'fast-check'
import { connect } from 'node:net'
import type { AddressInfo } from 'node:net'
import { buildTestApp, makeClient, serverFor, startSim, type T, testConfig, uniquePrefix } from '../helper.ts'

// Abuse: whatever a client sends, the answer is a JSON error with a stable code, never a 500, a
// stack trace, a hang or a crash, and never a secret.
const ERROR_KEYS = ['code', 'error', 'message', 'requestId', 'statusCode']

async function setup (t: T) {
  const sim = await startSim(t)
  const a = makeClient('fuzzed', { scopes: ['token:issue', 'source:connect'], sources: '*' })
  const ops = makeClient('ops', { scopes: ['token:revoke', 'audit:read', 'server:read', 'server:rotate'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('abuse'), [serverFor(sim)], [a, ops]), { defaultMetrics: false })
  return { sim, a, ops, app }
}

t.test('property: any JSON body on any route gets a well-formed answer, never a 500', async (t) => {
  const { app, a, ops, sim } = await setup(t)
  const routes = [
    ['POST', '/v1/tokens', a], ['POST', '/v1/sources/connection', a], ['POST', '/v1/revoke', ops], ['POST', '/v1/audit/trace', ops],
    ['POST', '/v1/servers/default/rotate', ops],
  ] as const
  await fc.assert(fc.asyncProperty(fc.constantFrom(...routes), fc.jsonValue({ maxDepth: 4 }), async ([method, url, c], body) => {
    const r = await app.inject({ method, url, headers: { ...c.auth, 'content-type': 'application/json' }, payload: JSON.stringify(body) })
    if (r.statusCode >= 500) throw new Error(`${url} answered ${r.statusCode} to ${JSON.stringify(body).slice(0, 100)}: ${r.body}`)
    if (r.statusCode >= 400) {
      const keys = Object.keys(r.json()).sort()
      if (JSON.stringify(keys) !== JSON.stringify(ERROR_KEYS)) throw new Error(`bad error shape ${r.body}`)
    }
    if (r.body.includes(sim.adminToken)) throw new Error('admin token leaked')
  }), { numRuns: 300 })
  t.pass('300 random bodies, no 500')
})

t.test('property: any query string on the audit route gets 200 or a 400', async (t) => {
  const { app, ops } = await setup(t)
  await fc.assert(fc.asyncProperty(fc.dictionary(fc.constantFrom('action', 'client', 'server', 'tokenId', 'since', 'until', 'limit', 'cursor', 'x'), fc.string({ maxLength: 40 })), async (q) => {
    const r = await app.inject({ method: 'GET', url: '/v1/audit', query: q, headers: ops.auth })
    if (r.statusCode !== 200 && r.statusCode !== 400) throw new Error(`${JSON.stringify(q)} → ${r.statusCode} ${r.body}`)
  }), { numRuns: 300 })
  t.pass('300 random queries')
})

t.test('property: any query string on the push stream route gets a JSON error, never a 500 (a stream only for a real server)', async (t) => {
  const { app, a } = await setup(t)
  await fc.assert(fc.asyncProperty(fc.dictionary(fc.constantFrom('server', 'x', 'token'), fc.string({ maxLength: 40 }).filter((v) => v !== 'default')), async (q) => {
    const r = await app.inject({ method: 'GET', url: '/v1/tokens/stream', query: q, headers: a.auth })
    if (r.statusCode >= 500 || r.statusCode < 400) throw new Error(`${JSON.stringify(q)} → ${r.statusCode} ${r.body}`)
    const keys = Object.keys(r.json()).sort()
    if (JSON.stringify(keys) !== JSON.stringify(ERROR_KEYS)) throw new Error(`bad error shape ${r.body}`)
  }), { numRuns: 200 })
  t.pass('200 random queries')
})

t.test('property: any path gets a JSON answer (404, 405 or a route), never a 500', async (t) => {
  const { app, a } = await setup(t)
  const seg = fc.oneof(fc.string({ maxLength: 20 }), fc.constantFrom('..', '%00', '%2e%2e', '\u202e', '𝓅𝓁𝑒𝓍', 'v1', 'tokens', '%', '%zz', ';', '//'))
  // Each case from its own address: the unknown-route limit (60 a minute per address) must not
  // turn most cases into checks of the rate limiter.
  let n = 0
  await fc.assert(fc.asyncProperty(fc.array(seg, { maxLength: 5 }), fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'PATCH'), async (parts, method) => {
    const url = '/' + parts.map((p) => encodeURI(p).replace(/%25/g, '%')).join('/')
    n++
    const r = await app.inject({ method, url, headers: a.auth, remoteAddress: `10.77.${(n >> 8) & 255}.${n & 255}` })
    if (r.statusCode >= 500) throw new Error(`${method} ${url} → ${r.statusCode} ${r.body}`)
    if (r.statusCode === 429) throw new Error(`${method} ${url} → 429: the case measured the rate limiter`)
    if (r.statusCode >= 400) {
      const keys = Object.keys(JSON.parse(r.body)).sort()
      if (JSON.stringify(keys) !== JSON.stringify(ERROR_KEYS)) throw new Error(`bad error shape ${r.body}`)
    }
  }), { numRuns: 200 })
  t.pass('200 random paths')
})

t.test('oversized, deeply nested and malformed bodies', async (t) => {
  const { app, a } = await setup(t)
  const cases: Array<[string, string, string, number]> = [
    ['1 MB body', 'application/json', JSON.stringify({ server: 'x'.repeat(1024 * 1024) }), 413],
    ['deeply nested', 'application/json', '['.repeat(5000) + ']'.repeat(5000), 400],
    ['truncated JSON', 'application/json', '{"server": "def', 400],
    ['wrong content type', 'text/plain', 'server=default', 415],
    ['empty body', 'application/json', '', 400],
    ['prototype pollution', 'application/json', '{"server":"default","__proto__":{"admin":true}}', 400],
  ]
  for (const [name, type, body, status] of cases) {
    const r = await app.inject({ method: 'POST', url: '/v1/tokens', headers: { ...a.auth, 'content-type': type }, payload: body })
    t.equal(r.statusCode, status, name)
    t.same(Object.keys(r.json()).sort(), ERROR_KEYS, `${name}: error shape`)
    t.notMatch(r.body, /at .+\.(ts|js):\d+/, `${name}: no stack trace`)
  }
})

t.test('headers: very long, malformed, and slow clients do not hang or crash the server', async (t) => {
  const { app, a } = await setup(t)
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = app.server.address() as AddressInfo
  const base = `http://127.0.0.1:${port}`

  const long = await fetch(`${base}/v1/tokens`, { method: 'POST', headers: { authorization: `Bearer ${'x'.repeat(10_000)}`, 'content-type': 'application/json' }, body: '{"server":"default"}' })
  t.equal(long.status, 401, 'a 10 kB bearer is just unknown')
  const huge = await rawRequest(port, `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${'y'.repeat(20_000)}\r\n\r\n`)
  t.match(huge, /^HTTP\/1.1 431/, 'headers over the limit: 431')
  const bad = await rawRequest(port, 'GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n')
  t.match(bad, /^HTTP\/1.1 400/, 'malformed header line: 400')
  const ok = await fetch(`${base}/v1/tokens`, { method: 'POST', headers: { ...a.auth, 'content-type': 'application/json' }, body: '{"server":"default"}' })
  t.equal(ok.status, 200, 'still serving after the abuse')

  // Slowloris: headers dribbled one byte at a time are cut off by the server's timeouts.
  const start = Date.now()
  const closed = await new Promise<number>((resolve) => {
    const s = connect(port, '127.0.0.1', () => {
      s.write('GET /healthz HTTP/1.1\r\nHost: x\r\n')
      const timer = setInterval(() => s.write('X-a: b\r\n'), 500)
      s.on('close', () => { clearInterval(timer); resolve(Date.now() - start) })
      s.on('error', () => {})
    })
  })
  t.ok(closed < 20_000, `a slowloris connection is closed by the server (${closed} ms)`)
})

t.test('10,000 bad secrets: rate limited, audited, never a 500', async (t) => {
  const { app, ops } = await setup(t)
  const statuses = new Map<number, number>()
  for (let i = 0; i < 10_000; i++) {
    const r = await app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: `Bearer bad-${i}` }, payload: { server: 'default' }, remoteAddress: `10.1.${Math.floor(i / 250)}.${i % 250}` })
    statuses.set(r.statusCode, (statuses.get(r.statusCode) ?? 0) + 1)
  }
  t.same([...statuses.keys()].sort(), [401], 'every distinct address: 401')
  let limited = 0
  for (let i = 0; i < 100; i++) {
    const r = await app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: `Bearer again-${i}` }, payload: { server: 'default' }, remoteAddress: '10.9.9.9' })
    if (r.statusCode === 429) limited++
    t.ok(r.statusCode === 401 || r.statusCode === 429)
  }
  t.equal(limited, 80, 'one address: 20 tries, then 429')
  const denied = (await app.inject({ method: 'GET', url: '/v1/audit?action=auth.denied&limit=1000', headers: ops.auth })).json()
  t.equal(denied.events.length, 1000, 'denials are audited')
  t.match(denied.events[0], { action: 'auth.denied', detail: { reason: 'unknown_secret' } })
})

function rawRequest (port: number, text: string): Promise<string> {
  return new Promise((resolve) => {
    let out = ''
    const s = connect(port, '127.0.0.1', () => s.write(text))
    s.on('data', (d) => { out += String(d) })
    s.on('close', () => resolve(out))
    s.on('error', () => resolve(out))
    s.setTimeout(5000, () => s.destroy())
  })
}
