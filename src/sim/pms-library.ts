import type { Attrs, Node } from './media-container.ts'

/**
 * The PMS simulator's canned library: one movie section with three films, one TV section with one
 * show (a season of two episodes), and at most one playback session. Enough for a service to
 * list, page, look up and search media the way it would on a real server; the shapes follow the
 * community OpenAPI spec (docs/simulator.md lists what is served). Fixed data, so answers are the
 * same on every run; nothing here is writable.
 */

// Tested by the simulator suite (test/sim, run without coverage); left out of the broker suite's
// coverage, which loads the simulator but never asks it for media, so that figure stays the broker's.
/* c8 ignore start */

export type ItemType = 'movie' | 'show' | 'season' | 'episode'

/** PMS's numeric metadata types, as in `?type=` and timeline notifications. */
export const TYPE_NUMBER: Record<ItemType, number> = { movie: 1, show: 2, season: 3, episode: 4 }

export type PlaybackState = 'playing' | 'paused'

/** The one playback session `/status/sessions` may list. */
export interface Playback {
  ratingKey: string
  state: PlaybackState
  /** Milliseconds into the item. */
  viewOffset: number
  sessionKey: string
}

/** The player a session plays on: a Plex Web tab on the server's LAN. */
export const SIM_PLAYER = {
  title: 'Chrome',
  address: '127.0.0.1',
  local: true,
  machineIdentifier: 'pms-sim-player-0001',
  model: 'hosted',
  platform: 'Chrome',
  platformVersion: '126.0',
  product: 'Plex Web',
  profile: 'Web',
  relayed: false,
  remotePublicAddress: '203.0.113.7',
  secure: true,
  userID: 1,
  vendor: '',
  version: '4.128.1',
}

const IDENTIFIER = 'com.plexapp.plugins.library'
const MEDIA_TAG_PREFIX = '/system/bundle/media/flags/'
/** Creation, scan and update time of everything (2023-11-14): canned data does not age. */
const CREATED_AT = 1_700_000_000
const MEDIA_TAG_VERSION = CREATED_AT

interface Section {
  id: number
  uuid: string
  title: string
  type: 'movie' | 'show'
  agent: string
  scanner: string
  path: string
  allTitle: string
}

const SECTIONS: Section[] = [
  { id: 1, uuid: '0b5c6f0e-5d43-4c4e-9a55-3f1e7c2f3a01', title: 'Movies', type: 'movie', agent: 'tv.plex.agents.movie', scanner: 'Plex Movie', path: '/data/movies', allTitle: 'All Movies' },
  { id: 2, uuid: '6a0d2c1b-9f7e-4b8a-8c3d-2e4f5a6b7c02', title: 'TV Shows', type: 'show', agent: 'tv.plex.agents.series', scanner: 'Plex TV Series', path: '/data/tv', allTitle: 'All Shows' },
]

interface Media {
  id: number
  duration: number
  width: number
  height: number
  bitrate: number
  file: string
  size: number
}

interface Item {
  ratingKey: string
  type: ItemType
  sectionId: number
  title: string
  parentRatingKey?: string
  index?: number
  /** Seconds since the epoch; orders `recentlyAdded`. */
  addedAt: number
  /** Type-specific attributes (year, summary, …), in the JSON types PMS uses. */
  attrs: Attrs
  genres?: string[]
  directors?: string[]
  media?: Media
}

