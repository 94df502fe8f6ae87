import t from 'tap'
import { randomBytes } from 'node:crypto'
import { Redis } from 'ioredis'
import { buildTestApp, makeClient, REDIS_URL, type T, testConfig, until } from './helper.ts'
import { get, proxyClient, proxySetup } from './proxy-helper.ts'

/**
 * The proxy's local view of the clients' live tokens (src/proxy/token-view.ts): proxied requests
 * do not run the serve script each, yet a revocation on any instance moves them to a new token,
 * the token PMS rejected is never used again, a key with a request limit is still counted on
 * every request, and a stalled change-log reader turns the view off.
 */

const reader = (): ReturnType<typeof proxyClient> => proxyClient('reader', { preset: 'read' })
const OPS = ['token:revoke', 'audit:read', 'server:read', 'server:rotate'] as const

/** Counts the serve script's runs for proxied requests of this prefix, as Redis executes them (MONITOR). */
async function serveCounter (t: T, prefix: string): Promise<() => number> {
  const base = new Redis(REDIS_URL)
  const monitor = await base.monitor()
  let n = 0
  monitor.on('monitor', (_time: string, args: string[]) => {
    // The serve script's arguments: its keys (under the prefix) and `proxy` as its `via`.
    if (/^evalsha$/i.test(args[0] ?? '') && args.some((a) => a.startsWith(`${prefix}:`)) && args[args.length - 1] === 'proxy') n++
  })
  t.teardown(() => { monitor.disconnect(); base.disconnect() })
  return () => n
}

/** The token of the simulator's latest proxied request (the broker's own calls, probes and mints, are not). */
const lastToken = (s: { sim: { requestLog: Array<{ path: string, token?: string }> } }): string | undefined =>
  s.sim.requestLog.findLast((r) => r.path === '/library/sections')?.token

async function ok (s: { base: string }, key: string): Promise<number> {
  return (await get(`${s.base}/library/sections`, { 'x-plex-token': key })).status
}

t.test('proxied requests reuse the live token: the serve script runs about once a second, not per request', async (t) => {
  const s = await proxySetup(t, [reader()])
  const { key } = await s.key('reader')
  t.ok(await until(3000, async () => await ok(s, key) === 200 && s.app.proxy.tokens.size === 1), 'the token is in the view')
  const token = lastToken(s)
  const serves = await serveCounter(t, s.config.redisPrefix)
  const started = performance.now()
  const n = 200
  const statuses = new Set<number>()
  for (let i = 0; i < n; i++) statuses.add(await ok(s, key))
  const seconds = (performance.now() - started) / 1000
  t.same([...statuses], [200])
  const bound = Math.ceil(seconds) + 2
  t.ok(serves() <= bound, `${serves()} serve script runs for ${n} requests in ${seconds.toFixed(2)} s (at most ${bound})`)
  t.ok(s.sim.requestLog.slice(-n).every((r) => r.path === '/library/sections' && r.token === token), 'every request carried the same live token')
})

t.test('a key with a request limit is counted on every request: the view is not used for it', async (t) => {
  const s = await proxySetup(t, [proxyClient('limited', { preset: 'read', limits: { requestsPerMinute: 1000 } })])
  const { key } = await s.key('limited')
  t.equal(await ok(s, key), 200)
  const serves = await serveCounter(t, s.config.redisPrefix)
  for (let i = 0; i < 20; i++) t.equal(await ok(s, key), 200)
  t.ok(await until(2000, async () => serves() === 20), `one serve script run per request (${serves()})`)
})

