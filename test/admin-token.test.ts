import t from 'tap'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { PlexTvSimulator } from '../src/sim/plextv-sim.ts'
import { loadConfig } from '../src/config/index.ts'
import { buildTestApp, makeClient, serverFor, startSim, testConfig, uniquePrefix, until } from './helper.ts'

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

t.test('a rotated token file or Preferences.xml is picked up without a restart', async (t) => {
  for (const kind of ['tokenFile', 'preferencesPath'] as const) {
    const sim = await startSim(t)
    const write = (token: string): void => writeFileSync(path, kind === 'tokenFile'
      ? `${token}\n`
      : `<?xml version="1.0" encoding="utf-8"?>\n<Preferences MachineIdentifier="x" PlexOnlineToken="${token}" PlexOnlineUsername="me"/>\n`)
    const dir = t.testdir({})
    const path = join(dir, kind === 'tokenFile' ? 'plex-token' : 'Preferences.xml')
    write(sim.adminToken)
    const a = makeClient('a')
    const b = makeClient('b')
    const server = { ...serverFor(sim), tokenSource: kind, tokenPath: path }
    const app = await buildTestApp(t, testConfig(uniquePrefix('reload'), [server], [a, b]), { defaultMetrics: false, tokenWatchIntervalMs: 50 })
    await app.ready()
    t.equal((await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })).statusCode, 200)
    // PMS is re-claimed: its token changes, and the new one lands in the file.
    sim.setAdminTokens(['token-after-reclaim'])
    write('token-after-reclaim')
    t.ok(await until(3000, async () => app.broker.servers.get('default')?.adminToken === 'token-after-reclaim'), `${kind}: reloaded`)
    const r = await app.inject({ method: 'POST', url: '/v1/tokens', headers: b.auth, payload: { server: 'default' } })
    t.equal(r.statusCode, 200, `${kind}: the new token mints`)
    t.notOk(app.logs.text.includes('token-after-reclaim'), 'the new token is not logged')
  }
})

t.test('the event stream reconnects with the admin token of a rotated token file', async (t) => {
  const sim = await startSim(t)
  const dir = t.testdir({})
  const path = join(dir, 'plex-token')
  writeFileSync(path, `${sim.adminToken}\n`)
  const first = sim.adminToken
  const server = { ...serverFor(sim), tokenSource: 'tokenFile' as const, tokenPath: path }
  const app = await buildTestApp(t, testConfig(uniquePrefix('watch'), [server], [makeClient('a')], { role: 'all' }), { defaultMetrics: false, tokenWatchIntervalMs: 50 })
  await app.ready()
  t.ok(await until(5000, async () => sim.eventStreamTokens.length === 1), 'the stream is open')
  t.equal(sim.eventStreamTokens[0], first)
  // The token rotates: PMS accepts only the new one, and the file says so.
  sim.setAdminTokens(['rotated-admin-token-0001'])
  writeFileSync(path, 'rotated-admin-token-0001\n')
  t.ok(await until(3000, async () => app.broker.servers.get('default')?.adminToken === 'rotated-admin-token-0001'), 'reloaded')
  t.equal(sim.dropEventStreams(), 1, 'the open stream is dropped')
  t.ok(await until(10_000, async () => sim.eventStreamTokens.length >= 2), 'the stream reopens')
  t.same(sim.eventStreamTokens.slice(1), ['rotated-admin-token-0001'], 'with the new token, not the one it started with')
  t.notOk(app.logs.text.includes('rotated-admin-token-0001'), 'the new token is not logged')
})

t.test('when PMS cannot tell, plex.tv decides; a valid account token is kept alive', async (t) => {
  const tv = await PlexTvSimulator.start({})
  t.teardown(() => tv.stop())
  const sim = await startSim(t, { adminTokens: [tv.accountToken] })
  await sim.setDown(true)
  const a = makeClient('a')
  const app = await buildTestApp(t, testConfig(uniquePrefix('plextv'), [serverFor(sim)], [a], { plexTvUrl: tv.url, role: 'all' }), { defaultMetrics: false })
  await app.ready()
  t.ok(await until(5000, async () => (await app.broker.states.get('default')).adminToken === 'valid'), 'plex.tv says valid')
  t.ok(tv.counters.pings >= 1, 'pinged to keep it alive')
  tv.revokeAccountToken()
  await app.broker.runner!.checkAdminTokensNow()
  t.equal((await app.broker.states.get('default')).adminToken, 'invalid', 'plex.tv 401 while PMS is down: invalid')
  await sim.setDown(false)
})

t.test('PLEX_TV_URL=off: the admin token is checked at PMS only, and nothing is asked of plex.tv', async (t) => {
  // A plex.tv that knows the token: were it asked, it would answer valid while PMS is down.
  const tv = await PlexTvSimulator.start({})
  t.teardown(() => tv.stop())
  const sim = await startSim(t, { adminTokens: [tv.accountToken] })
  const off = loadConfig({ BROKER_SECRET: Buffer.alloc(32, 1).toString('base64'), HOST: '127.0.0.1', PLEX_URL: sim.url, PLEX_TOKEN: tv.accountToken, PLEX_TV_URL: 'off' })
  t.notOk('plexTvUrl' in off, 'no plex.tv URL')
  // The test config with plex.tv taken away exactly as loadConfig does for PLEX_TV_URL=off.
  const { plexTvUrl: _, ...withoutPlexTv } = testConfig(uniquePrefix('plextv-off'), [serverFor(sim)], [makeClient('a')], { role: 'all' })
  const app = await buildTestApp(t, withoutPlexTv, { defaultMetrics: false })
  await app.ready()
  t.ok(await until(5000, async () => (await app.broker.states.get('default')).adminToken === 'valid'), 'PMS says valid')
  await sim.setDown(true)
  await app.broker.runner!.checkAdminTokensNow()
  t.equal((await app.broker.states.get('default')).adminToken, 'unknown', 'PMS down and no plex.tv: unknown, not plex.tv\'s valid')
  t.equal(tv.counters.requests, 0, 'plex.tv was never asked')
  await sim.setDown(false)
})
