import { Agent, request } from 'undici'
import { XMLParser } from 'fast-xml-parser'
import { MAX_BODY_BYTES, readCapped } from './body.ts'

/**
 * plex.tv answered with an error: the HTTP `status` plus plex.tv's own `code` from the error
 * envelope when there is one (1000 missing client id, 1001 not authenticated, 1020 PIN expired,
 * 1029 2FA code needed, 1031 sign-in lockout; docs/plex-api.md §5). The message names the endpoint
 * and plex.tv's text, never a token or password.
 */
export class PlexTvError extends Error {
  readonly status: number
  readonly code: number | undefined
  /** From `Retry-After` on a 429, when plex.tv sends one. */
  readonly retryAfterMs: number | undefined
  constructor (message: string, status: number, code?: number, retryAfterMs?: number) {
    super(message)
    this.name = 'PlexTvError'
    this.status = status
    this.code = code
    this.retryAfterMs = retryAfterMs
  }
}

/** plex.tv did not answer: connection refused, DNS failure, TLS error or timeout. */
export class PlexTvUnreachableError extends Error {
  /** The low-level reason, e.g. `ECONNREFUSED`, `ENOTFOUND`, `TIMEOUT`. */
  readonly reason: string
  constructor (message: string, reason: string) {
    super(message)
    this.name = 'PlexTvUnreachableError'
    this.reason = reason
  }
}

/** plex.tv error codes this client reacts to (docs/plex-api.md §5). */
export const PLEX_TV_CODES = {
  clientIdMissing: 1000,
  notAuthenticated: 1001,
  pinNotFound: 1020,
  twoFactorRequired: 1029,
  signInLockout: 1031,
} as const

export interface Pin {
  id: number
  code: string
  /** ISO time; null when plex.tv did not say. */
  expiresAt: string | null
  /** Non-null once the person approved the PIN. */
  authToken: string | null
}

export interface PlexUser {
  id: number
  uuid: string
  username: string
  email: string
  title: string
}

export interface Connection {
  uri: string
  protocol: string
  address: string
  port: number
  local: boolean
  relay: boolean
}

export interface Resource {
  name: string
  clientIdentifier: string
  product: string
  owned: boolean
  /** Comma-separated roles, e.g. `server` or `client,player`. */
  provides: string
  /** For an owned server an admin-level token; for a shared one a share token (docs/plex-api.md §5). */
  accessToken: string | null
  /** Ordered local → remote → relay (docs/plex-api.md §5), plex.tv's order within each group. */
  connections: Connection[]
}

export interface PlexTvOptions {
  /** plex.tv base URL. Default `https://plex.tv` (the broker and `ptb` read PLEX_TV_URL). */
  baseUrl?: string
  /** Stable per install: plex.tv keeps one token per account and client id (docs/plex-api.md §1). */
  clientIdentifier: string
  /** `X-Plex-Product`, shown in the account's Authorized Devices. Default `plex-token-broker`. */
  product?: string
  /** `X-Plex-Version`. Default `0.1.0`. */
  version?: string
  /** Deadline of one call, body included. Default 10 000 ms. */
  timeoutMs?: number
}

export const DEFAULT_PLEX_TV_URL = 'https://plex.tv'

const xml = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '',
  parseAttributeValue: false,
  isArray: (name) => name === 'error' || name === 'resource' || name === 'connection' || name === 'Device' || name === 'Connection',
})
const bool = (v: unknown): boolean => v === true || v === 1 || v === '1' || v === 'true'
const str = (v: unknown): string => (typeof v === 'string' ? v : typeof v === 'number' ? String(v) : '')

/**
 * The plex.tv API the broker and `ptb` use (docs/plex-api.md §5): PIN login, password
 * sign-in, token details, keep-alive ping, resources, claim tokens. Every call sends the same
 * X-Plex-Client-Identifier/Product/Version and `Accept: application/json`, and still parses XML
 * (plex.tv's default, and what some endpoints answer anyway). Tokens travel only in the
 * X-Plex-Token header and passwords only in form bodies, so neither can end up in a URL, a log
 * line or an error message.
 */
export class PlexTv {
  readonly #base: string
  readonly #headers: Record<string, string>
  readonly #timeoutMs: number
  readonly #product: string
  readonly #clientIdentifier: string
  readonly #agent = new Agent({ keepAliveTimeout: 10_000, connect: { timeout: 10_000 } })

