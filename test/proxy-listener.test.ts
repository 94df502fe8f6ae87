import t from 'tap'
import { get, proxyClient, proxySetup } from './proxy-helper.ts'

/**
 * The PMS proxy end to end: a real listening socket, real Redis, the broker's token machinery and
 * the simulator, which records what it really received.
 */

const reader = (): ReturnType<typeof proxyClient> => proxyClient('reader', { preset: 'read' })

t.test('an allowed read reaches PMS with the transient token, never the key; header and query keys work', async (t) => {
  const s = await proxySetup(t, [reader()])
  const { key } = await s.key('reader')
  const direct = await get(`${s.sim.url}/library/sections`, { 'x-plex-token': s.sim.adminToken })

  const viaHeader = await get(`${s.base}/library/sections`, { 'x-plex-token': key })
  t.equal(viaHeader.status, 200)
  t.equal(viaHeader.body.toString(), direct.body.toString(), 'the same answer as PMS gives')
  const seen = s.sim.requestLog.filter((r) => r.path === '/library/sections')
  const forwarded = seen[seen.length - 1]
  t.match(forwarded.token, /^transient-/, 'PMS got a transient token')
  t.ok(s.sim.isTokenValid(forwarded.token!), 'a live one')

  // Any case, any number of occurrences; all removed before forwarding.
  const viaQuery = await get(`${s.base}/library/sections?x-plex-token=${key}&X-Plex-Token=${encodeURIComponent(key)}&X-PLEX-TOKEN=${key}`)
  t.equal(viaQuery.status, 200)
  const last = s.sim.requestLog[s.sim.requestLog.length - 1]
  t.equal(last.query, '', 'no X-Plex-Token reached PMS in the query')
  t.equal(last.token, forwarded.token, 'the same cached transient token')

  const json = await get(`${s.base}/library/sections`, { 'x-plex-token': key, accept: 'application/json' })
  t.equal(json.status, 200)
  t.match(JSON.parse(json.body.toString()), { MediaContainer: { size: 2 } })

  for (const r of s.sim.requestLog) t.not(r.token, key, 'the proxy key never reaches PMS')
  t.notOk(s.app.logs.text.includes(key), 'the key is not logged')
  t.notOk(s.app.logs.text.includes(forwarded.token!), 'the transient token is not logged')
  t.notOk(s.app.logs.text.includes(s.sim.adminToken), 'the admin token is not logged')
})

t.test('anything but a valid proxy key is 401 JSON and never reaches PMS', async (t) => {
  const s = await proxySetup(t, [reader(), proxyClient('nobody', { preset: 'read' }, { servers: ['elsewhere'] })])
  const { key, id } = await s.key('reader')
  const other = await s.key('nobody')
  const expired = await s.key('reader', { expiresAt: Date.now() + 150 })
  const before = s.sim.counters.requests
  const cases: Array<[string, Record<string, string>, string]> = [
    ['no key', {}, '/library/sections'],
    ['the PMS admin token', { 'x-plex-token': s.sim.adminToken }, '/library/sections'],
    ['a PMS token in the query', {}, `/library/sections?X-Plex-Token=${s.sim.adminToken}`],
    ['an unknown key', { 'x-plex-token': `pbk_AAAAAAAAAAAA.${'A'.repeat(43)}` }, '/library/sections'],
    ['a wrong secret', { 'x-plex-token': `${key.slice(0, 17)}${'B'.repeat(43)}` }, '/library/sections'],
    ['two different credentials', { 'x-plex-token': key }, `/library/sections?X-Plex-Token=${s.sim.adminToken}`],
    ['a key of a client not allowed this server', { 'x-plex-token': other.key }, '/library/sections'],
  ]
  for (const [what, headers, path] of cases) {
    const r = await s.raw('GET', path, headers)
    t.equal(r.status, 401, what)
    t.match(JSON.parse(r.body), { statusCode: 401, code: 'UNAUTHENTICATED', requestId: String }, `${what}: a JSON error`)
    t.notOk(r.body.includes('html'), `${what}: not PMS's page`)
  }
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.equal((await s.raw('GET', '/library/sections', { 'x-plex-token': expired.key })).status, 401, 'an expired key')
  t.equal(await s.app.proxy.keys.revoke(id), 'revoked')
  t.equal((await s.raw('GET', '/library/sections', { 'x-plex-token': key })).status, 401, 'a revoked key, on the next request')
  t.equal(s.sim.counters.requests, before, 'none of them reached PMS')
})

t.test('failed keys from one address are throttled; a valid key from it still passes', async (t) => {
  const s = await proxySetup(t, [reader()], { proxy: { authFailures: { max: 3, timeWindowMs: 60_000 } } })
  const { key } = await s.key('reader')
  const statuses: number[] = []
  for (let i = 0; i < 5; i++) statuses.push((await s.raw('GET', '/library/sections', { 'x-plex-token': 'nope' })).status)
  t.same(statuses, [401, 401, 401, 429, 429])
  t.equal((await s.raw('GET', '/library/sections', { 'x-plex-token': key })).status, 200)
})

t.test('deny matrix: hard-denied paths in every spelling are refused and never reach PMS', async (t) => {
  const s = await proxySetup(t, [proxyClient('everything', { preset: 'full' })])
  const { key } = await s.key('everything')
  const headers = { 'x-plex-token': key }
  const before = s.sim.counters.requests
  const paths = ['/security/token', '/security/resources', '/myplex/account', '/:/prefs', '/system/agents', '/updater/status', '/butler', '/diagnostics/logs', '/log']
  const spellings = (p: string): Array<[string, number]> => {
    const parts = p.split('/')
    const last = parts.pop()!
    const dir = parts.join('/')
    return [
      [p, 403],
      [`/${p}`, 403], // //security/token
      [`${dir}/./${last}`, 403],
      [`${dir}/x/../${last}`, 403],
      [p.toUpperCase(), 403],
      [`${p}/`, 403],
      [`${dir}/${encodeURIComponent(last).replace(/^(.)/, (c) => `%${c.charCodeAt(0).toString(16)}`)}`, 403], // first letter %-encoded
      [dir === '' ? `/%2F${last}` : `${dir}%2F${last}`, 400],
      [`${p};x`, 400],
    ]
  }
  let n = 0
  for (const p of paths) {
    for (const [spelled, expected] of spellings(p)) {
      for (const method of ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS']) {
        // /:/prefs is hard-denied except GET (a read of the settings): skip the allowed case.
        if (p === '/:/prefs' && (method === 'GET' || method === 'HEAD') && expected === 403) continue
        const r = await s.raw(method, spelled, headers)
        n++
        if (r.status !== expected) t.fail(`${method} ${spelled}: ${r.status}, expected ${expected}`)
      }
    }
  }
  t.ok(n > 500, `${n} requests refused`)
  t.equal(s.sim.counters.requests, before, 'not one reached PMS')
  const denied = await s.app.broker.audit.page({ action: 'proxy.denied' }, 1000)
  t.ok(denied.events.length > 0 && denied.events.length <= paths.length * 9 * 7, 'denials audited, at most once per key and path')
})
