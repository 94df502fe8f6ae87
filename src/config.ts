import { randomBytes, createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { isIP } from 'node:net'
import { dirname, extname, resolve } from 'node:path'
import { Type, type Static } from 'typebox'
import { Value } from 'typebox/value'
import { parse as parseYaml } from 'yaml'

/**
 * Configuration: one schema for the environment and the BROKER_CONFIG file, validated once at
 * boot into a frozen, typed Config. A bad value throws ConfigError naming the variable or the
 * file path and what is wrong; server.ts prints that message and exits 1 (never a stack trace).
 */

export const SCOPES = ['token:issue', 'token:revoke', 'audit:read', 'server:read', 'server:rotate', 'source:connect'] as const
export type Scope = typeof SCOPES[number]

export type Role = 'api' | 'worker' | 'all'

export interface RateLimitConfig {
  /** Requests allowed per window. */
  max: number
  timeWindowMs: number
}

export interface ServerConfig {
  /** Unique name, `[A-Za-z0-9][A-Za-z0-9._-]{0,63}` (no `:` so it can sit in Redis keys and job ids). */
  name: string
  /** Base URL of the PMS, no trailing slash, e.g. `http://127.0.0.1:32400`. */
  url: string
  /** The admin token (read from `token`, `tokenFile` or `preferencesPath`). Never logged. */
  adminToken: string
  /** Where the admin token came from, for /v1/servers and log lines (never the value). */
  tokenSource: 'token' | 'tokenFile' | 'preferencesPath'
  /** The file the token was read from (tokenFile, preferencesPath), watched for changes. */
  tokenPath?: string
}

export interface ClientConfig {
  /** `[A-Za-z0-9][A-Za-z0-9._-]{0,63}` */
  id: string
  /** SHA-256 of the client's bearer secret (32 bytes). */
  secretSha256: Buffer
  /** Server names the client may ask for; `'*'` means all. */
  servers: string[] | '*'
  scopes: Scope[]
  rateLimit: RateLimitConfig
  /** Sources (`server://…`, `provider://…`) the client may ask connection details for; `'*'` means all. */
  sources: string[] | '*'
}

export interface Config {
  host: string
  port: number
  redisUrl: string
  /** REDIS_PASSWORD_FILE's content (Redis `requirepass`); kept out of the URL so it is never logged with it. */
  redisPassword?: string
  redisPrefix: string
  /** Key material (≥ 32 bytes) from which the encryption and fingerprint keys are derived. */
  brokerSecret: Buffer
  tokenLifetimeMs: number
  tokenRenewAfterMs: number
  probeIntervalMs: number
  /**
   * METRICS_TOKEN (or METRICS_TOKEN_FILE): `/metrics` requires `Authorization: Bearer <it>`.
   * Required when HOST is not a loopback address.
   */
  metricsToken: string | undefined
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent'
  role: Role
  auditRetentionMs: number
  auditMaxEvents: number
  /** Timeout of one PMS call. */
  plexTimeoutMs: number
  /** Concurrent PMS calls per server, per broker process. */
  plexConcurrency: number
  /**
   * TRUST_PROXY: the reverse proxies (addresses, CIDRs, or proxy-addr's `loopback`, `linklocal`,
   * `uniquelocal`) whose X-Forwarded-For is believed. Empty: the header is ignored. The client's
   * address is the right-most X-Forwarded-For entry that is not one of these.
   */
  trustProxy: readonly string[]
  defaultRateLimit: RateLimitConfig
  servers: ServerConfig[]
  clients: ClientConfig[]
  /**
   * BROKER_SECRET_PREVIOUS: secrets being rotated out. Tokens they sealed are still opened (and
   * re-sealed under BROKER_SECRET when served); nothing new is sealed with them.
   */
  brokerSecretPrevious?: Buffer[]
  /** BROKER_DEMO=1: a random BROKER_SECRET is generated when none is given. */
  demo: boolean
  /** plex.tv base URL, for admin token checks (PLEX_TV_URL). */
  plexTvUrl: string
}

export class ConfigError extends Error {
  override name = 'ConfigError'
  readonly problems: string[]
  constructor (problems: string[]) {
    super(problems.join('\n'))
    this.problems = problems
  }
}

/** Every variable the service reads: the single source for .env.example and the docs. */
export const ENV_VARIABLES: ReadonlyArray<{ name: string, default?: string, description: string }> = [
  { name: 'HOST', default: '0.0.0.0', description: 'Listen address' },
  { name: 'PORT', default: '8080', description: 'Listen port' },
  { name: 'REDIS_URL', default: 'redis://127.0.0.1:6379', description: 'Redis 6.2+ (not Cluster)' },
  { name: 'REDIS_PASSWORD_FILE', description: 'File holding the Redis password (requirepass), e.g. a Docker secret; the URL then carries none' },
  { name: 'REDIS_PREFIX', default: 'ptb', description: 'Prefix of every Redis key and BullMQ queue, so deployments and test runs can share one Redis' },
  { name: 'BROKER_CONFIG', description: 'Path to a YAML or JSON file with `servers` and `clients`' },
  { name: 'PLEX_URL', description: 'Shortcut for one server named `default`: its URL (with one of the three below)' },
  { name: 'PLEX_TOKEN', description: 'Admin token of the PLEX_URL server' },
  { name: 'PLEX_TOKEN_FILE', description: 'File holding the admin token of the PLEX_URL server (watched for changes)' },
  { name: 'PLEX_PREFERENCES_PATH', description: 'PMS Preferences.xml whose PlexOnlineToken is the admin token (watched for changes)' },
  { name: 'BROKER_SECRET', description: 'Base64 key material, 32 bytes or more: encryption at rest and audit fingerprints. Required unless BROKER_DEMO=1' },
  { name: 'BROKER_SECRET_FILE', description: 'File holding BROKER_SECRET (Docker/Kubernetes secrets)' },
  { name: 'BROKER_SECRET_PREVIOUS', description: 'Previous secrets during a rotation (comma-separated base64; or BROKER_SECRET_PREVIOUS_FILE, one per line): tokens they sealed are still served and re-sealed under BROKER_SECRET' },
  { name: 'BROKER_SECRET_PREVIOUS_FILE', description: 'File holding BROKER_SECRET_PREVIOUS (one secret per line)' },
  { name: 'BROKER_DEMO', default: '0', description: '1 = demo mode: a random BROKER_SECRET is generated when none is given (tokens do not survive a restart)' },
  { name: 'TOKEN_LIFETIME', default: '48h', description: 'How long PMS keeps a transient token alive' },
  { name: 'TOKEN_RENEW_AFTER', default: '24h', description: 'Age at which an active token is rotated (minus up to 10% jitter)' },
  { name: 'PLEX_PROBE_INTERVAL', default: '15s', description: 'Cadence of the per-server health and restart probe' },
  { name: 'PLEX_TIMEOUT', default: '5s', description: 'Deadline of one PMS call' },
  { name: 'PLEX_CONCURRENCY', default: '4', description: 'PMS calls in flight per server and broker instance' },
  { name: 'PLEX_TV_URL', default: 'https://plex.tv', description: 'plex.tv base URL (admin token checks, ptb login)' },
  { name: 'METRICS_TOKEN', description: '/metrics requires Authorization: Bearer <it>. Required when HOST is not a loopback address (127.0.0.0/8, ::1, localhost)' },
  { name: 'METRICS_TOKEN_FILE', description: 'File holding METRICS_TOKEN (Docker/Kubernetes secrets)' },
  { name: 'LOG_LEVEL', default: 'info', description: 'pino level: fatal, error, warn, info, debug, trace, silent' },
  { name: 'BROKER_ROLE', default: 'all', description: 'api (HTTP only), worker (background jobs only) or all' },
  { name: 'AUDIT_RETENTION', default: '30d', description: 'Audit events older than this are trimmed' },
  { name: 'AUDIT_MAX_EVENTS', default: '1000000', description: 'Cap on the number of audit events kept' },
  { name: 'TRUST_PROXY', default: 'false', description: 'Reverse proxies whose X-Forwarded-For is believed: comma-separated addresses/CIDRs (or loopback, linklocal, uniquelocal); false = none. `true` and hop counts are refused' },
  { name: 'RATE_LIMIT_DEFAULT', default: '600/1m', description: 'Per-client request limit when the client sets none: <max>/<duration>' },
]

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }

/** `48h`, `30m`, `15s`, `500ms`, `30d`, or combinations like `1h30m` → milliseconds. */
export function parseDuration (s: string): number {
  const text = s.trim()
  if (!/^(\d+(ms|s|m|h|d))+$/.test(text)) throw new Error(`"${s}" is not a duration (use e.g. 48h, 30m, 15s, 500ms)`)
  let total = 0
  for (const m of text.matchAll(/(\d+)(ms|s|m|h|d)/g)) total += Number(m[1]) * UNITS[m[2]]
  if (total <= 0 || !Number.isSafeInteger(total)) throw new Error(`"${s}" must be a positive duration`)
  return total
}

/** Names of servers and clients: they sit in Redis keys and BullMQ job ids (no `:`, `.`, `~`). */
const NAME = '^[a-z0-9][a-z0-9_-]{0,62}$'
const Duration = Type.String({ pattern: '^(\\d+(ms|s|m|h|d))+$' })

const ServerEntry = Type.Object({
  name: Type.String({ pattern: NAME }),
  url: Type.String({ pattern: '^https?://' }),
  token: Type.Optional(Type.String({ minLength: 1 })),
  tokenFile: Type.Optional(Type.String({ minLength: 1 })),
  preferencesPath: Type.Optional(Type.String({ minLength: 1 })),
}, { additionalProperties: false })

