import t from 'tap'
import { createHash } from 'node:crypto'
import { Redis } from 'ioredis'
import { createKeys, type RedisContext } from '../src/broker/keys.ts'
import { BrokerError } from '../src/errors.ts'
import type { ClientConfig, ServerConfig } from '../src/config/index.ts'
import { policyFrom } from '../src/proxy/presets.ts'
import { parseProxyKey, ProxyKeys } from '../src/proxy/proxy-keys.ts'
import { withDeadline } from '../src/redis.ts'
import { deleteKeys, monitorRedis, REDIS_URL, uniquePrefix, until, type T } from './helper.ts'

/** A store on its own Redis connection, as another broker instance would have. */
function instance (t: T, prefix: string, now: () => number = Date.now, config?: ConstructorParameters<typeof ProxyKeys>[1]): ProxyKeys {
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 })
  t.teardown(() => redis.disconnect())
  const rc: RedisContext = { redis, keys: createKeys(prefix), call: async (fn) => await withDeadline(fn, 2000), now }
  return new ProxyKeys(rc, config)
}

function setup (t: T, name: string, now?: () => number): { a: ProxyKeys, b: ProxyKeys, prefix: string } {
  const prefix = uniquePrefix(name)
  t.teardown(() => deleteKeys(prefix))
  return { a: instance(t, prefix, now), b: instance(t, prefix, now), prefix }
}

t.test('a key is pbk_<id>.<secret>, shown once; Redis holds only the SHA-256 of its secret', async (t) => {
  const { a, prefix } = setup(t, 'pkey-create')
  const { key, record } = await a.create({ client: 'tautulli', label: 'Tautulli on nas' })
  t.match(key, /^pbk_[A-Za-z0-9_-]{12}\.[A-Za-z0-9_-]{43}$/)
  const parsed = parseProxyKey(key)
  t.ok(parsed !== undefined)
  if (parsed === undefined) return
  t.equal(Buffer.from(parsed.secret, 'base64url').length, 32, '32 random bytes')
  t.match(record, { id: parsed.id, client: 'tautulli', server: null, label: 'Tautulli on nas', expiresAt: null, revokedAt: null })
  t.ok(Math.abs(record.createdAt - Date.now()) < 5000)

  const redis = new Redis(REDIS_URL)
  t.teardown(() => redis.disconnect())
  const stored = await redis.hgetall(`${prefix}:pkey:${parsed.id}`)
  t.equal(stored.digest, createHash('sha256').update(parsed.secret).digest('hex'))
  let everything = ''
  for (const k of await redis.keys(`${prefix}:*`)) {
    const type = await redis.type(k)
    everything += type === 'hash' ? JSON.stringify(await redis.hgetall(k)) : JSON.stringify(await redis.zrange(k, '0', '-1'))
  }
  t.notOk(everything.includes(parsed.secret), 'the secret is nowhere in Redis')
  t.notOk(everything.includes(key))
  t.same(await a.get(parsed.id), record, 'the record reads back without the secret')
})

t.test('verify: the key itself passes; anything else is refused, a real PMS token included', async (t) => {
  const { a } = setup(t, 'pkey-verify')
  const { key, record } = await a.create({ client: 'sonarr', label: 'sonarr' })
  t.same(await a.verify(key), { ok: true, record })
  const { id } = parseProxyKey(key) ?? { id: '' }
  const otherSecret = `pbk_${id}.${'A'.repeat(43)}`
  t.same(await a.verify(otherSecret), { ok: false, reason: 'mismatch' }, 'the right id with another secret')
  t.same(await a.verify(`pbk_${'B'.repeat(12)}.${'A'.repeat(43)}`), { ok: false, reason: 'unknown' }, 'a well-formed key nobody created')
  for (const value of ['xyzPmsToken1234567890', 'transient-4f1c2e0e-0a4d-4c62-a4e4-1b7c8e0f5d11', '', key.toUpperCase(), `${key} `, ` ${key}`,
    `Bearer ${key}`, `${key}=`, key.slice(0, -1), `${key}A`, key.replace('pbk_', 'pbk-'), key.replace('.', '_'), `${key}\n`]) {
    t.same(await a.verify(value), { ok: false, reason: 'malformed' }, JSON.stringify(value.slice(0, 30)))
  }
})

