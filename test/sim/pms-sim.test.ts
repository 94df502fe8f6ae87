import t from 'tap'
import { XMLParser } from 'fast-xml-parser'
import { request } from 'undici'
import { DEFAULT_VERSION, htmlErrorBody, PmsSimulator } from '../../src/sim/pms-sim.ts'
import { call, start, UNAUTHORIZED } from './helpers.ts'
import { startSimFromEnv } from '../../src/sim/main.ts'

/** The exact 401 body of docs/plex-api.md §4. */
const xml = new XMLParser({ ignoreAttributes: false, attributeNamePrefix: '', parseAttributeValue: false, isArray: (name) => name === 'Connection' || name === 'Directory' })
const parseXml = (s: string): any => xml.parse(s)

async function refused (sim: PmsSimulator): Promise<boolean> {
  try {
    await call(sim, '/identity')
    return false
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ECONNREFUSED'
  }
}

async function mint (sim: PmsSimulator, token = sim.adminToken): Promise<string> {
  const r = await call(sim, '/security/token?type=delegation&scope=all', { token })
  if (r.status !== 200) throw new Error(`mint answered ${r.status}`)
  return parseXml(r.text).MediaContainer.token
}

/** Opens the event stream and records what arrives until PMS closes it. */
async function openStream (sim: PmsSimulator): Promise<{ status: number, type: string, data: () => string, closed: Promise<void> }> {
  const r = await request(`${sim.url}/:/eventsource/notifications`, { headers: { 'x-plex-token': sim.adminToken } })
  let data = ''
  const closed = (async () => {
    try {
      for await (const chunk of r.body) data += String(chunk)
    } catch {
      // A reset connection ends the stream as much as a clean end does.
    }
  })()
  return { status: r.statusCode, type: String(r.headers['content-type']), data: () => data, closed }
}

async function waitFor (cond: () => boolean, ms: number): Promise<boolean> {
  const until = Date.now() + ms
  while (!cond() && Date.now() < until) await new Promise((resolve) => setTimeout(resolve, 10))
  return cond()
}

t.test('GET /identity needs no token and answers XML by default, JSON on request', async (t) => {
  const sim = await start(t, { machineIdentifier: 'ee2e37973bc957d96a81bad551adef994763b651', version: '1.32.5.7516-8f4248874' })
  t.match(sim.url, /^http:\/\/127\.0\.0\.1:\d+$/)

  const x = await call(sim, '/identity')
  t.equal(x.status, 200)
  t.match(x.type, /^text\/xml/)
  t.equal(x.headers['x-plex-protocol'], '1.0')
  t.match(x.text, /^<\?xml version="1.0" encoding="UTF-8"\?>\n<MediaContainer /)
  t.same(parseXml(x.text).MediaContainer, { size: '0', claimed: '1', machineIdentifier: 'ee2e37973bc957d96a81bad551adef994763b651', version: '1.32.5.7516-8f4248874' })

  const j = await call(sim, '/identity', { json: true })
  t.equal(j.type, 'application/json')
  t.same(JSON.parse(j.text), { MediaContainer: { size: 0, claimed: true, machineIdentifier: sim.machineIdentifier, version: sim.version } })

  const head = await call(sim, '/identity', { method: 'HEAD' })
  t.equal(head.status, 200)
  t.equal(head.text, '')
  t.equal(sim.counters.identity, 3)
  t.equal(sim.counters.unauthorized, 0)
})

t.test('a missing or wrong token gets 401 with the HTML body PMS sends, whatever Accept says', async (t) => {
  const sim = await start(t)
  for (const [path, o] of [['/', {}], ['/', { token: 'nope', json: true }], ['/security/token?type=delegation&scope=all', { token: 'nope' }],
    ['/security/resources?source=provider://tv.plex.provider.vod', {}], ['/:/eventsource/notifications', { token: '' }], ['/no/such/path', {}]] as const) {
    const r = await call(sim, path, o)
    t.equal(r.status, 401, `${path} → 401`)
    t.equal(r.text, UNAUTHORIZED)
    t.equal(r.type, 'text/html')
    t.equal(r.headers['content-length'], '91')
    t.equal(r.headers['cache-control'], 'no-cache')
  }
  t.equal(sim.counters.unauthorized, 6)
  t.equal(sim.counters.mints, 0)
})