const ClientEntry = Type.Object({
  id: Type.String({ pattern: NAME }),
  secretSha256: Type.String({ pattern: '^[0-9a-fA-F]{64}$' }),
  servers: Type.Array(Type.String({ minLength: 1 }), { minItems: 1 }),
  scopes: Type.Array(Type.Union(SCOPES.map((s) => Type.Literal(s))), { minItems: 1 }),
  rateLimit: Type.Optional(Type.Object({ max: Type.Integer({ minimum: 1 }), timeWindow: Duration }, { additionalProperties: false })),
  sources: Type.Optional(Type.Array(Type.String({ pattern: '^(\\*|server://[A-Za-z0-9]+|provider://[A-Za-z0-9._-]+)$' }))),
}, { additionalProperties: false })

const FileSchema = Type.Object({
  servers: Type.Optional(Type.Array(ServerEntry)),
  clients: Type.Optional(Type.Array(ClientEntry)),
}, { additionalProperties: false })

type FileConfig = Static<typeof FileSchema>

export interface ConfigIo {
  readFile?: (path: string) => string
}

/** Reads `PlexOnlineToken` from a PMS Preferences.xml (an attribute of its `<Preferences …/>` element). */
export function tokenFromPreferences (xml: string): string | undefined {
  const el = /<Preferences\b[^>]*>/.exec(xml)?.[0]
  const m = el === undefined ? undefined : /\sPlexOnlineToken="([^"]*)"/.exec(el)
  return m?.[1] === undefined || m[1] === '' ? undefined : m[1]
}

/**
 * Reads and validates the whole configuration once. Collects every problem, then throws one
 * ConfigError listing them all; messages name the variable or file path and never a secret.
 */
