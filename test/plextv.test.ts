import t from 'tap'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { PlexTv, PlexTvError, PlexTvUnreachableError } from '../src/plex/plextv.ts'
import { type PlexTvSimOptions, PlexTvSimulator, type TvResource } from '../src/sim/plextv-sim.ts'

/** The part of tap's Test the helpers need. */
interface Test { teardown: (fn: () => unknown) => void }

async function setup (t: Test, opts: PlexTvSimOptions = {}, clientIdentifier = 'test-client'): Promise<{ sim: PlexTvSimulator, tv: PlexTv }> {
  const sim = await PlexTvSimulator.start(opts)
  const tv = new PlexTv({ baseUrl: sim.url, clientIdentifier, timeoutMs: 2000 })
  t.teardown(async () => {
    await tv.close()
    await sim.stop()
  })
  return { sim, tv }
}

async function rejection (p: Promise<unknown>): Promise<Error> {
  try {
    await p
  } catch (err) {
    return err as Error
  }
  throw new Error('expected a rejection')
}

const LIVING_ROOM: TvResource = {
  name: 'Living Room',
  clientIdentifier: 'machine-1',
  accessToken: 'living-room-admin-token',
  connections: [
    { protocol: 'https', address: '203.0.113.9', port: 8443, uri: 'https://relay.example:8443', local: false, relay: true },
    { protocol: 'https', address: '203.0.113.5', port: 32400, uri: 'https://remote.example:32400', local: false, relay: false },
    { protocol: 'http', address: '192.168.1.10', port: 32400, uri: 'http://192.168.1.10:32400', local: true, relay: false },
  ],
}

for (const format of ['negotiate', 'xml'] as const) {
  t.test(`PIN flow (${format === 'xml' ? 'XML' : 'JSON'} answers): create, poll, approve, expire`, async (t) => {
    const { sim, tv } = await setup(t, { format })
    const pin = await tv.createPin()
    t.equal(pin.code.length, 25, 'a strong PIN')
    t.ok(pin.expiresAt !== null && Date.parse(pin.expiresAt) > Date.now())
    t.equal(pin.authToken, null)
    t.equal((await tv.checkPin(pin.id)).authToken, null, 'not approved yet')
    t.match(tv.authUrl(pin), /^https:\/\/app\.plex\.tv\/auth#\?clientID=test-client&code=[0-9a-f]{25}&context%5Bdevice%5D%5Bproduct%5D=plex-token-broker$/)

    sim.approve(pin.id, 'token-from-approval')
    t.equal((await tv.checkPin(pin.id)).authToken, 'token-from-approval', 'approved by id with a given token')
    t.equal(await tv.checkAccountToken('token-from-approval'), 'valid', 'the approved token works at plex.tv')

    const other = await tv.createPin()
    sim.expire(other.code)
    const err = await rejection(tv.checkPin(other.id))
    t.ok(err instanceof PlexTvError)
    t.match(err, { status: 404, code: 1020 })
    t.match(err.message, /404 \(code 1020\): Code not found or expired/)
    t.equal(sim.counters.pinsCreated, 2)
    t.equal(sim.counters.pinPolls, 3)
  })
}

t.test('a PIN lapses after its lifetime, and only its own client id may read it', async (t) => {
  const { sim, tv } = await setup(t, { pinLifetimeSec: 0.05 })
  const pin = await tv.createPin()
  const stranger = new PlexTv({ baseUrl: sim.url, clientIdentifier: 'someone-else' })
  t.teardown(() => stranger.close())
  t.match(await rejection(stranger.checkPin(pin.id)), { status: 404, code: 1020 }, 'another client id')
  await new Promise((resolve) => setTimeout(resolve, 80))
  t.match(await rejection(tv.checkPin(pin.id)), { status: 404, code: 1020 }, 'expired by time')
  t.throws(() => sim.approve(99999), /no PIN/)
})

t.test('429: status, Retry-After, and rate limiting of the next N requests only', async (t) => {
  const { sim, tv } = await setup(t, { retryAfterSec: 7 })
  sim.rateLimitNext(2)
  for (let i = 0; i < 2; i++) {
    const err = await rejection(tv.createPin())
    t.ok(err instanceof PlexTvError)
    t.match(err, { status: 429, retryAfterMs: 7000 })
  }
  t.ok((await tv.createPin()).id > 0, 'the third request passes')
  sim.setRateLimited(true)
  t.equal(await tv.checkAccountToken(sim.accountToken), 'unknown', '429 never makes a token invalid')
  sim.setRateLimited(false)
  t.equal(sim.counters.rateLimited, 3)
})

t.test('network errors: refused and timed out, with no token in the message', async (t) => {
  const down = new PlexTv({ baseUrl: 'http://127.0.0.1:1', clientIdentifier: 'x' })
  t.teardown(() => down.close())
  const refused = await rejection(down.user('secret-account-token'))
  t.ok(refused instanceof PlexTvUnreachableError)
  t.match(refused, { reason: 'ECONNREFUSED' })
  t.match(refused.message, /plex\.tv \(http:\/\/127\.0\.0\.1:1\) did not answer GET \/api\/v2\/user: connection refused/)
  t.notOk(refused.message.includes('secret-account-token'))
  t.equal(await down.checkAccountToken('t'), 'unknown', 'an outage is not invalid')

  const silent = createServer(() => { /* never answers */ })
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { silent.closeAllConnections(); silent.close() })
  const slow = new PlexTv({ baseUrl: `http://127.0.0.1:${(silent.address() as AddressInfo).port}`, clientIdentifier: 'x', timeoutMs: 100 })
  t.teardown(() => slow.close())
  const timedOut = await rejection(slow.ping('secret-account-token'))
  t.match(timedOut, { name: 'PlexTvUnreachableError', reason: 'TIMEOUT' })
  t.match(timedOut.message, /no answer within 100 ms/)
})