t.test('GET / with the admin token, in the header or the query', async (t) => {
  const sim = await start(t, { friendlyName: 'nas' })
  const x = await call(sim, '/', { token: sim.adminToken })
  t.equal(x.status, 200)
  const mc = parseXml(x.text).MediaContainer
  t.match(mc, { friendlyName: 'nas', machineIdentifier: sim.machineIdentifier, version: sim.version, myPlex: '1', myPlexSigninState: 'ok', platform: 'Linux' })
  t.equal(mc.Directory.length, Number(mc.size))

  const j = JSON.parse((await call(sim, '/', { token: sim.adminToken, query: true, json: true })).text)
  t.match(j.MediaContainer, { friendlyName: 'nas', myPlex: true, updatedAt: Number, version: sim.version })
  t.ok(Array.isArray(j.MediaContainer.Directory))
})

t.test('/security/token mints transient tokens in XML and JSON, by GET or POST', async (t) => {
  const sim = await start(t)
  const x = await call(sim, '/security/token?type=delegation&scope=all', { token: sim.adminToken })
  t.equal(x.status, 200)
  t.match(x.text, /<MediaContainer size="0" token="transient-[0-9a-f-]{36}"><\/MediaContainer>/)
  const fromXml = parseXml(x.text).MediaContainer
  t.same(Object.keys(fromXml).sort(), ['size', 'token'], 'no expiry or creation time (§2)')

  const j = await call(sim, '/security/token?type=delegation&scope=all', { token: sim.adminToken, json: true, method: 'POST' })
  const body = JSON.parse(j.text)
  t.same(Object.keys(body.MediaContainer).sort(), ['size', 'token'])
  t.equal(body.MediaContainer.size, 0)
  t.match(body.MediaContainer.token, /^transient-/)

  for (const token of [fromXml.token, body.MediaContainer.token]) {
    t.ok(sim.isTokenValid(token))
    t.equal((await call(sim, '/', { token })).status, 200, 'PMS accepts the transient token')
  }
  t.not(fromXml.token, body.MediaContainer.token)
  t.equal(sim.counters.mints, 2)
  t.equal(sim.transientTokens(), 2)
  t.equal(sim.counters.byPath['/security/token'], 2)
})

t.test('/security/token: 400 for a wrong type or scope, 403 for a transient caller', async (t) => {
  const sim = await start(t)
  for (const q of ['', '?type=delegation', '?scope=all', '?type=access&scope=all', '?type=delegation&scope=some']) {
    const r = await call(sim, `/security/token${q}`, { token: sim.adminToken, json: true })
    t.equal(r.status, 400, `"${q}" → 400`)
    t.equal(r.text, '<html><head><title>Bad Request</title></head><body><h1>400 Bad Request</h1></body></html>')
    t.equal(r.type, 'text/html')
  }
  const transient = await mint(sim)
  const r = await call(sim, '/security/token?type=delegation&scope=all', { token: transient })
  t.equal(r.status, 403)
  t.equal(r.text, htmlErrorBody(403))
  t.equal(sim.counters.mints, 1)

  const lax = await start(t, { transientCanMint: true })
  t.match(await mint(lax, await mint(lax)), /^transient-/, 'transientCanMint lets a transient token mint')
})

t.test('transient tokens expire after tokenLifetimeMs', async (t) => {
  let now = 1_000_000
  const sim = await start(t, { now: () => now, tokenLifetimeMs: 60_000 })
  const token = await mint(sim)
  now += 59_999
  t.ok(sim.isTokenValid(token))
  now += 1
  t.notOk(sim.isTokenValid(token))
  t.equal(sim.transientTokens(), 0)
  t.equal((await call(sim, '/', { token })).status, 401)
  t.ok(sim.isTokenValid(sim.adminToken), 'admin tokens do not expire')
})

