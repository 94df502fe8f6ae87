import type { RedisContext } from './keys.ts'

/** One event of the trail as the API shows it. Never a raw token: `fingerprint` is an HMAC. */
export interface AuditEvent {
  id: string
  time: string
  action: string
  client: string | null
  server: string | null
  tokenId: string | null
  fingerprint: string | null
  /** The broker's id of the request that caused the event. */
  requestId: string | null
  /** The X-Request-Id the caller sent, if any (its own correlation id, not the broker's). */
  clientRequestId: string | null
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
  /**
   * Only events of these servers (an ops client limited to some servers); events without a
   * server are left out too. Undefined: no restriction.
   */
  servers?: readonly string[]
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
  const bar = (f.requestId ?? '').indexOf('|')
  return {
    id,
    time: new Date(Number(f.time ?? id.split('-')[0])).toISOString(),
    action: f.action ?? '',
    client: orNull(f.client),
    server: orNull(f.server),
    tokenId: orNull(f.tokenId),
    fingerprint: orNull(f.fingerprint),
    requestId: orNull(bar === -1 ? f.requestId : f.requestId.slice(0, bar)),
    clientRequestId: bar === -1 ? null : orNull(f.requestId.slice(bar + 1)),
    ip: orNull(f.ip),
    detail,
  }
}

function matches (e: AuditEvent, q: AuditFilter): boolean {
  return (q.action === undefined || e.action === q.action) &&
    (q.client === undefined || e.client === q.client) &&
    (q.server === undefined || e.server === q.server) &&
    (q.servers === undefined || (e.server !== null && q.servers.includes(e.server))) &&
    (q.tokenId === undefined || e.tokenId === q.tokenId) &&
    (q.fingerprint === undefined || (typeof q.fingerprint === 'string' ? e.fingerprint === q.fingerprint : q.fingerprint.includes(e.fingerprint ?? '')))
}

/** Stream ids start with the ms time of the entry, so time bounds map to id bounds. */
const STREAM_ID = /^\d{1,16}-\d{1,16}s?$/

/**
 * A page cursor is the stream id of the last event returned, with `s` appended when that event
 * came from the security stream: the two streams can hold the same id, and the serves event with
 * that id (which sorts after it) is then still to come.
 */
export function isCursor (s: string): boolean {
  return STREAM_ID.test(s)
}

type Entry = [id: string, fields: string[]]

/** Orders stream ids numerically (ms, then sequence). */
function compareIds (a: string, b: string): number {
  const [am, as] = a.split('-')
  const [bm, bs] = b.split('-')
  if (am.length !== bm.length) return am.length - bm.length
  if (am !== bm) return am < bm ? -1 : 1
  return Number(as) - Number(bs)
}

export interface AuditLogOptions {
  /** Called when the security stream had to be cut to AUDIT_MAX_EVENTS before its retention. */
  onDropped?: (count: number) => void
}

/**
 * Reads the audit trail: two Redis Streams. Security events (mints, rotations, revocations,
 * invalidations, admin-token changes, authentication failures, server events) are kept for
 * AUDIT_RETENTION; cache serves go to their own stream, capped at AUDIT_MAX_EVENTS, so a busy
 * client cannot push a revocation out of the trail. Reads merge both by time. Filters are applied
 * while scanning newest first, in chunks, so a page costs a few round trips however large the trail is.
 */
export class AuditLog {
  readonly #db: RedisContext
  readonly #o: AuditLogOptions

  constructor (db: RedisContext, opts: AuditLogOptions = {}) {
    this.#db = db
    this.#o = opts
  }

