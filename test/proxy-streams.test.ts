import t from 'tap'
import { WebSocket } from 'ws'
import { request } from 'undici'
import { buildTestApp, testConfig } from './helper.ts'
import { DASH_SEGMENTS } from '../src/sim/pms-sim.ts'
import { dashPlayer } from './dash-player.ts'
import { get, proxyClient, proxySetup } from './proxy-helper.ts'

/**
 * The proxy's long answers: HLS and DASH sessions a plain player follows, notification websockets, the
 * event feed, downloads; and revocation reaching them on another broker instance.
 */

const player = (): ReturnType<typeof proxyClient> => proxyClient('player', { preset: 'read', allow: [{ methods: ['GET'], path: '/video/:/transcode/universal/**' }, { methods: ['GET'], path: '/library/parts/**' }] })

t.test('HLS: a plain player follows the manifest without its key; the URIs open one session only', async (t) => {
  const s = await proxySetup(t, [player()])
  const { key, id } = await s.key('player')
  const start = await get(`${s.base}/video/:/transcode/universal/start.m3u8?session=abc-1&X-Plex-Token=${key}`)
  t.equal(start.status, 200)
  const master = start.body.toString()
  t.notOk(master.includes(key), 'the proxy key is not copied into the manifest')
  const variant = master.split('\n').find((l) => l.startsWith('session/'))!
  t.match(variant, /^session\/abc-1\/base\/index\.m3u8\?X-Plex-Token=pbs_/, 'the variant URI carries a session credential')
  // A player resolves the URI against the manifest's URL, with no credential of its own.
  const indexUrl = new URL(variant, `${s.base}/video/:/transcode/universal/start.m3u8`).href
  const index = await get(indexUrl)
  t.equal(index.status, 200)
  const segments = index.body.toString().split('\n').filter((l) => l !== '' && !l.startsWith('#'))
  t.equal(segments.length, 3)
  for (const seg of segments) {
    t.match(seg, /^\d{5}\.ts\?X-Plex-Token=pbs_/)
    const proxied = await get(new URL(seg, indexUrl).href)
    const direct = await get(`${s.sim.url}/video/:/transcode/universal/session/abc-1/base/${seg.split('?')[0]}`, { 'x-plex-token': s.sim.adminToken })
    t.equal(proxied.status, 200)
    t.ok(proxied.body.equals(direct.body), 'the segment\'s bytes')
  }
  const credential = new URL(indexUrl).searchParams.get('X-Plex-Token')!
  const before = s.sim.counters.requests
  t.equal((await get(`${s.base}/video/:/transcode/universal/session/other/base/index.m3u8?X-Plex-Token=${credential}`)).status, 401, 'not another session')
  t.equal((await get(`${s.base}/library/sections?X-Plex-Token=${credential}`)).status, 401, 'not another path')
  t.equal(s.sim.counters.requests, before)
  await s.app.proxy.keys.revoke(id)
  t.equal((await get(new URL(segments[0]!, indexUrl).href)).status, 401, 'revoking the key ends the session')
})

