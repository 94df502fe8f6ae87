import { Agent, request } from 'undici'
import { XMLParser } from 'fast-xml-parser'

/** A plex.tv error answer: HTTP status plus plex.tv's own code (1020 expired PIN, 1029 2FA, 1031 lockout…). */
export class PlexTvError extends Error {
  readonly status: number
  readonly plexCode: number | undefined
  constructor (message: string, status: number, plexCode?: number) {
    super(message)
    this.name = 'PlexTvError'
    this.status = status
    this.plexCode = plexCode
  }
}

/** plex.tv did not answer (network error, timeout). */
export class PlexTvUnreachableError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'PlexTvUnreachableError'
  }
}

export interface Pin { id: number, code: string, expiresAt: string | null, authToken: string | null }

export interface Resource {
  name: string
  clientIdentifier: string
  owned: boolean
  provides: string
  accessToken: string | null
  connections: Array<{ uri: string, local: boolean, relay: boolean, protocol: string, address: string, port: number }>
}

export interface PlexTvOptions {
  /** Default https://plex.tv (PLEX_TV_URL). */
  baseUrl: string
  clientIdentifier: string
  product?: string
  version?: string
  timeoutMs?: number
}

const xml = new XMLParser({ ignoreAttributes: false, attributeNamePrefix: '', isArray: (n) => n === 'error' || n === 'resource' || n === 'connection' })
const bool = (v: unknown): boolean => v === true || v === 1 || v === '1' || v === 'true'

/**
 * The plex.tv API the broker and `ptb` use (../shared/plex-api.md §5): PIN login, password
 * sign-in, token check, keep-alive ping, resources, claim token. Tokens and passwords travel in
 * headers or form bodies only, never in a URL, so no error message can carry one.
 */
export class PlexTv {
  readonly #o: PlexTvOptions
  readonly #agent = new Agent({ keepAliveTimeout: 10_000 })

  constructor (opts: PlexTvOptions) {
    this.#o = { ...opts, baseUrl: opts.baseUrl.replace(/\/+$/, '') }
  }

  async #call (method: 'GET' | 'POST', path: string, opts: { token?: string, form?: Record<string, string> } = {}): Promise<{ status: number, body: unknown }> {
    let res
    try {
      res = await request(`${this.#o.baseUrl}${path}`, {
        method,
        dispatcher: this.#agent,
        headers: {
          accept: 'application/json',
          'x-plex-client-identifier': this.#o.clientIdentifier,
          'x-plex-product': this.#o.product ?? 'plex-token-broker',
          'x-plex-version': this.#o.version ?? '0.1.0',
          ...(opts.token === undefined ? {} : { 'x-plex-token': opts.token }),
          ...(opts.form === undefined ? {} : { 'content-type': 'application/x-www-form-urlencoded' }),
        },
        body: opts.form === undefined ? undefined : new URLSearchParams(opts.form).toString(),
        signal: AbortSignal.timeout(this.#o.timeoutMs ?? 10_000),
      })
    } catch (err) {
      throw new PlexTvUnreachableError(`plex.tv (${this.#o.baseUrl}) is unreachable: ${(err as { code?: string }).code ?? (err as Error).message}`)
    }
    const text = await res.body.text().catch(() => '')
    let body: unknown = text
    const t = text.trimStart()
    try {
      if (t.startsWith('{') || t.startsWith('[')) body = JSON.parse(t)
      else if (t.startsWith('<')) body = xml.parse(t)
    } catch {}
    if (res.statusCode >= 400) {
      const e = errorOf(body)
      throw new PlexTvError(`plex.tv answered ${res.statusCode}${e.code === undefined ? '' : ` (code ${e.code})`}: ${e.message ?? 'error'}`, res.statusCode, e.code)
    }
    return { status: res.statusCode, body }
  }

  /** Step 1 of the PIN flow: a strong PIN for the app.plex.tv link. */
  async createPin (): Promise<Pin> {
    const { body } = await this.#call('POST', '/api/v2/pins?strong=true')
    return pinOf(body)
  }

  /** Poll of the PIN flow; authToken is non-null once the user approved. 404 code 1020: expired. */
  async checkPin (id: number): Promise<Pin> {
    const { body } = await this.#call('GET', `/api/v2/pins/${id}`)
    return pinOf(body)
  }

