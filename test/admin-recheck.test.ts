import t from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import type { FastifyInstance } from 'fastify'
import { ADMIN_RECHECK_MAX_MS, recheckStartMs } from '../src/broker/admin-token-health.ts'
import { createKeys } from '../src/broker/keys.ts'
import type { PmsSimulator } from '../src/sim/pms-sim.ts'
import { buildTestApp, makeClient, REDIS_URL, serverFor, startSim, type TestClient, testConfig, uniquePrefix, until } from './helper.ts'

// PMS answers 401 to an account (admin) token while it cannot reach plex.tv (right after a
// restart, during an internet outage). The broker must notice when PMS accepts it again, without
// sending PMS more than one admin-token call per recheck interval from the whole fleet.

/** PLEX_PROBE_INTERVAL in these tests: the recheck interval starts at 2 s (then 4 s, 8 s …). */
const PROBE_MS = 2000
/** How long PMS rejects the admin token. */
const OUTAGE_MS = 5000

interface Outcome { at: number, status: number, code?: string, message?: string }

/** Clients asking for a token in a loop (each every ~50 ms) until stopped. */
function hammer (app: FastifyInstance, clients: TestClient[]): { results: Map<string, Outcome[]>, stop: () => Promise<void> } {
  const results = new Map<string, Outcome[]>(clients.map((c) => [c.id, []]))
  let running = true
  const loops = clients.map(async (c) => {
    while (running) {
      const r = await app.inject({ method: 'POST', url: '/v1/tokens', headers: c.auth, payload: { server: 'default' } })
      const body = r.json()
      results.get(c.id)!.push({ at: Date.now(), status: r.statusCode, code: body.code, message: body.message })
      await sleep(40 + Math.random() * 20)
    }
  })
  return { results, stop: async () => { running = false; await Promise.all(loops) } }
}

/** Records when PMS saw each admin-token call (polls the simulator's counter every 10 ms). */
function watchAdminCalls (sim: PmsSimulator): { times: number[], stop: () => void } {
  const times: number[] = []
  let seen = sim.counters.adminCalls
  const timer = setInterval(() => {
    const now = sim.counters.adminCalls
    for (; seen < now; seen++) times.push(Date.now())
  }, 10)
  return { times, stop: () => clearInterval(timer) }
}

/** Milliseconds from `since` until every client has had a 200 after it (Infinity if one has not). */
function recoveredAfter (results: Map<string, Outcome[]>, since: number): number {
  let worst = 0
  for (const outcomes of results.values()) {
    const ok = outcomes.find((o) => o.at >= since && o.status === 200)
    if (ok === undefined) return Infinity
    worst = Math.max(worst, ok.at - since)
  }
  return worst
}

/**
 * Clients keep asking while PMS rejects the admin token until OUTAGE_MS after `outageStart`; then
 * PMS accepts it again. Returns the load's outcomes, the admin-token calls PMS saw during the
 * outage, when it was restored and how long every client took to get a token after that.
 */
async function rideOutage (t: { teardown: (fn: () => unknown) => void, ok: (v: unknown, m: string) => boolean }, app: FastifyInstance,
  sim: PmsSimulator, clients: TestClient[], calls: { times: number[], stop: () => void }, admin: string, outageStart: number) {
  const load = hammer(app, clients)
  t.teardown(load.stop)
  await sleep(OUTAGE_MS - (Date.now() - outageStart))
  const outageCalls = calls.times.length
  sim.setAdminTokens([admin])
  const restoredAt = Date.now()
  t.ok(await until(PROBE_MS + 5000, allRecovered(load.results, restoredAt)), 'every client gets a token again')
  await load.stop()
  calls.stop()
  return { load, outageCalls, restoredAt, recovery: recoveredAfter(load.results, restoredAt) }
}

const allRecovered = (results: Map<string, Outcome[]>, since: number) => async () => recoveredAfter(results, since) !== Infinity

