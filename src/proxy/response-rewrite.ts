import { Transform, type TransformCallback } from 'node:stream'

/**
 * What the proxy changes in PMS's answers so that no PMS credential leaves it (docs/proxy.md,
 * *Nothing leaks*): `Location` headers, the credential attributes of the endpoints that hand them
 * out, and, as a last line of defence, any occurrence of the live transient token or the admin
 * token in a text answer.
 */

/** Content types whose bodies are text a credential could be written into (scanned by `LeakScrubber`). */
export function isScannableType (contentType: string | undefined): boolean {
  if (contentType === undefined) return false
  const t = (contentType.split(';')[0] ?? '').trim().toLowerCase()
  return t.startsWith('text/') || t.endsWith('+xml') || t.endsWith('+json') || t === 'application/xml' || t === 'application/json' ||
    t === 'application/javascript' || t === 'application/x-javascript' ||
    t === 'application/vnd.apple.mpegurl' || t === 'application/x-mpegurl' || t === 'audio/mpegurl' || t === 'audio/x-mpegurl' ||
    t === 'application/dash+xml'
}

export function isJsonType (contentType: string | undefined): boolean {
  const t = ((contentType ?? '').split(';')[0] ?? '').trim().toLowerCase()
  return t === 'application/json' || t.endsWith('+json')
}

/** Whether a query parameter name is a credential PMS reads (`X-Plex-Token`, any case). */
function isTokenParam (name: string): boolean {
  return name.toLowerCase() === 'x-plex-token'
}

/**
 * The `Location` to send the caller: PMS's own origin (or a relative URL) becomes the proxy's
 * origin with the listener's path prefix (`/pms/{server}` when the request came that way), and
 * every `X-Plex-Token` parameter is removed. A URL on another host keeps its host but loses its
 * token parameters too.
 */
export function rewriteLocation (location: string, opts: { pmsOrigin: string, proxyOrigin: string, prefix: string }): string {
  let u: URL
  try {
    u = new URL(location, `${opts.pmsOrigin}/`)
  } catch {
    return '/'
  }
  for (const name of [...u.searchParams.keys()]) if (isTokenParam(name)) u.searchParams.delete(name)
  if (u.origin !== opts.pmsOrigin) return u.href
  return `${opts.proxyOrigin}${opts.prefix}${u.pathname}${u.search}${u.hash}`
}

/** Largest answer the proxy buffers to remove credential attributes from (the endpoints that carry them answer a few KB). */
export const MAX_FILTERED_BODY = 4 * 1024 * 1024

function escapeRegExp (s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}

/**
 * Removes attributes (XML) or properties (JSON, at any depth) from an answer body. XML is
 * handled as text: an attribute `name="…"` or `name='…'` wherever it occurs, which is how PMS
 * writes every attribute. JSON is parsed and written again; a JSON body that does not parse is
 * refused (undefined) rather than passed on unfiltered.
 */
export function removeAttributes (body: string, contentType: string | undefined, attributes: readonly string[]): string | undefined {
  if (attributes.length === 0) return body
  if (isJsonType(contentType)) {
    let parsed: unknown
    try {
      parsed = JSON.parse(body)
    } catch {
      return undefined
    }
    const names = new Set(attributes.map((a) => a.toLowerCase()))
    const walk = (v: unknown): void => {
      if (Array.isArray(v)) {
        for (const x of v) walk(x)
      } else if (v !== null && typeof v === 'object') {
        const o = v as Record<string, unknown>
        for (const k of Object.keys(o)) {
          if (names.has(k.toLowerCase())) delete o[k]
          else walk(o[k])
        }
      }
    }
    walk(parsed)
    return JSON.stringify(parsed)
  }
  const alternatives = attributes.map(escapeRegExp).join('|')
  return body.replace(new RegExp(`\\s(?:${alternatives})\\s*=\\s*(?:"[^"]*"|'[^']*')`, 'gi'), '')
}