t.test('a token revoked through another instance is replaced in the proxied requests; the old one is not used again', async (t) => {
  const ops = makeClient('ops', { scopes: [...OPS] })
  // Entries that would live a minute: only the change log can move the view here.
  const s = await proxySetup(t, [reader(), ops], { proxy: { tokenMaxAgeMs: 60_000 } })
  const other = await buildTestApp(t, testConfig(s.config.redisPrefix, s.config.servers, [reader(), ops], { brokerSecret: s.config.brokerSecret }), { defaultMetrics: false })
  const { key } = await s.key('reader')
  // Until the view holds the token (it keeps nothing before its reader's first round).
  t.ok(await until(3000, async () => await ok(s, key) === 200 && s.app.proxy.tokens.size === 1), 'the token is in the view')
  const old = lastToken(s)!
  const revoked = await other.inject({ method: 'POST', url: '/v1/revoke', headers: ops.auth, payload: { client: 'reader', reason: 'leaked' } })
  t.equal(revoked.statusCode, 200, 'revoked through the other instance')
  let seen = 0
  t.ok(await until(3000, async () => {
    t.equal(await ok(s, key), 200)
    seen = s.sim.requestLog.length
    return lastToken(s) !== old
  }), 'a proxied request carries a new token')
  for (let i = 0; i < 20; i++) await ok(s, key)
  t.notOk(s.sim.requestLog.slice(seen).some((r) => r.token === old), 'and none after it carries the revoked one')
  t.equal(s.app.proxy.tokens.size, 1, 'the new one is in the view')
})

t.test('the token PMS rejected is dropped from the view at once', async (t) => {
  const s = await proxySetup(t, [reader()], { proxy: { tokenMaxAgeMs: 60_000 } })
  const { key } = await s.key('reader')
  t.ok(await until(3000, async () => await ok(s, key) === 200 && s.app.proxy.tokens.size === 1), 'the token is in the view')
  const old = lastToken(s)!
  await s.sim.restart()
  const after = s.sim.requestLog.length
  t.equal(await ok(s, key), 200, 'answered after the restart (report, re-mint, one retry)')
  for (let i = 0; i < 10; i++) t.equal(await ok(s, key), 200)
  // The rejection check asks PMS with the reported token itself (GET /): only proxied requests count.
  const proxied = s.sim.requestLog.slice(after).filter((r) => r.path === '/library/sections')
  t.equal(proxied.length, 12, 'the first request twice (found dead, retried), then the ten others')
  t.equal(proxied.filter((r) => r.token === old).length, 1, 'the dead token was sent once, by the request that found it dead')
  t.not(lastToken(s), old)
})

t.test('a stalled change-log reader turns the view off: every request runs the serve script', async (t) => {
  let readerConnection: Redis | undefined
  const s = await proxySetup(t, [reader()], {
    proxyKeyCache: { freshMs: 1000, connect: () => (readerConnection = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 })) },
  })
  const { key } = await s.key('reader')
  t.equal(await ok(s, key), 200)
  readerConnection!.disconnect()
  t.ok(await until(3000, async () => !s.app.broker.proxyKeyCache!.usable), 'the reader is behind')
  const serves = await serveCounter(t, s.config.redisPrefix)
  for (let i = 0; i < 10; i++) t.equal(await ok(s, key), 200)
  t.ok(await until(2000, async () => serves() === 10), `one serve script run per request (${serves()})`)
  t.equal(s.app.proxy.tokens.size, 0, 'and nothing kept')
})

t.test('a broker restarted with another BROKER_SECRET on the same Redis: the proxy key still works, with a fresh token', async (t) => {
  const s = await proxySetup(t, [reader()])
  const { key } = await s.key('reader')
  t.equal(await ok(s, key), 200)
  const old = lastToken(s)!
  await s.app.close()
  // The new instance cannot open the tokens sealed under the old secret; the keys are digests, not sealed.
  const rotated = await buildTestApp(t, { ...testConfig(s.config.redisPrefix, s.config.servers, [reader()]), brokerSecret: randomBytes(32) }, { defaultMetrics: false })
  await rotated.ready()
  await rotated.proxy.listen('127.0.0.1', { default: 0 })
  const base = `http://127.0.0.1:${rotated.proxy.port('default')}`
  const statuses = new Set<number>()
  for (let i = 0; i < 5; i++) statuses.add((await get(`${base}/library/sections`, { 'x-plex-token': key })).status)
  t.same([...statuses], [200], 'every request answered, no flush needed')
  const now = lastToken(s)!
  t.not(now, old, 'with a token minted under the new secret')
  t.match(now, /^transient-/)
})
