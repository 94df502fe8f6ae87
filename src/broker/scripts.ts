import { readFileSync } from 'node:fs'
import type { Result } from 'ioredis'
import type { RedisClient } from '../redis.ts'
import type { Keys } from './keys.ts'
import { PUSH_MAXLEN } from './push-log.ts'

/**
 * The Lua scripts, one `.lua` file each under `scripts/` (each starts with its KEYS and ARGV),
 * read once when this module loads and registered per connection with `defineCommand`: ioredis
 * then sends EVALSHA, so the hot path (a cache hit) stays one round trip. A line
 * `--@include include/x.lua` is replaced by that file (the helpers several scripts share).
 *
 * Each runs atomically in one round trip. Scripts address token records by `tokPrefix .. id` (and
 * current pointers by `curPrefix ..`), keys they are not given as KEYS. On Redis Cluster that is
 * allowed only within the node's own slots: every key of a deployment carries the `{prefix}` hash
 * tag there (keys.ts), so the keys a script builds are in the slot of the KEYS it was given, and
 * ioredis routes it by those.
 *
 * The build copies the `.lua` files next to the compiled module (bin/copy-assets.js).
 */
const DIR = new URL('./scripts/', import.meta.url)

function load (name: string, seen: readonly string[] = []): string {
  if (seen.includes(name)) throw new Error(`Lua include cycle: ${[...seen, name].join(' → ')}`)
  const text = readFileSync(new URL(name, DIR), 'utf8')
  return text.replace(/^--@include (\S+)[ \t]*$/gm, (_line, file: string) => load(file, [...seen, name]))
}

type Cell = string | number | null
type Reply = Cell[]
type Arg = string | number

/** The commands `defineScripts` registers: name → script file and number of KEYS. */
const COMMANDS = {
  ptbServe: { file: 'serve.lua', keys: 5 },
  ptbPeek: { file: 'peek.lua', keys: 1 },
  ptbStore: { file: 'store.lua', keys: 8 },
  ptbRetire: { file: 'retire.lua', keys: 3 },
  ptbAudit: { file: 'audit-event.lua', keys: 1 },
  ptbReseal: { file: 'reseal.lua', keys: 1 },
  ptbUnlock: { file: 'unlock.lua', keys: 1 },
  ptbRenewLock: { file: 'renew-lock.lua', keys: 1 },
  ptbLease: { file: 'lease.lua', keys: 1 },
} as const

const LUA = Object.entries(COMMANDS).map(([name, c]) => ({ name, numberOfKeys: c.keys, lua: load(c.file) }))

declare module 'ioredis' {
  interface RedisCommander<Context> {
    ptbServe(...args: Arg[]): Result<Reply, Context>
    ptbPeek(...args: Arg[]): Result<string | null, Context>
    ptbStore(...args: Arg[]): Result<Reply, Context>
    ptbRetire(...args: Arg[]): Result<Reply, Context>
    ptbAudit(...args: Arg[]): Result<string, Context>
    ptbReseal(...args: Arg[]): Result<number, Context>
    ptbUnlock(...args: Arg[]): Result<number, Context>
    ptbRenewLock(...args: Arg[]): Result<number, Context>
    ptbLease(...args: Arg[]): Result<[number, number], Context>
  }
}

/** Registers the scripts on a connection (idempotent). */
export function defineScripts (redis: RedisClient): void {
  if (typeof (redis as Partial<RedisClient>).ptbServe === 'function') return
  for (const { name, ...command } of LUA) redis.defineCommand(name, command)
}

/** serve.lua's keys and arguments, in its order. */
export function serveArgs (k: Keys, a: {
  slot: string
  server: string
  client: string
  now: number
  requestId: string
  ip: string
  source: 'cache' | 'upstream'
  servesMaxlen: number
  action: string
  target: string
  kids: string
  limitKey: string
  limitMax: number
  limitWindowMs: number
  via: string
}): Arg[] {
  return [
    k.current(a.slot, a.server), k.active(a.server), k.audit, k.auditServes, a.limitKey,
    k.tokenPrefix, a.slot, a.server, a.now, a.requestId, a.ip, a.source, a.servesMaxlen, a.client,
    a.action, a.target, a.kids, a.limitMax, a.limitWindowMs, a.via,
  ]
}

/** store.lua's keys and arguments, in its order. */
export function storeArgs (k: Keys, a: {
  client: string
  server: string
  slot: string
  tokenId: string
  /** The sealed token, and the key id of the secret that sealed it. */
  enc: string
  kid: string
  fingerprint: string
  issuedAt: number
  expiresAt: number
  renewAt: number
  machineIdentifier: string
  now: number
  /** Absent: only if there is no live current token; else a compare-and-set on this id. */
  expectCurrent?: string
  /** Absent: no audit event. */
  audit?: { action: string, detail: Record<string, unknown> }
  requestId: string
  ip: string
  recordTtlMs: number
  /** A source token: the source id and its connection details (JSON). */
  target?: string
  meta?: string
  /** How long the fingerprint index entry lives (AUDIT_RETENTION). */
  retentionMs: number
  pushReason: string
}): Arg[] {
  return [
    k.current(a.slot, a.server), k.byClient(a.client), k.byServer(a.server), k.allTokens, k.audit,
    k.token(a.tokenId), k.fingerprint(a.fingerprint), k.push,
    k.tokenPrefix, a.client, a.server, a.tokenId, a.enc, a.fingerprint, a.issuedAt, a.expiresAt, a.renewAt,
    a.machineIdentifier, a.now, a.expectCurrent ?? '', 'rotated', a.audit?.action ?? '', a.requestId, a.ip,
    JSON.stringify(a.audit?.detail ?? {}), a.recordTtlMs, a.slot, a.target ?? '', a.meta ?? '', a.kid, a.retentionMs,
    a.pushReason, PUSH_MAXLEN,
  ]
}

