import t from 'tap'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { request } from 'undici'
import type { ServerConfig } from '../src/config/index.ts'
import { PlexClient } from '../src/plex/client.ts'
import { PmsUpstream } from '../src/plex/upstream.ts'

t.test("the broker's own PMS calls do not queue behind proxied traffic on the same PMS", async (t) => {
  // A PMS that holds every proxied call open and answers the broker's mint at once.
  const held: Array<() => void> = []
  const pms = createServer((req, res) => {
    if (req.url?.startsWith('/security/token') === true) {
      res.setHeader('content-type', 'application/json')
      res.end('{"MediaContainer":{"token":"transient-1"}}')
      return
    }
    held.push(() => res.end('late'))
  })
  await new Promise<void>((resolve) => pms.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => { pms.close(() => resolve()); pms.closeAllConnections() }))
  const url = `http://127.0.0.1:${(pms.address() as AddressInfo).port}`
  const server: ServerConfig = { name: 'fx', url, adminToken: 'fixture-admin-token', tokenSource: 'token' }

  const upstream = new PmsUpstream({ apiConnections: 2, ...PlexClient.upstreamOptions({ timeoutMs: 500, concurrency: 2 }) })
  const plex = new PlexClient({ clientIdentifier: 'ptb-test', timeoutMs: 500, concurrency: 2, upstream })
  t.teardown(async () => { for (const end of held) end(); await upstream.close() })

  // The api pool's two connections are taken, and one more proxied call waits for them.
  const api = upstream.pools(url).pool('api')
  const proxied = [1, 2, 3].map(async () => await request(`${url}/library/sections`, { dispatcher: api }).then(async (r) => await r.body.text()))
  await t.resolveMatch(new Promise((resolve) => { const check = (): void => { if (held.length === 2) resolve(true); else setTimeout(check, 10) }; check() }), true)

  t.equal(await plex.mintTransient(server), 'transient-1', 'the mint is answered within its 500 ms deadline')
  t.equal(plex.breakerState('fx'), 'closed')
  t.equal(upstream.pools(url), upstream.pools(`${url}/`), 'one set of pools per origin, whatever the path')
  for (const end of held.splice(0)) end()
  await new Promise((resolve) => setTimeout(resolve, 20))
  for (const end of held.splice(0)) end()
  t.same(await Promise.all(proxied), ['late', 'late', 'late'], 'the proxied calls were served in turn')
})