t.test('a revocation made through another instance counts on its very next check', async (t) => {
  const { a, b } = setup(t, 'pkey-revoke')
  const { key, record } = await a.create({ client: 'kometa', label: 'kometa' })
  const keep = await a.create({ client: 'kometa', label: 'second' })
  t.equal((await b.verify(key)).ok, true, 'instance B accepts the key')
  t.equal(await a.revoke(record.id), 'revoked', 'instance A revokes it')
  t.same(await b.verify(key), { ok: false, reason: 'revoked' }, 'B refuses it on the next call, nothing cached')
  t.equal((await b.verify(keep.key)).ok, true, 'the client\'s other key is untouched')
  t.equal(await b.revoke(record.id), 'already-revoked')
  const revoked = await b.get(record.id)
  t.ok(revoked?.revokedAt !== null && revoked?.revokedAt !== undefined, 'the record stays, with its revocation time')
  t.equal(await a.revoke('B'.repeat(12)), 'not-found')
  t.equal(await a.revoke('../../x'), 'not-found', 'an id of another form is not looked up')
  t.same(await b.verify(`pbk_${record.id}.${'A'.repeat(43)}`), { ok: false, reason: 'mismatch' }, 'without the secret, a revoked key looks like any wrong key')
})

t.test('expiry and the server binding', async (t) => {
  let now = Date.UTC(2030, 0, 1)
  const { a } = setup(t, 'pkey-expiry', () => now)
  const { key } = await a.create({ client: 'ha', server: 'living-room', label: 'Home Assistant', expiresAt: now + 60_000 })
  t.equal((await a.verify(key, { server: 'living-room' })).ok, true)
  t.same(await a.verify(key, { server: 'basement' }), { ok: false, reason: 'wrong-server' }, 'bound to one server')
  now += 60_000
  t.same(await a.verify(key, { server: 'living-room' }), { ok: false, reason: 'expired' }, 'refused from expiresAt on')
  const any = await a.create({ client: 'ha', label: 'unbound' })
  t.equal((await a.verify(any.key, { server: 'basement' })).ok, true, 'an unbound key reaches any server (the client\'s own list decides)')
})

t.test('create refuses bad input with a 400; list shows every key or one client\'s, oldest first', async (t) => {
  let now = Date.now()
  const { a } = setup(t, 'pkey-list', () => now)
  const bad = async (opts: Parameters<ProxyKeys['create']>[0], expected: RegExp): Promise<void> => {
    const err = await a.create(opts).then(() => undefined, (e: unknown) => e)
    t.ok(err instanceof BrokerError && err.statusCode === 400 && expected.test(err.message), `${expected.source}: ${String(err)}`)
  }
  await bad({ client: 'Bad:Id', label: 'x' }, /^client:/)
  await bad({ client: 'ok', server: 'a b', label: 'x' }, /^server:/)
  await bad({ client: 'ok', label: '' }, /^label:/)
  await bad({ client: 'ok', label: 'x'.repeat(101) }, /^label:/)
  await bad({ client: 'ok', label: 'forged\nline' }, /^label:/)
  await bad({ client: 'ok', label: 'x', expiresAt: now - 1 }, /^expiresAt:/)
  await bad({ client: 'ok', label: 'x', expiresAt: 1.5 }, /^expiresAt:/)

  const k1 = await a.create({ client: 'one', label: 'first' })
  now += 10
  const k2 = await a.create({ client: 'two', label: 'second', server: 's1' })
  now += 10
  const k3 = await a.create({ client: 'one', label: 'third' })
  await a.revoke(k3.record.id)
  t.same((await a.list()).map((r) => r.label), ['first', 'second', 'third'])
  t.same((await a.list({ client: 'one' })).map((r) => [r.id, r.revokedAt === null]), [[k1.record.id, true], [k3.record.id, false]])
  t.same(await a.list({ client: 'two' }), [k2.record])
  t.same(await a.list({ client: 'nobody' }), [])
})

