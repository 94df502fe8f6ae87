import { readFileSync } from 'node:fs'
import { ConfigError } from './types.ts'

/** Every variable the service reads: the single source for .env.example and the docs. */
export const ENV_VARIABLES: ReadonlyArray<{ name: string, default?: string, description: string }> = [
  { name: 'HOST', default: '0.0.0.0', description: 'Listen address' },
  { name: 'PORT', default: '8080', description: 'Listen port' },
  { name: 'REDIS_URL', default: 'redis://127.0.0.1:6379', description: 'Redis 6.2+: redis:// or rediss:// (TLS), optionally user:password@ and /db. With Sentinel only its scheme, credentials and db are used; with Cluster it is the first seed node' },
  { name: 'REDIS_USERNAME', description: 'Redis ACL user (AUTH username password); the password comes from REDIS_PASSWORD_FILE. Default: the `default` user' },
  { name: 'REDIS_PASSWORD_FILE', description: 'File holding the Redis password (requirepass or the ACL user\'s), e.g. a Docker secret; the URL then carries none' },
  { name: 'REDIS_PREFIX', default: 'ptb', description: 'Prefix of every Redis key and BullMQ queue, so deployments and test runs can share one Redis. With REDIS_CLUSTER=1 keys start with {prefix} (one hash slot)' },
  { name: 'REDIS_TLS_CA_FILE', description: 'PEM file of the CA(s) that signed the Redis (and Sentinel) server certificates; needs rediss://. Default: the system CAs' },
  { name: 'REDIS_TLS_CERT_FILE', description: 'PEM client certificate for mutual TLS (with REDIS_TLS_KEY_FILE)' },
  { name: 'REDIS_TLS_KEY_FILE', description: 'PEM private key of REDIS_TLS_CERT_FILE' },
  { name: 'REDIS_TLS_SERVERNAME', description: 'Name the server certificates must carry, when it differs from the address connected to (Sentinel and Cluster announce IP addresses)' },
  { name: 'REDIS_SENTINELS', description: 'Sentinel mode: comma-separated host:port of the Sentinels; the broker asks them for the primary of REDIS_SENTINEL_NAME and follows failovers' },
  { name: 'REDIS_SENTINEL_NAME', default: 'mymaster', description: 'Name of the monitored primary (sentinel monitor <name> …)' },
  { name: 'REDIS_SENTINEL_PASSWORD_FILE', description: 'File holding the Sentinels\' password (their requirepass), when they have one' },
  { name: 'REDIS_CLUSTER', default: '0', description: '1 = Redis Cluster: REDIS_URL (and REDIS_CLUSTER_NODES) are seed nodes; every key shares one hash slot' },
  { name: 'REDIS_CLUSTER_NODES', description: 'More Cluster seed nodes, comma-separated host:port, so the broker boots while one seed is down' },
  { name: 'REDIS_WAIT_REPLICAS', default: '0', description: 'Security audit events (and the writes before them) wait for this many replica acknowledgements (WAIT); 0 = do not wait' },
  { name: 'REDIS_WAIT_TIMEOUT', default: '100ms', description: 'Longest wait for REDIS_WAIT_REPLICAS (at most 250ms); a shortfall is served anyway, logged and counted (ptb_redis_unreplicated_writes_total)' },
  { name: 'BROKER_CONFIG', description: 'Path to a YAML or JSON file with `servers` and `clients`' },
  { name: 'PLEX_URL', description: 'Shortcut for one server named `default`: its URL (with one of the three below)' },
  { name: 'PLEX_TOKEN', description: 'Admin token of the PLEX_URL server' },
  { name: 'PLEX_TOKEN_FILE', description: 'File holding the admin token of the PLEX_URL server (watched for changes)' },
  { name: 'PLEX_PREFERENCES_PATH', description: 'PMS Preferences.xml whose PlexOnlineToken is the admin token (watched for changes)' },
  { name: 'PROXY_PORT', description: 'PMS proxy port of the only server (PLEX_URL\'s, or the config file\'s one server); with several servers give each its proxy.port in BROKER_CONFIG.' },
  { name: 'PROXY_KEY_REQUESTS_PER_MINUTE', default: '0', description: 'PMS proxy: requests per proxy key and minute, for clients without proxy.limits.requestsPerMinute; beyond it 429. 0: no limit (the default: tools differ by orders of magnitude)' },
  { name: 'PROXY_KEY_OPEN_STREAMS', default: '0', description: 'PMS proxy: long answers (media, event feeds, websockets) open at once per proxy key across instances, for clients without proxy.limits.openStreams; beyond it 429. 0: no limit (the default)' },
  { name: 'PROXY_CORS_ORIGINS', description: 'PMS proxy: browser origins (e.g. https://dash.example.com) allowed to call the proxy listeners, comma-separated, for servers without proxy.corsOrigins. Default: none' },
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
  { name: 'PLEX_TV_URL', default: 'https://plex.tv', description: 'plex.tv base URL (admin token checks, ptb login); off = never ask plex.tv (a simulated PMS)' },
  { name: 'METRICS_TOKEN', description: '/metrics requires Authorization: Bearer <it>. Required when HOST is not a loopback address (127.0.0.0/8, ::1, localhost)' },
  { name: 'METRICS_TOKEN_FILE', description: 'File holding METRICS_TOKEN (Docker/Kubernetes secrets)' },
  { name: 'LOG_LEVEL', default: 'info', description: 'pino level: fatal, error, warn, info, debug, trace, silent' },
  { name: 'BROKER_ROLE', default: 'all', description: 'api (HTTP only), worker (background jobs only) or all' },
  { name: 'AUDIT_RETENTION', default: '30d', description: 'Audit events older than this are trimmed' },
  { name: 'AUDIT_MAX_EVENTS', default: '1000000', description: 'Cap on the number of audit events kept' },
  { name: 'TRUST_PROXY', default: 'false', description: 'Reverse proxies whose X-Forwarded-For is believed: comma-separated addresses/CIDRs (or loopback, linklocal, uniquelocal); false = none. `true` and hop counts are refused' },
  { name: 'RATE_LIMIT_DEFAULT', default: '600/1m', description: 'Per-client request limit when the client sets none: <max>/<duration>' },
  { name: 'STREAM_MAX_PER_CLIENT', default: '16', description: 'Push channel (GET /v1/tokens/stream): open streams per client on one instance; beyond it 429' },
  { name: 'STREAM_MAX_TOTAL', default: '1000', description: 'Push channel: open streams on one instance, all clients together; beyond it 429' },
  { name: 'STREAM_HEARTBEAT_MS', default: '15000', description: 'Push channel: milliseconds between the `: ping` comments that keep proxies from closing an idle stream' },
]

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }

