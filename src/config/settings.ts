import { randomBytes } from 'node:crypto'
import { isIP } from 'node:net'
import { type Env, parseDuration } from './env.ts'
import type { Config, HostPort, LogLevel, RateLimitConfig, RedisTlsConfig, Role } from './types.ts'

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

export type RedisSettings = Pick<Config, 'redisUrl' | 'redisPassword' | 'redisUsername' | 'redisPrefix' | 'redisTls' | 'redisSentinel' | 'redisCluster' |
  'redisWaitReplicas' | 'redisWaitTimeoutMs'>

/** `host:port` or `[v6]:port`, comma-separated. */
function hostPorts (env: Env, name: string): HostPort[] {
  const out: HostPort[] = []
  for (const item of (env.get(name) ?? '').split(',').map((x) => x.trim()).filter((x) => x !== '')) {
    const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^\s:[\]]+)):(\d{1,5})$/.exec(item)
    const port = Number(m?.[3])
    const host = m?.[1] ?? m?.[2]
    if (host === undefined || port < 1 || port > 65535) env.problem(`${name}: "${item}" is not host:port`)
    else out.push({ host, port })
  }
  return out
}

/**
 * REDIS_* (README, *Redis: TLS, ACL users, Sentinel, Cluster*): where Redis is, how the broker
 * proves who it is (ACL user, password file, client certificate) and checks who Redis is (CA,
 * server name), and whether it follows Sentinels or a Cluster. Passwords stay out of the URL and
 * out of every message, so they are never logged.
 */
export function readRedis (env: Env): RedisSettings {
  const redisPrefix = env.dflt('REDIS_PREFIX')
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(redisPrefix)) env.problem('REDIS_PREFIX: letters, digits, _ . - only (no ":" or spaces), at most 64 characters')
  const redisUrl = env.dflt('REDIS_URL')
  let url: URL | undefined
  try {
    url = new URL(redisUrl)
  } catch {}
  if (url === undefined || !/^rediss?:$/.test(url.protocol)) env.problem('REDIS_URL: must start with redis:// or rediss://')
  const tls = url?.protocol === 'rediss:'
  const redisPassword = env.secret(undefined, 'REDIS_PASSWORD_FILE', { emptyFile: 'problem' })
  if (env.get('REDIS_PASSWORD_FILE') !== undefined && url !== undefined && url.password !== '') {
    env.problem('REDIS_PASSWORD_FILE: REDIS_URL carries credentials too; give the password in one place')
  }
  const redisUsername = env.get('REDIS_USERNAME')
  if (redisUsername !== undefined && url !== undefined && url.username !== '') env.problem('REDIS_USERNAME: REDIS_URL names a user too; give it in one place')
  const db = url === undefined || url.pathname === '' || url.pathname === '/' ? 0 : Number(url.pathname.slice(1))
  if (!Number.isInteger(db) || db < 0) env.problem('REDIS_URL: the path must be a database number (/0, /1, …)')

  // TLS: the files are read once at boot; a key is a secret, so a message names its path only.
  const redisTls: RedisTlsConfig = {}
  for (const [name, field] of [['REDIS_TLS_CA_FILE', 'ca'], ['REDIS_TLS_CERT_FILE', 'cert'], ['REDIS_TLS_KEY_FILE', 'key']] as const) {
    const path = env.get(name)
    if (path === undefined) continue
    if (!tls) env.problem(`${name}: REDIS_URL must start with rediss:// (TLS) for it to be used`)
    const text = env.readPath(name, path)
    if (text !== undefined && !text.includes('-----BEGIN ')) env.problem(`${name}: ${path} is not a PEM file`)
    else if (text !== undefined) redisTls[field] = text
  }
  if ((env.get('REDIS_TLS_CERT_FILE') === undefined) !== (env.get('REDIS_TLS_KEY_FILE') === undefined)) {
    env.problem('REDIS_TLS_CERT_FILE: mutual TLS needs both REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE')
  }
  const servername = env.get('REDIS_TLS_SERVERNAME')
  if (servername !== undefined) {
    if (!tls) env.problem('REDIS_TLS_SERVERNAME: REDIS_URL must start with rediss:// (TLS) for it to be used')
    redisTls.servername = servername
  }

  const sentinels = hostPorts(env, 'REDIS_SENTINELS')
  const sentinelPassword = env.secret(undefined, 'REDIS_SENTINEL_PASSWORD_FILE', { emptyFile: 'problem' })
  const sentinelName = env.dflt('REDIS_SENTINEL_NAME')
  if (sentinelPassword !== undefined && sentinels.length === 0) env.problem('REDIS_SENTINEL_PASSWORD_FILE: set, but REDIS_SENTINELS is not')
  const cluster = env.dflt('REDIS_CLUSTER')
  if (cluster !== '0' && cluster !== '1') env.problem('REDIS_CLUSTER: must be 0 or 1')
  const clusterNodes = hostPorts(env, 'REDIS_CLUSTER_NODES')
  if (clusterNodes.length > 0 && cluster !== '1') env.problem('REDIS_CLUSTER_NODES: set, but REDIS_CLUSTER is not 1')
  if (cluster === '1' && sentinels.length > 0) env.problem('REDIS_CLUSTER: Cluster and Sentinel (REDIS_SENTINELS) exclude each other; choose one')
  if (cluster === '1' && db !== 0) env.problem('REDIS_URL: Redis Cluster has database 0 only')

  const redisWaitReplicas = env.integer('REDIS_WAIT_REPLICAS', 0, 16)
  const redisWaitTimeoutMs = env.duration('REDIS_WAIT_TIMEOUT')
  if (redisWaitTimeoutMs > 250) env.problem('REDIS_WAIT_TIMEOUT: at most 250ms (a security event may wait for two, within the request path\'s 1 s Redis deadline)')
  return {
    redisUrl,
    ...(redisPassword === undefined ? {} : { redisPassword }),
    ...(redisUsername === undefined ? {} : { redisUsername }),
    redisPrefix,
    ...(Object.keys(redisTls).length === 0 ? {} : { redisTls }),
    ...(sentinels.length === 0 ? {} : { redisSentinel: { sentinels, name: sentinelName, ...(sentinelPassword === undefined ? {} : { password: sentinelPassword }) } }),
    ...(cluster === '1' ? { redisCluster: { nodes: clusterNodes } } : {}),
    redisWaitReplicas,
    redisWaitTimeoutMs,
  }
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
    const wide = trustedProxyCoverageProblem(trustProxy)
    if (wide !== undefined) env.problem(`TRUST_PROXY: ${wide}`)
  }
  return trustProxy
}

