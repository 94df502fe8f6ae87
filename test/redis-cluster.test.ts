import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { buildApp } from '../src/app.ts'
import { keySlot } from '../src/redis.ts'
import { buildTestApp, LogCapture, makeClient, serverFor, startSim, testConfig, type TestClient, uniquePrefix, until } from './helper.ts'
import { startCluster } from './redis-topology.ts'
import { createTokenSource, type TokenChange } from '../src/client/index.ts'

// Redis Cluster (README, *Cluster*): three primaries on loopback, joined with `redis-cli --cluster
// create`. The whole acceptance path runs on it: issue, cache hit, rotation by the workers, PMS
// restart recovery, broker restart, revoke, audit and trace. Every key of the deployment carries
// the `{prefix}` hash tag, so it lives in one slot on one node.

async function issue (app: FastifyInstance, c: TestClient) {
  const r = await app.inject({ method: 'POST', url: '/v1/tokens', headers: c.auth, payload: { server: 'default' } })
  return { status: r.statusCode, body: r.json() }
}

t.test('the acceptance path on a three-primary Redis Cluster', async (t) => {
  const cluster = await startCluster(t)
  const sim = await startSim(t)
  const clients = ['a', 'b', 'c'].map((id) => makeClient(id))
  const ops = makeClient('ops', { scopes: ['token:revoke', 'audit:read', 'server:read', 'server:rotate'] })
  const prefix = uniquePrefix('cluster')
  const config = testConfig(prefix, [serverFor(sim)], [...clients, ops], {
    role: 'all',
    probeIntervalMs: 1000,
    tokenLifetimeMs: 60_000,
    tokenRenewAfterMs: 30_000,
    redisUrl: cluster.url,
    redisCluster: { nodes: cluster.nodes.slice(1).map((n) => ({ host: '127.0.0.1', port: n.port })) },
    // No replicas in this cluster: every WAIT (sent to the slot's node) comes up short, and is counted.
    redisWaitReplicas: 1,
    redisWaitTimeoutMs: 10,
  })
  const app = await buildTestApp(t, config, { defaultMetrics: false })
  await app.ready()

  const ready = await app.inject('/readyz')
  t.equal(ready.statusCode, 200, ready.body)
  const slot = keySlot(`{${prefix}}`)
  const owner = cluster.nodes.find((n) => ready.json().redis.address === n.address)
  t.match(ready.json().redis, { mode: 'cluster', role: 'primary' }, 'readiness names the mode')
  t.ok(owner !== undefined, `readiness names the node serving the slot: ${ready.json().redis.address}`)

  // Issue and cache hits.
  const first = new Map<string, { tokenId: string, token: string }>()
  for (const c of clients) {
    const r = await issue(app, c)
    t.equal(r.status, 200, JSON.stringify(r.body))
    t.ok(sim.isTokenValid(r.body.token), `${c.id}: valid at PMS`)
    first.set(c.id, r.body)
    t.equal((await issue(app, c)).body.tokenId, r.body.tokenId, `${c.id}: then served from the cache`)
  }

  // Every key of the deployment is in one slot, on the node readiness named; no other node has any.
  const direct = owner!.client()
  t.teardown(() => direct.disconnect())
  const keys = await direct.call('CLUSTER', 'GETKEYSINSLOT', slot, 1000) as string[]
  t.ok(keys.length > 10 && keys.every((k) => k.startsWith(`{${prefix}}:`)), `${keys.length} keys under {${prefix}}, one slot`)
  t.ok(keys.some((k) => k.startsWith(`{${prefix}}:q:`)), 'BullMQ\'s queues are in the same slot')
  for (const n of cluster.nodes.filter((x) => x !== owner)) {
    const c = n.client()
    const [, found] = await c.scan('0', 'MATCH', `*${prefix}*`, 'COUNT', 10_000)
    c.disconnect()
    t.same(found, [], `node ${n.address} holds none of them`)
  }

  // The push channel on the Cluster: its change log and reader live in the same slot.
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  const source = createTokenSource({ brokerUrl: `http://127.0.0.1:${typeof address === 'object' && address !== null ? address.port : 0}`, secret: clients[0]!.secret, server: 'default' })
  t.teardown(async () => { await source.close() })
  const pushed: TokenChange[] = []
  source.on('token', (change) => pushed.push(change))
  t.equal(await source.token(), first.get('a')!.token, 'the library holds the current token')

  // Rotation by the workers (BullMQ on the Cluster).
  const rotate = await app.inject({ method: 'POST', url: '/v1/servers/default/rotate', headers: ops.auth })
  t.equal(rotate.json().rotating, 3, rotate.body)
  t.ok(await until(10_000, async () => {
    for (const c of clients) if (await app.broker.store.peek(c.id, 'default') === first.get(c.id)!.tokenId) return false
    return true
  }), 'every token rotated')
  t.ok(await until(10_000, async () => pushed.some((p) => p.via === 'stream' && p.reason === 'rotated')), 'the rotation reached the stream through the Cluster')
  t.equal(await source.token(), (await issue(app, clients[0]!)).body.token, 'the library now holds the rotated token')
  for (const c of clients) t.ok(sim.isTokenValid((await issue(app, c)).body.token), `${c.id}: the rotated token works`)

  // PMS restart: probes notice, tokens are invalidated and re-minted by the workers.
  t.ok(await until(5000, async () => (await app.broker.states.get('default')).state === 'up'), 'probed up')
  const beforeRestart = new Map<string, string>()
  for (const c of clients) beforeRestart.set(c.id, (await app.broker.store.peek(c.id, 'default'))!)
  await sim.restart({ downForMs: 1000 })
  t.ok(await until(10_000, async () => {
    for (const c of clients) {
      const id = await app.broker.store.peek(c.id, 'default')
      if (id === undefined || id === beforeRestart.get(c.id)) return false
      const token = await app.broker.store.reveal(id)
      if (token === undefined || !sim.isTokenValid(token)) return false
    }
    return true
  }), 'after a PMS restart every active client holds a fresh token PMS accepts')

  // Revoke: never served again.
  const revoked = (await issue(app, clients[0]!)).body
  const revoke = await app.inject({ method: 'POST', url: '/v1/revoke', headers: ops.auth, payload: { tokenId: revoked.tokenId, reason: 'cluster-test' } })
  t.equal(revoke.json().revoked, 1, revoke.body)
  const after = (await issue(app, clients[0]!)).body
  t.not(after.tokenId, revoked.tokenId, 'a revoked token is not served again')
  t.ok(sim.isTokenValid(after.token))

  // Audit: the trail tells the story, and trace finds who holds a token.
  const audit = await app.inject({ method: 'GET', url: '/v1/audit?limit=500', headers: ops.auth })
  const actions = new Set(audit.json().events.map((e: { action: string }) => e.action))
  for (const a of ['token.issue', 'token.rotate', 'server.rotate', 'server.restart', 'token.invalidate', 'token.revoke']) t.ok(actions.has(a), `audited: ${a}`)
  const trace = await app.inject({ method: 'POST', url: '/v1/audit/trace', headers: ops.auth, payload: { token: after.token } })
  t.equal(trace.statusCode, 200, trace.body)
  t.match(trace.json(), { holder: { client: 'a', tokenId: after.tokenId } }, 'trace names the holder')
  t.match((await app.inject({ url: '/metrics' })).body, /ptb_redis_unreplicated_writes_total\{action="token\.revoke"\} 1\b/, 'WAIT went to the slot\'s node (no replica there: counted)')

  // Broker restart: a new instance on the same Cluster serves the same tokens without minting.
  const mints = sim.counters.mints
  await app.close()
  const logs = new LogCapture()
  const again = await buildApp({ ...config, role: 'api' }, { logStream: logs, defaultMetrics: false })
  t.teardown(() => again.close())
  for (const c of clients) {
    t.equal((await issue(again, c)).body.tokenId, await again.broker.store.peek(c.id, 'default'), `${c.id}: served after a broker restart`)
  }
  t.equal(sim.counters.mints, mints, 'no mint after the broker restart: the tokens came from the Cluster')
})
