import t from 'tap'
import { buildTestApp, makeClient, serverFor, startSim, testConfig, uniquePrefix } from './helper.ts'

// The broker's own clock decides what is live: PMS gives no expiry. The store takes an injected
// clock, so these tests move time instead of waiting for it.

t.test('a token is never served at or after its expiresAt', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('a')
  let now = Date.now()
  const app = await buildTestApp(t, testConfig(uniquePrefix('clock'), [serverFor(sim)], [a]), { now: () => now })
  const issue = async () => (await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })).json()
  const first = await issue()
  const expiresAt = Date.parse(first.expiresAt)
  now = expiresAt - 1
  t.equal((await issue()).tokenId, first.tokenId, 'served up to the last millisecond')
  now = expiresAt
  const next = await issue()
  t.not(next.tokenId, first.tokenId, 'at expiresAt: a new token')
  t.equal(sim.counters.mints, 2)
  t.equal((await app.inject({ method: 'GET', url: `/v1/tokens/${first.tokenId}`, headers: a.auth })).json().state, 'expired')
})

t.test('rotation is due at renewAt, and a token issued "in the future" (clock stepped back) is due at once', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('a')
  let now = Date.now()
  const app = await buildTestApp(t, testConfig(uniquePrefix('clock'), [serverFor(sim)], [a]), { now: () => now })
  const first = (await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })).json()
  const due = async () => (await app.broker.rotator.due()).map((d) => d.tokenId)
  now = Date.parse(first.renewAt) - 1
  t.same(await due(), [], 'not due before renewAt')
  now = Date.parse(first.renewAt)
  t.same(await due(), [first.tokenId], 'due at renewAt')
  now = Date.parse(first.issuedAt) - 3600_000
  t.same(await due(), [first.tokenId], 'issued an hour "in the future": its age is unknown, so it is due')
  const served = (await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })).json()
  t.equal(served.tokenId, first.tokenId, 'and still served meanwhile (it has not expired)')
})

t.test('tokens minted together renew at different times (renewAt jitter)', async (t) => {
  const sim = await startSim(t)
  const clients = Array.from({ length: 12 }, (_, i) => makeClient(`j${i}`))
  const app = await buildTestApp(t, testConfig(uniquePrefix('jitter'), [serverFor(sim)], clients))
  const tokens = await Promise.all(clients.map(async (c) =>
    (await app.inject({ method: 'POST', url: '/v1/tokens', headers: c.auth, payload: { server: 'default' } })).json()))
  const offsets = tokens.map((tk) => Date.parse(tk.renewAt) - Date.parse(tk.issuedAt))
  t.ok(new Set(offsets).size >= 10, `renewAt spread (${new Set(offsets).size} distinct of 12)`)
  const renewAfter = 24 * 3600_000
  t.ok(offsets.every((o) => o <= renewAfter && o >= renewAfter * 0.9), 'within TOKEN_RENEW_AFTER minus up to 10 %')
})
