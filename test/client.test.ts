import t from 'tap'
import { execFile } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join, resolve } from 'node:path'
import { BrokerError } from '../src/client/index.ts'
import { backoff, joinUrl, retryAfterMs } from '../src/client/http.ts'
import { startSim, until } from './helper.ts'
import { captureLogger, listeningBroker, source } from './client-helper.ts'

t.test('helpers: Retry-After in both forms, capped backoff, URLs that keep the token at PMS', async (t) => {
  t.equal(retryAfterMs('3'), 3000)
  t.equal(retryAfterMs(new Date(10_000).toUTCString(), 4000), 6000)
  t.equal(retryAfterMs('soon'), undefined)
  t.equal(retryAfterMs(undefined), undefined)
  t.equal(backoff(1, 1000, 60_000, undefined, () => 1), 1000)
  t.equal(backoff(3, 1000, 60_000, undefined, () => 1), 4000)
  t.equal(backoff(3, 1000, 60_000, undefined, () => 0), 2000, 'shortened at random by up to half')
  t.equal(backoff(20, 1000, 60_000, undefined, () => 1), 60_000, 'capped')
  t.equal(backoff(1, 1000, 60_000, 3_600_000), 60_000, 'a long Retry-After is capped too')
  t.equal(backoff(1, 1000, 60_000, 5000, () => 1), 5000, 'Retry-After wins when longer')
  const pms = new URL('https://proxy.example/plex/')
  t.equal(joinUrl(pms, '/library/sections?type=1').href, 'https://proxy.example/plex/library/sections?type=1', 'a path prefix is kept')
  t.equal(joinUrl(pms, 'https://proxy.example/identity').href, 'https://proxy.example/identity')
  t.throws(() => joinUrl(pms, 'https://elsewhere.example/'), /refusing to send the token/, 'never another origin')
})

t.test('token(): one broker call for concurrent callers, then from memory; PMS accepts it', async (t) => {
  const sim = await startSim(t)
  const b = await listeningBroker(t, sim)
  const s = source(t, b, { stream: false })
  const tokens = await Promise.all(Array.from({ length: 20 }, () => s.token()))
  t.equal(new Set(tokens).size, 1, 'everyone got the same token')
  t.equal(b.seen.posts, 1, 'one POST /v1/tokens for twenty concurrent callers')
  t.ok(sim.isTokenValid(tokens[0]!), 'PMS accepts it')
  for (let i = 0; i < 10; i++) await s.token()
  t.equal(b.seen.posts, 1, 'later calls answered from memory')
  t.equal(s.changes.length, 1, 'one token event')
  t.match(s.changes[0], { token: tokens[0], via: 'poll', server: { name: 'default', machineIdentifier: sim.machineIdentifier } })
  t.equal(s.mode, 'polling')
})

t.test('the token is refreshed at renewAt without anyone asking, and token() then has the new one', async (t) => {
  const sim = await startSim(t)
  // A real worker rotates tokens due after 3 s (lifetime 10 s).
  const b = await listeningBroker(t, sim, { tokenLifetimeMs: 10_000, tokenRenewAfterMs: 3000, probeIntervalMs: 60_000, role: 'all' })
  const s = source(t, b, { stream: false })
  const first = await s.current()
  t.ok(await until(30_000, async () => s.changes.length >= 2), 'a second token arrived by itself')
  const second = s.changes[1]!
  t.not(second.tokenId, first.tokenId)
  t.ok(Date.parse(second.issuedAt) >= Date.parse(first.renewAt) - 1000, 'replaced around its renewAt, not before')
  const posts = b.seen.posts
  t.equal(await s.token(), second.token, 'token() answers the new token')
  t.equal(b.seen.posts, posts, 'from memory')
  t.ok(sim.isTokenValid(second.token))
})

