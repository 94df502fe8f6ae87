import t from 'tap'
import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import { deleteKeys, monitorRedis, REDIS_URL, startSim, uniquePrefix, until } from '../helper.ts'
import { baseEnv, getToken, startBroker, type TokenBody } from '../process-helper.ts'

// A broker killed with SIGKILL in the middle of its work loses nothing: another instance finishes
// the job, every token handed out stays audited, and no dead token is served afterwards.

t.test('SIGKILL during a rotation: the other instance completes it, exactly once', async (t) => {
  const sim = await startSim(t, { tokenLifetimeMs: 60_000 })
  const prefix = uniquePrefix('kill')
  t.teardown(() => deleteKeys(prefix))
  const secret = `s_${randomBytes(16).toString('hex')}`
  // Probes once a minute: after the first, the only /security/token calls are the rotation's.
  const env = baseEnv(t, sim, prefix, secret, { BROKER_ROLE: 'all', TOKEN_LIFETIME: '60s', TOKEN_RENEW_AFTER: '3s', PLEX_PROBE_INTERVAL: '60s' })
  const one = await startBroker(t, env)
  const two = await startBroker(t, { ...env, BROKER_ROLE: 'api' })
  const first = await getToken(one.url, secret)
  t.equal(first.status, 200)
  const redis = new Redis(REDIS_URL)
  t.teardown(() => redis.disconnect())
  t.ok(await until(5000, async () => (await redis.get(`${prefix}:cur:~canary:default`)) !== null), 'first probe done')
  // Slow PMS: kill the worker while its rotation mint is in flight at PMS.
  sim.setFault({ latencyMs: 3000 })
  t.ok(await until(10_000, async () => (sim.counters.inFlightByPath['/security/token'] ?? 0) > 0), 'a rotation mint is in flight')
  one.child.kill('SIGKILL')
  await one.exited
  sim.setFault({})
  const three = await startBroker(t, env)
  let now: { status: number, body: TokenBody } = first
  t.ok(await until(30_000, async () => {
    now = await getToken(two.url, secret)
    return now.body.tokenId !== first.body.tokenId
  }), 'rotation completed by the surviving worker')
  t.ok(sim.isTokenValid(now.body.token), 'the new token works at PMS')
  t.equal(await redis.hget(`${prefix}:tok:${first.body.tokenId}`, 'state'), 'rotated', 'the old token shows rotated')
  const events = await redis.xrange(`${prefix}:audit`, '-', '+')
  const rotations = events.filter(([, f]) => f.includes('token.rotate') && f.join(' ').includes(first.body.tokenId))
  t.equal(rotations.length, 1, 'the killed rotation and its retry rotated the token once')
  t.ok(three.child.exitCode === null)
})

t.test('SIGKILL while a revoke of many tokens runs: it completes in Redis, audited once each, and repeating it is a no-op', async (t) => {
  const sim = await startSim(t)
  const prefix = uniquePrefix('kill')
  t.teardown(() => deleteKeys(prefix))
  const secrets = Array.from({ length: 40 }, () => `s_${randomBytes(16).toString('hex')}`)
  const env = baseEnv(t, sim, prefix, secrets[0]!, { BROKER_ROLE: 'api' }, secrets)
  const one = await startBroker(t, env)
  const tokens = await Promise.all(secrets.map((s) => getToken(one.url, s)))
  t.ok(tokens.every((r) => r.status === 200), `${tokens.length} tokens issued`)
  // Watch Redis: the moment the revoke script arrives there, the broker dies.
  let arrive = (): void => {}
  const arrived = new Promise<void>((resolve) => { arrive = resolve })
  const stop = await monitorRedis((args) => {
    if (args.includes('revoked') && args.includes(`${prefix}:audit`)) {
      one.child.kill('SIGKILL')
      arrive()
    }
  })
  t.teardown(stop)
  const answer = fetch(`${one.url}/v1/revoke`, {
    method: 'POST',
    headers: { authorization: `Bearer ${secrets[0]}`, 'content-type': 'application/json' },
    body: JSON.stringify({ all: true, reason: 'kill test' }),
  }).then((r) => r.status).catch(() => 0)
  await arrived
  await one.exited
  const status = await answer
  t.ok(status === 0 || status === 200, `the revoke was under way when the broker died (answer: ${status === 0 ? 'none' : status})`)

  const redis = new Redis(REDIS_URL)
  t.teardown(() => redis.disconnect())
  const states = await Promise.all(tokens.map(async (r) => await redis.hget(`${prefix}:tok:${r.body.tokenId}`, 'state')))
  t.same(new Set(states), new Set(['revoked']), 'every token revoked: the script ran to its end without its broker')
  const revokes = (await redis.xrange(`${prefix}:audit`, '-', '+')).filter(([, f]) => f.includes('token.revoke'))
  t.equal(revokes.length, tokens.length, 'one token.revoke event per token')

  const two = await startBroker(t, env)
  const again = await fetch(`${two.url}/v1/revoke`, {
    method: 'POST',
    headers: { authorization: `Bearer ${secrets[0]}`, 'content-type': 'application/json' },
    body: JSON.stringify({ all: true, reason: 'kill test, again' }),
  })
  t.equal((await again.json() as { revoked: number }).revoked, 0, 'repeating the revoke changes nothing')
  const after = await getToken(two.url, secrets[1]!)
  t.equal(after.status, 200)
  t.not(after.body.tokenId, tokens[1]!.body.tokenId, 'a revoked token is never served again')
  t.ok(sim.isTokenValid(after.body.token))
})

t.test('two instances, one killed mid-restart-recovery: the other finishes re-minting', async (t) => {
  const sim = await startSim(t)
  const prefix = uniquePrefix('kill')
  t.teardown(() => deleteKeys(prefix))
  const secrets = Array.from({ length: 8 }, () => `s_${randomBytes(16).toString('hex')}`)
  const env = baseEnv(t, sim, prefix, secrets[0]!, { BROKER_ROLE: 'all', PLEX_PROBE_INTERVAL: '1s', PLEX_CONCURRENCY: '1' }, secrets)
  const one = await startBroker(t, env)
  const two = await startBroker(t, env)
  const before = await Promise.all(secrets.map((s) => getToken(two.url, s)))
  t.ok(before.every((r) => r.status === 200))
  await sleep(2500) // probes record the identity and mint the canary
  sim.setFault({ latencyMs: 400 })
  await sim.restart({ downForMs: 500 })
  await sleep(1800) // detection and the first re-mints are under way
  one.child.kill('SIGKILL')
  await one.exited
  sim.setFault({})
  const redis = new Redis(REDIS_URL)
  t.teardown(() => redis.disconnect())
  let healed = false
  for (let i = 0; i < 60 && !healed; i++) {
    await sleep(500)
    const rs = await Promise.all(secrets.map((s) => getToken(two.url, s)))
    healed = rs.every((r) => r.status === 200 && sim.isTokenValid(r.body.token))
  }
  t.ok(healed, 'every client is served a token PMS accepts')
  t.equal(two.child.exitCode, null, `the survivor is still running${two.child.exitCode === null ? '' : `: ${two.output().slice(-2000)}`}`)
})