/** Public-domain films, and a show invented for the simulator. */
const ITEMS: Item[] = [
  {
    ratingKey: '1001',
    type: 'movie',
    sectionId: 1,
    title: 'Nosferatu',
    addedAt: CREATED_AT + 100,
    attrs: { originalTitle: 'Nosferatu, eine Symphonie des Grauens', year: 1922, originallyAvailableAt: '1922-03-04', contentRating: 'NR', studio: 'Prana-Film', summary: 'An estate agent travels to Transylvania to sell a house to Count Orlok.', duration: 5640000 },
    genres: ['Horror'],
    directors: ['F. W. Murnau'],
    media: { id: 1, duration: 5640000, width: 720, height: 540, bitrate: 1200, file: '/data/movies/Nosferatu (1922)/Nosferatu (1922).mp4', size: 846000000 },
  },
  {
    ratingKey: '1002',
    type: 'movie',
    sectionId: 1,
    title: 'The General',
    addedAt: CREATED_AT + 200,
    attrs: { titleSort: 'General', year: 1926, originallyAvailableAt: '1926-12-31', contentRating: 'NR', studio: 'Buster Keaton Productions', summary: 'A Confederate railroad engineer chases the spies who stole his locomotive.', duration: 4740000 },
    genres: ['Comedy', 'Action'],
    directors: ['Buster Keaton', 'Clyde Bruckman'],
    media: { id: 2, duration: 4740000, width: 720, height: 540, bitrate: 1200, file: '/data/movies/The General (1926)/The General (1926).mp4', size: 711000000 },
  },
  {
    ratingKey: '1003',
    type: 'movie',
    sectionId: 1,
    title: 'Night of the Living Dead',
    addedAt: CREATED_AT + 300,
    attrs: { year: 1968, originallyAvailableAt: '1968-10-01', contentRating: 'NR', studio: 'Image Ten', summary: 'Strangers shelter in a farmhouse while the dead rise outside.', duration: 5760000 },
    genres: ['Horror'],
    directors: ['George A. Romero'],
    media: { id: 3, duration: 5760000, width: 720, height: 480, bitrate: 1500, file: '/data/movies/Night of the Living Dead (1968)/Night of the Living Dead (1968).mp4', size: 1080000000 },
  },
  {
    ratingKey: '2001',
    type: 'show',
    sectionId: 2,
    title: 'Simulated Lives',
    index: 1,
    addedAt: CREATED_AT + 400,
    attrs: { year: 2024, originallyAvailableAt: '2024-01-08', contentRating: 'TV-PG', studio: 'pms-sim', summary: 'A media server restarts, and everyone has to sign in again.' },
    genres: ['Drama'],
  },
  {
    ratingKey: '2002',
    type: 'season',
    sectionId: 2,
    title: 'Season 1',
    parentRatingKey: '2001',
    index: 1,
    addedAt: CREATED_AT + 400,
    attrs: { summary: '' },
  },
  {
    ratingKey: '2003',
    type: 'episode',
    sectionId: 2,
    title: 'Pilot',
    parentRatingKey: '2002',
    index: 1,
    addedAt: CREATED_AT + 400,
    attrs: { year: 2024, originallyAvailableAt: '2024-01-08', contentRating: 'TV-PG', summary: 'Tokens are handed out.', duration: 1320000 },
    media: { id: 4, duration: 1320000, width: 1920, height: 1080, bitrate: 4000, file: '/data/tv/Simulated Lives/Season 01/Simulated Lives - S01E01 - Pilot.mkv', size: 660000000 },
  },
  {
    ratingKey: '2004',
    type: 'episode',
    sectionId: 2,
    title: 'The Restart',
    parentRatingKey: '2002',
    index: 2,
    addedAt: CREATED_AT + 500,
    attrs: { year: 2024, originallyAvailableAt: '2024-01-15', contentRating: 'TV-PG', summary: 'Every token dies at once.', duration: 1380000 },
    media: { id: 5, duration: 1380000, width: 1920, height: 1080, bitrate: 4000, file: '/data/tv/Simulated Lives/Season 01/Simulated Lives - S01E02 - The Restart.mkv', size: 690000000 },
  },
]

const BY_KEY = new Map(ITEMS.map((i) => [i.ratingKey, i]))

/** Ordering/paging of a list answer: PMS's `X-Plex-Container-Start`/`-Size` (header or query). */
export interface Page {
  start?: number
  size?: number
}

/** What a GET asks for, as far as the media endpoints care. */
export interface MediaRequest {
  path: string
  query: URLSearchParams
  /** A header's value (lower-case name). */
  header: (name: string) => string | undefined
  playback: Playback | undefined
}

/**
 * The answer to a GET on one of the media endpoints: a container, an error status (400 for a
 * malformed argument, 404 for an unknown id), or undefined when the path is none of them.
 */