t.test('recheckStartMs: the probe interval, at most 5 s', async (t) => {
  t.equal(recheckStartMs(15_000), 5000, 'the default 15 s probe interval starts at 5 s')
  t.equal(recheckStartMs(2000), 2000)
  t.equal(recheckStartMs(10), 100, 'never below 100 ms')
  t.equal(ADMIN_RECHECK_MAX_MS, 60_000)
})

t.test('PMS rejects the admin token for 5 s: fast 502s, no 401 storm, tokens again within a probe interval + 1 s, audited', async (t) => {
  const sim = await startSim(t)
  const admin = sim.adminToken
  const first = makeClient('first')
  const clients = ['c1', 'c2', 'c3', 'c4', 'c5', 'c6'].map((id) => makeClient(id))
  const ops = makeClient('ops', { scopes: ['server:read', 'audit:read'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('recheck'), [serverFor(sim)], [first, ...clients, ops],
    { role: 'all', probeIntervalMs: PROBE_MS }), { defaultMetrics: false })
  await app.ready()
  t.ok(await until(5000, async () => (await app.broker.states.get('default')).adminToken === 'valid'), 'checked at boot: valid')
  await sleep(300)

  // PMS lost plex.tv: it refuses the admin token.
  const calls = watchAdminCalls(sim)
  const outageStart = Date.now()
  sim.setAdminTokens(['only-plex-tv-could-say'])
  const r = await app.inject({ method: 'POST', url: '/v1/tokens', headers: first.auth, payload: { server: 'default' } })
  t.equal(r.statusCode, 502, 'a mint during the outage fails')
  t.equal(r.json().code, 'UPSTREAM_REJECTED')
  t.match(r.json().message, /rechecks it.*ptb login/s, 'with advice')
  t.equal((await app.broker.states.get('default')).adminToken, 'invalid', 'the verdict is recorded before the 502 is sent')

  const { load, outageCalls, restoredAt, recovery } = await rideOutage(t, app, sim, clients, calls, admin, outageStart)
  t.comment(`recovery ${recovery} ms after PMS accepted the token; ${outageCalls} admin-token calls during the ${OUTAGE_MS} ms outage`)
  t.ok(recovery <= PROBE_MS + 1000 + 500, `recovered within one probe interval + 1 s (+0.5 s margin): ${recovery} ms`)

  const during = [...load.results.values()].flat().filter((o) => o.at < restoredAt)
  t.ok(during.length >= 100, `clients kept asking during the outage (${during.length} requests)`)
  t.ok(during.every((o) => o.status === 502 && o.code === 'UPSTREAM_REJECTED'), 'every one of them got 502 UPSTREAM_REJECTED')
  // One 401 that revealed the rejection, then rechecks at +2 s and +6 s (after the restore).
  t.ok(outageCalls >= 2 && outageCalls <= 3, `PMS saw a handful of admin-token calls during the outage, not a storm: ${outageCalls}`)

  const events = (await app.inject({ method: 'GET', url: '/v1/audit?action=server.admin_token', headers: ops.auth })).json().events
  t.match(events[0], { server: 'default', detail: { state: 'valid', previous: 'invalid', reason: 'recheck' } }, 'the way back to valid is audited')
  t.match(events[1], { server: 'default', detail: { state: 'invalid', previous: 'valid', reason: 'mint_rejected' } })
  const servers = (await app.inject({ method: 'GET', url: '/v1/servers', headers: ops.auth })).json().servers
  t.equal(servers[0].adminToken.state, 'valid')
  t.notOk(app.logs.text.includes(admin), 'the admin token is never logged')
})

t.test('a fleet of two instances still rechecks at most once per interval', async (t) => {
  const sim = await startSim(t)
  const admin = sim.adminToken
  const prefix = uniquePrefix('recheck-fleet')
  const mine = [makeClient('a1'), makeClient('a2'), makeClient('a3'), makeClient('a4')]
  const theirs = [makeClient('b1'), makeClient('b2'), makeClient('b3'), makeClient('b4')]
  const all = [...mine, ...theirs]
  const cfg = testConfig(prefix, [serverFor(sim)], all, { role: 'all', probeIntervalMs: PROBE_MS })
  const one = await buildTestApp(t, cfg, { defaultMetrics: false })
  const two = await buildTestApp(t, cfg, { defaultMetrics: false })
  await Promise.all([one.ready(), two.ready()])
  t.ok(await until(5000, async () => (await one.broker.states.get('default')).adminToken === 'valid'))
  await sleep(300)

  const calls = watchAdminCalls(sim)
  sim.setAdminTokens(['only-plex-tv-could-say'])
  const loadOne = hammer(one, mine)
  const loadTwo = hammer(two, theirs)
  t.teardown(async () => { await loadOne.stop(); await loadTwo.stop() })
  const outageLong = 7000
  await sleep(outageLong)
  const outageCalls = [...calls.times]
  sim.setAdminTokens([admin])
  const restoredAt = Date.now()
  t.ok(await until(10_000, async () => (await allRecovered(loadOne.results, restoredAt)()) && (await allRecovered(loadTwo.results, restoredAt)())),
    'the clients of both instances get tokens again')
  await loadOne.stop()
  await loadTwo.stop()
  calls.stop()

  const asked = [...loadOne.results.values(), ...loadTwo.results.values()].flat().filter((o) => o.at < restoredAt).length
  t.comment(`${asked} client requests on two instances; PMS saw admin-token calls at +${outageCalls.map((x) => x - outageCalls[0]!).join(' ms, +')} ms`)
  t.ok(asked >= 200, 'both instances were busy')
  // The clients started together, so the mints already on their way when PMS first said 401
  // reach it (one per client at most): that burst is how the rejection becomes known.
  const burst = outageCalls.filter((x) => x - outageCalls[0]! < 500)
  t.ok(burst.length <= all.length, `discovery: at most one 401 per client that was minting (${burst.length})`)
  // From then on: rechecks 2 s and 4 s apart (at +2 s, +6 s), whoever of the two instances makes them.
  const rechecks = outageCalls.slice(burst.length)
  t.ok(rechecks.length >= 1 && rechecks.length <= 2, `then at most one call per interval from the fleet: ${rechecks.length}`)
  let previous = burst.at(-1)!
  for (const [i, at] of rechecks.entries()) {
    t.ok(at - previous >= PROBE_MS * 0.9, `recheck ${i + 1} came ${at - previous} ms after the previous call`)
    previous = at
  }
})

t.test('an API-only instance (no job runner) recovers by itself', async (t) => {
  const sim = await startSim(t)
  const admin = sim.adminToken
  const first = makeClient('first')
  const clients = [makeClient('c1'), makeClient('c2'), makeClient('c3')]
  const app = await buildTestApp(t, testConfig(uniquePrefix('recheck-api'), [serverFor(sim)], [first, ...clients],
    { role: 'api', probeIntervalMs: PROBE_MS }), { defaultMetrics: false })
  await app.ready()
  t.equal(app.broker.runner, undefined, 'no job runner')

  const calls = watchAdminCalls(sim)
  sim.setAdminTokens(['only-plex-tv-could-say'])
  const outageStart = Date.now()
  t.equal((await app.inject({ method: 'POST', url: '/v1/tokens', headers: first.auth, payload: { server: 'default' } })).statusCode, 502)
  const { outageCalls, recovery } = await rideOutage(t, app, sim, clients, calls, admin, outageStart)
  t.comment(`recovery ${recovery} ms; ${outageCalls} admin-token calls during the outage`)
  t.ok(recovery <= PROBE_MS + 1000 + 500, `recovered within one probe interval + 1 s (+0.5 s margin): ${recovery} ms`)
  t.ok(outageCalls >= 2 && outageCalls <= 3, `no 401 storm: ${outageCalls}`)
  t.equal((await app.broker.states.get('default')).adminToken, 'valid')
  t.equal((await app.inject({ method: 'POST', url: '/v1/tokens', headers: first.auth, payload: { server: 'default' } })).statusCode, 200)
})

t.test('without any client asking, the worker\'s probe recheck unblocks the token', async (t) => {
  const sim = await startSim(t)
  const admin = sim.adminToken
  const a = makeClient('a')
  const app = await buildTestApp(t, testConfig(uniquePrefix('recheck-idle'), [serverFor(sim)], [a], { role: 'all', probeIntervalMs: 1000 }), { defaultMetrics: false })
  await app.ready()
  t.ok(await until(5000, async () => (await app.broker.states.get('default')).adminToken === 'valid'))
  sim.setAdminTokens(['only-plex-tv-could-say'])
  t.equal((await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })).statusCode, 502)
  t.equal((await app.broker.states.get('default')).adminToken, 'invalid')
  sim.setAdminTokens([admin])
  const restoredAt = Date.now()
  // The first recheck is due 1 s after the 401; the next probe (every 1 s) makes it.
  t.ok(await until(4000, async () => (await app.broker.states.get('default')).adminToken === 'valid'), 'valid again with no client traffic')
  t.comment(`valid ${Date.now() - restoredAt} ms after PMS accepted the token`)
  t.equal((await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })).statusCode, 200)
})

