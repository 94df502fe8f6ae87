import type { Logger } from 'pino'
import type { Metrics } from '../metrics.ts'
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
   * Which events the reader may see, by their server (`null`: events without one); policy.ts
   * `canSeeAuditOf` for the reading client. Undefined: every event.
   */
  visible?: (server: string | null) => boolean
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
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const name = fields[i]
    const value = fields[i + 1]
    if (name !== undefined && value !== undefined) f[name] = value
  }
  const orNull = (v: string | undefined): string | null => (v === undefined || v === '' ? null : v)
  let detail: Record<string, unknown> = {}
  try {
    const parsed = JSON.parse(f.detail ?? '{}') as unknown
    // Lua's cjson encodes an empty table as [].
    if (parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed)) detail = parsed as Record<string, unknown>
  } catch {}
  const requestId = f.requestId ?? ''
  const bar = requestId.indexOf('|')
  return {
    id,
    time: new Date(Number(f.time ?? id.split('-')[0])).toISOString(),
    action: f.action ?? '',
    client: orNull(f.client),
    server: orNull(f.server),
    tokenId: orNull(f.tokenId),
    fingerprint: orNull(f.fingerprint),
    requestId: orNull(bar === -1 ? requestId : requestId.slice(0, bar)),
    clientRequestId: bar === -1 ? null : orNull(requestId.slice(bar + 1)),
    ip: orNull(f.ip),
    detail,
  }
}

function matches (e: AuditEvent, q: AuditFilter): boolean {
  return (q.action === undefined || e.action === q.action) &&
    (q.client === undefined || e.client === q.client) &&
    (q.server === undefined || e.server === q.server) &&
    (q.visible === undefined || q.visible(e.server)) &&
    (q.tokenId === undefined || e.tokenId === q.tokenId) &&
    (q.fingerprint === undefined || (typeof q.fingerprint === 'string' ? e.fingerprint === q.fingerprint : q.fingerprint.includes(e.fingerprint ?? '')))
}

/** Stream ids start with the ms time of the entry, so time bounds map to id bounds. */
const STREAM_ID = /^\d{1,16}-\d{1,16}[sr]?$/

/**
 * The three streams of the trail, in the order events with the same id are read newest first,
 * each with the letter its cursors end in.
 */
const STREAMS = [
  { name: 'security', key: 'audit', mark: 's' },
  { name: 'refusals', key: 'auditRefusals', mark: 'r' },
  { name: 'serves', key: 'auditServes', mark: '' },
] as const

/**
 * A page cursor is the stream id of the last event returned, with `s` appended when that event
 * came from the security stream and `r` when from the refusals stream: the streams can hold the
 * same id, and the events with that id in the streams read after it are then still to come.
 */
export function isCursor (s: string): boolean {
  return STREAM_ID.test(s)
}

type Entry = [id: string, fields: string[]]

/** Orders stream ids numerically (ms, then sequence). */
function compareIds (a: string, b: string): number {
  // Every stream id has the form `ms-seq`; split always yields the first part.
  const [am = '', as] = a.split('-')
  const [bm = '', bs] = b.split('-')
  if (am.length !== bm.length) return am.length - bm.length
  if (am !== bm) return am < bm ? -1 : 1
  return Number(as) - Number(bs)
}

export interface AuditLogOptions {
  /** Counts (`ptb_audit_dropped_total`) and reports security events cut to AUDIT_MAX_EVENTS before their retention. */
  metrics: Metrics
  logger: Logger
}

/**
 * Reads the audit trail: three Redis Streams. Security events (mints, rotations, revocations,
 * invalidations, admin-token changes, server events) are kept for AUDIT_RETENTION; cache serves
 * and refusals (`auth.denied`, coalesced by broker/refusal-trail.ts) go to streams of their own,
 * each capped at AUDIT_MAX_EVENTS, so neither a busy client nor a flood of refused requests can
 * push a revocation out of the trail. Reads merge the three by time. Filters are applied
 * while scanning newest first, in chunks, so a page costs a few round trips however large the trail is.
 */
export class AuditLog {
  readonly #rc: RedisContext
  readonly #o: AuditLogOptions

  constructor (rc: RedisContext, opts: AuditLogOptions) {
    this.#rc = rc
    this.#o = opts
  }

