import { Type } from 'typebox'
import { NAME_PATTERN } from '../config/names.ts'
import { IsoDate, NameSchema } from './common.ts'

/** The longest life a proxy key can be given: a credential held by a third-party tool should be renewed at least yearly. */
export const PROXY_KEY_MAX_LIFE_MS = 366 * 24 * 3600_000
export const PROXY_KEY_MAX_LABEL = 100

export const ProxyKeyIdSchema = Type.String({ pattern: '^[A-Za-z0-9_-]{12}$', description: 'The key\'s id: the 12 characters after `pbk_` (never the secret)' })

export const ProxyKeySchema = Type.Object({
  id: Type.String({ description: 'The key\'s id (the part after `pbk_`, before the dot); safe to log and share' }),
  client: Type.String({ description: 'The client whose proxy rules apply' }),
  server: Type.Union([Type.String(), Type.Null()], { description: 'The one server the key may reach; null: every server its client may use' }),
  label: Type.String(),
  createdAt: IsoDate,
  expiresAt: Type.Union([IsoDate, Type.Null()], { description: 'null: no expiry' }),
  revokedAt: Type.Union([IsoDate, Type.Null()], { description: 'The first revocation\'s time; null while not revoked' }),
  state: Type.Union([Type.Literal('active'), Type.Literal('revoked'), Type.Literal('expired'), Type.Literal('orphaned')], {
    description: '`orphaned`: the configuration no longer backs the key (see `orphaned`); it is refused, and works again only if the configuration comes back. Revocation is shown first, then expiry',
  }),
  orphaned: Type.Union([Type.Literal('client-removed'), Type.Literal('no-proxy-section'), Type.Literal('server-removed'), Type.Literal('server-not-allowed'), Type.Null()], {
    description: 'Why the configuration no longer backs the key: its client was removed or lost its `proxy` section, its server was removed or left the client\'s list; null when it does',
  }),
}, { $id: 'ProxyKey', title: 'ProxyKey', description: 'A proxy key\'s record: never its secret or the secret\'s digest' })

export const CreateProxyKeyBodySchema = Type.Object({
  client: Type.String({ pattern: NAME_PATTERN, description: 'The client whose proxy rules apply; it must be in the configuration with a `proxy` section' }),
  server: Type.Optional(Type.String({ pattern: NAME_PATTERN, description: 'The one server the key may reach (one of the client\'s); absent: every server the client may use' })),
  // No control characters: a label is printed in listings and logs, where one could forge a line.
  label: Type.String({ minLength: 1, maxLength: PROXY_KEY_MAX_LABEL, pattern: '^[^\\u0000-\\u001f\\u007f]*$', description: 'What the key is for (e.g. "Tautulli on nas"); 1 to 100 characters, no control characters' }),
  expiresAt: Type.Optional(Type.String({ format: 'date-time', description: 'When the key stops working: in the future, at most 366 days ahead; absent: never (revoke it instead)' })),
}, { additionalProperties: false })

export const CreatedProxyKeySchema = Type.Object({
  key: Type.String({ description: 'The key, `pbk_<id>.<secret>`: shown this once; the broker keeps only a digest of its secret and cannot show it again' }),
  record: ProxyKeySchema,
}, { description: 'The new key (shown once) and its record' })

export const ProxyKeyListQuerySchema = Type.Object({
  client: Type.Optional(NameSchema),
}, { additionalProperties: false })

export const ProxyKeyListSchema = Type.Object({
  keys: Type.Array(ProxyKeySchema),
}, { description: 'The keys the caller may manage (revoked, expired and orphaned ones included), oldest first' })

export const ProxyKeyParamsSchema = Type.Object({ id: ProxyKeyIdSchema })

export const RevokeProxyKeyQuerySchema = Type.Object({
  reason: Type.Optional(Type.String({ minLength: 1, maxLength: 500, description: 'Why: recorded in the audit trail' })),
}, { additionalProperties: false })

export const RevokedProxyKeySchema = Type.Object({
  alreadyRevoked: Type.Boolean({ description: 'true when the key had been revoked before this call (revokedAt is that first time)' }),
  record: ProxyKeySchema,
}, { description: 'The key is revoked: every instance refuses it on its next request' })
