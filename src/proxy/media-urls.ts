import { createHmac, hkdfSync, timingSafeEqual } from 'node:crypto'

/**
 * HLS and DASH through the proxy (docs/proxy.md, *Transcode sessions*). A player asks for
 * `/video/:/transcode/universal/start.m3u8?…&X-Plex-Token=<proxy key>`; PMS answers a manifest
 * whose URIs (`session/<id>/base/index.m3u8`, then the segments) carry no credential, and a plain
 * player follows them as they are. The proxy therefore rewrites every URI in a manifest that
 * leads into the transcode session's own directory to carry a **session credential**:
 * `pbs_<key id>.<expiry>.<mac>`, an HMAC (key derived from BROKER_SECRET) over the proxy key's
 * id, the server and the session's path prefix `/video/:/transcode/universal/session/<id>/`.
 *
 * Why this and not the alternatives:
 * - Writing the proxy key itself into the URIs would copy a long-lived credential into every
 *   player's and CDN's logs, for every path the key may reach. A session credential opens one
 *   transcode session's directory and nothing else, and lapses.
 * - Binding the session id to the key in Redis (no credential in the URIs) would let anyone who
 *   learns a session id (it is listed by `/transcode/sessions` and `/status/sessions`) fetch the
 *   stream without any credential.
 * Every use of a session credential still reads the key's record (one HGETALL), so revoking the
 * key ends the session at once; the expiry (SESSION_CREDENTIAL_TTL) only bounds how long a
 * leaked manifest URL stays replayable against a key that is still live.
 */

export const SESSION_CREDENTIAL_PREFIX = 'pbs_'
/** A film plays for hours and its variant playlist is fetched once: the credential must outlast the playback. */
export const SESSION_CREDENTIAL_TTL_MS = 8 * 3600_000

const SESSION_PATH = /^(\/video\/:\/transcode\/universal\/session\/[^/]{1,128}\/)/
const CREDENTIAL = /^pbs_([A-Za-z0-9_-]{12})\.([0-9a-z]{1,12})\.([A-Za-z0-9_-]{43})$/

/** The session directory a path lies in (`/video/:/transcode/universal/session/<id>/`), if any. */
export function sessionPrefix (path: string): string | undefined {
  return SESSION_PATH.exec(path)?.[1]
}

export class SessionCredentials {
  readonly #key: Buffer
  readonly #now: () => number

  constructor (brokerSecret: Buffer, now: () => number = Date.now) {
    this.#key = Buffer.from(hkdfSync('sha256', brokerSecret, 'plex-token-broker', 'proxy-session-credential-v1', 32))
    this.#now = now
  }

  #mac (keyId: string, server: string, prefix: string, exp: string): Buffer {
    return createHmac('sha256', this.#key).update(`${keyId}\n${server}\n${prefix}\n${exp}`).digest()
  }