export function mediaAnswer (r: MediaRequest): Node | number | undefined {
  const { path, query: q } = r
  switch (path) {
    // What `/` lists besides the library: an idle server has no activities, remote players or playlists.
    case '/activities':
    case '/clients':
    case '/playlists':
      return container({ size: 0 })
    case '/library':
      return libraryRoot()
    case '/library/sections':
    case '/library/sections/all':
      return librarySections()
    case '/library/onDeck':
      return onDeck()
    case '/status/sessions':
      return sessions(r.playback)
    case '/hubs/search': {
      const query = q.get('query')
      const limit = intParam(q.get('limit'))
      const sectionId = intParam(q.get('sectionId'))
      if (query === null || query === '' || limit === null || sectionId === null) return 400
      return searchHubs(query, { limit, sectionId })
    }
  }
  // Every X-Plex-* header may come as a query argument instead (§1).
  const arg = (name: string): string | undefined => r.header(name.toLowerCase()) ?? q.get(name) ?? undefined
  const start = intParam(arg('X-Plex-Container-Start'))
  const size = intParam(arg('X-Plex-Container-Size'))
  if (start === null || size === null) return 400
  const page = { start, size }
  if (path === '/library/recentlyAdded') return recentlyAdded(page)
  let m = /^\/library\/sections\/([^/]+)(?:\/(all|recentlyAdded))?$/.exec(path)
  if (m !== null) {
    const id = decodePart(m[1])
    if (id === undefined) return 400
    if (m[2] === undefined) return sectionDetails(id)
    if (m[2] === 'recentlyAdded') return sectionRecentlyAdded(id, page)
    const type = intParam(q.get('type'))
    if (type === null) return 400
    return sectionItems(id, type, page)
  }
  m = /^\/library\/metadata\/([^/]+)(\/children)?$/.exec(path)
  if (m !== null) {
    const ids = decodePart(m[1])
    if (ids === undefined) return 400
    return m[2] === undefined ? metadata(ids) : children(ids, page)
  }
  return undefined
}

/** A `PlaySessionStateNotification` entry of a `playing` notification. */
export function playSessionState (p: Playback, state: PlaybackState | 'stopped'): Record<string, unknown> {
  const item = BY_KEY.get(p.ratingKey)
  return {
    sessionKey: p.sessionKey,
    clientIdentifier: SIM_PLAYER.machineIdentifier,
    guid: item === undefined ? '' : guidOf(item),
    ratingKey: p.ratingKey,
    url: '',
    key: item === undefined ? '' : keyOf(item),
    viewOffset: p.viewOffset,
    playQueueID: 1,
    playQueueItemID: 1,
    state,
  }
}

/** A movie or an episode: what a session can play. */
export function playable (ratingKey: string): boolean {
  const item = BY_KEY.get(ratingKey)
  return item !== undefined && (item.type === 'movie' || item.type === 'episode')
}

/** `GET /library`: the library's own directory. */
function libraryRoot (): Node {
  const dirs: Array<[string, string]> = [['sections', 'Library Sections'], ['recentlyAdded', 'Recently Added Content'], ['onDeck', 'On Deck Content']]
  return container({
    size: dirs.length,
    allowSync: false,
    art: '/:/resources/library-art.jpg',
    content: '',
    identifier: IDENTIFIER,
    mediaTagPrefix: MEDIA_TAG_PREFIX,
    mediaTagVersion: MEDIA_TAG_VERSION,
    title1: 'Plex Library',
    title2: '',
  }, dirs.map(([key, title]) => ({ tag: 'Directory', attrs: { key, title } })))
}

/** `GET /library/sections` and `/library/sections/all`. */
function librarySections (): Node {
  return container({ size: SECTIONS.length, allowSync: false, identifier: IDENTIFIER, mediaTagPrefix: MEDIA_TAG_PREFIX, mediaTagVersion: MEDIA_TAG_VERSION, title1: 'Plex Library' }, SECTIONS.map((s) => ({
    tag: 'Directory',
    attrs: {
      allowSync: true,
      art: `/:/resources/${s.type}-fanart.jpg`,
      composite: `/library/sections/${s.id}/composite/${CREATED_AT}`,
      filters: true,
      refreshing: false,
      thumb: `/:/resources/${s.type}.png`,
      key: String(s.id),
      type: s.type,
      title: s.title,
      agent: s.agent,
      scanner: s.scanner,
      language: 'en-US',
      uuid: s.uuid,
      updatedAt: CREATED_AT,
      createdAt: CREATED_AT,
      scannedAt: CREATED_AT,
      content: true,
      directory: true,
      contentChangedAt: 1000 + s.id,
      // `hidden` is left out: the spec's versions disagree on its type (an integer in the
      // 2024 description, a boolean in the SDK generated from the current one).
    },
    children: [{ tag: 'Location', attrs: { id: s.id, path: s.path } }],
  })))
}

