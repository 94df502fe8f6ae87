import t from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import { backoffDelay, BACKOFF_CAP_MS } from '../src/jobs/queues.ts'
import { sweepInterval } from '../src/worker/runner.ts'
import { buildTestApp, makeClient, serverFor, startSim, testConfig, type TestClient, uniquePrefix, until } from './helper.ts'

// Short lifetimes, real BullMQ workers, real timers.
const FAST = { tokenLifetimeMs: 10_000, tokenRenewAfterMs: 4000, probeIntervalMs: 1000, role: 'all' as const }

async function issue (app: FastifyInstance, c: TestClient, extra: Record<string, unknown> = {}) {
  const r = await app.inject({ method: 'POST', url: '/v1/tokens', headers: c.auth, payload: { server: 'default', ...extra } })
  return { status: r.statusCode, body: r.json() }
}

async function state (app: FastifyInstance, c: TestClient, tokenId: string): Promise<string> {
  return (await app.inject({ method: 'GET', url: `/v1/tokens/${tokenId}`, headers: c.auth })).json().state
}

t.test('the retry policy the README states: 1 s doubling to a 5-minute cap, each wait between half and all of it', async (t) => {
  // Literal numbers, not the code's own constants: a changed policy must change this test and the README.
  t.equal(backoffDelay(1, () => 0), 500)
  t.equal(backoffDelay(1, () => 1), 1000)
  t.equal(backoffDelay(2, () => 0), 1000)
  t.equal(backoffDelay(2, () => 1), 2000)
  t.equal(backoffDelay(4, () => 1), 8000)
  t.equal(backoffDelay(30, () => 1), 300_000)
  t.equal(backoffDelay(30, () => 0), 150_000)
  t.equal(BACKOFF_CAP_MS, 300_000)
  t.equal(sweepInterval(24 * 3600_000), 60_000)
  t.equal(sweepInterval(4000), 1000)
})

t.test('a failing rotation is retried with growing waits (measured at PMS, breaker out of the way)', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('retrying')
  // One probe a minute: after the first, only the rotation job talks to /security/token.
  const app = await buildTestApp(t, testConfig(uniquePrefix('retry'), [serverFor(sim)], [a],
    { ...FAST, probeIntervalMs: 60_000, tokenLifetimeMs: 60_000, tokenRenewAfterMs: 1000 }))
  await app.ready()
  await issue(app, a)
  t.ok(await until(5000, async () => (await app.broker.store.peek('~canary', 'default')) !== undefined), 'first probe done')
  // 200 with an unusable body: the mint fails, but the circuit breaker does not count it.
  sim.setFault({ garbage: true })
  const attempts: number[] = []
  let seen = sim.counters.byPath['/security/token'] ?? 0
  const end = Date.now() + 9000
  while (Date.now() < end && attempts.length < 4) {
    const n = sim.counters.byPath['/security/token'] ?? 0
    if (n > seen) {
      // The PMS client may retry once at once; calls within 300 ms are one attempt.
      if (attempts.length === 0 || Date.now() - attempts[attempts.length - 1]! > 300) attempts.push(Date.now())
      seen = n
    }
    await sleep(20)
  }
  t.ok(attempts.length >= 4, `four attempts seen (${attempts.length})`)
  const gaps = attempts.slice(1).map((x, i) => x - attempts[i]!)
  t.ok(gaps[0]! >= 450, `first retry waits at least 0.5 s (${gaps[0]} ms)`)
  t.ok(gaps[1]! >= 950, `second retry waits at least 1 s (${gaps[1]} ms)`)
  t.ok(gaps[2]! >= 1950, `third retry waits at least 2 s (${gaps[2]} ms)`)
  t.ok(gaps[2]! > gaps[0]!, 'the waits grow')
  t.equal(app.broker.plex.breakerState('default'), 'closed', 'the breaker never stepped in')
  sim.setFault({})
})

t.test('a rejected admin token ends a rotation job at once (UnrecoverableError: no retry loop)', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('stuck')
  const app = await buildTestApp(t, testConfig(uniquePrefix('unrec'), [serverFor(sim)], [a],
    { ...FAST, probeIntervalMs: 60_000, tokenLifetimeMs: 60_000, tokenRenewAfterMs: 1000 }))
  await app.ready()
  const first = await issue(app, a)
  t.ok(await until(5000, async () => (await app.broker.store.peek('~canary', 'default')) !== undefined))
  sim.setAdminTokens(['another-admin-token'])
  let retried = false
  const end = Date.now() + 4000
  while (Date.now() < end) {
    const delayed = await app.broker.queues.tokens.getJobs(['delayed'])
    if (delayed.some((j) => j.name === 'rotate')) retried = true
    await sleep(50)
  }
  t.notOk(retried, 'no rotate job ever waited for a retry')
  t.ok((sim.counters.unauthorized ?? 0) >= 1, 'the rotation was attempted and PMS said 401')
  const during = await issue(app, a)
  t.equal(during.body.tokenId, first.body.tokenId, 'the live token keeps being served')
})

