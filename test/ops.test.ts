import t from 'tap'
import { Redis } from 'ioredis'
import type { FastifyInstance } from 'fastify'
import { buildTestApp, makeClient, REDIS_URL, serverFor, startSim, testConfig, type T, type TestClient, uniquePrefix } from './helper.ts'

async function issue (app: FastifyInstance, c: TestClient, server = 'default') {
  const r = await app.inject({ method: 'POST', url: '/v1/tokens', headers: c.auth, payload: { server } })
  return r.json()
}

async function revoke (app: FastifyInstance, ops: TestClient, payload: Record<string, unknown>) {
  return await app.inject({ method: 'POST', url: '/v1/revoke', headers: ops.auth, payload })
}

async function stateOf (app: FastifyInstance, ops: TestClient, tokenId: string): Promise<string> {
  return (await app.inject({ method: 'GET', url: `/v1/tokens/${tokenId}`, headers: ops.auth })).json().state
}

const OPS_SCOPES = ['token:revoke', 'audit:read', 'server:read', 'server:rotate'] as const

async function setup (t: T) {
  const simA = await startSim(t)
  const simB = await startSim(t)
  const clients = { a: makeClient('a'), b: makeClient('b') }
  const ops = makeClient('ops', { scopes: [...OPS_SCOPES] })
  // An ops client limited to server "one", as a team running only that PMS would get.
  const opsOne = makeClient('ops-one', { scopes: [...OPS_SCOPES], servers: ['one'] })
  const cfg = testConfig(uniquePrefix('ops'), [serverFor(simA, 'one'), serverFor(simB, 'two')], [clients.a, clients.b, ops, opsOne])
  // Two instances on one Redis: what one revokes, the other never serves again.
  const app1 = await buildTestApp(t, cfg)
  const app2 = await buildTestApp(t, { ...cfg })
  const tokens = {
    a1: await issue(app1, clients.a, 'one'),
    a2: await issue(app1, clients.a, 'two'),
    b1: await issue(app2, clients.b, 'one'),
    b2: await issue(app2, clients.b, 'two'),
  }
  return { simA, simB, clients, ops, opsOne, app1, app2, tokens }
}

const selectors: Array<[string, (tk: Record<string, { tokenId: string }>) => Record<string, unknown>, string[]]> = [
  ['tokenId', (tk) => ({ tokenId: tk.a1!.tokenId }), ['a1']],
  ['client', () => ({ client: 'a' }), ['a1', 'a2']],
  ['server', () => ({ server: 'one' }), ['a1', 'b1']],
  ['client and server', () => ({ client: 'b', server: 'two' }), ['b2']],
  ['all', () => ({ all: true }), ['a1', 'a2', 'b1', 'b2']],
]

for (const [name, select, expected] of selectors) {
  t.test(`revoke by ${name} revokes exactly what it names, on every instance`, async (t) => {
    const { ops, app1, app2, tokens, clients } = await setup(t)
    const r = await revoke(app1, ops, { ...select(tokens), reason: `test ${name}` })
    t.equal(r.statusCode, 200)
    t.equal(r.json().revoked, expected.length)
    t.ok(Date.parse(r.json().upstreamStillValidUntil) > Date.now(), 'says until when PMS still honours them')
    for (const [key, tk] of Object.entries(tokens)) {
      t.equal(await stateOf(app2, ops, tk.tokenId), expected.includes(key) ? 'revoked' : 'active', `${key} ${expected.includes(key) ? 'revoked' : 'untouched'}`)
      const info = (await app2.inject({ method: 'GET', url: `/v1/tokens/${tk.tokenId}`, headers: ops.auth })).json()
      if (expected.includes(key)) {
        t.equal(info.reason, `test ${name}`, `${key}: lookup says why`)
        t.ok(Math.abs(Date.parse(info.revokedAt) - Date.now()) < 60_000, `${key}: lookup says when`)
      } else {
        t.notOk('revokedAt' in info || 'reason' in info, `${key}: a live token has no revocation fields`)
      }
      const client = key.startsWith('a') ? clients.a : clients.b
      const again = await issue(app2, client, key.endsWith('1') ? 'one' : 'two')
      if (expected.includes(key)) t.not(again.tokenId, tk.tokenId, `${key}: the other instance mints a new token`)
      else t.equal(again.tokenId, tk.tokenId, `${key}: still served`)
    }
    const events = (await app2.inject({ method: 'GET', url: '/v1/audit?action=token.revoke', headers: ops.auth })).json().events
    t.equal(events.length, expected.length, 'one token.revoke event per token')
    t.match(events[0], { action: 'token.revoke', detail: { reason: `test ${name}`, actor: 'ops' }, fingerprint: /^[0-9a-f]{64}$/ })
  })
}

