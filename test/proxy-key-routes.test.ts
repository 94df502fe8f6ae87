import t from 'tap'
import { createHash } from 'node:crypto'
import type { FastifyInstance, InjectOptions } from 'fastify'
import { Redis } from 'ioredis'
import type { ServerConfig } from '../src/config/index.ts'
import { policyFrom } from '../src/proxy/presets.ts'
import { parseProxyKey } from '../src/proxy/proxy-keys.ts'
import { buildTestApp, makeClient, REDIS_URL, type T, testConfig, type TestClient, uniquePrefix } from './helper.ts'

const ERROR_KEYS = ['code', 'error', 'message', 'requestId', 'statusCode']

// Routes and policy only: no PMS is called, so the servers need no simulator behind them.
const server = (name: string): ServerConfig => ({ name, url: 'http://127.0.0.1:1', adminToken: `admin-${name}`, tokenSource: 'token' })

function withProxy (c: TestClient): TestClient {
  const built = policyFrom({ preset: 'read' })
  if (!('policy' in built)) throw new Error('the read preset compiles')
  c.config.proxy = built.policy
  return c
}

async function setup (t: T) {
  const clients = {
    tautulli: withProxy(makeClient('tautulli')),
    sonarr: withProxy(makeClient('sonarr', { servers: ['one'] })),
    plain: makeClient('plain'),
    ops: makeClient('ops', { scopes: ['proxy-key:manage', 'audit:read'] }),
    opsOne: makeClient('ops-one', { scopes: ['proxy-key:manage', 'audit:read'], servers: ['one'] }),
    reader: makeClient('reader', { scopes: ['audit:read', 'token:revoke', 'server:read'] }),
  }
  const cfg = testConfig(uniquePrefix('pkey-routes'), [server('one'), server('two')], Object.values(clients))
  // Two instances on one Redis: what one revokes, the other refuses on its next check.
  const app1 = await buildTestApp(t, cfg, { defaultMetrics: false })
  const app2 = await buildTestApp(t, { ...cfg }, { defaultMetrics: false })
  return { clients, cfg, app1, app2 }
}

const call = async (app: FastifyInstance, who: TestClient, method: InjectOptions['method'], url: string, payload?: Record<string, unknown>) =>
  await app.inject({ method, url, headers: who.auth, ...(payload === undefined ? {} : { payload }) })

/** Every value under the prefix, whatever its type, as one string. */
async function dumpRedis (prefix: string, only?: (key: string) => boolean): Promise<string> {
  const redis = new Redis(REDIS_URL)
  try {
    let out = ''
    for (const k of await redis.keys(`${prefix}:*`)) {
      if (only !== undefined && !only(k)) continue
      const type = await redis.type(k)
      if (type === 'hash') out += JSON.stringify(await redis.hgetall(k))
      else if (type === 'zset') out += JSON.stringify(await redis.zrange(k, '0', '-1'))
      else if (type === 'stream') out += JSON.stringify(await redis.xrange(k, '-', '+'))
      else if (type === 'string') out += (await redis.get(k)) ?? ''
      else if (type === 'set') out += JSON.stringify(await redis.smembers(k))
      else if (type === 'list') out += JSON.stringify(await redis.lrange(k, 0, -1))
      out += '\n'
    }
    return out
  } finally {
    redis.disconnect()
  }
}