t.test('/security/resources answers the source with its connections and a token', async (t) => {
  const sim = await start(t)
  const source = 'server://243b471948ace337a8f92f129ec97d1902fcb1df'
  const x = await call(sim, `/security/resources?source=${encodeURIComponent(source)}`, { token: sim.adminToken })
  t.equal(x.status, 200)
  const mc = parseXml(x.text).MediaContainer
  t.equal(mc.size, '1')
  t.match(mc.Device, { name: 'PlexCorp (plex-corp)', clientIdentifier: '243b471948ace337a8f92f129ec97d1902fcb1df', accessToken: /^transient-/ })
  t.equal(mc.Device.Connection.length, 3)
  t.same(mc.Device.Connection[0], { protocol: 'https', address: '10.0.2.123', port: '32400', uri: 'https://10-0-2-123.93b10b279ff8456686414add109854cd.plex.direct:32400', local: '1' })
  t.equal(mc.Device.Connection[2].relay, '1')

  // A transient token from the admin token may ask too (§3).
  const j = await call(sim, '/security/resources?source=provider://tv.plex.provider.vod&refresh=1', { token: await mint(sim), json: true })
  t.equal(j.status, 200)
  const device = JSON.parse(j.text).MediaContainer.Device
  t.notOk(Array.isArray(device), 'Device is an object in JSON')
  t.match(device, { name: String, clientIdentifier: 'tv.plex.provider.vod', accessToken: /^transient-/ })
  t.same(device.Connection, [{ protocol: 'https', address: 'vod.provider.plex.tv', port: 443, uri: 'https://vod.provider.plex.tv', local: false }])

  const server = JSON.parse((await call(sim, `/security/resources?source=${source}`, { token: sim.adminToken, json: true })).text)
  t.same(server.MediaContainer.Device.Connection.map((c: { local: boolean, relay?: boolean }) => [c.local, c.relay ?? false]), [[true, false], [false, false], [false, true]])

  t.notOk(sim.isTokenValid(device.accessToken), 'a source token is for the source, not for this server')
  t.ok(sim.isSourceTokenValid(device.accessToken, 'provider://tv.plex.provider.vod'))
  t.notOk(sim.isSourceTokenValid(device.accessToken, source))
  t.equal(sim.counters.mints, 1, 'only /security/token counts as a mint')
})

t.test('/security/resources: 400 for a missing or unknown source, 404 before PMS 1.15.4', async (t) => {
  const sim = await start(t, { sources: [{ source: 'server://abc', name: 'x', clientIdentifier: 'abc', connections: [] }] })
  t.equal((await call(sim, '/security/resources', { token: sim.adminToken })).status, 400)
  const unknown = await call(sim, '/security/resources?source=server://nope', { token: sim.adminToken, json: true })
  t.equal(unknown.status, 400)
  t.equal(unknown.text, htmlErrorBody(400))
  t.equal((await call(sim, '/security/resources?source=server://abc', { token: sim.adminToken })).status, 200)

  const old = await start(t, { version: '1.15.3.876-ad6e39743' })
  const r = await call(old, '/security/resources?source=provider://tv.plex.provider.vod', { token: old.adminToken })
  t.equal(r.status, 404)
  t.equal(r.text, '<html><head><title>Not Found</title></head><body><h1>404 Not Found</h1></body></html>')
  const first = await start(t, { version: '1.15.4.993-bb4a2cb6c' })
  t.equal((await call(first, '/security/resources?source=provider://tv.plex.provider.vod', { token: first.adminToken })).status, 200)
})