t.test('fetchPms recovers from a killed token with exactly one report', async (t) => {
  const sim = await startSim(t)
  // API role only: no probe notices anything; only the library's report can.
  const b = await listeningBroker(t, sim)
  const log = captureLogger()
  const s = source(t, b, { stream: false, pmsUrl: sim.url, logger: log })
  const dead = await s.current()
  t.equal((await s.fetchPms('/')).status, 200, 'works with the live token')
  t.ok(sim.killToken(dead.token), 'PMS forgets the token (a sign-out of the device)')
  sim.resetCounters()

  const res = await s.fetchPms('/', { headers: { accept: 'application/json' } })
  t.equal(res.status, 200, 'the call succeeds')
  t.equal((await res.json() as { MediaContainer: { machineIdentifier: string } }).MediaContainer.machineIdentifier, sim.machineIdentifier)
  t.same(b.seen.reports, [dead.tokenId], 'one report, naming the dead token')
  t.equal(sim.counters.byPath['/'], 3, "PMS saw the library's 401, the broker's check of the token, and the library's retry")
  t.equal(sim.counters.unauthorized, 2, 'two 401s: the library and the broker\'s check')
  t.equal(sim.counters.mints, 1, 'one new token')
  const fresh = await s.current()
  t.not(fresh.tokenId, dead.tokenId)
  t.match(s.changes.at(-1), { tokenId: fresh.tokenId, via: 'report' })

  // Five calls at once on a token a PMS restart killed: still one report among them.
  await sim.restart()
  sim.resetCounters()
  const answers = await Promise.all(Array.from({ length: 5 }, () => s.fetchPms('/')))
  t.same(answers.map((r) => r.status), [200, 200, 200, 200, 200])
  t.same(b.seen.reports, [dead.tokenId, fresh.tokenId], 'one more report, for the token the restart killed')
  t.equal(sim.counters.byPath['/'], 11, 'five 401s, one check, five retries')
  for (const r of answers) await r.arrayBuffer()

  const text = log.lines.join('\n')
  t.ok(log.lines.some((l) => l.includes('reporting it')), 'the report is logged')
  for (const tok of [dead.token, fresh.token, (await s.current()).token]) t.notOk(text.includes(tok), 'no token in the log')
  t.notOk(text.includes(b.client.secret), 'no secret in the log')
})

t.test('a 401 for a token the broker finds valid is returned as it is, after one report', async (t) => {
  const sim = await startSim(t)
  const b = await listeningBroker(t, sim)
  const s = source(t, b, { stream: false, pmsUrl: sim.url })
  const live = await s.current()
  // A path that answers 401 whatever the token (a proxy in front of PMS, say).
  const gate = createServer((_req, res) => { res.writeHead(401).end() })
  await new Promise<void>((resolve) => gate.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { gate.close() })
  const g = source(t, b, { stream: false, pmsUrl: `http://127.0.0.1:${(gate.address() as AddressInfo).port}` })
  const res = await g.fetchPms('/')
  t.equal(res.status, 401)
  t.same(b.seen.reports, [live.tokenId], 'reported once; the broker kept the token')
  t.equal((await s.current()).tokenId, live.tokenId)
  t.equal(s.changes.length, 1, 'no token change')
})

t.test('fetchPms honours Retry-After on 503, capped, and gives up after its retries', async (t) => {
  const sim = await startSim(t)
  const b = await listeningBroker(t, sim)
  // PMS starting up answers 503 for a while (the simulator has no Retry-After, so a stand-in).
  let busyFor = 2
  let retryAfter = '1'
  const seen: Array<{ at: number, token: string | undefined }> = []
  const pms = createServer((req, res) => {
    seen.push({ at: Date.now(), token: req.headers['x-plex-token'] as string | undefined })
    if (busyFor-- > 0) res.writeHead(503, { 'retry-after': retryAfter }).end('Maintenance')
    else res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}')
  })
  await new Promise<void>((resolve) => pms.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { pms.close() })
  const pmsUrl = `http://127.0.0.1:${(pms.address() as AddressInfo).port}`

  const s = source(t, b, { stream: false, pmsUrl, maxBackoffMs: 5000 })
  const res = await s.fetchPms('/library/sections')
  t.equal(res.status, 200, 'succeeds once PMS is ready')
  t.equal(seen.length, 3, 'two 503s, then the answer')
  t.ok(seen[1]!.at - seen[0]!.at >= 900 && seen[2]!.at - seen[1]!.at >= 900, 'waited the Retry-After second each time')
  const token = await s.token()
  t.ok(seen.every((r) => r.token === token), 'X-Plex-Token on every attempt')
  t.ok(sim.isTokenValid(token))

  // An hour's Retry-After is capped (maxBackoffMs), and after pmsRetries the 503 is returned.
  seen.length = 0
  busyFor = 10
  retryAfter = '3600'
  const capped = source(t, b, { stream: false, pmsUrl, maxBackoffMs: 200, pmsRetries: 2 })
  const given = await capped.fetchPms('/library/sections')
  t.equal(given.status, 503, 'the last 503, to the caller')
  t.equal(await given.text(), 'Maintenance')
  t.equal(seen.length, 3, 'the call and two retries')
})

