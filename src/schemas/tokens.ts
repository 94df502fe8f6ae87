import { Type } from 'typebox'
import { IsoDate, NameSchema, TokenIdSchema } from './common.ts'

export const IssueBodySchema = Type.Object({
  server: NameSchema,
  rejectedTokenId: Type.Optional(TokenIdSchema),
}, { additionalProperties: false })

export const IssuedTokenSchema = Type.Object({
  tokenId: TokenIdSchema,
  token: Type.String({ description: 'The PMS transient token: send it as X-Plex-Token. Treat it as an admin credential.' }),
  server: Type.Object({ name: Type.String(), machineIdentifier: Type.String() }),
  issuedAt: IsoDate,
  renewAt: IsoDate,
  expiresAt: IsoDate,
}, { $id: 'IssuedToken', title: 'IssuedToken' })

export const TokenStateSchema = Type.Union(['active', 'rotated', 'revoked', 'invalidated', 'expired'].map((s) => Type.Literal(s)))

export const TokenInfoSchema = Type.Object({
  tokenId: TokenIdSchema,
  client: Type.String(),
  server: Type.String(),
  state: TokenStateSchema,
  issuedAt: IsoDate,
  expiresAt: IsoDate,
  revokedAt: Type.Optional(Type.String({ format: 'date-time', description: 'When ops revoked it (state revoked)' })),
  invalidatedAt: Type.Optional(Type.String({ format: 'date-time', description: 'When the broker took it out of service (state invalidated)' })),
  reason: Type.Optional(Type.String({ description: 'Why it was revoked (the reason ops gave) or invalidated (server_restart, rejected_by_pms, undecryptable)' })),
}, { $id: 'TokenInfo', title: 'TokenInfo' })

export const TokenIdParamsSchema = Type.Object({ tokenId: Type.String({ maxLength: 64 }) })
