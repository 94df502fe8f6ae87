import t from 'tap'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { PlexBadResponseError, PlexClient, PlexNotFoundError, PlexRejectedError, PlexUnavailableError } from '../src/plex/client.ts'
import type { ServerConfig } from '../src/config/index.ts'
import type { T } from './helper.ts'

const ADMIN = 'fixture-admin-token-1234'

/** A PMS stand-in answering whatever the test says, recording what it saw. */
async function fixture (t: T, answer: (req: IncomingMessage, res: ServerResponse) => void) {
  const seen: Array<{ url: string, headers: IncomingMessage['headers'] }> = []
  let inFlight = 0
  let maxInFlight = 0
  const server = createServer((req, res) => {
    seen.push({ url: req.url ?? '', headers: req.headers })
    inFlight++
    maxInFlight = Math.max(maxInFlight, inFlight)
    res.on('close', () => { inFlight-- })
    answer(req, res)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => { server.close(() => resolve()); server.closeAllConnections() }))
  const cfg: ServerConfig = { name: 'fx', url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, adminToken: ADMIN, tokenSource: 'token' }
  return { cfg, seen, maxInFlight: () => maxInFlight }
}

function client (t: T, over: Partial<ConstructorParameters<typeof PlexClient>[0]> = {}): PlexClient {
  const c = new PlexClient({ clientIdentifier: 'ptb-test', timeoutMs: 500, concurrency: 2, ...over })
  t.teardown(() => c.close())
  return c
}

t.test('mints from JSON and from XML whatever the content type says; identity headers; token only in a header', async (t) => {
  const bodies = [
    ['application/json', '{"MediaContainer":{"size":0,"token":"transient-json"}}'],
    ['text/xml', '<?xml version="1.0" encoding="UTF-8"?>\n<MediaContainer size="0" token="transient-xml"></MediaContainer>'],
    ['application/json', '<MediaContainer size="0" token="transient-lying-header"/>'],
  ]
  let i = 0
  const fx = await fixture(t, (_req, res) => { const [type = '', body] = bodies[i++]!; res.setHeader('content-type', type); res.end(body) })
  const c = client(t)
  t.equal(await c.mintTransient(fx.cfg), 'transient-json')
  t.equal(await c.mintTransient(fx.cfg), 'transient-xml')
  t.equal(await c.mintTransient(fx.cfg), 'transient-lying-header')
  const h = fx.seen[0]!.headers
  t.equal(h['x-plex-token'], ADMIN)
  t.equal(h['x-plex-client-identifier'], 'ptb-test')
  t.equal(h['x-plex-product'], 'plex-token-broker')
  t.equal(h.accept, 'application/json')
  t.equal(fx.seen[0]!.url, '/security/token?type=delegation&scope=all')
  t.notOk(fx.seen.some((s) => s.url.includes(ADMIN)), 'never in the URL')
})

t.test('status mapping, and no error message carries a token', async (t) => {
  const answers: Array<[number, string, Record<string, string>?]> = [
    [401, '<html><head><title>Unauthorized</title></head><body><h1>401 Unauthorized</h1></body></html>'],
    [403, 'Forbidden'],
    [503, 'busy', { 'retry-after': '7' }],
    [500, 'oops'],
    [200, 'not xml or json'],
    [200, '{"MediaContainer":{"size":0}}'],
    [404, 'nope'],
  ]
  let i = 0
  const fx = await fixture(t, (_req, res) => { const [s, b, h] = answers[i++]!; res.writeHead(s, h); res.end(b) })
  const c = client(t, { breaker: { failureThreshold: 100 } })
  const errors: unknown[] = []
  for (let k = 0; k < answers.length; k++) errors.push(await c.mintTransient(fx.cfg).catch((e: unknown) => e))
  t.ok(errors[0] instanceof PlexRejectedError && errors[1] instanceof PlexRejectedError, '401 and 403: rejected')
  t.ok(errors[2] instanceof PlexUnavailableError && (errors[2] as PlexUnavailableError).retryAfterSeconds === 7, '503 with Retry-After')
  t.ok(errors[3] instanceof PlexUnavailableError, '500: unavailable')
  t.ok(errors[4] instanceof PlexBadResponseError && errors[5] instanceof PlexBadResponseError, 'garbage and a missing token: bad response')
  t.ok(errors[6] instanceof PlexNotFoundError, '404: not found')
  t.notOk(errors.some((e) => String((e as Error).message).includes(ADMIN)))
})

