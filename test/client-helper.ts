import type { AddressInfo } from 'node:net'
import type { FastifyInstance } from 'fastify'
import type { Config } from '../src/config/index.ts'
import type { PmsSimulator } from '../src/sim/pms-sim.ts'
import { createTokenSource, type ClientLogger, type TokenChange, type TokenSource, type TokenSourceOptions } from '../src/client/index.ts'
import { buildTestApp, makeClient, serverFor, testConfig, type T, type TestClient, uniquePrefix } from './helper.ts'

/** What the broker saw of one client library: every `POST /v1/tokens`, the reports among them, the stream opens. */
export interface BrokerSeen {
  posts: number
  reports: string[]
  /** `GET /v1/tokens/stream` requests, with the Last-Event-ID each carried. */
  streams: number
  lastEventIds: Array<string | undefined>
}

export interface ListeningBroker {
  app: FastifyInstance
  url: string
  client: TestClient
  /** Scopes server:rotate and token:revoke. */
  ops: TestClient
  seen: BrokerSeen
  /** While true, the broker answers the stream route with its 404, as a broker from before the route did. */
  hideStream: boolean
}

/**
 * A real broker (Redis, and BullMQ workers with `role: 'all'`) listening on a loopback port, as
 * the library needs, with one `token:issue` client. Counts what the library asks for.
 */
export async function listeningBroker (t: T, sim: PmsSimulator, over: Partial<Config> = {}): Promise<ListeningBroker> {
  const client = makeClient('svc')
  const ops = makeClient('ops', { scopes: ['server:rotate', 'token:revoke'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('client'), [serverFor(sim)], [client, ops], over))
  const seen: BrokerSeen = { posts: 0, reports: [], streams: 0, lastEventIds: [] }
  app.addHook('preHandler', async (request) => {
    const path = request.url.split('?')[0]
    if (request.method === 'POST' && path === '/v1/tokens') {
      seen.posts++
      const reported = (request.body as { rejectedTokenId?: string } | undefined)?.rejectedTokenId
      if (reported !== undefined) seen.reports.push(reported)
    }
  })
  const b: ListeningBroker = { app, url: '', client, ops, seen, hideStream: false }
  app.addHook('onRequest', async (request, reply) => {
    if (request.method !== 'GET' || request.url.split('?')[0] !== '/v1/tokens/stream') return
    seen.streams++
    seen.lastEventIds.push(request.headers['last-event-id'] as string | undefined)
    if (b.hideStream) {
      reply.callNotFound()
      return reply
    }
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  b.url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
  return b
}

/** A logger that keeps every line it is given, as JSON, to check what the library logs. */
export function captureLogger (): ClientLogger & { lines: string[] } {
  const lines: string[] = []
  const keep = (level: string) => (obj: Record<string, unknown>, msg: string) => { lines.push(JSON.stringify({ level, msg, ...obj })) }
  return { lines, debug: keep('debug'), info: keep('info'), warn: keep('warn') }
}

/** A token source for the test's client, closed on teardown, with every `token` event kept. */
export function source (t: T, b: ListeningBroker, opts: Partial<TokenSourceOptions> = {}): TokenSource & { changes: TokenChange[] } {
  const s = createTokenSource({ brokerUrl: b.url, secret: b.client.secret, server: 'default', maxBackoffMs: 1000, ...opts })
  const changes: TokenChange[] = []
  s.on('token', (c) => { changes.push(c) })
  t.teardown(() => s.close())
  return Object.assign(s, { changes })
}
