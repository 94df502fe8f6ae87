import t from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import pino from 'pino'
import { createKeys } from '../src/broker/keys.ts'
import { ProxyKeyCache } from '../src/proxy/key-cache.ts'
import { buildTestApp, REDIS_URL, testConfig, uniquePrefix, until } from './helper.ts'
import { get, proxyClient, proxySetup } from './proxy-helper.ts'

/**
 * The proxy's local view of keys (key-cache.ts): a key read once is checked without Redis on the
 * next requests, yet a revocation made on any instance is refused on the next request, an expired
 * key is refused by the clock, and a view whose change-log reader is stalled is not used at all.
 */

const reader = (): ReturnType<typeof proxyClient> => proxyClient('reader', { preset: 'read' })

type Check = Pick<typeof t, 'ok' | 'equal'>

/** Requests with the key until the local view has it (on a loaded machine a round can come late, and the view is then not used). */
async function cached (t: Check, base: string, key: string, id: string, cache: ProxyKeyCache): Promise<void> {
  t.ok(await until(3000, async () => {
    t.equal((await get(`${base}/library/sections`, { 'x-plex-token': key })).status, 200)
    return cache.get(id) !== undefined
  }), 'the key is in the local view')
}

t.test('a key revoked through another broker instance is refused on the next request, though this one had it cached', async (t) => {
  const s = await proxySetup(t, [reader()])
  const { key, id } = await s.key('reader')
  const other = await buildTestApp(t, testConfig(s.config.redisPrefix, s.config.servers, [reader()], { brokerSecret: s.config.brokerSecret }), { defaultMetrics: false })
  const cache = s.app.broker.proxyKeyCache!
  await cached(t, s.base, key, id, cache)
  t.equal((await get(`${s.base}/library/sections`, { 'x-plex-token': key })).status, 200, 'and served from it')

  t.equal(await other.proxy.keys.revoke(id), 'revoked', 'revoked through the other instance')
  const r = await get(`${s.base}/library/sections`, { 'x-plex-token': key })
  t.equal(r.status, 401, 'refused on the next request')
  t.equal(JSON.parse(r.body.toString()).code, 'UNAUTHENTICATED')
  t.equal(cache.get(id), undefined, 'and gone from the local view')

  // A wrong secret for a cached key is still refused: the digest is compared on every request.
  const second = await s.key('reader')
  await cached(t, s.base, second.key, second.id, cache)
  const wrong = `${second.key.slice(0, -1)}${second.key.endsWith('A') ? 'B' : 'A'}`
  t.equal((await get(`${s.base}/library/sections`, { 'x-plex-token': wrong })).status, 401, 'a wrong secret of a cached key is refused')
})

t.test('a cached key expires by the clock', async (t) => {
  const s = await proxySetup(t, [reader()])
  const expiresAt = Date.now() + 1500
  const { key, id } = await s.key('reader', { expiresAt })
  await cached(t, s.base, key, id, s.app.broker.proxyKeyCache!)
  await sleep(expiresAt - Date.now() + 50)
  t.equal((await get(`${s.base}/library/sections`, { 'x-plex-token': key })).status, 401, 'refused once expired')
})

t.test('a stalled change-log reader fails closed: keys are read from Redis, so a revocation still counts', async (t) => {
  // The reader's connection is one the test can cut: then the reader cannot read the change log.
  let readerConnection: Redis | undefined
  const s = await proxySetup(t, [reader()], {
    proxyKeyCache: { freshMs: 1000, connect: () => (readerConnection = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 })) },
  })
  const { key, id } = await s.key('reader')
  const other = await buildTestApp(t, testConfig(s.config.redisPrefix, s.config.servers, [reader()], { brokerSecret: s.config.brokerSecret }), { defaultMetrics: false })
  const cache = s.app.broker.proxyKeyCache!
  await cached(t, s.base, key, id, cache)

  readerConnection!.disconnect()
  t.ok(await until(3000, async () => !cache.usable), 'the view is given up once the reader has not confirmed a round in time')
  t.equal(cache.size, 0, 'and emptied')
  t.equal((await get(`${s.base}/library/sections`, { 'x-plex-token': key })).status, 200, 'the key still works, read from Redis')
  t.equal(cache.size, 0, 'nothing is cached while the reader is stalled')
  t.equal(await other.proxy.keys.revoke(id), 'revoked', 'revoked through the other instance; this reader cannot see it')
  t.equal((await get(`${s.base}/library/sections`, { 'x-plex-token': key })).status, 401, 'refused on the next request all the same')
  t.ok(s.app.logs.records().some((l) => l.msg === 'proxy key cache: the change-log reader is behind; keys are read from Redis until it is back'))
})

t.test('a read that raced a revocation is not kept; a full view is emptied, not grown', async (t) => {
  const keys = createKeys(uniquePrefix('pkc'))
  let now = 0
  const cache = new ProxyKeyCache({ rc: { keys }, connect: () => new Redis(REDIS_URL), logger: pino({ level: 'silent' }), freshMs: 500, maxEntries: 2, clock: () => now })
  t.teardown(async () => { await cache.close() })
  cache.start()
  t.ok(await until(2000, async () => { now = performance.now(); return cache.usable }))
  const record = { client: 'reader', digest: 'ab' }
  const before = cache.generation
  cache.forget('revoked-meanwhile')
  cache.set('k1', record, before)
  t.equal(cache.get('k1'), undefined, 'a read sent before a revocation was seen is dropped')
  cache.set('k1', record, cache.generation)
  cache.set('k2', record, cache.generation)
  cache.set('k3', record, cache.generation)
  t.equal(cache.size, 1, 'full: emptied before the new record')
  const generation = cache.generation
  now += 10_000
  t.equal(cache.get('k3'), undefined, 'not used once the last confirmed round is too old')
  t.not(cache.generation, generation, 'and a read taken before the stall is not kept after it')
})
