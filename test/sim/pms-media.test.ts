import t from 'tap'
import { XMLParser } from 'fast-xml-parser'
import { request } from 'undici'
import WebSocket from 'ws'
import { htmlErrorBody, PmsSimulator } from '../../src/sim/pms-sim.ts'
import { call, start, UNAUTHORIZED } from './helpers.ts'

/**
 * The canned media server a service talks to (docs/simulator.md): library, metadata, sessions,
 * hub search and the notification WebSocket, with PMS's conventions (XML by default, JSON on
 * request, the token rule and HTML 401s).
 */

/** The JSON MediaContainer of a 200 answer. */
async function json (sim: PmsSimulator, path: string, token = sim.adminToken): Promise<any> {
  const r = await call(sim, path, { token, json: true })
  if (r.status !== 200) throw new Error(`${path} answered ${r.status}`)
  return JSON.parse(r.text).MediaContainer
}

const ARRAYS = new Set(['Directory', 'Video', 'Location', 'Hub', 'Media', 'Part', 'Genre', 'Director'])
const xml = new XMLParser({ ignoreAttributes: false, attributeNamePrefix: '', parseAttributeValue: false, isArray: (name) => ARRAYS.has(name) })

async function fromXml (sim: PmsSimulator, path: string): Promise<any> {
  const r = await call(sim, path, { token: sim.adminToken })
  if (r.status !== 200) throw new Error(`${path} answered ${r.status}`)
  return xml.parse(r.text).MediaContainer
}

async function waitFor (cond: () => boolean, ms: number): Promise<boolean> {
  const until = Date.now() + ms
  while (!cond() && Date.now() < until) await new Promise((resolve) => setTimeout(resolve, 10))
  return cond()
}

t.test('every key / lists resolves, and so does every key those answers hand out', async (t) => {
  const sim = await start(t)
  const root = await json(sim, '/')
  const rootKeys = root.Directory.map((d: { key: string }) => d.key)
  t.same(rootKeys, ['activities', 'clients', 'library', 'playlists'], 'only what the simulator serves')
  t.same((await fromXml(sim, '/')).Directory.map((d: { key: string }) => d.key), rootKeys, 'XML lists the same')

  // A client's walk: relative keys hang off the container's path, absolute ones stand alone.
  const seen = new Map<string, number>()
  const queue: string[] = rootKeys.map((k: string) => `/${k}`)
  while (queue.length > 0) {
    const path = queue.shift() as string
    if (seen.has(path)) continue
    const r = await call(sim, path, { token: sim.adminToken, json: true })
    seen.set(path, r.status)
    if (r.status !== 200) continue
    const mc = JSON.parse(r.text).MediaContainer
    t.equal(typeof mc.size, 'number', `${path}: a MediaContainer with a size`)
    t.equal(mc.size, (mc.Directory ?? []).length + (mc.Metadata ?? []).length, `${path}: size counts its entries`)
    for (const entry of [...(mc.Directory ?? []), ...(mc.Metadata ?? [])]) {
      queue.push(entry.key.startsWith('/') ? entry.key : `${path}/${entry.key}`)
    }
  }
  t.same([...seen].filter(([, status]) => status !== 200), [], 'no key leads to an error')
  for (const p of ['/library/sections', '/library/sections/1/all', '/library/sections/2/all', '/library/metadata/1001', '/library/metadata/2001/children', '/library/metadata/2002/children', '/library/recentlyAdded', '/library/onDeck']) {
    t.ok(seen.has(p), `the walk reached ${p}`)
  }
  t.equal(sim.counters.unauthorized, 0)
})

t.test('library sections: XML by default, the same data as JSON, at /library/sections and /all', async (t) => {
  const sim = await start(t)
  const j = await json(sim, '/library/sections')
  t.same(await json(sim, '/library/sections/all'), j)
  t.match(j, { size: 2, allowSync: false, title1: 'Plex Library' })
  t.match(j.Directory, [
    { key: '1', type: 'movie', title: 'Movies', agent: 'tv.plex.agents.movie', scanner: 'Plex Movie', allowSync: true, content: true, createdAt: Number, Location: [{ id: 1, path: '/data/movies' }] },
    { key: '2', type: 'show', title: 'TV Shows', agent: 'tv.plex.agents.series', Location: [{ id: 2, path: '/data/tv' }] },
  ])

  const x = await fromXml(sim, '/library/sections')
  t.equal(x.size, '2')
  t.match(x.Directory[0], { key: '1', type: 'movie', title: 'Movies', allowSync: '1', content: '1', Location: [{ id: '1', path: '/data/movies' }] }, 'booleans are 1/0 in XML')
})

