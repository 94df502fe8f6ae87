import t from 'tap'
import { connect, createServer, type Socket } from 'node:net'
import type { AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import type { T } from './helper.ts'
import { startSim, until } from './helper.ts'
import { captureLogger, type ListeningBroker, listeningBroker, source } from './client-helper.ts'

// The library against the broker's real push channel (GET /v1/tokens/stream), with real BullMQ
// workers doing the rotations and re-mints.
const WORKER = { role: 'all' as const, probeIntervalMs: 60_000 }

async function rotate (b: ListeningBroker): Promise<void> {
  const r = await b.app.inject({ method: 'POST', url: '/v1/servers/default/rotate', headers: b.ops.auth })
  if (r.statusCode !== 202) throw new Error(`rotate: ${r.statusCode} ${r.body}`)
}

t.test('the stream brings the first token and a rotated one, without a single POST', async (t) => {
  const sim = await startSim(t)
  const b = await listeningBroker(t, sim, WORKER)
  const s = source(t, b)
  t.ok(await until(15_000, async () => s.changes.length === 1), 'the first token arrived')
  t.equal(s.mode, 'stream')
  t.match(s.changes[0], { via: 'stream', reason: 'current', server: { name: 'default', machineIdentifier: sim.machineIdentifier } })
  const first = s.changes[0]!
  t.equal(await s.token(), first.token, 'token() answers it')
  t.ok(sim.isTokenValid(first.token))

  await rotate(b)
  t.ok(await until(15_000, async () => s.changes.length === 2), 'the rotated token was pushed')
  t.match(s.changes[1], { via: 'stream', reason: 'rotated' })
  t.not(s.changes[1]!.tokenId, first.tokenId)
  t.equal(await s.token(), s.changes[1]!.token, 'token() has the new one at once')
  t.ok(sim.isTokenValid(s.changes[1]!.token))
  t.equal(b.seen.posts, 0, 'no POST /v1/tokens: everything came by the stream')
  t.equal(b.seen.streams, 1, 'one stream')
})

t.test('after a PMS restart the re-minted token arrives by the stream, without a request', async (t) => {
  const sim = await startSim(t)
  const b = await listeningBroker(t, sim, { ...WORKER, probeIntervalMs: 1000 })
  const revoked: string[] = []
  // A long wait for the pushed replacement, so a loaded machine cannot turn it into a POST.
  const s = source(t, b, { replacementWaitMs: 60_000 })
  s.on('revoked', (r) => revoked.push(`${r.tokenId} ${r.reason}`))
  t.ok(await until(15_000, async () => s.changes.length === 1))
  const before = s.changes[0]!

  await sim.restart()
  t.ok(await until(30_000, async () => s.changes.length === 2), 'a new token was pushed')
  t.match(s.changes[1], { via: 'stream', reason: 'reminted' })
  t.ok(sim.isTokenValid(s.changes[1]!.token), 'PMS accepts it')
  t.notOk(sim.isTokenValid(before.token), 'the old one died with the restart')
  t.same(revoked, [`${before.tokenId} server_restart`], 'the old token was announced dead first')
  t.equal(await s.token(), s.changes[1]!.token)
  t.equal(b.seen.posts, 0, 'no request: the broker re-minted and pushed')
})

t.test('an ops revocation: the stream says so and ends, the library asks for a new token and reopens the stream', async (t) => {
  const sim = await startSim(t)
  const b = await listeningBroker(t, sim, WORKER)
  const s = source(t, b, { replacementWaitMs: 100 })
  const revoked: Array<{ tokenId: string, reason: string | undefined }> = []
  s.on('revoked', (r) => revoked.push(r))
  t.ok(await until(15_000, async () => s.changes.length === 1))
  const old = s.changes[0]!
  const r = await b.app.inject({ method: 'POST', url: '/v1/revoke', headers: b.ops.auth, payload: { client: 'svc', reason: 'host compromised' } })
  t.equal(r.json().revoked, 1)
  t.ok(await until(15_000, async () => s.changes.length === 2), 'a new token')
  t.same(revoked, [{ tokenId: old.tokenId, reason: 'host compromised' }])
  t.not(s.changes[1]!.tokenId, old.tokenId)
  t.not(await s.token(), old.token, 'token() never answers the revoked token again')
  t.ok(b.seen.posts >= 1, 'the library asked (the broker sends no token after a revocation)')
  t.ok(await until(15_000, async () => b.seen.streams >= 2 && s.mode === 'stream'), 'and is back on the stream')
})

/** A TCP relay whose current connections can be frozen: bytes from the broker stop, the connection stays open (a half-dead link). */
async function freezingRelay (t: T, port: number): Promise<{ url: string, freeze: () => number }> {
  const live = new Set<{ frozen: boolean, client: Socket }>()
  const server = createServer((client) => {
    const link = { frozen: false, client }
    live.add(link)
    const upstream = connect(port, '127.0.0.1')
    client.pipe(upstream)
    upstream.on('data', (d: Buffer) => { if (!link.frozen) client.write(d) })
    const end = (): void => { live.delete(link); client.destroy(); upstream.destroy() }
    for (const s of [client, upstream]) { s.on('close', end); s.on('error', end) }
    upstream.on('end', () => { if (!link.frozen) client.end() })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    for (const l of live) l.client.destroy()
    server.close()
  })
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    freeze: () => {
      for (const l of live) l.frozen = true
      return live.size
    },
  }
}

