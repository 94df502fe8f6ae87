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

export const StreamQuerySchema = Type.Object({
  server: NameSchema,
}, { additionalProperties: false })

export const StreamHeadersSchema = Type.Object({
  'last-event-id': Type.Optional(Type.String({
    description: 'Resume: the `id` of the last event received. The broker replays what this client missed for the server since then ' +
      '(a `token` event always carries the current token); when that history is gone, or the id is unknown, the first event is the current token (`reason: current`).',
  })),
})

export const StreamEventsSchema = Type.String({
  description: 'Server-Sent Events (`text/event-stream; charset=utf-8`). It opens with `retry: 2000`; every event has an `id:` ' +
    '(a Redis stream id, increasing; opaque to clients). `event: token`, data `{tokenId, token, server: {name, machineIdentifier}, issuedAt, renewAt, expiresAt, reason}` ' +
    '(reason: current, issued, rotated, reminted, replaced); the first event is the current token. `event: revoked`, data `{tokenId, server, reason, next}` (next: `pushed` when the broker re-mints by itself, `ask` after an ops revocation). ' +
    '`event: server`, data `{server, up}`. A `: ping` comment every STREAM_HEARTBEAT_MS. The stream ends on shutdown, when the client does not read ' +
    '(slow consumer), and after a revocation of all the client\'s tokens (the `revoked` event first).',
})