t.test('an unknown path is a 404 once authenticated', async (t) => {
  const sim = await start(t)
  const r = await call(sim, '/library/nothing', { token: sim.adminToken, json: true })
  t.equal(r.status, 404)
  t.equal(r.type, 'text/html')
  t.equal(sim.counters.byPath['/library/nothing'], 1)
})

t.test('a DASH transcode session: the MPD, then its streams\' headers and segments; a token for each', async (t) => {
  const sim = await start(t)
  const session = 'ws8ajlwv-1'
  const startPath = `/video/:/transcode/universal/start.mpd?session=${session}&protocol=dash&path=%2Flibrary%2Fmetadata%2F1001`
  t.equal((await call(sim, `/video/:/transcode/universal/session/${session}/0/header`, { token: sim.adminToken })).status, 404, 'no session before start.mpd')
  t.equal((await call(sim, startPath)).status, 401)
  t.equal((await call(sim, startPath.replace('protocol=dash', 'protocol=hls'), { token: sim.adminToken })).status, 400)
  const mpd = await call(sim, startPath, { token: sim.adminToken })
  t.equal(mpd.status, 200)
  t.equal(mpd.type, 'application/dash+xml')
  const parsed = new XMLParser({ ignoreAttributes: false, attributeNamePrefix: '' }).parse(mpd.text)
  const sets = parsed.MPD.Period.AdaptationSet as Array<{ SegmentTemplate: Record<string, string>, Representation: { id: string, mimeType: string } }>
  t.same(sets.map((s) => [s.Representation.id, s.Representation.mimeType]), [['0', 'video/mp4'], ['1', 'audio/mp4']])
  t.same(sets[0]!.SegmentTemplate, { timescale: '1', duration: '10', initialization: `session/${session}/$RepresentationID$/header`, media: `session/${session}/$RepresentationID$/$Number$.m4s`, startNumber: '0' })
  const header = await call(sim, `/video/:/transcode/universal/session/${session}/0/header`, { token: sim.adminToken })
  t.equal(header.status, 200)
  t.equal(header.type, 'video/mp4')
  t.equal((await call(sim, `/video/:/transcode/universal/session/${session}/1/2.m4s`, { token: sim.adminToken })).type, 'audio/mp4')
  t.equal((await call(sim, `/video/:/transcode/universal/session/${session}/1/2.m4s`)).status, 401)
  t.equal((await call(sim, `/video/:/transcode/universal/session/${session}/0/3.m4s`, { token: sim.adminToken })).status, 404, 'past the last segment')
  await sim.restart()
  t.equal((await call(sim, `/video/:/transcode/universal/session/${session}/0/header`, { token: sim.adminToken })).status, 404, 'a restart ends the session')
})

t.test('the event stream stays open and pings', async (t) => {
  const sim = await start(t, { pingIntervalMs: 30 })
  const stream = await openStream(sim)
  t.equal(stream.status, 200)
  t.equal(stream.type, 'text/event-stream')
  t.ok(await waitFor(() => stream.data().split('event: ping\ndata: {}\n\n').length > 3, 2000), 'several pings')
  t.equal(sim.counters.byPath['/:/eventsource/notifications'], 1)
  await sim.stop()
  await stream.closed
  t.pass('stop closes it')
})

t.test('restart destroys transient tokens, drops streams, refuses while down, may change version', async (t) => {
  const sim = await start(t)
  const url = sim.url
  const token = await mint(sim)
  const stream = await openStream(sim)
  let streamClosed = false
  void stream.closed.then(() => { streamClosed = true })

  const restarting = sim.restart({ downForMs: 300, version: '1.43.0.10000-aaaaaaaaa' })
  t.ok(await waitFor(() => streamClosed, 1000), 'the open event stream was closed')
  t.ok(await refused(sim), 'connection refused while down')
  t.notOk(sim.isUp)
  await restarting

  t.ok(sim.isUp)
  t.equal(sim.url, url, 'same port')
  t.notOk(sim.isTokenValid(token))
  t.equal(sim.transientTokens(), 0)
  t.equal((await call(sim, '/', { token })).status, 401, 'PMS rejects the old transient token')
  t.equal((await call(sim, '/', { token: sim.adminToken })).status, 200, 'the admin token survives')
  t.equal(JSON.parse((await call(sim, '/identity', { json: true })).text).MediaContainer.version, '1.43.0.10000-aaaaaaaaa')

  const id = sim.machineIdentifier
  await sim.restart({ machineIdentifier: 'f'.repeat(40) })
  t.not(sim.machineIdentifier, id)
  t.equal(JSON.parse((await call(sim, '/identity', { json: true })).text).MediaContainer.machineIdentifier, 'f'.repeat(40))
})

