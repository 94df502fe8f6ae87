import t from 'tap'
import fc from 'fast-check'
import { canonicalPath, encodeCanonicalPath, MAX_PATH_LENGTH, splitTarget } from '../src/proxy/canonical-path.ts'

const ok = (raw: string): string => {
  const r = canonicalPath(raw)
  if (!r.ok) throw new Error(`${raw} refused: ${r.reason}`)
  return r.path
}
const reason = (raw: string): string => {
  const r = canonicalPath(raw)
  return r.ok ? `accepted as ${r.path}` : r.reason
}

t.test('every spelling of a path reaches the one canonical form', async (t) => {
  const cases: Array<[string, string]> = [
    ['/', '/'],
    ['/security/token', '/security/token'],
    ['//security//token', '/security/token'],
    ['/security/./token', '/security/token'],
    ['/library/../security/token', '/security/token'],
    ['/a/b/../../security/token', '/security/token'],
    ['/security/token/', '/security/token'],
    ['/security/token/.', '/security/token'],
    ['/security/token//', '/security/token'],
    ['/%73ecurity/token', '/security/token'],
    ['/library/%2e%2e/security/token', '/security/token'],
    ['/library/%2E/sections', '/library/sections'],
    ['/library/.%2e/security', '/security'],
    ['/%3A/prefs', '/:/prefs'],
    ['/:/prefs', '/:/prefs'],
    ['/library/metadata/1,2,3', '/library/metadata/1,2,3'],
    ['/library/parts/1/2/Am%C3%A9lie.mkv', '/library/parts/1/2/Amélie.mkv'],
    ['/Security/Token', '/Security/Token'],
    ['/.', '/'],
    ['//', '/'],
    ['/a/..', '/'],
  ]
  for (const [raw, expected] of cases) t.equal(ok(raw), expected, raw)
})

t.test('spellings that could hide a path from the rules are refused with a reason', async (t) => {
  const cases: Array<[string, string]> = [
    ['security/token', 'not-absolute'],
    ['', 'not-absolute'],
    ['*', 'not-absolute'],
    ['/security%2Ftoken', 'encoded-slash'],
    ['/security%2ftoken', 'encoded-slash'],
    ['/library/..%2Fsecurity', 'encoded-slash'],
    ['/security%5Ctoken', 'encoded-backslash'],
    ['/security\\token', 'backslash'],
    ['/security%252Ftoken', 'double-encoding'],
    ['/security%255Ctoken', 'double-encoding'],
    ['/%252e%252e/security/token', 'double-encoding'],
    ['/security/token;x', 'path-parameter'],
    ['/security/token%3Bx', 'path-parameter'],
    ['/:/prefs;jsessionid=1', 'path-parameter'],
    ['/security/token%00', 'control-character'],
    ['/security/token\u0000', 'control-character'],
    ['/security/token%0A', 'control-character'],
    ['/security/token\r\n', 'control-character'],
    ['/a%7F', 'control-character'],
    ['/a%zz', 'bad-encoding'],
    ['/a%4', 'bad-encoding'],
    ['/a%', 'bad-encoding'],
    ['/a%C3', 'bad-encoding'],
    ['/a%FF', 'bad-encoding'],
    ['/a\uD800b', 'bad-encoding'],
    ['/..', 'escapes-root'],
    ['/../security/token', 'escapes-root'],
    ['/%2e%2e/security/token', 'escapes-root'],
    ['/library/../../security', 'escapes-root'],
    [`/${'a'.repeat(MAX_PATH_LENGTH)}`, 'too-long'],
  ]
  for (const [raw, expected] of cases) t.equal(reason(raw), expected, JSON.stringify(raw))
  const r = canonicalPath('/a%2Fb')
  t.ok(!r.ok && r.message.length > 0, 'a message for the client')
})

t.test('the forwarded form decodes back to the canonical path; PMS spellings stay raw', async (t) => {
  t.equal(encodeCanonicalPath('/:/prefs'), '/:/prefs')
  t.equal(encodeCanonicalPath('/library/metadata/1,2'), '/library/metadata/1,2')
  t.equal(encodeCanonicalPath('/library/parts/1/2/Amélie 1.mkv'), '/library/parts/1/2/Am%C3%A9lie%201.mkv')
  t.equal(encodeCanonicalPath('/a?b#c'), '/a%3Fb%23c', 'a decoded ? or # is not a query or fragment upstream')
  t.same(splitTarget('/a/b?x=1&y=%3F'), { path: '/a/b', query: 'x=1&y=%3F' })
  t.same(splitTarget('/a/b'), { path: '/a/b', query: '' })
})

// Fragments that exercise every branch: separators, dots raw and encoded, encodings of the
// refused characters, valid and broken UTF-8, case.
const fragment = fc.constantFrom(
  '/', '//', '.', '..', '/.', '/..', '%2e', '%2E', '%2F', '%5C', '%25', '%252F', '%3B', ';', '\\', '%00', '%0a',
  '%41', '%C3%A9', '%C3', 'é', ':', ',', '%', '%zz', '?', '#', ' ', 'security', 'Token', 'a', 'log', '*', '\u0001'
)
const pathLike = fc.array(fragment, { maxLength: 24 }).map((parts) => `/${parts.join('')}`)

t.test('property: a canonical path has no //, /./ or /../, ends without / and is a fixed point', async (t) => {
  const check = (raw: string): boolean => {
    const r = canonicalPath(raw)
    if (!r.ok) return typeof r.message === 'string'
    const p = r.path
    if (!p.startsWith('/') || p.includes('//') || p.includes('/./') || p.includes('/../')) return false
    if (p.endsWith('/.') || p.endsWith('/..') || (p !== '/' && p.endsWith('/'))) return false
    if ([...p].some((ch) => '%\\;'.includes(ch) || ch.charCodeAt(0) < 0x20 || ch.charCodeAt(0) === 0x7f)) return false
    const again = canonicalPath(p)
    const forwarded = canonicalPath(encodeCanonicalPath(p))
    return again.ok && again.path === p && forwarded.ok && forwarded.path === p
  }
  fc.assert(fc.property(pathLike, check), { numRuns: 3000 })
  fc.assert(fc.property(fc.string({ unit: 'binary', maxLength: 64 }).map((s) => `/${s}`), check), { numRuns: 3000 })
  t.pass('held for 6,000 generated paths')
})

t.test('property: any string at all gives a result, never an exception', async (t) => {
  fc.assert(fc.property(fc.string({ unit: 'binary', maxLength: 200 }), (s) => {
    const r = canonicalPath(s)
    return r.ok === true || typeof r.reason === 'string'
  }), { numRuns: 3000 })
  t.pass('no throw')
})

t.test('property: no encoding of a path under /security canonicalises outside it while keeping its segments', async (t) => {
  // Encode random characters of a path that starts at /security: whatever is accepted still starts there.
  const encodeSome = (s: string, mask: boolean[]): string => [...s].map((ch, i) => mask[i % mask.length] === true && ch !== '/'
    ? `%${ch.charCodeAt(0).toString(16).padStart(2, '0')}`
    : ch).join('')
  fc.assert(fc.property(fc.array(fc.boolean(), { minLength: 1, maxLength: 20 }), fc.constantFrom('token', 'resources', 'x/y'), (mask, rest) => {
    const r = canonicalPath(encodeSome(`/security/${rest}`, mask))
    return r.ok && r.path === `/security/${rest}`
  }))
  t.pass('percent-encoding never moves a path')
})
