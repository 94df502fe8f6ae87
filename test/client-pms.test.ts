import t from 'tap'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { PmsRedirectError, PmsUnavailableError } from '../src/client/index.ts'
import { startSim, type T, until } from './helper.ts'
import { captureLogger, listeningBroker, source } from './client-helper.ts'

interface Seen { method: string, path: string, token: string | undefined, body: string }

/** A real HTTP server on a loopback port that records every request it gets. */
async function recorder (t: T, handle: (req: IncomingMessage, body: string, res: ServerResponse) => void): Promise<{ server: Server, url: string, seen: Seen[] }> {
  const seen: Seen[] = []
  const server = createServer((req, res) => {
    let body = ''
    req.setEncoding('utf8')
    req.on('data', (c: string) => { body += c })
    req.on('end', () => {
      seen.push({ method: req.method!, path: req.url!, token: req.headers['x-plex-token'] as string | undefined, body })
      handle(req, body, res)
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }))
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen }
}

t.test('fetchPms never sends the token to another origin on a redirect; same-origin redirects are followed', async (t) => {
  const sim = await startSim(t)
  const b = await listeningBroker(t, sim)
  // Another host (another port is another origin) that would collect whatever token it is sent.
  const other = await recorder(t, (_req, _body, res) => { res.writeHead(200).end('not PMS') })
  const pms = await recorder(t, (req, body, res) => {
    const path = req.url!
    if (path === '/library/sections') res.writeHead(302, { location: `${other.url}/steal` }).end()
    else if (path === '/moved') res.writeHead(301, { location: '/library/final' }).end()
    else if (path === '/absolute') res.writeHead(302, { location: `${pms.url}/library/final` }).end()
    else if (path === '/see-other') res.writeHead(303, { location: '/library/final' }).end()
    else if (path === '/temporary') res.writeHead(307, { location: '/echo' }).end()
    else if (path === '/loop') res.writeHead(302, { location: '/loop' }).end()
    else if (path === '/echo') res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ method: req.method, body }))
    else res.writeHead(200, { 'content-type': 'application/json' }).end('{"final":true}')
  })
  const s = source(t, b, { stream: false, pmsUrl: pms.url })
  const token = await s.token()

  // The 302 to another origin: refused, with a typed error; the other host gets nothing.
  const err = await s.fetchPms('/library/sections').then(() => undefined, (e: unknown) => e)
  t.same(other.seen.map((r) => r.token), [], 'the other origin received no request at all, so no X-Plex-Token')
  t.ok(err instanceof PmsRedirectError, 'a PmsRedirectError')
  t.match(err, { code: 'PMS_REDIRECT_REFUSED', statusCode: 302, location: other.url })
  t.notOk(String((err as Error | undefined)?.message).includes(token), 'no token in the message')
  // redirect: 'error' refuses even a same-origin redirect, as fetch does.
  await t.rejects(s.fetchPms('/moved', { redirect: 'error' }), { name: 'PmsRedirectError', code: 'PMS_REDIRECT_REFUSED' })
  // redirect: 'manual' hands the redirect itself to the caller.
  const manual = await s.fetchPms('/library/sections', { redirect: 'manual' })
  t.equal(manual.status, 302)
  t.equal(manual.headers.get('location'), `${other.url}/steal`)
  t.same(other.seen, [], 'still nothing sent there')

  // Same origin, relative or absolute: followed, with the token.
  pms.seen.length = 0
  const moved = await s.fetchPms('/moved')
  t.equal(moved.status, 200)
  t.same(await moved.json(), { final: true })
  t.equal((await s.fetchPms('/absolute')).status, 200)
  t.same(pms.seen.map((r) => [r.path, r.token]), [['/moved', token], ['/library/final', token], ['/absolute', token], ['/library/final', token]],
    'each hop on PMS carries the token')

  // A 303 after a POST goes on as a GET without the body; a 307 resends the POST and its body.
  pms.seen.length = 0
  t.equal((await s.fetchPms('/see-other', { method: 'POST', body: 'a=1', headers: { 'content-type': 'application/x-www-form-urlencoded' } })).status, 200)
  t.same(pms.seen.map((r) => [r.method, r.path, r.body]), [['POST', '/see-other', 'a=1'], ['GET', '/library/final', '']])
  const temp = await s.fetchPms('/temporary', { method: 'POST', body: 'b=2' })
  t.same(await temp.json(), { method: 'POST', body: 'b=2' })

  // A loop ends at the bound.
  pms.seen.length = 0
  await t.rejects(s.fetchPms('/loop'), { name: 'PmsRedirectError', code: 'PMS_TOO_MANY_REDIRECTS' })
  t.equal(pms.seen.length, 6, 'the call and five redirects followed')
})

t.test('PMS down: fetchPms retries within pmsRetries, then throws PmsUnavailableError with the cause', async (t) => {
  const sim = await startSim(t)
  const b = await listeningBroker(t, sim)
  // A port nothing listens on: a PMS that is down.
  const gone = createServer()
  await new Promise<void>((resolve) => gone.listen(0, '127.0.0.1', resolve))
  const deadUrl = `http://127.0.0.1:${(gone.address() as AddressInfo).port}`
  await new Promise<void>((resolve) => gone.close(() => resolve()))

  const s = source(t, b, { stream: false, pmsUrl: deadUrl, pmsRetries: 2, maxBackoffMs: 50 })
  const token = await s.token()
  const err = await s.fetchPms('/library/sections').then(() => undefined, (e: unknown) => e)
  t.ok(err instanceof PmsUnavailableError, `a PmsUnavailableError, not a bare TypeError (${String(err)})`)
  t.match(err, { name: 'PmsUnavailableError', code: 'PMS_UNAVAILABLE', attempts: 3, cause: { code: 'ECONNREFUSED' } })
  t.match((err as Error).message, /did not answer: ECONNREFUSED/)
  t.notOk(`${(err as Error).message}${(err as Error).stack}`.includes(token), 'no token in the error')

  // A refused connection means nothing reached PMS: even a POST goes again. pmsRetries 0: once only.
  const once = source(t, b, { stream: false, pmsUrl: deadUrl, pmsRetries: 0 })
  await t.rejects(once.fetchPms('/playQueues', { method: 'POST', body: 'x' }), { code: 'PMS_UNAVAILABLE', attempts: 1 })
  await t.rejects(s.fetchPms('/playQueues', { method: 'POST', body: 'x' }), { code: 'PMS_UNAVAILABLE', attempts: 3 })

  // An abort is the caller's, not PMS's: passed through as it is.
  await t.rejects(s.fetchPms('/', { signal: AbortSignal.abort() }), { name: 'AbortError' })
})

t.test('a call made while PMS is down succeeds once PMS is back within the retries', async (t) => {
  const sim = await startSim(t)
  const b = await listeningBroker(t, sim)
  const log = captureLogger()
  const s = source(t, b, { stream: false, pmsUrl: sim.url, pmsRetries: 50, maxBackoffMs: 200, logger: log })
  const token = await s.token()
  await sim.setDown(true)
  const call = s.fetchPms('/library/sections', { headers: { accept: 'application/json' } })
  t.ok(await until(10_000, async () => log.lines.some((l) => l.includes('PMS did not answer'))), 'a refused attempt, retried')
  await sim.setDown(false)
  const res = await call
  t.equal(res.status, 200, 'answered once PMS is back, without the caller seeing the outage')
  await res.arrayBuffer()
  t.match(log.lines.find((l) => l.includes('PMS did not answer')), /"code":"ECONNREFUSED"/)
  t.notOk(log.lines.join('\n').includes(token), 'no token in the log')
})