t.test('a request caught by a restart is never answered from before it', async (t) => {
  const sim = await start(t, { latencyMs: 200 })
  // The outcome is taken at once: the drop may be seen while restart() is still running.
  const pending = call(sim, '/security/token?type=delegation&scope=all', { token: sim.adminToken }).then(() => 'answered', () => 'dropped')
  await new Promise((resolve) => setTimeout(resolve, 50))
  await sim.restart()
  t.equal(await pending, 'dropped', 'the connection was dropped')
  t.equal(sim.counters.mints, 0, 'and nothing was minted for it')
})

t.test('setDown is an outage: refused, then back on the same port with the same tokens', async (t) => {
  const sim = await start(t)
  const url = sim.url
  const token = await mint(sim)
  await sim.setDown(true)
  await sim.setDown(true)
  t.ok(await refused(sim))
  t.ok(sim.isTokenValid(token), 'tokens survive an outage')
  await sim.setDown(false)
  await sim.setDown(false)
  t.equal(sim.url, url)
  t.equal((await call(sim, '/', { token })).status, 200)
})

t.test('overlapping restarts, outages and stop leave one listener or none', async (t) => {
  const sim = await start(t)
  const url = sim.url
  await Promise.all([sim.restart({ downForMs: 30 }), sim.restart(), sim.setDown(false)])
  t.ok(sim.isUp)
  t.equal(sim.url, url)
  t.equal((await call(sim, '/identity')).status, 200)
  const restarting = sim.restart({ downForMs: 30 })
  await sim.stop()
  await restarting
  t.notOk(sim.isUp, 'stop wins over a restart in progress')
  t.ok(await refused(sim))
})

t.test('xmlOnly answers XML even to Accept: application/json', async (t) => {
  const sim = await start(t, { xmlOnly: true })
  const r = await call(sim, '/security/token?type=delegation&scope=all', { token: sim.adminToken, json: true })
  t.match(r.type, /^text\/xml/)
  t.ok(sim.isTokenValid(parseXml(r.text).MediaContainer.token))

  const plain = await start(t)
  plain.setFault({ xmlOnly: true })
  t.match((await call(plain, '/identity', { json: true })).type, /^text\/xml/)
  plain.setFault({})
  t.equal((await call(plain, '/identity', { json: true })).type, 'application/json')
})

t.test('faults: latency, every Nth request fails, garbage, a fixed status', async (t) => {
  const sim = await start(t)
  sim.setFault({ latencyMs: 120 })
  const began = Date.now()
  await call(sim, '/identity')
  t.ok(Date.now() - began >= 110, 'latency delays the answer')

  sim.setFault({ failEvery: 3 })
  const statuses = []
  for (let i = 0; i < 6; i++) statuses.push((await call(sim, '/identity')).status)
  t.same(statuses, [200, 200, 500, 200, 200, 500])

  sim.setFault({ garbage: true })
  const g = await call(sim, '/security/token?type=delegation&scope=all', { token: sim.adminToken, json: true })
  t.equal(g.status, 200)
  t.throws(() => JSON.parse(g.text), 'JSON garbage')
  const gx = await call(sim, '/security/token?type=delegation&scope=all', { token: sim.adminToken })
  t.notOk(/token="transient-[0-9a-f-]{36}"/.test(gx.text), 'no token in the XML garbage either')
  t.equal(sim.counters.mints, 0)
  t.equal(sim.transientTokens(), 0)

  sim.setFault({ status: 503 })
  for (const path of ['/identity', '/', '/security/token?type=delegation&scope=all']) {
    const r = await call(sim, path, { token: sim.adminToken })
    t.equal(r.status, 503, `${path} → 503`)
    t.equal(r.text, htmlErrorBody(503))
  }
  sim.setFault({})
  t.equal((await call(sim, '/identity')).status, 200)

  const slow = await start(t, { latencyMs: 80 })
  const t0 = Date.now()
  await call(slow, '/identity')
  t.ok(Date.now() - t0 >= 70, 'the latencyMs option delays too')
})

