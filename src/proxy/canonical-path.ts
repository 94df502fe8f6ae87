/**
 * The canonical form of a proxied request's path: the one string the proxy's rules are matched
 * against and, re-encoded with `encodeCanonicalPath`, the one path forwarded to PMS. Matching one
 * spelling and forwarding another is how path rules get evaded (`/security/./token`,
 * `/%2e%2e/security/token`, `//security/token`), so every spelling PMS could read as another path
 * is either reduced to one form here or refused.
 *
 * The steps, in order (docs/proxy.md, *Canonical paths*):
 * 1. The path must start with `/` and be at most MAX_PATH_LENGTH characters.
 * 2. Refused outright: raw `\` (some servers read it as `/`), raw or encoded control characters
 *    (U+0000–U+001F, U+007F), `%` not followed by two hex digits, encoded `/` (`%2F`) and `\`
 *    (`%5C`) (they would hide a separator from the rules while a decoding upstream splits on it),
 *    any `%25` (a percent-encoded `%`: the path is encoded twice, and a second decoding anywhere
 *    downstream would see what the rules did not), and `;` raw or encoded (see below).
 * 3. Percent-encoding is decoded exactly once, as UTF-8 (invalid UTF-8 is refused).
 * 4. Empty segments are dropped (`//` → `/`), `.` segments removed, `..` removes the segment
 *    before it; a `..` above the root is refused rather than clamped, because no real client
 *    sends one.
 * 5. A trailing `/` is dropped (except for the root): `/security/token/` must meet the rule
 *    written for `/security/token`.
 *
 * `;` is refused, not stripped: servers that implement path parameters (`/security/token;x`)
 * ignore the part after `;`, servers that do not treat it as part of the segment, and the proxy
 * cannot know which one PMS is in every version. No PMS client puts `;` in a path (parameters go
 * in the query), so refusing costs nothing, and a refusal cannot be mis-matched by a rule.
 *
 * The result contains no `%`, `\`, `;`, control character, empty segment or dot segment, so
 * canonicalising it again returns it unchanged.
 */

export const MAX_PATH_LENGTH = 4096

export type CanonicalRefusal =
  | 'not-absolute'
  | 'too-long'
  | 'control-character'
  | 'backslash'
  | 'bad-encoding'
  | 'encoded-slash'
  | 'encoded-backslash'
  | 'double-encoding'
  | 'path-parameter'
  | 'escapes-root'

export type CanonicalPath =
  | { ok: true, path: string }
  | { ok: false, reason: CanonicalRefusal, message: string }

const MESSAGES: Record<CanonicalRefusal, string> = {
  'not-absolute': 'The path must start with /.',
  'too-long': `The path is longer than ${MAX_PATH_LENGTH} characters.`,
  'control-character': 'The path contains a control character.',
  backslash: 'The path contains a backslash.',
  'bad-encoding': 'The path has a malformed percent-encoding or is not UTF-8.',
  'encoded-slash': 'The path contains an encoded / (%2F).',
  'encoded-backslash': 'The path contains an encoded \\ (%5C).',
  'double-encoding': 'The path is percent-encoded twice (%25).',
  'path-parameter': 'The path contains a ; (path parameters are not accepted).',
  'escapes-root': 'The path climbs above / with "..".',
}

function refuse (reason: CanonicalRefusal): CanonicalPath {
  return { ok: false, reason, message: MESSAGES[reason] }
}

const HEX = /^[0-9A-Fa-f]{2}$/
const decoder = new TextDecoder('utf-8', { fatal: true })

function isControl (code: number): boolean {
  return code < 0x20 || code === 0x7f
}

/** Canonicalises the path part of a request target (everything before the first `?`). Never throws. */
export function canonicalPath (raw: string): CanonicalPath {
  if (raw.length > MAX_PATH_LENGTH) return refuse('too-long')
  if (!raw.startsWith('/')) return refuse('not-absolute')
  if (!raw.isWellFormed()) return refuse('bad-encoding')

  // Decode once, checking each character (raw or encoded) on the way. Consecutive %XX bytes are
  // collected and decoded together, since one UTF-8 character spans several of them.
  let decoded = ''
  let bytes: number[] = []
  const flush = (): boolean => {
    if (bytes.length === 0) return true
    try {
      decoded += decoder.decode(new Uint8Array(bytes))
    } catch {
      return false
    }
    bytes = []
    return true
  }
  for (let i = 0; i < raw.length; i++) {
    const c = raw.charCodeAt(i)
    if (c === 0x25) { // %
      const hex = raw.slice(i + 1, i + 3)
      if (!HEX.test(hex)) return refuse('bad-encoding')
      const b = Number.parseInt(hex, 16)
      if (b === 0x2f) return refuse('encoded-slash')
      if (b === 0x5c) return refuse('encoded-backslash')
      if (b === 0x25) return refuse('double-encoding')
      if (b === 0x3b) return refuse('path-parameter')
      if (isControl(b)) return refuse('control-character')
      bytes.push(b)
      i += 2
      continue
    }
    if (!flush()) return refuse('bad-encoding')
    if (isControl(c)) return refuse('control-character')
    if (c === 0x5c) return refuse('backslash')
    if (c === 0x3b) return refuse('path-parameter')
    decoded += raw[i]
  }
  if (!flush()) return refuse('bad-encoding')

  const out: string[] = []
  for (const segment of decoded.split('/')) {
    if (segment === '' || segment === '.') continue
    if (segment === '..') {
      if (out.length === 0) return refuse('escapes-root')
      out.pop()
      continue
    }
    out.push(segment)
  }
  return { ok: true, path: `/${out.join('/')}` }
}

/**
 * The request path to forward for a canonical path: each segment percent-encoded, except for the
 * characters PMS clients send raw (`:` as in `/:/prefs`, `,` as in `/library/metadata/1,2`, and
 * the other sub-delimiters and `@`). `canonicalPath(encodeCanonicalPath(p))` is `p` again, so PMS
 * receives exactly the path the rules were matched against.
 */
export function encodeCanonicalPath (path: string): string {
  return path.split('/').map((segment) => encodeURIComponent(segment).replace(/%(3A|40|24|26|2B|2C|3D)/g, (_m, hex: string) =>
    String.fromCharCode(Number.parseInt(hex, 16)))).join('/')
}

/** Splits a request target (`/path?query`) at its first `?`. */
export function splitTarget (target: string): { path: string, query: string } {
  const q = target.indexOf('?')
  return q < 0 ? { path: target, query: '' } : { path: target.slice(0, q), query: target.slice(q + 1) }
}
