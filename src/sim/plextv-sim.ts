import { randomBytes } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'

/** A server the simulated account owns (for `/api/v2/resources`). */
export interface TvResource {
  name: string
  clientIdentifier: string
  accessToken: string
  connections: Array<{ protocol: string, address: string, port: number, uri: string, local: boolean, relay: boolean }>
}

export interface PlexTvSimOptions {
  /** The account: its token, and its password login (username, password, optional 2FA code). */
  accountToken?: string
  username?: string
  password?: string
  totp?: string
  /** Failed sign-ins from one address before code 1031 (lockout). Default 3. */
  lockoutAfter?: number
  resources?: TvResource[]
  /** Answer every request 429 (rate limited). */
  rateLimited?: boolean
}

interface SimPin { id: number, code: string, clientIdentifier: string, authToken: string | null, expired: boolean }

/**
 * plex.tv as ../shared/plex-api.md §5 describes it, for offline tests and the demo: PIN create,
 * poll, approve and expire; password sign-in with 2FA (401 code 1029) and lockout (401 code 1031);
 * token check, ping, resources and claim tokens; JSON or XML error envelopes.
 */
export class PlexTvSimulator {
  readonly #server: Server
  readonly #o: Required<Omit<PlexTvSimOptions, 'totp' | 'resources'>> & { totp?: string, resources: TvResource[] }
  readonly #pins = new Map<number, SimPin>()
  readonly #validTokens = new Set<string>()
  #failures = 0
  readonly counters = { requests: 0, signins: 0, pinPolls: 0, pings: 0, byPath: {} as Record<string, number> }
  url = ''

