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
  redisPrefix: string
  /** Key material (≥ 32 bytes) from which the encryption and fingerprint keys are derived. */
  brokerSecret: Buffer
  tokenLifetimeMs: number
  tokenRenewAfterMs: number
  probeIntervalMs: number
  metricsToken: string | undefined
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent'
  role: Role
  auditRetentionMs: number
  auditMaxEvents: number
  /** Timeout of one PMS call. */
  plexTimeoutMs: number
  /** Concurrent PMS calls per server, per broker process. */
  plexConcurrency: number
  /** `trustProxy` for Fastify: whether X-Forwarded-For sets the client IP. */
  trustProxy: boolean | string
  defaultRateLimit: RateLimitConfig
  servers: ServerConfig[]
  clients: ClientConfig[]
}

export class ConfigError extends Error {
  override name = 'ConfigError'
}
