import type { TokenStore } from './token-store.ts'

/** One event of the trail as the API shows it. Never a raw token: `fingerprint` is an HMAC. */
export interface AuditEvent {
  id: string
  time: string
  action: string
  client: string | null
  server: string | null
  tokenId: string | null
  fingerprint: string | null
  requestId: string | null
  ip: string | null
  detail: Record<string, unknown>
}

export interface AuditFilter {
  action?: string
  client?: string
  server?: string
  tokenId?: string
  /** One fingerprint, or any of several (a token's fingerprints under each known BROKER_SECRET). */
  fingerprint?: string | readonly string[]
  /** Inclusive bounds, ms since epoch. */
  since?: number
  until?: number
}

export interface AuditPage {
  events: AuditEvent[]
  /** Pass back as `cursor` for the next (older) page; null when the range is exhausted. */
  next: string | null
}

const CHUNK = 1000
/** Upper bound of entries one page looks at, so a filter that matches nothing cannot scan forever. */
const MAX_SCANNED = 200_000

function toEvent (id: string, fields: string[]): AuditEvent {
  const f: Record<string, string> = {}
  for (let i = 0; i + 1 < fields.length; i += 2) f[fields[i]] = fields[i + 1]
  const orNull = (v: string | undefined): string | null => (v === undefined || v === '' ? null : v)
  let detail: Record<string, unknown> = {}
  try {
    const parsed = JSON.parse(f.detail ?? '{}') as unknown
    // Lua's cjson encodes an empty table as [].
    if (parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed)) detail = parsed as Record<string, unknown>
  } catch {}
  return {
    id,
    time: new Date(Number(f.time ?? id.split('-')[0])).toISOString(),
    action: f.action ?? '',
    client: orNull(f.client),
    server: orNull(f.server),
    tokenId: orNull(f.tokenId),
    fingerprint: orNull(f.fingerprint),
    requestId: orNull(f.requestId),
    ip: orNull(f.ip),
    detail,
  }
}

function matches (e: AuditEvent, q: AuditFilter): boolean {
  return (q.action === undefined || e.action === q.action) &&
    (q.client === undefined || e.client === q.client) &&
    (q.server === undefined || e.server === q.server) &&
    (q.tokenId === undefined || e.tokenId === q.tokenId) &&
    (q.fingerprint === undefined || (typeof q.fingerprint === 'string' ? e.fingerprint === q.fingerprint : q.fingerprint.includes(e.fingerprint ?? '')))
}

/** Stream ids start with the ms time of the entry, so time bounds map to id bounds. */
const STREAM_ID = /^\d{1,16}-\d{1,16}$/

export function isCursor (s: string): boolean {
  return STREAM_ID.test(s)
}

/**
 * Reads the audit trail (a Redis Stream). Filters are applied while scanning the stream newest
 * first, in chunks, so a page costs a few round trips however large the trail is.
 */
export class AuditLog {
  readonly #store: TokenStore

  constructor (store: TokenStore) {
    this.#store = store
  }

  /** Newest first. `cursor` is the `next` of the previous page. */
  async page (q: AuditFilter, limit: number, cursor?: string): Promise<AuditPage> {
    const { redis, keys } = this.#store
    const events: AuditEvent[] = []
    let end = cursor === undefined ? (q.until === undefined ? '+' : `${q.until}-18446744073709551615`) : `(${cursor}`
    const start = q.since === undefined ? '-' : `${q.since}-0`
    let scanned = 0
    while (scanned < MAX_SCANNED) {
      const chunk = await this.#store.call(() => redis.xrevrange(keys.audit, end, start, 'COUNT', CHUNK))
      if (chunk.length === 0) return { events, next: null }
      for (const [id, fields] of chunk) {
        scanned++
        const e = toEvent(id, fields)
        if (matches(e, q)) {
          events.push(e)
          if (events.length === limit) return { events, next: id }
        }
      }
      const lastId = chunk[chunk.length - 1][0]
      if (chunk.length < CHUNK) return { events, next: null }
      end = `(${lastId}`
    }
    // Scanned enough for one page: hand back a cursor so the caller can go on.
    return { events, next: end.slice(1) }
  }

  /** Oldest first, every matching event in the range: for NDJSON export to a SIEM. */
  async * export (q: AuditFilter): AsyncGenerator<AuditEvent> {
    const { redis, keys } = this.#store
    let start = q.since === undefined ? '-' : `${q.since}-0`
    const end = q.until === undefined ? '+' : `${q.until}-18446744073709551615`
    while (true) {
      const chunk = await this.#store.call(() => redis.xrange(keys.audit, start, end, 'COUNT', CHUNK))
      for (const [id, fields] of chunk) {
        const e = toEvent(id, fields)
        if (matches(e, q)) yield e
      }
      if (chunk.length < CHUNK) return
      start = `(${chunk[chunk.length - 1][0]}`
    }
  }

  /** Drops events older than the retention (the entry cap is applied on every append). */
  async trim (retentionMs: number): Promise<number> {
    const { redis, keys } = this.#store
    const minId = `${Math.max(0, this.#store.now() - retentionMs)}-0`
    // Exact trimming: it runs once per sweep, and "older than the retention" should mean exactly that.
    return await this.#store.call(() => redis.xtrim(keys.audit, 'MINID', minId))
  }
}