t.test('section items: movies, shows, episodes by ?type=, paged by X-Plex-Container-Start/-Size', async (t) => {
  const sim = await start(t)
  const movies = await json(sim, '/library/sections/1/all')
  t.match(movies, { size: 3, librarySectionID: 1, librarySectionTitle: 'Movies', title2: 'All Movies', viewGroup: 'movie' })
  t.notOk('offset' in movies, 'no offset when no page was asked for')
  t.same(movies.Metadata.map((m: { title: string }) => m.title), ['Nosferatu', 'The General', 'Night of the Living Dead'])
  t.match(movies.Metadata[0], {
    ratingKey: '1001',
    key: '/library/metadata/1001',
    type: 'movie',
    year: 1922,
    duration: 5640000,
    librarySectionID: 1,
    guid: /^plex:\/\/movie\//,
    Media: [{ id: 1, duration: 5640000, videoCodec: 'h264', Part: [{ id: 1, key: /^\/library\/parts\/1\//, file: /Nosferatu/ }] }],
    Genre: [{ tag: 'Horror' }],
  })

  const shows = await json(sim, '/library/sections/2/all')
  t.match(shows.Metadata, [{ ratingKey: '2001', type: 'show', title: 'Simulated Lives', key: '/library/metadata/2001/children', childCount: 1, leafCount: 2 }])
  const episodes = await json(sim, '/library/sections/2/all?type=4')
  t.same(episodes.Metadata.map((m: { title: string }) => m.title), ['Pilot', 'The Restart'])
  t.match(episodes.Metadata[1], { grandparentTitle: 'Simulated Lives', parentTitle: 'Season 1', index: 2, parentIndex: 1 })

  // The page as query arguments or headers (§1: every X-Plex-* header may be a query argument).
  const page = await json(sim, '/library/sections/1/all?X-Plex-Container-Start=1&X-Plex-Container-Size=1')
  t.match(page, { size: 1, offset: 1, totalSize: 3 })
  t.equal(page.Metadata[0].title, 'The General')
  const r = await call(sim, '/library/sections/1/all', { token: sim.adminToken, json: true, headers: { 'x-plex-container-start': '2', 'x-plex-container-size': '5' } })
  t.match(JSON.parse(r.text).MediaContainer, { size: 1, offset: 2, totalSize: 3, Metadata: [{ title: 'Night of the Living Dead' }] })

  const x = await fromXml(sim, '/library/sections/1/all')
  t.equal(x.Video.length, 3, 'movies are <Video> in XML')
  t.match(x.Video[0], { ratingKey: '1001', year: '1922', Media: [{ Part: [{ id: '1' }] }] })
  t.equal((await fromXml(sim, '/library/sections/2/all')).Directory[0].type, 'show', 'shows are <Directory> in XML')

  for (const bad of ['/library/sections/9/all', '/library/sections/9']) t.equal((await call(sim, bad, { token: sim.adminToken })).status, 404, `${bad} → 404`)
  for (const bad of ['/library/sections/1/all?type=movie', '/library/sections/1/all?X-Plex-Container-Size=-1']) t.equal((await call(sim, bad, { token: sim.adminToken })).status, 400, `${bad} → 400`)
})

t.test('metadata by id (or a list of ids), children of a show and a season, 404 for unknown ids', async (t) => {
  const sim = await start(t)
  const one = await json(sim, '/library/metadata/1002')
  t.match(one, { size: 1, librarySectionID: 1, Metadata: [{ ratingKey: '1002', title: 'The General', Director: [{ tag: 'Buster Keaton' }, { tag: 'Clyde Bruckman' }] }] })
  const two = await json(sim, '/library/metadata/2004,1001,9999')
  t.same(two.Metadata.map((m: { ratingKey: string }) => m.ratingKey), ['2004', '1001'], 'unknown ids are left out')

  const seasons = await json(sim, '/library/metadata/2001/children')
  t.match(seasons, { size: 1, viewGroup: 'season', Metadata: [{ ratingKey: '2002', type: 'season', title: 'Season 1', parentRatingKey: '2001', leafCount: 2 }] })
  const eps = await json(sim, '/library/metadata/2002/children')
  t.same(eps.Metadata.map((m: { key: string }) => m.key), ['/library/metadata/2003', '/library/metadata/2004'])

  t.equal((await call(sim, '/library/metadata/%E0%A4%A', { token: sim.adminToken })).status, 400, 'a malformed escape is a 400')
  t.equal((await call(sim, '/library/metadata/1001%2C1002', { token: sim.adminToken, json: true })).status, 200, 'an escaped comma still separates ids')
  for (const id of ['9999', '9999,8888', 'abc']) {
    const r = await call(sim, `/library/metadata/${id}`, { token: sim.adminToken, json: true })
    t.equal(r.status, 404, `${id} → 404`)
    t.equal(r.text, htmlErrorBody(404))
    t.equal(r.type, 'text/html', 'errors are HTML whatever Accept says')
  }
  t.equal((await call(sim, '/library/metadata/9999/children', { token: sim.adminToken })).status, 404)
})

t.test('hub search filters titles, one hub per type, limit per hub; 400 without a query', async (t) => {
  const sim = await start(t)
  const night = await json(sim, '/hubs/search?query=NIGHT')
  t.equal(night.size, 3)
  t.same(night.Hub.map((h: { type: string, size: number }) => [h.type, h.size]), [['movie', 1], ['show', 0], ['episode', 0]])
  t.match(night.Hub[0], { hubIdentifier: 'movie', context: 'hub.movie', hubKey: '/library/metadata/1003', more: false, Metadata: [{ ratingKey: '1003', title: 'Night of the Living Dead' }] })
  t.notOk('Metadata' in night.Hub[1], 'an empty hub has no Metadata')

  const the = await json(sim, '/hubs/search?query=the&limit=1')
  t.same(the.Hub.map((h: { size: number, more: boolean }) => [h.size, h.more]), [[1, true], [0, false], [1, false]], 'The General and Night of the Living Dead, cut to one; The Restart')
  const inTv = await json(sim, '/hubs/search?query=the&sectionId=2')
  t.same(inTv.Hub.map((h: { size: number }) => h.size), [0, 0, 1])

  const x = await fromXml(sim, '/hubs/search?query=pilot')
  t.match(x.Hub[2], { type: 'episode', size: '1', Video: [{ title: 'Pilot' }] })

  for (const bad of ['/hubs/search', '/hubs/search?query=', '/hubs/search?query=a&limit=x']) t.equal((await call(sim, bad, { token: sim.adminToken })).status, 400, `${bad} → 400`)
})

t.test('status/sessions: empty, then the one playback with its user, player and session', async (t) => {
  const sim = await start(t)
  t.same(await json(sim, '/status/sessions'), { size: 0 })
  t.same(await fromXml(sim, '/status/sessions'), { size: '0' })

  sim.play('2003', { viewOffset: 60_000 })
  const s = await json(sim, '/status/sessions')
  t.match(s, {
    size: 1,
    Metadata: [{
      ratingKey: '2003',
      type: 'episode',
      sessionKey: '1',
      viewOffset: 60_000,
      grandparentTitle: 'Simulated Lives',
      User: { id: '1', title: 'sim-owner' },
      Player: { product: 'Plex Web', state: 'playing', local: true, machineIdentifier: 'pms-sim-player-0001' },
      Session: { location: 'lan', bandwidth: Number },
    }],
  })
  t.notOk(Array.isArray(s.Metadata[0].Player), 'Player, User and Session are objects in JSON')

  sim.play('2003', { state: 'paused' })
  t.match(await json(sim, '/status/sessions'), { Metadata: [{ sessionKey: '1', viewOffset: 60_000, Player: { state: 'paused' } }] }, 'pausing keeps the session')
  const x = await fromXml(sim, '/status/sessions')
  t.match(x.Video[0], { ratingKey: '2003', Player: { state: 'paused' }, User: { title: 'sim-owner' } })

  t.ok(sim.stopPlayback())
  t.notOk(sim.stopPlayback(), 'nothing left to stop')
  t.equal((await json(sim, '/status/sessions')).size, 0)
  t.throws(() => sim.play('2001'), /no movie or episode/, 'a show cannot be played')

  sim.play('1001')
  await sim.restart()
  t.equal((await json(sim, '/status/sessions')).size, 0, 'a restart ends playback')
})

t.test('the media endpoints follow the token rule: header or query, 401 with PMS\'s body, dead after a restart', async (t) => {
  const sim = await start(t)
  const minted = await call(sim, '/security/token?type=delegation&scope=all', { token: sim.adminToken, json: true })
  const transient = JSON.parse(minted.text).MediaContainer.token
  const paths = ['/library', '/library/sections', '/library/sections/1/all', '/library/metadata/1001', '/status/sessions', '/hubs/search?query=a', '/activities', '/clients', '/playlists']
  for (const path of paths) {
    t.equal((await call(sim, path, { token: transient })).status, 200, `${path} with a transient token in the header`)
    t.equal((await call(sim, path, { token: transient, query: true, json: true })).status, 200, `${path} with it in the query`)
    const none = await call(sim, path)
    t.equal(none.status, 401, `${path} without a token`)
    t.equal(none.text, UNAUTHORIZED)
  }
  t.equal((await call(sim, '/library/metadata/9999')).status, 401, 'no token: 401 before any 404')
  t.equal((await call(sim, '/library/sections', { token: sim.adminToken, method: 'POST' })).status, 405)
  t.equal((await call(sim, '/library/sections', { token: sim.adminToken, method: 'HEAD' })).status, 200)

  await sim.restart()
  const dead = await call(sim, '/library/sections', { token: transient, json: true })
  t.equal(dead.status, 401, 'the transient token died with the restart')
  t.equal(dead.text, UNAUTHORIZED)
  t.equal((await call(sim, '/library/sections', { token: sim.adminToken })).status, 200, 'the admin token lives on')
})

interface Socket {
  ws: WebSocket
  messages: any[]
  pings: () => number
  closed: Promise<number>
}

/** Opens the notification socket; rejects with the HTTP status when the upgrade is refused. */
async function connect (sim: PmsSimulator, o: { token?: string, query?: boolean, path?: string, filters?: string } = {}): Promise<Socket> {
  const url = new URL((o.path ?? '/:/websockets/notifications').replace(/^\//, ''), sim.url.replace(/^http/, 'ws') + '/')
  if (o.filters !== undefined) url.searchParams.set('filters', o.filters)
  const headers: Record<string, string> = {}
  if (o.token !== undefined) {
    if (o.query === true) url.searchParams.set('X-Plex-Token', o.token)
    else headers['X-Plex-Token'] = o.token
  }
  const ws = new WebSocket(url, { headers })
  const messages: any[] = []
  let pings = 0
  ws.on('message', (data) => messages.push(JSON.parse(String(data))))
  ws.on('ping', () => pings++)
  const closed = new Promise<number>((resolve) => ws.once('close', (code) => resolve(code)))
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve())
    ws.once('unexpected-response', (_req, res) => {
      let body = ''
      res.on('data', (c: Buffer) => { body += String(c) })
      res.on('end', () => reject(Object.assign(new Error(`upgrade refused: ${res.statusCode}`), { status: res.statusCode, body, type: res.headers['content-type'] })))
    })
    ws.once('error', reject)
  })
  return { ws, messages, pings: () => pings, closed }
}

t.test('the notification WebSocket: 401 at the upgrade without a live token', async (t) => {
  const sim = await start(t)
  for (const token of [undefined, 'nope']) {
    const err = await connect(sim, { token }).then(() => undefined, (e: { status: number, body: string, type: string }) => e)
    t.match(err, { status: 401, body: UNAUTHORIZED, type: 'text/html' }, `token ${String(token)}: refused at the upgrade`)
  }
  t.equal(sim.counters.unauthorized, 2)
  t.equal(sim.webSockets, 0)
  const elsewhere = await connect(sim, { token: sim.adminToken, path: '/library/sections' }).then(() => undefined, (e: { status: number }) => e)
  t.match(elsewhere, { status: 404 }, 'no WebSocket on other paths')

  const plain = await call(sim, '/:/websockets/notifications', { token: sim.adminToken })
  t.equal(plain.status, 400, 'a plain GET is not an upgrade')
  t.equal(sim.counters.byPath['/:/websockets/notifications'], 3)
})

t.test('the notification WebSocket sends playing notifications, pings, honours filters', async (t) => {
  const sim = await start(t, { pingIntervalMs: 30 })
  const minted = await call(sim, '/security/token?type=delegation&scope=all', { token: sim.adminToken, json: true })
  const transient = JSON.parse(minted.text).MediaContainer.token
  const all = await connect(sim, { token: transient })
  const viaQuery = await connect(sim, { token: sim.adminToken, query: true, path: '/:/websocket/notifications' })
  const onlyActivity = await connect(sim, { token: sim.adminToken, filters: 'activity' })
  const notPlaying = await connect(sim, { token: sim.adminToken, filters: '-playing' })
  t.equal(sim.webSockets, 4)

  sim.play('1001', { viewOffset: 5000 })
  sim.play('1001', { state: 'paused' })
  sim.play('1002')
  sim.stopPlayback()
  t.ok(await waitFor(() => all.messages.length === 5 && viaQuery.messages.length === 5, 2000), 'five notifications')
  t.same(all.messages, viaQuery.messages, 'the singular path (the spec\'s) is the same socket')
  for (const m of all.messages) {
    t.match(m, { NotificationContainer: { type: 'playing', size: 1, PlaySessionStateNotification: [{ clientIdentifier: 'pms-sim-player-0001', playQueueItemID: Number }] } })
  }
  const states = all.messages.map((m) => m.NotificationContainer.PlaySessionStateNotification[0])
    .map((n: { ratingKey: string, state: string, sessionKey: string, viewOffset: number }) => [n.ratingKey, n.state, n.sessionKey, n.viewOffset])
  t.same(states, [['1001', 'playing', '1', 5000], ['1001', 'paused', '1', 5000], ['1001', 'stopped', '1', 5000], ['1002', 'playing', '2', 0], ['1002', 'stopped', '2', 0]],
    'play, pause, switching items stops the first session, stop')
  t.match(all.messages[0].NotificationContainer.PlaySessionStateNotification[0], { key: '/library/metadata/1001', guid: /^plex:\/\/movie\// })

  t.ok(await waitFor(() => all.pings() >= 3, 2000), 'ping frames keep the socket alive')
  t.same(onlyActivity.messages, [], 'filters=activity: no playing notifications')
  t.same(notPlaying.messages, [], 'filters=-playing: none either')

  all.ws.close()
  t.ok(await waitFor(() => sim.webSockets === 3, 2000), 'a client\'s close is noticed')
})

t.test('a restart closes every notification WebSocket, and the old transient token cannot reopen one', async (t) => {
  const sim = await start(t)
  const minted = await call(sim, '/security/token?type=delegation&scope=all', { token: sim.adminToken, json: true })
  const transient = JSON.parse(minted.text).MediaContainer.token
  const a = await connect(sim, { token: transient })
  const b = await connect(sim, { token: sim.adminToken })
  const stream = await request(`${sim.url}/:/eventsource/notifications`, { headers: { 'x-plex-token': sim.adminToken } })
  // A reset ends the stream as much as a clean end does.
  const streamEnded = stream.body.dump().catch(() => {})

  await sim.restart()
  t.equal(await a.closed, 1006, 'dropped without a close frame, as a stopping process does')
  t.equal(await b.closed, 1006)
  await streamEnded
  t.equal(sim.webSockets, 0)
  t.equal(sim.eventStreams, 0, 'the event stream drops with them')

  const err = await connect(sim, { token: transient }).then(() => undefined, (e: { status: number }) => e)
  t.match(err, { status: 401 }, 'the dead transient token is refused at the upgrade')
  const again = await connect(sim, { token: sim.adminToken })
  sim.play('1003')
  t.ok(await waitFor(() => again.messages.length === 1, 2000), 'a new socket works after the restart')
  again.ws.close()
  await again.closed
})

t.test('stop closes the sockets; faults apply to the upgrade', async (t) => {
  const sim = await start(t)
  sim.setFault({ status: 503 })
  const err = await connect(sim, { token: sim.adminToken }).then(() => undefined, (e: { status: number, body: string }) => e)
  t.match(err, { status: 503, body: htmlErrorBody(503) })
  sim.setFault({})
  const ws = await connect(sim, { token: sim.adminToken })
  await sim.stop()
  t.equal(await ws.closed, 1006)
})
