import t from 'tap'
import type { InjectOptions } from 'fastify'
import { Redis } from 'ioredis'
import { buildTestApp, makeClient, REDIS_URL, serverFor, startSim, testConfig, uniquePrefix } from './helper.ts'

const ERROR_KEYS = ['code', 'error', 'message', 'requestId', 'statusCode']

t.test('a client gets a transient token PMS accepts, then the same one from cache', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('thumbnailer')
  const app = await buildTestApp(t, testConfig(uniquePrefix('tokens'), [serverFor(sim)], [a]))

  const first = await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })
  t.equal(first.statusCode, 200)
  const body = first.json()
  t.match(body, { tokenId: /^tk_/, token: /^transient-/, server: { name: 'default', machineIdentifier: sim.machineIdentifier } })
  t.ok(sim.isTokenValid(body.token), 'PMS accepts the issued token')
  t.not(body.token, sim.adminToken, 'never the admin token')
  const issued = Date.parse(body.issuedAt)
  t.equal(Date.parse(body.expiresAt) - issued, 48 * 3600_000, 'expiresAt = issuedAt + TOKEN_LIFETIME')
  const renewIn = Date.parse(body.renewAt) - issued
  t.ok(renewIn <= 24 * 3600_000 && renewIn >= 0.9 * 24 * 3600_000, 'renewAt = issuedAt + TOKEN_RENEW_AFTER minus up to 10% jitter')

  const second = await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })
  t.same(second.json(), body, 'cache hit returns the same token')
  t.equal(sim.counters.mints, 1, 'one mint for two requests')

  const info = await app.inject({ method: 'GET', url: `/v1/tokens/${body.tokenId}`, headers: a.auth })
  t.equal(info.statusCode, 200)
  t.same(info.json(), { tokenId: body.tokenId, client: 'thumbnailer', server: 'default', state: 'active', issuedAt: body.issuedAt, expiresAt: body.expiresAt })
  t.notOk(JSON.stringify(info.json()).includes(body.token), 'token state never carries the token')
})

t.test('each client gets its own token, and cannot see another client\'s', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('a')
  const b = makeClient('b')
  const auditor = makeClient('auditor', { scopes: ['audit:read'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('tokens'), [serverFor(sim)], [a, b, auditor]))
  const ta = (await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })).json()
  const tb = (await app.inject({ method: 'POST', url: '/v1/tokens', headers: b.auth, payload: { server: 'default' } })).json()
  t.not(ta.token, tb.token)
  t.not(ta.tokenId, tb.tokenId)
  t.equal(sim.counters.mints, 2)
  const peek = await app.inject({ method: 'GET', url: `/v1/tokens/${ta.tokenId}`, headers: b.auth })
  t.equal(peek.statusCode, 404, 'another client\'s token id is not confirmed')
  const audit = await app.inject({ method: 'GET', url: `/v1/tokens/${ta.tokenId}`, headers: auditor.auth })
  t.equal(audit.statusCode, 200, 'audit:read may look at any token')
  t.equal(audit.json().client, 'a')
})

t.test('200 concurrent cold requests cause exactly one mint', async (t) => {
  const sim = await startSim(t, { latencyMs: 100 })
  const a = makeClient('herd')
  const app = await buildTestApp(t, testConfig(uniquePrefix('tokens'), [serverFor(sim)], [a]))
  const answers = await Promise.all(Array.from({ length: 200 }, () =>
    app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })))
  t.same(new Set(answers.map((r) => r.statusCode)), new Set([200]))
  t.equal(new Set(answers.map((r) => r.json().tokenId)).size, 1, 'everyone got the same token')
  t.equal(sim.counters.mints, 1, 'PMS saw one /security/token call')
})

t.test('two broker instances on one Redis mint once for a cold herd', async (t) => {
  const sim = await startSim(t, { latencyMs: 150 })
  const a = makeClient('herd2')
  const config = testConfig(uniquePrefix('tokens'), [serverFor(sim)], [a])
  const one = await buildTestApp(t, config)
  const two = await buildTestApp(t, config)
  const answers = await Promise.all(Array.from({ length: 100 }, (_, i) =>
    (i % 2 === 0 ? one : two).inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })))
  t.same(new Set(answers.map((r) => r.statusCode)), new Set([200]))
  t.equal(new Set(answers.map((r) => r.json().tokenId)).size, 1)
  t.equal(sim.counters.mints, 1, 'one mint across both instances')
})