  /** The link a person opens to approve the PIN. */
  authUrl (pin: Pin): string {
    const q = new URLSearchParams({ clientID: this.#o.clientIdentifier, code: pin.code, 'context[device][product]': this.#o.product ?? 'plex-token-broker' })
    return `https://app.plex.tv/auth#?${q.toString()}`
  }

  /** Username/password sign-in; 401 code 1029 means a 2FA code is needed, 1031 a lockout of this IP. */
  async signIn (login: string, password: string, verificationCode?: string): Promise<string> {
    const form: Record<string, string> = { login, password }
    if (verificationCode !== undefined) form.verificationCode = verificationCode
    const { body } = await this.#call('POST', '/api/v2/users/signin', { form })
    const token = (body as { authToken?: unknown }).authToken ?? (body as { user?: { authToken?: unknown } }).user?.authToken
    if (typeof token !== 'string') throw new PlexTvError('plex.tv signed in but sent no token', 200)
    return token
  }

  /** `GET /api/v2/user`: 200 valid, 401 invalid, anything else (or no answer) unknown — never invalid. */
  async checkAccountToken (token: string): Promise<'valid' | 'invalid' | 'unknown'> {
    try {
      await this.#call('GET', '/api/v2/user', { token })
      return 'valid'
    } catch (err) {
      if (err instanceof PlexTvError && err.status === 401) return 'invalid'
      return 'unknown'
    }
  }

  /** Keeps an account token alive (plex-api.md §5.6). */
  async ping (token: string): Promise<void> {
    await this.#call('GET', '/api/v2/ping', { token })
  }

  /** The account's devices with their access tokens (§5.4). */
  async resources (token: string): Promise<Resource[]> {
    const { body } = await this.#call('GET', '/api/v2/resources?includeHttps=1&includeRelay=1', { token })
    const list = Array.isArray(body) ? body : ((body as { resources?: { resource?: unknown[] } }).resources?.resource ?? [])
    return (list as Array<Record<string, unknown>>).map((r) => {
      const raw = (r.connections as { connection?: unknown[] } | unknown[] | undefined)
      const conns = (Array.isArray(raw) ? raw : raw?.connection ?? []) as Array<Record<string, unknown>>
      return {
        name: String(r.name ?? ''),
        clientIdentifier: String(r.clientIdentifier ?? ''),
        owned: bool(r.owned),
        provides: String(r.provides ?? ''),
        accessToken: typeof r.accessToken === 'string' ? r.accessToken : null,
        connections: conns.map((c) => ({
          uri: String(c.uri ?? ''),
          local: bool(c.local),
          relay: bool(c.relay),
          protocol: String(c.protocol ?? ''),
          address: String(c.address ?? ''),
          port: Number(c.port ?? 0),
        })).sort((a, b) => rank(a) - rank(b)),
      }
    })
  }

  /** A claim token for an unclaimed PMS (§5.7); valid for a few minutes. */
  async claimToken (token: string): Promise<string> {
    const { body } = await this.#call('GET', '/api/claim/token.json', { token })
    const t = (body as { token?: unknown }).token
    if (typeof t !== 'string') throw new PlexTvError('plex.tv sent no claim token', 200)
    return t
  }

  async close (): Promise<void> {
    await this.#agent.close().catch(() => {})
  }
}

const rank = (c: { local: boolean, relay: boolean }): number => (c.relay ? 2 : c.local ? 0 : 1)

function errorOf (body: unknown): { code?: number, message?: string } {
  const json = (body as { errors?: Array<{ code?: number, message?: string }> }).errors?.[0]
  const x = (body as { errors?: { error?: Array<{ code?: string, message?: string }> } }).errors?.error?.[0]
  const e = json ?? x
  if (e === undefined || typeof e !== 'object') return {}
  return { code: e.code === undefined ? undefined : Number(e.code), message: e.message }
}

function pinOf (body: unknown): Pin {
  const b = ((body as { pin?: unknown }).pin ?? body) as Record<string, unknown>
  const id = Number(b.id)
  if (!Number.isInteger(id) || typeof b.code !== 'string') throw new PlexTvError('plex.tv sent an unusable PIN', 200)
  const token = b.authToken
  return { id, code: b.code, expiresAt: typeof b.expiresAt === 'string' ? b.expiresAt : null, authToken: typeof token === 'string' && token !== '' ? token : null }
}