/** `48h`, `30m`, `15s`, `500ms`, `30d`, or combinations like `1h30m` → milliseconds. */
export function parseDuration (s: string): number {
  const text = s.trim()
  if (!/^(\d+(ms|s|m|h|d))+$/.test(text)) throw new Error(`"${s}" is not a duration (use e.g. 48h, 30m, 15s, 500ms)`)
  let total = 0
  // The pattern admits only UNITS' units; were one missing, NaN fails the check below.
  for (const [, count, unit = ''] of text.matchAll(/(\d+)(ms|s|m|h|d)/g)) total += Number(count) * (UNITS[unit] ?? Number.NaN)
  if (total <= 0 || !Number.isSafeInteger(total)) throw new Error(`"${s}" must be a positive duration`)
  return total
}

export interface ConfigIo {
  readFile?: (path: string) => string
}

/**
 * Reads the environment for the config steps, one variable at a time, and collects what is wrong
 * instead of stopping at the first problem: `loadConfig` reports every problem at once. Messages
 * name the variable (or file) and never carry a secret.
 */
export class Env {
  readonly problems: string[] = []
  readonly #vars: Record<string, string | undefined>
  readonly #read: (path: string) => string

  constructor (vars: Record<string, string | undefined>, io: ConfigIo = {}) {
    this.#vars = vars
    this.#read = io.readFile ?? ((p: string) => readFileSync(p, 'utf8'))
  }

  problem (message: string): void {
    this.problems.push(message)
  }

  /** The trimmed value, or undefined when unset or blank. */
  get (name: string): string | undefined {
    const v = this.#vars[name]
    return v === undefined || v.trim() === '' ? undefined : v.trim()
  }

  /** The value, or its default from ENV_VARIABLES. */
  dflt (name: string): string {
    return this.get(name) ?? ENV_VARIABLES.find((v) => v.name === name)?.default ?? ''
  }

  /** A duration in milliseconds (1 when invalid; the problem is recorded). */
  duration (name: string): number {
    try {
      return parseDuration(this.dflt(name))
    } catch (err) {
      this.problem(`${name}: ${(err as Error).message}`)
      return 1
    }
  }

  integer (name: string, min: number, max: number): number {
    const raw = this.dflt(name)
    const n = Number(raw)
    if (!/^\d+$/.test(raw) || n < min || n > max) this.problem(`${name}: must be an integer from ${min} to ${max}, got "${raw}"`)
    return n
  }

  /** The content of `path`, or undefined when it cannot be read (recorded under `label`). */
  readPath (label: string, path: string): string | undefined {
    try {
      return this.#read(path)
    } catch (err) {
      this.problem(`${label}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
      return undefined
    }
  }

  /**
   * A secret given as the variable `name` or as a file named by `fileName` (Docker/Kubernetes
   * secrets): the variable wins; the file's content is trimmed. With `emptyFile: 'problem'` an
   * empty file is reported as such; otherwise the caller judges the empty value.
   */
  secret (name: string | undefined, fileName: string, opts: { emptyFile?: 'problem' } = {}): string | undefined {
    const value = name === undefined ? undefined : this.get(name)
    if (value !== undefined) return value
    const path = this.get(fileName)
    if (path === undefined) return undefined
    const text = this.readPath(fileName, path)?.trim()
    if (text === '' && opts.emptyFile === 'problem') this.problem(`${fileName}: ${path} is empty`)
    return text
  }

  /** Throws one ConfigError listing every problem recorded, if any. */
  check (): void {
    if (this.problems.length > 0) throw new ConfigError(this.problems)
  }
}