t.test('counters count every request by path and reset in place', async (t) => {
  const sim = await start(t)
  const counters = sim.counters
  await call(sim, '/identity')
  await call(sim, '/identity?x=1')
  await call(sim, '/')
  t.same(counters, { requests: 3, mints: 0, unauthorized: 1, adminCalls: 0, identity: 2, byPath: { '/identity': 2, '/': 1 }, inFlight: 0, maxInFlight: 1, inFlightByPath: {} })
  sim.resetCounters()
  t.equal(sim.counters, counters, 'the same object')
  t.same(counters, { requests: 0, mints: 0, unauthorized: 0, adminCalls: 0, identity: 0, byPath: {}, inFlight: 0, maxInFlight: 0, inFlightByPath: {} })
})

t.test('setAdminTokens replaces the admin tokens', async (t) => {
  const sim = await start(t, { adminTokens: ['first-admin', 'second-admin'] })
  t.equal(sim.adminToken, 'first-admin')
  t.equal((await call(sim, '/', { token: 'second-admin' })).status, 200)
  sim.setAdminTokens(['third-admin'])
  t.equal((await call(sim, '/', { token: 'first-admin' })).status, 401)
  t.equal(sim.adminToken, 'third-admin')
  t.match(await mint(sim), /^transient-/)
})

t.test('counters.adminCalls counts requests carrying a present or past admin token, accepted or not', async (t) => {
  const sim = await start(t, { adminTokens: ['first-admin'] })
  t.equal((await call(sim, '/', { token: 'first-admin' })).status, 200)
  sim.setAdminTokens(['second-admin'])
  t.equal((await call(sim, '/', { token: 'first-admin' })).status, 401, 'a rejected admin token still counts')
  t.equal((await call(sim, '/', { token: 'not-an-admin' })).status, 401, 'a stranger does not')
  await call(sim, '/identity')
  t.equal(sim.counters.adminCalls, 2)
  t.match(await mint(sim), /^transient-/)
  t.equal(sim.counters.adminCalls, 3)
  sim.resetCounters()
  t.equal(sim.counters.adminCalls, 0)
})

t.test('claim: an unclaimed server is claimed once with a claim token', async (t) => {
  const sim = await start(t, { claimed: false })
  t.equal(parseXml((await call(sim, '/identity')).text).MediaContainer.claimed, '0')
  t.equal(JSON.parse((await call(sim, '/', { token: sim.adminToken, json: true })).text).MediaContainer.myPlex, false)
  t.equal((await call(sim, '/myplex/claim', { method: 'POST' })).status, 400, 'no claim token')
  t.equal((await call(sim, '/myplex/claim?token=abc', { method: 'POST' })).status, 400, 'not a claim token')
  t.equal((await call(sim, '/myplex/claim?token=claim-abc', { method: 'GET' })).status, 405)

  const r = await call(sim, '/myplex/claim?token=claim-xxxxxxxxxxxxxxxxxxxx', { method: 'POST', json: true })
  t.equal(r.status, 200)
  t.match(JSON.parse(r.text), { MyPlex: { signInState: 'ok', mappingState: 'mapped' } })
  t.notOk(r.text.includes('authToken'), 'the simulator hands out no permanent token (CVE-2025-69414)')
  t.ok(sim.claimed)
  t.equal(JSON.parse((await call(sim, '/identity', { json: true })).text).MediaContainer.claimed, true)
  t.equal((await call(sim, '/myplex/claim?token=claim-yyyyyyyyyyyyyyyyyyyy', { method: 'POST' })).status, 403, 'already claimed')
})

