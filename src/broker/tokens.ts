import type { RequestContext } from './audit-writer.ts'
import type { TokenReason } from './push-log.ts'

/**
 * What a token is to the broker: its states, its record, and the slot it is kept for. The token
 * store (token-store.ts) reads and writes them; routes and jobs speak of them.
 */

export type TokenState = 'active' | 'rotated' | 'revoked' | 'invalidated' | 'expired'

/** What the broker hands a client. */
export interface ServedToken {
  tokenId: string
  token: string
  issuedAt: number
  expiresAt: number
  renewAt: number
  machineIdentifier: string
  /** For a source token: the connection details PMS returned with it (JSON). */
  meta: string
}

/**
 * A slot is what one current token is kept for: a client's PMS token (the client id), or a
 * client's token for a source that PMS knows (`client~<base64url(source)>`). `~` never occurs in
 * client ids, and base64url has no `:`, so a slot fits in a key and decodes back.
 */
export function slotKey (client: string, target?: string): string {
  return target === undefined || target === '' ? client : `${client}~${Buffer.from(target).toString('base64url')}`
}

export function parseSlot (slot: string): { client: string, target?: string } {
  const i = slot.indexOf('~', 1)
  if (i < 0) return { client: slot }
  return { client: slot.slice(0, i), target: Buffer.from(slot.slice(i + 1), 'base64url').toString() }
}

export interface TokenRecord {
  tokenId: string
  client: string
  server: string
  state: TokenState
  issuedAt: number
  expiresAt: number
  renewAt: number
  lastUsedAt: number
  fingerprint: string
  slot: string
  /** The source id for a source token, '' for a PMS token. */
  target: string
  /** When the token was revoked or invalidated, and why (the reason given by ops or the broker). */
  retiredAt?: number
  reason?: string
}

/** `target`: only tokens of this source; '-' only PMS tokens; absent: both. */
export type RetireSelector =
  | { tokenId: string }
  | { client: string, server?: string, target?: string }
  | { server: string, target?: string }
  | { all: true, target?: string }
  | { target: string }

/** The audit event a change of token is recorded with (mint, rotation). */
export interface TokenAudit {
  action: string
  detail: Record<string, unknown>
}

/** What a new token is stored with (`put`). */
export interface NewToken {
  client: string
  server: string
  token: string
  issuedAt: number
  lifetimeMs: number
  renewAfterMs: number
  machineIdentifier: string
  /** A compare-and-set for rotations: the new token lands only if this one is still current. */
  expectCurrent?: string
  audit?: TokenAudit
  ctx?: RequestContext
  /** A source token: the source id and its connection details (JSON). */
  target?: string
  meta?: string
  /** The push channel's `reason` for a client's new token; by default derived from `audit` (push-log.ts tokenReason). */
  reason?: TokenReason
}

/** A client's current token record as a rotation sweep reads it (`currentTokens`). */
export interface CurrentToken {
  client: string
  tokenId: string
  state: string | null
  issuedAt: number
  renewAt: number
  expiresAt: number
}