/** `GET /library/sections/{id}`: the section's own listings (only those the simulator serves). */
function sectionDetails (id: string): Node | undefined {
  const s = section(id)
  if (s === undefined) return undefined
  const dirs: Array<[string, string]> = [['all', s.allTitle], ['recentlyAdded', 'Recently Added']]
  return container({
    size: dirs.length,
    allowSync: false,
    art: `/:/resources/${s.type}-fanart.jpg`,
    content: 'secondary',
    identifier: IDENTIFIER,
    librarySectionID: s.id,
    mediaTagPrefix: MEDIA_TAG_PREFIX,
    mediaTagVersion: MEDIA_TAG_VERSION,
    thumb: `/:/resources/${s.type}.png`,
    title1: s.title,
    viewGroup: 'secondary',
    viewMode: 65592,
  }, dirs.map(([key, title]) => ({ tag: 'Directory', attrs: { key, title } })))
}

/**
 * `GET /library/sections/{id}/all`: the section's top-level items (movies, shows), or those of
 * `type` (`?type=4`: every episode of a TV section). Undefined for an unknown section.
 */
function sectionItems (id: string, type: number | undefined, page: Page): Node | undefined {
  const s = section(id)
  if (s === undefined) return undefined
  const wanted = type ?? TYPE_NUMBER[s.type]
  const items = ITEMS.filter((i) => i.sectionId === s.id && TYPE_NUMBER[i.type] === wanted)
  return list(sectionAttrs(s, { title2: s.allTitle, viewGroup: typeName(wanted) ?? s.type, viewMode: 65592 }), items, page)
}

/** `GET /library/sections/{id}/recentlyAdded`: the section's playable items, newest first. */
function sectionRecentlyAdded (id: string, page: Page): Node | undefined {
  const s = section(id)
  if (s === undefined) return undefined
  return list(sectionAttrs(s, { title2: 'Recently Added', mixedParents: true }), newestPlayable(s.id), page)
}

/** `GET /library/recentlyAdded`: every section's playable items, newest first. */
function recentlyAdded (page: Page): Node {
  return list({ allowSync: false, identifier: IDENTIFIER, mediaTagPrefix: MEDIA_TAG_PREFIX, mediaTagVersion: MEDIA_TAG_VERSION, mixedParents: true }, newestPlayable(), page)
}

/** `GET /library/onDeck`: nothing is half-watched on a server nobody watches. */
function onDeck (): Node {
  return container({ size: 0, allowSync: false, identifier: IDENTIFIER, mediaTagPrefix: MEDIA_TAG_PREFIX, mediaTagVersion: MEDIA_TAG_VERSION, mixedParents: true })
}

/**
 * `GET /library/metadata/{ids}`: one item or a comma-separated list, in the order asked; unknown
 * ids are left out, and none known is undefined (404).
 */
function metadata (ids: string): Node | undefined {
  const items = ids.split(',').map((id) => BY_KEY.get(id.trim())).filter((i) => i !== undefined)
  const [first] = items
  if (first === undefined) return undefined
  const s = SECTIONS.find((x) => x.id === first.sectionId) as Section
  return container({ size: items.length, ...sectionAttrs(s, {}) }, items.map((i) => itemNode(i)))
}

/** `GET /library/metadata/{id}/children`: a show's seasons, a season's episodes, nothing under a movie. */
function children (id: string, page: Page): Node | undefined {
  const parent = BY_KEY.get(id)
  if (parent === undefined) return undefined
  const s = SECTIONS.find((x) => x.id === parent.sectionId) as Section
  const items = ITEMS.filter((i) => i.parentRatingKey === parent.ratingKey)
  return list(sectionAttrs(s, {
    key: parent.ratingKey,
    parentIndex: parent.index ?? 1,
    parentTitle: parent.title,
    title1: parent.title,
    title2: '',
    viewGroup: parent.type === 'show' ? 'season' : 'episode',
  }), items, page)
}

/**
 * `GET /hubs/search?query=`: one hub per media type, each with the titles containing the query
 * (case-insensitive), at most `limit` per hub; empty hubs are listed too, as PMS does.
 */
