import { randomBytes } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'

/** One connection of a simulated server (docs/plex-api.md §5). */
export interface TvConnection {
  protocol: string
  address: string
  port: number
  uri: string
  local: boolean
  relay: boolean
}

/** A device of the simulated account, listed by `/api/v2/resources`. */
export interface TvResource {
  name: string
  clientIdentifier: string
  accessToken: string
  connections: TvConnection[]
  /** Default true. A shared server (false) carries a share token, not an admin token. */
  owned?: boolean
  /** Default `server`; e.g. `client,player` for a player app. */
  provides?: string
  /** Default `Plex Media Server`. */
  product?: string
}

export interface PlexTvSimOptions {
  /** The account token that PIN approval and password sign-in hand out. Default random. */
  accountToken?: string
  /** Password login: username (or email) and password. */
  username?: string
  password?: string
  /** When set, the account has 2FA: sign-in without this code answers 401 code 1029. */
  totp?: string
  /** Failed sign-ins from one address before every further attempt gets 401 code 1031. Default 3. */
  lockoutAfter?: number
  /** Lifetime of a PIN, like a strong PIN's `expiresIn` (§5). Default 1800 s. */
  pinLifetimeSec?: number
  resources?: TvResource[]
  /** Answer every request 429 until `setRateLimited(false)`. */
  rateLimited?: boolean
  /** Seconds in `Retry-After` on a 429. Default 1. */
  retryAfterSec?: number
  /**
   * `negotiate` (default): JSON when the request accepts `application/json`, XML otherwise, as
   * plex.tv does (§1). `xml`: XML whatever the Accept header says, to exercise XML parsing.
   */
  format?: 'negotiate' | 'xml'
}

export interface SimPin {
  id: number
  code: string
  clientIdentifier: string
  authToken: string | null
  expiresAt: number
  expired: boolean
}

/** One request as the simulator saw it, for tests to check headers and URLs (never bodies). */
export interface SimRequest {
  method: string
  /** Path and query string. */
  url: string
  clientIdentifier: string | undefined
  product: string | undefined
  version: string | undefined
  hasToken: boolean
  accept: string | undefined
  status: number
}

const LOCKOUT_MESSAGE = 'User could not be authenticated. This IP appears to be having trouble signing in to an account (detected repeated failures)'

const escapeXml = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;')
const attrs = (o: Record<string, unknown>): string => Object.entries(o)
  .filter(([, v]) => v === null || typeof v !== 'object')
  .map(([k, v]) => ` ${k}="${escapeXml(typeof v === 'boolean' ? (v ? '1' : '0') : String(v ?? ''))}"`).join('')

/**
 * plex.tv as docs/plex-api.md §5 describes it, for offline tests and the demo:
 * - PINs: create (`POST /api/v2/pins`), poll (`GET /api/v2/pins/{id}`, 404 code 1020 once expired
 *   or for another client id), and `approve`/`expire` from the test, as the person at app.plex.tv;
 * - `POST /api/v2/users/signin` with 2FA (401 code 1029 without the code) and an address lockout
 *   (401 code 1031 after `lockoutAfter` failures, whatever the credentials);
 * - `GET /api/v2/user` (200/401), `/api/v2/ping`, `/api/v2/resources`, `/api/claim/token.json`;
 * - 400 code 1000 without X-Plex-Client-Identifier, 429 with Retry-After in fault mode;
 * - JSON when the request accepts `application/json`, XML otherwise, errors included (§1).
 */
export class PlexTvSimulator {
  readonly #server: Server
  readonly #o: Required<Omit<PlexTvSimOptions, 'totp' | 'accountToken'>> & { totp?: string }
  readonly #accountToken: string
  readonly #pins = new Map<number, SimPin>()
  readonly #validTokens = new Set<string>()
  readonly #failures = new Map<string, number>()
  #nextPin = 1000
  #rateLimitNext = 0
  readonly counters = {
    requests: 0,
    pinsCreated: 0,
    pinPolls: 0,
    signins: 0,
    users: 0,
    pings: 0,
    resources: 0,
    claimTokens: 0,
    rateLimited: 0,
    byPath: {} as Record<string, number>,
  }

  /** The last 1000 requests, oldest first. */
  readonly requests: SimRequest[] = []
  /** Claim tokens handed out, so a fixture PMS can check them. */
  readonly claimTokens: string[] = []
  url = ''

