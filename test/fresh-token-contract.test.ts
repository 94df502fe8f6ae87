import t from 'tap'
import { randomUUID } from 'node:crypto'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Readable } from 'node:stream'
import { request } from 'undici'
import { sendWithFreshToken } from '../src/broker/fresh-token-retry.ts'
import type { PmsSimulator } from '../src/sim/pms-sim.ts'
import { listeningBroker, type ListeningBroker, source } from './client-helper.ts'
import { startSim, type T } from './helper.ts'

/**
 * The contract of "PMS answered 401 → report → fresh token → retry once" (docs/architecture.md,
 * *A 401 from PMS*) exists twice: on the server (src/broker/fresh-token-retry.ts, used by the
 * proxy) and, by copy, in the client library's `fetchPms` (which may not import server code).
 * One table of scenarios, run against both, keeps the copies from drifting apart.
 */

interface Scenario {
  name: string
  /** PMS forgets the token before the call (a restart, a sign-out). */
  kill: boolean
  /** Where the call goes: the simulator, or a stand-in that answers 401 whatever the token. */
  target: 'pms' | 'always401'
  /** A GET, or a POST whose body is a stream (sent once, cannot be replayed). */
  request: 'get' | 'streamed-post'
}

/** What the caller and PMS saw. */
interface Observed {
  /** The status the caller gets. */
  status: number
  /** How often the call was sent. */
  sends: number
  /** How often the broker checked the token at PMS (a report). */
  checks: number
  /** Whether the next call uses another token. */
  replaced: boolean
}

const TABLE: Array<Scenario & { expect: Observed }> = [
  { name: 'a live token', kill: false, target: 'pms', request: 'get', expect: { status: 200, sends: 1, checks: 0, replaced: false } },
  { name: 'a killed token, a GET', kill: true, target: 'pms', request: 'get', expect: { status: 200, sends: 2, checks: 1, replaced: true } },
  { name: 'a killed token, a streamed body', kill: true, target: 'pms', request: 'streamed-post', expect: { status: 401, sends: 1, checks: 1, replaced: true } },
  { name: 'a 401 for a token PMS accepts', kill: false, target: 'always401', request: 'get', expect: { status: 401, sends: 1, checks: 1, replaced: false } },
  { name: 'the fresh token refused too', kill: true, target: 'always401', request: 'get', expect: { status: 401, sends: 2, checks: 1, replaced: true } },
]

const PATH = '/library/sections'

interface Rig { sim: PmsSimulator, b: ListeningBroker, gateUrl: string, gateSeen: () => number, reset: () => void }

async function rig (t: T): Promise<Rig> {
  const sim = await startSim(t)
  const b = await listeningBroker(t, sim)
  let seen = 0
  const gate = createServer((req, res) => {
    seen++
    req.resume()
    res.writeHead(401).end()
  })
  await new Promise<void>((resolve) => gate.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => { gate.close(() => resolve()); gate.closeAllConnections() }))
  return {
    sim,
    b,
    gateUrl: `http://127.0.0.1:${(gate.address() as AddressInfo).port}`,
    gateSeen: () => seen,
    reset: () => { sim.resetCounters(); seen = 0 },
  }
}

function observe (r: Rig, sc: Scenario, status: number, replaced: boolean): Observed {
  return {
    status,
    sends: sc.target === 'pms' ? r.sim.counters.byPath[PATH] ?? 0 : r.gateSeen(),
    checks: r.sim.counters.byPath['/'] ?? 0,
    replaced,
  }
}

const streamedBody = (): Readable => Readable.from([Buffer.from('type=1')])

/** The server's step, with a call sent the way the proxy sends it (the client's token in a header). */
async function serverSide (r: Rig, sc: Scenario): Promise<Observed> {
  const services = r.b.app.broker
  const server = services.servers.get('default')!
  const client = r.b.client.id
  const ctx = { requestId: randomUUID(), ip: '127.0.0.1' }
  const first = await services.issuer.issue(client, server, ctx)
  if (sc.kill) r.sim.killToken(first.token)
  r.reset()
  const url = `${sc.target === 'pms' ? r.sim.url : r.gateUrl}${PATH}`
  const out = await sendWithFreshToken(services.rejection, { client, server, ctx, replayable: sc.request === 'get' }, first, async (token) => {
    const res = await request(url, {
      method: sc.request === 'get' ? 'GET' : 'POST',
      headers: { 'x-plex-token': token.token },
      body: sc.request === 'get' ? undefined : streamedBody(),
    })
    await res.body.dump()
    return res.statusCode
  }, (status) => status)
  const seen = observe(r, sc, out.answer, false)
  const next = await services.issuer.issue(client, server, ctx)
  return { ...seen, replaced: next.tokenId !== first.tokenId }
}

/** The client library's `fetchPms`. */
async function librarySide (t: T, r: Rig, sc: Scenario): Promise<Observed> {
  const s = source(t, r.b, { stream: false, pmsUrl: sc.target === 'pms' ? r.sim.url : r.gateUrl })
  const first = await s.current()
  if (sc.kill) r.sim.killToken(first.token)
  r.reset()
  const res = await s.fetchPms(PATH, sc.request === 'get' ? {} : { method: 'POST', body: streamedBody(), duplex: 'half' })
  await res.arrayBuffer()
  const seen = observe(r, sc, res.status, false)
  const next = await s.current()
  await s.close()
  return { ...seen, replaced: next.tokenId !== first.tokenId }
}

t.test('the server-side step and the client library keep the same 401 contract', async (t) => {
  const r = await rig(t)
  for (const sc of TABLE) {
    t.same(await serverSide(r, sc), sc.expect, `server: ${sc.name}`)
    t.same(await librarySide(t, r, sc), sc.expect, `library: ${sc.name}`)
  }
})
