import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { setTimeout as sleep } from 'node:timers/promises'
import { buildTestApp, makeClient, serverFor, startSim, type T, testConfig, type TestClient, uniquePrefix, until } from './helper.ts'

// Each restart signal on its own: a broker that ignored any one of them would fail here, because
// the simulator changes only that signal (tokens, canary and the other fields stay as they were).

const OPS = makeClient('ops', { scopes: ['audit:read'] })

async function setup (t: T & { ok: (v: unknown, m: string) => boolean }, probeIntervalMs: number) {
  const sim = await startSim(t)
  const a = makeClient('a')
  const app = await buildTestApp(t, testConfig(uniquePrefix('signals'), [serverFor(sim)], [a, OPS],
    { role: 'all', probeIntervalMs, tokenLifetimeMs: 60_000, tokenRenewAfterMs: 30_000 }))
  await app.ready()
  const first = (await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })).json()
  // The first probe records the identity and mints the canary.
  t.ok(await until(5000, async () => (await app.broker.states.get('default')).version !== null &&
    (await app.broker.store.peek('~canary', 'default')) !== undefined), 'identity recorded, canary minted')
  return { sim, a, app, first }
}

async function restartReasons (app: FastifyInstance): Promise<string[][]> {
  const events = (await app.inject({ method: 'GET', url: '/v1/audit?action=server.restart', headers: OPS.auth })).json().events
  return events.map((e: { detail: { reasons: string[] } }) => e.detail.reasons)
}

async function stateOf (app: FastifyInstance, c: TestClient, tokenId: string): Promise<string> {
  return (await app.inject({ method: 'GET', url: `/v1/tokens/${tokenId}`, headers: c.auth })).json().state
}

t.test('a new version alone (tokens still valid at PMS) is a restart', async (t) => {
  const { sim, a, app, first } = await setup(t, 500)
  sim.setIdentity({ version: '1.43.1.10000-bbbbbbbbb' })
  t.ok(await until(5000, async () => (await restartReasons(app)).length > 0), 'restart detected')
  t.same(await restartReasons(app), [['version_changed']], 'from the version comparison, not the canary')
  t.equal(await stateOf(app, a, first.tokenId), 'invalidated')
  t.ok(sim.isTokenValid(first.token), 'the simulator kept the token: only the version said restart')
})

t.test('a new machineIdentifier alone is a restart', async (t) => {
  const { sim, app } = await setup(t, 500)
  sim.setIdentity({ machineIdentifier: 'f'.repeat(40) })
  t.ok(await until(5000, async () => (await restartReasons(app)).length > 0))
  t.same(await restartReasons(app), [['machine_identifier_changed']])
})

t.test('a rejected canary alone (same identity) is a restart', async (t) => {
  const { sim, a, app, first } = await setup(t, 500)
  const canary = await app.broker.store.reveal((await app.broker.store.peek('~canary', 'default'))!)
  t.ok(sim.killToken(canary!), 'only the canary dies')
  t.ok(await until(5000, async () => (await restartReasons(app)).length > 0))
  t.same(await restartReasons(app), [['canary_rejected']])
  t.equal(await stateOf(app, a, first.tokenId), 'invalidated')
})

t.test('a dropped notification stream triggers a probe at once, long before the next period', async (t) => {
  // A probe period of a minute: only the stream drop can make the broker look within seconds.
  const { sim, app, a, first } = await setup(t, 60_000)
  t.ok(await until(5000, async () => sim.eventStreams > 0), 'the broker holds a notification stream')
  await sim.restart()
  t.ok(await until(5000, async () => (await restartReasons(app)).length > 0), 'restart detected through the stream drop')
  t.equal(await stateOf(app, a, first.tokenId), 'invalidated')
})

t.test('a stream drop alone (no restart) is checked and changes nothing', async (t) => {
  const { sim, app, a, first } = await setup(t, 60_000)
  t.ok(await until(5000, async () => sim.eventStreams > 0))
  const probes = sim.counters.identity
  t.equal(sim.dropEventStreams(), 1)
  t.ok(await until(5000, async () => sim.counters.identity > probes), 'the drop made the broker probe at once')
  t.ok(await until(5000, async () => sim.eventStreams > 0), 'and reconnect the stream')
  t.same(await restartReasons(app), [], 'no restart: canary and identity unchanged')
  t.equal(await stateOf(app, a, first.tokenId), 'active')
})

t.test('an outage that is not a restart invalidates nothing', async (t) => {
  const { sim, app, a, first } = await setup(t, 300)
  await sim.setDown(true)
  t.ok(await until(5000, async () => (await app.broker.states.get('default')).state === 'down'), 'seen down')
  await sim.setDown(false)
  t.ok(await until(5000, async () => (await app.broker.states.get('default')).state === 'up'), 'seen up again')
  await sleep(1000)
  t.same(await restartReasons(app), [], 'no restart recorded')
  t.equal(await stateOf(app, a, first.tokenId), 'active')
  const again = (await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })).json()
  t.equal(again.tokenId, first.tokenId, 'the same token is served: PMS still honours it')
  t.ok(sim.isTokenValid(again.token))
})