t.test('the token survives a broker restart without a new mint', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('persist')
  const config = testConfig(uniquePrefix('tokens'), [serverFor(sim)], [a])
  const first = await buildTestApp(t, config)
  const before = (await first.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })).json()
  await first.close()
  const second = await buildTestApp(t, config)
  const after = (await second.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })).json()
  t.equal(after.tokenId, before.tokenId)
  t.equal(after.token, before.token)
  t.equal(sim.counters.mints, 1)
})

t.test('an XML-only PMS works the same', async (t) => {
  const sim = await startSim(t, { xmlOnly: true })
  const a = makeClient('xml')
  const app = await buildTestApp(t, testConfig(uniquePrefix('tokens'), [serverFor(sim)], [a]))
  const r = await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })
  t.equal(r.statusCode, 200)
  t.ok(sim.isTokenValid(r.json().token))
  t.equal(r.json().server.machineIdentifier, sim.machineIdentifier)
})

t.test('PMS down: a live cached token is still served, a mint gets 503 with Retry-After', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('cached')
  const b = makeClient('cold')
  const app = await buildTestApp(t, testConfig(uniquePrefix('tokens'), [serverFor(sim)], [a, b], { plexTimeoutMs: 500 }))
  const before = (await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })).json()
  await sim.setDown(true)
  const cached = await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })
  t.equal(cached.statusCode, 200)
  t.equal(cached.json().tokenId, before.tokenId)
  const cold = await app.inject({ method: 'POST', url: '/v1/tokens', headers: b.auth, payload: { server: 'default' } })
  t.equal(cold.statusCode, 503)
  t.equal(cold.json().code, 'UPSTREAM_UNAVAILABLE')
  t.ok(Number(cold.headers['retry-after']) >= 1, 'Retry-After set')
  t.same(Object.keys(cold.json()).sort(), ERROR_KEYS)
  await sim.setDown(false)
  const healed = await app.inject({ method: 'POST', url: '/v1/tokens', headers: b.auth, payload: { server: 'default' } })
  t.equal(healed.statusCode, 200, 'heals by itself when PMS returns')
})