t.test('revoke input errors', async (t) => {
  const { ops, app1, clients } = await setup(t)
  for (const payload of [{ reason: 'x' }, { tokenId: 'tk_AAAAAAAAAAAAAAAAAAAAAA', client: 'a', reason: 'x' }, { all: true, server: 'one', reason: 'x' },
    { client: 'a' }, { client: 'a', reason: '' }, { client: 'a', reason: 'x'.repeat(501) }, { client: 'a', reason: 'x', extra: 1 }, { all: false, reason: 'x' },
    // source narrows client/server selectors; with all it used to revoke everything, with tokenId it was ignored.
    { all: true, source: 'server://abc', reason: 'x' }, { tokenId: 'tk_AAAAAAAAAAAAAAAAAAAAAA', source: 'server://abc', reason: 'x' }]) {
    const r = await revoke(app1, ops, payload)
    t.equal(r.statusCode, 400, JSON.stringify(payload).slice(0, 80))
    t.equal(r.json().code, 'BAD_REQUEST')
  }
  t.equal((await revoke(app1, clients.a, { all: true, reason: 'x' })).statusCode, 403, 'token:revoke scope required')
  const none = await revoke(app1, ops, { tokenId: 'tk_AAAAAAAAAAAAAAAAAAAAAA', reason: 'nothing' })
  t.same(none.json(), { revoked: 0, upstreamStillValidUntil: null })
})

t.test('the audit trail records every action with its actor, pages, filters and never holds a token', async (t) => {
  const { ops, app1, tokens, clients, simA, simB } = await setup(t)
  await issue(app1, clients.a, 'one') // a cache hit
  await app1.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: 'Bearer wrong' }, payload: { server: 'one' } })
  await revoke(app1, ops, { client: 'b', reason: 'left the company' })

  const all = (await app1.inject({ method: 'GET', url: '/v1/audit?limit=1000', headers: ops.auth })).json().events
  const actions = all.map((e: { action: string }) => e.action)
  t.same([...new Set(actions)].sort(), ['auth.denied', 'token.issue', 'token.revoke'])
  const issues = all.filter((e: { action: string }) => e.action === 'token.issue')
  t.equal(issues.length, 5)
  t.same(issues.map((e: { detail: { source: string } }) => e.detail.source).sort(), ['cache', 'upstream', 'upstream', 'upstream', 'upstream'])
  t.ok(issues.every((e: { requestId: string, ip: string }) => e.requestId && e.ip), 'request id and ip recorded')
  t.ok(all.every((e: { time: string }, i: number) => i === 0 || Date.parse(e.time) <= Date.parse(all[i - 1].time)), 'newest first')

  const page1 = (await app1.inject({ method: 'GET', url: '/v1/audit?limit=3', headers: ops.auth })).json()
  t.equal(page1.events.length, 3)
  const page2 = (await app1.inject({ method: 'GET', url: `/v1/audit?limit=3&cursor=${page1.next}`, headers: ops.auth })).json()
  const page3 = (await app1.inject({ method: 'GET', url: `/v1/audit?limit=3&cursor=${page2.next}`, headers: ops.auth })).json()
  t.same([...page1.events, ...page2.events, ...page3.events].map((e: { id: string }) => e.id), all.slice(0, 8).map((e: { id: string }) => e.id), 'pages follow on')
  const filtered = (await app1.inject({ method: 'GET', url: '/v1/audit?client=a&server=one', headers: ops.auth })).json().events
  t.ok(filtered.length === 2 && filtered.every((e: { client: string, server: string }) => e.client === 'a' && e.server === 'one'), 'filters AND together')
  const byToken = (await app1.inject({ method: 'GET', url: `/v1/audit?tokenId=${tokens.b2.tokenId}`, headers: ops.auth })).json().events
  t.same(byToken.map((e: { action: string }) => e.action), ['token.revoke', 'token.issue'])
  const future = (await app1.inject({ method: 'GET', url: `/v1/audit?since=${new Date(Date.now() + 60_000).toISOString()}`, headers: ops.auth })).json()
  t.same(future, { events: [], next: null }, 'since excludes older events')
  const bad = await app1.inject({ method: 'GET', url: '/v1/audit?limit=5000', headers: ops.auth })
  t.equal(bad.statusCode, 400)

  const exported = await app1.inject({ method: 'GET', url: '/v1/audit/export?action=token.issue', headers: ops.auth })
  t.equal(exported.headers['content-type'], 'application/x-ndjson')
  const lines = exported.body.trim().split('\n').map((l) => JSON.parse(l))
  t.equal(lines.length, 5)
  // Stream ids compare as numbers (ms, then sequence): as strings "…-10" sorts before "…-9".
  const order = (id: string) => id.split('-').map(Number) as [number, number]
  t.ok(lines.every((e, i) => {
    if (i === 0) return true
    const [[am, as], [bm, bs]] = [order(lines[i - 1].id), order(e.id)]
    return bm > am || (bm === am && bs >= as)
  }), 'export is oldest first')

  // Scan the stream itself: no raw token, no admin token, no client secret.
  const redis = new Redis(REDIS_URL)
  t.teardown(() => redis.disconnect())
  const raw = JSON.stringify([...await redis.xrange(app1.broker.keys.audit, '-', '+'), ...await redis.xrange(app1.broker.keys.auditServes, '-', '+')])
  for (const [name, secret] of [...Object.entries(tokens).map(([k, v]) => [k, (v as { token: string }).token] as const),
    ['admin A', simA.adminToken], ['admin B', simB.adminToken], ['secret', clients.a.secret], ['ops secret', ops.secret]]) {
    t.notOk(raw.includes(secret), `audit stream never holds ${name}`)
  }
})

