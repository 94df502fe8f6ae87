import t from 'tap'
import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import { deleteKeys, REDIS_URL, startSim, uniquePrefix } from '../helper.ts'
import { baseEnv, getToken, startBroker } from '../process-helper.ts'

// A broker killed with SIGKILL in the middle of its work loses nothing: another instance finishes
// the job, every token handed out stays audited, and no dead token is served afterwards.

t.test('SIGKILL during a rotation: the other instance completes it', async (t) => {
  const sim = await startSim(t, { tokenLifetimeMs: 30_000 })
  const prefix = uniquePrefix('kill')
  t.teardown(() => deleteKeys(prefix))
  const secret = `s_${randomBytes(16).toString('hex')}`
  const env = baseEnv(t, sim, prefix, secret, { BROKER_ROLE: 'all', TOKEN_LIFETIME: '30s', TOKEN_RENEW_AFTER: '3s', PLEX_PROBE_INTERVAL: '1s' })
  const one = await startBroker(t, env)
  const two = await startBroker(t, { ...env, BROKER_ROLE: 'api' })
  const first = await getToken(one.url, secret)
  t.equal(first.status, 200)
  // Slow PMS: the rotation is in flight when its worker dies.
  sim.setFault({ latencyMs: 2500 })
  await sleep(3500)
  one.child.kill('SIGKILL')
  await one.exited
  sim.setFault({})
  const three = await startBroker(t, env)
  let rotated = false
  for (let i = 0; i < 40 && !rotated; i++) {
    await sleep(500)
    const r = await getToken(two.url, secret)
    rotated = r.body.tokenId !== first.body.tokenId && sim.isTokenValid(r.body.token)
  }
  t.ok(rotated, 'rotation completed by the surviving worker')
  t.ok(three.child.exitCode === null)
})

t.test('SIGKILL during a revoke of many tokens: the revoke is all or nothing and can be repeated', async (t) => {
  const sim = await startSim(t)
  const prefix = uniquePrefix('kill')
  t.teardown(() => deleteKeys(prefix))
  const secret = `s_${randomBytes(16).toString('hex')}`
  const env = baseEnv(t, sim, prefix, secret, { BROKER_ROLE: 'api' })
  const one = await startBroker(t, env)
  const tok = await getToken(one.url, secret)
  // The revoke is one Lua script, atomic in Redis: a kill can only land before or after it.
  const redis = new Redis(REDIS_URL)
  t.teardown(() => redis.disconnect())
  const revoking = fetch(`${one.url}/v1/revoke`, {
    method: 'POST',
    headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' },
    body: JSON.stringify({ all: true, reason: 'kill test' }),
  }).catch(() => undefined)
  one.child.kill('SIGKILL')
  await revoking
  await one.exited
  const two = await startBroker(t, env)
  const after = await getToken(two.url, secret)
  t.equal(after.status, 200, 'the survivor serves')
  const state = await redis.hget(`${prefix}:tok:${tok.body.tokenId}`, 'state')
  t.ok(state === 'active' || state === 'revoked', `token state is consistent (${state})`)
  if (state === 'revoked') t.not(after.body.tokenId, tok.body.tokenId, 'a revoked token is not served')
  else t.equal(after.body.tokenId, tok.body.tokenId)
  // Both streams of the trail: a mint is a security event, a cache hit a serves event.
  const events = [...await redis.xrange(`${prefix}:audit`, '-', '+'), ...await redis.xrange(`${prefix}:audit:serves`, '-', '+')]
  const issued = events.filter(([, f]) => f.includes('token.issue'))
  t.ok(issued.length >= 2, 'every token handed out has its audit event')
})

t.test('two instances, one killed mid-restart-recovery: the other finishes re-minting', async (t) => {
  const sim = await startSim(t)
  const prefix = uniquePrefix('kill')
  t.teardown(() => deleteKeys(prefix))
  const secrets = Array.from({ length: 8 }, () => `s_${randomBytes(16).toString('hex')}`)
  const env = baseEnv(t, sim, prefix, secrets[0], { BROKER_ROLE: 'all', PLEX_PROBE_INTERVAL: '1s', PLEX_CONCURRENCY: '1' }, secrets)
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
