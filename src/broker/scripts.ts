import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import type { RedisClient } from '../redis.ts'
import type { Keys } from './keys.ts'
import { PUSH_MAXLEN } from './push-log.ts'

/**
 * The Lua scripts, one `.lua` file each under `scripts/` (each starts with its KEYS and ARGV), and
 * one `RedisScript` constant per file below, which names the file, builds its KEYS and ARGV from
 * named fields and reads its reply: a caller runs `SERVE.evaluate(conn, { …fields })`, and "go to definition" on
 * `SERVE` lands on the line that names `scripts/serve.lua`. A line `--@include include/x.lua` is
 * replaced by that file (the helpers several scripts share).
 *
 * Each runs atomically in one round trip. Scripts address token records by `tokPrefix .. id` (and
 * current pointers by `curPrefix ..`), keys they are not given as KEYS. On Redis Cluster that is
 * allowed only within the node's own slots: every key of a deployment carries the `{prefix}` hash
 * tag there (keys.ts), so the keys a script builds are in the slot of the KEYS it was given, and
 * ioredis routes it by those.
 *
 * The build copies the `.lua` files next to the compiled module (bin/copy-assets.js).
 */
const HERE = new URL('./', import.meta.url)

/** The text of a script file, its includes expanded (their paths are relative to the including file). */
function load (url: URL, seen: readonly string[] = []): string {
  if (seen.includes(url.href)) throw new Error(`Lua include cycle: ${[...seen, url.href].join(' → ')}`)
  const text = readFileSync(url, 'utf8')
  return text.replace(/^--@include (\S+)[ \t]*$/gm, (_line, file: string) => load(new URL(file, url), [...seen, url.href]))
}

type Cell = string | number | null
type Arg = string | number

/** Redis answered NOSCRIPT: it does not hold the script under that SHA (restart, failover, SCRIPT FLUSH). */
function isNoScript (err: unknown): boolean {
  return err instanceof Error && err.message.startsWith('NOSCRIPT')
}

/**
 * One Lua script: its file, read once when this module loads, and its SHA; `In` are the named
 * fields its caller passes, `Out` what its reply reads as. `evaluate` sends EVALSHA (one round trip);
 * when Redis does not hold the script (NOSCRIPT) it sends EVAL, which runs it and loads it, so the
 * next EVALSHA finds it.
 */
export class RedisScript<In, Out> {
  /** The file, relative to this module (`scripts/serve.lua`). */
  readonly file: string
  readonly lua: string
  readonly sha: string
  readonly #keys: number
  readonly #args: (input: In) => Arg[]
  readonly #reply: (raw: unknown) => Out

  constructor (file: string, spec: {
    /** How many of the arguments are KEYS (the first ones). */
    keys: number
    /** The KEYS and ARGV, in the script's order. */
    args: (input: In) => Arg[]
    /** The reply, read. */
    reply: (raw: unknown) => Out
  }) {
    this.file = file
    this.lua = load(new URL(file, HERE))
    this.sha = createHash('sha1').update(this.lua).digest('hex')
    this.#keys = spec.keys
    this.#args = spec.args
    this.#reply = spec.reply
  }