  /** Every stream newest first, merged; `ends[i]` is the exclusive or inclusive upper bound of stream i. */
  async * #newestFirst (ends: string[], start: string): AsyncGenerator<[Entry, string]> {
    const { redis, keys } = this.#rc
    const sources = STREAMS.map((st, i) => ({ key: keys[st.key], mark: st.mark, end: ends[i] ?? '+', buf: [] as Entry[], done: false }))
    const refill = async (src: typeof sources[number]): Promise<void> => {
      if (src.done || src.buf.length > 0) return
      const chunk = await this.#rc.call(() => redis.xrevrange(src.key, src.end, start, 'COUNT', CHUNK)) as Entry[]
      src.buf = chunk
      if (chunk.length < CHUNK) src.done = true
      const oldest = chunk.at(-1)
      if (oldest !== undefined) src.end = `(${oldest[0]}`
    }
    while (true) {
      await Promise.all(sources.map(refill))
      // Newest first; on equal ids the stream listed first in STREAMS comes first.
      let pick: { src: typeof sources[number], head: Entry } | undefined
      for (const src of sources) {
        const head = src.buf[0]
        if (head !== undefined && (pick === undefined || compareIds(head[0], pick.head[0]) > 0)) pick = { src, head }
      }
      if (pick === undefined) return
      pick.src.buf.shift()
      yield [pick.head, pick.src.mark]
    }
  }

  /** Newest first. `cursor` is the `next` of the previous page. */
  async page (q: AuditFilter, limit: number, cursor?: string): Promise<AuditPage> {
    const events: AuditEvent[] = []
    const top = q.until === undefined ? '+' : `${q.until}-18446744073709551615`
    let ends = STREAMS.map(() => top)
    if (cursor !== undefined) {
      // The streams up to the cursor's own have given every event with its id; the later ones not yet.
      const mark = /[sr]$/.test(cursor) ? cursor.slice(-1) : ''
      const id = mark === '' ? cursor : cursor.slice(0, -1)
      const at = STREAMS.findIndex((st) => st.mark === mark)
      ends = STREAMS.map((_, i) => (i <= at ? `(${id}` : id))
    }
    const start = q.since === undefined ? '-' : `${q.since}-0`
    let scanned = 0
    let last: string | undefined
    for await (const [[id, fields], mark] of this.#newestFirst(ends, start)) {
      scanned++
      last = `${id}${mark}`
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
    const { redis, keys } = this.#rc
    const end = q.until === undefined ? '+' : `${q.until}-18446744073709551615`
    const sources = STREAMS.map((st) => ({ key: keys[st.key], start: q.since === undefined ? '-' : `${q.since}-0`, buf: [] as Entry[], done: false }))
    while (true) {
      for (const src of sources) {
        if (src.done || src.buf.length > 0) continue
        const chunk = await this.#rc.call(() => redis.xrange(src.key, src.start, end, 'COUNT', CHUNK)) as Entry[]
        src.buf = chunk
        if (chunk.length < CHUNK) src.done = true
        const newest = chunk.at(-1)
        if (newest !== undefined) src.start = `(${newest[0]}`
      }
      // Oldest first; on equal ids the stream listed first in STREAMS comes first.
      let pick: { src: typeof sources[number], head: Entry } | undefined
      for (const src of sources) {
        const head = src.buf[0]
        if (head !== undefined && (pick === undefined || compareIds(head[0], pick.head[0]) < 0)) pick = { src, head }
      }
      if (pick === undefined) return
      pick.src.buf.shift()
      const [id, fields] = pick.head
      const e = toEvent(id, fields)
      if (matches(e, q)) yield e
    }
  }

  /**
   * Who received the token with one of these fingerprints (Sealer.fingerprints), from the index the
   * store script writes at mint (kept for AUDIT_RETENTION): found however many events were written since.
   */
  async holder (fingerprints: readonly string[]): Promise<{ tokenId: string, client: string, server: string, issuedAt: number, fingerprint: string } | undefined> {
    if (fingerprints.length === 0) return undefined
    const found = await this.#rc.call(() => this.#rc.redis.mget(...fingerprints.map((fp) => this.#rc.keys.fingerprint(fp))))
    for (const [i, v] of found.entries()) {
      if (v === null) continue
      const [tokenId = '', client = '', server = '', issuedAt] = v.split('|')
      return { tokenId, client, server, issuedAt: Number(issuedAt), fingerprint: fingerprints[i] ?? '' }
    }
    return undefined
  }

  /**
   * Drops events older than the retention from every stream. The security stream has no cap on
   * append; should it still exceed AUDIT_MAX_EVENTS (memory is finite), it is cut here, and the
   * events lost before their retention are counted (ptb_audit_dropped_total) and reported.
   */
  async trim (retentionMs: number, maxEvents?: number): Promise<{ expired: number, dropped: number }> {
    const { redis, keys } = this.#rc
    const minId = `${Math.max(0, this.#rc.now() - retentionMs)}-0`
    // Exact trimming: it runs once per sweep, and "older than the retention" should mean exactly that.
    let expired = 0
    for (const st of STREAMS) expired += await this.#rc.call(() => redis.xtrim(keys[st.key], 'MINID', minId))
    let dropped = 0
    if (maxEvents !== undefined) {
      dropped = await this.#rc.call(() => redis.xtrim(keys.audit, 'MAXLEN', maxEvents))
      if (dropped > 0) {
        this.#o.metrics.auditDropped.inc(dropped)
        this.#o.logger.warn({ dropped, max: maxEvents }, 'security audit events cut before AUDIT_RETENTION: the trail exceeded AUDIT_MAX_EVENTS; raise it or export the trail more often')
      }
    }
    return { expired, dropped }
  }
}
