import { Type } from 'typebox'
import { IsoDate, NameSchema, TokenIdSchema } from './common.ts'

/** `server://<machineIdentifier>` (a shared PMS) or `provider://<id>` (a cloud media provider). */
export const SourceIdSchema = Type.String({
  pattern: '^(server://[A-Za-z0-9]{1,64}|provider://[A-Za-z0-9._-]{1,128})$',
  description: 'server://<machineIdentifier> or provider://<identifier>',
})

export const ConnectBodySchema = Type.Object({
  server: NameSchema,
  source: SourceIdSchema,
}, { additionalProperties: false })

export const ConnectionSchema = Type.Object({
  uri: Type.String(),
  protocol: Type.String(),
  address: Type.String(),
  port: Type.Integer(),
  local: Type.Boolean(),
  relay: Type.Boolean(),
})

export const SourceConnectionSchema = Type.Object({
  source: Type.String(),
  name: Type.String(),
  clientIdentifier: Type.String(),
  token: Type.String({ description: 'Transient token for the source: send it as X-Plex-Token to the connections below' }),
  connections: Type.Array(ConnectionSchema, { description: 'Ordered local → remote → relay, as Plex clients prefer them' }),
  issuedAt: IsoDate,
  renewAt: IsoDate,
  expiresAt: IsoDate,
  tokenId: TokenIdSchema,
}, { $id: 'SourceConnection', title: 'SourceConnection', description: 'How to reach the source and the token to send it' })
