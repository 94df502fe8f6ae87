import t from 'tap'
import { randomBytes } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http'
import { connect } from 'node:net'
import type { AddressInfo } from 'node:net'
import { Redis } from 'ioredis'
import type { FastifyInstance } from 'fastify'
import { buildApp } from '../src/app.ts'
import type { Config } from '../src/config/index.ts'
import {
  buildTestApp, deleteKeys, LogCapture, makeClient, monitorRedis, REDIS_URL, serverFor, startSim, testConfig, type TestClient, uniquePrefix, until,
} from './helper.ts'

// The push channel (GET /v1/tokens/stream) against real Redis, real BullMQ workers, the PMS
// simulator and, where it matters, two broker instances on one prefix.

interface SseEvent { id?: string, event: string, data: any }

/** A minimal SSE client on node:http: collects events, comments and the retry advice. */
class SseClient {
  status = 0
  headers: IncomingHttpHeaders = {}
  body = ''
  retry: number | undefined
  readonly events: SseEvent[] = []
  readonly comments: string[] = []
  ended = false
  readonly #destroy: () => void

  constructor (destroy: () => void) {
    this.#destroy = destroy
  }

  /** Waits for the first event at or after `from` that matches; fails the wait after `ms`. */
  async next (match: (e: SseEvent) => boolean, from = 0, ms = 20_000): Promise<SseEvent | undefined> {
    let found: SseEvent | undefined
    await until(ms, async () => {
      found = this.events.slice(from).find(match)
      return found !== undefined || this.ended
    })
    return found ?? this.events.slice(from).find(match)
  }

  async closed (ms = 10_000): Promise<boolean> {
    return await until(ms, async () => this.ended)
  }

  close (): void { this.#destroy() }
}

async function openStream (base: string, c: TestClient, opts: { server?: string, lastEventId?: string } = {}): Promise<SseClient> {
  const url = new URL(`/v1/tokens/stream?server=${opts.server ?? 'default'}`, base)
  return await new Promise((resolve, reject) => {
    const req = httpRequest(url, {
      agent: false,
      headers: { ...c.auth, accept: 'text/event-stream', ...(opts.lastEventId === undefined ? {} : { 'last-event-id': opts.lastEventId }) },
    })
    const client = new SseClient(() => req.destroy())
    req.on('error', () => { client.ended = true })
    req.on('response', (res) => {
      client.status = res.statusCode ?? 0
      client.headers = res.headers
      let buffered = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => {
        if (client.status !== 200) {
          client.body += chunk
          return
        }
        buffered += chunk
        let end: number
        while ((end = buffered.indexOf('\n\n')) >= 0) {
          const block = buffered.slice(0, end)
          buffered = buffered.slice(end + 2)
          const e: Partial<SseEvent> & { data?: string } = {}
          for (const line of block.split('\n')) {
            if (line.startsWith(':')) client.comments.push(line.slice(1).trim())
            else if (line.startsWith('retry: ')) client.retry = Number(line.slice(7))
            else if (line.startsWith('id: ')) e.id = line.slice(4)
            else if (line.startsWith('event: ')) e.event = line.slice(7)
            else if (line.startsWith('data: ')) e.data = line.slice(6)
          }
          if (e.event !== undefined) client.events.push({ id: e.id, event: e.event, data: JSON.parse(e.data ?? 'null') })
        }
      })
      res.on('close', () => { client.ended = true })
      if (client.status !== 200) res.on('end', () => resolve(client))
      else resolve(client)
    })
    req.end()
  })
}