  private constructor (opts: PlexTvSimOptions) {
    this.#o = {
      accountToken: opts.accountToken ?? randomBytes(10).toString('hex'),
      username: opts.username ?? 'admin@example.com',
      password: opts.password ?? 'correct horse battery staple',
      totp: opts.totp,
      lockoutAfter: opts.lockoutAfter ?? 3,
      resources: opts.resources ?? [],
      rateLimited: opts.rateLimited ?? false,
    }
    this.#validTokens.add(this.#o.accountToken)
    this.#server = createServer((req, res) => { this.#handle(req, res).catch(() => { res.statusCode = 500; res.end() }) })
  }

  static async start (opts: PlexTvSimOptions = {}, port = 0): Promise<PlexTvSimulator> {
    const sim = new PlexTvSimulator(opts)
    await new Promise<void>((resolve) => sim.#server.listen(port, '127.0.0.1', resolve))
    sim.url = `http://127.0.0.1:${(sim.#server.address() as AddressInfo).port}`
    return sim
  }

  get accountToken (): string { return this.#o.accountToken }

  /** The user approves the PIN at app.plex.tv. */
  approve (code: string): void {
    for (const p of this.#pins.values()) if (p.code === code) p.authToken = this.#o.accountToken
  }

  expire (code: string): void {
    for (const p of this.#pins.values()) if (p.code === code) p.expired = true
  }

  /** The account token stops working (password reset with "sign out of all devices"). */
  revokeAccountToken (): void { this.#validTokens.delete(this.#o.accountToken) }
  setRateLimited (on: boolean): void { this.#o.rateLimited = on }

  async stop (): Promise<void> {
    await new Promise<void>((resolve) => { this.#server.close(() => resolve()); this.#server.closeAllConnections() })
  }

  async #handle (req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x')
    this.counters.requests++
    const path = url.pathname.replace(/\/\d+$/, '/{id}')
    this.counters.byPath[path] = (this.counters.byPath[path] ?? 0) + 1
    const json = (req.headers.accept ?? '').includes('application/json')
    let body = ''
    for await (const chunk of req) body += String(chunk)
    const send = (status: number, data: unknown, xmlRoot?: string): void => {
      res.statusCode = status
      if (json || xmlRoot === undefined) {
        res.setHeader('content-type', 'application/json')
        res.end(JSON.stringify(data))
      } else {
        res.setHeader('content-type', 'application/xml')
        const attrs = Object.entries(data as Record<string, unknown>).filter(([, v]) => typeof v !== 'object' || v === null)
          .map(([k, v]) => `${k}="${String(v ?? '')}"`).join(' ')
        res.end(`<?xml version="1.0" encoding="UTF-8"?>\n<${xmlRoot} ${attrs}/>`)
      }
    }
    const fail = (status: number, code: number, message: string): void => {
      res.statusCode = status
      if (json) {
        res.setHeader('content-type', 'application/json')
        res.end(JSON.stringify({ errors: [{ code, message, status }] }))
      } else {
        res.setHeader('content-type', 'application/xml')
        res.end(`<?xml version="1.0" encoding="UTF-8"?>\n<errors><error code="${code}" message="${message}" status="${status}"/></errors>`)
      }
    }
    if (this.#o.rateLimited) return fail(429, 1003, 'Rate limit exceeded')
    const clientId = req.headers['x-plex-client-identifier']
    if (typeof clientId !== 'string' || clientId === '') return fail(400, 1000, 'X-Plex-Client-Identifier is missing')
    const token = req.headers['x-plex-token']
    const authed = typeof token === 'string' && this.#validTokens.has(token)

    if (req.method === 'POST' && url.pathname === '/api/v2/pins') {
      const id = 1000 + this.#pins.size
      const pin: SimPin = { id, code: randomBytes(13).toString('hex').slice(0, 25), clientIdentifier: clientId, authToken: null, expired: false }
      this.#pins.set(id, pin)
      return send(201, { id, code: pin.code, product: req.headers['x-plex-product'] ?? '', trusted: false, clientIdentifier: clientId, expiresIn: 1800, expiresAt: new Date(Date.now() + 1_800_000).toISOString(), authToken: null }, 'pin')
    }
    const pinMatch = /^\/api\/v2\/pins\/(\d+)$/.exec(url.pathname)
    if (req.method === 'GET' && pinMatch !== null) {
      this.counters.pinPolls++
      const pin = this.#pins.get(Number(pinMatch[1]))
      if (pin === undefined || pin.expired || pin.clientIdentifier !== clientId) return fail(404, 1020, 'Code not found or expired')
      return send(200, { id: pin.id, code: pin.code, clientIdentifier: clientId, authToken: pin.authToken }, 'pin')
    }
    if (req.method === 'POST' && url.pathname === '/api/v2/users/signin') {
      this.counters.signins++
      const form = new URLSearchParams(body)
      if (this.#failures >= this.#o.lockoutAfter) {
        return fail(401, 1031, 'User could not be authenticated. This IP appears to be having trouble signing in to an account (detected repeated failures)')
      }
      if (form.get('login') !== this.#o.username || form.get('password') !== this.#o.password) {
        this.#failures++
        return fail(401, 1001, 'User could not be authenticated')
      }
      if (this.#o.totp !== undefined && form.get('verificationCode') !== this.#o.totp) {
        if (form.get('verificationCode') !== null) this.#failures++
        return fail(401, 1029, 'Please enter the verification code')
      }
      return send(201, { id: 1, username: 'admin', authToken: this.#o.accountToken }, 'user')
    }
    if (req.method === 'GET' && url.pathname === '/api/v2/user') {
      if (!authed) return fail(401, 1001, 'User could not be authenticated')
      return send(200, { id: 1, username: 'admin', authToken: token }, 'user')
    }
    if (req.method === 'GET' && url.pathname === '/api/v2/ping') {
      this.counters.pings++
      if (!authed) return fail(401, 1001, 'User could not be authenticated')
      res.setHeader('content-type', 'application/xml')
      res.end('<?xml version="1.0" encoding="UTF-8"?>\n<pong>true</pong>')
      return
    }
    if (req.method === 'GET' && url.pathname === '/api/v2/resources') {
      if (!authed) return fail(401, 1001, 'User could not be authenticated')
      return send(200, this.#o.resources.map((r) => ({ ...r, provides: 'server', owned: true, product: 'Plex Media Server' })))
    }
    if (req.method === 'GET' && url.pathname === '/api/claim/token.json') {
      if (!authed) return fail(401, 1001, 'User could not be authenticated')
      return send(200, { token: `claim-${randomBytes(10).toString('hex')}` })
    }
    return fail(404, 1002, 'Not found')
  }
}
