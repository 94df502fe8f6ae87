import t from 'tap'
import { randomBytes } from 'node:crypto'
import { Redis } from 'ioredis'
import { buildApp } from '../src/app.ts'
import type { Config } from '../src/config/index.ts'
import { buildTestApp, deleteKeys, LogCapture, makeClient, REDIS_URL, serverFor, startSim, testConfig, type TestClient, uniquePrefix, until } from './helper.ts'

// A deployment's Redis outlives the broker, and BROKER_SECRET gets rotated (or a demo restarts with
// a fresh one): tokens sealed under the old secret sit in Redis. They are cache misses, never 500s.

async function issue (app: Awaited<ReturnType<typeof buildApp>>, c: TestClient) {
  const r = await app.inject({ method: 'POST', url: '/v1/tokens', headers: c.auth, payload: { server: 'default' } })
  return { status: r.statusCode, body: r.json() }
}

async function auditFor (prefix: string, tokenId: string): Promise<string[]> {
  const redis = new Redis(REDIS_URL)
  try {
    const events = [...await redis.xrange(`${prefix}:audit`, '-', '+'), ...await redis.xrange(`${prefix}:audit:serves`, '-', '+')]
      .sort(([x], [y]) => (x < y ? -1 : 1))
    return events.map(([, f]) => Object.fromEntries(f.flatMap((_, i) => i % 2 === 0 ? [[f[i], f[i + 1]]] : [])))
      .filter((e) => e.tokenId === tokenId).map((e) => `${e.action}:${JSON.parse(e.detail).reason ?? ''}`)
  } finally {
    redis.disconnect()
  }
}

t.test('a broker restarted with another BROKER_SECRET on the same Redis serves fresh working tokens, and back again', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('a')
  const b = makeClient('b')
  const prefix = uniquePrefix('secret')
  t.teardown(() => deleteKeys(prefix))
  const original = randomBytes(32)
  const rotated = randomBytes(32)
  const config = (secret: Buffer): Config => ({ ...testConfig(prefix, [serverFor(sim)], [a, b]), brokerSecret: secret })

  const first = await buildApp(config(original), { logStream: new LogCapture(), defaultMetrics: false })
  const ta = await issue(first, a)
  const tb = await issue(first, b)
  t.equal(ta.status, 200)
  await first.close()

  const logs = new LogCapture()
  const second = await buildApp(config(rotated), { logStream: logs, defaultMetrics: false })
  const a2 = await issue(second, a)
  t.equal(a2.status, 200, 'not a 500')
  t.not(a2.body.tokenId, ta.body.tokenId, 'a fresh token, not the one sealed under the old secret')
  t.ok(sim.isTokenValid(a2.body.token), 'the fresh token works at PMS')
  t.equal((await issue(second, a)).body.tokenId, a2.body.tokenId, 'and is cached from then on')
  const b2 = await issue(second, b)
  t.equal(b2.status, 200)
  t.not(b2.body.tokenId, tb.body.tokenId)

  const info = (await second.inject({ method: 'GET', url: `/v1/tokens/${ta.body.tokenId}`, headers: a.auth })).json()
  t.equal(info.state, 'invalidated')
  t.equal(info.reason, 'undecryptable')
  t.same(await auditFor(prefix, ta.body.tokenId), ['token.issue:', 'token.invalidate:undecryptable'],
    'the old token was never handed out (or audited as handed out) after the change')
  const metrics = (await second.inject({ method: 'GET', url: '/metrics' })).body
  t.match(metrics, /ptb_undecryptable_tokens_total\{server="default"\} 2/)
  const warnings = logs.records().filter((l) => typeof l.msg === 'string' && l.msg.includes('cannot be opened'))
  t.equal(warnings.length, 1, 'one warning per server, not one per token')
  await second.close()

  const third = await buildApp(config(original), { logStream: new LogCapture(), defaultMetrics: false })
  t.teardown(() => third.close())
  const a3 = await issue(third, a)
  t.equal(a3.status, 200, 'back on the original secret: 200 again')
  t.ok(sim.isTokenValid(a3.body.token))
  t.not(a3.body.tokenId, a2.body.tokenId)
})

t.test('a ciphertext altered in Redis is invalidated and replaced, never served and never a 500', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('a')
  const prefix = uniquePrefix('tamper')
  const app = await buildTestApp(t, testConfig(prefix, [serverFor(sim)], [a]))
  const { tokenId, token } = (await issue(app, a)).body
  const redis = new Redis(REDIS_URL)
  t.teardown(() => redis.disconnect())
  const enc = await redis.hget(`${prefix}:tok:${tokenId}`, 'enc')
  await redis.hset(`${prefix}:tok:${tokenId}`, 'enc', `${enc!.slice(0, -4)}AAAA`)
  const r = await issue(app, a)
  t.equal(r.status, 200)
  t.not(r.body.tokenId, tokenId)
  t.not(r.body.token, token)
  t.ok(sim.isTokenValid(r.body.token))
  const info = (await app.inject({ method: 'GET', url: `/v1/tokens/${tokenId}`, headers: a.auth })).json()
  t.match(info, { state: 'invalidated', reason: 'undecryptable' })
})

t.test('a record sealed before key ids were stored is served when it opens, and stamped', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('a')
  const prefix = uniquePrefix('legacy')
  const app = await buildTestApp(t, testConfig(prefix, [serverFor(sim)], [a]))
  const first = (await issue(app, a)).body
  const redis = new Redis(REDIS_URL)
  t.teardown(() => redis.disconnect())
  await redis.hdel(`${prefix}:tok:${first.tokenId}`, 'kid')
  const again = await issue(app, a)
  t.equal(again.body.tokenId, first.tokenId, 'the same token: it opens with this secret')
  t.ok(await redis.hget(`${prefix}:tok:${first.tokenId}`, 'kid'), 'stamped with the key id')
})