t.test('trace finds who held a leaked token', async (t) => {
  const { ops, app1, tokens, clients } = await setup(t)
  const r = await app1.inject({ method: 'POST', url: '/v1/audit/trace', headers: ops.auth, payload: { token: tokens.b2.token } })
  t.equal(r.statusCode, 200)
  t.match(r.json(), { holder: { client: 'b', server: 'two', tokenId: tokens.b2.tokenId } })
  t.ok(r.json().events.length >= 1)
  t.notOk(app1.logs.text.includes(tokens.b2.token), 'the traced token is not logged')
  const unknown = await app1.inject({ method: 'POST', url: '/v1/audit/trace', headers: ops.auth, payload: { token: 'never-issued' } })
  t.same(unknown.json().holder, null)
  t.same(unknown.json().events, [])
  t.equal((await app1.inject({ method: 'POST', url: '/v1/audit/trace', headers: clients.a.auth, payload: { token: 'x' } })).statusCode, 403)
})

t.test('issuing fails closed when the audit trail cannot be written', async (t) => {
  const { app1, clients, tokens } = await setup(t)
  const redis = new Redis(REDIS_URL)
  t.teardown(() => redis.disconnect())
  const { audit: key, auditServes } = app1.broker.keys
  // Replace both streams by plain strings: every XADD now fails (WRONGTYPE), mint or cache hit.
  await redis.del(key, auditServes)
  await redis.set(key, 'not a stream')
  await redis.set(auditServes, 'not a stream')
  const r = await app1.inject({ method: 'POST', url: '/v1/tokens', headers: clients.a.auth, payload: { server: 'one' } })
  t.equal(r.statusCode, 503)
  t.equal(r.json().code, 'STORE_UNAVAILABLE')
  t.notOk(r.body.includes(tokens.a1.token), 'no unaudited token handed out')
  const ready = await app1.inject({ method: 'GET', url: '/readyz' })
  t.equal(ready.statusCode, 503, 'not ready while the trail cannot be written')
  await redis.del(key, auditServes)
  t.equal((await app1.inject({ method: 'POST', url: '/v1/tokens', headers: clients.a.auth, payload: { server: 'one' } })).statusCode, 200, 'heals by itself')
  t.equal((await app1.inject({ method: 'GET', url: '/readyz' })).statusCode, 200)
})

t.test('audit retention trims old events', async (t) => {
  const { app1, clients } = await setup(t)
  const redis = new Redis(REDIS_URL)
  t.teardown(() => redis.disconnect())
  const { audit: key, auditServes } = app1.broker.keys
  const before = await redis.xlen(key) + await redis.xlen(auditServes)
  await new Promise((resolve) => setTimeout(resolve, 300))
  await issue(app1, clients.a, 'one')
  await app1.broker.audit.trim(200)
  const kept = [...await redis.xrange(key, '-', '+'), ...await redis.xrange(auditServes, '-', '+')]
  t.equal(kept.length, 1, `events older than the retention are trimmed (${before} → ${kept.length})`)
  t.ok(kept[0]?.[1].includes('token.issue'), 'the recent event is kept')
})

