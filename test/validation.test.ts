import t from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { buildTestApp, makeClient, serverFor, startSim, testConfig, uniquePrefix } from './helper.ts'

// What a caller with the right scope gets for a body that is missing a field or has one too many:
// a 400 BAD_REQUEST in the standard shape that names the problem, and nothing done.

const ERROR_KEYS = ['code', 'error', 'message', 'requestId', 'statusCode']

t.test('missing and extra body fields are 400 on every route with a body, and nothing happens', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('a', { scopes: ['token:issue', 'source:connect'], sources: '*' })
  const ops = makeClient('ops', { scopes: ['token:revoke', 'audit:read', 'server:rotate'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('valid'), [serverFor(sim)], [a, ops]), { defaultMetrics: false })
  const live = (await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })).json()
  const mints = sim.counters.mints
  const cases: Array<[string, string, typeof a, unknown, RegExp]> = [
    ['tokens: no server', '/v1/tokens', a, {}, /server/],
    ['tokens: extra field', '/v1/tokens', a, { server: 'default', admin: true }, /admin|additional/],
    ['tokens: empty body', '/v1/tokens', a, undefined, /body/i],
    ['sources: no source', '/v1/sources/connection', a, { server: 'default' }, /source/],
    ['sources: extra field', '/v1/sources/connection', a, { server: 'default', source: 'server://x', x: 1 }, /x|additional/],
    ['revoke: no reason', '/v1/revoke', ops, { client: 'a' }, /reason/],
    ['revoke: extra field', '/v1/revoke', ops, { client: 'a', reason: 'r', force: true }, /force|additional/],
    ['trace: empty object', '/v1/audit/trace', ops, {}, /token/],
    ['trace: empty token', '/v1/audit/trace', ops, { token: '' }, /token|fewer|short/i],
    ['trace: no body', '/v1/audit/trace', ops, undefined, /body/i],
  ]
  for (const [name, url, c, body, mentions] of cases) {
    const r = await app.inject({
      method: 'POST',
      url,
      headers: { ...c.auth, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      payload: body === undefined ? undefined : JSON.stringify(body),
    })
    t.equal(r.statusCode, 400, `${name}: 400`)
    t.equal(r.json().code, 'BAD_REQUEST', `${name}: BAD_REQUEST`)
    t.same(Object.keys(r.json()).sort(), ERROR_KEYS, `${name}: error shape`)
    t.match(r.json().message, mentions, `${name}: the message names the problem (${r.json().message})`)
  }
  t.equal(sim.counters.mints, mints, 'no mint for a bad request')
  const still = (await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })).json()
  t.equal(still.tokenId, live.tokenId, 'no revoke for a bad request')
})

t.test('audit since/until select exactly the events in the range', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('a')
  const b = makeClient('b')
  const ops = makeClient('ops', { scopes: ['audit:read'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('range'), [serverFor(sim)], [a, b, ops]), { defaultMetrics: false })
  await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })
  await sleep(30)
  const middle = new Date().toISOString()
  await sleep(30)
  await app.inject({ method: 'POST', url: '/v1/tokens', headers: b.auth, payload: { server: 'default' } })
  const q = async (query: string) => (await app.inject({ method: 'GET', url: `/v1/audit?action=token.issue&${query}`, headers: ops.auth })).json().events.map((e: { client: string }) => e.client)
  t.same(await q(`since=${middle}`), ['b'], 'since: only what came after')
  t.same(await q(`until=${middle}`), ['a'], 'until: only what came before')
  t.same(await q(''), ['b', 'a'], 'no bounds: both, newest first')
  const exported = (await app.inject({ method: 'GET', url: `/v1/audit/export?action=token.issue&since=${middle}`, headers: ops.auth })).body
  t.same(exported.trim().split('\n').map((l) => JSON.parse(l).client), ['b'], 'export honours since too')
  const bad = await app.inject({ method: 'GET', url: '/v1/audit?since=yesterday', headers: ops.auth })
  t.equal(bad.statusCode, 400, 'an unparseable date is a 400')
  t.equal(bad.json().code, 'BAD_REQUEST')
})