  private constructor (opts: PlexTvSimOptions) {
    this.#accountToken = opts.accountToken ?? randomBytes(10).toString('hex')
    this.#o = {
      username: opts.username ?? 'admin@example.com',
      password: opts.password ?? 'correct horse battery staple',
      totp: opts.totp,
      lockoutAfter: opts.lockoutAfter ?? 3,
      pinLifetimeSec: opts.pinLifetimeSec ?? 1800,
      resources: opts.resources ?? [],
      rateLimited: opts.rateLimited ?? false,
      retryAfterSec: opts.retryAfterSec ?? 1,
      format: opts.format ?? 'negotiate',
    }
    this.#validTokens.add(this.#accountToken)
    this.#server = createServer((req, res) => {
      this.#handle(req, res).catch(() => {
        if (!res.headersSent) res.statusCode = 500
        res.end()
      })
    })
  }

  static async start (opts: PlexTvSimOptions = {}, port = 0): Promise<PlexTvSimulator> {
    const sim = new PlexTvSimulator(opts)
    await new Promise<void>((resolve, reject) => {
      sim.#server.once('error', reject)
      sim.#server.listen(port, '127.0.0.1', resolve)
    })
    sim.url = `http://127.0.0.1:${(sim.#server.address() as AddressInfo).port}`
    return sim
  }

  /** The account token PIN approval and sign-in hand out by default. */
  get accountToken (): string { return this.#accountToken }

  /** PINs created so far, oldest first. */
  get pins (): readonly SimPin[] { return [...this.#pins.values()] }

  #pin (idOrCode: number | string): SimPin {
    const pin = typeof idOrCode === 'number' ? this.#pins.get(idOrCode) : [...this.#pins.values()].find((p) => p.code === idOrCode)
    if (pin === undefined) throw new Error(`plex.tv simulator: no PIN ${String(idOrCode)}`)
    return pin
  }

  /** The person approves the PIN at app.plex.tv; the next poll carries `accountToken`, which becomes valid. */
  approve (pinIdOrCode: number | string, accountToken = this.#accountToken): void {
    this.#pin(pinIdOrCode).authToken = accountToken
    this.#validTokens.add(accountToken)
  }

  /** The PIN lapses: polls answer 404 code 1020. */
  expire (pinIdOrCode: number | string): void {
    this.#pin(pinIdOrCode).expired = true
  }

  /** The account token stops working (password reset with "sign out of all devices"). */
  revokeAccountToken (token = this.#accountToken): void { this.#validTokens.delete(token) }

  /** Every request answers 429 while on. */
  setRateLimited (on: boolean): void { this.#o.rateLimited = on }

  /** The next `n` requests answer 429. */
  rateLimitNext (n: number): void { this.#rateLimitNext = n }

  /** Forgets failed sign-ins (the lockout lifts). */
  resetLockout (): void { this.#failures.clear() }

  async stop (): Promise<void> {
    await new Promise<void>((resolve) => {
      this.#server.close(() => resolve())
      this.#server.closeAllConnections()
    })
  }

  async #handle (req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x')
    const header = (name: string): string | undefined => {
      const v = req.headers[name]
      return typeof v === 'string' && v !== '' ? v : undefined
    }
    const clientId = header('x-plex-client-identifier')
    const token = header('x-plex-token')
    const record: SimRequest = {
      method: req.method ?? 'GET',
      url: req.url ?? '/',
      clientIdentifier: clientId,
      product: header('x-plex-product'),
      version: header('x-plex-version'),
      hasToken: token !== undefined,
      accept: header('accept'),
      status: 0,
    }
    this.requests.push(record)
    if (this.requests.length > 1000) this.requests.shift()
    this.counters.requests++
    const path = url.pathname.replace(/\/\d+$/, '/{id}')
    this.counters.byPath[path] = (this.counters.byPath[path] ?? 0) + 1
    const json = this.#o.format !== 'xml' && (record.accept ?? '').includes('application/json')
    let body = ''
    for await (const chunk of req) body += String(chunk)

    const send = (status: number, data: unknown, xmlBody: string): void => {
      record.status = status
      res.statusCode = status
      res.setHeader('content-type', json ? 'application/json' : 'application/xml')
      res.end(json ? JSON.stringify(data) : `<?xml version="1.0" encoding="UTF-8"?>\n${xmlBody}`)
    }
    const fail = (status: number, code: number, message: string): void => {
      send(status, { errors: [{ code, message, status }] }, `<errors><error code="${code}" message="${escapeXml(message)}" status="${status}"/></errors>`)
    }

    if (this.#o.rateLimited || this.#rateLimitNext > 0) {
      if (this.#rateLimitNext > 0) this.#rateLimitNext--
      this.counters.rateLimited++
      res.setHeader('retry-after', String(this.#o.retryAfterSec))
      return fail(429, 1003, 'Too Many Requests')
    }
    if (clientId === undefined) return fail(400, 1000, 'X-Plex-Client-Identifier is missing')
    const authed = token !== undefined && this.#validTokens.has(token)
    const route = `${req.method ?? 'GET'} ${url.pathname}`

    if (route === 'POST /api/v2/pins') {
      this.counters.pinsCreated++
      const id = this.#nextPin++
      const strong = url.searchParams.get('strong') === 'true'
      const pin: SimPin = {
        id,
        // A strong code is about 25 characters, a plex.tv/link code 4 (§5).
        code: strong ? randomBytes(16).toString('hex').slice(0, 25) : randomBytes(2).toString('hex').toUpperCase(),
        clientIdentifier: clientId,
        authToken: null,
        expiresAt: Date.now() + this.#o.pinLifetimeSec * 1000,
        expired: false,
      }
      this.#pins.set(id, pin)
      const data = this.#pinBody(pin, record.product)
      return send(201, data, `<pin${attrs(data)}/>`)
    }
    const pinMatch = /^\/api\/v2\/pins\/(\d+)$/.exec(url.pathname)
    if (req.method === 'GET' && pinMatch !== null) {
      this.counters.pinPolls++
      const pin = this.#pins.get(Number(pinMatch[1]))
      if (pin !== undefined && Date.now() > pin.expiresAt) pin.expired = true
      // Only the client id that created a PIN may read it.
      if (pin === undefined || pin.expired || pin.clientIdentifier !== clientId) return fail(404, 1020, 'Code not found or expired')
      const data = this.#pinBody(pin, record.product)
      return send(200, data, `<pin${attrs(data)}/>`)
    }
    if (route === 'POST /api/v2/users/signin') {
      this.counters.signins++
      const form = new URLSearchParams(body)
      const from = req.socket.remoteAddress ?? ''
      const failures = this.#failures.get(from) ?? 0
      // §5: once locked out, even correct credentials get 1031.
      if (failures >= this.#o.lockoutAfter) return fail(401, 1031, LOCKOUT_MESSAGE)
      if (form.get('login') !== this.#o.username || form.get('password') !== this.#o.password) {
        this.#failures.set(from, failures + 1)
        return fail(401, 1001, 'User could not be authenticated')
      }
      if (this.#o.totp !== undefined && form.get('verificationCode') !== this.#o.totp) {
        if (form.get('verificationCode') !== null) this.#failures.set(from, failures + 1)
        return fail(401, 1029, 'Please enter the verification code')
      }
      const data = this.#userBody(this.#accountToken)
      return send(201, data, `<user${attrs(data)}/>`)
    }
    if (route === 'GET /api/v2/user') {
      this.counters.users++
      if (!authed) return fail(401, 1001, 'User could not be authenticated')
      const data = this.#userBody(token)
      return send(200, data, `<user${attrs(data)}/>`)
    }
    if (route === 'GET /api/v2/ping') {
      this.counters.pings++
      if (!authed) return fail(401, 1001, 'User could not be authenticated')
      return send(200, { pong: true }, '<pong>true</pong>')
    }
    if (route === 'GET /api/v2/resources') {
      this.counters.resources++
      if (!authed) return fail(401, 1001, 'User could not be authenticated')
      // Relay connections only on request, as plex.tv's `includeRelay` (default 0).
      const relay = url.searchParams.get('includeRelay') === '1'
      const list = this.#o.resources.map((r) => ({
        name: r.name,
        product: r.product ?? 'Plex Media Server',
        clientIdentifier: r.clientIdentifier,
        provides: r.provides ?? 'server',
        owned: r.owned ?? true,
        ownerId: (r.owned ?? true) ? null : 42,
        accessToken: r.accessToken,
        connections: r.connections.filter((c) => relay || !c.relay),
      }))
      const xmlList = list.map((r) => `<resource${attrs(r)}><connections>${r.connections.map((c) => `<connection${attrs({ ...c })}/>`).join('')}</connections></resource>`).join('')
      return send(200, list, `<resources size="${list.length}">${xmlList}</resources>`)
    }
    if (route === 'GET /api/claim/token.json') {
      this.counters.claimTokens++
      if (!authed) return fail(401, 1001, 'User could not be authenticated')
      const claim = `claim-${randomBytes(10).toString('hex')}`
      this.claimTokens.push(claim)
      // `.json`: JSON whatever the Accept header says.
      record.status = 200
      res.setHeader('content-type', 'application/json')
      res.end(JSON.stringify({ token: claim }))
      return
    }
    return fail(404, 1002, 'Not found')
  }

  #pinBody (pin: SimPin, product: string | undefined): Record<string, unknown> {
    return {
      id: pin.id,
      code: pin.code,
      product: product ?? '',
      trusted: false,
      qr: `https://plex.tv/api/v2/pins/qr/${pin.code}`,
      clientIdentifier: pin.clientIdentifier,
      expiresIn: Math.max(0, Math.round((pin.expiresAt - Date.now()) / 1000)),
      createdAt: new Date(pin.expiresAt - this.#o.pinLifetimeSec * 1000).toISOString(),
      expiresAt: new Date(pin.expiresAt).toISOString(),
      authToken: pin.authToken,
      newRegistration: null,
    }
  }

  #userBody (token: string | undefined): Record<string, unknown> {
    return { id: 1, uuid: 'a1b2c3d4e5f60789', username: 'admin', email: this.#o.username.includes('@') ? this.#o.username : 'admin@example.com', title: 'admin', authToken: token ?? '', twoFactorEnabled: this.#o.totp !== undefined }
  }
}