/** Overwrites every occurrence of the secrets in `buf` with `X`s of the same length; the number replaced. */
export function scrubBuffer (buf: Buffer, secrets: readonly Buffer[]): number {
  let found = 0
  for (const s of secrets) {
    if (s.length === 0) continue
    let at = buf.indexOf(s)
    while (at >= 0) {
      buf.fill(0x58, at, at + s.length)
      found++
      at = buf.indexOf(s, at + s.length)
    }
  }
  return found
}

/**
 * What a scan for a set of secrets needs, computed once per set (the same live token and admin
 * token serve many requests): the secrets as bytes, the longest run to hold back, and which bytes
 * occur in some secret.
 */
export class ScrubPlan {
  readonly secrets: readonly Buffer[]
  readonly keep: number
  /** Bytes that occur in some secret: a secret cannot span any other byte. */
  readonly inSecret = new Uint8Array(256)

  constructor (secrets: readonly string[]) {
    this.secrets = [...new Set(secrets.filter((s) => s.length > 0))].map((s) => Buffer.from(s))
    this.keep = Math.max(0, ...this.secrets.map((s) => s.length)) - 1
    for (const s of this.secrets) for (const b of s) this.inSecret[b] = 1
  }
}

// A few sets at a time: a server's admin token with its clients' live tokens. Cleared when full
// (rotations leave old sets behind), so it never grows without bound.
const PLANS = new Map<string, ScrubPlan>()
const MAX_PLANS = 256

/** The plan for a set of secrets, from a small cache. */
export function scrubPlan (secrets: readonly string[]): ScrubPlan {
  const key = secrets.join('\u0000')
  let plan = PLANS.get(key)
  if (plan === undefined) {
    if (PLANS.size >= MAX_PLANS) PLANS.clear()
    plan = new ScrubPlan(secrets)
    PLANS.set(key, plan)
  }
  return plan
}

/** The secrets as bytes, for `scrubBuffer` (from the same cache as `scrubPlan`). */
export function secretBuffers (secrets: readonly string[]): readonly Buffer[] {
  return scrubPlan(secrets).secrets
}

/**
 * The last line of defence on text answers: a stream that replaces every occurrence of the given
 * secrets (the live transient token and the admin token) by as many `X`s, so the body keeps its
 * length (`Content-Length` and byte ranges stay true) while the secret is gone. It holds back the
 * last `longest - 1` bytes of each chunk, so a secret split across two chunks is still found, and
 * never buffers more than that: the answer streams as it comes, with backpressure.
 */
export class LeakScrubber extends Transform {
  readonly #plan: ScrubPlan
  #tail: Buffer = Buffer.alloc(0)
  readonly #onFound: (n: number) => void

  constructor (secrets: readonly string[] | ScrubPlan, onFound: (n: number) => void) {
    super()
    this.#plan = secrets instanceof ScrubPlan ? secrets : new ScrubPlan(secrets)
    this.#onFound = onFound
  }

  override _transform (chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    const buf = this.#tail.length === 0 ? Buffer.from(chunk) : Buffer.concat([this.#tail, chunk])
    const { secrets, keep, inSecret } = this.#plan
    const found = scrubBuffer(buf, secrets)
    if (found > 0) this.#onFound(found)
    // Only a run of secret bytes at the very end can be the start of a secret the next chunk
    // completes: hold back that run, never more. An event feed's events end with a newline, so
    // each one passes at once instead of waiting for the next.
    let run = 0
    while (run < keep && run < buf.length && inSecret[buf[buf.length - 1 - run]!] === 1) run++
    const cut = buf.length - run
    this.#tail = buf.subarray(cut)
    cb(null, cut > 0 ? buf.subarray(0, cut) : undefined)
  }

  override _flush (cb: TransformCallback): void {
    cb(null, this.#tail.length > 0 ? this.#tail : undefined)
  }
}
