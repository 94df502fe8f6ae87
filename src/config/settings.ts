import { randomBytes } from 'node:crypto'
import { isIP } from 'node:net'
import { type Env, parseDuration } from './env.ts'
import type { LogLevel, RateLimitConfig, Role } from './types.ts'

/**
 * The config steps for single-valued settings: each reads its variables from `env`, records what
 * is wrong there and returns the values (placeholders when wrong: `loadConfig` throws before any
 * of them is used).
 */

const BASE64 = /^[A-Za-z0-9+/=_-]+$/

/** BROKER_SECRET (or its file), BROKER_SECRET_PREVIOUS (or its file) and BROKER_DEMO. See docs/security.md. */
export function readSecrets (env: Env): { brokerSecret: Buffer, brokerSecretPrevious: Buffer[], demo: boolean } {
  const demo = env.dflt('BROKER_DEMO') === '1' || env.dflt('BROKER_DEMO') === 'true'
  let brokerSecret: Buffer = Buffer.alloc(0)
  const secretText = env.secret('BROKER_SECRET', 'BROKER_SECRET_FILE')
  if (secretText === undefined) {
    if (demo) brokerSecret = randomBytes(32)
    else env.problem('BROKER_SECRET: required (base64, 32 bytes or more; e.g. `head -c 32 /dev/urandom | base64`), or BROKER_SECRET_FILE')
  } else {
    const decoded = Buffer.from(secretText, 'base64')
    if (!BASE64.test(secretText) || decoded.length < 32) env.problem(`BROKER_SECRET: must be base64 of 32 bytes or more (got ${decoded.length} bytes)`)
    brokerSecret = decoded
  }

  // Comma- or line-separated: the variable takes a list, the file one secret per line.
  const previousText = env.secret('BROKER_SECRET_PREVIOUS', 'BROKER_SECRET_PREVIOUS_FILE')
  const brokerSecretPrevious: Buffer[] = []
  for (const [i, text] of (previousText ?? '').split(/[\s,]+/).filter((x) => x !== '').entries()) {
    const decoded = Buffer.from(text, 'base64')
    if (!BASE64.test(text) || decoded.length < 32) env.problem(`BROKER_SECRET_PREVIOUS: entry ${i + 1} must be base64 of 32 bytes or more (got ${decoded.length} bytes)`)
    else brokerSecretPrevious.push(decoded)
  }
  return { brokerSecret, brokerSecretPrevious, demo }
}

/** REDIS_PREFIX, REDIS_URL and REDIS_PASSWORD_FILE (the password stays out of the URL, so it is never logged with it). */
export function readRedis (env: Env): { redisUrl: string, redisPassword?: string, redisPrefix: string } {
  const redisPrefix = env.dflt('REDIS_PREFIX')
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(redisPrefix)) env.problem('REDIS_PREFIX: letters, digits, _ . - only (no ":" or spaces), at most 64 characters')
  const redisUrl = env.dflt('REDIS_URL')
  if (!/^rediss?:\/\//.test(redisUrl)) env.problem('REDIS_URL: must start with redis:// or rediss://')
  const redisPassword = env.secret(undefined, 'REDIS_PASSWORD_FILE', { emptyFile: 'problem' })
  if (env.get('REDIS_PASSWORD_FILE') !== undefined && /^rediss?:\/\/[^/]*@/.test(redisUrl)) {
    env.problem('REDIS_PASSWORD_FILE: REDIS_URL carries credentials too; give the password in one place')
  }
  return { redisUrl, ...(redisPassword === undefined ? {} : { redisPassword }), redisPrefix }
}

const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']
const ROLES: readonly Role[] = ['api', 'worker', 'all']

/** LOG_LEVEL and BROKER_ROLE. */
export function readProcess (env: Env): { logLevel: LogLevel, role: Role } {
  const logLevel = env.dflt('LOG_LEVEL')
  if (!(LOG_LEVELS as readonly string[]).includes(logLevel)) env.problem(`LOG_LEVEL: must be one of ${LOG_LEVELS.join(', ')}`)
  const role = env.dflt('BROKER_ROLE')
  if (!(ROLES as readonly string[]).includes(role)) env.problem('BROKER_ROLE: must be api, worker or all')
  return { logLevel: logLevel as LogLevel, role: role as Role }
}

/** TOKEN_LIFETIME and TOKEN_RENEW_AFTER: a token is rotated before PMS lets it die (README, timing model). */
export function readTokenTiming (env: Env): { tokenLifetimeMs: number, tokenRenewAfterMs: number } {
  const tokenLifetimeMs = env.duration('TOKEN_LIFETIME')
  const tokenRenewAfterMs = env.duration('TOKEN_RENEW_AFTER')
  if (tokenRenewAfterMs >= tokenLifetimeMs) env.problem(`TOKEN_RENEW_AFTER: must be shorter than TOKEN_LIFETIME (${env.dflt('TOKEN_LIFETIME')})`)
  return { tokenLifetimeMs, tokenRenewAfterMs }
}