t.test('servers status and manual rotation', async (t) => {
  const { ops, app1, clients, simA, tokens } = await setup(t)
  const r = await app1.inject({ method: 'GET', url: '/v1/servers', headers: ops.auth })
  t.equal(r.statusCode, 200)
  const one = r.json().servers.find((s: { name: string }) => s.name === 'one')
  t.match(one, { name: 'one', url: simA.url, machineIdentifier: simA.machineIdentifier, activeTokens: 2, adminToken: { source: 'token' } })
  t.equal(typeof one.vulnerable, 'boolean')
  t.equal((await app1.inject({ method: 'GET', url: '/v1/servers', headers: clients.a.auth })).statusCode, 403)
  const rot = await app1.inject({ method: 'POST', url: '/v1/servers/one/rotate', headers: ops.auth })
  t.equal(rot.statusCode, 202)
  t.same(rot.json(), { rotating: 2 })
  const jobs = await app1.broker.queues.tokens.getJobs(['waiting', 'delayed', 'prioritized'])
  t.same(jobs.map((j) => j.data.tokenId).sort(), [tokens.a1.tokenId, tokens.b1.tokenId].sort(), 'one rotation job per active token, ids only')
  t.notOk(JSON.stringify(jobs.map((j) => j.data)).includes(tokens.a1.token), 'job data carries no token')
  t.equal((await app1.inject({ method: 'POST', url: '/v1/servers/nope/rotate', headers: ops.auth })).statusCode, 404)
})

t.test('an ops client limited to one server revokes only tokens of that server', async (t) => {
  const { ops, opsOne, app1, app2, tokens } = await setup(t)
  // Read with the unlimited ops client, on the other instance.
  const states = async (): Promise<Record<string, string>> =>
    Object.fromEntries(await Promise.all(Object.entries(tokens).map(async ([k, v]) => [k, await stateOf(app2, ops, v.tokenId)])))

  for (const payload of [{ server: 'two' }, { client: 'a', server: 'two' }, { all: true }, { source: 'server://abc', server: 'two' }]) {
    const r = await revoke(app1, opsOne, { ...payload, reason: 'overreach' })
    t.equal(r.statusCode, 403, `${JSON.stringify(payload)}: 403`)
    t.match(r.json(), { statusCode: 403, code: 'FORBIDDEN', error: 'Forbidden', message: /ops-one/, requestId: /.+/ })
  }
  t.same(await states(), { a1: 'active', a2: 'active', b1: 'active', b2: 'active' }, 'nothing revoked by the refused calls')
  // Repeated refusals are recorded once per window with their count (written when the window closes: here, now).
  await app1.broker.refusals.flush()
  const denied = (await app2.inject({ method: 'GET', url: '/v1/audit?action=auth.denied', headers: ops.auth })).json().events
  const refused = denied.filter((e: { client: string, detail: { reason: string } }) => e.client === 'ops-one' && e.detail.reason === 'forbidden_server')
  t.ok(refused.reduce((n: number, e: { detail: { count?: number } }) => n + (e.detail.count ?? 1), 0) >= 4, 'each refusal is audited, alone or in a count')

  // A token of another server by id: nothing revoked, and the id is not confirmed.
  t.same((await revoke(app1, opsOne, { tokenId: tokens.a2.tokenId, reason: 'not mine' })).json(), { revoked: 0, upstreamStillValidUntil: null })
  // By client alone: only that client's tokens on server "one".
  const byClient = await revoke(app1, opsOne, { client: 'a', reason: 'scoped' })
  t.equal(byClient.statusCode, 200)
  t.equal(byClient.json().revoked, 1)
  t.same(await states(), { a1: 'revoked', a2: 'active', b1: 'active', b2: 'active' }, 'a2 (server two) untouched')
  // By its own server and by a token id of its server.
  t.equal((await revoke(app1, opsOne, { tokenId: tokens.b1.tokenId, reason: 'mine' })).json().revoked, 1)
  t.same(await states(), { a1: 'revoked', a2: 'active', b1: 'revoked', b2: 'active' })
  // The unlimited ops client still reaches everything.
  t.equal((await revoke(app2, ops, { all: true, reason: 'full ops' })).json().revoked, 2)
})

