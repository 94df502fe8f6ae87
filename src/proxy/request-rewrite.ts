import { isIP } from 'node:net'

/**
 * What the proxy changes in a request before PMS sees it (docs/proxy.md, *How a request is
 * handled*): the caller's credential comes out of the header and of every query occurrence, and
 * nested `url=` parameters (photo transcode, poster upload) lose their own `X-Plex-*` arguments
 * and become relative when they point at PMS itself. Pure functions: the listener does the I/O.
 */

/** Decodes one `application/x-www-form-urlencoded` component; undefined when it is malformed. */
export function decodeComponent (s: string): string | undefined {
  try {
    return decodeURIComponent(s.replace(/\+/g, ' '))
  } catch {
    return undefined
  }
}

export type CredentialResult =
  | { ok: true, credential: string | undefined, query: string, nestedUrls: string[] }
  | { ok: false, reason: 'conflicting-credentials' | 'bad-encoding' | 'foreign-url', message: string }

/**
 * Takes the caller's credential out of a request: the `X-Plex-Token` header and every
 * `X-Plex-Token` query parameter, whatever the case of its name and however often it occurs
 * (tools send it in both places, some twice). They must all carry the same value: two different
 * credentials in one request are refused rather than one of them picked. Returns the query to
 * forward, byte for byte apart from the removed parameters and the rewritten nested URLs.
 *
 * `isPmsOrigin(url)` says whether an absolute nested URL points at PMS itself (its configured
 * origin or a loopback address); such a URL is made relative. Any other host is refused unless
 * `allowForeign(url)` (the client's `allowUrlHosts`) lets it through: PMS fetches whatever URL it
 * is given, so a foreign one would make the proxy a way to have PMS fetch arbitrary addresses
 * (docs/proxy.md, *Nested URLs*). `nestedUrls` lists the relative ones (PMS paths) and the
 * allowed foreign ones (absolute).
 */
export function extractCredential (header: string | string[] | undefined, rawQuery: string,
  isPmsOrigin: (url: URL) => boolean, allowForeign: (url: URL) => boolean = () => false): CredentialResult {
  const values: string[] = []
  if (Array.isArray(header)) values.push(...header)
  else if (typeof header === 'string') values.push(header)
  const kept: string[] = []
  const nestedUrls: string[] = []
  if (rawQuery !== '') {
    for (const part of rawQuery.split('&')) {
      if (part === '') continue
      const eq = part.indexOf('=')
      const name = decodeComponent(eq < 0 ? part : part.slice(0, eq))
      if (name === undefined) return { ok: false, reason: 'bad-encoding', message: 'A query parameter name is not valid percent-encoding.' }
      const lower = name.trim().toLowerCase()
      if (lower === 'x-plex-token') {
        const value = decodeComponent(eq < 0 ? '' : part.slice(eq + 1))
        if (value === undefined) return { ok: false, reason: 'bad-encoding', message: 'The X-Plex-Token parameter is not valid percent-encoding.' }
        values.push(value)
        continue
      }
      if (lower === 'url' && eq >= 0) {
        const value = decodeComponent(part.slice(eq + 1))
        if (value === undefined) return { ok: false, reason: 'bad-encoding', message: 'The url parameter is not valid percent-encoding.' }
        const nested = nestedUrl(value, isPmsOrigin, allowForeign)
        if (nested === undefined) {
          return { ok: false, reason: 'foreign-url', message: 'The url parameter points at a host other than this PMS; the proxy does not let PMS fetch other hosts.' }
        }
        nestedUrls.push(nested)
        kept.push(`${part.slice(0, eq)}=${encodeURIComponent(nested)}`)
        continue
      }
      kept.push(part)
    }
  }
  const distinct = [...new Set(values.map((v) => v.trim()))]
  if (distinct.length > 1) return { ok: false, reason: 'conflicting-credentials', message: 'The request carries different X-Plex-Token values.' }
  return { ok: true, credential: distinct[0], query: kept.join('&'), nestedUrls }
}

const LOOPBACK_NAMES = new Set(['localhost', 'localhost.'])

/** Whether a host name is a loopback address (`127.0.0.0/8`, `::1`, `localhost`). */
export function isLoopbackHost (hostname: string): boolean {
  const h = hostname.startsWith('[') && hostname.endsWith(']') ? hostname.slice(1, -1) : hostname
  if (LOOPBACK_NAMES.has(h.toLowerCase())) return true
  if (isIP(h) === 4) return h.startsWith('127.')
  if (isIP(h) === 6) return h === '::1' || /^::ffff:127\./i.test(h)
  return false
}

/**
 * A nested URL as PMS should get it: a relative path (`/library/metadata/1/thumb/2`) without
 * `X-Plex-*` arguments (PMS fetches a local path with the outer request's rights, so the nested
 * token is never needed, and the caller's would be a proxy key PMS cannot read). An absolute URL
 * on a host `allowForeign` accepts stays absolute (as the URL parser writes it, so PMS reads the
 * host that was checked), minus its `X-Plex-*` arguments. Undefined for any other host.
 */
export function nestedUrl (value: string, isPmsOrigin: (url: URL) => boolean, allowForeign: (url: URL) => boolean = () => false): string | undefined {
  let u: URL
  let relative = false
  try {
    if (value.startsWith('/') && !value.startsWith('//')) {
      u = new URL(value, 'http://pms.invalid')
      relative = true
    } else {
      u = new URL(value)
    }
  } catch {
    return undefined
  }
  if (!relative) {
    if (u.protocol !== 'http:' && u.protocol !== 'https:') return undefined
    if (u.username !== '' || u.password !== '') return undefined
    if (!isPmsOrigin(u) && !isLoopbackHost(u.hostname)) {
      if (!allowForeign(u)) return undefined
      return `${u.origin}${u.pathname}${withoutPlexParams(u.search)}${u.hash}`
    }
  }
  for (const name of [...u.searchParams.keys()]) if (name.toLowerCase().startsWith('x-plex-')) u.searchParams.delete(name)
  return `${u.pathname}${u.search}`
}

/** A URL's `?query` without its `X-Plex-*` parameters, the others byte for byte. */
function withoutPlexParams (search: string): string {
  if (search === '') return ''
  const kept = search.slice(1).split('&').filter((part) => {
    const eq = part.indexOf('=')
    const name = decodeComponent(eq < 0 ? part : part.slice(0, eq)) ?? part
    return !name.trim().toLowerCase().startsWith('x-plex-')
  })
  return kept.length === 0 ? '' : `?${kept.join('&')}`
}

/** The names of the query parameters (decoded), for rules with `query.keys`. */
export function queryKeys (query: string): string[] {
  if (query === '') return []
  const out: string[] = []
  for (const part of query.split('&')) {
    if (part === '') continue
    const eq = part.indexOf('=')
    out.push(decodeComponent(eq < 0 ? part : part.slice(0, eq)) ?? part)
  }
  return out
}

/** Request headers that never reach PMS: the credential, hop-by-hop and forwarding headers a caller could forge. */
export const DROPPED_REQUEST_HEADERS = [
  'x-plex-token', 'authorization', 'cookie', 'forwarded', 'x-forwarded-for', 'x-forwarded-host', 'x-forwarded-proto',
  'x-forwarded-port', 'x-real-ip', 'proxy-authorization', 'te', 'trailer', 'upgrade', 'keep-alive', 'proxy-connection',
] as const
