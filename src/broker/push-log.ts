/**
 * The push channel's change log: a capped Redis stream (`keys.push`) that the Lua scripts write
 * in the same step as the change itself (STORE: a client's new current token; RETIRE: a client's
 * current token revoked or invalidated) and the probe writes with a server's up/down flip. Every
 * broker instance reads it (push.ts) and tells its own streams. Entries carry ids only: never a
 * token, never its ciphertext; a stream reads the token itself through the token store.
 *
 * A stream, not pub/sub: an entry stays readable after it was written, so a client reconnecting
 * with `Last-Event-ID` gets what it missed, and an instance whose reader lost its connection picks
 * up where it left off instead of losing what was published meanwhile.
 */

/** Entries kept (XADD MAXLEN ~): a few hours of changes for thousands of clients, a few MB. */
export const PUSH_MAXLEN = 10_000

/** Why a client has a new token (the `reason` of a `token` event). */
export type TokenReason = 'current' | 'issued' | 'rotated' | 'reminted' | 'replaced'

/**
 * `revoked` entries of a `{client}` or `{all}` revocation are written once for the whole client,
 * with an empty `tokenId` and `*` for server (and client, for `{all}`): push.ts `concerns`.
 */
export type PushEntry =
  | { id: string, type: 'token', client: string, server: string, tokenId: string, reason: TokenReason }
  | { id: string, type: 'revoked', client: string, server: string, tokenId: string, reason: string, action: string, selector: string }
  | { id: string, type: 'server', server: string, up: boolean }

/** The `reason` a stored token is announced with, from what the store was told about it. */
export function tokenReason (audit: { action: string, detail: Record<string, unknown> } | undefined): TokenReason {
  if (audit?.action !== 'token.rotate') return 'issued'
  const why = audit.detail.reason
  return why === 'restart' ? 'reminted' : why === 'rejected' ? 'replaced' : 'rotated'
}

/** One XREAD/XRANGE entry as a PushEntry; undefined for anything malformed (never trusted blindly). */
export function parsePushEntry (id: string, fields: string[]): PushEntry | undefined {
  const f = new Map<string, string>()
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const name = fields[i]
    const value = fields[i + 1]
    if (name !== undefined && value !== undefined) f.set(name, value)
  }
  const server = f.get('server')
  if (server === undefined) return undefined
  const type = f.get('type')
  if (type === 'server') return { id, type, server, up: f.get('up') === '1' }
  const client = f.get('client')
  const tokenId = f.get('tokenId')
  if (client === undefined || tokenId === undefined) return undefined
  if (type === 'token') return { id, type, client, server, tokenId, reason: (f.get('reason') ?? 'issued') as TokenReason }
  if (type === 'revoked') {
    return { id, type, client, server, tokenId, reason: f.get('reason') ?? '', action: f.get('action') ?? '', selector: f.get('selector') ?? '' }
  }
  return undefined
}

/** Stream ids (`<ms>-<seq>`) compared as numbers; -1, 0, 1. */
export function compareIds (a: string, b: string): number {
  const [am = 0n, as = 0n] = a.split('-').map(BigInt)
  const [bm = 0n, bs = 0n] = b.split('-').map(BigInt)
  if (am !== bm) return am < bm ? -1 : 1
  if (as !== bs) return as < bs ? -1 : 1
  return 0
}

/** What a client may send as Last-Event-ID: a stream id. */
export const STREAM_ID = /^\d{1,20}-\d{1,20}$/