/**
 * TRUST_PROXY: a list of proxies only. `true` and hop counts are refused: either would let any
 * client choose the address that the authentication throttle counts and the audit trail records.
 */
export function readTrustProxy (env: Env): string[] {
  const trustProxy: string[] = []
  const tp = env.dflt('TRUST_PROXY')
  if (tp === 'true') {
    env.problem('TRUST_PROXY: "true" is refused: it believes X-Forwarded-For from anyone, so any client could choose the address ' +
      'the failed-authentication throttle counts and the audit trail records. List the proxies that connect to the broker ' +
      '(addresses or CIDRs, e.g. TRUST_PROXY=10.0.0.7 or 172.18.0.0/16)')
  } else if (/^\d+$/.test(tp)) {
    env.problem(`TRUST_PROXY: a hop count ("${tp}") is refused: it cannot check that the peer is a proxy, and Fastify then ignores ` +
      'X-Forwarded-For altogether (every client would be recorded and throttled as the proxy). List the proxies\' addresses or CIDRs')
  } else if (tp !== 'false') {
    for (const entry of tp.split(',').map((e) => e.trim()).filter((e) => e !== '')) {
      const problem = trustedProxyProblem(entry)
      if (problem === undefined) trustProxy.push(entry)
      else env.problem(`TRUST_PROXY: "${entry.slice(0, 64)}" ${problem}`)
    }
  }
  return trustProxy
}

/** RATE_LIMIT_DEFAULT: `<max>/<duration>`, the limit of clients that set none. */
export function readDefaultRateLimit (env: Env): RateLimitConfig {
  const rl = /^(\d+)\/(.+)$/.exec(env.dflt('RATE_LIMIT_DEFAULT'))
  try {
    if (rl === null) throw new Error('use <max>/<duration>, e.g. 600/1m')
    return { max: Number(rl[1]), timeWindowMs: parseDuration(rl[2]) }
  } catch (err) {
    env.problem(`RATE_LIMIT_DEFAULT: ${(err as Error).message}`)
    return { max: 600, timeWindowMs: 60_000 }
  }
}

/** PLEX_TV_URL, without trailing slashes. */
export function readPlexTvUrl (env: Env): string {
  const plexTvUrl = env.dflt('PLEX_TV_URL')
  const problem = plexTvUrlProblem(plexTvUrl)
  if (problem !== undefined) env.problem(`PLEX_TV_URL: ${problem}`)
  return plexTvUrl.replace(/\/+$/, '')
}

/**
 * HOST and METRICS_TOKEN (or its file): `/metrics` shows client and server names, token counts
 * and upstream health, so a broker listening beyond loopback must protect it.
 */
export function readListen (env: Env): { host: string, metricsToken: string | undefined } {
  const host = env.dflt('HOST')
  const metricsToken = env.secret('METRICS_TOKEN', 'METRICS_TOKEN_FILE', { emptyFile: 'problem' })
  if (metricsToken === undefined && env.get('METRICS_TOKEN_FILE') === undefined && !isLoopbackHost(host)) {
    env.problem(`METRICS_TOKEN: required when HOST (${host}) is not a loopback address: /metrics shows client and server names, ` +
      'token counts and upstream health to whoever can reach the port. Set METRICS_TOKEN or METRICS_TOKEN_FILE (and give the ' +
      'scraper the same token), or listen on 127.0.0.1')
  }
  return { host, metricsToken }
}

/** PORT, the probe cadence, audit retention and cap, and the PMS call limits. */
export function readLimits (env: Env): {
  port: number, probeIntervalMs: number, auditRetentionMs: number, auditMaxEvents: number, plexTimeoutMs: number, plexConcurrency: number
} {
  return {
    port: env.integer('PORT', 0, 65535),
    probeIntervalMs: env.duration('PLEX_PROBE_INTERVAL'),
    auditRetentionMs: env.duration('AUDIT_RETENTION'),
    auditMaxEvents: env.integer('AUDIT_MAX_EVENTS', 1000, 1_000_000_000),
    plexTimeoutMs: env.duration('PLEX_TIMEOUT'),
    plexConcurrency: env.integer('PLEX_CONCURRENCY', 1, 1000),
  }
}

/** The push channel's limits and heartbeat (GET /v1/tokens/stream). */
export function readStreams (env: Env): { streamMaxPerClient: number, streamMaxTotal: number, streamHeartbeatMs: number } {
  return {
    streamMaxPerClient: env.integer('STREAM_MAX_PER_CLIENT', 1, 100_000),
    streamMaxTotal: env.integer('STREAM_MAX_TOTAL', 1, 1_000_000),
    streamHeartbeatMs: env.integer('STREAM_HEARTBEAT_MS', 100, 3_600_000),
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
