import t from 'tap'
import { PlexAPI } from '@lukehagar/plexjs'
import { PlexAPIError } from '@lukehagar/plexjs/sdk/models/errors/index.js'
import { buildTestApp, makeClient, serverFor, startSim, testConfig, uniquePrefix } from '../helper.ts'

/**
 * A service's view: a third-party PMS client (`@lukehagar/plexjs`, generated from the community
 * OpenAPI spec) pointed at the simulator with a token the broker issued. Its response schemas
 * must accept the simulator's answers, and a simulated restart must make its calls fail with
 * 401 as on a real PMS, until the service asks the broker again.
 */

const UNAUTHORIZED = '<html><head><title>Unauthorized</title></head><body><h1>401 Unauthorized</h1></body></html>'

t.test('plexjs lists, looks up and searches with a broker-issued token; 401 after a restart; a new token works', async (t) => {
  const sim = await startSim(t)
  const bot = makeClient('media-bot')
  const app = await buildTestApp(t, testConfig(uniquePrefix('plexjs'), [serverFor(sim)], [bot]))
  const issued = await app.inject({ method: 'POST', url: '/v1/tokens', headers: bot.auth, payload: { server: 'default' } })
  t.equal(issued.statusCode, 200)
  const { token, tokenId } = issued.json()
  t.not(token, sim.adminToken, 'a transient token, not the admin token')

  const plex = new PlexAPI({ serverURL: sim.url, token, clientIdentifier: 'media-bot-test', product: 'media-bot' })

  const info = await plex.general.getServerInfo({})
  t.same(info.mediaContainerWithDirectory?.mediaContainer?.directory?.map((d) => d.key), ['activities', 'clients', 'library', 'playlists'])

  const sections = await plex.library.getSections()
  t.equal(sections.statusCode, 200)
  t.match(sections.object?.mediaContainer, { size: 2, allowSync: false, title1: 'Plex Library' })
  t.match(sections.object?.mediaContainer?.directory, [
    { key: '1', title: 'Movies', type: 'movie', agent: 'tv.plex.agents.movie', location: [{ id: 1, path: '/data/movies' }] },
    { key: '2', title: 'TV Shows', type: 'show' },
  ])

  const details = await plex.library.getLibraryDetails({ sectionId: '1' })
  t.same(details.object?.mediaContainer?.directory?.map((d) => d.key), ['all', 'recentlyAdded'])
  t.equal(details.object?.mediaContainer?.librarySectionID, 1)

  const movies = await plex.content.listContent({ sectionId: '1' })
  const items = movies.mediaContainerWithMetadata?.mediaContainer?.metadata ?? []
  t.same(items.map((m) => m.title), ['Nosferatu', 'The General', 'Night of the Living Dead'])
  t.match(items[0], { ratingKey: '1001', type: 'movie', year: 1922, duration: 5640000, media: [{ id: 1, part: [{ id: 1, file: /Nosferatu/ }] }], genre: [{ tag: 'Horror' }] })
  t.match(items[0]!.additionalProperties, { librarySectionID: 1 }, 'attributes the spec leaves open are kept')

  const shows = await plex.content.listContent({ sectionId: '2' })
  t.match(shows.mediaContainerWithMetadata?.mediaContainer?.metadata, [{ ratingKey: '2001', type: 'show', leafCount: 2, additionalProperties: { childCount: 1 } }])

  const item = await plex.content.getMetadataItem({ ids: ['1003'] })
  t.match(item.mediaContainerWithMetadata?.mediaContainer, { size: 1, metadata: [{ ratingKey: '1003', title: 'Night of the Living Dead', year: 1968, director: [{ tag: 'George A. Romero' }] }] })
  const missing = await plex.content.getMetadataItem({ ids: ['9999'] }).then(() => undefined, (e: unknown) => e)
  t.ok(missing instanceof PlexAPIError, 'an unknown id is an HTTP error')
  t.equal((missing as PlexAPIError).statusCode, 404)

  const idle = await plex.status.listSessions()
  t.match(idle.object?.mediaContainer, { size: 0 })
  t.notOk(idle.object?.mediaContainer?.metadata, 'no sessions')
  sim.play('2004', { viewOffset: 90_000 })
  const busy = await plex.status.listSessions()
  t.match(busy.object?.mediaContainer, {
    size: 1,
    metadata: [{
      ratingKey: '2004',
      title: 'The Restart',
      grandparentTitle: 'Simulated Lives',
      viewOffset: 90_000,
      user: { id: '1', title: 'sim-owner' },
      player: { product: 'Plex Web', state: 'playing', local: true },
      session: { location: 'lan', bandwidth: Number },
    }],
  })

  const found = await plex.search.searchHubs({ query: 'night' })
  const hubs = found.object?.mediaContainer?.hub ?? []
  t.same(hubs.map((h) => [h.type, h.size]), [['movie', 1], ['show', 0], ['episode', 0]])
  t.match(hubs[0]!.metadata, [{ ratingKey: '1003', title: 'Night of the Living Dead' }])
  const limited = await plex.search.searchHubs({ query: 'the', limit: 1, sectionId: 1 })
  t.match(limited.object?.mediaContainer?.hub?.[0], { size: 1, more: true })

  // PMS restarts: every transient token dies, the admin token does not.
  await sim.restart()
  const err = await plex.library.getSections().then(() => undefined, (e: unknown) => e)
  t.ok(err instanceof PlexAPIError, 'the SDK raises its HTTP error')
  t.equal((err as PlexAPIError).statusCode, 401, 'with status 401, as a real PMS answers a dead token')
  t.equal((err as PlexAPIError).body, UNAUTHORIZED)
  const stillDead = await plex.content.listContent({ sectionId: '1' }).then(() => undefined, (e: unknown) => e)
  t.equal((stillDead as PlexAPIError).statusCode, 401)

  // What the service does next: report the rejected token and get a fresh one.
  const again = await app.inject({ method: 'POST', url: '/v1/tokens', headers: bot.auth, payload: { server: 'default', rejectedTokenId: tokenId } })
  t.equal(again.statusCode, 200)
  t.not(again.json().token, token, 'the broker re-minted')
  const fresh = new PlexAPI({ serverURL: sim.url, token: again.json().token })
  const after = await fresh.library.getSections()
  t.equal(after.object?.mediaContainer?.size, 2, 'the new token works')
})
