import t from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import { DEFAULT_SOURCES } from '../src/sim/pms-sim.ts'
import { buildTestApp, makeClient, serverFor, startSim, testConfig, type TestClient, uniquePrefix } from './helper.ts'

const SHARED = DEFAULT_SOURCES[0]!.source
const PROVIDER = DEFAULT_SOURCES[1]!.source
const RECENT = '1.43.0.10162-aaaaaaaaa'

async function connect (app: FastifyInstance, c: TestClient, source: string, server = 'default') {
  const r = await app.inject({ method: 'POST', url: '/v1/sources/connection', headers: c.auth, payload: { server, source } })
  return { status: r.statusCode, body: r.json() }
}

for (const xmlOnly of [false, true]) {
  t.test(`a shared server and a provider, end to end (${xmlOnly ? 'XML-only' : 'JSON'} PMS)`, async (t) => {
    const sim = await startSim(t, { version: RECENT, xmlOnly })
    const a = makeClient('viewer', { scopes: ['source:connect'], sources: '*' })
    const ops = makeClient('ops', { scopes: ['token:revoke', 'audit:read'] })
    const app = await buildTestApp(t, testConfig(uniquePrefix('sources'), [serverFor(sim)], [a, ops]), { defaultMetrics: false })

    const shared = await connect(app, a, SHARED)
    t.equal(shared.status, 200, JSON.stringify(shared.body))
    t.match(shared.body, { source: SHARED, name: DEFAULT_SOURCES[0]!.name, clientIdentifier: DEFAULT_SOURCES[0]!.clientIdentifier, tokenId: /^tk_/ })
    t.same(shared.body.connections.map((c: { local: boolean, relay: boolean }) => [c.local, c.relay]), [[true, false], [false, false], [false, true]],
      'ordered local → remote → relay')
    t.ok(sim.isSourceTokenValid(shared.body.token, SHARED), 'the token works at the source')
    t.not(shared.body.token, sim.adminToken)

    const provider = await connect(app, a, PROVIDER)
    t.equal(provider.status, 200)
    t.equal(provider.body.clientIdentifier, 'tv.plex.provider.vod')
    t.not(provider.body.tokenId, shared.body.tokenId, 'one token per source')

    const again = await connect(app, a, SHARED)
    t.equal(again.body.tokenId, shared.body.tokenId, 'cached')
    t.same(again.body.connections, shared.body.connections)

    const events = (await app.inject({ method: 'GET', url: '/v1/audit?action=source.connect', headers: ops.auth })).json().events
    t.equal(events.length, 3)
    t.match(events[0], { client: 'viewer', tokenId: shared.body.tokenId, fingerprint: /^[0-9a-f]{64}$/, detail: { source: 'cache', target: SHARED } })

    const revoked = await app.inject({ method: 'POST', url: '/v1/revoke', headers: ops.auth, payload: { source: SHARED, reason: 'source revoked' } })
    t.equal(revoked.json().revoked, 1, 'revoke by source names only that source')
    t.not((await connect(app, a, SHARED)).body.tokenId, shared.body.tokenId, 'a new token after revoke')
    t.equal((await connect(app, a, PROVIDER)).body.tokenId, provider.body.tokenId, 'the other source is untouched')
  })
}

t.test('source tokens are single-flight, rotated, and invalidated by a restart of the PMS that issued them', async (t) => {
  const sim = await startSim(t, { version: RECENT })
  const a = makeClient('viewer', { scopes: ['source:connect', 'token:issue'], sources: [SHARED] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('sources'), [serverFor(sim)], [a],
    { role: 'all', tokenLifetimeMs: 60_000, tokenRenewAfterMs: 3000, probeIntervalMs: 1000 }), { defaultMetrics: false })
  const herd = await Promise.all(Array.from({ length: 50 }, () => connect(app, a, SHARED)))
  t.equal(new Set(herd.map((r) => r.body.tokenId)).size, 1, '50 concurrent first requests, one token')
  t.equal(sim.counters.byPath['/security/resources'], 1, 'one upstream call')
  const first = herd[0]!.body

  let rotated: string | undefined
  for (let i = 0; i < 30 && rotated === undefined; i++) {
    await sleep(300)
    const r = await connect(app, a, SHARED)
    if (r.body.tokenId !== first.tokenId) rotated = r.body.tokenId
  }
  t.ok(rotated !== undefined, 'rotated in the background')
  const old = (await app.inject({ method: 'GET', url: `/v1/tokens/${first.tokenId}`, headers: a.auth })).json()
  t.equal(old.state, 'rotated')

  await sleep(1500)
  await sim.restart({ downForMs: 300 })
  let invalidated = false
  for (let i = 0; i < 40 && !invalidated; i++) {
    await sleep(200)
    invalidated = (await app.inject({ method: 'GET', url: `/v1/tokens/${rotated}`, headers: a.auth })).json().state === 'invalidated'
  }
  t.ok(invalidated, 'a restart invalidates the source token too')
  let fresh: string | undefined
  for (let i = 0; i < 30 && fresh === undefined; i++) {
    await sleep(200)
    const id = await app.broker.store.peek('viewer', 'default', SHARED)
    if (id !== undefined && id !== rotated) fresh = id
  }
  t.ok(fresh !== undefined, 're-minted proactively after the restart')
})

t.test('source errors: forbidden source, unknown source, old PMS', async (t) => {
  const sim = await startSim(t, { version: RECENT })
  const old = await startSim(t, { version: '1.14.1.5488-cc260c476' })
  const a = makeClient('viewer', { scopes: ['source:connect'], sources: [SHARED, 'server://0123456789abcdef'] })
  const tokenOnly = makeClient('tokens', { scopes: ['token:issue'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('sources'), [serverFor(sim), serverFor(old, 'old')], [a, tokenOnly]), { defaultMetrics: false })
  const forbidden = await connect(app, a, PROVIDER)
  t.equal(forbidden.status, 403)
  t.equal(forbidden.body.code, 'FORBIDDEN')
  t.equal((await connect(app, tokenOnly, SHARED)).status, 403, 'needs scope source:connect')
  const unknown = await connect(app, a, 'server://0123456789abcdef')
  t.equal(unknown.status, 404)
  t.equal(unknown.body.code, 'SOURCE_NOT_FOUND')
  // The old server's version becomes known on first contact.
  const first = await connect(app, a, SHARED, 'old')
  const second = await connect(app, a, SHARED, 'old')
  for (const r of [first, second]) {
    t.equal(r.status, 502)
    t.equal(r.body.code, 'UPSTREAM_UNSUPPORTED')
  }
  const bad = await connect(app, a, 'ftp://nope')
  t.equal(bad.status, 400)
})
