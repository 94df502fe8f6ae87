import type { ClientConfig, Scope } from '../config/index.ts'
import type { SelectorKind } from './revoke-selector.ts'
import type { RetireSelector } from './tokens.ts'

/**
 * What a client may do, decided in one place. Every rule is a plain function of the client's
 * configuration (and of what it asks for): no Redis, no request, no Fastify, so each rule is
 * tested on its own (test/policy.test.ts) and routes only ask. A route that refuses hands the
 * `Refusal` built here to `app.refuse` (plugins/auth.ts), which counts the request against the
 * client's limit, records it once per window (broker/refusal-trail.ts) and answers 403.
 *
 * A rule for a new kind of request (a proxied PMS call, say) is one more function here taking
 * the client and what it asks for (`method`, `path`), with its refusal beside it.
 */

/** Why a request was refused, as `auth.denied` events (`detail.reason`) and `ptb_auth_failures_total{reason}` say it. */
export type DenialReason = 'missing_credential' | 'unknown_secret' | 'missing_scope' | 'forbidden_server' | 'forbidden_source' | 'metrics_token'

/** A refused request: the reason, the 403 message the caller reads, and what its audit event records. */
export interface Refusal {
  reason: DenialReason
  message: string
  detail: Record<string, unknown>
}

type Who = Pick<ClientConfig, 'id' | 'scopes' | 'servers'>

/** The client holds the scope, or one of the scopes. */
export function hasScope (client: Who, wanted: Scope | readonly Scope[]): boolean {
  const scopes: readonly Scope[] = typeof wanted === 'string' ? [wanted] : wanted
  return scopes.some((s) => client.scopes.includes(s))
}

/** The client may get tokens of this server, revoke them, rotate it and see its state (its `servers` list names it, or is `*`). */
export function canUseServer (client: Pick<ClientConfig, 'servers'>, server: string): boolean {
  return client.servers === '*' || client.servers.includes(server)
}

/** The client may ask for connection details of this source (its `sources` list names it, or is `*`). */
export function canUseSource (client: Pick<ClientConfig, 'sources'>, source: string): boolean {
  return client.sources === '*' || client.sources.includes(source)
}

/**
 * The client may read this token's state: its own token, or, with `audit:read`, a token of a
 * server in its list. Anything else answers like a missing token (ids of others are not confirmed).
 */
export function canReadToken (client: Who, token: { client: string, server: string }): boolean {
  return token.client === client.id || (client.scopes.includes('audit:read') && canUseServer(client, token.server))
}

/**
 * The client (holding `audit:read`) may see audit events of this server. Events without a server
 * (`null`: failed authentications, which name other clients and addresses) only a client whose
 * list is `*` sees.
 */
export function canSeeAuditOf (client: Pick<ClientConfig, 'servers'>, server: string | null): boolean {
  return client.servers === '*' || (server !== null && client.servers.includes(server))
}

/**
 * The client (holding `proxy-key:manage`) may create, list, read and revoke this proxy key: one
 * bound to a server of its list. A key without a server reaches every server its own client may
 * use, today's and any added to that client later, so only a client whose list is `*` manages
 * those. Keys a client may not manage answer like missing ones (ids are not confirmed).
 */
export function canManageProxyKey (client: Pick<ClientConfig, 'servers'>, key: { server: string | null }): boolean {
  return client.servers === '*' || (key.server !== null && client.servers.includes(key.server))
}

/**
 * The servers a limited client reaches (undefined: `*`, every server). Ops routes narrow what
 * they touch with it: revocations without a server become one per server of the list.
 */
function reach (client: Pick<ClientConfig, 'servers'>): readonly string[] | undefined {
  return client.servers === '*' ? undefined : client.servers
}

/**
 * What a revocation may touch: the selector as is for a client whose list is `*`; for a limited
 * one, `{all: true}` and a named server outside the list are refused, `{client}` and `{source}`
 * without a server become one selector per server of the list, and `{tokenId}` of a token on
 * another server (or an unknown one: `tokenServer` undefined) matches nothing, like an unknown id,
 * so ids of other servers are not confirmed.
 */
export function revocationScope (client: Who, selector: RetireSelector, kind: SelectorKind,
  tokenServer?: string): { selectors: RetireSelector[] } | { refusal: Refusal } {
  const servers = reach(client)
  if (servers === undefined) return { selectors: [selector] }
  if ('all' in selector) return { refusal: refusals.everyServer(client, kind) }
  if ('server' in selector && selector.server !== undefined) {
    return canUseServer(client, selector.server) ? { selectors: [selector] } : { refusal: refusals.server(client, selector.server) }
  }
  if ('tokenId' in selector) return { selectors: tokenServer !== undefined && canUseServer(client, tokenServer) ? [selector] : [] }
  if ('client' in selector) return { selectors: servers.map((s) => ({ ...selector, server: s })) }
  return { selectors: servers.map((s) => ({ server: s, target: selector.target })) }
}

/** The refusals, with the words the caller reads and what the audit event records. */
export const refusals = {
  scope: (client: Pick<ClientConfig, 'id'>, wanted: Scope | readonly Scope[]): Refusal => {
    const scope = (typeof wanted === 'string' ? [wanted] : wanted).join(' or ')
    return { reason: 'missing_scope', message: `Client "${client.id}" lacks the scope ${scope}.`, detail: { scope } }
  },
  server: (client: Pick<ClientConfig, 'id'>, server: string): Refusal =>
    ({ reason: 'forbidden_server', message: `Client "${client.id}" may not use server "${server}".`, detail: { server } }),
  source: (client: Pick<ClientConfig, 'id'>, server: string, source: string): Refusal =>
    ({ reason: 'forbidden_source', message: `Client "${client.id}" may not ask for source "${source}".`, detail: { server, source } }),
  /** A limited client creating a proxy key without a server (canManageProxyKey). */
  unboundProxyKey: (client: Pick<ClientConfig, 'id'>): Refusal => ({
    reason: 'forbidden_server',
    message: `Client "${client.id}" is limited to some servers; a proxy key without a server would reach every server of its client. Give a server.`,
    detail: { proxyKey: 'any-server' },
  }),
  everyServer: (client: Pick<ClientConfig, 'id'>, kind: SelectorKind): Refusal => ({
    reason: 'forbidden_server',
    message: `Client "${client.id}" is limited to some servers; {all: true} needs servers: ["*"]. Revoke per server instead.`,
    detail: { selector: kind },
  }),
}
