import t from 'tap'
import { proxyClient, proxySetup } from './proxy-helper.ts'

/**
 * What the proxy lets through besides PMS paths: browser apps on other origins (CORS preflights
 * answered without a key, for listed origins only) and nested `url=` on a client's allowUrlHosts
 * (docs/proxy.md, *Browser apps (CORS)* and *Nested URLs*).
 */

const DASH = 'https://dash.example.com'

t.test('CORS: a listed origin\'s preflight is answered without a key and without PMS; answers carry its origin', async (t) => {
  const s = await proxySetup(t, [proxyClient('dash', { preset: 'dashboard' })], { config: { proxyCorsOrigins: [DASH, 'http://10.0.0.4:3000'] } })
  const { key } = await s.key('dash')
  const requests = s.sim.counters.requests
  const failures = async (): Promise<number> => (await s.app.proxy.metrics.keyFailures.get()).values.reduce((a, v) => a + v.value, 0)
  const failed = await failures()

  const pre = await s.raw('OPTIONS', '/library/sections', {
    origin: DASH,
    'access-control-request-method': 'GET',
    'access-control-request-headers': 'X-Plex-Token, x-plex-client-identifier, content-type, x-evil',
  })
  t.equal(pre.status, 204)
  t.equal(pre.headers['access-control-allow-origin'], DASH, 'the caller\'s origin, never *')
  t.equal(pre.headers['access-control-allow-headers'], 'x-plex-token, x-plex-client-identifier, content-type', 'X-Plex-* and ordinary headers, not others')
  t.match(pre.headers['access-control-allow-methods'], /GET/)
  t.notOk('access-control-allow-credentials' in pre.headers, 'no credentials: the key is a header, not a cookie')
  t.match(pre.headers.vary, /Origin/)
  t.equal(s.sim.counters.requests, requests, 'nothing reached PMS')
  t.equal(await failures(), failed, 'not counted as a failed key')

  const other = await s.raw('OPTIONS', '/library/sections', { origin: 'https://evil.example', 'access-control-request-method': 'GET' })
  t.equal(other.status, 401, 'another origin\'s preflight is a request without a key')
  t.notOk('access-control-allow-origin' in other.headers)

  const real = await s.raw('GET', '/library/sections', { origin: DASH, 'x-plex-token': key })
  t.equal(real.status, 200)
  t.equal(real.headers['access-control-allow-origin'], DASH)
  t.match(real.headers['access-control-expose-headers'], /Content-Range/)
  t.match(real.headers.vary, /Origin/)
  const refused = await s.raw('GET', '/library/sections', { origin: DASH })
  t.equal(refused.status, 401)
  t.equal(refused.headers['access-control-allow-origin'], DASH, 'refusals are readable by the page too')
  const foreign = await s.raw('GET', '/library/sections', { origin: 'https://evil.example', 'x-plex-token': key })
  t.equal(foreign.status, 200, 'served (a browser will not hand it to the page)')
  t.notOk('access-control-allow-origin' in foreign.headers, 'no CORS header for an origin not listed')
})

t.test('CORS: without a list, preflights are refused like any request without a key', async (t) => {
  const s = await proxySetup(t, [proxyClient('dash', { preset: 'dashboard' })])
  const pre = await s.raw('OPTIONS', '/library/sections', { origin: DASH, 'access-control-request-method': 'GET' })
  t.equal(pre.status, 401)
  t.notOk('access-control-allow-origin' in pre.headers)
  // PMS itself allows every origin; its header must not open the proxy to pages on any origin.
  const direct = await fetch(`${s.sim.url}/library/sections`, { headers: { origin: DASH, 'x-plex-token': s.sim.adminToken } })
  t.equal(direct.headers.get('access-control-allow-origin'), '*', 'PMS (the simulator) answers every origin')
  const { key } = await s.key('dash')
  const proxied = await s.raw('GET', '/library/sections', { origin: DASH, 'x-plex-token': key })
  t.equal(proxied.status, 200)
  t.notOk(Object.keys(proxied.headers).some((h) => h.startsWith('access-control-')), 'PMS\'s CORS headers are dropped by the proxy')
})

t.test('allowUrlHosts: a listed host reaches PMS unchanged but for X-Plex-*; other hosts are still refused', async (t) => {
  const s = await proxySetup(t, [
    proxyClient('kometa', { preset: 'metadata-editor', allowUrlHosts: ['image.tmdb.org', '*.fanart.tv'] }),
    proxyClient('other', { preset: 'metadata-editor' }),
  ])
  const { key } = await s.key('kometa')
  const poster = 'https://image.tmdb.org/t/p/original/a%20b.jpg?X-Plex-Token=leak&w=500&x-plex-product=K'
  await s.raw('POST', `/library/metadata/1001/posters?url=${encodeURIComponent(poster)}&X-Plex-Token=${key}`)
  const seen = s.sim.requestLog[s.sim.requestLog.length - 1]!
  t.equal(seen.path, '/library/metadata/1001/posters')
  t.equal(new URLSearchParams(seen.query).get('url'), 'https://image.tmdb.org/t/p/original/a%20b.jpg?w=500', 'absolute, X-Plex-* removed')
  t.match(seen.token, /^transient-/)
  await s.raw('POST', `/library/metadata/1001/arts?url=${encodeURIComponent('https://assets.fanart.tv/x.jpg')}`, { 'x-plex-token': key })
  t.equal(new URLSearchParams(s.sim.requestLog[s.sim.requestLog.length - 1]!.query).get('url'), 'https://assets.fanart.tv/x.jpg', 'a subdomain of a wildcard')

  const before = s.sim.counters.requests
  for (const url of ['https://fanart.tv/x.jpg', 'https://evilfanart.tv/x.jpg', 'https://image.tmdb.org.evil.example/x.jpg', 'http://169.254.169.254/latest/meta-data',
    'https://user@image.tmdb.org/x.jpg', 'ftp://image.tmdb.org/x.jpg']) {
    const r = await s.raw('POST', `/library/metadata/1001/posters?url=${encodeURIComponent(url)}`, { 'x-plex-token': key })
    t.equal(r.status, 403, url)
  }
  const { key: otherKey } = await s.key('other')
  t.equal((await s.raw('POST', `/library/metadata/1001/posters?url=${encodeURIComponent(poster)}`, { 'x-plex-token': otherKey })).status, 403, 'another client\'s list is its own')
  t.equal((await s.raw('POST', `/library/metadata/1001/posters?url=${encodeURIComponent(poster)}`, { 'x-plex-token': 'pbk_bad.bad' })).status, 401, 'the key is checked first')
  t.equal((await s.raw('POST', `/library/metadata/1001/posters?url=${encodeURIComponent(poster)}&X-Plex-Token=${key}`, { 'x-plex-token': otherKey })).status, 401,
    'two different keys are refused')
  t.equal(s.sim.counters.requests, before, 'none reached PMS')
})
