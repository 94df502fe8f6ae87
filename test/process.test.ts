import t from 'tap'
import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { deleteKeys, startSim, uniquePrefix } from './helper.ts'
import { baseEnv, getToken, startBroker } from './process-helper.ts'

t.test('after kill -9 and a new start, a client gets the same token without a new mint', async (t) => {
  const sim = await startSim(t)
  const prefix = uniquePrefix('proc')
  t.teardown(() => deleteKeys(prefix))
  const secret = `s_${randomBytes(16).toString('hex')}`
  const env = baseEnv(t, sim, prefix, secret, { BROKER_ROLE: 'api' })
  const one = await startBroker(t, env)
  const first = await getToken(one.url, secret)
  t.equal(first.status, 200, one.output())
  one.child.kill('SIGKILL')
  await one.exited
  const two = await startBroker(t, env)
  const again = await getToken(two.url, secret)
  t.equal(again.body.tokenId, first.body.tokenId, 'same tokenId after a hard kill')
  t.equal(sim.counters.mints, 1, 'no new mint')
  for (const s of [first.body.token, sim.adminToken, secret, env.BROKER_SECRET]) t.notOk(two.output().includes(s) || one.output().includes(s), 'no secret in process output')
})

t.test('SIGTERM finishes in-flight requests and exits 0 within 10 s', async (t) => {
  const sim = await startSim(t, { latencyMs: 1500 })
  const prefix = uniquePrefix('proc')
  t.teardown(() => deleteKeys(prefix))
  const secret = `s_${randomBytes(16).toString('hex')}`
  const b = await startBroker(t, baseEnv(t, sim, prefix, secret, { BROKER_ROLE: 'all', PLEX_PROBE_INTERVAL: '1s' }))
  const inflight = getToken(b.url, secret)
  await sleep(300)
  const start = Date.now()
  b.child.kill('SIGTERM')
  const r = await inflight
  t.equal(r.status, 200, 'the in-flight request completed')
  t.equal(await b.exited, 0, 'exit code 0')
  t.ok(Date.now() - start < 10_000, `stopped in ${Date.now() - start} ms`)
})

t.test('a bad configuration stops the boot with a clear message and no stack trace', async (t) => {
  const sim = await startSim(t)
  const prefix = uniquePrefix('proc')
  const env = baseEnv(t, sim, prefix, 'x')
  const cases: Array<[string, Record<string, string>, RegExp]> = [
    ['missing BROKER_SECRET', { ...env, BROKER_SECRET: '' }, /BROKER_SECRET/],
    ['short BROKER_SECRET', { ...env, BROKER_SECRET: 'c2hvcnQ=' }, /BROKER_SECRET/],
    ['bad duration', { ...env, TOKEN_LIFETIME: 'forever' }, /TOKEN_LIFETIME/],
    ['missing config file', { ...env, BROKER_CONFIG: '/nonexistent/broker.yaml' }, /BROKER_CONFIG/],
  ]
  for (const [name, e, expected] of cases) {
    const b = await startBroker(t, e)
    t.equal(await b.exited, 1, `${name}: exit 1`)
    t.match(b.output(), expected, `${name}: names the variable`)
    t.notMatch(b.output(), /\n\s+at .+:\d+:\d+/, `${name}: no stack trace`)
    t.notOk(b.output().includes(sim.adminToken), `${name}: no secret`)
  }
})

t.test('two broker processes: killing one with SIGKILL leaves rotation running on the other', async (t) => {
  const sim = await startSim(t, { tokenLifetimeMs: 10_000 })
  const prefix = uniquePrefix('proc')
  t.teardown(() => deleteKeys(prefix))
  const secret = `s_${randomBytes(16).toString('hex')}`
  const env = baseEnv(t, sim, prefix, secret, { BROKER_ROLE: 'all', TOKEN_LIFETIME: '10s', TOKEN_RENEW_AFTER: '3s', PLEX_PROBE_INTERVAL: '1s' })
  const one = await startBroker(t, env)
  const two = await startBroker(t, env)
  const first = await getToken(one.url, secret)
  t.equal(first.status, 200)
  one.child.kill('SIGKILL')
  await one.exited
  // The token is rotated in the background by the survivor (twice within 9 s at a 3 s renew age).
  await sleep(9000)
  const later = await getToken(two.url, secret)
  t.not(later.body.tokenId, first.body.tokenId, 'rotated by the surviving instance')
  t.ok(sim.isTokenValid(later.body.token), 'and PMS accepts the new token')
  const mints = sim.counters.byPath['/security/token'] ?? 0
  // 1 first mint + rotations every ~3 s + one canary per rotation period; never once per instance.
  t.ok(mints >= 3 && mints <= 10, `mints stay per period, not per instance (${mints})`)
})
