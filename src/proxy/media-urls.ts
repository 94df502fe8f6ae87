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
 * The URI a manifest entry leads to, resolved against the manifest's own path; undefined for
 * anything that is not a path on this server.
 */
function resolve (uri: string, base: string): URL | undefined {
  try {
    const u = new URL(uri, `http://pms.invalid${base}`)
    return u.origin === 'http://pms.invalid' ? u : undefined
  } catch {
    return undefined
  }
}

/**
 * A manifest URI with the session credential added (and any `X-Plex-Token` PMS put there
 * removed). URIs outside the session's directory are only cleaned, not signed.
 */
function signUri (uri: string, manifestPath: string, sign: (prefix: string) => string): string {
  const u = resolve(uri, manifestPath)
  if (u === undefined) return uri
  const q = uri.indexOf('?')
  const hash = uri.indexOf('#')
  const end = hash < 0 ? uri.length : hash
  const base = q < 0 ? uri.slice(0, end) : uri.slice(0, q)
  const params = (q < 0 ? '' : uri.slice(q + 1, end)).split('&').filter((p) => p !== '' && !/^x-plex-token(=|$)/i.test(p))
  const prefix = sessionPrefix(u.pathname)
  if (prefix !== undefined) params.push(`X-Plex-Token=${sign(prefix)}`)
  return `${base}${params.length > 0 ? `?${params.join('&')}` : ''}${uri.slice(end)}`
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

/** DASH: `media`, `initialization` and `sourceURL` attributes and `<BaseURL>` elements. */
export function signMpd (text: string, manifestPath: string, sign: (prefix: string) => string): string {
  const attr = text.replace(/\b(media|initialization|sourceURL)="([^"]*)"/g, (_m, name: string, uri: string) =>
    `${name}="${signUri(uri.replaceAll('&amp;', '&'), manifestPath, sign).replaceAll('&', '&amp;')}"`)
  return attr.replace(/<BaseURL>([^<]*)<\/BaseURL>/g, (_m, uri: string) =>
    `<BaseURL>${signUri(uri.replaceAll('&amp;', '&'), manifestPath, sign).replaceAll('&', '&amp;')}</BaseURL>`)
}

export function manifestKind (contentType: string | undefined, path: string): 'm3u8' | 'mpd' | undefined {
  const t = ((contentType ?? '').split(';')[0] ?? '').trim().toLowerCase()
  if (t === 'application/vnd.apple.mpegurl' || t === 'application/x-mpegurl' || t === 'audio/mpegurl' || path.endsWith('.m3u8')) return 'm3u8'
  if (t === 'application/dash+xml' || path.endsWith('.mpd')) return 'mpd'
  return undefined
}
