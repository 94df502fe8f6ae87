import type { FastifyInstance } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import type { RequestContext } from '../broker/audit-writer.ts'
import { BrokerError } from '../errors.ts'
import { LongResponse, type LongResponseOptions, LongResponses } from '../http/long-response.ts'
import { requestContext } from '../plugins/request-identity.ts'
import { authErrors, errorResponse } from '../schemas/common.ts'
import { StreamEventDataSchemas, StreamEventsSchema, StreamHeadersSchema, StreamQuerySchema } from '../schemas/tokens.ts'
import { requireServer } from './common.ts'
import { type Frame, PushStream, type StreamOptions } from './push-stream.ts'
import type { Services } from '../services.ts'

export type { StreamOptions } from './push-stream.ts'

/**
 * `GET /v1/tokens/stream?server=NAME`: the push channel (README, *Push channel*). The client's
 * current token first, then an event for every change of it, made by any broker instance.
 */
export default async function streamRoutes (fastify: FastifyInstance, opts: StreamOptions = {}): Promise<void> {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>()
  // Typed as the service graph itself (not only through Fastify's decorator), so a call on it leads
  // straight to its class.
  const broker: Services = app.broker
  const settings: LongResponseOptions = { maxBufferedBytes: opts.maxBufferedBytes ?? 256 * 1024, drainTimeoutMs: opts.drainTimeoutMs ?? 30_000 }
  // Streams end before the server stops accepting: app.close() then finishes within the grace period.
  const open = new LongResponses<PushStream>(app)

  app.get('/v1/tokens/stream', {
    // The client's rate limit is counted by the opening read (one request, like POST /v1/tokens).
    onRequest: app.authenticate('token:issue', { countedBy: 'serve' }),
    config: { stream: true },
    // A HEAD would open a stream nobody reads (and hold one of the client's places).
    exposeHeadRoute: false,
    schema: {
      operationId: 'streamTokens',
      summary: 'Push channel: this client\'s token for a server now, and every change of it (Server-Sent Events)',
      description: 'The first event is the current token (minted if needed). Then an event each time it changes, whichever broker instance changed it: ' +
        'scheduled rotation, re-mint after a PMS restart, replacement after a confirmed rejection (`token`); revocation (`revoked`); PMS down or up (`server`). ' +
        'Reconnect with `Last-Event-ID` to get what was missed. Same authentication, scope and server check as POST /v1/tokens; at most ' +
        'STREAM_MAX_PER_CLIENT streams per client and STREAM_MAX_TOTAL in total per instance (429 beyond).',
      tags: ['tokens'],
      security: [{ bearer: [] }],
      querystring: StreamQuerySchema,
      headers: StreamHeadersSchema,
      // The events only: every error answer is JSON (the document's transform in plugins/docs.ts).
      produces: ['text/event-stream'],
      'x-events': StreamEventDataSchemas,
      response: {
        200: StreamEventsSchema,
        404: errorResponse('`NOT_FOUND`: no server with this name'),
        502: errorResponse('`UPSTREAM_REJECTED`: PMS refused to mint the first token'),
        ...authErrors,
      },
    },
  }, async (request, reply) => {
    const client = request.client!
    const server = await requireServer(app, request, request.query.server)
    if (open.closing) throw new BrokerError('UPSTREAM_UNAVAILABLE', 'The broker is shutting down; reconnect to another instance.', { retryAfter: 2 })
    const ctx: RequestContext = { ...requestContext(request), via: 'stream' }
    const stream = new PushStream(broker, server, client.id, ctx, request.log, (s) => open.delete(s))
    open.add(stream)
    let frames: Frame[]
    try {
      stream.unregister = await broker.push.register(stream)
      const lastEventId = request.headers['last-event-id']
      frames = await stream.opening(typeof lastEventId === 'string' ? lastEventId.trim() : undefined, request.meter ?? undefined)
    } catch (err) {
      stream.end('closed')
      throw err
    }
    if (stream.ended !== undefined) {
      throw new BrokerError('UPSTREAM_UNAVAILABLE', stream.ended === 'shutdown' ? 'The broker is shutting down; reconnect to another instance.' : 'Could not open the stream; retry.', { retryAfter: 2 })
    }
    stream.attach(LongResponse.hijack(reply, settings, (why) => stream.end(why)), frames)
  })
}