async function listen (app: FastifyInstance): Promise<string> {
  await app.listen({ host: '127.0.0.1', port: 0 })
  return `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
}

async function issue (app: FastifyInstance, c: TestClient, extra: Record<string, unknown> = {}) {
  return (await app.inject({ method: 'POST', url: '/v1/tokens', headers: c.auth, payload: { server: 'default', ...extra } })).json()
}

async function metric (app: FastifyInstance, line: RegExp): Promise<number | undefined> {
  const text = (await app.inject({ method: 'GET', url: '/metrics' })).body
  for (const l of text.split('\n')) {
    const m = line.exec(l)
    if (m !== null) return Number(l.slice(l.lastIndexOf(' ') + 1))
  }
  return undefined
}

/** Every entry of the push change log, as its raw field text. */
async function pushEntries (prefix: string): Promise<string[]> {
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 })
  try {
    return (await redis.xrange(`${prefix}:push`, '-', '+')).map(([id, fields]) => `${id} ${fields.join(' ')}`)
  } finally {
    redis.disconnect()
  }
}

// Short lifetimes, real workers and probes; rotation left to the tests (a long renew age).
const FAST = { tokenLifetimeMs: 60_000, tokenRenewAfterMs: 50_000, probeIntervalMs: 500 }
const OPS = ['token:revoke', 'audit:read', 'server:read', 'server:rotate'] as const

t.test('the first event is the current token, with the SSE headers, retry advice and audit via stream', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('streamer')
  const ops = makeClient('ops', { scopes: [...OPS] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('stream-first'), [serverFor(sim)], [a, ops]), { defaultMetrics: false })
  const base = await listen(app)
  const s = await openStream(base, a)
  t.teardown(() => s.close())
  t.equal(s.status, 200)
  t.equal(s.headers['content-type'], 'text/event-stream; charset=utf-8')
  t.equal(s.headers['cache-control'], 'no-store')
  t.equal(s.headers['x-accel-buffering'], 'no')
  t.ok(s.headers['x-request-id'], 'the request id, as on every answer')
  const first = await s.next((e) => e.event === 'token')
  t.equal(s.retry, 2000, 'retry advice first')
  t.match(first?.id, /^\d+-\d+$/, 'the event has an id')
  t.equal(first?.data.reason, 'current')
  t.equal(sim.counters.mints, 1, 'the stream minted the token')
  const posted = await issue(app, a)
  t.equal(posted.tokenId, first?.data.tokenId, 'the same token POST /v1/tokens answers')
  t.same(Object.keys(first?.data).sort(), [...Object.keys(posted), 'reason'].sort(), 'the shape of the POST answer, plus reason')
  t.equal(first?.data.token, posted.token)
  t.equal(sim.counters.mints, 1, 'minted once')

  const audit = (await app.inject({ method: 'GET', url: '/v1/audit?action=token.issue', headers: ops.auth })).json().events
  t.ok(audit.some((e: { detail: { via?: string } }) => e.detail.via === 'stream'), 'the stream\'s hand-out is audited with via: stream')
  t.ok(audit.some((e: { detail: { via?: string } }) => e.detail.via === undefined), 'POST stays without via')
  t.equal(await metric(app, /^ptb_streams_open /), 1, 'ptb_streams_open')
  t.equal(await metric(app, /^ptb_stream_events_total\{event="token"\}/), 1, 'one token event counted')

  const denied = await openStream(base, makeClient('stranger'))
  t.equal(denied.status, 401, 'an unknown secret is an ordinary JSON error')
  t.same(Object.keys(JSON.parse(denied.body)).sort(), ['code', 'error', 'message', 'requestId', 'statusCode'])
  const unknown = await openStream(base, a, { server: 'nope' })
  t.equal(unknown.status, 404)
  const bad = await openStream(base, a, { server: '..%2F' })
  t.equal(bad.status, 400)
  const head = await app.inject({ method: 'HEAD', url: '/v1/tokens/stream?server=default', headers: a.auth })
  t.not(head.statusCode, 200, 'no HEAD route: it would hold a stream nobody reads')
  s.close()
  t.ok(await until(5000, async () => app.broker.push.size === 0), 'a client that leaves is unregistered')
  t.equal(await metric(app, /^ptb_streams_open /), 0)
})

t.test('two instances: a stream on A gets the token B rotated, a restart reaches every stream, and no token reaches the logs or the change log', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('alpha')
  const b = makeClient('beta')
  const ops = makeClient('ops', { scopes: [...OPS] })
  const prefix = uniquePrefix('stream-two')
  const cfg = testConfig(prefix, [serverFor(sim)], [a, b, ops], FAST)
  // A answers HTTP only; B runs the workers (rotations, probes, re-mints).
  const one = await buildTestApp(t, { ...cfg, role: 'api' })
  const two = await buildTestApp(t, { ...cfg, role: 'all' })
  await Promise.all([one.ready(), two.ready()])
  const [baseA, baseB] = [await listen(one), await listen(two)]
  t.ok(await until(10_000, async () => (await two.broker.states.get('default')).state === 'up'), 'first probe done')

  const sa = await openStream(baseA, a)
  const sb = await openStream(baseB, b)
  t.teardown(() => { sa.close(); sb.close() })
  const firstA = await sa.next((e) => e.event === 'token')
  const firstB = await sb.next((e) => e.event === 'token')
  t.ok(firstA !== undefined && firstB !== undefined, 'both streams opened')
  const seen = new Set([firstA?.data.token, firstB?.data.token])

  // Rotation asked on B, run by B's worker: the stream on A hears of it.
  const mark = sa.events.length
  const rotate = await two.inject({ method: 'POST', url: '/v1/servers/default/rotate', headers: ops.auth })
  t.equal(rotate.statusCode, 202)
  const rotated = await sa.next((e) => e.event === 'token' && e.data.tokenId !== firstA?.data.tokenId, mark)
  t.equal(rotated?.data.reason, 'rotated', 'A\'s stream got the rotated token')
  t.ok(rotated !== undefined && rotated.id! > firstA!.id!, 'ids increase')
  t.equal((await issue(one, a)).tokenId, rotated?.data.tokenId, 'and it is the current one')
  seen.add(rotated?.data.token)
  const bRotated = await sb.next((e) => e.event === 'token' && e.data.tokenId !== firstB?.data.tokenId)
  seen.add(bRotated?.data.token)

  // PMS restarts: every streaming client gets a fresh token without asking.
  const posts = sim.counters.byPath['/security/token'] ?? 0
  const [ma, mb] = [sa.events.length, sb.events.length]
  const heldA = rotated?.data.tokenId
  const heldB = bRotated?.data.tokenId
  await sim.restart()
  const revokedA = await sa.next((e) => e.event === 'revoked', ma, 30_000)
  t.equal(revokedA?.data.tokenId, heldA, 'A: the token it held is revoked')
  t.equal(revokedA?.data.reason, 'server_restart')
  t.equal(revokedA?.data.next, 'pushed', 'the replacement comes by itself')
  const freshA = await sa.next((e) => e.event === 'token', ma, 30_000)
  const freshB = await sb.next((e) => e.event === 'token', mb, 30_000)
  t.equal(freshA?.data.reason, 'reminted')
  t.equal(freshB?.data.reason, 'reminted')
  t.not(freshA?.data.tokenId, heldA)
  t.not(freshB?.data.tokenId, heldB)
  t.ok((sim.counters.byPath['/security/token'] ?? 0) > posts, 'minted anew at PMS')
  t.ok(sim.isTokenValid(freshA?.data.token) && sim.isTokenValid(freshB?.data.token), 'PMS accepts the fresh tokens')
  seen.add(freshA?.data.token)
  seen.add(freshB?.data.token)
  t.same(sa.events.slice(ma).filter((e) => e.event === 'token').length, 1, 'one fresh token, not one per change-log entry')

  // Tokens travel only to their stream: never in a log line or the shared change log.
  const entries = await pushEntries(prefix)
  t.ok(entries.length >= 4, `${entries.length} change-log entries`)
  for (const token of seen) {
    t.ok(typeof token === 'string' && token.length > 10)
    t.notOk(entries.some((e) => e.includes(token)), 'no token in the change log')
    t.notOk(one.logs.text.includes(token) || two.logs.text.includes(token), 'no token in the logs')
  }
  t.ok(entries.every((e) => !/enc|sealed/.test(e)), 'no ciphertext either')
})

t.test('server down and up reach the stream as server events', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('watcher')
  const app = await buildTestApp(t, testConfig(uniquePrefix('stream-srv'), [serverFor(sim)], [a], { ...FAST, role: 'all' }))
  await app.ready()
  const base = await listen(app)
  t.ok(await until(10_000, async () => (await app.broker.states.get('default')).state === 'up'))
  const s = await openStream(base, a)
  t.teardown(() => s.close())
  await s.next((e) => e.event === 'token')
  await sim.setDown(true)
  const down = await s.next((e) => e.event === 'server')
  t.same(down?.data, { server: 'default', up: false })
  const mark = s.events.length
  await sim.setDown(false)
  const up = await s.next((e) => e.event === 'server', mark)
  t.same(up?.data, { server: 'default', up: true })
})

t.test('resume with Last-Event-ID: what was missed, or the current token when the history is gone', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('resumer')
  const ops = makeClient('ops', { scopes: [...OPS] })
  const prefix = uniquePrefix('stream-resume')
  const app = await buildTestApp(t, testConfig(prefix, [serverFor(sim)], [a, ops]), { defaultMetrics: false })
  const base = await listen(app)
  const s1 = await openStream(base, a)
  const first = await s1.next((e) => e.event === 'token')
  s1.close()
  t.ok(await until(5000, async () => app.broker.push.size === 0))

  // While away: its token revoked, then a new one issued (a POST from elsewhere).
  await app.inject({ method: 'POST', url: '/v1/revoke', headers: ops.auth, payload: { tokenId: first?.data.tokenId, reason: 'leaked' } })
  const reissued = await issue(app, a)
  const s2 = await openStream(base, a, { lastEventId: first?.id })
  t.teardown(() => s2.close())
  const revoked = await s2.next((e) => e.event === 'revoked')
  const token = await s2.next((e) => e.event === 'token')
  t.same(revoked?.data, { tokenId: first?.data.tokenId, server: 'default', reason: 'leaked', next: 'ask' }, 'the revocation it missed')
  t.equal(token?.data.tokenId, reissued.tokenId, 'then the current token')
  t.equal(token?.data.reason, 'issued')
  t.ok(s2.events.indexOf(revoked!) < s2.events.indexOf(token!), 'in order')
  t.ok(revoked!.id! > first!.id! && token!.id! > revoked!.id!, 'ids increase past the one resumed from')
  s2.close()

  // Nothing missed: nothing replayed, the stream stays open.
  const s3 = await openStream(base, a, { lastEventId: token?.id })
  t.teardown(() => s3.close())
  t.equal(s3.status, 200)
  await new Promise((resolve) => setTimeout(resolve, 300))
  t.same(s3.events, [], 'no event when nothing changed')
  s3.close()

  // An id that is not one, one from the future, or one whose history was trimmed: the current token.
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 })
  t.teardown(() => redis.disconnect())
  // Keep only the newest entry (the cap does this to a busy log): what came after `revoked` is partly gone.
  await redis.xtrim(`${prefix}:push`, 'MAXLEN', 1)
  for (const id of ['garbage', '99999999999999-0', first!.id!, revoked!.id!]) {
    const s = await openStream(base, a, { lastEventId: id })
    const e = await s.next((x) => x.event === 'token')
    t.equal(e?.data.reason, 'current', `Last-Event-ID ${id}: the current token`)
    t.equal(e?.data.tokenId, reissued.tokenId)
    s.close()
  }
})

t.test('revocation: revoked events; a revocation of all the client\'s tokens ends the stream', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('revokee')
  const ops = makeClient('ops', { scopes: [...OPS] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('stream-revoke'), [serverFor(sim)], [a, ops]), { defaultMetrics: false })
  const base = await listen(app)
  const s = await openStream(base, a)
  t.teardown(() => s.close())
  const first = await s.next((e) => e.event === 'token')
  await app.inject({ method: 'POST', url: '/v1/revoke', headers: ops.auth, payload: { tokenId: first?.data.tokenId, reason: 'one' } })
  const one = await s.next((e) => e.event === 'revoked')
  t.same(one?.data, { tokenId: first?.data.tokenId, server: 'default', reason: 'one', next: 'ask' })
  t.notOk(s.ended, 'one token revoked: the stream stays')
  // The next token comes when the client asks.
  const asked = await issue(app, a)
  const next = await s.next((e) => e.event === 'token' && e.data.tokenId === asked.tokenId)
  t.equal(next?.data.reason, 'issued')
  t.equal(next?.data.token, asked.token)

  const mark = s.events.length
  await app.inject({ method: 'POST', url: '/v1/revoke', headers: ops.auth, payload: { client: 'revokee', reason: 'offboarded' } })
  const all = await s.next((e) => e.event === 'revoked', mark)
  t.same(all?.data, { tokenId: asked.tokenId, server: 'default', reason: 'offboarded', next: 'ask' }, 'the revoked event first')
  t.ok(await s.closed(), 'then the stream ends')
  t.equal(await metric(app, /^ptb_stream_drops_total\{reason="revoked"\}/), 1)
})

t.test('a stream re-mints with the admin token of a reloaded token file, not the one it opened with', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('long-lived')
  const prefix = uniquePrefix('stream-admin')
  const path = join(t.testdir({}), 'plex-token')
  writeFileSync(path, `${sim.adminToken}\n`)
  const server = { ...serverFor(sim), tokenSource: 'tokenFile' as const, tokenPath: path }
  const app = await buildTestApp(t, testConfig(prefix, [server], [a]), { defaultMetrics: false })
  const base = await listen(app)
  const s = await openStream(base, a)
  t.teardown(() => s.close())
  const first = await s.next((e) => e.event === 'token')
  t.ok(first, 'the stream opened with a token')
  // The admin token rotates while the stream is open: PMS accepts only the new one, the file says so.
  const rotated = 'rotated-admin-token-0002'
  sim.setAdminTokens([rotated])
  writeFileSync(path, `${rotated}\n`)
  t.ok(await app.broker.watcher.reload('default'), 'the broker reloaded the token file')
  // Another instance, mid-way through a BROKER_SECRET change, serves this client: its token is one
  // this instance cannot open, so the stream has to mint the client's next token itself.
  const other = await buildTestApp(t, { ...testConfig(prefix, [{ ...serverFor(sim), adminToken: rotated }], [a]), brokerSecret: randomBytes(32) }, { defaultMetrics: false })
  // Its answer may be a 503 "try again": this instance's stream can replace the token it minted
  // before it settles (two secrets undo each other's tokens; that is why all instances change at once).
  const minted = sim.counters.mints
  const elsewhere = await issue(other, a)
  t.ok(await until(5000, async () => sim.counters.mints > minted), 'the other instance minted with the new admin token')
  const next = await s.next((e) => e.event === 'token' && e.data.tokenId !== first?.data.tokenId && e.data.tokenId !== elsewhere.tokenId)
  t.ok(next, 'the stream minted a replacement')
  t.notOk(s.ended, 'and is still open')
  t.equal(sim.counters.unauthorized ?? 0, 0, 'PMS never saw the old admin token after the reload')
})

t.test('a revocation of the whole client ends its stream even when its current token was revoked already', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('twice-revoked')
  const b = makeClient('bystander')
  const ops = makeClient('ops', { scopes: [...OPS] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('stream-revoke2'), [serverFor(sim)], [a, b, ops]), { defaultMetrics: false })
  const base = await listen(app)
  const s = await openStream(base, a)
  const other = await openStream(base, b)
  t.teardown(() => { s.close(); other.close() })
  const first = await s.next((e) => e.event === 'token')
  await other.next((e) => e.event === 'token')
  await app.inject({ method: 'POST', url: '/v1/revoke', headers: ops.auth, payload: { tokenId: first?.data.tokenId, reason: 'leaked' } })
  await s.next((e) => e.event === 'revoked')
  t.notOk(s.ended, 'one token revoked: the stream stays, waiting for the client to ask')
  // The client does not ask again; ops then offboard it. No live token is left to revoke.
  const mark = s.events.length
  const r = await app.inject({ method: 'POST', url: '/v1/revoke', headers: ops.auth, payload: { client: 'twice-revoked', reason: 'offboarded' } })
  t.equal(r.json().revoked, 0, 'nothing live was left')
  const all = await s.next((e) => e.event === 'revoked', mark, 5000)
  t.same(all?.data, { tokenId: first?.data.tokenId, server: 'default', reason: 'offboarded', next: 'ask' }, 'a revoked event for the whole client')
  t.ok(await s.closed(5000), 'then the stream ends')
  t.notOk(other.ended, 'another client\'s stream stays')
  t.same(other.events.filter((e) => e.event === 'revoked'), [], 'and hears nothing of it')
  // A stream that resumes from before the revocation learns it too, and ends.
  const resumed = await openStream(base, a, { lastEventId: first?.id })
  t.teardown(() => resumed.close())
  t.ok(await resumed.next((e) => e.event === 'revoked' && e.data.reason === 'offboarded', 0, 5000), 'the client-wide revocation replayed')
  t.ok(await resumed.closed(5000), 'the resumed stream ends after it')
})

t.test('a resume from far back (Last-Event-ID 0-0) starts from the current token, reading a bounded slice of the log', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('far-back')
  const prefix = uniquePrefix('stream-far')
  const app = await buildTestApp(t, testConfig(prefix, [serverFor(sim)], [a]), { defaultMetrics: false })
  const base = await listen(app)
  const s1 = await openStream(base, a)
  const first = await s1.next((e) => e.event === 'token')
  s1.close()
  // Other clients' changes fill the log (never trimmed: every entry since 0-0 is still there).
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 })
  t.teardown(() => redis.disconnect())
  const pipeline = redis.pipeline()
  for (let i = 0; i < 3000; i++) {
    pipeline.xadd(`${prefix}:push`, '*', 'type', 'token', 'client', `other${i % 50}`, 'server', 'default', 'tokenId', `tk_${i}`, 'reason', 'rotated')
  }
  await pipeline.exec()
  const reads: string[][] = []
  const stop = await monitorRedis((words) => { if (words[0]?.toLowerCase() === 'xrange' && words[1] === `${prefix}:push`) reads.push(words) })
  t.teardown(stop)
  const s2 = await openStream(base, a, { lastEventId: '0-0' })
  t.teardown(() => s2.close())
  const e = await s2.next((x) => x.event === 'token')
  t.equal(e?.data.reason, 'current', 'the current token, as for a history that is gone')
  t.equal(e?.data.tokenId, first?.data.tokenId)
  t.same(s2.events.map((x) => x.event), ['token'], 'nothing replayed from the whole log')
  t.ok(await until(2000, async () => reads.length > 0), 'the log was read')
  t.equal(reads.length, 1, 'once')
  t.match(reads[0]!.slice(-2), ['COUNT', /^\d+$/], 'with a COUNT')
  t.ok(Number(reads[0]!.at(-1)) <= 1001, `a bounded slice (${reads[0]!.at(-1)} entries at most)`)
  // A recent id still replays what was missed.
  const last = (await redis.xrevrange(`${prefix}:push`, '+', '-', 'COUNT', 1))[0]![0]
  const s3 = await openStream(base, a, { lastEventId: last })
  t.teardown(() => s3.close())
  await new Promise((resolve) => setTimeout(resolve, 300))
  t.same(s3.events, [], 'nothing missed since a recent id: nothing sent')
})

t.test('a rejection PMS confirms: the stream gets the replacement (replaced) without asking', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('rejected')
  const app = await buildTestApp(t, testConfig(uniquePrefix('stream-replaced'), [serverFor(sim)], [a]), { defaultMetrics: false })
  const base = await listen(app)
  const s = await openStream(base, a)
  t.teardown(() => s.close())
  const first = await s.next((e) => e.event === 'token')
  t.ok(sim.killToken(first?.data.token), 'PMS forgets the token')
  // Another process of the same client reports it; the stream hears the outcome.
  const replacement = await issue(app, a, { rejectedTokenId: first?.data.tokenId })
  const revoked = await s.next((e) => e.event === 'revoked')
  t.same(revoked?.data, { tokenId: first?.data.tokenId, server: 'default', reason: 'rejected_by_pms', next: 'pushed' })
  const next = await s.next((e) => e.event === 'token' && e.data.tokenId !== first?.data.tokenId)
  t.equal(next?.data.reason, 'replaced')
  t.equal(next?.data.tokenId, replacement.tokenId)
  t.notOk(s.ended, 'an invalidation does not end the stream')
})

t.test('limits: streams per client and in total (429 with Retry-After), freed when a stream closes', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('many')
  const b = makeClient('other')
  const app = await buildTestApp(t, testConfig(uniquePrefix('stream-limits'), [serverFor(sim)], [a, b], { streamMaxPerClient: 2, streamMaxTotal: 3 }), { defaultMetrics: false })
  const base = await listen(app)
  const open: SseClient[] = []
  t.teardown(() => { for (const s of open) s.close() })
  for (let i = 0; i < 2; i++) open.push(await openStream(base, a))
  t.same(open.map((s) => s.status), [200, 200])
  const third = await openStream(base, a)
  t.equal(third.status, 429, 'the client\'s third stream')
  t.equal(third.headers['retry-after'], '5')
  t.equal(JSON.parse(third.body).code, 'RATE_LIMITED')
  t.match(JSON.parse(third.body).message, /at most 2 per client/)
  open.push(await openStream(base, b))
  t.equal(open[2]!.status, 200, 'another client still gets one')
  const over = await openStream(base, b)
  t.equal(over.status, 429, 'beyond the instance\'s total')
  t.ok(over.headers['retry-after'])
  t.equal(await metric(app, /^ptb_rate_limited_total\{limit="streams"\}/), 2)
  open[0]!.close()
  t.ok(await until(5000, async () => app.broker.push.size === 2), 'a closed stream frees its place')
  const again = await openStream(base, a)
  open.push(again)
  t.equal(again.status, 200)
})

t.test('a consumer that stops reading is dropped (slow), and the idle timeouts of requests do not cut a healthy stream', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('sluggish')
  const prefix = uniquePrefix('stream-slow')
  const app = await buildTestApp(t, testConfig(prefix, [serverFor(sim)], [a], { streamHeartbeatMs: 200 }), {
    defaultMetrics: false,
    // Far shorter than a heartbeat: a stream must outlive them.
    httpTimeouts: { connectionTimeoutMs: 100, requestTimeoutMs: 300, headersTimeoutMs: 300 },
  })
  const base = await listen(app)
  const healthy = await openStream(base, a)
  t.teardown(() => healthy.close())
  await healthy.next((e) => e.event === 'token')
  await new Promise((resolve) => setTimeout(resolve, 1500))
  t.notOk(healthy.ended, 'still open after many idle timeouts')
  t.ok(healthy.comments.filter((c) => c === 'ping').length >= 2, `heartbeats arrive (${healthy.comments.length})`)

  // A raw client that sends the request and never reads: the broker's side fills up.
  const port = (app.server.address() as AddressInfo).port
  const socket = connect(port, '127.0.0.1')
  t.teardown(() => socket.destroy())
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()))
  socket.write(`GET /v1/tokens/stream?server=default HTTP/1.1\r\nHost: x\r\nAuthorization: ${a.auth.authorization}\r\n\r\n`)
  socket.pause()
  t.ok(await until(5000, async () => app.broker.push.size === 2), 'the second stream is open')
  // Large entries for this client (revocations with a long reason, as ops could write) stand in
  // for a burst of changes: some 16 MB, more than the kernel's socket buffers hold.
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 })
  t.teardown(() => redis.disconnect())
  const reason = 'x'.repeat(100_000)
  for (let i = 0; i < 160; i++) {
    await redis.xadd(`${prefix}:push`, '*', 'type', 'revoked', 'client', 'sluggish', 'server', 'default', 'tokenId', `tk_${i}`,
      'reason', reason, 'action', 'token.invalidate', 'selector', '')
  }
  t.ok(await until(20_000, async () => (await metric(app, /^ptb_stream_drops_total\{reason="slow"\}/)) === 1), 'dropped as slow')
  t.ok(await until(5000, async () => app.broker.push.size === 1), 'and unregistered')
  t.notOk(healthy.ended, 'the reading stream is untouched')
})

t.test('shutdown ends every stream first: app.close() returns promptly with streams open', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('closing')
  const config: Config = testConfig(uniquePrefix('stream-close'), [serverFor(sim)], [a])
  const app = await buildApp(config, { logStream: new LogCapture(), defaultMetrics: false })
  t.teardown(async () => await deleteKeys(config.redisPrefix))
  const base = await listen(app)
  const streams = [await openStream(base, a), await openStream(base, a)]
  await Promise.all(streams.map(async (s) => await s.next((e) => e.event === 'token')))
  const started = Date.now()
  await app.close()
  const took = Date.now() - started
  t.ok(took < 9000, `closed within the 10 s grace (${took} ms)`)
  t.ok(await until(2000, async () => streams.every((s) => s.ended)), 'every client saw its stream end')
  t.equal(await dropsOf(app, 'shutdown'), 2, 'counted as shutdown drops')
})

async function dropsOf (app: FastifyInstance, reason: string): Promise<number> {
  const m = await app.broker.metrics.streamDrops.get()
  return m.values.find((v) => v.labels.reason === reason)?.value ?? 0
}
