import type { ProxyKeyLimits, ProxyPolicy } from '../proxy/rules.ts'

/** The validated configuration's types, and the error that lists what is wrong with it. */

export const SCOPES = ['token:issue', 'token:revoke', 'audit:read', 'server:read', 'server:rotate', 'source:connect', 'proxy-key:manage'] as const
export type Scope = typeof SCOPES[number]

export type Role = 'api' | 'worker' | 'all'

export interface RateLimitConfig {
  /** Requests allowed per window. */
  max: number
  timeWindowMs: number
}

export interface ServerConfig {
  /** Unique name matching NAME_PATTERN (`names.ts`), so it can sit in Redis keys and job ids. */
  name: string
  /** Base URL of the PMS, no trailing slash, e.g. `http://127.0.0.1:32400`. */
  url: string
  /** The admin token (read from `token`, `tokenFile` or `preferencesPath`). Never logged. */
  adminToken: string
  /** Where the admin token came from, for /v1/servers and log lines (never the value). */
  tokenSource: 'token' | 'tokenFile' | 'preferencesPath'
  /** The file the token was read from (tokenFile, preferencesPath), watched for changes. */
  tokenPath?: string
  /**
   * The PMS proxy's listener for this server (`proxy.port`, or PROXY_PORT for a single server);
   * `corsOrigins`: the browser origins it answers (else PROXY_CORS_ORIGINS).
   */
  proxy?: { port: number, corsOrigins?: readonly string[] }
}

export interface ClientConfig {
  /** Matches NAME_PATTERN (`names.ts`). */
  id: string
  /** SHA-256 of the client's bearer secret (32 bytes). */
  secretSha256: Buffer
  /** Server names the client may ask for; `'*'` means all. */
  servers: string[] | '*'
  scopes: Scope[]
  rateLimit: RateLimitConfig
  /** Sources (`server://…`, `provider://…`) the client may ask connection details for; `'*'` means all. */
  sources: string[] | '*'
  /** What the client's proxy keys may reach on PMS (docs/proxy.md); absent: its keys reach nothing. */
  proxy?: ProxyPolicy
}

export interface HostPort {
  host: string
  port: number
}

export interface RedisTlsConfig {
  /** REDIS_TLS_CA_FILE's content (PEM). */
  ca?: string
  /** REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE's contents (mutual TLS). */
  cert?: string
  key?: string
  /** REDIS_TLS_SERVERNAME: the name checked in the server certificate instead of the address. */
  servername?: string
}

export interface RedisSentinelConfig {
  sentinels: HostPort[]
  /** REDIS_SENTINEL_NAME. */
  name: string
  /** REDIS_SENTINEL_PASSWORD_FILE's content. Never logged. */
  password?: string
}

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent'

export interface Config {
  host: string
  port: number
  redisUrl: string
  /** REDIS_PASSWORD_FILE's content (Redis `requirepass`); kept out of the URL so it is never logged with it. */
  redisPassword?: string
  /** REDIS_USERNAME: the ACL user (the URL's user works too). */
  redisUsername?: string
  redisPrefix: string
  /** TLS material (REDIS_TLS_*); present only with rediss:// and a file or server name given. */
  redisTls?: RedisTlsConfig
  /** Sentinel mode (REDIS_SENTINELS): the broker asks these for the current primary. */
  redisSentinel?: RedisSentinelConfig
  /** Cluster mode (REDIS_CLUSTER=1): more seed nodes besides REDIS_URL's host. */
  redisCluster?: { nodes: HostPort[] }
  /** REDIS_WAIT_REPLICAS: replica acknowledgements awaited after a security audit event (0 = none). */
  redisWaitReplicas: number
  /** REDIS_WAIT_TIMEOUT. */
  redisWaitTimeoutMs: number
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
  logLevel: LogLevel
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
  /** plex.tv base URL, for admin token checks (PLEX_TV_URL); absent when PLEX_TV_URL=off. */
  plexTvUrl?: string
  /** PROXY_KEY_REQUESTS_PER_MINUTE and PROXY_KEY_OPEN_STREAMS: per-key limits of clients whose `proxy.limits` leave them out. */
  proxyKeyLimits: ProxyKeyLimits
  /** PROXY_CORS_ORIGINS: browser origins allowed on proxy listeners without `proxy.corsOrigins` of their own. */
  proxyCorsOrigins: readonly string[]
  /** STREAM_MAX_PER_CLIENT: open push streams per client on this instance (429 beyond). */
  streamMaxPerClient: number
  /** STREAM_MAX_TOTAL: open push streams on this instance (429 beyond). */
  streamMaxTotal: number
  /** STREAM_HEARTBEAT_MS: interval of the `: ping` comment on every push stream. */
  streamHeartbeatMs: number
  /**
   * BROKER_CONFIG, when it holds admin tokens (`token:` entries) and its mode lets the group or
   * others read it: warned about at boot (path and mode only).
   */
  exposedConfigFile?: { path: string, mode: string }
}

export class ConfigError extends Error {
  override name = 'ConfigError'
  readonly problems: string[]
  constructor (problems: string[]) {
    super(problems.join('\n'))
    this.problems = problems
  }
}
