import {
  builtInRule, type CompiledRule, compileRule, DEFAULT_KEY_LIMITS, describeRule, HARD_DENY, type ProxyKeyLimits, type ProxyMode, type ProxyPolicy,
  type ResponseFilter, type RuleSpec,
} from './rules.ts'

/**
 * The presets a client's `proxy.preset` names: allow lists for the tools people run beside PMS
 * (docs/proxy.md lists every rule; a test checks that the page and this file agree). On PMS a GET
 * is not read-only (`GET /library/sections/N/refresh` scans a library, `GET
 * /status/sessions/terminate` stops a stream), so "read" presets list paths, never "every GET".
 * Anything a preset leaves out is refused (default deny) unless the client's own `allow` adds it.
 */

export interface PresetSpec {
  /** What the preset is for, one line (docs and `ptb`). */
  summary: string
  /** Presets whose rules this one includes (checked by the preset test). */
  includes?: readonly string[]
  allow: readonly RuleSpec[]
  /** Extra response filters; the built-in token filters (rules.ts) apply to every client anyway. */
  responseFilters?: readonly ResponseFilter[]
}

/** `'GET /a'`, `'GET,PUT /a'`, `'* /a'` → a rule. */
function r (text: string, query?: readonly string[]): RuleSpec {
  const [methods, path] = text.split(' ')
  if (methods === undefined || path === undefined) throw new Error(`preset rule "${text}" is not "<methods> <path>"`)
  return { methods: methods === '*' ? '*' : methods.split(','), path, ...(query === undefined ? {} : { query: { keys: query } }) }
}

/**
 * The two server settings Kometa writes: `DatabaseCacheSize` (its `plex: db_cache` option) and
 * `cinemaTrailersPrerollID` (pre-roll videos). A client needing others adds its own allow rule
 * `{ methods: [PUT], path: /:/prefs, query: { keys: [...] } }`.
 */
export const KOMETA_PREF_KEYS = ['DatabaseCacheSize', 'cinemaTrailersPrerollID'] as const

/** Section listings a reader needs (not refresh, analyze, emptyTrash, indexes or intros, which write). */
const SECTION_READS = '{all,recentlyAdded,onDeck,newest,unwatched,recentlyViewed,firstCharacter,collections,genre,year,decade,label,' +
  'contentRating,resolution,director,actor,country,studio,folder,search,sorts,filters,categories,location,albums,prefs,common}'