t.test('the backoff lives in Redis next to the verdict: doubles, stops at 1 min, resets when the token is accepted', async (t) => {
  const sim = await startSim(t)
  const admin = sim.adminToken
  const a = makeClient('a')
  const b = makeClient('b')
  const prefix = uniquePrefix('recheck-backoff')
  const keys = createKeys(prefix)
  const redis = new Redis(REDIS_URL)
  t.teardown(() => redis.disconnect())
  const app = await buildTestApp(t, testConfig(prefix, [serverFor(sim)], [a, b], { role: 'api', probeIntervalMs: 200 }), { defaultMetrics: false })
  await app.ready()
  const ask = async (c = a): Promise<number> => (await app.inject({ method: 'POST', url: '/v1/tokens', headers: c.auth, payload: { server: 'default' } })).statusCode
  const interval = async (): Promise<string | null> => await redis.hget(keys.server('default'), 'adminRecheckMs')

  sim.setAdminTokens(['only-plex-tv-could-say'])
  t.equal(await ask(), 502)
  t.equal(await interval(), '200', 'starts at the probe interval')
  t.ok(await redis.pttl(keys.adminRecheck('default')) > 0, 'the 401 just seen holds the recheck lock')
  const seen = new Set<string>()
  const end = Date.now() + 2000
  while (Date.now() < end) {
    t.equal(await ask(), 502)
    seen.add(String(await interval()))
    await sleep(25)
  }
  t.same([...seen].filter((v) => ['400', '800', '1600'].includes(v)).sort(), ['1600', '400', '800'], `doubled: ${[...seen].join(', ')}`)

  // Far into an outage: the interval stops at 1 min.
  await redis.hset(keys.server('default'), 'adminRecheckMs', 40_000)
  await redis.del(keys.adminRecheck('default'))
  t.equal(await ask(), 502)
  t.equal(await interval(), '60000', 'capped at 1 min')
  const ttl = await redis.pttl(keys.adminRecheck('default'))
  t.ok(ttl > 55_000 && ttl <= 60_000, `the fleet waits the whole minute: ${ttl} ms`)

  // PMS accepts it again; the lock is still held for a minute, so requests keep failing fast…
  sim.setAdminTokens([admin])
  const before = sim.counters.adminCalls
  t.equal(await ask(), 502)
  t.equal(sim.counters.adminCalls, before, 'not asking PMS before the interval is over')
  // …until the interval ends.
  await redis.del(keys.adminRecheck('default'))
  t.equal(await ask(), 200, 'the recheck lets the mint through')
  t.equal(await interval(), null, 'backoff reset')
  t.equal(await redis.exists(keys.adminRecheck('default')), 0, 'lock cleared')

  // A new rejection starts again from the start interval.
  sim.setAdminTokens(['only-plex-tv-could-say'])
  t.equal(await ask(b), 502)
  t.equal(await interval(), '200', 'starts afresh')
  sim.setAdminTokens([admin])
})