  /** Both streams newest first, merged; `end` is an exclusive or inclusive upper bound per stream. */
  async * #newestFirst (security: { end: string }, serves: { end: string }, start: string): AsyncGenerator<[Entry, 'security' | 'serves']> {
    const { redis, keys } = this.#db
    const sources = [
      { name: 'security' as const, key: keys.audit, end: security.end, buf: [] as Entry[], done: false },
      { name: 'serves' as const, key: keys.auditServes, end: serves.end, buf: [] as Entry[], done: false },
    ]
    const refill = async (src: typeof sources[number]): Promise<void> => {
      if (src.done || src.buf.length > 0) return
      const chunk = await this.#db.call(() => redis.xrevrange(src.key, src.end, start, 'COUNT', CHUNK)) as Entry[]
      src.buf = chunk
      if (chunk.length < CHUNK) src.done = true
      if (chunk.length > 0) src.end = `(${chunk[chunk.length - 1][0]}`
    }
    while (true) {
      await Promise.all(sources.map(refill))
      const [a, b] = sources
      if (a.buf.length === 0 && b.buf.length === 0) return
      // Newest first; on equal ids the security event comes first.
      const pick = b.buf.length === 0 || (a.buf.length > 0 && compareIds(a.buf[0][0], b.buf[0][0]) >= 0) ? a : b
      yield [pick.buf.shift()!, pick.name]
    }
  }

  /** Newest first. `cursor` is the `next` of the previous page. */
  async page (q: AuditFilter, limit: number, cursor?: string): Promise<AuditPage> {
    const events: AuditEvent[] = []
    const top = q.until === undefined ? '+' : `${q.until}-18446744073709551615`
    let security = { end: top }
    let serves = { end: top }
    if (cursor !== undefined) {
      const fromSecurity = cursor.endsWith('s')
      const id = fromSecurity ? cursor.slice(0, -1) : cursor
      security = { end: `(${id}` }
      serves = { end: fromSecurity ? id : `(${id}` }
    }
    const start = q.since === undefined ? '-' : `${q.since}-0`
    let scanned = 0
    let last: string | undefined
    for await (const [[id, fields], stream] of this.#newestFirst(security, serves, start)) {
      scanned++
      last = stream === 'security' ? `${id}s` : id
      const e = toEvent(id, fields)
      if (matches(e, q)) {
        events.push(e)
        if (events.length === limit) return { events, next: last }
      }
      // Scanned enough for one page: hand back a cursor so the caller can go on.
      if (scanned >= MAX_SCANNED) return { events, next: last }
    }
    return { events, next: null }
  }

  /** Oldest first, every matching event in the range: for NDJSON export to a SIEM. */
  async * export (q: AuditFilter): AsyncGenerator<AuditEvent> {
    const { redis, keys } = this.#db
    const end = q.until === undefined ? '+' : `${q.until}-18446744073709551615`
    const sources = [keys.audit, keys.auditServes].map((key) => ({ key, start: q.since === undefined ? '-' : `${q.since}-0`, buf: [] as Entry[], done: false }))
    while (true) {
      for (const src of sources) {
        if (src.done || src.buf.length > 0) continue
        const chunk = await this.#db.call(() => redis.xrange(src.key, src.start, end, 'COUNT', CHUNK)) as Entry[]
        src.buf = chunk
        if (chunk.length < CHUNK) src.done = true
        if (chunk.length > 0) src.start = `(${chunk[chunk.length - 1][0]}`
      }
      const [a, b] = sources
      if (a.buf.length === 0 && b.buf.length === 0) return
      const pick = b.buf.length === 0 || (a.buf.length > 0 && compareIds(a.buf[0][0], b.buf[0][0]) <= 0) ? a : b
      const [id, fields] = pick.buf.shift()!
      const e = toEvent(id, fields)
      if (matches(e, q)) yield e
    }
  }

  /**
   * Drops events older than the retention from both streams. The security stream has no cap on
   * append; should it still exceed AUDIT_MAX_EVENTS (memory is finite), it is cut here, and the
   * events lost before their retention are counted (ptb_audit_dropped_total) and reported.
   */
  async trim (retentionMs: number, maxEvents?: number): Promise<{ expired: number, dropped: number }> {
    const { redis, keys } = this.#db
    const minId = `${Math.max(0, this.#db.now() - retentionMs)}-0`
    // Exact trimming: it runs once per sweep, and "older than the retention" should mean exactly that.
    const expired = await this.#db.call(() => redis.xtrim(keys.audit, 'MINID', minId)) +
      await this.#db.call(() => redis.xtrim(keys.auditServes, 'MINID', minId))
    let dropped = 0
    if (maxEvents !== undefined) {
      dropped = await this.#db.call(() => redis.xtrim(keys.audit, 'MAXLEN', maxEvents))
      if (dropped > 0) this.#o.onDropped?.(dropped)
    }
    return { expired, dropped }
  }
}