t.test('startSimFromEnv: a simulator plus its control server', async (t) => {
  await t.rejects(startSimFromEnv({ SIM_PORT: 'x' }), /SIM_PORT/)
  const running = await startSimFromEnv({ SIM_PORT: '0', SIM_CONTROL_PORT: '0', SIM_ADMIN_TOKEN: 'env-admin', SIM_MACHINE_ID: 'a'.repeat(40), SIM_TOKEN_LIFETIME: '60000', SIM_XML_ONLY: '1' })
  t.teardown(() => running.close())
  const { sim, controlUrl } = running
  t.equal(sim.adminToken, 'env-admin')
  t.equal(sim.machineIdentifier, 'a'.repeat(40))
  t.match((await call(sim, '/identity', { json: true })).type, /^text\/xml/, 'SIM_XML_ONLY')

  const ctl = async (method: 'GET' | 'POST', path: string): Promise<any> => {
    const r = await request(controlUrl + path, { method, reset: true })
    return { status: r.statusCode, body: await r.body.json() }
  }
  const token = await mint(sim)
  t.match((await ctl('GET', '/counters')).body, { mints: 1, transientTokens: 1, up: true, byPath: { '/security/token': 1 } })
  await ctl('POST', '/down')
  t.ok(await refused(sim))
  await ctl('POST', '/up')
  t.ok(sim.isTokenValid(token))
  t.match((await ctl('POST', '/restart?downMs=50&version=1.43.1.1-abc')).body, { ok: true, version: '1.43.1.1-abc' })
  t.notOk(sim.isTokenValid(token))
  await ctl('POST', '/fault?status=503')
  t.equal((await call(sim, '/identity')).status, 503)
  await ctl('POST', '/fault')
  t.equal((await call(sim, '/identity')).status, 200)
  await ctl('POST', '/reset-counters')
  t.equal(sim.counters.requests, 0)

  t.match((await ctl('POST', '/playback?ratingKey=1002&viewOffset=1000')).body, { ok: true, playback: { ratingKey: '1002', state: 'playing', viewOffset: 1000 } })
  t.match((await ctl('POST', '/playback?state=paused')).body, { playback: { ratingKey: '1002', state: 'paused', viewOffset: 1000 } }, 'pause what plays')
  t.match((await ctl('GET', '/counters')).body, { playback: { ratingKey: '1002' }, webSockets: 0 })
  t.match(await call(sim, '/status/sessions', { token: sim.adminToken }), { status: 200, text: /<Video ratingKey="1002"/ })
  t.same((await ctl('POST', '/playback?state=stopped')).body, { ok: true, stopped: true })
  t.match((await ctl('GET', '/counters')).body, { playback: null })
  for (const bad of ['/playback', '/playback?ratingKey=2001', '/playback?ratingKey=1001&state=rewinding']) t.equal((await ctl('POST', bad)).status, 400, `${bad} → 400`)
  t.equal((await ctl('GET', '/nope')).status, 404)
})

t.test('startSimFromEnv reads the admin token from SIM_ADMIN_TOKEN_FILE', async (t) => {
  const dir = t.testdir({ 'plex-token': 'file-admin\n' })
  const running = await startSimFromEnv({ SIM_PORT: '0', SIM_CONTROL_PORT: '0', SIM_ADMIN_TOKEN_FILE: `${dir}/plex-token` })
  t.teardown(() => running.close())
  t.equal(running.sim.adminToken, 'file-admin')
  t.equal(running.sim.version, DEFAULT_VERSION)
})
