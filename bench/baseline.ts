/**
 * The benchmark's baseline: a bare Fastify server answering POST /v1/tokens with a constant JSON
 * body of the same shape and size as the broker's answer. No auth, no Redis, no rate limit.
 */
import Fastify from 'fastify'

const body = {
  tokenId: 'tk_AAAAAAAAAAAAAAAAAAAAAA',
  token: 'transient-00000000-0000-0000-0000-000000000000',
  server: { name: 'default', machineIdentifier: '0123456789abcdef0123456789abcdef01234567' },
  issuedAt: '2026-01-01T00:00:00.000Z',
  renewAt: '2026-01-02T00:00:00.000Z',
  expiresAt: '2026-01-03T00:00:00.000Z',
}
const app = Fastify({ logger: false })
app.get('/healthz', async () => ({ status: 'ok' }))
app.post('/v1/tokens', async () => body)
await app.listen({ host: '127.0.0.1', port: Number(process.env.PORT ?? 8081) })