  /** Runs the script on `conn` (routed by its first key on Cluster). */
  async evaluate (conn: RedisClient, input: In): Promise<Out> {
    const args = this.#args(input)
    let raw: unknown
    try {
      raw = await conn.evalsha(this.sha, this.#keys, ...args)
    } catch (err) {
      if (!isNoScript(err)) throw err
      raw = await conn.eval(this.lua, this.#keys, ...args)
    }
    return this.#reply(raw)
  }
}

/** serve.lua's keys and arguments, in its order. */
export function serveArgs ({ keys: k, ...a }: {
  keys: Keys
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
export function storeArgs ({ keys: k, ...a }: {
  keys: Keys
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
export function retireArgs ({ keys: k, ...a }: {
  keys: Keys
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
export function auditArgs ({ stream, ...a }: {
  /** The stream to append to. */
  stream: string
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

/** The first `n` fields of a script's reply, or a MalformedReplyError when it is no list or a shorter one. */
function fields<N extends number> (script: string, reply: unknown, n: N): Tuple<N> {
  if (!Array.isArray(reply)) throw new MalformedReplyError(script, `a ${typeof reply}, expected a list`)
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

export function readServeReply (reply: unknown): ServeReply {
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
export function readStoreReply (reply: unknown): { ok: boolean, other: string | undefined } {
  const [kind, other] = fields('store.lua', reply, 2)
  if (kind !== 'ok' && kind !== 'conflict') throw new MalformedReplyError('store.lua', `an unknown kind '${String(kind)}'`)
  return { ok: kind === 'ok', other: other === '' || other === null ? undefined : String(other) }
}

/** retire.lua's reply: how many tokens it retired and the latest expiry among them. */
export function readRetireReply (reply: unknown): { count: number, latestExpiresAt: number } {
  const [count, latest] = fields('retire.lua', reply, 2)
  return { count: Number(count), latestExpiresAt: Number(latest) }
}

/** peek.lua's keys and arguments, in its order. */
export function peekArgs ({ keys: k, ...a }: { keys: Keys, slot: string, server: string, now: number }): Arg[] {
  return [k.current(a.slot, a.server), k.tokenPrefix, a.now]
}

/** reseal.lua's keys and arguments, in its order. */
export function resealArgs ({ keys: k, ...a }: { keys: Keys, tokenId: string, oldKid: string, oldEnc: string, newKid: string, newEnc: string }): Arg[] {
  return [k.token(a.tokenId), a.oldKid, a.oldEnc, a.newKid, a.newEnc]
}

/** unlock.lua's keys and arguments, in its order. */
export function unlockArgs (a: { key: string, owner: string }): Arg[] {
  return [a.key, a.owner]
}

/** renew-lock.lua's keys and arguments, in its order. */
export function renewLockArgs (a: { key: string, owner: string, ttlMs: number }): Arg[] {
  return [a.key, a.owner, a.ttlMs]
}

/** A reply of 1 or 0 (unlock, renew-lock, reseal): whether the script changed the key. */
function readDone (reply: unknown): boolean {
  return Number(reply) === 1
}

/** The scripts: one constant per file, each naming its file, its KEYS count, its arguments and its reply. */
export const SERVE = new RedisScript('scripts/serve.lua', { keys: 5, args: serveArgs, reply: readServeReply })
export const PEEK = new RedisScript('scripts/peek.lua', {
  keys: 1,
  args: peekArgs,
  reply: (id): string | undefined => (id === null || id === undefined ? undefined : String(id)),
})
export const STORE = new RedisScript('scripts/store.lua', { keys: 8, args: storeArgs, reply: readStoreReply })
export const RETIRE = new RedisScript('scripts/retire.lua', { keys: 3, args: retireArgs, reply: readRetireReply })
export const AUDIT_EVENT = new RedisScript('scripts/audit-event.lua', { keys: 1, args: auditArgs, reply: (id): string => String(id) })
export const RESEAL = new RedisScript('scripts/reseal.lua', { keys: 1, args: resealArgs, reply: readDone })
export const UNLOCK = new RedisScript('scripts/unlock.lua', { keys: 1, args: unlockArgs, reply: readDone })
export const RENEW_LOCK = new RedisScript('scripts/renew-lock.lua', { keys: 1, args: renewLockArgs, reply: readDone })

/** A lease of a concurrency limit (stream-leases.ts): `{taken, count}`. */
export interface LeaseInput { key: string, now: number, expiry: number, member: string, max: number, ttlMs: number }
function leaseArgs (i: LeaseInput): Arg[] {
  return [i.key, i.now, i.expiry, i.member, i.max, i.ttlMs]
}
function readLeaseReply (raw: unknown): { taken: boolean, count: number } {
  const r = raw as unknown[]
  return { taken: Number(r[0]) === 1, count: Number(r[1]) }
}
export const LEASE = new RedisScript('scripts/lease.lua', { keys: 1, args: leaseArgs, reply: readLeaseReply })
