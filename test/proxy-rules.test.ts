import t from 'tap'
import fc from 'fast-check'
import { canonicalPath } from '../src/proxy/canonical-path.ts'
import { policyFrom, type ProxySpec } from '../src/proxy/presets.ts'
import {
  compileGlob, compileRule, type Decision, evaluate, type Glob, globMatches, HTTP_METHODS, type ProxyPolicy, responseAttributesToRemove,
  stripLogFilter,
} from '../src/proxy/rules.ts'

function glob (source: string, caseInsensitive = false): Glob {
  const g = compileGlob(source, { caseInsensitive })
  if ('problem' in g) throw new Error(`${source}: ${g.problem}`)
  return g.glob
}

function policy (spec: ProxySpec): ProxyPolicy {
  const p = policyFrom(spec)
  if ('problems' in p) throw new Error(p.problems.join('; '))
  return p.policy
}

/** Judges `METHOD /raw/target?query` as the listener will: canonicalise, then evaluate. */
function judge (pol: ProxyPolicy, request: string): Decision | 'refused' {
  const [method = '', target = ''] = request.split(' ')
  const q = target.indexOf('?')
  const c = canonicalPath(q < 0 ? target : target.slice(0, q))
  if (!c.ok) return 'refused'
  const queryKeys = q < 0 ? [] : target.slice(q + 1).split('&').map((p) => decodeURIComponent(p.split('=')[0] ?? ''))
  return evaluate(pol, { method, path: c.path, queryKeys })
}

const outcome = (d: Decision | 'refused'): string => d === 'refused' ? d : d.reason

t.test('glob syntax: * within a segment, ** across segments, /** also matches nothing, {a,b} alternatives', async (t) => {
  const cases: Array<[string, string, boolean]> = [
    ['/library/sections/*/all', '/library/sections/1/all', true],
    ['/library/sections/*/all', '/library/sections/1/2/all', false],
    ['/library/sections/*/all', '/library/sections/all', false],
    ['/library/sections/*/all', '/library/sections/1/allx', false],
    ['/library/parts/**', '/library/parts', true],
    ['/library/parts/**', '/library/parts/1/2/file.mkv', true],
    ['/library/parts/**', '/library/partsx', false],
    ['/library/parts/**', '/library/part', false],
    ['/butler**', '/butler', true],
    ['/butler**', '/butler/x/y', true],
    ['/butler**', '/butlerTask', true],
    ['/butler**', '/butle', false],
    ['/a/**/b', '/a/b', true],
    ['/a/**/b', '/a/x/y/b', true],
    ['/a/**/b', '/a/xb', false],
    ['/hubs/home/{recentlyAdded,onDeck}', '/hubs/home/onDeck', true],
    ['/hubs/home/{recentlyAdded,onDeck}', '/hubs/home/onDeckx', false],
    ['/hubs/home/{recentlyAdded,onDeck}', '/hubs/home/continueWatching', false],
    ['/library/metadata/*/thumb/*', '/library/metadata/12/thumb/1700000000', true],
    ['/library/metadata/*', '/library/metadata/1,2,3', true],
    ['/library/metadata/*', '/library/metadata/1/refresh', false],
    ['/log*', '/logs', true],
    ['/log*', '/log/x', false],
    ['/**', '/', true],
    ['/**', '/anything/at/all', true],
    ['/', '/', true],
    ['/', '/x', false],
    ['/*.m3u8', '/start.m3u8', true],
    ['/*/*', '/a/b', true],
    ['/*/*', '/a', false],
  ]
  for (const [pattern, path, expected] of cases) t.equal(globMatches(glob(pattern), path), expected, `${pattern} ${expected ? 'matches' : 'does not match'} ${path}`)
  t.ok(globMatches(glob('/Security/**', true), '/security/token'), 'a case-insensitive glob is lowercased (paths are lowercased by the caller)')
})