export const PRESETS = {
  dashboard: {
    summary: 'Homepage and Organizr widgets: sessions, libraries and their counts, recently added, playlists, search, posters.',
    allow: [
      r('GET /'),
      r('GET /identity'),
      r('GET /status/sessions'),
      r('GET /library/sections'),
      r('GET /library/sections/*/all'),
      r('GET /library/recentlyAdded'),
      r('GET /library/onDeck'),
      r('GET /hubs/home/{recentlyAdded,onDeck,continueWatching}'),
      r('GET /playlists'),
      r('GET /playlists/*/items'),
      r('GET /search'),
      r('GET /hubs/search'),
      r('GET /photo/:/transcode'),
      r('GET /library/metadata/*/{thumb,art}'),
      r('GET /library/metadata/*/{thumb,art}/*'),
    ],
  },
  read: {
    summary: 'General read-only access (Overseerr-style tools, scripts): libraries, items, collections, hubs, sessions, event feeds.',
    includes: ['dashboard'],
    allow: [
      r('GET /servers'),
      r('GET /library/sections/*'),
      r(`GET /library/sections/*/${SECTION_READS}`),
      r('GET /library/sections/*/firstCharacter/*'),
      r('GET /library/metadata/*'),
      r('GET /library/metadata/*/{children,grandchildren,allLeaves,related,similar,extras,posters,arts}'),
      r('GET /library/metadata/*/{thumb,art,banner,theme,clearLogo}/*'),
      r('GET /library/collections/*'),
      r('GET /library/collections/*/{children,items}'),
      r('GET /hubs'),
      r('GET /hubs/**'),
      r('GET /playlists/*'),
      r('GET /status/sessions/history/all'),
      r('GET /transcode/sessions'),
      r('GET /activities'),
      r('GET /clients'),
      r('GET /media/providers'),
      r('GET /system/bundle/media/flags/**'),
      r('GET /:/websockets/notifications'),
      r('GET /:/websocket/notifications'),
      r('GET /:/eventsource/notifications'),
    ],
  },
  monitor: {
    summary: 'Tautulli: read, plus server settings (read), accounts, devices and the owner\'s account with its authToken removed.',
    includes: ['read'],
    allow: [
      r('GET /:/prefs'),
      r('GET /accounts'),
      r('GET /accounts/*'),
      r('GET /devices'),
      r('GET /devices/*'),
      r('GET /myplex/account'),
      r('GET /statistics/*'),
    ],
    responseFilters: [{ path: '/myplex/account', removeAttributes: ['authToken'] }],
  },
  'library-notify': {
    summary: 'Sonarr and Radarr "Plex Media Server" connection: identity, settings (read), sections, and section and item refresh.',
    allow: [
      r('GET /'),
      r('GET /identity'),
      r('GET /:/prefs'),
      r('GET /library/sections'),
      r('GET /library/sections/*/all'),
      r('GET /library/sections/*/refresh'),
      r('PUT /library/metadata/*/refresh'),
    ],
  },
  'metadata-editor': {
    summary: 'Kometa: read, plus metadata edits, collections, playlists, poster/art/theme uploads and its two server settings. Uploads by URL (`?url=https://image.tmdb.org/…`) also need the image hosts in the client\'s `allowUrlHosts`.',
    includes: ['read'],
    allow: [
      r('PUT /library/sections/*/all'),
      r('PUT /library/metadata/*'),
      r('PUT /library/metadata/*/{prefs,refresh,poster,art}'),
      r('POST /library/metadata/*/{posters,arts,themes}'),
      r('POST /library/collections'),
      r('PUT /library/collections/*/items'),
      r('DELETE /library/collections/*/items/*'),
      r('PUT /library/collections/*/items/*/move'),
      r('POST /playlists'),
      r('PUT /playlists/*/items'),
      r('DELETE /playlists/*/items/*'),
      r('PUT /playlists/*/items/*/move'),
      r('PUT /:/prefs', KOMETA_PREF_KEYS),
    ],
  },
  stream: {
    summary: 'Players and downloaders: media parts, universal video transcode (HLS/DASH sessions), photo transcode.',
    allow: [
      r('GET /library/parts/**'),
      r('GET /video/:/transcode/universal/**'),
      r('GET /photo/:/transcode'),
    ],
  },
  full: {
    summary: 'Everything but the hard deny, for the rare tool that needs it; it still never receives a PMS token.',
    allow: [r('* /**')],
  },
} as const satisfies Record<string, PresetSpec>

export type PresetName = keyof typeof PRESETS
export const PRESET_NAMES = Object.keys(PRESETS) as PresetName[]

export function isPresetName (name: string): name is PresetName {
  return Object.hasOwn(PRESETS, name)
}

/** A preset's own rules and those it includes, in order, without repeats. */
export function presetRules (name: PresetName): { allow: RuleSpec[], responseFilters: ResponseFilter[] } {
  const allow: RuleSpec[] = []
  const responseFilters: ResponseFilter[] = []
  const seen = new Set<string>()
  const visit = (n: PresetName): void => {
    const p: PresetSpec = PRESETS[n]
    for (const inc of p.includes ?? []) if (isPresetName(inc)) visit(inc)
    for (const rule of p.allow) {
      const key = describeRule(rule)
      if (!seen.has(key)) { seen.add(key); allow.push(rule) }
    }
    responseFilters.push(...(p.responseFilters ?? []))
  }
  visit(name)
  return { allow, responseFilters }
}

/** The compiled rules of each preset, made once. */
const compiledPresets = new Map<PresetName, { allow: CompiledRule[], responseFilters: ResponseFilter[] }>(PRESET_NAMES.map((n) => {
  const { allow, responseFilters } = presetRules(n)
  return [n, { allow: allow.map((rule) => builtInRule(rule, 'allow', `preset ${n}`)), responseFilters }]
}))

/** A client's `proxy` section as written in the config file (checked by `policyFrom`). */
export interface ProxySpec {
  preset?: string
  allow?: readonly unknown[]
  deny?: readonly unknown[]
  mode?: ProxyMode
  /** Hosts a nested `url=` may name besides PMS: `image.tmdb.org`, `*.example.com`. */
  allowUrlHosts?: readonly unknown[]
  limits?: Partial<ProxyKeyLimits>
}

const LABEL = '[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?'
const HOST_NAME = new RegExp(`^${LABEL}(?:\\.${LABEL})+$`)

