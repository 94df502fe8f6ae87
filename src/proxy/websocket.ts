import { STATUS_CODES, type IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import proxyAddr from '@fastify/proxy-addr'
import type { FastifyInstance } from 'fastify'
import type { Logger } from 'pino'
import { randomUUID } from 'node:crypto'
import { WebSocket, WebSocketServer, type RawData } from 'ws'
import { answer401, sendWithFreshToken } from '../broker/fresh-token-retry.ts'
import type { IssueResult } from '../broker/issuer.ts'
import type { ServerConfig } from '../config/index.ts'
import { clientAddress } from '../plugins/request-identity.ts'
import { encodeCanonicalPath } from './canonical-path.ts'
import type { Admitted } from './gate.ts'
import type { ProxyListenerDeps } from './listener-deps.ts'
import { scrubBuffer } from './response-rewrite.ts'

/**
 * The notification websockets through the proxy (docs/proxy.md, *Websockets and event feeds*):
 * `/:/websockets/notifications` and `/:/websocket/notifications`. The key and the rules are
 * checked at the upgrade (a refusal is a plain HTTP answer, never a socket that opens and
 * closes); the `log` filter is removed by the gate; the upstream socket is opened with the
 * client's transient token before the caller's is accepted, so a PMS 401 is answered as one (after
 * the report and one retry with a fresh token, as for HTTP: broker/fresh-token-retry.ts). Frames pass both ways; text frames are checked for credentials.
 *
 * When PMS goes away (a restart drops every socket without a close frame), the caller's socket is
 * closed with 1012 ("service restart"), which clients treat as "reconnect": their next upgrade
 * gets the re-minted token. A revoked key's sockets are closed with 1008 ("policy violation").
 */

export const WEBSOCKET_PATHS = new Set(['/:/websockets/notifications', '/:/websocket/notifications'])

/** A caller that does not read its socket gets closed rather than buffered without bound. */
const MAX_BUFFERED = 4 * 1024 * 1024

function rawError (socket: Duplex, status: number, code: string, message: string, retryAfter?: number): void {
  const body = JSON.stringify({ statusCode: status, code, error: STATUS_CODES[status] ?? 'Error', message, requestId: randomUUID() })
  const head = [
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}`,
    'Content-Type: application/json; charset=utf-8',
    `Content-Length: ${Buffer.byteLength(body)}`,
    ...(status === 401 ? ['WWW-Authenticate: Bearer'] : []),
    ...(retryAfter === undefined ? [] : [`Retry-After: ${retryAfter}`]),
    'Connection: close',
  ].join('\r\n')
  socket.end(`${head}\r\n\r\n${body}`)
}

function wsOrigin (url: string): string {
  return url.replace(/^http/, 'ws')
}

export function attachWebsockets (app: FastifyInstance, deps: ProxyListenerDeps & { logger: Logger, server: ServerConfig }): void {
  const { services, gate, metrics, open, logger } = deps
  const wss = new WebSocketServer({ noServer: true, clientTracking: false, maxPayload: 1024 * 1024 })
  const trust = services.config.trustProxy.length === 0 ? () => false : proxyAddr.compile([...services.config.trustProxy])

  app.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on('error', () => {})
    handle(req, socket, head).catch((err: unknown) => {
      logger.warn({ err: { message: (err as Error).message } }, 'proxy websocket upgrade failed')
      const e = err as { statusCode?: number, code?: string, message?: string, retryAfter?: number }
      if (!socket.destroyed) rawError(socket, e.statusCode ?? 502, e.code ?? 'UPSTREAM_UNAVAILABLE', e.statusCode !== undefined ? e.message ?? '' : 'PMS did not accept the websocket.', e.retryAfter)
    })
  })
  // Shutdown: open sockets are told to reconnect (to another instance) when the proxy ends every
  // open answer (`open.close()`, proxy/index.ts), before this listener closes.

  async function handle (req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const ip = clientAddress(proxyAddr(req, trust), req.socket.remoteAddress)
    const admitted = await gate.admit({ method: req.method ?? 'GET', url: req.url ?? '/', header: req.headers['x-plex-token'], ip })
    if (!admitted.ok) {
      metrics.requests.inc({ client: admitted.client ?? '', server: admitted.server ?? deps.server.name, decision: admitted.decision, status_class: `${Math.floor(admitted.status / 100)}xx` })
      rawError(socket, admitted.status, admitted.code, admitted.message, admitted.retryAfter)
      return
    }
    if (!WEBSOCKET_PATHS.has(admitted.path)) {
      rawError(socket, 404, 'NOT_FOUND', 'Websockets are served on the notification paths only.')
      return
    }
    const ctx = { requestId: randomUUID(), ip, via: 'proxy' as const }
    // A websocket is a long answer: it holds one of the key's open streams while it lives.
    const got = await gate.issue(admitted, true, async (meter) => await services.issuer.issue(admitted.client.id, admitted.server, ctx, { meter }))
    if (!got.ok) {
      metrics.requests.inc({ client: got.client ?? '', server: got.server ?? deps.server.name, decision: got.decision, status_class: '4xx' })
      rawError(socket, got.status, got.code, got.message, got.retryAfter)
      return
    }
    socket.once('close', got.release)
    // PMS refused the token (it restarted): report it, and one more try with a fresh one
    // (broker/fresh-token-retry.ts); an upgrade has no body, so it is always replayable.
    const { answer: upstream, token: issued, after } = await sendWithFreshToken(services.rejection,
      { client: admitted.client.id, server: admitted.server, ctx, replayable: true }, got.issued,
      async (token) => await connect(req, admitted, token, ip), (answer) => typeof answer === 'number' ? answer : 101)
    if (typeof upstream === 'number') {
      if (upstream === 401) rawError(socket, 401, 'UNAUTHENTICATED', answer401(admitted.server.name, after))
      else rawError(socket, 502, 'UPSTREAM_UNAVAILABLE', `PMS "${admitted.server.name}" did not accept the websocket.`)
      return
    }
    const up = upstream
    if (socket.destroyed) {
      up.terminate()
      return
    }
    wss.handleUpgrade(req, socket, head, (client) => { pipe(client, up, admitted, issued) })
  }

  async function connect (req: IncomingMessage, a: Admitted, issued: IssueResult, ip: string): Promise<WebSocket | number> {
    const headers: Record<string, string> = { 'x-plex-token': issued.token, 'x-forwarded-for': ip }
    for (const [name, value] of Object.entries(req.headers)) {
      if (name.startsWith('x-plex-') && name !== 'x-plex-token' && typeof value === 'string') headers[name] = value
    }
    const url = `${wsOrigin(a.server.url)}${encodeCanonicalPath(a.path)}${a.query === '' ? '' : `?${a.query}`}`
    return await new Promise((resolve) => {
      const ws = new WebSocket(url, { headers, handshakeTimeout: 10_000, rejectUnauthorized: true, maxPayload: 16 * 1024 * 1024 })
      ws.once('open', () => resolve(ws))
      ws.once('unexpected-response', (_r, res) => {
        res.resume()
        ws.terminate()
        resolve(res.statusCode ?? 502)
      })
      ws.once('error', () => resolve(502))
    })
  }

  function pipe (client: WebSocket, up: WebSocket, a: Admitted, issued: IssueResult): void {
    metrics.websockets.inc({ server: a.server.name })
    const secrets = [Buffer.from(issued.token), Buffer.from(a.server.adminToken)]
    let done = false
    const finish = (): void => {
      if (done) return
      done = true
      unregister()
      metrics.websockets.dec({ server: a.server.name })
    }
    const unregister = open.add({
      keyId: a.keyId,
      end: (why) => {
        // 1008: the key is gone, do not retry with it; 1012: the broker restarts, reconnect;
        // 1013: the key cannot be checked right now, try again later.
        if (why === 'revoked') client.close(1008, 'proxy key revoked')
        else if (why === 'shutdown') client.close(1012, 'broker restarting')
        else client.close(1013, 'proxy key cannot be checked')
        up.terminate()
        // A caller that ignores the close frame is cut off.
        setTimeout(() => client.terminate(), 1000).unref()
      },
    })
    up.on('message', (data: RawData, isBinary: boolean) => {
      if (client.readyState !== WebSocket.OPEN) return
      if (client.bufferedAmount > MAX_BUFFERED) {
        client.close(1013, 'not reading')
        up.terminate()
        return
      }
      let out = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data)
      if (!isBinary) {
        out = Buffer.from(out)
        const n = scrubBuffer(out, secrets)
        if (n > 0) {
          metrics.leaks.inc({ server: a.server.name, secret: 'pms_token' }, n)
          logger.error({ client: a.client.id, server: a.server.name, found: n }, 'a PMS credential was found in a websocket frame and blanked')
        }
      }
      client.send(out, { binary: isBinary })
    })
    client.on('message', (data: RawData, isBinary: boolean) => {
      if (up.readyState === WebSocket.OPEN) up.send(data as Buffer, { binary: isBinary })
    })
    up.on('close', (code: number) => {
      // A clean close from PMS is passed on; a dropped connection (a restart: 1006) becomes 1012,
      // which tells the caller to reconnect, and its next upgrade gets a fresh token.
      if (client.readyState === WebSocket.OPEN) client.close(code === 1000 || code === 1001 ? code : 1012, code === 1000 || code === 1001 ? '' : 'PMS went away; reconnect')
      finish()
    })
    up.on('error', () => {})
    client.on('error', () => {})
    client.on('close', () => {
      if (up.readyState === WebSocket.OPEN || up.readyState === WebSocket.CONNECTING) up.close()
      finish()
    })
    client.on('ping', (d) => { if (up.readyState === WebSocket.OPEN) up.ping(d) })
    up.on('ping', () => { /* ws answers PMS's pings itself */ })
  }
}