t.test('password sign-in: 2FA (1029) and lockout (1031), JSON and XML envelopes', async (t) => {
  for (const format of ['negotiate', 'xml'] as const) {
    const { sim, tv } = await setup(t, { format, username: 'me', password: 'pw-123456', totp: '424242', lockoutAfter: 2 })
    t.match(await rejection(tv.signIn('me', 'pw-123456')), { status: 401, code: 1029 }, `${format}: code needed`)
    t.equal(await tv.signIn('me', 'pw-123456', '424242'), sim.accountToken, `${format}: signed in with the code`)
    const wrong = await rejection(tv.signIn('me', 'not-the-password'))
    t.match(wrong, { status: 401, code: 1001 })
    t.notOk(wrong.message.includes('not-the-password'))
    await rejection(tv.signIn('me', 'not-the-password'))
    const locked = await rejection(tv.signIn('me', 'pw-123456', '424242'))
    t.match(locked, { status: 401, code: 1031 }, `${format}: locked out even with the right password`)
    t.match(locked.message, /detected repeated failures/)
    sim.resetLockout()
    t.equal(await tv.signIn('me', 'pw-123456', '424242'), sim.accountToken, 'the lockout lifts')
  }
})

t.test('user, ping, token checks', async (t) => {
  const { sim, tv } = await setup(t)
  t.match(await tv.user(sim.accountToken), { id: 1, username: 'admin' })
  const err = await rejection(tv.user('bad-token-value'))
  t.match(err, { status: 401, code: 1001 })
  t.notOk(err.message.includes('bad-token-value'))
  t.equal(await tv.checkAccountToken(sim.accountToken), 'valid')
  t.equal(await tv.checkAccountToken('bad-token-value'), 'invalid')
  await tv.ping(sim.accountToken)
  t.equal(sim.counters.pings, 1)
  sim.revokeAccountToken()
  t.equal(await tv.checkAccountToken(sim.accountToken), 'invalid', 'revoked')
  t.match(await rejection(tv.ping(sim.accountToken)), { status: 401 })
})