t.test('a key is shown once; listings never show it; a revocation counts on the other instance\'s next check', async (t) => {
  const { clients, cfg, app1, app2 } = await setup(t)
  const { ops } = clients
  const created = await call(app1, ops, 'POST', '/v1/proxy-keys', { client: 'tautulli', server: 'one', label: 'Tautulli on nas' })
  t.equal(created.statusCode, 201, created.body)
  t.equal(created.headers['cache-control'], 'no-store', 'an answer holding a credential is not cached')
  const { key, record } = created.json()
  t.match(key, /^pbk_[A-Za-z0-9_-]{12}\.[A-Za-z0-9_-]{43}$/)
  const parsed = parseProxyKey(key)!
  t.match(record, { id: parsed.id, client: 'tautulli', server: 'one', label: 'Tautulli on nas', expiresAt: null, revokedAt: null, state: 'active', orphaned: null })
  t.ok(Math.abs(Date.parse(record.createdAt) - Date.now()) < 60_000)
  const digest = createHash('sha256').update(parsed.secret).digest('hex')

  // The other instance lists it, reads it by id and accepts it, never showing the secret or its digest.
  const list = await call(app2, ops, 'GET', '/v1/proxy-keys')
  t.equal(list.statusCode, 200)
  t.same(list.json(), { keys: [record] })
  const one = await call(app2, ops, 'GET', `/v1/proxy-keys/${parsed.id}`)
  t.same(one.json(), record)
  t.same((await call(app2, ops, 'GET', '/v1/proxy-keys?client=tautulli')).json(), { keys: [record] })
  t.same((await call(app2, ops, 'GET', '/v1/proxy-keys?client=sonarr')).json(), { keys: [] })
  for (const body of [list.body, one.body]) {
    t.notOk(body.includes(parsed.secret) || body.includes(digest), 'neither the secret nor its digest is ever read back')
  }
  t.equal((await app2.broker.proxyKeys.verify(key, { server: 'one' })).ok, true, 'instance 2 accepts the key')

  const revoked = await app1.inject({ method: 'DELETE', url: `/v1/proxy-keys/${parsed.id}?reason=tool%20retired`, headers: ops.auth })
  t.equal(revoked.statusCode, 200, revoked.body)
  t.match(revoked.json(), { alreadyRevoked: false, record: { id: parsed.id, state: 'revoked', revokedAt: String } })
  t.same(await app2.broker.proxyKeys.verify(key, { server: 'one' }), { ok: false, reason: 'revoked' }, 'instance 2 refuses it on its very next check')
  const again = await call(app2, ops, 'DELETE', `/v1/proxy-keys/${parsed.id}`)
  t.equal(again.statusCode, 200, 'revoking twice is no error')
  t.same(again.json(), { alreadyRevoked: true, record: revoked.json().record }, 'the first revocation\'s time is kept')
  t.equal((await call(app1, ops, 'GET', '/v1/proxy-keys')).json().keys[0].state, 'revoked', 'the listing keeps revoked keys')

  for (const [method, url, status] of [['DELETE', '/v1/proxy-keys/BBBBBBBBBBBB', 404], ['GET', '/v1/proxy-keys/BBBBBBBBBBBB', 404],
    ['GET', '/v1/proxy-keys/not-an-id', 400], ['DELETE', `/v1/proxy-keys/${encodeURIComponent(key)}`, 400]] as const) {
    const r = await call(app1, ops, method, url)
    t.equal(r.statusCode, status, `${method} ${url.slice(0, 40)}`)
    t.same(Object.keys(r.json()).sort(), ERROR_KEYS, 'a JSON error')
    t.notOk(r.body.includes(parsed.secret), 'the error does not echo the secret')
  }

  // The audit trail: who, for which client and server, the key id and label; the key's fingerprint; never the key.
  const events = (await call(app2, ops, 'GET', '/v1/audit')).json().events as Array<Record<string, any>>
  const createEvent = events.find((e) => e.action === 'proxy-key.create')
  const revokeEvents = events.filter((e) => e.action === 'proxy-key.revoke')
  t.match(createEvent, { client: 'tautulli', server: 'one', tokenId: null, fingerprint: app1.broker.sealer.fingerprint(key), detail: { actor: 'ops', keyId: parsed.id, label: 'Tautulli on nas', expiresAt: null } })
  t.equal(revokeEvents.length, 2, 'both revocation calls are recorded')
  t.match(revokeEvents.at(-1), { client: 'tautulli', server: 'one', detail: { actor: 'ops', keyId: parsed.id, label: 'Tautulli on nas', reason: 'tool retired' } })
  t.notOk('alreadyRevoked' in revokeEvents.at(-1)!.detail)
  t.match(revokeEvents[0], { detail: { alreadyRevoked: true } })
  const trace = await call(app1, ops, 'POST', '/v1/audit/trace', { token: key })
  t.ok(trace.json().events.some((e: { action: string }) => e.action === 'proxy-key.create'), 'a leaked key is traced to its creation by its fingerprint')

  const auditStreams = await dumpRedis(cfg.redisPrefix, (k) => k.includes(':audit'))
  t.ok(auditStreams.includes('proxy-key.create') && auditStreams.includes(parsed.id), 'the audit streams were read')
  for (const [what, value] of [['key', key], ['secret', parsed.secret], ['digest', digest]]) {
    t.notOk(auditStreams.includes(value), `the audit trail holds no ${what}`)
  }
  const everything = await dumpRedis(cfg.redisPrefix)
  t.notOk(everything.includes(parsed.secret), 'Redis holds the secret nowhere')
  for (const app of [app1, app2]) {
    t.ok(app.logs.text.includes(parsed.id), 'the logs name the key by its id')
    t.notOk(app.logs.text.includes(parsed.secret), 'the logs never hold the secret')
  }
})