/** retire.lua's keys and arguments, in its order. */
export function retireArgs (k: Keys, a: {
  /** The ZSET of candidates ('index' mode). */
  index: string
  now: number
  mode: 'one' | 'index'
  tokenId: string
  client: string
  server: string
  target: string
  newState: 'revoked' | 'invalidated'
  action: string
  requestId: string
  ip: string
  detail: string
}): Arg[] {
  return [
    k.audit, a.index, k.push,
    k.tokenPrefix, k.currentPrefix, a.now, a.mode, a.tokenId, a.client, a.server, a.newState, a.action,
    a.requestId, a.ip, a.detail, a.target, PUSH_MAXLEN,
  ]
}

/** audit-event.lua's keys and arguments, in its order. */
export function auditArgs (stream: string, a: {
  maxlen: number
  now: number
  action: string
  client: string
  server: string
  tokenId: string
  fingerprint: string
  requestId: string
  ip: string
  detail: string
}): Arg[] {
  return [stream, a.maxlen, a.now, a.action, a.client, a.server, a.tokenId, a.fingerprint, a.requestId, a.ip, a.detail]
}

/**
 * A script answered with fewer fields than its caller reads: the script and this module are out
 * of step (a stale script cached under the same SHA cannot happen, a hand-edited one can). The
 * message names the script and the kind of reply only, never the fields (they include sealed
 * tokens).
 */
export class MalformedReplyError extends Error {
  constructor (script: string, why: string) {
    super(`${script} replied ${why}`)
    this.name = 'MalformedReplyError'
  }
}

type Tuple<N extends number, R extends Cell[] = []> = R['length'] extends N ? R : Tuple<N, [...R, Cell]>

/** The first `n` fields of a script's reply, or a MalformedReplyError when it has fewer. */
function fields<N extends number> (script: string, reply: readonly Cell[], n: N): Tuple<N> {
  if (reply.length < n) throw new MalformedReplyError(script, `'${String(reply[0] ?? '')}' with ${reply.length} fields, expected at least ${n}`)
  return reply.slice(0, n) as Tuple<N>
}

/** serve.lua's reply (see its Output): every kind carries the client's rate-limit window. */
export type ServeReply = { count: number, ttlMs: number } & (
  | { kind: 'limited' }
  | { kind: 'miss', reason: string }
  | { kind: 'foreign', tokenId: string }
  | { kind: 'unstamped', tokenId: string, enc: string }
  | { kind: 'hit', tokenId: string, enc: string, issuedAt: number, expiresAt: number, renewAt: number, mid: string, meta: string, kid: string }
)

export function readServeReply (reply: readonly Cell[]): ServeReply {
  const [kind, count, ttl] = fields('serve.lua', reply, 3)
  const rate = { count: Number(count), ttlMs: Number(ttl) }
  switch (kind) {
    case 'limited': return { kind, ...rate }
    case 'miss': {
      const [, , , reason] = fields('serve.lua', reply, 4)
      return { kind, ...rate, reason: String(reason) }
    }
    case 'foreign': {
      const [, , , id] = fields('serve.lua', reply, 4)
      return { kind, ...rate, tokenId: String(id) }
    }
    case 'unstamped': {
      const [, , , id, enc] = fields('serve.lua', reply, 5)
      return { kind, ...rate, tokenId: String(id), enc: String(enc) }
    }
    case 'hit': {
      const [, , , id, enc, issuedAt, expiresAt, renewAt, mid, meta, kid] = fields('serve.lua', reply, 11)
      return {
        kind,
        ...rate,
        tokenId: String(id),
        enc: String(enc),
        issuedAt: Number(issuedAt),
        expiresAt: Number(expiresAt),
        renewAt: Number(renewAt),
        mid: String(mid ?? ''),
        meta: String(meta ?? ''),
        kid: String(kid),
      }
    }
    default: throw new MalformedReplyError('serve.lua', `an unknown kind '${String(kind)}'`)
  }
}

/** store.lua's reply: stored (with the id it replaced, if any) or a conflict. */
export function readStoreReply (reply: readonly Cell[]): { ok: boolean, other: string | undefined } {
  const [kind, other] = fields('store.lua', reply, 2)
  if (kind !== 'ok' && kind !== 'conflict') throw new MalformedReplyError('store.lua', `an unknown kind '${String(kind)}'`)
  return { ok: kind === 'ok', other: other === '' || other === null ? undefined : String(other) }
}

/** retire.lua's reply: how many tokens it retired and the latest expiry among them. */
export function readRetireReply (reply: readonly Cell[]): { count: number, latestExpiresAt: number } {
  const [count, latest] = fields('retire.lua', reply, 2)
  return { count: Number(count), latestExpiresAt: Number(latest) }
}