t.test('restart detection keeps working after a secret change (the canary is replaced, not lost)', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('a')
  const prefix = uniquePrefix('canary')
  t.teardown(() => deleteKeys(prefix))
  const fast = { role: 'all' as const, probeIntervalMs: 500 }
  const config = (secret: Buffer): Config => ({ ...testConfig(prefix, [serverFor(sim)], [a], fast), brokerSecret: secret })
  const first = await buildApp(config(randomBytes(32)), { logStream: new LogCapture(), defaultMetrics: false })
  await first.ready()
  t.ok(await until(5000, async () => (await first.broker.store.peek('~canary', 'default')) !== undefined), 'canary minted')
  const oldCanary = await first.broker.store.peek('~canary', 'default')
  await first.close()

  const second = await buildApp(config(randomBytes(32)), { logStream: new LogCapture(), defaultMetrics: false })
  t.teardown(() => second.close())
  await second.ready()
  const before = (await issue(second, a)).body
  // Let a probe find the old canary unreadable and mint a new one, then restart PMS.
  t.ok(await until(5000, async () => {
    const id = await second.broker.store.peek('~canary', 'default')
    return id !== undefined && id !== oldCanary
  }), 'a fresh canary under the new secret')
  await sim.restart()
  t.ok(await until(5000, async () => (await second.broker.store.get(before.tokenId))?.state === 'invalidated'),
    'the PMS restart is detected and the client token invalidated')
  const after = await issue(second, a)
  t.not(after.body.tokenId, before.tokenId)
  t.ok(sim.isTokenValid(after.body.token))
})

t.test('rotating BROKER_SECRET with BROKER_SECRET_PREVIOUS keeps every token: no re-mint, re-sealed, still traceable', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('a')
  const ops = makeClient('ops', { scopes: ['audit:read'] })
  const prefix = uniquePrefix('rotate')
  t.teardown(() => deleteKeys(prefix))
  const oldSecret = randomBytes(32)
  const newSecret = randomBytes(32)
  const config = (secret: Buffer, previous: Buffer[] = []): Config =>
    ({ ...testConfig(prefix, [serverFor(sim)], [a, ops]), brokerSecret: secret, brokerSecretPrevious: previous })
  const redis = new Redis(REDIS_URL)
  t.teardown(() => redis.disconnect())

  const before = await buildApp(config(oldSecret), { logStream: new LogCapture(), defaultMetrics: false })
  const tk = (await issue(before, a)).body
  const kidBefore = await redis.hget(`${prefix}:tok:${tk.tokenId}`, 'kid')
  await before.close()

  const during = await buildApp(config(newSecret, [oldSecret]), { logStream: new LogCapture(), defaultMetrics: false })
  const mints = sim.counters.mints
  const served = await issue(during, a)
  t.equal(served.status, 200)
  t.equal(served.body.tokenId, tk.tokenId, 'the same token, opened with the previous secret')
  t.equal(served.body.token, tk.token)
  t.equal(sim.counters.mints, mints, 'no re-mint')
  t.ok(await until(3000, async () => (await redis.hget(`${prefix}:tok:${tk.tokenId}`, 'kid')) !== kidBefore), 're-sealed under the new secret')
  const trace = (await during.inject({ method: 'POST', url: '/v1/audit/trace', headers: ops.auth, payload: { token: tk.token } })).json()
  t.match(trace.holder, { client: 'a', tokenId: tk.tokenId }, 'trace finds a token minted under the previous secret')
  await during.close()

  const after = await buildApp(config(newSecret), { logStream: new LogCapture(), defaultMetrics: false })
  t.teardown(() => after.close())
  const still = await issue(after, a)
  t.equal(still.body.tokenId, tk.tokenId, 'after the previous secret is dropped, the re-sealed token is still served')
  t.equal(sim.counters.mints, mints)
})

t.test('a current-token pointer altered in Redis never hands client A the token of client B', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('a')
  const b = makeClient('b')
  const ops = makeClient('ops', { scopes: ['audit:read'] })
  const prefix = uniquePrefix('swap')
  const app = await buildTestApp(t, testConfig(prefix, [serverFor(sim)], [a, b, ops]))
  const ta = (await issue(app, a)).body
  const tb = (await issue(app, b)).body
  const redis = new Redis(REDIS_URL)
  t.teardown(() => redis.disconnect())
  // Whoever can write Redis points a's slot at b's record.
  await redis.set(`${prefix}:cur:a:default`, tb.tokenId)
  const got = await issue(app, a)
  t.equal(got.status, 200)
  t.not(got.body.token, tb.token, 'never b\'s token')
  t.not(got.body.tokenId, tb.tokenId)
  t.ok(sim.isTokenValid(got.body.token), 'a fresh token of a\'s own')
  t.equal((await issue(app, b)).body.tokenId, tb.tokenId, 'b keeps its token')
  const events = (await app.inject({ method: 'GET', url: '/v1/audit?action=token.mismatch', headers: ops.auth })).json().events
  t.equal(events.length, 1, 'the tampering is audited')
  t.match(events[0], { client: 'a', tokenId: tb.tokenId, detail: { ownerClient: 'b' } })
  t.not(ta.tokenId, got.body.tokenId)

  // A ciphertext copied onto another client's record does not open either (owner bound in the AAD).
  const encB = await redis.hget(`${prefix}:tok:${tb.tokenId}`, 'enc')
  await redis.hset(`${prefix}:tok:${got.body.tokenId}`, 'enc', encB!)
  const again = await issue(app, a)
  t.not(again.body.token, tb.token, 'a copied ciphertext is not opened for another record')
  t.ok(sim.isTokenValid(again.body.token))
})