/** RATE_LIMIT_DEFAULT: `<max>/<duration>`, the limit of clients that set none. */
export function readDefaultRateLimit (env: Env): RateLimitConfig {
  const rl = /^(\d+)\/(.+)$/.exec(env.dflt('RATE_LIMIT_DEFAULT'))
  try {
    if (rl === null) throw new Error('use <max>/<duration>, e.g. 600/1m')
    const [, max, window = ''] = rl
    return { max: Number(max), timeWindowMs: parseDuration(window) }
  } catch (err) {
    env.problem(`RATE_LIMIT_DEFAULT: ${(err as Error).message}`)
    return { max: 600, timeWindowMs: 60_000 }
  }
}

/**
 * PLEX_TV_URL, without trailing slashes; undefined for `off` (no plex.tv checks: for a simulated
 * PMS, whose admin token must never travel to the real plex.tv).
 */
export function readPlexTvUrl (env: Env): string | undefined {
  const plexTvUrl = env.dflt('PLEX_TV_URL')
  if (plexTvUrl.trim().toLowerCase() === 'off') return undefined
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

/** The PMS proxy's defaults: per-key limits (PROXY_KEY_*) and the browser origins of its listeners (PROXY_CORS_ORIGINS). */
export function readProxyDefaults (env: Env): { proxyKeyLimits: { requestsPerMinute: number, openStreams: number }, proxyCorsOrigins: string[] } {
  const origins = (env.get('PROXY_CORS_ORIGINS') ?? '').split(',').map((o) => o.trim()).filter((o) => o !== '')
  for (const o of origins) {
    const problem = corsOriginProblem(o)
    if (problem !== undefined) env.problem(`PROXY_CORS_ORIGINS: ${problem}`)
  }
  return {
    proxyKeyLimits: {
      requestsPerMinute: env.integer('PROXY_KEY_REQUESTS_PER_MINUTE', 0, 1_000_000),
      openStreams: env.integer('PROXY_KEY_OPEN_STREAMS', 0, 100_000),
    },
    proxyCorsOrigins: origins,
  }
}

/**
 * What is wrong with a CORS origin, or undefined: it must be exactly an origin as browsers send it
 * (`https://dash.example.com`, `http://10.0.0.4:3000`): no path, no trailing slash, no wildcard.
 * `*` is refused: the proxy answers with the caller's own origin, for listed origins only.
 */
export function corsOriginProblem (origin: string): string | undefined {
  const shown = `"${origin.slice(0, 80)}"`
  if (origin.includes('*')) return `${shown}: wildcards are refused; list each origin (scheme://host[:port])`
  let u: URL
  try {
    u = new URL(origin)
  } catch {
    return `${shown} is not an origin (scheme://host[:port])`
  }
  if ((u.protocol !== 'http:' && u.protocol !== 'https:') || u.origin !== origin) return `${shown} is not an origin as browsers send it (scheme://host[:port], lowercase, no path or trailing /)`
  return undefined
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
  // No match leaves addr empty, which isIP rejects like any other non-address.
  const [, addr = '', len] = /^([^/]+)\/(\d{1,3})$/.exec(entry) ?? []
  const kind = isIP(addr)
  if (kind === 0) return 'is not an IP address, a CIDR (address/prefix length), loopback, linklocal or uniquelocal'
  const bits = Number(len)
  if (bits > (kind === 4 ? 32 : 128)) return `has a prefix length over ${kind === 4 ? 32 : 128}`
  if (bits === 0) return 'trusts every address, which is what TRUST_PROXY=true would do (refused); list the proxies\' own networks'
  if (kind === 6 && bits < 104 && mappedV4(addr)) {
    return 'is an IPv4-mapped range wider than /104 (an IPv4 /8): no proxy network is that wide; list the proxies\' own networks in IPv4'
  }
  return undefined
}

/**
 * A family's share from which a TRUST_PROXY list counts as trusting (nearly) everyone: an eighth,
 * the space of a /3 (IPv6's 2000::/3 is the whole public internet). Private networks are far
 * smaller: 10/8, 172.16/12 and 192.168/16 together are 1/240 of IPv4, fc00::/7 1/128 of IPv6.
 */
const MAX_TRUSTED_SHARE = 1 / 8

/** The ranges behind proxy-addr's names. */
const NAMED_RANGES: Record<string, string[]> = {
  loopback: ['127.0.0.0/8', '::1/128'],
  linklocal: ['169.254.0.0/16', 'fe80::/10'],
  uniquelocal: ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', 'fc00::/7'],
}

const V4_MAPPED_START = 0xffffn << 32n

/** An IPv6 address as a 128-bit number; IPv4-mapped and other dotted tails included. */
function v6ToBigInt (addr: string): bigint {
  // The URL parser writes any IPv6 spelling in one form (hex groups, at most one `::`).
  const host = new URL(`http://[${addr}]/`).hostname.slice(1, -1)
  const [head, tail] = host.includes('::') ? host.split('::') : [host, undefined]
  const left = head === '' ? [] : head.split(':')
  const right = tail === undefined || tail === '' ? [] : tail.split(':')
  const groups = [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right]
  return groups.reduce((n, g) => (n << 16n) | BigInt(parseInt(g, 16)), 0n)
}

function v4ToBigInt (addr: string): bigint {
  return addr.split('.').reduce((n, o) => (n << 8n) | BigInt(Number(o)), 0n)
}

function mappedV4 (addr: string): boolean {
  return v6ToBigInt(addr) >> 32n === 0xffffn
}

/**
 * Sets that trust (nearly) every address in another spelling than `0.0.0.0/0` (two /1s, a
 * mapped ::ffff:0.0.0.0/96, many small blocks): the union of the listed ranges, per family, must
 * stay under MAX_TRUSTED_SHARE. IPv4-mapped ranges count as IPv4: that is what proxy-addr
 * matches them against.
 */
function trustedProxyCoverageProblem (entries: string[]): string | undefined {
  const v4: Array<[bigint, bigint]> = []
  const v6: Array<[bigint, bigint]> = []
  for (const entry of entries.flatMap((e) => NAMED_RANGES[e] ?? [e])) {
    const [addr = '', len] = entry.split('/')
    const kind = isIP(addr)
    const bits = kind === 4 ? 32 : 128
    const prefix = len === undefined ? bits : Number(len)
    const size = 1n << BigInt(bits - prefix)
    const start = ((kind === 4 ? v4ToBigInt(addr) : v6ToBigInt(addr)) / size) * size
    if (kind === 4) {
      v4.push([start, start + size])
      continue
    }
    // proxy-addr matches IPv4 peers (and only them) against a mapped range of /96 or longer.
    if (prefix >= 96 && start >> 32n === 0xffffn) v4.push([start - V4_MAPPED_START, start - V4_MAPPED_START + size])
    else v6.push([start, start + size])
  }
  for (const [family, ranges, bits] of [['IPv4', v4, 32n], ['IPv6', v6, 128n]] as const) {
    const share = Number((unionSize(ranges) * 1_000_000n) >> bits) / 1_000_000
    if (share >= MAX_TRUSTED_SHARE) {
      return `the list trusts ${(share * 100).toFixed(share >= 0.999 ? 0 : 1)}% of all ${family} addresses, as good as TRUST_PROXY=true ` +
        '(refused): any client could choose the address it is throttled and audited under. List the proxies\' own networks'
    }
  }
  return undefined
}

/** How many addresses half-open ranges cover together, overlaps counted once. */
function unionSize (ranges: Array<[bigint, bigint]>): bigint {
  const sorted = [...ranges].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
  let total = 0n
  let end = -1n
  for (const [lo, hi] of sorted) {
    if (hi <= end) continue
    total += hi - (lo > end ? lo : end)
    end = hi
  }
  return total
}