t.test('servers at or below 1.42.2.10156 are flagged vulnerable (CVE-2025-69414), 1.43 is not', async (t) => {
  for (const [version, vulnerable] of [['1.42.2.10156-abcdef012', true], ['1.42.1.10060-4fd5b7b2c', true], ['1.43.0.10162-aaaaaaaaa', false]] as const) {
    const sim = await startSim(t, { version })
    const ops = makeClient('ops', { scopes: ['server:read'] })
    const app = await buildTestApp(t, testConfig(uniquePrefix('cve'), [serverFor(sim)], [ops], { ...FAST }))
    await app.ready()
    t.ok(await until(5000, async () => (await app.broker.states.get('default')).version === version))
    const s = (await app.inject({ method: 'GET', url: '/v1/servers', headers: ops.auth })).json().servers[0]
    t.equal(s.vulnerable, vulnerable, `${version}: vulnerable ${vulnerable}`)
  }
})

t.test('two instances rotate each due token exactly once', async (t) => {
  const sim = await startSim(t)
  const clients = Array.from({ length: 4 }, (_, i) => makeClient(`m${i}`))
  const auditor = makeClient('auditor', { scopes: ['audit:read'] })
  const cfg = testConfig(uniquePrefix('once'), [serverFor(sim)], [...clients, auditor], { ...FAST, tokenLifetimeMs: 60_000, tokenRenewAfterMs: 2000 })
  const one = await buildTestApp(t, cfg)
  const two = await buildTestApp(t, { ...cfg })
  await Promise.all([one.ready(), two.ready()])
  for (const c of clients) await issue(c.id.endsWith('1') ? two : one, c)
  const end = Date.now() + 6000
  while (Date.now() < end) {
    // Keep them active from both instances.
    for (const c of clients) await issue(Math.random() < 0.5 ? one : two, c)
    await sleep(250)
  }
  const events = (await one.inject({ method: 'GET', url: '/v1/audit?action=token.rotate&limit=1000', headers: auditor.auth })).json().events
  const previous = events.filter((e: { detail: { reason: string } }) => e.detail.reason === 'scheduled').map((e: { detail: { previous: string } }) => e.detail.previous)
  t.ok(previous.length >= clients.length, `rotations happened (${previous.length})`)
  t.equal(new Set(previous).size, previous.length, 'no token was rotated twice')
})