t.test('a stream gone silent is reopened with Last-Event-ID, and what was missed is replayed', async (t) => {
  const sim = await startSim(t)
  // Pings every 200 ms; the library calls 3 s of silence a dead stream.
  const b = await listeningBroker(t, sim, { ...WORKER, streamHeartbeatMs: 200 })
  const relay = await freezingRelay(t, Number(new URL(b.url).port))
  const log = captureLogger()
  const s = source(t, { ...b, url: relay.url }, { heartbeatTimeoutMs: 3000, logger: log })
  t.ok(await until(15_000, async () => s.changes.length === 1 && s.mode === 'stream'))
  const first = s.changes[0]!

  t.ok(relay.freeze() >= 1, 'the link goes quiet (nothing closes)')
  // Rotated while the library hears nothing: the event is lost on the frozen link.
  await rotate(b)
  t.ok(await until(30_000, async () => s.changes.length === 2), 'the rotation arrived after all')
  t.match(s.changes[1], { via: 'stream', reason: 'rotated' })
  t.not(s.changes[1]!.tokenId, first.tokenId)
  t.ok(b.seen.streams >= 2, 'by a new stream')
  t.equal(b.seen.lastEventIds[0], undefined, 'the first stream starts fresh')
  t.match(b.seen.lastEventIds[1], /^\d+-\d+$/, 'the second resumes with Last-Event-ID')
  t.equal(b.seen.posts, 0, 'no POST')
  t.ok(sim.isTokenValid(await s.token()))
  t.ok(log.lines.some((l) => l.includes('token stream ended')), 'the reconnect is logged')
  const text = log.lines.join('\n')
  t.notOk(text.includes(first.token) || text.includes(s.changes[1]!.token), 'no token in the log')
  t.notOk(text.includes(b.client.secret), 'no secret in the log')
})

t.test('without the stream route (an older broker) the library polls, and takes the stream once the broker has it', async (t) => {
  const sim = await startSim(t)
  const b = await listeningBroker(t, sim, WORKER)
  b.hideStream = true
  const log = captureLogger()
  const modes: string[] = []
  const s = source(t, b, { logger: log, maxBackoffMs: 500 })
  s.on('mode', (m) => modes.push(m))
  t.ok(await until(15_000, async () => s.mode === 'polling'), 'polling')
  const polled = await s.current()
  t.ok(sim.isTokenValid(polled.token), 'token() works meanwhile')
  t.equal(b.seen.posts, 1, 'by a POST')
  t.match(s.changes[0], { via: 'poll' })
  t.ok(log.lines.some((l) => l.includes('polling') && l.includes('"status":404')), 'says why it polls')

  b.hideStream = false
  t.ok(await until(15_000, async () => s.mode === 'stream'), 'back on the stream when the broker has it')
  await rotate(b)
  t.ok(await until(15_000, async () => s.changes.some((c) => c.reason === 'rotated')), 'and rotations come by it')
  t.equal(s.changes.length, 2, 'the stream\'s first event (the same token) changed nothing')
  t.equal(b.seen.posts, 1, 'no POST since')
  await s.close()
  t.same(modes, ['polling', 'stream', 'closed'])
  await t.rejects(s.token(), /closed/)
})

t.test('a stream refused by the per-client limit (429): polling, then the stream when a slot frees', async (t) => {
  const sim = await startSim(t)
  const b = await listeningBroker(t, sim, { ...WORKER, streamMaxPerClient: 1 })
  const holder = source(t, b)
  t.ok(await until(15_000, async () => holder.mode === 'stream'))
  const log = captureLogger()
  const s = source(t, b, { logger: log, maxBackoffMs: 500 })
  t.ok(await until(15_000, async () => s.mode === 'polling'), 'the second source polls')
  t.ok(log.lines.some((l) => l.includes('"status":429')), 'refused with 429')
  t.equal(await s.token(), await holder.token(), 'and still has the client\'s token')
  await holder.close()
  t.ok(await until(15_000, async () => s.mode === 'stream'), 'takes the stream once the slot is free')
})

t.test('the stream ends when the broker shuts down; the library polls until one is back', async (t) => {
  const sim = await startSim(t)
  const b = await listeningBroker(t, sim, WORKER)
  const s = source(t, b, { maxBackoffMs: 500 })
  t.ok(await until(15_000, async () => s.mode === 'stream'))
  const held = await s.token()
  await b.app.close()
  t.ok(await until(15_000, async () => s.mode === 'polling'), 'no broker: polling')
  t.equal(await s.token(), held, 'the live token is still served from memory')
})

t.test('in stream mode too, fetchPms recovers from a killed token with one report, and the new token is announced once', async (t) => {
  const sim = await startSim(t)
  const b = await listeningBroker(t, sim)
  // The pushed `revoked` must not turn into a POST of its own on a slow machine.
  const s = source(t, b, { pmsUrl: sim.url, replacementWaitMs: 30_000 })
  t.ok(await until(15_000, async () => s.changes.length === 1 && s.mode === 'stream'))
  const dead = s.changes[0]!
  t.ok(sim.killToken(dead.token))
  const answers = await Promise.all(Array.from({ length: 3 }, () => s.fetchPms('/')))
  t.same(answers.map((r) => r.status), [200, 200, 200])
  for (const r of answers) await r.arrayBuffer()
  t.same(b.seen.reports, [dead.tokenId], 'exactly one report')
  // The broker pushes the replacement too: the answer to the report and the event are one change.
  t.ok(await until(15_000, async () => b.seen.posts === 1 && (s.changes.length > 1)))
  // Give the pushed event time to arrive after the report's answer (it must not count twice).
  await sleep(2000)
  t.equal(s.changes.length, 2, 'one token event for the replacement, however it arrived')
  t.not(s.changes[1]!.tokenId, dead.tokenId)
  t.equal(await s.token(), s.changes[1]!.token)
})