t.test('DASH: a plain player resolves the MPD\'s templates to signed URIs of one session; revocation ends them', async (t) => {
  const s = await proxySetup(t, [player()])
  const { key, id } = await s.key('player')
  const mpdUrl = `${s.base}/video/:/transcode/universal/start.mpd?session=dash-1&protocol=dash&X-Plex-Token=${key}`
  const start = await get(mpdUrl)
  t.equal(start.status, 200)
  t.match(start.headers['content-type'], /^application\/dash\+xml/)
  const mpd = start.body.toString()
  t.equal(Number(start.headers['content-length']), start.body.length, 'Content-Length fits the rewritten manifest')
  const pmsToken = s.sim.requestLog.find((r) => r.path === '/video/:/transcode/universal/start.mpd')!.token!
  t.match(pmsToken, /^transient-/)
  t.notOk(mpd.includes(key), 'the proxy key is not copied into the manifest')
  t.notOk(mpd.includes(pmsToken) || mpd.includes(s.sim.adminToken), 'no PMS token in the manifest')
  // What PMS wrote is still there: the templates, now with a session credential.
  t.match(mpd, /media="session\/dash-1\/\$RepresentationID\$\/\$Number\$\.m4s\?X-Plex-Token=pbs_[^"]+"/)

  // A player resolves the templates against the manifest's URL (no BaseURL here), with no credential of its own.
  const reps = dashPlayer(mpd, mpdUrl, DASH_SEGMENTS)
  t.same(reps.map((r) => r.id), ['0', '1'], 'a video and an audio Representation')
  let credential = ''
  for (const rep of reps) {
    for (const [i, url] of [rep.init!, ...rep.media].entries()) {
      const u = new URL(url)
      const file = i === 0 ? 'header' : `${i - 1}.m4s`
      t.equal(u.pathname, `/video/:/transcode/universal/session/dash-1/${rep.id}/${file}`)
      credential = u.searchParams.get('X-Plex-Token') ?? ''
      t.match(credential, /^pbs_/)
      const proxied = await get(url)
      const direct = await get(`${s.sim.url}${u.pathname}`, { 'x-plex-token': s.sim.adminToken })
      t.equal(proxied.status, 200)
      t.ok(proxied.body.length > 0 && proxied.body.equals(direct.body), `${rep.id}/${file}: the same bytes as direct`)
    }
  }
  // The same manifest through /pms/<server>/: the URIs stay under the prefix and still open.
  const prefixedUrl = `${s.base}/pms/default/video/:/transcode/universal/start.mpd?session=dash-1&protocol=dash&X-Plex-Token=${key}`
  const prefixed = dashPlayer((await get(prefixedUrl)).body.toString(), prefixedUrl, 1)[0]!
  t.equal((await get(prefixed.media[0]!)).status, 200, 'through the /pms/<server> prefix')

  // Another session that exists at PMS: the credential does not open it, and PMS never sees the request.
  t.equal((await get(`${s.sim.url}/video/:/transcode/universal/start.mpd?session=dash-2&protocol=dash`, { 'x-plex-token': s.sim.adminToken })).status, 200)
  const before = s.sim.counters.requests
  t.equal((await get(`${s.base}/video/:/transcode/universal/session/dash-2/0/header?X-Plex-Token=${credential}`)).status, 401, 'not another session\'s directory')
  t.equal((await s.raw('GET', `/video/:/transcode/universal/session/dash-1/../dash-2/0/0.m4s?X-Plex-Token=${credential}`)).status, 401, 'not by climbing out of it')
  t.equal((await get(`${s.base}/video/:/transcode/universal/start.mpd?session=dash-3&protocol=dash&X-Plex-Token=${credential}`)).status, 401, 'not a new session')
  t.equal(s.sim.counters.requests, before)

  await s.app.proxy.keys.revoke(id)
  for (const url of [reps[0]!.init!, reps[0]!.media[1]!, reps[1]!.media[0]!]) {
    t.equal((await get(url)).status, 401, 'revoking the key ends the session\'s URIs')
  }
  t.equal(s.sim.counters.requests, before)
})

t.test('notification websocket: key checked at the upgrade, frames pass, log filter removed, restart closes with 1012', async (t) => {
  const s = await proxySetup(t, [player()])
  const { key } = await s.key('player')
  const wsBase = s.base.replace('http', 'ws')
  // Refused at the upgrade: an HTTP answer, never a socket.
  const refused = await new Promise<number>((resolve) => {
    const ws = new WebSocket(`${wsBase}/:/websockets/notifications`, { headers: { 'x-plex-token': s.sim.adminToken } })
    ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0))
    ws.on('open', () => resolve(101))
    ws.on('error', () => {})
  })
  t.equal(refused, 401)
  const ws = new WebSocket(`${wsBase}/:/websockets/notifications?filters=playing,log&X-Plex-Token=${key}`)
  const messages: string[] = []
  ws.on('message', (d) => messages.push(d.toString()))
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
  const upgrade = s.sim.requestLog[s.sim.requestLog.length - 1]!
  t.equal(upgrade.path, '/:/websockets/notifications')
  t.equal(new URLSearchParams(upgrade.query).get('filters'), 'playing', 'the log filter never reaches PMS')
  t.match(upgrade.token, /^transient-/)
  t.ok(await until(2000, () => s.sim.webSockets === 1))
  s.sim.play('1001')
  t.ok(await until(2000, () => messages.length > 0), 'a notification arrives')
  t.match(JSON.parse(messages[0]!), { NotificationContainer: { type: 'playing' } })
  const closed = new Promise<number>((resolve) => ws.once('close', (code) => resolve(code)))
  await s.sim.restart()
  t.equal(await closed, 1012, 'PMS went away: the client is told to reconnect')
  // The reconnect gets the re-minted token (after the broker's check of the old one).
  const again = new WebSocket(`${wsBase}/:/websockets/notifications?X-Plex-Token=${key}`)
  await new Promise((resolve, reject) => { again.once('open', resolve); again.once('error', reject) })
  t.ok(s.sim.isTokenValid(s.sim.requestLog[s.sim.requestLog.length - 1]!.token!), 'reconnected with a live token')
  again.close()
})