t.test('malformed patterns are refused with a reason', async (t) => {
  const bad: Array<[string, RegExp]> = [
    ['library', /must start with \//],
    ['/a//b', /empty segment/],
    ['/a/./b', /"\." segment/],
    ['/a/../b', /"\.\." segment/],
    ['/a/', /ends with \//],
    ['/a%2Fb', /contains "%"/],
    ['/a?b=1', /query\.keys/],
    ['/a;b', /contains ";"/],
    ['/a\\b', /contains "\\"/],
    ['/a b', /space or control/],
    ['/***', /"\*\*\*"/],
    ['/{a,b', /without "}"/],
    ['/a}', /without "{"/],
    ['/{a,}', /non-empty literals/],
    ['/{a/b,c}', /non-empty literals/],
    ['/{a*,c}', /non-empty literals/],
    ['/*/*/*/*/*/*/*/*/*', /more than 8 wildcards/],
    [`/${'a'.repeat(600)}`, /longer than 512/],
  ]
  for (const [pattern, expected] of bad) {
    const g = compileGlob(pattern)
    t.ok('problem' in g && expected.test(g.problem), `${pattern}: ${'problem' in g ? g.problem : 'accepted'}`)
  }
})

t.test('property: glob matching agrees with the equivalent regular expression', async (t) => {
  // Reference: the glob translated to a regular expression (fine for short inputs; the matcher
  // itself is linear so that a hostile path or pattern cannot make it backtrack).
  const token = fc.constantFrom('/', 'a', 'b', 'ab', '*', '**', '/**', '{a,b}', '.', ':')
  const pathChar = fc.constantFrom('/', 'a', 'b', '.', ':')
  const toRegex = (src: string): RegExp => {
    let re = ''
    for (let i = 0; i < src.length; i++) {
      if (src.startsWith('/**', i) && (i + 3 === src.length || src[i + 3] === '/')) { re += '(?:/.*)?'; i += 2 } else if (src.startsWith('**', i)) { re += '.*'; i++ } else if (src[i] === '*') re += '[^/]*'
      else if (src[i] === '{') { const end = src.indexOf('}', i); re += `(?:${src.slice(i + 1, end).split(',').join('|')})`; i = end } else re += src[i]!.replace(/[.]/g, '\\.')
    }
    return new RegExp(`^${re}$`, 's')
  }
  let compared = 0
  fc.assert(fc.property(fc.array(token, { minLength: 1, maxLength: 6 }), fc.array(pathChar, { maxLength: 12 }), (parts, chars) => {
    const src = `/${parts.join('')}`
    const g = compileGlob(src)
    if ('problem' in g) return true
    compared++
    const path = `/${chars.join('')}`
    return globMatches(g.glob, path) === toRegex(src).test(path)
  }), { numRuns: 4000 })
  t.ok(compared > 500, `${compared} valid patterns compared`)
})

t.test('rules from the config: methods normalised (GET brings HEAD), problems name the field', async (t) => {
  const ok = compileRule({ methods: ['get', 'Put'], path: '/library/metadata/*' }, 'allow', 'allow[0]')
  t.ok('rule' in ok && ok.rule.methods !== '*' && ok.rule.methods.join() === 'GET,HEAD,PUT')
  t.ok('rule' in ok && ok.rule.label === 'allow[0]: GET,HEAD,PUT /library/metadata/*')
  const star = compileRule({ methods: ['GET', '*'], path: '/x' }, 'deny', 'deny[0]')
  t.ok('rule' in star && star.rule.methods === '*', 'a * among methods means all')
  const problem = (input: unknown, kind: 'allow' | 'deny' = 'allow'): string => {
    const c = compileRule(input, kind, 'x')
    return 'problem' in c ? c.problem : 'accepted'
  }
  t.match(problem({ methods: 'GET', path: '/x' }), /methods must be "\*" or a non-empty list/)
  t.match(problem({ methods: [], path: '/x' }), /methods must be/)
  t.match(problem({ methods: ['FETCH'], path: '/x' }), /"FETCH" is not one of GET, HEAD/)
  t.match(problem({ methods: ['GET'] }), /path: must be a string/)
  t.match(problem({ methods: ['GET'], path: 'x' }), /path: "x" must start with \//)
  t.match(problem({ methods: ['GET'], path: '/x', effect: 'allow' }), /unknown field\(s\) effect/)
  t.match(problem({ methods: ['PUT'], path: '/:/prefs', query: { keys: ['A'] } }, 'deny'), /only allow rules may restrict query/)
  t.match(problem({ methods: ['PUT'], path: '/:/prefs', query: { keys: [] } }), /query: must be \{ keys/)
  t.match(problem({ methods: ['PUT'], path: '/:/prefs', query: { keys: ['a=b'] } }), /query: must be \{ keys/)
  t.match(problem({ methods: ['PUT'], path: '/:/prefs', query: ['A'] }), /query: must be \{ keys/)
  t.match(problem('GET /x'), /must be an object/)
  t.match(problem(null), /must be an object/)
})

t.test('evaluation order: hard deny, then client deny, then allow, then default deny', async (t) => {
  const full = policy({ preset: 'full', deny: [{ methods: ['GET'], path: '/library/sections/*/refresh' }] })
  t.same(judge(full, 'GET /library/sections'), { allow: true, reason: 'allow', rule: 'preset full: * /**' })
  t.same(judge(full, 'GET /security/token'), { allow: false, reason: 'hard-deny', rule: 'hard deny security: * /security/**' })
  t.same(judge(full, 'GET /library/sections/1/refresh'), { allow: false, reason: 'client-deny', rule: 'deny[0]: GET,HEAD /library/sections/*/refresh' })
  t.equal(outcome(judge(full, 'HEAD /library/sections/1/refresh')), 'client-deny', 'a deny of GET stops HEAD (PMS runs the GET handler)')
  t.equal(outcome(judge(full, 'GET /library/sections/1/REFRESH')), 'client-deny', 'denies ignore case')
  t.equal(outcome(judge(full, 'GET /Library/Sections/1/Refresh')), 'client-deny')
  const none = policy({})
  t.same(judge(none, 'GET /library/sections'), { allow: false, reason: 'default-deny' }, 'no preset, no rules: nothing')
  const read = policy({ preset: 'read' })
  t.equal(outcome(judge(read, 'GET /library/sections')), 'allow')
  t.equal(outcome(judge(read, 'GET /Library/Sections')), 'default-deny', 'allows are case-sensitive')
  t.equal(outcome(judge(read, 'POST /library/sections')), 'default-deny', 'the method counts')
  const both = policy({ allow: [{ methods: ['GET'], path: '/myplex/account' }], deny: [{ methods: '*', path: '/myplex/**' }] })
  t.equal(outcome(judge(both, 'GET /myplex/account')), 'client-deny', 'a client deny wins over an allow that names a hard-denied path')
})

t.test('hard deny: every entry holds for every method under the full preset, in every spelling', async (t) => {
  const full = policy({ preset: 'full' })
  const paths = ['/security/token', '/security/resources', '/myplex/account', '/myplex/refreshReachability', '/:/prefs', '/system/agents',
    '/system/bundle/media/flags', '/updater/check', '/updater/apply', '/butler', '/butler/BackupDatabase', '/butlerTasks', '/diagnostics/logs',
    '/diagnostics/databases', '/log', '/log/networked', '/logs']
  const spellings = (p: string): string[] => {
    const [first = '', ...rest] = p.slice(1).split('/')
    const tail = rest.length > 0 ? `/${rest.join('/')}` : ''
    return [p, p.toUpperCase(), `/${first[0]!.toUpperCase()}${first.slice(1)}${tail}`, `${p}/`, `/${p}`, `/.${p}`, `/library/..${p}`, `//${first}/${tail}`,
      `/%${first.charCodeAt(0).toString(16)}${first.slice(1)}${tail}`, `/x/%2e%2e${p}`, p.replace(/\//g, '%2F').replace(/^%2F/, '/'), `${p};x`,
      `${p}%3Bx`, `${p}%00`, p.replace(/\//g, '\\'), `/x/%252e%252e${p}`]
  }
  let judged = 0
  for (const p of paths) {
    for (const raw of spellings(p)) {
      for (const method of HTTP_METHODS) {
        const d = judge(full, `${method} ${raw}`)
        judged++
        // The two carve-outs, reads of media flags and of the settings (tested below).
        const c = canonicalPath(raw)
        const lower = c.ok ? c.path.toLowerCase() : ''
        if ((method === 'GET' || method === 'HEAD') && (lower === '/:/prefs' || lower.startsWith('/system/bundle/media/flags'))) continue
        if (d !== 'refused' && d.allow) t.fail(`${method} ${raw} was allowed (${d.rule})`)
      }
    }
  }
  t.ok(judged > 1500, `${judged} method × spelling × path combinations, none allowed`)
  t.equal(outcome(judge(full, 'GET /system/bundle/media/flags/contentRating/us/PG.png')), 'allow', 'media flag images stay reachable')
  t.equal(outcome(judge(full, 'PUT /system/bundle/media/flags/x')), 'hard-deny')
  t.equal(outcome(judge(full, 'GET /:/prefs')), 'allow', 'reading settings is not hard-denied')
  t.equal(outcome(judge(full, 'PUT /:/prefs?FriendlyName=x')), 'hard-deny')
})

t.test('property: no path under a hard-denied prefix, in any case and spelling, is allowed by full', async (t) => {
  const full = policy({ preset: 'full' })
  const prefixes = ['/security/', '/myplex/', '/system/', '/updater/', '/diagnostics/', '/butler', '/log']
  const mixCase = (s: string, mask: boolean[]): string => [...s].map((ch, i) => mask[i % mask.length] === true ? ch.toUpperCase() : ch).join('')
  const segment = fc.stringMatching(/^[a-z0-9_-]{1,8}$/)
  // Separators that canonicalise to one `/`: the path stays under its prefix whatever is drawn.
  const separator = fc.constantFrom('/', '//', '/./', '/x/../', '/%2e/', '/X/%2E%2E/')
  let allowed = 0
  fc.assert(fc.property(fc.constantFrom(...prefixes), fc.array(fc.tuple(separator, segment), { maxLength: 4 }), fc.array(fc.boolean(), { minLength: 1, maxLength: 8 }),
    fc.constantFrom(...HTTP_METHODS), fc.boolean(), (prefix, parts, mask, method, trailing) => {
      const raw = mixCase(`${prefix}${parts.map(([sep, seg]) => `${sep}${seg}`).join('').replace(/^\/+/, prefix.endsWith('/') ? '' : '/')}${trailing ? '/' : ''}`, mask)
      const c = canonicalPath(raw)
      if (!c.ok) return true
      const d = evaluate(full, { method, path: c.path })
      if (d.allow) allowed++
      return !d.allow || ((method === 'GET' || method === 'HEAD') && c.path.toLowerCase().startsWith('/system/bundle/media/flags'))
    }), { numRuns: 3000 })
  t.pass(`none allowed but media-flag reads (${allowed} of them)`)
})

t.test('naming a hard-denied path: the rule\'s literal prefix must reach into the denied subtree', async (t) => {
  const allowed = (rule: { methods: string[] | '*', path: string }, request: string): string => outcome(judge(policy({ allow: [rule] }), request))
  t.equal(allowed({ methods: ['GET'], path: '/myplex/account' }, 'GET /myplex/account'), 'allow', 'the exact path')
  t.equal(allowed({ methods: ['GET'], path: '/myplex/**' }, 'GET /myplex/account'), 'allow', 'the subtree, written out')
  t.equal(allowed({ methods: ['GET'], path: '/myplex/a*' }, 'GET /myplex/account'), 'allow', 'a wildcard after the denied prefix')
  t.equal(allowed({ methods: ['GET'], path: '/**' }, 'GET /myplex/account'), 'hard-deny', 'a catch-all names nothing')
  t.equal(allowed({ methods: ['GET'], path: '/my*' }, 'GET /myplex/account'), 'hard-deny', 'a wildcard before the denied prefix ends names nothing')
  t.equal(allowed({ methods: ['GET'], path: '/*/account' }, 'GET /myplex/account'), 'hard-deny')
  t.equal(allowed({ methods: ['GET'], path: '/{myplex,library}/account' }, 'GET /myplex/account'), 'hard-deny', 'alternatives are wildcards too')
  t.equal(allowed({ methods: ['GET'], path: '/myplex/account' }, 'GET /myplex/Account'), 'hard-deny', 'the rule must match the request, case included')
  t.equal(allowed({ methods: ['GET'], path: '/myplex/account' }, 'PUT /myplex/account'), 'hard-deny', 'and its method')
  t.equal(allowed({ methods: ['GET'], path: '/myplex/account' }, 'GET /myplex/refreshReachability'), 'hard-deny', 'naming one path opens no other')
  t.equal(allowed({ methods: '*', path: '/security/token' }, 'GET /security/token'), 'allow', 'ops can name even /security/token')
  t.equal(allowed({ methods: '*', path: '/security/token' }, 'GET /security/resources'), 'hard-deny')
  t.equal(allowed({ methods: ['GET'], path: '/butler' }, 'GET /butler'), 'allow')
  t.equal(allowed({ methods: ['GET'], path: '/log' }, 'GET /log/networked'), 'hard-deny')
})

t.test('PUT /:/prefs passes only a rule that names the keys, and only for those keys', async (t) => {
  const keyed = policy({ allow: [{ methods: ['PUT'], path: '/:/prefs', query: { keys: ['DatabaseCacheSize'] } }] })
  t.equal(outcome(judge(keyed, 'PUT /:/prefs?DatabaseCacheSize=512')), 'allow')
  t.equal(outcome(judge(keyed, 'PUT /:/prefs?DatabaseCacheSize=512&X-Plex-Client-Identifier=abc&x-plex-product=k')), 'allow', 'X-Plex-* parameters identify the client, they are not settings')
  t.equal(outcome(judge(keyed, 'PUT /:/prefs?DatabaseCacheSize=512&ManualPortMappingPort=1')), 'hard-deny', 'one key more and it is refused')
  t.equal(outcome(judge(keyed, 'PUT /:/prefs?databasecachesize=512')), 'hard-deny', 'keys are compared exactly')
  t.equal(outcome(judge(keyed, 'POST /:/prefs?DatabaseCacheSize=512')), 'hard-deny', 'the method counts')
  t.equal(outcome(judge(keyed, 'PUT /%3A/prefs/?DatabaseCacheSize=512&allowedNetworks=0.0.0.0/0')), 'hard-deny', 'whatever the spelling')
  const unkeyed = policy({ allow: [{ methods: ['PUT'], path: '/:/prefs' }] })
  t.equal(outcome(judge(unkeyed, 'PUT /:/prefs?DatabaseCacheSize=512')), 'hard-deny', 'a rule without keys does not name the settings')
  t.equal(outcome(judge(policy({ preset: 'full' }), 'PUT /:/prefs?DatabaseCacheSize=512')), 'hard-deny')
  t.equal(outcome(judge(policy({ preset: 'full' }), 'DELETE /:/prefs')), 'hard-deny')
})

t.test('response filters: token attributes removed for every client, preset filters on top', async (t) => {
  t.same(responseAttributesToRemove(policy({ preset: 'monitor' }), '/myplex/account'), ['authToken'])
  t.same(responseAttributesToRemove(policy({ preset: 'full' }), '/MyPlex/Account'), ['authToken'], 'whatever the case')
  t.same(responseAttributesToRemove(policy({}), '/security/token'), ['token'])
  t.same(responseAttributesToRemove(policy({}), '/security/resources'), ['accessToken'])
  t.same(responseAttributesToRemove(policy({ preset: 'read' }), '/library/sections'), [])
  t.same(policy({ preset: 'monitor' }).responseFilters, [{ path: '/myplex/account', removeAttributes: ['authToken'] }], 'exposed as data for the listener')
})

t.test('the log filter of the notification feeds is never forwarded', async (t) => {
  t.same(stripLogFilter('/:/websockets/notifications', 'filters=playing,log,activity&X-Plex-Token=x'),
    { ok: true, query: 'filters=playing,activity&X-Plex-Token=x', removed: true })
  t.same(stripLogFilter('/:/eventsource/notifications', 'filters=LOG%2Cplaying'), { ok: true, query: 'filters=playing', removed: true }, 'encoded and upper case')
  t.same(stripLogFilter('/:/websocket/notifications', 'Filters=lo%67,timeline'), { ok: true, query: 'Filters=timeline', removed: true }, 'the other spelling of the path')
  t.same(stripLogFilter('/:/Websockets/Notifications', 'filters=log&filters=playing'), { ok: false, reason: 'log-filter-only' }, 'a filters left empty is refused')
  t.same(stripLogFilter('/:/websockets/notifications', 'filters=log'), { ok: false, reason: 'log-filter-only' })
  t.same(stripLogFilter('/:/websockets/notifications', 'filters=%E0'), { ok: false, reason: 'bad-encoding' })
  t.same(stripLogFilter('/:/websockets/notifications', 'filters=playing,activity'), { ok: true, query: 'filters=playing,activity', removed: false }, 'unchanged, byte for byte')
  t.same(stripLogFilter('/:/websockets/notifications', ''), { ok: true, query: '', removed: false })
  t.same(stripLogFilter('/library/sections', 'filters=log'), { ok: true, query: 'filters=log', removed: false }, 'other paths are not touched')
})

t.test('policyFrom: an unknown preset and every bad rule are reported together', async (t) => {
  const p = policyFrom({ preset: 'reader', allow: [{ methods: ['GET'], path: 'x' }, { methods: ['GET'], path: '/ok' }], deny: [{ path: '/x' }], mode: 'loud' as 'enforce' })
  t.ok('problems' in p)
  if (!('problems' in p)) return
  t.match(p.problems[0], /^proxy\.preset: unknown preset "reader" \(known: dashboard, read, monitor, library-notify, metadata-editor, stream, full\)$/)
  t.match(p.problems[1], /^proxy\.allow\[0\]: path: "x" must start with \//)
  t.match(p.problems[2], /^proxy\.deny\[0\]: methods must be/)
  t.match(p.problems[3], /^proxy\.mode: must be enforce or shadow/)
  t.equal(p.problems.length, 4)
  const ok = policy({ preset: 'read', mode: 'shadow', allow: [{ methods: ['GET'], path: '/extra' }] })
  t.equal(ok.mode, 'shadow')
  t.equal(ok.allow[0]!.label, 'allow[0]: GET,HEAD /extra', 'the client\'s rules come first, then the preset\'s')
  t.equal(policy({}).mode, 'enforce', 'enforce unless shadow is asked for')
})
