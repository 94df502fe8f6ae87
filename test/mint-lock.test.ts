import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { TokenIssuer } from '../src/broker/issuer.ts'
import { buildTestApp, makeClient, serverFor, startSim, testConfig, uniquePrefix } from './helper.ts'

/** An issuer of this app (its store, PMS client and Redis) with a short mint lock, as a slow mint sees it. */
function issuerOf (app: FastifyInstance, lockTtlMs: number): TokenIssuer {
  const { broker } = app
  return new TokenIssuer({
    store: broker.store,
    rc: broker.rc,
    locks: broker.locks,
    clock: broker.clock,
    plex: broker.plex,
    states: broker.states,
    adminHealth: broker.adminHealth,
    metrics: broker.metrics,
    logger: broker.logger,
    tokenLifetimeMs: broker.config.tokenLifetimeMs,
    tokenRenewAfterMs: broker.config.tokenRenewAfterMs,
    mintWaitMs: 10_000,
    lockTtlMs,
  })
}

t.test('a mint that outlasts the lock TTL is still the only mint across two instances', async (t) => {
  // Every PMS call takes 400 ms: the machineIdentifier lookup plus the mint take ~800 ms, four
  // times the 200 ms lock TTL. Without renewal the other instance would take the lapsed lock and mint again.
  const sim = await startSim(t, { latencyMs: 400 })
  const a = makeClient('a')
  const cfg = testConfig(uniquePrefix('mintlock'), [serverFor(sim)], [a], { plexTimeoutMs: 2000 })
  const app1 = await buildTestApp(t, cfg, { defaultMetrics: false })
  const app2 = await buildTestApp(t, { ...cfg }, { defaultMetrics: false })
  const [one, two] = [issuerOf(app1, 200), issuerOf(app2, 200)]
  const server = app1.broker.servers.get('default')!
  const ctx = { requestId: 'r', ip: '127.0.0.1' }
  const started = Date.now()
  const got = await Promise.all([
    one.issue('a', server, ctx),
    two.issue('a', server, ctx),
    // A second wave on the second instance while the first mint is past its lock TTL.
    new Promise((resolve) => setTimeout(resolve, 450)).then(async () => await two.issue('a', server, ctx)),
  ])
  t.ok(Date.now() - started > 600, 'the mint really took longer than the lock TTL')
  t.equal(sim.counters.mints, 1, 'exactly one mint at PMS')
  t.equal(new Set(got.map((g) => g.tokenId)).size, 1, 'every request got the same token')
  t.equal(got.filter((g) => g.source === 'upstream').length, 1)
  t.equal(await app1.broker.connections.cache.exists(app1.broker.keys.mintLock('a', 'default')), 0, 'the lock is released after the mint')
})
