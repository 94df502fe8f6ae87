import { type Static, Type } from 'typebox'
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
}, { $id: 'IssuedToken', title: 'IssuedToken', description: 'The client\'s current token for the server: send `token` as X-Plex-Token; ask again at `renewAt`' })

/**
 * The answer of POST /v1/tokens. The client library (src/client/, packaged on its own, so it does
 * not import this) declares the same shape; test/issued-token.test.ts holds the two together.
 */
export type IssuedToken = Static<typeof IssuedTokenSchema>

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
}, { $id: 'TokenInfo', title: 'TokenInfo', description: 'What the broker knows about the token (never the token itself)' })

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

const literals = (values: string[]) => Type.Union(values.map((v) => Type.Literal(v)))

/**
 * The `data` of each event of the push channel, by event name: published in the OpenAPI document
 * as the stream operation's `x-events` (OpenAPI has no way to describe the events of an SSE body).
 */
export const StreamEventDataSchemas = {
  token: Type.Object({
    ...IssuedTokenSchema.properties,
    reason: literals(['current', 'issued', 'rotated', 'reminted', 'replaced']),
  }, {
    additionalProperties: false,
    description: 'The client\'s current token (the answer of POST /v1/tokens) and why it is sent: `current` first, then `issued`, `rotated`, `reminted` or `replaced`',
  }),
  revoked: Type.Object({
    tokenId: TokenIdSchema,
    server: Type.String(),
    reason: Type.String({ description: 'The reason ops gave, or why the broker took the token out of service' }),
    next: literals(['pushed', 'ask']),
  }, {
    additionalProperties: false,
    description: 'A token of the client is no longer served. `next: pushed`: the broker re-mints by itself and a `token` event follows; ' +
      '`ask`: an ops revocation, ask again (after a revocation of all the client\'s tokens the stream ends here)',
  }),
  server: Type.Object({
    server: Type.String(),
    up: Type.Boolean(),
  }, { additionalProperties: false, description: 'The PMS went down (`up: false`) or came back (`up: true`)' }),
}

export const StreamEventsSchema = Type.String({
  description: 'Server-Sent Events (`text/event-stream; charset=utf-8`). It opens with `retry: 2000`; every event has an `id:` ' +
    '(a Redis stream id, increasing; opaque to clients). `event: token`, data `{tokenId, token, server: {name, machineIdentifier}, issuedAt, renewAt, expiresAt, reason}` ' +
    '(reason: current, issued, rotated, reminted, replaced); the first event is the current token. `event: revoked`, data `{tokenId, server, reason, next}` (next: `pushed` when the broker re-mints by itself, `ask` after an ops revocation). ' +
    '`event: server`, data `{server, up}`. Each event\'s data has a JSON Schema in the operation\'s `x-events`. A `: ping` comment every STREAM_HEARTBEAT_MS. The stream ends on shutdown, when the client does not read ' +
    '(slow consumer), and after a revocation of all the client\'s tokens (the `revoked` event first).',
})
