import t from 'tap'
import { buildTestApp, makeClient, monitorRedis, serverFor, startSim, testConfig, uniquePrefix } from './helper.ts'

// The hot path's cost contract: a cache hit of POST /v1/tokens is one Redis round trip (one
// script that counts the client's rate limit, reads the token and appends the audit event).

t.test('a cache hit costs one Redis command (one round trip), rate limit and audit included', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('hot', { rateLimit: { max: 1000, timeWindowMs: 60_000 } })
  const prefix = uniquePrefix('rtt')
  const app = await buildTestApp(t, testConfig(prefix, [serverFor(sim)], [a]), { defaultMetrics: false })
  const issue = async () => await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })
  const first = await issue()
  t.equal(first.statusCode, 200)

  const sent: string[][] = []
  const stop = await monitorRedis((args, source) => {
    // Commands a script runs show up with source "lua"; only what the broker sends counts.
    if (source !== 'lua' && args.some((x) => x.startsWith(`${prefix}:`))) sent.push(args)
  })
  t.teardown(stop)
  await new Promise((resolve) => setTimeout(resolve, 100))
  const n = 25
  for (let i = 0; i < n; i++) {
    const r = await issue()
    t.equal(r.json().tokenId, first.json().tokenId)
    t.equal(r.headers['x-ratelimit-limit'], '1000', 'the limit is still counted')
    t.equal(r.headers['x-ratelimit-remaining'], String(1000 - 2 - i))
  }
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.equal(sent.length, n, `${n} cache hits sent ${sent.length} commands to Redis`)
  t.ok(sent.every((args) => /^evalsha$/i.test(args[0]!) || /^eval$/i.test(args[0]!)), 'each one a script call')
})
