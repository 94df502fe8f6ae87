import t from 'tap'
import { proxyClient, proxySetup } from './proxy-helper.ts'

// What the proxy does with a PMS 401 beyond the restart case of proxy-listener.test.ts: the
// contract of docs/architecture.md (*A 401 from PMS*): one report, one retry with another token.

const reader = (): ReturnType<typeof proxyClient> => proxyClient('reader', { preset: 'read' })
const PATH = '/library/sections'

t.test('a 401 for a token PMS accepts is answered at once: one check, no retry', async (t) => {
  const s = await proxySetup(t, [reader()])
  const { key } = await s.key('reader')
  t.equal((await s.raw('GET', PATH, { 'x-plex-token': key })).status, 200)
  const token = s.sim.requestLog.at(-1)!.token
  s.sim.setFault({ unauthorizedPaths: [PATH] })
  s.sim.resetCounters()
  const r = await s.raw('GET', PATH, { 'x-plex-token': key })
  t.equal(r.status, 401)
  t.match(JSON.parse(r.body), { code: 'UNAUTHENTICATED', message: /token is valid/ })
  t.equal(s.sim.counters.byPath[PATH], 1, 'sent once: the same token would get the same 401')
  t.equal(s.sim.counters.byPath['/'], 1, "one check of the broker's token")
  s.sim.setFault({})
  t.equal((await s.raw('GET', PATH, { 'x-plex-token': key })).status, 200)
  t.equal(s.sim.requestLog.at(-1)!.token, token, 'the token was kept')
})

t.test('a 401 to the retry is answered without a second report', async (t) => {
  const s = await proxySetup(t, [reader()])
  const { key } = await s.key('reader')
  t.equal((await s.raw('GET', PATH, { 'x-plex-token': key })).status, 200)
  const token = s.sim.requestLog.at(-1)!.token!
  t.ok(s.sim.killToken(token))
  s.sim.setFault({ unauthorizedPaths: [PATH] })
  s.sim.resetCounters()
  const r = await s.raw('GET', PATH, { 'x-plex-token': key })
  t.equal(r.status, 401)
  t.match(JSON.parse(r.body), { code: 'UNAUTHENTICATED', message: /again/ })
  const sent = s.sim.requestLog.filter((x) => x.path === PATH).map((x) => x.token)
  t.equal(sent.length, 2, 'sent with the old token, then once with the fresh one')
  t.equal(sent[0], token)
  t.ok(s.sim.isTokenValid(sent[1]!), 'the retry carried the replaced token')
  t.equal(s.sim.counters.byPath['/'], 1, 'one check: the fresh token is not reported')
})