t.test('an active client\'s token is rotated in the background and no served token is ever dead', async (t) => {
  const sim = await startSim(t, { tokenLifetimeMs: FAST.tokenLifetimeMs })
  const a = makeClient('rotating')
  const auditor = makeClient('auditor', { scopes: ['audit:read'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('rot'), [serverFor(sim)], [a, auditor], FAST))

  const first = await issue(app, a)
  t.equal(first.status, 200)
  const renewIn = Date.parse(first.body.renewAt) - Date.parse(first.body.issuedAt)
  t.ok(renewIn <= 4000 && renewIn >= 3600, `renewAt is TOKEN_RENEW_AFTER minus up to 10% jitter (${renewIn} ms)`)

  const seen = new Set<string>()
  let dead = 0
  const end = Date.now() + 15_000
  while (Date.now() < end) {
    const r = await issue(app, a)
    t.equal(r.status, 200)
    seen.add(r.body.tokenId)
    if (!sim.isTokenValid(r.body.token)) dead++
    await sleep(300)
  }
  t.equal(dead, 0, 'not one returned token was rejected by PMS')
  t.ok(seen.size >= 3, `rotated in the background (${seen.size} tokens in 15 s)`)
  t.equal(await state(app, a, first.body.tokenId), 'expired', 'the first token has passed its lifetime')
  const ids = [...seen]
  t.equal(await state(app, a, ids[ids.length - 2]!), 'rotated', 'the previous token shows rotated')

  const events = (await app.inject({ method: 'GET', url: '/v1/audit?action=token.rotate&client=rotating', headers: auditor.auth })).json().events
  t.ok(events.length >= 2, 'each rotation is audited')
  t.match(events[0], { client: 'rotating', server: 'default', tokenId: /^tk_/, fingerprint: /^[0-9a-f]{16,}$/, detail: { reason: 'scheduled' } })
})

t.test('an idle client\'s token is not renewed forever', async (t) => {
  const sim = await startSim(t, { tokenLifetimeMs: 3000 })
  const a = makeClient('idle')
  const app = await buildTestApp(t, testConfig(uniquePrefix('rot'), [serverFor(sim)], [a],
    { ...FAST, tokenLifetimeMs: 3000, tokenRenewAfterMs: 1000 }))
  const first = await issue(app, a)
  await sleep(7000)
  const store = app.broker.store
  t.equal(await store.peek('idle', 'default'), undefined, 'after a lifetime without asking, nothing is kept alive')
  const { rc } = app.broker
  const rotated = await rc.call(() => rc.redis.xrange(rc.keys.audit, '-', '+'))
  const rotations = rotated.filter(([, f]) => f.includes('token.rotate') && f.includes('idle'))
  // Active for one lifetime (3 s) after its last request, renewed each 1 s at most: ≤ 3 rotations, then none.
  t.ok(rotations.length <= 3, `rotated only while still active (${rotations.length})`)
  t.not((await issue(app, a)).body.tokenId, first.body.tokenId)
})

t.test('a PMS restart is detected and active clients hold valid tokens within the probe interval + 3 s', async (t) => {
  const sim = await startSim(t)
  const clients = ['r1', 'r2', 'r3', 'r4', 'r5'].map((id) => makeClient(id))
  const auditor = makeClient('auditor', { scopes: ['audit:read', 'server:read'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('restart'), [serverFor(sim)], [...clients, auditor],
    { ...FAST, tokenLifetimeMs: 60_000, tokenRenewAfterMs: 30_000 }))
  const before = new Map<string, string>()
  for (const c of clients) before.set(c.id, (await issue(app, c)).body.tokenId)
  // Let the first probes record the identity and mint the canary.
  t.ok(await until(5000, async () => (await app.broker.states.get('default')).state === 'up'), 'server probed up')
  await until(3000, async () => await app.broker.store.peek('~canary', 'default') !== undefined)

  await sim.restart({ downForMs: 1500 })
  const back = Date.now()
  const store = app.broker.store
  const allValid = async (): Promise<boolean> => {
    for (const c of clients) {
      const id = await store.peek(c.id, 'default')
      if (id === undefined || id === before.get(c.id)) return false
      const token = await store.reveal(id)
      if (token === undefined || !sim.isTokenValid(token)) return false
    }
    return true
  }
  const took = await until(FAST.probeIntervalMs + 3000, allValid)
  t.ok(took, `every active client holds a token PMS accepts ${Date.now() - back} ms after PMS answered again`)
  for (const c of clients) t.equal(await state(app, c, before.get(c.id)!), 'invalidated', `${c.id}'s old token shows invalidated`)
  const audit = await app.inject({ method: 'GET', url: '/v1/audit?action=server.restart', headers: auditor.auth })
  t.equal(audit.json().events.length, 1, 'one server.restart event')
  const servers = await app.inject({ method: 'GET', url: '/v1/servers', headers: auditor.auth })
  t.ok(servers.json().servers[0].lastRestartAt !== null)
})

t.test('rejectedTokenId: a fresh token for a dead one, the same token for a live one', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('reporter')
  // API role only: no probes, so only the client's report can notice the restart.
  const app = await buildTestApp(t, testConfig(uniquePrefix('reject'), [serverFor(sim)], [a]))
  const live = await issue(app, a)
  const mints = sim.counters.mints
  const again = await issue(app, a, { rejectedTokenId: live.body.tokenId })
  t.equal(again.status, 200)
  t.equal(again.body.tokenId, live.body.tokenId, 'PMS still accepts it: same token')
  t.equal(sim.counters.mints, mints, 'a client cannot force a mint')
  const reports = await Promise.all(Array.from({ length: 5 }, () => issue(app, a, { rejectedTokenId: live.body.tokenId })))
  t.same(new Set(reports.map((r) => r.body.tokenId)), new Set([live.body.tokenId]))

  await sim.restart()
  // No "still valid" verdict outlives its check: the report right after the restart is checked anew.
  const fresh = await issue(app, a, { rejectedTokenId: live.body.tokenId })
  t.equal(fresh.status, 200)
  t.not(fresh.body.tokenId, live.body.tokenId, 'dead token replaced')
  t.ok(sim.isTokenValid(fresh.body.token))
  t.equal(await state(app, a, live.body.tokenId), 'invalidated')
  const probe = await app.broker.queues.probes.getJobs(['waiting', 'delayed', 'prioritized'])
  t.ok(probe.some((j) => j.name === 'probe' && j.data.trigger === 'rejection'), 'a restart check of the server was queued')

  const other = await issue(app, a, { rejectedTokenId: 'tk_AAAAAAAAAAAAAAAAAAAAAA' })
  t.equal(other.status, 404, 'an unknown token id is a 404')
})

t.test('a token PMS kills right after a "still valid" check is replaced on the next report, at once', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('signout')
  const app = await buildTestApp(t, testConfig(uniquePrefix('killed'), [serverFor(sim)], [a]))
  const live = await issue(app, a)
  const same = await issue(app, a, { rejectedTokenId: live.body.tokenId })
  t.equal(same.body.tokenId, live.body.tokenId, 'PMS accepts it: the same token back')
  // A sign-out of the device (or a restart) kills the token at PMS between two reports.
  t.ok(sim.killToken(live.body.token))
  const fresh = await issue(app, a, { rejectedTokenId: live.body.tokenId })
  t.equal(fresh.status, 200)
  t.not(fresh.body.tokenId, live.body.tokenId, 'not the dead token again')
  t.ok(sim.isTokenValid(fresh.body.token), 'the new token works at PMS')
  const info = (await app.inject({ method: 'GET', url: `/v1/tokens/${live.body.tokenId}`, headers: a.auth })).json()
  t.equal(info.state, 'invalidated')
  t.equal(info.reason, 'rejected_by_pms')
  t.ok(Math.abs(Date.parse(info.invalidatedAt) - Date.now()) < 60_000, 'invalidatedAt is when it happened')
})

