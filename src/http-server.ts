import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'

export interface HttpTimeouts {
  /** A connection idle this long is closed (none sent yet, a stalled body, or a client not reading the answer). */
  connectionTimeoutMs: number
  /** An idle keep-alive connection is closed after this long (above common load-balancer idle timeouts of 60 s). */
  keepAliveTimeoutMs: number
  /** The headers must arrive within this long (slowloris). */
  headersTimeoutMs: number
  /** The whole request must arrive within this long. */
  requestTimeoutMs: number
}

export const HTTP_TIMEOUTS: Readonly<HttpTimeouts> = Object.freeze({
  connectionTimeoutMs: 10_000,
  keepAliveTimeoutMs: 72_000,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 15_000,
})

/**
 * The HTTP server. Fastify applies connectionTimeout and keepAliveTimeout only to servers it
 * creates itself, so with a serverFactory they are set here.
 *
 * The connection timeout is a socket idle timeout. It must not cut off a request the broker is
 * still working on (a mint may wait for another instance's for up to 2 × PLEX_TIMEOUT + 2 s, longer
 * than 10 s): while the request has arrived and no answer has started, the connection is kept (the
 * handler's own deadlines bound that wait). A connection idle before or between requests, while
 * sending a request, or while not reading an answer already started, is closed.
 */
export function createHttpServer (handler: (req: IncomingMessage, res: ServerResponse) => void, t: HttpTimeouts): Server {
  // Node enforces headersTimeout and requestTimeout only when it checks connections (every 30 s by
  // default): check every second, so a slowloris client that dribbles header bytes is cut off in
  // about headersTimeout, not 30-60 s.
  const server = createServer({ connectionsCheckingInterval: 1000, headersTimeout: t.headersTimeoutMs, requestTimeout: t.requestTimeoutMs }, (req, res) => {
    // With a listener, Node leaves the decision to it instead of destroying the socket.
    res.on('timeout', () => {
      if (!req.complete || res.headersSent) res.socket?.destroy()
    })
    handler(req, res)
  })
  server.keepAliveTimeout = t.keepAliveTimeoutMs
  server.setTimeout(t.connectionTimeoutMs)
  return server
}