t.test('the scope is proxy-key:manage; without it 403, without a secret 401', async (t) => {
  const { clients, app1 } = await setup(t)
  const { ops, reader } = clients
  const { record } = (await call(app1, ops, 'POST', '/v1/proxy-keys', { client: 'tautulli', label: 'x' })).json()
  for (const [method, url, payload] of [['POST', '/v1/proxy-keys', { client: 'tautulli', label: 'y' }], ['GET', '/v1/proxy-keys', undefined],
    ['GET', `/v1/proxy-keys/${record.id}`, undefined], ['DELETE', `/v1/proxy-keys/${record.id}`, undefined]] as const) {
    const denied = await call(app1, reader, method, url, payload)
    t.equal(denied.statusCode, 403, `${method} ${url}`)
    t.equal(denied.json().code, 'FORBIDDEN')
    t.match(denied.json().message, /proxy-key:manage/)
    const anonymous = await app1.inject({ method, url, ...(payload === undefined ? {} : { payload }) })
    t.equal(anonymous.statusCode, 401)
  }
  t.equal((await call(app1, ops, 'GET', `/v1/proxy-keys/${record.id}`)).json().state, 'active', 'nothing was revoked')
  t.equal((await call(app1, ops, 'GET', '/v1/proxy-keys')).json().keys.length, 1, 'nothing was created')
})

t.test('an ops client limited to server one manages only keys bound to server one', async (t) => {
  const { clients, app1 } = await setup(t)
  const { ops, opsOne } = clients
  const two = (await call(app1, ops, 'POST', '/v1/proxy-keys', { client: 'tautulli', server: 'two', label: 'two' })).json()
  const any = (await call(app1, ops, 'POST', '/v1/proxy-keys', { client: 'tautulli', label: 'any' })).json()

  const forTwo = await call(app1, opsOne, 'POST', '/v1/proxy-keys', { client: 'tautulli', server: 'two', label: 'x' })
  t.equal(forTwo.statusCode, 403)
  t.match(forTwo.json(), { code: 'FORBIDDEN', message: 'Client "ops-one" may not use server "two".' })
  const unbound = await call(app1, opsOne, 'POST', '/v1/proxy-keys', { client: 'tautulli', label: 'x' })
  t.equal(unbound.statusCode, 403, 'a key without a server would reach server two too')
  t.match(unbound.json().message, /Give a server/)
  const probe = await call(app1, opsOne, 'POST', '/v1/proxy-keys', { client: 'tautulli', server: 'nosuch', label: 'x' })
  t.equal(probe.statusCode, 403, 'a name outside its list is refused before it is looked up')
  const own = await call(app1, opsOne, 'POST', '/v1/proxy-keys', { client: 'tautulli', server: 'one', label: 'one' })
  t.equal(own.statusCode, 201)

  t.same((await call(app1, opsOne, 'GET', '/v1/proxy-keys')).json().keys.map((k: { label: string }) => k.label), ['one'], 'it lists only keys of server one')
  t.same((await call(app1, ops, 'GET', '/v1/proxy-keys')).json().keys.map((k: { label: string }) => k.label), ['two', 'any', 'one'], 'a * client lists all, oldest first')
  for (const k of [two, any]) {
    t.equal((await call(app1, opsOne, 'GET', `/v1/proxy-keys/${k.record.id}`)).statusCode, 404, `${k.record.label}: not confirmed`)
    t.equal((await call(app1, opsOne, 'DELETE', `/v1/proxy-keys/${k.record.id}`)).statusCode, 404, `${k.record.label}: not revoked`)
    t.equal((await app1.broker.proxyKeys.verify(k.key)).ok, true, `${k.record.label}: still works`)
  }
  t.equal((await call(app1, opsOne, 'DELETE', `/v1/proxy-keys/${own.json().record.id}`)).statusCode, 200)
  const audit = (await call(app1, opsOne, 'GET', '/v1/audit?action=proxy-key.create')).json().events
  t.same(audit.map((e: { server: string }) => e.server), ['one'], 'its audit view shows the events of server one only')
})

