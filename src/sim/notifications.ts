import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import { WebSocketServer, type WebSocket } from 'ws'

/**
 * The PMS simulator's notification WebSockets (docs/simulator.md): the open sockets, each with
 * the `filters` it asked for, their ping frames, and the NotificationContainer messages.
 * Authentication, faults and restarts are the simulator's (pms-sim.ts).
 */

// Tested by the simulator suite (test/sim, run without coverage); left out of the broker suite's
// coverage, which loads the simulator but never opens a socket, so that figure stays the broker's.
/* c8 ignore start */

/**
 * Clients (python-plexapi, Tautulli, most bots) use the plural path; the community spec names
 * the singular one; both are served.
 */
export const WEBSOCKET_PATHS = new Set(['/:/websockets/notifications', '/:/websocket/notifications'])

export class NotificationSockets {
  readonly #wss = new WebSocketServer({ noServer: true, clientTracking: false, maxPayload: 64 * 1024 })
  readonly #open = new Map<WebSocket, (type: string) => boolean>()
  readonly #pingIntervalMs: number

  constructor (pingIntervalMs: number) {
    this.#pingIntervalMs = pingIntervalMs
  }

  /** How many sockets are open. */
  get size (): number { return this.#open.size }

  /**
   * Completes an upgrade the simulator accepted. `current()` false when the handshake is done
   * (a restart came meanwhile) drops the socket at once.
   */
  accept (req: IncomingMessage, socket: Duplex, head: Buffer, filters: string | null, current: () => boolean): void {
    this.#wss.handleUpgrade(req, socket, head, (ws) => {
      if (!current()) {
        ws.terminate()
        return
      }
      this.#open.set(ws, notificationFilter(filters))
      // Protocol ping frames: clients answer them without seeing them. What a client sends is ignored.
      const timer = setInterval(() => ws.ping(), this.#pingIntervalMs)
      timer.unref()
      ws.on('error', () => {})
      ws.once('close', () => {
        clearInterval(timer)
        this.#open.delete(ws)
      })
    })
  }

  /** Sends `{"NotificationContainer":{"type":…,"size":…,<key>:[…]}}` to every socket that wants `type`. */
  notify (type: string, key: string, entries: Array<Record<string, unknown>>): void {
    const message = JSON.stringify({ NotificationContainer: { type, size: entries.length, [key]: entries } })
    for (const [ws, wants] of this.#open) {
      if (wants(type) && ws.readyState === ws.OPEN) ws.send(message)
    }
  }

  /** Drops every socket without a close frame: a PMS that stops drops the TCP connection (code 1006). */
  dropAll (): void {
    for (const ws of this.#open.keys()) ws.terminate()
  }
}

/**
 * PMS's `filters` argument of the notification endpoints: absent means every type but `log`;
 * empty means every type; `a,b` only those; `-a,b` every type but those.
 */
export function notificationFilter (raw: string | null): (type: string) => boolean {
  if (raw === null) return (type) => type !== 'log'
  if (raw === '') return () => true
  const exclude = raw.startsWith('-')
  const types = new Set((exclude ? raw.slice(1) : raw).split(',').map((s) => s.trim()).filter((s) => s !== ''))
  return exclude ? (type) => !types.has(type) : (type) => types.has(type)
}
/* c8 ignore stop */