function searchHubs (query: string, opts: { limit?: number, sectionId?: number }): Node {
  const q = query.toLowerCase()
  const hubs: Array<[ItemType, string]> = [['movie', 'Movies'], ['show', 'Shows'], ['episode', 'Episodes']]
  return container({ size: hubs.length }, hubs.map(([type, title]) => {
    const all = ITEMS.filter((i) => i.type === type && i.title.toLowerCase().includes(q) && (opts.sectionId === undefined || i.sectionId === opts.sectionId))
    const found = opts.limit === undefined ? all : all.slice(0, opts.limit)
    return {
      tag: 'Hub',
      attrs: {
        title,
        type,
        hubIdentifier: type,
        context: `hub.${type}`,
        size: found.length,
        more: found.length < all.length,
        style: 'shelf',
        ...(found.length > 0 ? { hubKey: `/library/metadata/${found.map((i) => i.ratingKey).join(',')}` } : {}),
      },
      children: found.map((i) => itemNode(i)),
    }
  }))
}

/** `GET /status/sessions`: empty, or the one playback with its user, player and session. */
function sessions (playback: Playback | undefined): Node {
  const item = playback === undefined ? undefined : BY_KEY.get(playback.ratingKey)
  if (playback === undefined || item === undefined) return container({ size: 0 })
  const node = itemNode(item, { sessionKey: playback.sessionKey, viewOffset: playback.viewOffset })
  node.children = [
    ...(node.children ?? []),
    { tag: 'User', single: true, attrs: { id: '1', thumb: 'https://plex.tv/users/0000000000000001/avatar', title: 'sim-owner' } },
    { tag: 'Player', single: true, attrs: { ...SIM_PLAYER, state: playback.state } },
    { tag: 'Session', single: true, attrs: { id: `pms-sim-session-${playback.sessionKey}`, bandwidth: (item.media?.bitrate ?? 0) + 200, location: 'lan' } },
  ]
  return container({ size: 1 }, [node])
}

function container (attrs: Attrs, children: Node[] = []): Node {
  return { tag: 'MediaContainer', attrs, children }
}

function section (id: string): Section | undefined {
  return SECTIONS.find((s) => String(s.id) === id)
}

function sectionAttrs (s: Section, extra: Attrs): Attrs {
  return {
    allowSync: true,
    art: `/:/resources/${s.type}-fanart.jpg`,
    identifier: IDENTIFIER,
    librarySectionID: s.id,
    librarySectionTitle: s.title,
    librarySectionUUID: s.uuid,
    mediaTagPrefix: MEDIA_TAG_PREFIX,
    mediaTagVersion: MEDIA_TAG_VERSION,
    thumb: `/:/resources/${s.type}.png`,
    title1: s.title,
    ...extra,
  }
}

/** A page of `items`: `offset` and `totalSize` appear when a page was asked for, as PMS writes them. */
function list (attrs: Attrs, items: Item[], page: Page): Node {
  const paged = page.start !== undefined || page.size !== undefined
  const start = page.start ?? 0
  const shown = items.slice(start, page.size === undefined ? undefined : start + page.size)
  return container({ size: shown.length, ...(paged ? { offset: start, totalSize: items.length } : {}), ...attrs }, shown.map((i) => itemNode(i)))
}

function newestPlayable (sectionId?: number): Item[] {
  return ITEMS.filter((i) => (i.type === 'movie' || i.type === 'episode') && (sectionId === undefined || i.sectionId === sectionId))
    .sort((a, b) => b.addedAt - a.addedAt)
}

function typeName (n: number): ItemType | undefined {
  return (Object.keys(TYPE_NUMBER) as ItemType[]).find((t) => TYPE_NUMBER[t] === n)
}

function keyOf (item: Item): string {
  // A show's or season's key lists its children; a movie's or episode's is the item itself.
  return item.type === 'show' || item.type === 'season' ? `/library/metadata/${item.ratingKey}/children` : `/library/metadata/${item.ratingKey}`
}

function guidOf (item: Item): string {
  return `plex://${item.type}/5d776b${item.ratingKey.padStart(18, '0')}`
}