t.test('bad requests are 400 JSON errors with a code saying what is wrong', async (t) => {
  const { clients, app1 } = await setup(t)
  const { ops } = clients
  const soon = (ms: number) => new Date(Date.now() + ms).toISOString()
  const cases: Array<[Record<string, unknown>, string, RegExp]> = [
    [{ client: 'nobody', label: 'x' }, 'UNKNOWN_CLIENT', /No client "nobody"/],
    [{ client: 'plain', label: 'x' }, 'PROXY_NOT_CONFIGURED', /"plain" has no proxy section/],
    [{ client: 'tautulli', server: 'three', label: 'x' }, 'UNKNOWN_SERVER', /No server "three"/],
    [{ client: 'sonarr', server: 'two', label: 'x' }, 'SERVER_NOT_IN_CLIENT_LIST', /"sonarr" may not use server "two"/],
    [{ client: 'tautulli', label: 'x', expiresAt: soon(-60_000) }, 'BAD_REQUEST', /expiresAt must be in the future/],
    [{ client: 'tautulli', label: 'x', expiresAt: soon(367 * 24 * 3600_000) }, 'BAD_REQUEST', /at most 366 days/],
    [{ client: 'tautulli', label: 'x', expiresAt: 'tomorrow' }, 'BAD_REQUEST', /expiresAt/],
    [{ client: 'tautulli', label: '' }, 'BAD_REQUEST', /label/],
    [{ client: 'tautulli', label: 'x'.repeat(101) }, 'BAD_REQUEST', /label/],
    [{ client: 'tautulli', label: 'forged\nline' }, 'BAD_REQUEST', /label/],
    [{ client: 'tautulli' }, 'BAD_REQUEST', /label/],
    [{ client: 'Bad Name', label: 'x' }, 'BAD_REQUEST', /client/],
    [{ client: 'tautulli', label: 'x', secret: 'mine' }, 'BAD_REQUEST', /additional/],
  ]
  for (const [payload, code, message] of cases) {
    const r = await call(app1, ops, 'POST', '/v1/proxy-keys', payload)
    t.equal(r.statusCode, 400, JSON.stringify(payload).slice(0, 80))
    t.same(Object.keys(r.json()).sort(), ERROR_KEYS)
    t.equal(r.json().code, code)
    t.match(r.json().message, message)
  }
  t.same((await call(app1, ops, 'GET', '/v1/proxy-keys')).json().keys, [], 'nothing was created')
  const bounded = await call(app1, ops, 'POST', '/v1/proxy-keys', { client: 'tautulli', label: 'x', expiresAt: soon(365 * 24 * 3600_000) })
  t.equal(bounded.statusCode, 201, 'a year ahead is fine')
  t.equal(Date.parse(bounded.json().record.expiresAt) - Date.now() > 364 * 24 * 3600_000, true)
})

t.test('keys of a client removed from the configuration are refused and listed as orphaned', async (t) => {
  const { clients, cfg, app1 } = await setup(t)
  const { ops } = clients
  const created = (await call(app1, ops, 'POST', '/v1/proxy-keys', { client: 'sonarr', server: 'one', label: 'sonarr' })).json()
  const kept = (await call(app1, ops, 'POST', '/v1/proxy-keys', { client: 'tautulli', label: 'tautulli' })).json()
  // The same deployment restarted without the client.
  const after = await buildTestApp(t, { ...cfg, clients: cfg.clients.filter((c) => c.id !== 'sonarr') }, { defaultMetrics: false })
  t.same(await after.broker.proxyKeys.verify(created.key, { server: 'one' }), { ok: false, reason: 'orphaned' }, 'its key is refused')
  t.equal((await after.broker.proxyKeys.verify(kept.key, { server: 'one' })).ok, true, 'other clients\' keys work')
  const listed = (await call(after, ops, 'GET', '/v1/proxy-keys?client=sonarr')).json().keys
  t.match(listed, [{ id: created.record.id, state: 'orphaned', orphaned: 'client-removed' }], 'listed by the removed client\'s id')
  const revoked = await call(after, ops, 'DELETE', `/v1/proxy-keys/${created.record.id}`)
  t.equal(revoked.statusCode, 200, 'and can still be revoked for good')
  t.match(revoked.json().record, { state: 'revoked', orphaned: 'client-removed' })
})
