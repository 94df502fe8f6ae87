import t from 'tap'
import { Redis } from 'ioredis'
import { buildTestApp, makeClient, REDIS_URL, serverFor, startSim, testConfig, uniquePrefix } from './helper.ts'

// Cache hits are the bulk of the trail. They must not push security events (a revocation, a mint)
// out of it, and "who held this token" must stay answerable for the whole retention.

t.test('a busy client cannot flush security events out of a capped trail', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('busy')
  const ops = makeClient('ops', { scopes: ['token:revoke', 'audit:read'] })
  const prefix = uniquePrefix('flood')
  const app = await buildTestApp(t, testConfig(prefix, [serverFor(sim)], [a, ops], { auditMaxEvents: 50 }))
  const first = (await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })).json()
  await app.inject({ method: 'POST', url: '/v1/revoke', headers: ops.auth, payload: { client: 'busy', reason: 'rotated out' } })
  // Far more cache hits than the cap allows events.
  for (let i = 0; i < 300; i++) {
    const r = await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })
    t.equal(r.statusCode, 200)
  }
  const get = async (q: string) => (await app.inject({ method: 'GET', url: `/v1/audit?${q}`, headers: ops.auth })).json().events
  const revokes = await get('action=token.revoke')
  t.equal(revokes.length, 1, 'the revocation is still in the trail')
  t.equal(revokes[0].tokenId, first.tokenId)
  const mints = (await get(`tokenId=${first.tokenId}&limit=1000`)).filter((e: { detail: { source?: string } }) => e.detail.source === 'upstream')
  t.equal(mints.length, 1, 'the mint of the revoked token is still there')
  const redis = new Redis(REDIS_URL)
  t.teardown(() => redis.disconnect())
  t.ok(await redis.xlen(`${prefix}:audit:serves`) <= 150, 'the serves stream stays near its cap')
  const recent = await get('action=token.issue&limit=10')
  t.equal(recent.length, 10, 'recent serves are readable, merged with security events')
  t.ok(recent.every((e: { client: string }) => e.client === 'busy'))
})

t.test('pages merge both streams newest first and never skip or repeat an event', async (t) => {
  const sim = await startSim(t)
  const clients = Array.from({ length: 5 }, (_, i) => makeClient(`c${i}`))
  const ops = makeClient('ops', { scopes: ['audit:read', 'token:revoke'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('pages'), [serverFor(sim)], [...clients, ops]))
  await Promise.all(clients.map(async (c) => {
    for (let i = 0; i < 8; i++) await app.inject({ method: 'POST', url: '/v1/tokens', headers: c.auth, payload: { server: 'default' } })
  }))
  await app.inject({ method: 'POST', url: '/v1/revoke', headers: ops.auth, payload: { all: true, reason: 'paging test' } })
  const all = (await app.inject({ method: 'GET', url: '/v1/audit?limit=1000', headers: ops.auth })).json().events
  const seen: Array<{ id: string, action: string }> = []
  let cursor: string | null = null
  do {
    const page: { events: Array<{ id: string, action: string }>, next: string | null } = (await app.inject({ method: 'GET', url: `/v1/audit?limit=7${cursor === null ? '' : `&cursor=${cursor}`}`, headers: ops.auth })).json()
    seen.push(...page.events)
    cursor = page.next
  } while (cursor !== null)
  t.equal(all.length, 5 * 8 + 5, 'forty serves (five of them mints) and five revocations')
  t.same(seen.map((e) => `${e.id}/${e.action}`), all.map((e: { id: string, action: string }) => `${e.id}/${e.action}`), 'pages of 7 = the whole list')
  const order = (id: string): bigint => { const [ms = '', seq = ''] = id.split('-'); return BigInt(ms) * 1_000_000n + BigInt(seq) }
  const ids = all.map((e: { id: string }) => order(e.id))
  t.same(ids, [...ids].sort((x, y) => (x < y ? 1 : x > y ? -1 : 0)), 'newest first')
  const exported = (await app.inject({ method: 'GET', url: '/v1/audit/export', headers: ops.auth })).body.trim().split('\n').map((l) => JSON.parse(l))
  t.same(exported.map((e) => e.id).sort(), all.map((e: { id: string }) => e.id).sort(), 'export holds both streams')
  const exIds = exported.map((e) => order(e.id))
  t.same(exIds, [...exIds].sort((x, y) => (x < y ? -1 : x > y ? 1 : 0)), 'export is oldest first')
})

t.test('trace finds the holder of a token even after 200,000 newer events', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('holder')
  const ops = makeClient('ops', { scopes: ['audit:read'] })
  const prefix = uniquePrefix('trace')
  const app = await buildTestApp(t, testConfig(prefix, [serverFor(sim)], [a, ops]))
  const tk = (await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })).json()
  const redis = new Redis(REDIS_URL)
  t.teardown(() => redis.disconnect())
  // 210,000 newer security events (written server-side: fast, and no test-side memory).
  await redis.eval('for i = 1, 210000 do redis.call(\'XADD\', KEYS[1], \'*\', \'time\', ARGV[1], \'action\', \'auth.denied\', \'detail\', \'{}\') end return 1',
    1, `${prefix}:audit`, String(Date.now()))
  const trace = (await app.inject({ method: 'POST', url: '/v1/audit/trace', headers: ops.auth, payload: { token: tk.token } })).json()
  t.same(trace.holder, { client: 'holder', server: 'default', tokenId: tk.tokenId })
  t.match(trace.fingerprint, /^[0-9a-f]{64}$/)
  t.notOk(JSON.stringify(trace).includes(tk.token), 'the answer never holds the token')
  const none = (await app.inject({ method: 'POST', url: '/v1/audit/trace', headers: ops.auth, payload: { token: 'never-issued' } })).json()
  t.equal(none.holder, null)
})

t.test('a security trail over AUDIT_MAX_EVENTS is cut at the sweep, counted and reported', async (t) => {
  const sim = await startSim(t)
  const ops = makeClient('ops', { scopes: ['audit:read', 'server:rotate'] })
  const prefix = uniquePrefix('dropped')
  const app = await buildTestApp(t, testConfig(prefix, [serverFor(sim)], [ops], { auditMaxEvents: 10 }))
  // 25 security events (refusals would not do: they have a stream of their own).
  for (let i = 0; i < 25; i++) {
    t.equal((await app.inject({ method: 'POST', url: '/v1/servers/default/rotate', headers: ops.auth })).statusCode, 202)
  }
  const redis = new Redis(REDIS_URL)
  t.teardown(() => redis.disconnect())
  const before = await redis.xlen(`${prefix}:audit`)
  t.ok(before > 10, `no cap on append (${before} security events)`)
  const r = await app.broker.audit.trim(30 * 86_400_000, 10)
  t.equal(r.dropped, before - 10)
  t.equal(await redis.xlen(`${prefix}:audit`), 10)
  const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.match(metrics, new RegExp(`ptb_audit_dropped_total ${before - 10}\\b`))
  t.ok(app.logs.text.includes('security audit events cut before AUDIT_RETENTION'), 'a warning says so')
})
