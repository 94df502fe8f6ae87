import t from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { buildTestApp, makeClient, serverFor, startSim, testConfig, uniquePrefix } from './helper.ts'

async function until (ms: number, fn: () => Promise<boolean>): Promise<boolean> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (await fn()) return true
    await sleep(100)
  }
  return false
}

t.test('an admin token PMS rejects is found at boot, shown, audited, and fails requests fast with 502', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('a')
  const ops = makeClient('ops', { scopes: ['server:read', 'audit:read'] })
  const server = serverFor(sim)
  sim.setAdminTokens(['the-owner-changed-the-token'])
  const app = await buildTestApp(t, testConfig(uniquePrefix('admin'), [server], [a, ops], { role: 'all', probeIntervalMs: 1000 }), { defaultMetrics: false })
  await app.ready()
  const servers = async () => (await app.inject({ method: 'GET', url: '/v1/servers', headers: ops.auth })).json().servers[0]
  t.ok(await until(5000, async () => (await servers()).adminToken.state === 'invalid'), 'checked at boot: invalid')
  t.match((await servers()).adminToken, { state: 'invalid', checkedAt: String, source: 'token' })
  t.match((await app.inject({ method: 'GET', url: '/metrics' })).body, /ptb_admin_token_valid\{server="default"\} 0/)
  const events = (await app.inject({ method: 'GET', url: '/v1/audit?action=server.admin_token', headers: ops.auth })).json().events
  t.match(events[0], { server: 'default', detail: { state: 'invalid' } })

  const before = sim.counters.byPath['/security/token'] ?? 0
  const r = await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })
  t.equal(r.statusCode, 502)
  t.equal(r.json().code, 'UPSTREAM_REJECTED')
  t.match(r.json().message, /admin token/)
  t.equal(sim.counters.byPath['/security/token'] ?? 0, before, 'no 401 storm: PMS is not asked while the token is known bad')
  t.notOk(app.logs.text.includes(sim.adminToken), 'the admin token is never logged')
})

t.test('a replaced admin token is not blocked by its predecessor\'s verdict', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('a')
  const prefix = uniquePrefix('admin')
  sim.setAdminTokens(['new-token-after-reclaim'])
  const app = await buildTestApp(t, testConfig(prefix, [serverFor(sim)], [a], { role: 'all' }), { defaultMetrics: false })
  await app.ready()
  await until(5000, async () => (await app.broker.states.get('default')).adminToken === 'invalid')
  // Ops fix the configuration: a second instance runs with the new token, on the same Redis.
  const fixed = await buildTestApp(t, testConfig(prefix, [{ ...serverFor(sim), adminToken: 'new-token-after-reclaim' }], [a]), { defaultMetrics: false })
  const r = await fixed.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })
  t.equal(r.statusCode, 200, 'the new token mints at once')
  t.ok(sim.isTokenValid(r.json().token))
})

t.test('PMS unreachable is unknown, never invalid', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('a')
  await sim.setDown(true)
  const app = await buildTestApp(t, testConfig(uniquePrefix('admin'), [serverFor(sim)], [a], { role: 'all' }), { defaultMetrics: false })
  await app.ready()
  t.ok(await until(5000, async () => (await app.broker.states.get('default')).adminCheckedAt !== null))
  t.equal((await app.broker.states.get('default')).adminToken, 'unknown')
  await sim.setDown(false)
})