t.test('the broker\'s 503 with Retry-After: token() retries, then says why; works again when PMS is back', async (t) => {
  const sim = await startSim(t)
  const b = await listeningBroker(t, sim)
  const log = captureLogger()
  const s = source(t, b, { stream: false, maxBackoffMs: 200, brokerAttempts: 2, logger: log })
  await sim.setDown(true)
  const err = await s.token().then(() => undefined, (e: unknown) => e)
  t.ok(err instanceof BrokerError, 'a BrokerError')
  t.match(err, { statusCode: 503, code: 'UPSTREAM_UNAVAILABLE', requestId: String })
  t.ok((err as BrokerError).retryAfterMs! > 0, 'with the broker\'s Retry-After')
  t.equal(b.seen.posts, 2, 'brokerAttempts calls')
  t.notOk(`${(err as Error).message} ${(err as Error).stack}`.includes(b.client.secret), 'no secret in the error')
  await sim.setDown(false)
  const token = await s.token()
  t.ok(sim.isTokenValid(token))
  t.notOk(log.lines.join('\n').includes(token), 'no token in the log')
  t.ok(log.lines.some((l) => l.includes('UPSTREAM_UNAVAILABLE')), 'the retry is logged with its code')
})

t.test('secretFile: the secret comes from a file, read again when the broker refuses it', async (t) => {
  const sim = await startSim(t)
  const b = await listeningBroker(t, sim)
  const dir = t.testdir({ secret: 'sec_not-the-right-one\n' })
  const s = source(t, b, { stream: false, secret: undefined, secretFile: join(dir, 'secret') })
  await t.rejects(s.token(), { name: 'BrokerError', statusCode: 401, code: 'UNAUTHENTICATED' })
  // The secret is rotated in its file, as a secrets manager does: no restart needed.
  writeFileSync(join(dir, 'secret'), `${b.client.secret}\n`)
  t.ok(sim.isTokenValid(await s.token()))
  t.throws(() => source(t, b, { secret: undefined }), /secret/, 'a secret is required')
})

t.test('close() stops everything: a process using the library exits by itself', async (t) => {
  const sim = await startSim(t)
  const b = await listeningBroker(t, sim)
  const dir = t.testdir()
  const script = join(dir, 'use.mjs')
  writeFileSync(script, `
import { createTokenSource } from ${JSON.stringify(resolve('src/client/index.ts'))}
const s = createTokenSource({ brokerUrl: process.env.BROKER, secret: process.env.SECRET, server: 'default', pmsUrl: process.env.PMS })
const res = await s.fetchPms('/')
await res.arrayBuffer()
console.log(JSON.stringify({ status: res.status, mode: s.mode }))
await s.close()
`)
  // No process.exit in the script: an open socket or a live timer would keep it running until the timeout kills it.
  const out = await new Promise<{ code: number | null, stdout: string, stderr: string }>((resolve) => {
    execFile(process.execPath, [script], { env: { ...process.env, BROKER: b.url, SECRET: b.client.secret, PMS: sim.url }, timeout: 60_000 },
      (err, stdout, stderr) => resolve({ code: err === null ? 0 : (err as { code?: number }).code ?? null, stdout, stderr }))
  })
  t.equal(out.code, 0, `exited by itself (${out.stderr.slice(0, 500)})`)
  t.match(JSON.parse(out.stdout), { status: 200 })
})