export function loadConfig (env: Record<string, string | undefined>, io: ConfigIo = {}): Config {
  const read = io.readFile ?? ((p: string) => readFileSync(p, 'utf8'))
  const problems: string[] = []
  const get = (name: string): string | undefined => {
    const v = env[name]
    return v === undefined || v.trim() === '' ? undefined : v.trim()
  }
  const dflt = (name: string): string => get(name) ?? ENV_VARIABLES.find((v) => v.name === name)?.default ?? ''
  const duration = (name: string): number => {
    try {
      return parseDuration(dflt(name))
    } catch (err) {
      problems.push(`${name}: ${(err as Error).message}`)
      return 1
    }
  }
  const integer = (name: string, min: number, max: number): number => {
    const raw = dflt(name)
    const n = Number(raw)
    if (!/^\d+$/.test(raw) || n < min || n > max) problems.push(`${name}: must be an integer from ${min} to ${max}, got "${raw}"`)
    return n
  }
  const readPath = (label: string, path: string): string | undefined => {
    try {
      return read(path)
    } catch (err) {
      problems.push(`${label}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
      return undefined
    }
  }

  const demo = dflt('BROKER_DEMO') === '1' || dflt('BROKER_DEMO') === 'true'
  let brokerSecret: Buffer = Buffer.alloc(0)
  const secretText = get('BROKER_SECRET') ?? (get('BROKER_SECRET_FILE') === undefined ? undefined : readPath('BROKER_SECRET_FILE', get('BROKER_SECRET_FILE')!)?.trim())
  if (secretText === undefined) {
    if (demo) brokerSecret = randomBytes(32)
    else problems.push('BROKER_SECRET: required (base64, 32 bytes or more; e.g. `head -c 32 /dev/urandom | base64`), or BROKER_SECRET_FILE')
  } else {
    const decoded = Buffer.from(secretText, 'base64')
    if (!/^[A-Za-z0-9+/=_-]+$/.test(secretText) || decoded.length < 32) problems.push(`BROKER_SECRET: must be base64 of 32 bytes or more (got ${decoded.length} bytes)`)
    brokerSecret = decoded
  }

  const previousText = get('BROKER_SECRET_PREVIOUS') ??
    (get('BROKER_SECRET_PREVIOUS_FILE') === undefined ? undefined : readPath('BROKER_SECRET_PREVIOUS_FILE', get('BROKER_SECRET_PREVIOUS_FILE')!))
  const brokerSecretPrevious: Buffer[] = []
  for (const [i, text] of (previousText ?? '').split(/[\s,]+/).filter((x) => x !== '').entries()) {
    const decoded = Buffer.from(text, 'base64')
    if (!/^[A-Za-z0-9+/=_-]+$/.test(text) || decoded.length < 32) problems.push(`BROKER_SECRET_PREVIOUS: entry ${i + 1} must be base64 of 32 bytes or more (got ${decoded.length} bytes)`)
    else brokerSecretPrevious.push(decoded)
  }

  const prefix = dflt('REDIS_PREFIX')
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(prefix)) problems.push('REDIS_PREFIX: letters, digits, _ . - only (no ":" or spaces), at most 64 characters')
  const redisUrl = dflt('REDIS_URL')
  if (!/^rediss?:\/\//.test(redisUrl)) problems.push('REDIS_URL: must start with redis:// or rediss://')
  let redisPassword: string | undefined
  const redisPasswordFile = get('REDIS_PASSWORD_FILE')
  if (redisPasswordFile !== undefined) {
    redisPassword = readPath('REDIS_PASSWORD_FILE', redisPasswordFile)?.trim()
    if (redisPassword === '') problems.push(`REDIS_PASSWORD_FILE: ${redisPasswordFile} is empty`)
    if (/^rediss?:\/\/[^/]*@/.test(redisUrl)) problems.push('REDIS_PASSWORD_FILE: REDIS_URL carries credentials too; give the password in one place')
  }
  const logLevel = dflt('LOG_LEVEL')
  if (!['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].includes(logLevel)) problems.push(`LOG_LEVEL: must be one of fatal, error, warn, info, debug, trace, silent`)
  const role = dflt('BROKER_ROLE')
  if (!['api', 'worker', 'all'].includes(role)) problems.push('BROKER_ROLE: must be api, worker or all')
  const tokenLifetimeMs = duration('TOKEN_LIFETIME')
  const tokenRenewAfterMs = duration('TOKEN_RENEW_AFTER')
  if (tokenRenewAfterMs >= tokenLifetimeMs) problems.push(`TOKEN_RENEW_AFTER: must be shorter than TOKEN_LIFETIME (${dflt('TOKEN_LIFETIME')})`)

  const trustProxy: string[] = []
  const tp = dflt('TRUST_PROXY')
  if (tp === 'true') {
    problems.push('TRUST_PROXY: "true" is refused: it believes X-Forwarded-For from anyone, so any client could choose the address ' +
      'the failed-authentication throttle counts and the audit trail records. List the proxies that connect to the broker ' +
      '(addresses or CIDRs, e.g. TRUST_PROXY=10.0.0.7 or 172.18.0.0/16)')
  } else if (/^\d+$/.test(tp)) {
    problems.push(`TRUST_PROXY: a hop count ("${tp}") is refused: it cannot check that the peer is a proxy, and Fastify then ignores ` +
      'X-Forwarded-For altogether (every client would be recorded and throttled as the proxy). List the proxies\' addresses or CIDRs')
  } else if (tp !== 'false') {
    for (const entry of tp.split(',').map((e) => e.trim()).filter((e) => e !== '')) {
      const problem = trustedProxyProblem(entry)
      if (problem === undefined) trustProxy.push(entry)
      else problems.push(`TRUST_PROXY: "${entry.slice(0, 64)}" ${problem}`)
    }
  }

  let defaultRateLimit: RateLimitConfig = { max: 600, timeWindowMs: 60_000 }
  const rl = /^(\d+)\/(.+)$/.exec(dflt('RATE_LIMIT_DEFAULT'))
  try {
    if (rl === null) throw new Error('use <max>/<duration>, e.g. 600/1m')
    defaultRateLimit = { max: Number(rl[1]), timeWindowMs: parseDuration(rl[2]) }
  } catch (err) {
    problems.push(`RATE_LIMIT_DEFAULT: ${(err as Error).message}`)
  }

  const plexTvUrl = dflt('PLEX_TV_URL')
  const plexTvProblem = plexTvUrlProblem(plexTvUrl)
  if (plexTvProblem !== undefined) problems.push(`PLEX_TV_URL: ${plexTvProblem}`)

  const host = dflt('HOST')
  let metricsToken = get('METRICS_TOKEN')
  const metricsFile = get('METRICS_TOKEN_FILE')
  if (metricsToken === undefined && metricsFile !== undefined) {
    metricsToken = readPath('METRICS_TOKEN_FILE', metricsFile)?.trim()
    if (metricsToken === '') problems.push(`METRICS_TOKEN_FILE: ${metricsFile} is empty`)
  } else if (metricsToken === undefined && !isLoopbackHost(host)) {
    problems.push(`METRICS_TOKEN: required when HOST (${host}) is not a loopback address: /metrics shows client and server names, ` +
      'token counts and upstream health to whoever can reach the port. Set METRICS_TOKEN or METRICS_TOKEN_FILE (and give the ' +
      'scraper the same token), or listen on 127.0.0.1')
  }

  // Servers and clients: the file, then the PLEX_URL shortcut.
  let file: FileConfig = {}
  let fileDir = process.cwd()
  const cfgPath = get('BROKER_CONFIG')
  if (cfgPath !== undefined) {
    const label = `BROKER_CONFIG ${cfgPath}`
    fileDir = dirname(resolve(cfgPath))
    const text = readPath('BROKER_CONFIG', cfgPath)
    if (text !== undefined) {
      let data: unknown
      try {
        data = extname(cfgPath) === '.json' ? JSON.parse(text) : parseYaml(text)
      } catch (err) {
        problems.push(`${label}: not valid ${extname(cfgPath) === '.json' ? 'JSON' : 'YAML'}: ${(err as Error).message.split('\n')[0]}`)
      }
      data ??= {}
      const errors = [...Value.Errors(FileSchema, data)].filter((e) => e.keyword !== 'boolean')
      for (const e of errors.slice(0, 20)) {
        const where = e.instancePath.replace(/^\//, '').replace(/\/(\d+)/g, '[$1]').replace(/\//g, '.') || '(top level)'
        const extra = e.keyword === 'additionalProperties' ? ` (${((e.params as { additionalProperties?: string[] }).additionalProperties ?? []).join(', ')})` : ''
        problems.push(`${label}: ${where}: ${e.message}${extra}`)
      }
      if (errors.length === 0) file = data as FileConfig
    }
  }

  const servers: ServerConfig[] = []
  for (const [i, s] of (file.servers ?? []).entries()) {
    const label = `BROKER_CONFIG ${cfgPath}: servers[${i}]`
    const sources = [s.token, s.tokenFile, s.preferencesPath].filter((x) => x !== undefined)
    if (sources.length !== 1) {
      problems.push(`${label}: give exactly one of token, tokenFile, preferencesPath`)
      continue
    }
    const token = adminToken(label, s.token, s.tokenFile === undefined ? undefined : resolve(fileDir, s.tokenFile),
      s.preferencesPath === undefined ? undefined : resolve(fileDir, s.preferencesPath))
    if (token !== undefined) servers.push(token.with(s.name, s.url))
  }
  const plexUrl = get('PLEX_URL')
  if (plexUrl !== undefined) {
    const given = ['PLEX_TOKEN', 'PLEX_TOKEN_FILE', 'PLEX_PREFERENCES_PATH'].filter((n) => get(n) !== undefined)
    if (!/^https?:\/\/[^/?#@]+/.test(plexUrl)) problems.push('PLEX_URL: must be an http(s) URL without credentials')
    else if (given.length !== 1) problems.push('PLEX_URL: give exactly one of PLEX_TOKEN, PLEX_TOKEN_FILE, PLEX_PREFERENCES_PATH with it')
    else if (servers.some((s) => s.name === 'default')) problems.push('PLEX_URL: defines the server "default", which BROKER_CONFIG defines too')
    else {
      const label = given[0]
      const t = adminToken(label, get('PLEX_TOKEN'), get('PLEX_TOKEN_FILE'), get('PLEX_PREFERENCES_PATH'))
      if (t !== undefined) servers.push(t.with('default', plexUrl))
    }
  } else {
    for (const n of ['PLEX_TOKEN', 'PLEX_TOKEN_FILE', 'PLEX_PREFERENCES_PATH']) if (get(n) !== undefined) problems.push(`${n}: set PLEX_URL too`)
  }
  if (servers.length === 0 && problems.length === 0) problems.push('PLEX_URL or BROKER_CONFIG: no PMS server configured')
  const names = new Set<string>()
  for (const s of servers) {
    if (names.has(s.name)) problems.push(`BROKER_CONFIG ${cfgPath}: server "${s.name}" is defined twice`)
    names.add(s.name)
  }

  const clients: ClientConfig[] = []
  const digests = new Set<string>()
  const ids = new Set<string>()
  for (const [i, c] of (file.clients ?? []).entries()) {
    const label = `BROKER_CONFIG ${cfgPath}: clients[${i}]`
    if (ids.has(c.id)) problems.push(`${label}: id "${c.id}" is used twice`)
    ids.add(c.id)
    const hex = c.secretSha256.toLowerCase()
    if (digests.has(hex)) problems.push(`${label}: the same secret as another client`)
    digests.add(hex)
    const all = c.servers.includes('*')
    for (const n of c.servers) if (n !== '*' && !names.has(n)) problems.push(`${label}: server "${n}" is not configured`)
    let rateLimit = defaultRateLimit
    if (c.rateLimit !== undefined) rateLimit = { max: c.rateLimit.max, timeWindowMs: parseDuration(c.rateLimit.timeWindow) }
    const sources = c.sources ?? []
    clients.push({
      id: c.id,
      secretSha256: Buffer.from(hex, 'hex'),
      servers: all ? '*' : c.servers,
      scopes: [...new Set(c.scopes)],
      rateLimit,
      sources: sources.includes('*') ? '*' : sources,
    })
  }

  const port = integer('PORT', 0, 65535)
  const probeIntervalMs = duration('PLEX_PROBE_INTERVAL')
  const auditRetentionMs = duration('AUDIT_RETENTION')
  const auditMaxEvents = integer('AUDIT_MAX_EVENTS', 1000, 1_000_000_000)
  const plexTimeoutMs = duration('PLEX_TIMEOUT')
  const plexConcurrency = integer('PLEX_CONCURRENCY', 1, 1000)
  if (problems.length > 0) throw new ConfigError(problems)
  return deepFreeze({
    host,
    port,
    redisUrl,
    ...(redisPassword === undefined ? {} : { redisPassword }),
    redisPrefix: prefix,
    brokerSecret,
    tokenLifetimeMs,
    tokenRenewAfterMs,
    probeIntervalMs,
    metricsToken,
    logLevel: logLevel as Config['logLevel'],
    role: role as Role,
    auditRetentionMs,
    auditMaxEvents,
    plexTimeoutMs,
    plexConcurrency,
    trustProxy,
    defaultRateLimit,
    servers,
    clients,
    brokerSecretPrevious,
    demo,
    plexTvUrl: plexTvUrl.replace(/\/+$/, ''),
  })

  function adminToken (label: string, token: string | undefined, tokenFile: string | undefined, prefs: string | undefined) {
    let value: string | undefined
    let source: ServerConfig['tokenSource'] = 'token'
    let path: string | undefined
    if (token !== undefined) value = token
    else if (tokenFile !== undefined) {
      source = 'tokenFile'
      path = tokenFile
      value = readPath(label, tokenFile)?.trim()
      if (value === '') {
        problems.push(`${label}: ${tokenFile} is empty`)
        value = undefined
      }
    } else if (prefs !== undefined) {
      source = 'preferencesPath'
      path = prefs
      const xml = readPath(label, prefs)
      if (xml !== undefined) {
        value = tokenFromPreferences(xml)
        if (value === undefined) problems.push(`${label}: ${prefs} has no PlexOnlineToken (is the server claimed?)`)
      }
    }
    if (value === undefined) return undefined
    const v = value
    return {
      with: (name: string, url: string): ServerConfig => ({ name, url: url.replace(/\/+$/, ''), adminToken: v, tokenSource: source, ...(path === undefined ? {} : { tokenPath: path }) }),
    }
  }
}

/** A loopback host name or address: 127.0.0.0/8, ::1 (bracketed or not) or `localhost`. */
export function isLoopbackHost (host: string): boolean {
  const h = host.toLowerCase().replace(/^\[(.*)\]$/, '$1')
  if (h === 'localhost' || h === '::1') return true
  return isIP(h) === 4 && h.startsWith('127.')
}

/**
 * Why a plex.tv base URL (PLEX_TV_URL, for the broker and `ptb`) is not acceptable, or undefined.
 * The admin token, and for `ptb login --password` the account password, are sent to it, so it
 * must be https; plain http only to a loopback address (a local simulator or test double).
 */
export function plexTvUrlProblem (url: string): string | undefined {
  let u: URL
  try {
    u = new URL(url)
  } catch {
    return 'must be an https URL'
  }
  if (u.username !== '' || u.password !== '') return 'must not contain credentials'
  if (u.protocol === 'https:') return undefined
  if (u.protocol === 'http:' && isLoopbackHost(u.hostname)) return undefined
  return 'must be an https URL: the admin token (and, for `ptb login --password`, the password) travel to it; ' +
    'plain http is allowed only to a loopback address (127.0.0.0/8, ::1, localhost)'
}

const PROXY_NAMES = new Set(['loopback', 'linklocal', 'uniquelocal'])

/** Why a TRUST_PROXY entry is not an address, a CIDR or one of proxy-addr's names, or undefined. */
function trustedProxyProblem (entry: string): string | undefined {
  if (PROXY_NAMES.has(entry) || isIP(entry) !== 0) return undefined
  const m = /^([^/]+)\/(\d{1,3})$/.exec(entry)
  const kind = m === null ? 0 : isIP(m[1])
  if (m === null || kind === 0) return 'is not an IP address, a CIDR (address/prefix length), loopback, linklocal or uniquelocal'
  const bits = Number(m[2])
  if (bits > (kind === 4 ? 32 : 128)) return `has a prefix length over ${kind === 4 ? 32 : 128}`
  if (bits === 0) return 'trusts every address, which is what TRUST_PROXY=true would do (refused); list the proxies\' own networks'
  return undefined
}

function deepFreeze<T> (o: T): T {
  if (o !== null && typeof o === 'object' && !Buffer.isBuffer(o) && !Object.isFrozen(o)) {
    Object.freeze(o)
    for (const v of Object.values(o as object)) deepFreeze(v)
  }
  return o
}

/** Fingerprint of the config's servers and clients (no secrets), e.g. for logs at boot. */
export function describeConfig (c: Config): Record<string, unknown> {
  return {
    servers: c.servers.map((s) => ({ name: s.name, url: s.url, tokenSource: s.tokenSource })),
    clients: c.clients.map((cl) => cl.id),
    role: c.role,
    redisPrefix: c.redisPrefix,
    digest: createHash('sha256').update(JSON.stringify(c.clients.map((cl) => cl.id))).digest('hex').slice(0, 12),
  }
}
