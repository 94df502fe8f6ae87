import { Type } from 'typebox'
import { IsoDate, NameSchema, TokenIdSchema } from './common.ts'

export const RevokeBodySchema = Type.Object({
  tokenId: Type.Optional(TokenIdSchema),
  client: Type.Optional(NameSchema),
  server: Type.Optional(NameSchema),
  all: Type.Optional(Type.Literal(true)),
  source: Type.Optional(Type.String({ minLength: 1, maxLength: 200, description: 'Only tokens for this source (server://… or provider://…); alone or with client and/or server, never with tokenId or all (400)' })),
  reason: Type.String({ minLength: 1, maxLength: 500, description: 'Why: recorded in the audit trail' }),
}, {
  additionalProperties: false,
  description: 'Exactly one selector: {tokenId}, {client}, {server}, {client, server}, {source} (optionally with client and/or server) or {all: true}; plus a reason. ' +
    'A caller limited to some servers reaches only tokens of those servers: a server outside its list and {all: true} are 403, ' +
    '{client} and {source} are narrowed to its servers, {tokenId} of another server revokes nothing.',
})

export const RevokeResultSchema = Type.Object({
  revoked: Type.Integer({ description: 'How many live tokens were revoked' }),
  upstreamStillValidUntil: Type.Union([IsoDate, Type.Null()], {
    description: 'PMS has no call to kill a transient token: the revoked tokens stay valid at PMS until this time or the next PMS restart.',
  }),
}, { $id: 'RevokeResult', title: 'RevokeResult', description: 'How many tokens were revoked, and until when PMS still accepts them' })

const Nullable = <T extends Parameters<typeof Type.Union>[0][number]>(t: T) => Type.Union([t, Type.Null()])

export const AuditEventSchema = Type.Object({
  id: Type.String({ description: 'Redis stream id; also the pagination cursor' }),
  time: IsoDate,
  action: Type.String({ description: 'token.issue, token.rotate, token.revoke, token.invalidate, source.connect, server.restart, server.down, server.up, server.admin_token, auth.denied, proxy-key.create, proxy-key.revoke' }),
  client: Nullable(Type.String()),
  server: Nullable(Type.String()),
  tokenId: Nullable(Type.String()),
  fingerprint: Nullable(Type.String({ description: 'HMAC-SHA256 of the token under a key derived from BROKER_SECRET' })),
  requestId: Nullable(Type.String({ description: 'The broker\'s id of the request (also its X-Request-Id response header and log reqId); null for background work' })),
  clientRequestId: Nullable(Type.String({ description: 'The X-Request-Id the caller sent, if valid: the caller\'s own correlation id, never taken as the broker\'s' })),
  ip: Nullable(Type.String({ description: 'The caller\'s address: the socket\'s, or the client address a trusted proxy (TRUST_PROXY) forwarded' })),
  detail: Type.Record(Type.String(), Type.Unknown()),
}, { $id: 'AuditEvent', title: 'AuditEvent' })

export const AuditQuerySchema = Type.Object({
  action: Type.Optional(Type.String({ maxLength: 64 })),
  client: Type.Optional(NameSchema),
  server: Type.Optional(NameSchema),
  tokenId: Type.Optional(TokenIdSchema),
  since: Type.Optional(IsoDate),
  until: Type.Optional(IsoDate),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 100 })),
  cursor: Type.Optional(Type.String({ pattern: '^\\d{1,16}-\\d{1,16}[sr]?$', description: 'The `next` of the previous page' })),
}, { additionalProperties: false })

export const AuditExportQuerySchema = Type.Object({
  action: Type.Optional(Type.String({ maxLength: 64 })),
  client: Type.Optional(NameSchema),
  server: Type.Optional(NameSchema),
  since: Type.Optional(IsoDate),
  until: Type.Optional(IsoDate),
}, { additionalProperties: false })

export const AuditPageSchema = Type.Object({
  events: Type.Array(AuditEventSchema),
  next: Nullable(Type.String()),
}, { description: 'One page of audit events, newest first; `next` is the cursor of the following page (null on the last)' })

export const TraceBodySchema = Type.Object({
  token: Type.String({ minLength: 1, maxLength: 512, description: 'The token value found somewhere; hashed on arrival, never stored or logged' }),
}, { additionalProperties: false })

export const TraceResultSchema = Type.Object({
  fingerprint: Type.String(),
  holder: Nullable(Type.Object({ client: Type.String(), server: Type.String(), tokenId: Type.String() })),
  events: Type.Array(AuditEventSchema),
}, { description: 'The token\'s fingerprint, who it was issued to (null when unknown to this caller) and the events that mention it' })

export const ServerInfoSchema = Type.Object({
  name: Type.String(),
  url: Type.String(),
  machineIdentifier: Nullable(Type.String()),
  version: Nullable(Type.String()),
  state: Type.Union([Type.Literal('up'), Type.Literal('down'), Type.Literal('unknown')]),
  lastProbeAt: Nullable(IsoDate),
  lastRestartAt: Nullable(IsoDate),
  activeTokens: Type.Integer({ description: 'Clients that asked for a token of this server within TOKEN_LIFETIME' }),
  vulnerable: Type.Boolean({ description: 'PMS at or below 1.42.2.10156 (CVE-2025-69414): a transient token can be turned into a permanent one' }),
  adminToken: Type.Object({
    state: Type.Union([Type.Literal('valid'), Type.Literal('invalid'), Type.Literal('unknown')]),
    checkedAt: Nullable(IsoDate),
    source: Type.String({ description: 'Where the admin token comes from: token, file or preferences' }),
  }),
}, { $id: 'ServerInfo', title: 'ServerInfo' })

export const ServerParamsSchema = Type.Object({ name: NameSchema })
export const RotateResultSchema = Type.Object({ rotating: Type.Integer() }, { description: 'Rotations queued, one per active client; clients get the new token on their next request' })