t.test('timeouts and refused connections are unavailable', async (t) => {
  const fx = await fixture(t, () => { /* never answers */ })
  const c = client(t, { timeoutMs: 200 })
  const started = Date.now()
  t.ok(await c.identity(fx.cfg).catch((e: unknown) => e) instanceof PlexUnavailableError)
  t.ok(Date.now() - started < 1500, 'within the deadline')
  const refused = { ...fx.cfg, url: 'http://127.0.0.1:1' }
  t.ok(await c.identity(refused).catch((e: unknown) => e) instanceof PlexUnavailableError)
})

t.test('circuit breaker: opens after repeated failures, fails fast without calling PMS, half-open trial closes it', async (t) => {
  let failing = true
  const fx = await fixture(t, (_req, res) => {
    if (failing) { res.writeHead(500); res.end(); return }
    res.setHeader('content-type', 'application/json')
    res.end('{"MediaContainer":{"size":0,"claimed":true,"machineIdentifier":"m","version":"1.43.0"}}')
  })
  const c = client(t, { breaker: { failureThreshold: 3, openMs: 300 } })
  for (let i = 0; i < 3; i++) await c.checkToken(fx.cfg, 't').catch(() => {})
  t.equal(c.breakerState('fx'), 'open')
  const calls = fx.seen.length
  const fast = await c.checkToken(fx.cfg, 't').catch((e: unknown) => e)
  t.ok(fast instanceof PlexUnavailableError && (fast as PlexUnavailableError).retryAfterSeconds >= 1, 'fails fast with a retry hint')
  t.equal(fx.seen.length, calls, 'PMS was not called while open')
  failing = false
  await new Promise((resolve) => setTimeout(resolve, 350))
  t.equal(c.breakerState('fx'), 'half-open')
  t.equal(await c.checkToken(fx.cfg, 't'), 'valid')
  t.same(await c.identity(fx.cfg), { machineIdentifier: 'm', version: '1.43.0', claimed: true })
  t.equal(c.breakerState('fx'), 'closed', 'a successful trial closes it')
})

t.test('rejections do not open the breaker; the concurrency cap holds', async (t) => {
  const fx = await fixture(t, (_req, res) => { setTimeout(() => { res.writeHead(401); res.end() }, 30) })
  const c = client(t, { concurrency: 2, breaker: { failureThreshold: 2 } })
  const results = await Promise.all(Array.from({ length: 10 }, () => c.checkToken(fx.cfg, 'some-token')))
  t.same(new Set(results), new Set(['rejected']))
  t.equal(c.breakerState('fx'), 'closed', '401s are answers, not outages')
  t.ok(fx.maxInFlight() <= 2, `at most 2 requests in flight (${fx.maxInFlight()})`)
})

t.test('source resources: XML with one device, connections ordered local → remote → relay', async (t) => {
  const fx = await fixture(t, (_req, res) => {
    res.setHeader('content-type', 'text/xml')
    res.end(`<MediaContainer size="1"><Device name="Shared" clientIdentifier="abc" accessToken="transient-src">
      <Connection protocol="https" address="1.1.1.1" port="8443" local="0" relay="1" uri="https://relay"/>
      <Connection protocol="https" address="2.2.2.2" port="32400" local="0" uri="https://remote"/>
      <Connection protocol="http" address="10.0.0.2" port="32400" local="1" uri="http://local"/>
    </Device></MediaContainer>`)
  })
  const r = await client(t).sourceResources(fx.cfg, ADMIN, 'server://abc')
  t.same(r.connections.map((x) => x.uri), ['http://local', 'https://remote', 'https://relay'])
  t.same(r.connections[0], { uri: 'http://local', protocol: 'http', address: '10.0.0.2', port: 32400, local: true, relay: false })
  t.match(r, { name: 'Shared', clientIdentifier: 'abc', token: 'transient-src', source: 'server://abc' })
  t.equal(fx.seen[0]!.url, '/security/resources?source=server%3A%2F%2Fabc')
})

t.test('event stream: open, events, close when PMS drops it', async (t) => {
  let drop: (() => void) | undefined
  const fx = await fixture(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' })
    res.write('event: ping\ndata: {}\n\n')
    drop = () => res.destroy()
  })
  const events: string[] = []
  const closed = new Promise<string>((resolve) => {
    client(t).watchEvents(fx.cfg, { signal: new AbortController().signal, onOpen: () => events.push('open'), onEvent: (e) => { events.push(e); drop?.() }, onClose: resolve })
  })
  t.type(await closed, 'string')
  t.same(events, ['open', 'ping'])
  t.equal(fx.seen[0]!.headers['x-plex-token'], ADMIN)
})