t.test('resources: owned servers, tokens, connections local → remote → relay (JSON and XML)', async (t) => {
  const resources: TvResource[] = [
    LIVING_ROOM,
    { name: 'Friend', clientIdentifier: 'machine-2', accessToken: 'share-token', owned: false, connections: [] },
    { name: 'Phone', clientIdentifier: 'phone-1', accessToken: 'phone-token', provides: 'client,player', product: 'Plex for Android', connections: [] },
  ]
  for (const format of ['negotiate', 'xml'] as const) {
    const { sim, tv } = await setup(t, { format, resources })
    const list = await tv.resources(sim.accountToken)
    t.same(list.map((r) => [r.name, r.owned, r.provides, r.accessToken]), [
      ['Living Room', true, 'server', 'living-room-admin-token'],
      ['Friend', false, 'server', 'share-token'],
      ['Phone', true, 'client,player', 'phone-token'],
    ], format)
    t.same(list[0]!.connections.map((c) => c.uri), ['http://192.168.1.10:32400', 'https://remote.example:32400', 'https://relay.example:8443'], `${format}: local → remote → relay`)
    t.same(list[0]!.connections[0], { uri: 'http://192.168.1.10:32400', protocol: 'http', address: '192.168.1.10', port: 32400, local: true, relay: false })
  }
})

t.test('claim token', async (t) => {
  const { sim, tv } = await setup(t)
  const claim = await tv.claimToken(sim.accountToken)
  t.match(claim, /^claim-/)
  t.same(sim.claimTokens, [claim])
  t.match(await rejection(tv.claimToken('nope')), { status: 401 })
})

t.test('stable headers on every call; tokens only in headers', async (t) => {
  const { sim, tv } = await setup(t, { resources: [LIVING_ROOM] }, 'stable-id')
  const pin = await tv.createPin()
  await tv.checkPin(pin.id)
  await tv.user(sim.accountToken)
  await tv.ping(sim.accountToken)
  await tv.resources(sim.accountToken)
  await tv.claimToken(sim.accountToken)
  t.equal(sim.requests.length, 6)
  for (const r of sim.requests) {
    t.match(r, { clientIdentifier: 'stable-id', product: 'plex-token-broker', version: '0.1.0', accept: 'application/json' }, r.url)
    t.notOk(r.url.includes(sim.accountToken), `no token in ${r.url}`)
  }
  t.same(sim.requests.map((r) => r.hasToken), [false, false, true, true, true, true])
})

t.test('an error body without an envelope still gives a status', async (t) => {
  const html = createServer((_req, res) => {
    res.statusCode = 502
    res.setHeader('content-type', 'text/html')
    res.end('<html><body>Bad gateway</body></html>')
  })
  await new Promise<void>((resolve) => html.listen(0, '127.0.0.1', resolve))
  t.teardown(() => html.close())
  const tv = new PlexTv({ baseUrl: `http://127.0.0.1:${(html.address() as AddressInfo).port}/`, clientIdentifier: 'x' })
  t.teardown(() => tv.close())
  const err = await rejection(tv.createPin())
  t.match(err, { status: 502, code: undefined })
  t.equal(err.message, 'plex.tv answered POST /api/v2/pins with 502')
  t.equal(await tv.checkAccountToken('x'), 'unknown')
})

t.test('a plex.tv answer over 1 MiB is refused without reading it to the end', async (t) => {
  let written = 0
  let hungUp: Promise<void> | undefined
  let status = 200
  const server = createServer((_req, res) => {
    written = 0
    hungUp = new Promise<void>((resolve) => res.once('close', () => resolve()))
    res.writeHead(status, { 'content-type': 'application/json' })
    res.write('{"user":{"id":1,"username":"')
    const chunk = Buffer.alloc(64 * 1024, 'a')
    const pump = (): void => {
      while (written < 64 * 1024 * 1024 && !res.destroyed) {
        written += chunk.length
        if (!res.write(chunk)) { res.once('drain', pump); return }
      }
      if (!res.destroyed) res.end('"}}')
    }
    pump()
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const tv = new PlexTv({ baseUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, clientIdentifier: 'test-client', timeoutMs: 10_000 })
  t.teardown(async () => {
    await tv.close()
    await new Promise<void>((resolve) => { server.close(() => resolve()); server.closeAllConnections() })
  })
  const err = await rejection(tv.user('account-token-1234'))
  t.type(err, PlexTvError)
  t.match(err, { status: 502, message: /over 1048576 bytes/ })
  t.notOk(err.message.includes('account-token-1234'))
  await hungUp
  t.ok(written < 16 * 1024 * 1024, 'the connection was dropped early')
  // An oversized error answer keeps its status: a 401 still means the token is invalid.
  status = 401
  t.equal(await tv.checkAccountToken('account-token-1234'), 'invalid')
})
