import t from 'tap'
import { readFileSync } from 'node:fs'
import { canonicalPath } from '../src/proxy/canonical-path.ts'
import { hardDenyMarkdown, isPresetName, KOMETA_PREF_KEYS, PRESET_NAMES, PRESETS, policyFrom, presetMarkdown, type PresetName, presetRules } from '../src/proxy/presets.ts'
import { evaluate, type ProxyPolicy } from '../src/proxy/rules.ts'

function policy (preset: PresetName): ProxyPolicy {
  const p = policyFrom({ preset })
  if ('problems' in p) throw new Error(p.problems.join('; '))
  return p.policy
}

/** `METHOD /target?query` → the decision's reason, as the listener will judge it. */
function reason (pol: ProxyPolicy, request: string): string {
  const [method = '', target = ''] = request.split(' ')
  const [path = '', query = ''] = target.split('?')
  const c = canonicalPath(path)
  if (!c.ok) return 'refused'
  return evaluate(pol, { method, path: c.path, queryKeys: query === '' ? [] : query.split('&').map((p) => p.split('=')[0] ?? '') }).reason
}

// What each tool does (and must not do) through its preset.
const EXPECTED: Record<PresetName, Array<[string, string]>> = {
  dashboard: [
    ['GET /status/sessions', 'allow'],
    ['GET /library/sections/2/all', 'allow'],
    ['GET /hubs/home/recentlyAdded', 'allow'],
    ['GET /photo/:/transcode', 'allow'],
    ['HEAD /library/metadata/12/thumb/1700000000', 'allow'],
    ['GET /library/sections/2/refresh', 'default-deny'],
    ['GET /status/sessions/terminate', 'default-deny'],
    ['PUT /library/metadata/12', 'default-deny'],
    ['GET /accounts', 'default-deny'],
    ['GET /myplex/account', 'hard-deny'],
  ],
  read: [
    ['GET /status/sessions', 'allow'],
    ['GET /library/sections/2', 'allow'],
    ['GET /library/sections/2/genre', 'allow'],
    ['GET /library/metadata/12/children', 'allow'],
    ['GET /library/metadata/1,2,3', 'allow'],
    ['GET /hubs/sections/2', 'allow'],
    ['GET /:/websockets/notifications', 'allow'],
    ['GET /system/bundle/media/flags/contentRating/us/PG.png', 'allow'],
    ['GET /library/sections/2/refresh', 'default-deny'],
    ['GET /library/sections/2/analyze', 'default-deny'],
    ['GET /library/sections/2/emptyTrash', 'default-deny'],
    ['GET /library/sections/2/indexes', 'default-deny'],
    ['GET /library/metadata/12/refresh', 'default-deny'],
    ['GET /status/sessions/terminate', 'default-deny'],
    ['DELETE /library/metadata/12', 'default-deny'],
    ['PUT /library/sections/2/all', 'default-deny'],
    ['GET /:/prefs', 'default-deny'],
    ['GET /accounts', 'default-deny'],
    ['GET /library/parts/1/2/file.mkv', 'default-deny'],
    ['GET /security/token', 'hard-deny'],
    ['GET /myplex/account', 'hard-deny'],
    ['GET /system/agents', 'hard-deny'],
  ],
  monitor: [
    ['GET /status/sessions', 'allow'],
    ['GET /:/prefs', 'allow'],
    ['GET /accounts', 'allow'],
    ['GET /devices', 'allow'],
    ['GET /myplex/account', 'allow'],
    ['GET /statistics/bandwidth', 'allow'],
    ['GET /myplex/Account', 'hard-deny'],
    ['PUT /myplex/refreshReachability', 'hard-deny'],
    ['PUT /updater/check', 'hard-deny'],
    ['PUT /:/prefs?FriendlyName=x', 'hard-deny'],
    ['GET /status/sessions/terminate', 'default-deny'],
    ['GET /security/resources', 'hard-deny'],
  ],
  'library-notify': [
    ['GET /identity', 'allow'],
    ['GET /library/sections', 'allow'],
    ['GET /library/sections/2/refresh', 'allow'],
    ['GET /library/sections/2/refresh?path=/tv/Show', 'allow'],
    ['PUT /library/metadata/12/refresh', 'allow'],
    ['GET /library/sections/2/all?guid=x', 'allow'],
    ['GET /library/sections/2/analyze', 'default-deny'],
    ['GET /library/metadata/12', 'default-deny'],
    ['DELETE /library/metadata/12', 'default-deny'],
    ['GET /status/sessions', 'default-deny'],
    ['PUT /:/prefs?FSEventLibraryUpdatesEnabled=1', 'hard-deny'],
  ],
  'metadata-editor': [
    ['GET /library/sections/2/all', 'allow'],
    ['PUT /library/sections/2/all?type=1&id=12&title.value=x', 'allow'],
    ['PUT /library/metadata/12', 'allow'],
    ['PUT /library/metadata/12/prefs', 'allow'],
    ['POST /library/metadata/12/posters?url=https://image.example/p.jpg', 'allow'],
    ['PUT /library/metadata/12/poster', 'allow'],
    ['POST /library/collections', 'allow'],
    ['PUT /library/collections/40/items', 'allow'],
    ['DELETE /library/collections/40/items/12', 'allow'],
    ['PUT /:/prefs?DatabaseCacheSize=1024', 'allow'],
    ['PUT /:/prefs?cinemaTrailersPrerollID=/prerolls/a.mp4', 'allow'],
    ['PUT /:/prefs?DatabaseCacheSize=1024&cinemaTrailersPrerollID=x&X-Plex-Token=k', 'allow'],
    ['PUT /:/prefs?DatabaseCacheSize=1024&allowedNetworks=0.0.0.0/0', 'hard-deny'],
    ['PUT /:/prefs?FriendlyName=x', 'hard-deny'],
    ['DELETE /library/metadata/12', 'default-deny'],
    ['GET /library/sections/2/refresh', 'default-deny'],
    ['DELETE /library/sections/2', 'default-deny'],
    ['GET /butler/BackupDatabase', 'hard-deny'],
  ],
  stream: [
    ['GET /library/parts/1/1700000000/file.mkv', 'allow'],
    ['HEAD /library/parts/1/1700000000/file.mkv', 'allow'],
    ['GET /video/:/transcode/universal/start.m3u8', 'allow'],
    ['GET /video/:/transcode/universal/session/abc/base/index.m3u8', 'allow'],
    ['GET /photo/:/transcode', 'allow'],
    ['PUT /library/parts/1', 'default-deny'],
    ['GET /library/sections', 'default-deny'],
    ['GET /video/:/transcode/universal/../../../../security/token', 'hard-deny'],
  ],
  full: [
    ['GET /library/sections/2/refresh', 'allow'],
    ['DELETE /library/metadata/12', 'allow'],
    ['GET /status/sessions/terminate', 'allow'],
    ['GET /:/prefs', 'allow'],
    ['PUT /:/prefs?DatabaseCacheSize=1', 'hard-deny'],
    ['GET /security/token', 'hard-deny'],
    ['GET /myplex/account', 'hard-deny'],
    ['POST /updater/apply', 'hard-deny'],
    ['GET /diagnostics/databases', 'hard-deny'],
    ['GET /log', 'hard-deny'],
  ],
}