  sign (keyId: string, server: string, prefix: string): string {
    const exp = Math.floor((this.#now() + SESSION_CREDENTIAL_TTL_MS) / 1000).toString(36)
    return `${SESSION_CREDENTIAL_PREFIX}${keyId}.${exp}.${this.#mac(keyId, server, prefix, exp).toString('base64url')}`
  }

  /** The proxy key id a session credential speaks for, when it is valid for this server and path. */
  verify (credential: string, server: string, path: string): string | undefined {
    const m = CREDENTIAL.exec(credential)
    const prefix = sessionPrefix(path)
    if (m === null || prefix === undefined) return undefined
    const [, keyId = '', exp = '', mac = ''] = m
    const expected = this.#mac(keyId, server, prefix, exp)
    const given = Buffer.from(mac, 'base64url')
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return undefined
    if (Number.parseInt(exp, 36) * 1000 <= this.#now()) return undefined
    return keyId
  }
}

/**
 * The URI a manifest entry leads to, resolved against `base` (a path on PMS, or a URL on the
 * placeholder origin below); undefined for anything that is not a path on this server.
 */
function resolve (uri: string, base: string | URL): URL | undefined {
  try {
    const u = new URL(uri, typeof base === 'string' ? `${PMS}${base}` : base)
    return u.origin === PMS ? u : undefined
  } catch {
    return undefined
  }
}

const PMS = 'http://pms.invalid'

/**
 * A manifest URI with the session credential for `prefix` added (none without one), and any
 * `X-Plex-Token` PMS put there removed.
 */
function withCredential (uri: string, prefix: string | undefined, sign: (prefix: string) => string): string {
  const q = uri.indexOf('?')
  const hash = uri.indexOf('#')
  const end = hash < 0 ? uri.length : hash
  const path = q < 0 ? uri.slice(0, end) : uri.slice(0, q)
  const params = (q < 0 ? '' : uri.slice(q + 1, end)).split('&').filter((p) => p !== '' && !/^x-plex-token(=|$)/i.test(p))
  if (prefix !== undefined) params.push(`X-Plex-Token=${sign(prefix)}`)
  return `${path}${params.length > 0 ? `?${params.join('&')}` : ''}${uri.slice(end)}`
}

/** A manifest URI resolved against `base`: signed when it leads into a session's directory, cleaned when it leads elsewhere on PMS. */
function signUri (uri: string, base: string | URL, sign: (prefix: string) => string): string {
  const u = resolve(uri, base)
  return u === undefined ? uri : withCredential(uri, sessionPrefix(u.pathname), sign)
}

/** HLS: every URI line and every `URI="…"` attribute. */
export function signM3u8 (text: string, manifestPath: string, sign: (prefix: string) => string): string {
  return text.split('\n').map((line) => {
    const trimmed = line.trim()
    if (trimmed === '') return line
    if (trimmed.startsWith('#')) return line.replace(/URI="([^"]*)"/g, (_m, uri: string) => `URI="${signUri(uri, manifestPath, sign)}"`)
    return signUri(trimmed, manifestPath, sign) + (line.endsWith('\r') ? '\r' : '')
  }).join('\n')
}

/** The DASH attributes that hold a URI (or a URI template), by element (ISO/IEC 23009-1, 5.3.9). */
const MPD_URI_ATTRIBUTES: Record<string, readonly string[]> = {
  SegmentTemplate: ['media', 'initialization', 'index', 'bitstreamSwitching'],
  SegmentURL: ['media', 'index'],
  Initialization: ['sourceURL'],
  RepresentationIndex: ['sourceURL'],
  BitstreamSwitching: ['sourceURL'],
}
/** The elements whose first `BaseURL` child sets the base of what they contain. */
const MPD_LEVELS = new Set(['MPD', 'Period', 'AdaptationSet', 'Representation'])

const XML_ENTITIES: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" }

function xmlDecode (s: string): string {
  return s.replace(/&(?:#x([0-9a-fA-F]{1,6})|#([0-9]{1,7})|(amp|lt|gt|quot|apos));/g, (m, hex?: string, dec?: string, name?: string) => {
    if (name !== undefined) return XML_ENTITIES[name]!
    const code = Number.parseInt(hex ?? dec ?? '', hex === undefined ? 10 : 16)
    return code <= 0x10ffff ? String.fromCodePoint(code) : m
  })
}

function xmlEncode (s: string): string {
  return s.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('"', '&quot;').replaceAll("'", '&apos;')
}

interface MpdElement {
  name: string
  parent: MpdElement | undefined
  /** The base URL this element sets for its content (its first BaseURL resolved), if it has one. */
  base?: URL | null
  /** The bases of the Representations below (an AdaptationSet, a Period, the MPD), for a template written once for all of them. */
  representationBases: Array<URL | null>
  /** URI attributes of this level's segment elements, settled when the level closes (its Representations' BaseURLs known). */
  pending: Array<{ at: number, length: number, uri: string }>
}

/**
 * DASH: every URI a player derives from the MPD that leads into a session's directory is signed.
 * A player resolves a segment's URI (SegmentTemplate, SegmentList, Initialization…) against the
 * `BaseURL`s of the MPD, Period, AdaptationSet and Representation, each relative to the one
 * above and the first to the manifest (ISO/IEC 23009-1, 5.6). Resolving a relative reference
 * drops the base's query, so the credential must be in the segment's own URI: each one is
 * resolved against its chain of BaseURLs to find its session. A template written once in an
 * AdaptationSet whose Representations have BaseURLs of their own is signed when all of them lead
 * into the same session (one MPD is one transcode session). A `BaseURL` that leads into a
 * session is signed too: with SegmentBase it is the media itself. The text is rewritten in
 * place, attribute by attribute: everything else (comments, layout, quoting) is kept.
 */
export function signMpd (text: string, manifestPath: string, sign: (prefix: string) => string): string {
  const manifest = new URL(`${PMS}${manifestPath}`)
  const edits: Array<{ at: number, length: number, value: string }> = []
  let current: MpdElement | undefined
  const baseOf = (el: MpdElement | undefined): URL | null => {
    for (let e = el; e !== undefined; e = e.parent) if (e.base !== undefined) return e.base
    return manifest
  }
  const level = (el: MpdElement | undefined): MpdElement | undefined => {
    let e = el
    while (e !== undefined && !MPD_LEVELS.has(e.name)) e = e.parent
    return e
  }
  // A URI used under several bases (a template written once for Representations with BaseURLs
  // of their own) is signed only if all of them lead into the same session.
  const signAt = (uri: string, bases: ReadonlyArray<URL | null>): string => {
    const resolved = bases.map((b) => (b === null ? undefined : resolve(uri, b)))
    if (resolved.every((u) => u === undefined)) return uri
    const prefixes = new Set(resolved.map((u) => (u === undefined ? undefined : sessionPrefix(u.pathname))))
    return withCredential(uri, prefixes.size === 1 ? [...prefixes][0] : undefined, sign)
  }
  const close = (el: MpdElement): void => {
    if (MPD_LEVELS.has(el.name)) {
      const bases = el.representationBases.length > 0 ? el.representationBases : [baseOf(el)]
      for (const p of el.pending) {
        const signed = signAt(p.uri, bases)
        if (signed !== p.uri) edits.push({ at: p.at, length: p.length, value: xmlEncode(signed) })
      }
      if (el.name === 'Representation') for (let e = el.parent; e !== undefined; e = e.parent) e.representationBases.push(baseOf(el))
    } else {
      // Settled when the level it applies to (Representation, AdaptationSet, Period) is complete.
      const owner = level(el.parent)
      if (owner !== undefined) owner.pending.push(...el.pending)
    }
  }
  const tags = /<!--[\s\S]*?-->|<!\[CDATA\[[\s\S]*?\]\]>|<[?!][^>]*>|<\/([^\s>]+)\s*>|<([^\s/>]+)((?:\s+[^\s=/>]+\s*=\s*(?:"[^"]*"|'[^']*'))*)\s*(\/?)>/g
  for (let m = tags.exec(text); m !== null; m = tags.exec(text)) {
    const [whole, closing, opening, attrs = '', selfClosing] = m
    if (closing !== undefined) {
      if (current !== undefined) {
        close(current)
        current = current.parent
      }
      continue
    }
    if (opening === undefined) continue
    const name = opening.slice(opening.indexOf(':') + 1)
    const el: MpdElement = { name, parent: current, representationBases: [], pending: [] }
    if (name === 'BaseURL') {
      const end = text.indexOf('<', m.index + whole.length)
      const raw = end < 0 ? '' : text.slice(m.index + whole.length, end)
      const uri = xmlDecode(raw.trim())
      const owner = level(current)
      const parentBase = baseOf(owner?.parent)
      if (owner !== undefined && owner.base === undefined) {
        owner.base = parentBase === null ? null : resolve(uri, parentBase) ?? null
      }
      if (raw.trim() !== '') {
        const signed = signAt(uri, [parentBase])
        const at = m.index + whole.length + raw.indexOf(raw.trim())
        if (signed !== uri) edits.push({ at, length: raw.trim().length, value: xmlEncode(signed) })
      }
    }
    const names = MPD_URI_ATTRIBUTES[name]
    if (names !== undefined) {
      const attr = /([^\s=/>]+)\s*=\s*(?:"([^"]*)"|'([^']*)')/g
      const offset = m.index + 1 + opening.length
      for (let a = attr.exec(attrs); a !== null; a = attr.exec(attrs)) {
        const [all, attrName = '', dq, sq] = a
        const value = dq ?? sq ?? ''
        // bitstreamSwitching is a flag on AdaptationSet and Representation, a URI template only on SegmentTemplate.
        if (!names.includes(attrName) || (attrName === 'bitstreamSwitching' && /^(true|false)$/.test(value))) continue
        const at = offset + a.index + all.length - value.length - 1
        el.pending.push({ at, length: value.length, uri: xmlDecode(value) })
      }
    }
    if (selfClosing === '/') {
      close(el)
    } else {
      current = el
    }
  }
  let out = text
  for (const e of edits.sort((x, y) => y.at - x.at)) out = out.slice(0, e.at) + e.value + out.slice(e.at + e.length)
  return out
}

export function manifestKind (contentType: string | undefined, path: string): 'm3u8' | 'mpd' | undefined {
  const t = ((contentType ?? '').split(';')[0] ?? '').trim().toLowerCase()
  if (t === 'application/vnd.apple.mpegurl' || t === 'application/x-mpegurl' || t === 'audio/mpegurl' || path.endsWith('.m3u8')) return 'm3u8'
  if (t === 'application/dash+xml' || path.endsWith('.mpd')) return 'mpd'
  return undefined
}