/** An item as PMS lists it: `<Video>` (movie, episode) or `<Directory>` (show, season) in XML, `Metadata` in JSON. */
function itemNode (item: Item, extra: Attrs = {}): Node {
  const s = SECTIONS.find((x) => x.id === item.sectionId) as Section
  const parent = item.parentRatingKey === undefined ? undefined : BY_KEY.get(item.parentRatingKey)
  const grandparent = parent?.parentRatingKey === undefined ? undefined : BY_KEY.get(parent.parentRatingKey)
  const attrs: Attrs = {
    ratingKey: item.ratingKey,
    key: keyOf(item),
    guid: guidOf(item),
    type: item.type,
    title: item.title,
    librarySectionID: s.id,
    librarySectionKey: `/library/sections/${s.id}`,
    librarySectionTitle: s.title,
    ...(item.index !== undefined ? { index: item.index } : {}),
    ...item.attrs,
    thumb: `/library/metadata/${item.ratingKey}/thumb/${CREATED_AT}`,
    art: `/library/metadata/${grandparent?.ratingKey ?? parent?.ratingKey ?? item.ratingKey}/art/${CREATED_AT}`,
    addedAt: item.addedAt,
    updatedAt: CREATED_AT,
    ...extra,
  }
  if (parent !== undefined) {
    Object.assign(attrs, {
      parentRatingKey: parent.ratingKey,
      parentKey: `/library/metadata/${parent.ratingKey}`,
      parentTitle: parent.title,
      parentIndex: parent.index ?? 1,
      parentThumb: `/library/metadata/${parent.ratingKey}/thumb/${CREATED_AT}`,
    })
  }
  if (grandparent !== undefined) {
    Object.assign(attrs, {
      grandparentRatingKey: grandparent.ratingKey,
      grandparentKey: `/library/metadata/${grandparent.ratingKey}`,
      grandparentTitle: grandparent.title,
      grandparentThumb: `/library/metadata/${grandparent.ratingKey}/thumb/${CREATED_AT}`,
    })
  }
  if (item.type === 'show' || item.type === 'season') {
    const kids = ITEMS.filter((i) => i.parentRatingKey === item.ratingKey)
    const leaves = item.type === 'season' ? kids : kids.flatMap((k) => ITEMS.filter((i) => i.parentRatingKey === k.ratingKey))
    Object.assign(attrs, { childCount: kids.length, leafCount: leaves.length, viewedLeafCount: 0 })
  }
  const children: Node[] = []
  if (item.media !== undefined) children.push(mediaNode(item.media))
  for (const tag of item.genres ?? []) children.push({ tag: 'Genre', attrs: { tag } })
  for (const tag of item.directors ?? []) children.push({ tag: 'Director', attrs: { tag } })
  return { tag: item.type === 'movie' || item.type === 'episode' ? 'Video' : 'Directory', jsonTag: 'Metadata', attrs, children }
}

function mediaNode (m: Media): Node {
  const container = m.file.endsWith('.mkv') ? 'mkv' : 'mp4'
  return {
    tag: 'Media',
    attrs: {
      id: m.id,
      duration: m.duration,
      bitrate: m.bitrate,
      width: m.width,
      height: m.height,
      aspectRatio: Math.round((m.width / m.height) * 100) / 100,
      audioChannels: 2,
      audioCodec: 'aac',
      videoCodec: 'h264',
      videoResolution: m.height >= 1080 ? '1080' : m.height >= 720 ? '720' : 'sd',
      container,
      videoFrameRate: '24p',
      videoProfile: 'main',
    },
    children: [{
      tag: 'Part',
      attrs: { id: m.id, key: `/library/parts/${m.id}/${CREATED_AT}/file.${container}`, duration: m.duration, file: m.file, size: m.size, container, videoProfile: 'main' },
    }],
  }
}

/** The size in bytes of a media part of the canned library (by part id), if there is one. */
export function partSize (id: number): number | undefined {
  return ITEMS.find((i) => i.media?.id === id)?.media?.size
}

/** Undefined when absent, null when not a non-negative integer (a 400). */
function intParam (raw: string | null | undefined): number | undefined | null {
  if (raw === null || raw === undefined || raw === '') return undefined
  return /^\d{1,9}$/.test(raw) ? Number(raw) : null
}

/** A path segment without its %-escapes; undefined when they are malformed. */
function decodePart (raw: string | undefined): string | undefined {
  if (raw === undefined) return undefined
  try {
    return decodeURIComponent(raw)
  } catch {
    return undefined
  }
}
/* c8 ignore stop */