t.test('each preset lets its tool do its work and nothing that writes beyond it', async (t) => {
  t.same(Object.keys(EXPECTED).sort(), [...PRESET_NAMES].sort(), 'every preset has expectations')
  for (const name of PRESET_NAMES) {
    const pol = policy(name)
    for (const [request, expected] of EXPECTED[name]) t.equal(reason(pol, request), expected, `${name}: ${request}`)
  }
})

t.test('preset structure: includes name presets, no preset lists a rule twice, GET-writing paths stay out of read presets', async (t) => {
  for (const name of PRESET_NAMES) {
    const p = PRESETS[name]
    for (const inc of 'includes' in p ? p.includes : []) t.ok(isPresetName(inc), `${name} includes ${inc}`)
    const rules = presetRules(name).allow
    t.equal(new Set(rules.map((r) => `${String(r.methods)} ${r.path}`)).size, rules.length, `${name}: no repeats`)
  }
  // The GETs that change state (docs/proxy.md): refused by every preset but the two that exist for them.
  const writingGets = ['/library/sections/1/refresh', '/library/sections/1/analyze', '/library/sections/1/emptyTrash', '/library/sections/1/indexes',
    '/library/sections/1/intros', '/status/sessions/terminate', '/library/metadata/1/refresh', '/library/metadata/1/analyze', '/library/optimize',
    '/library/clean/bundles', '/library/caches']
  for (const name of PRESET_NAMES.filter((n) => n !== 'full')) {
    for (const path of writingGets) {
      const expected = name === 'library-notify' && path === '/library/sections/1/refresh' ? 'allow' : 'default-deny'
      t.equal(reason(policy(name), `GET ${path}`), expected, `${name}: GET ${path}`)
    }
  }
  t.same(KOMETA_PREF_KEYS, ['DatabaseCacheSize', 'cinemaTrailersPrerollID'])
})

t.test('docs/proxy.md carries the hard-deny table and every preset list exactly as the code defines them', async (t) => {
  const doc = readFileSync('docs/proxy.md', 'utf8')
  const blocks = [hardDenyMarkdown(), ...PRESET_NAMES.map(presetMarkdown)]
  for (const block of blocks) t.ok(doc.includes(block), `docs/proxy.md must contain, verbatim:\n${block}`)
  t.equal((doc.match(/^### `/gm) ?? []).length, PRESET_NAMES.length, 'and no preset the code does not have')
})