t.test('revoking a key on another instance ends its websocket, event feed and download within a second', async (t) => {
  const s = await proxySetup(t, [player()], { sim: { partSizes: { 1: 512 * 1024 * 1024 } } })
  const { key, id } = await s.key('player')
  const other = await buildTestApp(t, testConfig(s.config.redisPrefix, s.config.servers, [player()], { brokerSecret: s.config.brokerSecret }), { defaultMetrics: false })

  const ws = new WebSocket(`${s.base.replace('http', 'ws')}/:/websockets/notifications?X-Plex-Token=${key}`)
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
  const wsClosed = new Promise<number>((resolve) => ws.once('close', (code) => resolve(code)))

  const feed = await request(`${s.base}/:/eventsource/notifications`, { headers: { 'x-plex-token': key } })
  t.equal(feed.statusCode, 200)
  t.match(feed.headers['content-type'], /text\/event-stream/)
  const feedEnded = new Promise<string>((resolve) => {
    feed.body.on('data', () => {})
    feed.body.once('error', () => resolve('error'))
    feed.body.once('end', () => resolve('end'))
  })

  // A reader that reads slowly: the download stays open.
  const download = await request(`${s.base}/library/parts/1/1700000000/file.mp4`, { headers: { 'x-plex-token': key } })
  t.equal(download.statusCode, 200)
  let received = 0
  const downloadEnded = new Promise<string>((resolve) => {
    download.body.on('data', (c: Buffer) => { received += c.length; download.body.pause(); setTimeout(() => download.body.resume(), 20) })
    download.body.once('error', () => resolve('error'))
    download.body.once('end', () => resolve('end'))
  })
  await until(2000, () => received > 0)

  const part = '/library/parts/1/1700000000/file.mp4'
  t.equal(s.sim.counters.inFlightByPath[part], 1, 'PMS is sending the download')
  const revokedAt = Date.now()
  t.equal(await other.proxy.keys.revoke(id), 'revoked', 'revoked through the other instance')
  t.equal(await wsClosed, 1008, 'the websocket is closed (policy violation)')
  t.comment(`websocket closed ${Date.now() - revokedAt} ms after the revocation`)
  t.ok(await until(5000, () => s.sim.counters.inFlightByPath[part] === undefined && s.sim.eventStreams === 0), 'the proxy ended the download and the feed at PMS')
  t.comment(`download and feed ended at PMS ${Date.now() - revokedAt} ms after the revocation`)
  // The caller sees the end once it has read what its socket buffered.
  t.equal(await feedEnded, 'error', 'the event feed is cut')
  t.equal(await downloadEnded, 'error', 'the download is cut, not completed')
  t.ok(received < 512 * 1024 * 1024)
  await s.app.proxy.open.check()
  t.equal(s.app.proxy.open.size, 0, 'nothing of the key stays registered')
})

t.test('a caller that hangs up before PMS answers cancels the upstream request', async (t) => {
  const s = await proxySetup(t, [player()])
  const { key } = await s.key('player')
  t.equal((await get(`${s.base}/library/sections`, { 'x-plex-token': key })).status, 200, 'a token is cached')
  s.sim.setFault({ latencyMs: 1500 })
  const ac = new AbortController()
  const pending = request(`${s.base}/library/sections`, { headers: { 'x-plex-token': key }, signal: ac.signal }).catch(() => undefined)
  t.ok(await until(1000, () => s.sim.counters.inFlightByPath['/library/sections'] === 1), 'PMS is working on it')
  ac.abort()
  await pending
  t.ok(await until(1000, () => s.sim.counters.inFlightByPath['/library/sections'] === undefined), 'PMS\'s request was closed')
})

async function until (ms: number, check: () => boolean): Promise<boolean> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (check()) return true
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  return check()
}

t.test('shutdown ends open answers and tells websockets to reconnect (1012)', async (t) => {
  const s = await proxySetup(t, [player()], { sim: { partSizes: { 1: 1024 * 1024 * 1024 } } })
  const { key } = await s.key('player')
  const ws = new WebSocket(`${s.base.replace('http', 'ws')}/:/websockets/notifications?X-Plex-Token=${key}`)
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
  const closed = new Promise<number>((resolve) => ws.once('close', (code) => resolve(code)))
  const download = await request(`${s.base}/library/parts/1/1700000000/file.mp4`, { headers: { 'x-plex-token': key } })
  const ended = new Promise<string>((resolve) => {
    download.body.on('data', () => {})
    download.body.once('error', () => resolve('error'))
    download.body.once('end', () => resolve('end'))
  })
  await s.app.proxy.close()
  t.equal(await closed, 1012)
  t.equal(await ended, 'error', 'the download is cut, not left holding the shutdown')
})
