import t from 'tap'
import { request } from 'undici'
import { serverFor, startSim } from './helper.ts'
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
  const forwarded = seen[seen.length - 1]!
  t.match(forwarded.token, /^transient-/, 'PMS got a transient token')
  t.ok(s.sim.isTokenValid(forwarded.token!), 'a live one')

  // Any case, any number of occurrences; all removed before forwarding.
  const viaQuery = await get(`${s.base}/library/sections?x-plex-token=${key}&X-Plex-Token=${encodeURIComponent(key)}&X-PLEX-TOKEN=${key}`)
  t.equal(viaQuery.status, 200)
  const last = s.sim.requestLog[s.sim.requestLog.length - 1]!
  t.equal(last.query, '', 'no X-Plex-Token reached PMS in the query')
  t.equal(last.token, forwarded.token, 'the same cached transient token')

  const json = await get(`${s.base}/library/sections`, { 'x-plex-token': key, accept: 'application/json' })
  t.equal(json.status, 200)
  t.match(JSON.parse(json.body.toString()), { MediaContainer: { size: 2 } })

  const serves = await s.app.broker.audit.page({ action: 'token.issue', client: 'reader' }, 100)
  t.equal(serves.events.length, 1, 'only the first serve of the fresh mint is audited, not every proxied request')
  t.match(serves.events[0]!.detail, { source: 'upstream', via: 'proxy' })
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
  const ghost = await s.key('ghost')
  const before = s.sim.counters.requests
  const cases: Array<[string, Record<string, string>, string]> = [
    ['no key', {}, '/library/sections'],
    ['the PMS admin token', { 'x-plex-token': s.sim.adminToken }, '/library/sections'],
    ['a PMS token in the query', {}, `/library/sections?X-Plex-Token=${s.sim.adminToken}`],
    ['an unknown key', { 'x-plex-token': `pbk_AAAAAAAAAAAA.${'A'.repeat(43)}` }, '/library/sections'],
    ['a wrong secret', { 'x-plex-token': `${key.slice(0, 17)}${'B'.repeat(43)}` }, '/library/sections'],
    ['two different credentials', { 'x-plex-token': key }, `/library/sections?X-Plex-Token=${s.sim.adminToken}`],
    ['a key of a client not allowed this server', { 'x-plex-token': other.key }, '/library/sections'],
    ['a key of a client removed from the configuration', { 'x-plex-token': ghost.key }, '/library/sections'],
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

t.test('after a PMS restart a GET is re-minted and retried once, transparently', async (t) => {
  const s = await proxySetup(t, [reader()])
  const { key } = await s.key('reader')
  t.equal((await s.raw('GET', '/library/sections', { 'x-plex-token': key })).status, 200)
  const first = s.sim.requestLog[s.sim.requestLog.length - 1]!.token
  await s.sim.restart()
  const r = await s.raw('GET', '/library/sections', { 'x-plex-token': key })
  t.equal(r.status, 200, 'the caller never sees the 401')
  t.match(r.body, /MediaContainer/)
  const after = s.sim.requestLog.filter((x) => x.path === '/library/sections').map((x) => x.token)
  t.equal(after.length, 3, 'PMS saw the old token once more, then the new one')
  t.equal(after[1], first)
  t.not(after[2], first)
  t.ok(s.sim.isTokenValid(after[2]!), 'the new token is live')
  // A write is not retried: its 401 is the broker's JSON error (the token is replaced meanwhile).
  await s.sim.restart()
  const before = s.sim.counters.requests
  const put = await s.raw('PUT', '/library/sections', { 'x-plex-token': key })
  t.equal(put.status, 403, 'a PUT the rules refuse never gets as far')
  t.equal(s.sim.counters.requests, before)
})

t.test('a write that meets a 401 is not retried: the caller gets a JSON 401', async (t) => {
  const s = await proxySetup(t, [proxyClient('editor', { preset: 'metadata-editor' })])
  const { key } = await s.key('editor')
  t.equal((await s.raw('GET', '/library/sections', { 'x-plex-token': key })).status, 200)
  await s.sim.restart()
  const r = await s.raw('PUT', '/library/metadata/1001', { 'x-plex-token': key })
  t.equal(r.status, 401)
  t.match(JSON.parse(r.body), { code: 'UNAUTHENTICATED', message: /rejected the broker's token/ })
  t.equal(s.sim.requestLog.filter((x) => x.path === '/library/metadata/1001').length, 1, 'sent once')
  t.equal((await s.raw('GET', '/library/sections', { 'x-plex-token': key })).status, 200, 'the token was replaced meanwhile')
})

t.test('Range requests pass through exactly', async (t) => {
  const s = await proxySetup(t, [proxyClient('player', { preset: 'stream' })], { sim: { partSizes: { 1: 5_000_000 } } })
  const { key } = await s.key('player')
  const path = '/library/parts/1/1700000000/file.mp4'
  for (const range of [undefined, 'bytes=0-', 'bytes=100-199', 'bytes=-1000', 'bytes=4999990-', 'bytes=6000000-']) {
    const h: Record<string, string> = range === undefined ? {} : { range }
    const direct = await get(`${s.sim.url}${path}`, { ...h, 'x-plex-token': s.sim.adminToken })
    const proxied = await get(`${s.base}${path}`, { ...h, 'x-plex-token': key })
    t.equal(proxied.status, direct.status, `${range}: status ${direct.status}`)
    t.equal(proxied.headers['content-range'], direct.headers['content-range'], `${range}: Content-Range`)
    t.equal(proxied.headers['accept-ranges'], 'bytes')
    t.equal(proxied.headers['content-length'], direct.headers['content-length'])
    t.ok(proxied.body.equals(direct.body), `${range}: the same bytes`)
  }
})

t.test('Location is rewritten to the proxy without tokens; token attributes are removed', async (t) => {
  const s = await proxySetup(t, [
    proxyClient('everything', { preset: 'full' }),
    proxyClient('tautulli', { preset: 'monitor' }),
    proxyClient('resources', { allow: [{ methods: ['GET'], path: '/security/resources' }] }),
  ])
  const full = await s.key('everything')
  const redirect = await s.raw('GET', '/web', { 'x-plex-token': full.key })
  t.equal(redirect.status, 302)
  t.equal(redirect.headers.location, `${s.base}/web/index.html`, 'the proxy origin, no token')
  const viaPrefix = await s.raw('GET', '/pms/default/web', { 'x-plex-token': full.key })
  t.equal(viaPrefix.headers.location, `${s.base}/pms/default/web/index.html`, 'the /pms/<server> prefix is kept')

  const monitor = await s.key('tautulli')
  for (const accept of ['text/xml', 'application/json']) {
    const account = await s.raw('GET', '/myplex/account', { 'x-plex-token': monitor.key, accept })
    t.equal(account.status, 200, `${accept}: allowed by monitor`)
    t.match(account.body, /sim-owner/)
    t.notOk(/authToken/i.test(account.body), `${accept}: authToken removed`)
    t.notOk(account.body.includes(s.sim.adminToken), `${accept}: no admin token`)
    t.equal(Number(account.headers['content-length']), Buffer.byteLength(account.body), 'a true Content-Length')
  }
  const res = await s.key('resources')
  const r = await s.raw('GET', '/security/resources?source=provider%3A%2F%2Ftv.plex.provider.vod', { 'x-plex-token': res.key })
  t.equal(r.status, 200)
  t.match(r.body, /Movies &amp; Shows/)
  t.notOk(/accessToken/i.test(r.body), 'accessToken removed')
})

t.test('last line of defence: a PMS that echoes the token has it blanked and counted', async (t) => {
  const s = await proxySetup(t, [reader()])
  const { key } = await s.key('reader')
  s.sim.setFault({ echoToken: true })
  for (const accept of ['text/xml', 'application/json']) {
    const r = await s.raw('GET', '/library/sections', { 'x-plex-token': key, accept })
    t.equal(r.status, 200)
    const token = s.sim.requestLog[s.sim.requestLog.length - 1]!.token!
    t.notOk(r.body.includes(token), `${accept}: the transient token is not in the answer`)
    t.match(r.body, new RegExp(`echo.{1,4}X{${token.length}}`), 'blanked in place, same length')
    if (accept === 'application/json') t.ok(JSON.parse(r.body), 'still valid JSON')
  }
  const metrics = await s.app.broker.metrics.registry.metrics()
  t.match(metrics, /ptb_proxy_leaks_total\{server="default",secret="pms_token"\} 2/)
})

t.test('nested url= parameters: local ones made relative without X-Plex-*, foreign hosts refused', async (t) => {
  const s = await proxySetup(t, [proxyClient('dash', { preset: 'dashboard' })])
  const { key } = await s.key('dash')
  const nested = `${s.sim.url}/library/metadata/1001/thumb/1700000000?X-Plex-Token=${s.sim.adminToken}&X-Plex-Client-Identifier=x&a=1`
  await s.raw('GET', `/photo/:/transcode?width=100&url=${encodeURIComponent(nested)}&X-Plex-Token=${key}`)
  const seen = s.sim.requestLog[s.sim.requestLog.length - 1]!
  t.equal(seen.path, '/photo/:/transcode')
  t.equal(new URLSearchParams(seen.query).get('url'), '/library/metadata/1001/thumb/1700000000?a=1', 'relative, X-Plex-* removed')
  t.notOk(seen.query.includes(s.sim.adminToken))
  const before = s.sim.counters.requests
  const foreign = await s.raw('GET', `/photo/:/transcode?url=${encodeURIComponent('http://169.254.169.254/latest/meta-data')}`, { 'x-plex-token': key })
  t.equal(foreign.status, 403)
  const denied = await s.raw('GET', `/photo/:/transcode?url=${encodeURIComponent('/security/token?type=delegation&scope=all')}`, { 'x-plex-token': key })
  t.equal(denied.status, 403, 'a nested path the rules refuse')
  t.equal(s.sim.counters.requests, before, 'neither reached PMS')
})

t.test('shadow mode forwards what the rules refuse, logs it and audits it sampled', async (t) => {
  const s = await proxySetup(t, [proxyClient('learner', { preset: 'dashboard', mode: 'shadow' })])
  const { key } = await s.key('learner')
  for (let i = 0; i < 5; i++) t.equal((await s.raw('GET', '/library/metadata/1001', { 'x-plex-token': key })).status, 200)
  t.equal(s.sim.requestLog.filter((r) => r.path === '/library/metadata/1001').length, 5, 'forwarded')
  t.equal((await s.raw('GET', '/clients', { 'x-plex-token': key })).status, 200)
  const before = s.sim.counters.requests
  t.equal((await s.raw('GET', '/security/token?type=delegation&scope=all', { 'x-plex-token': key })).status, 403, 'the hard deny holds in shadow mode')
  t.equal(s.sim.counters.requests, before)
  const page = await s.app.broker.audit.page({ action: 'proxy.shadow' }, 100)
  t.equal(page.events.length, 2, 'one event per key and path, not per request')
  t.match(page.events.find((e) => e.detail.path === '/library/metadata/1001')?.detail, { reason: 'default-deny', method: 'GET' })
  t.ok(s.app.logs.records().some((l) => l.msg === 'proxy shadow mode: forwarded a request the rules refuse'))
})

t.test('hygiene: no key, transient or admin token in logs, audit events or answers; metrics count decisions', async (t) => {
  const s = await proxySetup(t, [reader(), proxyClient('everything', { preset: 'full' })])
  const { key } = await s.key('reader')
  const full = await s.key('everything')
  const answers: string[] = []
  const send = async (method: string, path: string, headers: Record<string, string> = {}): Promise<number> => {
    const r = await s.raw(method, path, headers)
    answers.push(JSON.stringify(r.headers), r.body)
    return r.status
  }
  t.equal(await send('GET', `/library/sections?X-Plex-Token=${key}`), 200)
  t.equal(await send('GET', `/library/sections/1/all?type=1&X-Plex-Token=${key}`), 200)
  t.equal(await send('GET', `/security/token?type=delegation&scope=all&X-Plex-Token=${key}`), 403)
  t.equal(await send('GET', `/%zz?X-Plex-Token=${key}`), 400)
  t.equal(await send('GET', `/library/sections?X-Plex-Token=${key.slice(0, -1)}x`), 401)
  t.equal(await send('GET', `/web?X-Plex-Token=${full.key}`), 302)
  t.equal(await send('GET', '/myplex/account', { 'x-plex-token': full.key }), 403)
  s.sim.setFault({ echoToken: true })
  t.equal(await send('GET', '/', { 'x-plex-token': full.key }), 200)
  s.sim.setFault({})
  s.app.proxy.open.close()
  const audit = JSON.stringify((await s.app.broker.audit.page({}, 1000)).events)
  const logs = s.app.logs.text
  const transient = [...new Set(s.sim.requestLog.map((r) => r.token).filter((x) => x !== undefined))]
  t.ok(transient.length > 0)
  for (const [what, text] of [['logs', logs], ['audit', audit], ['answers', answers.join('\n')]] as const) {
    for (const secret of [key, full.key, s.sim.adminToken, ...transient]) {
      if (what === 'answers' && (secret === key || secret === full.key)) continue
      t.notOk(text.includes(secret), `${what}: ${secret.slice(0, 4)}… absent`)
    }
    t.notOk(/pbk_[A-Za-z0-9_-]{12}\.[A-Za-z0-9_-]{10}/.test(text) && what !== 'answers', `${what}: no proxy key secret`)
  }
  // One access line per request, with the broker's request id the caller got as X-Request-Id.
  const access = s.app.logs.records().filter((l) => l.msg === 'proxy request')
  // (The target Fastify's router cannot decode, /%zz, is answered before any hook runs.)
  t.equal(access.length, 7, 'one access line per request')
  const listed = access.find((l) => l.path === '/library/sections/1/all')
  t.match(listed, { client: 'reader', server: 'default', method: 'GET', decision: 'allow', statusCode: 200, level: 30 })
  t.ok(answers.some((h) => h.includes(`"x-request-id":"${String(listed?.reqId)}"`)), 'the access line carries the request id of the answer')
  t.match(access.find((l) => l.statusCode === 401), { decision: 'unauthenticated', path: undefined })
  const metrics = await s.app.broker.metrics.registry.metrics()
  t.match(metrics, /ptb_proxy_requests_total\{client="reader",server="default",decision="allow",status_class="2xx"\} 2/)
  t.match(metrics, /ptb_proxy_requests_total\{client="reader",server="default",decision="deny",status_class="4xx"\} 1/)
  t.match(metrics, /ptb_proxy_requests_total\{client="",server="default",decision="unauthenticated",status_class="4xx"\} 1/)
  t.match(metrics, /ptb_proxy_upstream_duration_seconds_count\{server="default",pool="api"\} \d+/)
  t.match(metrics, /ptb_proxy_bytes_total\{server="default",direction="downstream"\} \d+/)
})

t.test('/pms/{server}/… reaches another configured server; a key bound to one server stays there', async (t) => {
  const other = await startSim(t)
  const s = await proxySetup(t, [reader()], { extraServers: [serverFor(other, 'attic')] })
  const anyServer = await s.key('reader')
  const boundToDefault = await s.key('reader', { server: 'default' })
  const r = await s.raw('GET', '/pms/attic/library/sections', { 'x-plex-token': anyServer.key })
  t.equal(r.status, 200)
  const seen = other.requestLog[other.requestLog.length - 1]!
  t.equal(seen.path, '/library/sections', 'the other PMS got the request, without the prefix')
  t.ok(other.isTokenValid(seen.token!), 'with a transient token of that server')
  t.equal(s.sim.requestLog.filter((x) => x.path === '/library/sections').length, 0, 'the listener\'s own PMS did not')
  const before = other.counters.requests
  t.equal((await s.raw('GET', '/pms/attic/library/sections', { 'x-plex-token': boundToDefault.key })).status, 401, 'a key bound to default')
  t.equal((await s.raw('GET', '/pms/nowhere/library/sections', { 'x-plex-token': anyServer.key })).status, 404, 'no such server')
  t.equal(other.counters.requests, before)
  t.equal((await s.raw('GET', '/pms/default/library/sections', { 'x-plex-token': boundToDefault.key })).status, 200, 'the bound server by name')
})

t.test('a request body streams to PMS (poster upload); a refused one is not read', async (t) => {
  const s = await proxySetup(t, [proxyClient('editor', { preset: 'metadata-editor' })])
  const { key } = await s.key('editor')
  const body = Buffer.alloc(3 * 1024 * 1024, 7)
  const r = await request(`${s.base}/library/metadata/1001/posters`, { method: 'POST', headers: { 'x-plex-token': key, 'content-type': 'image/jpeg' }, body })
  await r.body.text()
  const seen = s.sim.requestLog[s.sim.requestLog.length - 1]!
  t.same([seen.method, seen.path], ['POST', '/library/metadata/1001/posters'], 'forwarded with its body (larger than any API body limit)')
  t.equal(r.statusCode, 404, 'PMS\'s own status passes through (the simulator has no poster upload)')
  const refused = await request(`${s.base}/library/sections/1/refresh`, { method: 'POST', headers: { 'x-plex-token': key, 'content-type': 'image/jpeg' }, body })
  t.equal(refused.statusCode, 403)
  t.equal(refused.headers.connection, 'close', 'the unread body ends the connection')
  await refused.body.text()
})
