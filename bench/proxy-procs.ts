/**
 * Processes of `npm run bench proxy`, each on its own so that load generator, proxy and PMS do
 * not share a CPU's event loop:
 * - `sim PORT TOKEN`: the PMS simulator, with a 1 GiB media part (part 1).
 * - `bare PORT UPSTREAM TOKEN`: the baseline proxy: bare Fastify + @fastify/reply-from forwarding
 *   every request to UPSTREAM with the token as X-Plex-Token. No key check, no rules, no Redis.
 */
import Fastify from 'fastify'
import replyFrom from '@fastify/reply-from'
import { PmsSimulator } from '../src/sim/pms-sim.ts'

const [mode, port, a = '', b = ''] = process.argv.slice(2)
if (mode === 'sim') {
  await PmsSimulator.start({ port: Number(port), adminTokens: [a], partSizes: { 1: 1024 * 1024 * 1024 } })
} else if (mode === 'bare') {
  const app = Fastify({ logger: false })
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('*', (_req, payload, done) => { done(null, payload) })
  await app.register(replyFrom, { base: a, retryMethods: [], disableRequestLogging: true })
  app.get('/healthz', async () => ({ status: 'ok' }))
  app.all('/*', (request, reply) => reply.from(request.url, {
    rewriteRequestHeaders: (_r, headers) => ({ ...headers, 'x-plex-token': b }),
  }))
  await app.listen({ host: '127.0.0.1', port: Number(port) })
} else {
  throw new Error(`unknown mode ${mode}`)
}
