import { badRequest } from '../errors.ts'
import type { RetireSelector } from './tokens.ts'

/** What `POST /v1/revoke` names, as its body gives it. */
export interface RevokeRequest {
  tokenId?: string
  client?: string
  server?: string
  all?: true
  source?: string
}

/** The selector kinds, as counted in `ptb_revocations_total{selector}` and audited in `detail.selector`. */
export type SelectorKind = 'token' | 'client' | 'server' | 'client_server' | 'source' | 'all'

/**
 * Turns a revoke request into exactly one selector, or a 400. Exactly one of: `{tokenId}`,
 * `{client}`, `{server}`, `{client, server}`, `{source}` (optionally narrowed by client and/or
 * server) or `{all: true}`. `source` with `tokenId` or `all` is refused: the first used to revoke
 * every token and the second silently ignored the source.
 */
export function parseRevokeSelector (r: RevokeRequest): { selector: RetireSelector, kind: SelectorKind } {
  const { tokenId, client, server, all, source } = r
  if (source !== undefined) {
    if (tokenId !== undefined || all !== undefined) {
      throw badRequest('source narrows {client} and/or {server}, or stands alone; it cannot be combined with tokenId or all.')
    }
    const selector: RetireSelector = client !== undefined ? { client, server, target: source } : server !== undefined ? { server, target: source } : { target: source }
    return { selector, kind: 'source' }
  }
  if (tokenId !== undefined && client === undefined && server === undefined && all === undefined) return { selector: { tokenId }, kind: 'token' }
  if (all === true && tokenId === undefined && client === undefined && server === undefined) return { selector: { all: true }, kind: 'all' }
  if (tokenId === undefined && all === undefined && client !== undefined) {
    return server === undefined ? { selector: { client }, kind: 'client' } : { selector: { client, server }, kind: 'client_server' }
  }
  if (tokenId === undefined && all === undefined && server !== undefined) return { selector: { server }, kind: 'server' }
  throw badRequest('Give exactly one selector: {tokenId}, {client}, {server}, {client, server}, {source} (optionally with client and/or server) or {all: true}.')
}
