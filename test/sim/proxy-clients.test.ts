import t from 'tap'
import { createRequire } from 'node:module'
import { PlexAPI as PlexJs } from '@lukehagar/plexjs'
import { PlexServer } from '@ctrl/plex'
import { proxyClient, proxySetup } from '../proxy-helper.ts'

/**
 * Three independent PMS client libraries from the npm registry, each given the proxy's URL and a
 * proxy key where it takes a PMS token: with a `read` key they list sections, read metadata and
 * sessions, and they get 403 where the rules refuse (settings writes, token minting, the owner's
 * account). None of them knows it is not talking to PMS.
 */

const require = createRequire(import.meta.url)
// plex-api (what Overseerr uses) is CommonJS without types.
const PlexApi = require('plex-api') as new (o: { hostname: string, port: number, token: string, options?: Record<string, string> }) => {
  query: (uri: string) => Promise<{ MediaContainer: Record<string, unknown> & { Directory?: Array<{ key: string }>, Metadata?: Array<Record<string, unknown>> } }>
  putQuery: (uri: string) => Promise<unknown>
}

const reader = (): ReturnType<typeof proxyClient> => proxyClient('reader', { preset: 'read' })

t.test('@lukehagar/plexjs through the proxy with a read key', async (t) => {
  const s = await proxySetup(t, [reader()])
  const { key } = await s.key('reader')
  const plex = new PlexJs({ serverURL: s.base, token: key, clientIdentifier: 'proxy-test', product: 'proxy-test' })
  const sections = await plex.library.getSections()
  t.same(sections.object?.mediaContainer?.directory?.map((d) => d.key), ['1', '2'])
  const item = await plex.content.getMetadataItem({ ids: ['1003'] })
  t.match(item.mediaContainerWithMetadata?.mediaContainer?.metadata, [{ title: 'Night of the Living Dead' }])
  s.sim.play('1001')
  const sessions = await plex.status.listSessions()
  t.match(sessions.object?.mediaContainer, { size: 1, metadata: [{ ratingKey: '1001' }] })
  const refused = async (p: Promise<unknown>): Promise<number | undefined> => await p.then(() => 200, (e: { statusCode?: number }) => e.statusCode)
  t.equal(await refused(plex.general.getTransientToken({ type: 'delegation', scope: 'all' } as never)), 403, '/security/token')
  t.equal(await refused(plex.preferences.setPreferences({ prefs: { FriendlyName: 'x' } } as never)), 403, 'PUT /:/prefs')
  // The spec this library is generated from has no call for /myplex/account (the other two libraries test it).
  t.ok(s.sim.requestLog.every((r) => r.token !== key), 'PMS never saw the key')
})

t.test('@ctrl/plex (python-plexapi port) through the proxy with a read key', async (t) => {
  const s = await proxySetup(t, [reader()])
  const { key } = await s.key('reader')
  const plex = new PlexServer(s.base, key)
  await plex.connect()
  const library = await plex.library()
  const sections = await library.sections()
  t.same(sections.map((x) => x.title), ['Movies', 'TV Shows'])
  const item = await plex.query('/library/metadata/1003')
  t.match(JSON.stringify(item), /Night of the Living Dead/)
  s.sim.play('1001')
  const sessions = await plex.query('/status/sessions')
  t.match(JSON.stringify(sessions), /"ratingKey":"1001"/)
  const status = async (p: Promise<unknown>): Promise<string> => await p.then(() => 'ok', (e: Error) => e.message)
  t.match(await status(plex.query('/:/prefs?FriendlyName=x', 'put')), /403|Forbidden/i, 'PUT /:/prefs')
  t.match(await status(plex.query('/security/token?type=delegation&scope=all')), /403|Forbidden/i, '/security/token')
  t.match(await status(plex.query('/myplex/account')), /403|Forbidden/i, '/myplex/account')
})

t.test('plex-api (Overseerr\'s client) through the proxy with a read key', async (t) => {
  const s = await proxySetup(t, [reader()])
  const { key } = await s.key('reader')
  const port = Number(new URL(s.base).port)
  const plex = new PlexApi({ hostname: '127.0.0.1', port, token: key, options: { identifier: 'proxy-test', product: 'proxy-test' } })
  const sections = await plex.query('/library/sections')
  t.same(sections.MediaContainer.Directory?.map((d) => d.key), ['1', '2'])
  const item = await plex.query('/library/metadata/1003')
  t.match(item.MediaContainer.Metadata, [{ title: 'Night of the Living Dead' }])
  s.sim.play('1001')
  const sessions = await plex.query('/status/sessions')
  t.match(sessions.MediaContainer, { size: 1 })
  // plex-api's message for a 403: "Plex Server denied request due to lack of managed user permissions!"
  const status = async (p: Promise<unknown>): Promise<string> => await p.then(() => 'ok', (e: Error) => e.message)
  t.match(await status(plex.putQuery('/:/prefs?FriendlyName=x')), /denied request/, 'PUT /:/prefs')
  t.match(await status(plex.query('/security/token?type=delegation&scope=all')), /denied request/, '/security/token')
  t.match(await status(plex.query('/myplex/account')), /denied request/, '/myplex/account')
})