t.test('concurrent reports of one live token cost PMS one check', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('herd')
  const app = await buildTestApp(t, testConfig(uniquePrefix('herdcheck'), [serverFor(sim)], [a]))
  const live = await issue(app, a)
  sim.resetCounters()
  const reports = await Promise.all(Array.from({ length: 20 }, () => issue(app, a, { rejectedTokenId: live.body.tokenId })))
  t.same(new Set(reports.map((r) => r.status)), new Set([200]))
  t.same(new Set(reports.map((r) => r.body.tokenId)), new Set([live.body.tokenId]))
  t.equal(sim.counters.requests, 1, 'one canary check at PMS for twenty concurrent reports')
  t.equal(sim.counters.mints, 0)
})

t.test('PMS failing: rotation backs off instead of looping, and recovers when PMS returns', async (t) => {
  const sim = await startSim(t, { tokenLifetimeMs: 20_000 })
  const a = makeClient('patient')
  const app = await buildTestApp(t, testConfig(uniquePrefix('backoff'), [serverFor(sim)], [a],
    { ...FAST, tokenLifetimeMs: 20_000, tokenRenewAfterMs: 2000 }))
  const first = await issue(app, a)
  await until(3000, async () => (await app.broker.states.get('default')).state === 'up')
  sim.setFault({ status: 503 })
  sim.resetCounters()
  await sleep(6000)
  const requests = sim.counters.requests
  // Per second: one probe (/identity), a few rotation retries with growing waits, event stream reconnects.
  t.ok(requests <= 30, `no tight loop: ${requests} requests to a failing PMS in 6 s`)
  t.ok((sim.counters.byPath['/security/token'] ?? 0) >= 1, 'rotation was attempted')
  const during = await issue(app, a)
  t.equal(during.body.tokenId, first.body.tokenId, 'the live token is still served while rotation fails')
  sim.setFault({})
  t.ok(await until(15_000, async () => (await issue(app, a)).body.tokenId !== first.body.tokenId), 'rotation succeeds once PMS answers')
})

t.test('two broker instances run each probe once per period in total', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('shared')
  const prefix = uniquePrefix('multi')
  const cfg = testConfig(prefix, [serverFor(sim)], [a], { ...FAST, tokenLifetimeMs: 60_000, tokenRenewAfterMs: 30_000 })
  const one = await buildTestApp(t, cfg)
  const two = await buildTestApp(t, { ...cfg })
  await Promise.all([one.ready(), two.ready()])
  await issue(one, a)
  await sleep(2000)
  sim.resetCounters()
  await sleep(5000)
  const identity = sim.counters.byPath['/identity'] ?? 0
  // Two instances each probing would make about ten; the exact rate is the benchmark's business.
  t.ok(identity >= 1 && identity <= 7, `about one /identity probe per second in total, not per instance (${identity} in 5 s)`)
  const schedulers = await one.broker.queues.schedulers()
  t.equal(schedulers.filter((s) => s.key === 'probe.default').length, 1, 'one probe scheduler')
  t.equal(schedulers.filter((s) => s.key === 'sweep.rotations').length, 1, 'one sweep scheduler for both instances: one sweep per period')
})