/** What is wrong with an `allowUrlHosts` entry, or undefined; entries are compared lowercased. */
function urlHostProblem (entry: unknown): string | undefined {
  if (typeof entry !== 'string') return 'must be a host name'
  const host = entry.toLowerCase()
  const wildcard = host.startsWith('*.')
  const name = wildcard ? host.slice(2) : host
  if (!HOST_NAME.test(name)) {
    return `"${entry}" is not a host name with a domain (e.g. image.tmdb.org or *.example.com; no scheme, port, path or bare *)`
  }
  if (wildcard && /^[\d.]+$/.test(name)) return `"${entry}": a wildcard needs a domain name, not an address`
  return undefined
}

/** Whether a host (as `URL.hostname` gives it) is on an `allowUrlHosts` list. */
export function urlHostAllowed (allowed: readonly string[], hostname: string): boolean {
  const h = hostname.toLowerCase().replace(/\.$/, '')
  for (const a of allowed) {
    if (a.startsWith('*.') ? h.endsWith(a.slice(1)) && h.length > a.length - 1 : h === a) return true
  }
  return false
}

/**
 * Builds a client's policy: its own allow rules, then its preset's; its deny rules. Problems are
 * collected (each names the field: `proxy.allow[2].path: …`), so the config loader can report
 * them all at once; with any problem there is no policy.
 */
export function policyFrom (spec: ProxySpec, defaults: ProxyKeyLimits = DEFAULT_KEY_LIMITS): { policy: ProxyPolicy } | { problems: string[] } {
  const problems: string[] = []
  let preset: { allow: CompiledRule[], responseFilters: ResponseFilter[] } | undefined
  if (spec.preset !== undefined) {
    if (isPresetName(spec.preset)) preset = compiledPresets.get(spec.preset)
    else problems.push(`proxy.preset: unknown preset "${spec.preset}" (known: ${PRESET_NAMES.join(', ')})`)
  }
  const compile = (kind: 'allow' | 'deny'): CompiledRule[] => {
    const out: CompiledRule[] = []
    for (const [i, input] of (spec[kind] ?? []).entries()) {
      const c = compileRule(input, kind, `${kind}[${i}]`)
      if ('problem' in c) problems.push(`proxy.${kind}[${i}]: ${c.problem}`)
      else out.push(c.rule)
    }
    return out
  }
  const allow = compile('allow')
  const deny = compile('deny')
  if (spec.mode !== undefined && spec.mode !== 'enforce' && spec.mode !== 'shadow') problems.push('proxy.mode: must be enforce or shadow')
  const allowUrlHosts: string[] = []
  for (const [i, entry] of (spec.allowUrlHosts ?? []).entries()) {
    const problem = urlHostProblem(entry)
    if (problem !== undefined) problems.push(`proxy.allowUrlHosts[${i}]: ${problem}`)
    else allowUrlHosts.push(String(entry).toLowerCase())
  }
  if (problems.length > 0) return { problems }
  return {
    policy: {
      ...(spec.preset === undefined ? {} : { preset: spec.preset }),
      mode: spec.mode ?? 'enforce',
      deny,
      allow: [...allow, ...(preset?.allow ?? [])],
      responseFilters: preset?.responseFilters ?? [],
      allowUrlHosts,
      limits: { ...defaults, ...spec.limits },
    },
  }
}

/**
 * The Markdown of docs/proxy.md's preset lists and hard-deny table: the page carries exactly this
 * text, and test/proxy-presets.test.ts fails (printing the expected text) when code and page part.
 */
export function presetMarkdown (name: PresetName): string {
  const p: PresetSpec = PRESETS[name]
  const lines = [`### \`${name}\``, '', p.summary, '']
  if (p.includes !== undefined) lines.push(`Includes ${p.includes.map((n) => `\`${n}\``).join(', ')}, and:`, '')
  lines.push('```', ...p.allow.map(describeRule), '```')
  for (const f of p.responseFilters ?? []) lines.push('', `Answers of \`${f.path}\` lose ${f.removeAttributes.map((a) => `\`${a}\``).join(', ')}.`)
  return lines.join('\n')
}

export function hardDenyMarkdown (): string {
  const lines = ['| entry | methods and path | not covered | why |', '|---|---|---|---|']
  for (const h of HARD_DENY) {
    const rule = h.rule.label.replace(/^hard deny [^:]+: /, '')
    const except = h.except.map((e) => e.label.replace(/^hard deny [^:]+: /, '').replace(',HEAD', '')).join('; ') || '—'
    lines.push(`| ${h.id} | \`${rule}\` | ${except === '—' ? except : `\`${except}\``} | ${h.why}${h.needsQueryKeys ? ' (named only by a rule with `query.keys`)' : ''} |`)
  }
  return lines.join('\n')
}