t.test('the /identity probe bypasses an open breaker and its success closes it', async (t) => {
  let up = false
  const fx = await fixture(t, (_req, res) => {
    if (!up) { res.writeHead(503); res.end(); return }
    res.setHeader('content-type', 'application/json')
    res.end('{"MediaContainer":{"machineIdentifier":"m","version":"1.43.0"}}')
  })
  const c = client(t, { breaker: { failureThreshold: 2, openMs: 60_000 } })
  for (let i = 0; i < 2; i++) await c.mintTransient(fx.cfg).catch(() => {})
  t.equal(c.breakerState('fx'), 'open')
  up = true
  t.match(await c.identity(fx.cfg), { machineIdentifier: 'm' }, 'the probe still reaches PMS')
  t.equal(c.breakerState('fx'), 'closed', 'PMS answered: mints may go again without waiting a minute')
})

/** Writes `total` bytes of a never-ending-looking body in 64 KiB chunks; records how much went out and whether the peer hung up. */
function flood (res: ServerResponse, total: number, opts: { contentLength?: boolean, type?: string } = {}): { written: () => number, hungUp: Promise<void> } {
  let written = 0
  const hungUp = new Promise<void>((resolve) => res.once('close', () => resolve()))
  res.writeHead(200, { 'content-type': opts.type ?? 'application/json', ...(opts.contentLength === true ? { 'content-length': String(total) } : {}) })
  res.write('{"MediaContainer":{"token":"')
  const chunk = Buffer.alloc(64 * 1024, 'a')
  const pump = (): void => {
    while (written < total && !res.destroyed) {
      written += chunk.length
      if (!res.write(chunk)) { res.once('drain', pump); return }
    }
    if (!res.destroyed) res.end('"}}')
  }
  pump()
  return { written: () => written, hungUp }
}

t.test('an answer over 1 MiB is a bad response, refused without reading it to the end', async (t) => {
  const MiB = 1024 * 1024
  for (const contentLength of [true, false]) {
    let sent: ReturnType<typeof flood> | undefined
    // 64 MiB: far more than any socket buffer, so reading it all would show.
    const fx = await fixture(t, (_req, res) => { sent = flood(res, 64 * MiB, { contentLength }) })
    const started = Date.now()
    const err = await client(t, { timeoutMs: 10_000 }).mintTransient(fx.cfg).catch((e: unknown) => e)
    t.type(err, PlexBadResponseError, `${contentLength ? 'declared' : 'chunked'}: PlexBadResponseError`)
    t.match((err as Error).message, /over 1048576 bytes/)
    t.notOk((err as Error).message.includes(ADMIN))
    t.ok(Date.now() - started < 5000, 'fails at once, not at the deadline')
    await sent!.hungUp
    t.ok(sent!.written() < 16 * MiB, `${contentLength ? 'declared' : 'chunked'}: the connection was dropped early (${Math.round(sent!.written() / MiB)} MiB of 64 sent)`)
  }
  // Just under the cap still works.
  const fx = await fixture(t, (_req, res) => { res.setHeader('content-type', 'application/json'); res.end(`{"MediaContainer":{"token":"t","pad":"${'x'.repeat(MiB - 100)}"}}`) })
  t.equal(await client(t).mintTransient(fx.cfg), 't')
})

t.test('an event stream that never ends an event is dropped at 1 MiB instead of growing', async (t) => {
  let sent: { written: () => number, hungUp: Promise<void> } | undefined
  const fx = await fixture(t, (_req, res) => {
    let written = 0
    const hungUp = new Promise<void>((resolve) => res.once('close', () => resolve()))
    res.writeHead(200, { 'content-type': 'text/event-stream' })
    res.write('event: ping\ndata: {}\n\n')
    // One endless line: no newline, ever.
    const timer = setInterval(() => {
      if (res.destroyed) { clearInterval(timer); return }
      res.write(Buffer.alloc(64 * 1024, 'x'))
      written += 64 * 1024
    }, 2)
    sent = { written: () => written, hungUp }
  })
  const events: string[] = []
  const reason = await new Promise<string>((resolve) => {
    client(t).watchEvents(fx.cfg, { signal: new AbortController().signal, onOpen: () => events.push('open'), onEvent: (e) => events.push(e), onClose: resolve })
  })
  t.same(events, ['open', 'ping'], 'events before the endless line were read')
  t.match(reason, /event over 1048576 bytes/)
  await sent!.hungUp
  t.ok(sent!.written() < 4 * 1024 * 1024, 'the stream was dropped soon after the cap')
})