t.test('error codes: every failure is a JSON error with a stable code and no internals', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('a', { servers: ['default'] })
  const noScope = makeClient('noscope', { scopes: ['audit:read'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('tokens'), [serverFor(sim), serverFor(sim, 'other')], [a, noScope]))
  const cases: Array<[string, InjectOptions, number, string]> = [
    ['no credential', { method: 'POST', url: '/v1/tokens', payload: { server: 'default' } }, 401, 'UNAUTHENTICATED'],
    ['unknown secret', { method: 'POST', url: '/v1/tokens', headers: { authorization: 'Bearer nope' }, payload: { server: 'default' } }, 401, 'UNAUTHENTICATED'],
    ['basic auth', { method: 'POST', url: '/v1/tokens', headers: { authorization: 'Basic Zm9vOmJhcg==' }, payload: { server: 'default' } }, 401, 'UNAUTHENTICATED'],
    ['missing scope', { method: 'POST', url: '/v1/tokens', headers: noScope.auth, payload: { server: 'default' } }, 403, 'FORBIDDEN'],
    ['server not allowed', { method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'other' } }, 403, 'FORBIDDEN'],
    ['missing body field', { method: 'POST', url: '/v1/tokens', headers: a.auth, payload: {} }, 400, 'BAD_REQUEST'],
    ['extra field', { method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default', admin: true } }, 400, 'BAD_REQUEST'],
    ['bad server name', { method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: '../etc' } }, 400, 'BAD_REQUEST'],
    ['not json', { method: 'POST', url: '/v1/tokens', headers: { ...a.auth, 'content-type': 'application/json' }, payload: '{"server":' }, 400, 'BAD_REQUEST'],
    ['wrong media type', { method: 'POST', url: '/v1/tokens', headers: { ...a.auth, 'content-type': 'text/plain' }, payload: 'server=default' }, 415, 'UNSUPPORTED_MEDIA_TYPE'],
    ['too large', { method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'x'.repeat(20_000) } }, 413, 'PAYLOAD_TOO_LARGE'],
    ['unknown route', { method: 'GET', url: '/v1/nope' }, 404, 'NOT_FOUND'],
    ['unknown token id', { method: 'GET', url: '/v1/tokens/tk_AAAAAAAAAAAAAAAAAAAAAA', headers: a.auth }, 404, 'NOT_FOUND'],
  ]
  const ids = new Set<string>()
  for (const [name, req, status, code] of cases) {
    const r = await app.inject(req)
    ids.add(r.json().requestId)
    t.equal(r.statusCode, status, `${name}: status`)
    const body = r.json()
    t.equal(body.code, code, `${name}: code`)
    t.same(Object.keys(body).sort(), ERROR_KEYS, `${name}: error shape`)
    t.match(body.requestId, /^[0-9a-f-]{36}$/, `${name}: the broker's own request id`)
    t.equal(r.headers['x-request-id'], body.requestId, `${name}: the same id in the X-Request-Id header`)
    t.notMatch(r.body, /at .*\.ts:\d+|node_modules/, `${name}: no stack trace`)
  }
  // A server the client may ask for in principle but which is not configured.
  const wild = makeClient('wild')
  const app2 = await buildTestApp(t, testConfig(uniquePrefix('tokens'), [serverFor(sim)], [wild]))
  const missing = await app2.inject({ method: 'POST', url: '/v1/tokens', headers: wild.auth, payload: { server: 'nosuch' } })
  t.equal(missing.statusCode, 404)
  t.equal(missing.json().code, 'NOT_FOUND')
})

t.test('an admin token PMS rejects gives 502 UPSTREAM_REJECTED with advice for ops', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('a')
  const app = await buildTestApp(t, testConfig(uniquePrefix('tokens'), [serverFor(sim)], [a]))
  sim.setAdminTokens(['some-other-admin-token'])
  const r = await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })
  t.equal(r.statusCode, 502)
  t.equal(r.json().code, 'UPSTREAM_REJECTED')
  t.match(r.json().message, /admin token/)
  t.notOk(r.body.includes(sim.adminToken))
})

t.test('Redis and logs never hold a token, the admin token or a client secret in clear', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('a')
  const prefix = uniquePrefix('tokens')
  const app = await buildTestApp(t, testConfig(prefix, [serverFor(sim)], [a]))
  const tok = (await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })).json()
  await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })
  await app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: `Bearer ${a.secret}x` }, payload: { server: 'default' } })
  await app.inject({ method: 'GET', url: `/v1/tokens/${tok.tokenId}?X-Plex-Token=${tok.token}`, headers: a.auth })
  const redis = new Redis(REDIS_URL)
  t.teardown(() => redis.disconnect())
  const dump: string[] = []
  let cursor = '0'
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000)
    cursor = next
    for (const key of keys) {
      const type = await redis.type(key)
      dump.push(key)
      if (type === 'string') dump.push(String(await redis.get(key)))
      if (type === 'hash') dump.push(JSON.stringify(await redis.hgetall(key)))
      if (type === 'zset') dump.push(JSON.stringify(await redis.zrange(key, '0', '-1')))
      if (type === 'stream') dump.push(JSON.stringify(await redis.xrange(key, '-', '+')))
    }
  } while (cursor !== '0')
  const all = dump.join('\n')
  t.ok(all.includes(tok.tokenId), 'the dump is not empty')
  for (const [what, secret] of [['token', tok.token], ['admin token', sim.adminToken], ['client secret', a.secret]]) {
    t.notOk(all.includes(secret), `no ${what} in Redis`)
    t.notOk(app.logs.text.includes(secret), `no ${what} in logs`)
  }
  t.ok(app.logs.records().some((r) => r.msg === 'request' && r.client === 'a' && r.route === '/v1/tokens'), 'one line per request with client and route')
})
