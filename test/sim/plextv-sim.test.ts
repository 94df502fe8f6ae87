import t from 'tap'
import { PlexTvSimulator } from '../../src/sim/plextv-sim.ts'

// The plex.tv simulator itself (the broker's plex.tv client is tested in test/plextv.test.ts).

async function setup (t: { teardown: (fn: () => unknown) => void }): Promise<{ sim: PlexTvSimulator }> {
  const sim = await PlexTvSimulator.start()
  t.teardown(async () => { await sim.stop() })
  return { sim }
}

t.test('the simulator speaks XML without Accept: application/json, and wants a client id', async (t) => {
  const { sim } = await setup(t)
  const xml = await fetch(`${sim.url}/api/v2/pins/1`, { headers: { 'x-plex-client-identifier': 'c' } })
  t.equal(xml.status, 404)
  t.equal(await xml.text(), '<?xml version="1.0" encoding="UTF-8"?>\n<errors><error code="1020" message="Code not found or expired" status="404"/></errors>')
  const json = await fetch(`${sim.url}/api/v2/user`, { headers: { accept: 'application/json' } })
  t.equal(json.status, 400)
  t.same(await json.json(), { errors: [{ code: 1000, message: 'X-Plex-Client-Identifier is missing', status: 400 }] })
  const pong = await fetch(`${sim.url}/api/v2/ping`, { headers: { 'x-plex-client-identifier': 'c', 'x-plex-token': sim.accountToken } })
  t.equal(await pong.text(), '<?xml version="1.0" encoding="UTF-8"?>\n<pong>true</pong>')
  const unknown = await fetch(`${sim.url}/api/v2/nothing`, { headers: { 'x-plex-client-identifier': 'c', accept: 'application/json' } })
  t.equal(unknown.status, 404)
  t.equal(sim.counters.byPath['/api/v2/pins/{id}'], 1)
})