t.test('a limited ops client reads only audit events, tokens and servers of its servers', async (t) => {
  const { ops, opsOne, app1, app2, tokens, clients } = await setup(t)
  await app1.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: 'Bearer wrong' }, payload: { server: 'two' } }) // an event without a server
  await revoke(app1, ops, { client: 'b', server: 'two', reason: 'other team' })

  const everything = (await app2.inject({ method: 'GET', url: '/v1/audit?limit=1000', headers: ops.auth })).json().events
  t.ok(everything.some((e: { server: string | null }) => e.server === 'two') && everything.some((e: { server: string | null }) => e.server === null), 'the trail holds events of two and without a server')
  const mine = (await app2.inject({ method: 'GET', url: '/v1/audit?limit=1000', headers: opsOne.auth })).json().events
  t.ok(mine.length >= 2, 'sees its own server\'s events')
  t.ok(mine.every((e: { server: string | null }) => e.server === 'one'), 'only events of server one')
  t.same(mine.map((e: { id: string }) => e.id), everything.filter((e: { server: string | null }) => e.server === 'one').map((e: { id: string }) => e.id), 'every event of server one, in order')
  const page = (await app2.inject({ method: 'GET', url: '/v1/audit?limit=1', headers: opsOne.auth })).json()
  const next = (await app2.inject({ method: 'GET', url: `/v1/audit?limit=1&cursor=${page.next}`, headers: opsOne.auth })).json()
  t.same([...page.events, ...next.events].map((e: { id: string }) => e.id), mine.slice(0, 2).map((e: { id: string }) => e.id), 'pages stay within the scope')
  t.equal((await app2.inject({ method: 'GET', url: `/v1/audit?tokenId=${tokens.b2.tokenId}`, headers: opsOne.auth })).json().events.length, 0, 'another server\'s token id finds nothing')
  const other = await app2.inject({ method: 'GET', url: '/v1/audit?server=two', headers: opsOne.auth })
  t.equal(other.statusCode, 403)
  t.equal(other.json().code, 'FORBIDDEN')

  const exported = await app2.inject({ method: 'GET', url: '/v1/audit/export', headers: opsOne.auth })
  const lines = exported.body.trim().split('\n').map((l) => JSON.parse(l))
  t.same(lines.map((e: { id: string }) => e.id), mine.map((e: { id: string }) => e.id).reverse(), 'export: the same events, oldest first')
  t.equal((await app2.inject({ method: 'GET', url: '/v1/audit/export?server=two', headers: opsOne.auth })).statusCode, 403)

  const traceOther = (await app1.inject({ method: 'POST', url: '/v1/audit/trace', headers: opsOne.auth, payload: { token: tokens.b2.token } })).json()
  t.same({ holder: traceOther.holder, events: traceOther.events }, { holder: null, events: [] }, 'a token of server two traces like an unknown one')
  const traceMine = (await app1.inject({ method: 'POST', url: '/v1/audit/trace', headers: opsOne.auth, payload: { token: tokens.b1.token } })).json()
  t.match(traceMine.holder, { client: 'b', server: 'one', tokenId: tokens.b1.tokenId })

  t.equal((await app2.inject({ method: 'GET', url: `/v1/tokens/${tokens.a1.tokenId}`, headers: opsOne.auth })).statusCode, 200)
  const hidden = await app2.inject({ method: 'GET', url: `/v1/tokens/${tokens.a2.tokenId}`, headers: opsOne.auth })
  t.equal(hidden.statusCode, 404, 'a token of another server looks missing')
  t.equal((await app2.inject({ method: 'GET', url: `/v1/tokens/${tokens.a2.tokenId}`, headers: clients.a.auth })).statusCode, 200, 'its owner still sees it')

  const servers = (await app2.inject({ method: 'GET', url: '/v1/servers', headers: opsOne.auth })).json().servers
  t.same(servers.map((s: { name: string }) => s.name), ['one'], '/v1/servers lists only its servers')
  t.same((await app2.inject({ method: 'GET', url: '/v1/servers', headers: ops.auth })).json().servers.map((s: { name: string }) => s.name).sort(), ['one', 'two'])
  const rotTwo = await app2.inject({ method: 'POST', url: '/v1/servers/two/rotate', headers: opsOne.auth })
  t.equal(rotTwo.statusCode, 403)
  t.equal(rotTwo.json().code, 'FORBIDDEN')
  t.equal((await app2.inject({ method: 'POST', url: '/v1/servers/nope/rotate', headers: opsOne.auth })).statusCode, 403, 'unknown names outside its list are 403 too: no probing')
  t.same((await app2.inject({ method: 'POST', url: '/v1/servers/one/rotate', headers: opsOne.auth })).json(), { rotating: 2 })
  const jobs = await app2.broker.queues.tokens.getJobs(['waiting', 'delayed', 'prioritized'])
  t.same(jobs.map((j) => j.data.tokenId).sort(), [tokens.a1.tokenId, tokens.b1.tokenId].sort(), 'rotation queued for server one only')
})