  constructor (opts: PlexTvOptions) {
    this.#base = (opts.baseUrl ?? DEFAULT_PLEX_TV_URL).replace(/\/+$/, '')
    this.#product = opts.product ?? 'plex-token-broker'
    this.#clientIdentifier = opts.clientIdentifier
    this.#timeoutMs = opts.timeoutMs ?? 10_000
    this.#headers = {
      accept: 'application/json',
      'x-plex-client-identifier': opts.clientIdentifier,
      'x-plex-product': this.#product,
      'x-plex-version': opts.version ?? '0.1.0',
    }
  }

  get baseUrl (): string { return this.#base }
  get clientIdentifier (): string { return this.#clientIdentifier }

  async #call (method: 'GET' | 'POST', path: string, opts: { token?: string, form?: Record<string, string> } = {}): Promise<unknown> {
    const what = `${method} ${path.replace(/\?.*$/, '')}`
    const headers = { ...this.#headers }
    if (opts.token !== undefined) headers['x-plex-token'] = opts.token
    if (opts.form !== undefined) headers['content-type'] = 'application/x-www-form-urlencoded'
    let status: number
    let text: string | undefined
    let retryAfter: string | string[] | undefined
    try {
      const res = await request(`${this.#base}${path}`, {
        method,
        dispatcher: this.#agent,
        headers,
        body: opts.form === undefined ? undefined : new URLSearchParams(opts.form).toString(),
        signal: AbortSignal.timeout(this.#timeoutMs),
      })
      status = res.statusCode
      retryAfter = res.headers['retry-after']
      // At most MAX_BODY_BYTES: plex.tv's answers are a few KiB, anything larger is refused unread.
      text = await readCapped(res, MAX_BODY_BYTES)
    } catch (err) {
      const reason = reasonOf(err)
      throw new PlexTvUnreachableError(`plex.tv (${this.#base}) did not answer ${what}: ${describe(reason, this.#timeoutMs)}`, reason)
    }
    // An oversized error answer still reports its status (its envelope is lost); an oversized
    // success is unusable: 502, like any other unusable plex.tv answer.
    if (text === undefined && status < 400) throw new PlexTvError(`plex.tv answered ${what} with a body over ${MAX_BODY_BYTES} bytes; not read`, 502)
    const body = parseBody(text ?? '')
    if (status >= 400) {
      const e = errorOf(body)
      const detail = e.message === undefined ? '' : `: ${scrub(e.message, opts)}`
      throw new PlexTvError(`plex.tv answered ${what} with ${status}${e.code === undefined ? '' : ` (code ${e.code})`}${detail}`,
        status, e.code, retryAfterMs(retryAfter))
    }
    return body
  }

  /** Step 1 of the PIN flow (§5): a strong PIN, meant for the app.plex.tv link. No token needed. */
  async createPin (): Promise<Pin> {
    return pinOf(await this.#call('POST', '/api/v2/pins?strong=true'))
  }

  /** Step 3: `authToken` turns non-null once approved; a PlexTvError 404 code 1020 once expired. */
  async checkPin (id: number): Promise<Pin> {
    return pinOf(await this.#call('GET', `/api/v2/pins/${encodeURIComponent(String(id))}`))
  }

  /** Step 2: the link a person opens to approve the PIN (form-encoded after `#?`, §5). */
  authUrl (pin: Pin): string {
    const q = new URLSearchParams({ clientID: this.#clientIdentifier, code: pin.code, 'context[device][product]': this.#product })
    // %20 rather than +: a space reads the same whether the fragment is decoded as a form or a URI.
    return `https://app.plex.tv/auth#?${q.toString().replace(/\+/g, '%20')}`
  }

  /**
   * Username/password sign-in (§5). Answers the account token. A PlexTvError 401 with code 1029
   * asks for the 2FA code (call again with it); code 1031 means plex.tv locked this address out
   * after repeated failures: callers must not retry.
   */
  async signIn (login: string, password: string, verificationCode?: string): Promise<string> {
    const form: Record<string, string> = { login, password }
    if (verificationCode !== undefined) form.verificationCode = verificationCode
    const body = await this.#call('POST', '/api/v2/users/signin', { form })
    const token = field(body, 'user', 'authToken')
    if (typeof token !== 'string' || token === '') throw new PlexTvError('plex.tv accepted the sign-in but sent no token', 502)
    return token
  }

  /** `GET /api/v2/user` (§5): the account behind a token. 401 means the token is invalid. */
  async user (token: string): Promise<PlexUser> {
    const body = await this.#call('GET', '/api/v2/user', { token })
    const u = ((body as { user?: unknown }).user ?? body) as Record<string, unknown>
    return { id: Number(u.id), uuid: str(u.uuid), username: str(u.username), email: str(u.email), title: str(u.title) }
  }

  /** 200 valid, 401 invalid, anything else (429, 5xx, no answer) unknown: an outage never condemns a token. */
  async checkAccountToken (token: string): Promise<'valid' | 'invalid' | 'unknown'> {
    try {
      await this.user(token)
      return 'valid'
    } catch (err) {
      return err instanceof PlexTvError && err.status === 401 ? 'invalid' : 'unknown'
    }
  }

  /** Keeps an account token alive (§5). */
  async ping (token: string): Promise<void> {
    await this.#call('GET', '/api/v2/ping', { token })
  }

  /** The account's devices with their access tokens and connections (§5); JSON or XML. */
  async resources (token: string): Promise<Resource[]> {
    const body = await this.#call('GET', '/api/v2/resources?includeHttps=1&includeRelay=1', { token })
    const list = Array.isArray(body)
      ? body
      : ((body as { resources?: { resource?: unknown[] } }).resources?.resource ??
         (body as { MediaContainer?: { Device?: unknown[] } }).MediaContainer?.Device ?? [])
    return (list as Array<Record<string, unknown>>).map((r) => {
      const raw = (r.connections ?? r.Connection) as { connection?: unknown[] } | unknown[] | undefined
      const conns = (Array.isArray(raw) ? raw : raw?.connection ?? []) as Array<Record<string, unknown>>
      return {
        name: str(r.name),
        clientIdentifier: str(r.clientIdentifier),
        product: str(r.product),
        owned: bool(r.owned),
        provides: str(r.provides),
        accessToken: typeof r.accessToken === 'string' && r.accessToken !== '' ? r.accessToken : null,
        connections: conns.map((c) => ({
          uri: str(c.uri),
          protocol: str(c.protocol),
          address: str(c.address),
          port: Number(c.port ?? 0),
          local: bool(c.local),
          relay: bool(c.relay),
        })).sort((a, b) => rank(a) - rank(b)),
      }
    })
  }

  /** A claim token for an unclaimed PMS (§5); valid for a few minutes only. */
  async claimToken (token: string): Promise<string> {
    const t = field(await this.#call('GET', '/api/claim/token.json', { token }), 'MediaContainer', 'token')
    if (typeof t !== 'string' || t === '') throw new PlexTvError('plex.tv sent no claim token', 502)
    return t
  }

  async close (): Promise<void> {
    await this.#agent.close().catch(() => {})
  }
}

/** Local first, relay last (docs/plex-api.md §5; PlexAPI's DEFAULT_LOCATION_ORDER). Array#sort is stable. */
const rank = (c: { local: boolean, relay: boolean }): number => (c.relay ? 2 : c.local ? 0 : 1)

function parseBody (text: string): unknown {
  const t = text.trimStart()
  try {
    if (t.startsWith('{') || t.startsWith('[')) return JSON.parse(t)
    if (t.startsWith('<')) return xml.parse(t)
  } catch {}
  return text
}

/** `{"errors":[{code,message,status}]}` or `<errors><error code message status/></errors>` (§1). */
function errorOf (body: unknown): { code?: number, message?: string } {
  if (body === null || typeof body !== 'object') return {}
  const errors = (body as { errors?: unknown }).errors
  const first = Array.isArray(errors) ? errors[0] : (errors as { error?: unknown[] } | undefined)?.error?.[0]
  if (first === null || typeof first !== 'object') return {}
  const e = first as { code?: unknown, message?: unknown }
  const code = e.code === undefined || e.code === '' ? undefined : Number(e.code)
  return { code: Number.isFinite(code) ? code : undefined, message: typeof e.message === 'string' ? e.message : undefined }
}

/** A value at the top of a JSON body, or on the XML root element `root`. */
function field (body: unknown, root: string, key: string): unknown {
  if (body === null || typeof body !== 'object') return undefined
  const b = body as Record<string, unknown>
  return b[key] ?? (b[root] as Record<string, unknown> | undefined)?.[key]
}

/** Belt and braces: never let a secret plex.tv might echo reach an error message. */
function scrub (message: string, opts: { token?: string, form?: Record<string, string> }): string {
  let m = message
  for (const s of [opts.token, opts.form?.password, opts.form?.verificationCode]) {
    if (s !== undefined && s.length >= 4) m = m.split(s).join('[redacted]')
  }
  return m.slice(0, 300)
}

function pinOf (body: unknown): Pin {
  const b = ((body as { pin?: unknown } | null)?.pin ?? body) as Record<string, unknown> | null
  const id = Number(b?.id)
  if (b === null || typeof b !== 'object' || !Number.isInteger(id) || typeof b.code !== 'string') {
    throw new PlexTvError('plex.tv sent an unusable PIN', 502)
  }
  const token = b.authToken
  return { id, code: b.code, expiresAt: typeof b.expiresAt === 'string' ? b.expiresAt : null, authToken: typeof token === 'string' && token !== '' ? token : null }
}

function retryAfterMs (h: string | string[] | undefined): number | undefined {
  const v = Array.isArray(h) ? h[0] : h
  if (v === undefined) return undefined
  if (/^\d+$/.test(v.trim())) return Number(v) * 1000
  const at = Date.parse(v)
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now())
}

function reasonOf (err: unknown): string {
  const e = err as { name?: string, code?: string, cause?: { code?: string } }
  if (e.name === 'TimeoutError' || e.code === 'UND_ERR_CONNECT_TIMEOUT' || e.code === 'UND_ERR_HEADERS_TIMEOUT' || e.code === 'UND_ERR_BODY_TIMEOUT') return 'TIMEOUT'
  return e.code ?? e.cause?.code ?? e.name ?? 'ERROR'
}

function describe (reason: string, timeoutMs: number): string {
  switch (reason) {
    case 'TIMEOUT': return `no answer within ${timeoutMs} ms`
    case 'ECONNREFUSED': return 'connection refused'
    case 'ENOTFOUND': case 'EAI_AGAIN': return 'host name not found (DNS)'
    case 'ECONNRESET': case 'UND_ERR_SOCKET': return 'connection reset'
    case 'ENETUNREACH': case 'EHOSTUNREACH': return 'network unreachable'
    default: return reason
  }
}