t.test('a check is one Redis command', async (t) => {
  const { a, prefix } = setup(t, 'pkey-trips')
  const { key } = await a.create({ client: 'x', label: 'x' })
  const seen: string[] = []
  const stop = await monitorRedis((words) => { if (words.some((w) => w.startsWith(`${prefix}:`))) seen.push(words.join(' ')) })
  t.teardown(stop)
  await a.verify(key)
  await a.verify('not-a-key')
  // A marker read after them: once MONITOR has shown it, it has shown everything before it.
  const marker = 'M'.repeat(12)
  await a.get(marker)
  t.ok(await until(5000, async () => seen.some((c) => c.endsWith(marker))), 'the marker arrived')
  stop()
  const checks = seen.slice(0, seen.findIndex((c) => c.endsWith(marker)))
  t.equal(checks.length, 1, `verify of a key: ${checks.join(' | ')}; of a non-key: none`)
  t.match(checks[0], /^hgetall /i)
})

t.test('a key whose client or server left the configuration is refused and listed as orphaned', async (t) => {
  const prefix = uniquePrefix('pkey-orphan')
  t.teardown(() => deleteKeys(prefix))
  const built = policyFrom({ preset: 'read' })
  if (!('policy' in built)) throw new Error('the read preset compiles')
  const client = (id: string, over: Partial<ClientConfig> = {}): ClientConfig =>
    ({ id, secretSha256: Buffer.alloc(32), servers: ['one', 'two'], scopes: ['token:issue'], rateLimit: { max: 1, timeWindowMs: 1 }, sources: [], proxy: built.policy, ...over })
  const server = (name: string): ServerConfig => ({ name, url: 'http://127.0.0.1:1', adminToken: 'x', tokenSource: 'token' })
  const before = { clients: [client('tautulli')], servers: [server('one'), server('two')] }
  const a = instance(t, prefix, Date.now, before)
  const unbound = await a.create({ client: 'tautulli', label: 'any server' })
  const bound = await a.create({ client: 'tautulli', server: 'two', label: 'server two' })
  t.equal((await a.verify(unbound.key)).ok, true)
  t.equal(a.state(unbound.record), 'active')
  t.same(await a.verify(unbound.key, { server: 'three' }), { ok: false, reason: 'wrong-server' }, 'an unbound key reaches only servers of its client\'s list')

  // Other instances, restarted with another configuration: the very next check counts it.
  const cases: Array<[string, ConstructorParameters<typeof ProxyKeys>[1], string, string]> = [
    ['client removed', { ...before, clients: [] }, 'client-removed', 'client-removed'],
    ['proxy section removed', { ...before, clients: [client('tautulli', { proxy: undefined })] }, 'no-proxy-section', 'no-proxy-section'],
    ['server removed', { ...before, servers: [server('one')] }, 'fine', 'server-removed'],
    ['server left the client\'s list', { ...before, clients: [client('tautulli', { servers: ['one'] })] }, 'fine', 'server-not-allowed'],
  ]
  for (const [name, config, unboundWhy, boundWhy] of cases) {
    const b = instance(t, prefix, Date.now, config)
    for (const [k, why] of [[unbound, unboundWhy], [bound, boundWhy]] as const) {
      const label = `${name}: key ${k.record.label}`
      if (why === 'fine') {
        t.equal((await b.verify(k.key)).ok, true, `${label} still works`)
        t.equal(b.state(k.record), 'active')
      } else {
        t.same(await b.verify(k.key), { ok: false, reason: 'orphaned' }, `${label} is refused`)
        t.equal(b.orphaned(k.record), why, `${label}: ${why}`)
        t.equal(b.state(k.record), 'orphaned')
      }
    }
  }
  t.same(await a.verify(`pbk_${bound.record.id}.${'A'.repeat(43)}`), { ok: false, reason: 'mismatch' }, 'without the secret, nothing is said about the state')
  await a.revoke(bound.record.id)
  t.equal(a.state((await a.get(bound.record.id))!), 'revoked', 'revocation is what a listing shows first')
  t.equal(instance(t, prefix, Date.now, { ...before, clients: [] }).state((await a.get(bound.record.id))!), 'revoked')
})
