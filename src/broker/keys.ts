import { type RedisClient, withDeadline } from '../redis.ts'

/** The limits counted in Redis windows (broker/rate-limiter.ts names them all). */
export type CountedLimit = 'client' | 'auth_failures' | 'not_found' | 'proxy_key_failures' | 'proxy_key_requests'

/** The limits counted as leases in Redis (broker/stream-leases.ts): concurrent things open. */
export type LeasedLimit = 'proxy_key_streams'

/** Key segments of the counted limits (the keys predate the names). */
const RATE_LIMIT_SEGMENT: Record<CountedLimit | LeasedLimit, string> = {
  client: 'client',
  auth_failures: 'authfail',
  not_found: 'notfound',
  proxy_key_failures: 'proxyauthfail',
  proxy_key_requests: 'proxykey',
  proxy_key_streams: 'proxystreams',
}

/**
 * Every Redis key the broker uses is built here, under REDIS_PREFIX, so deployments and test
 * runs can share one Redis. Client ids and server names are validated by config to contain no
 * `:`, so a key can always be split back into its parts. BullMQ queues live under `<prefix>:q`
 * (BullMQ's own `prefix` option; ioredis `keyPrefix` is never used, BullMQ forbids it).
 *
 * Redis Cluster (`hashTag`): every key starts with `{<prefix>}`, BullMQ's documented form for
 * Cluster, so all keys of a deployment hash to one slot. The Lua scripts (which build record and
 * pointer keys from the prefixes passed as ARGV), pipelines, MULTI and BullMQ's scripts then stay
 * on one node. One slot per deployment: Cluster gives failover and managed-service compatibility,
 * not sharding (README, *Redis Cluster*).
 */
export interface Keys {
  /** REDIS_PREFIX as given (without the Cluster hash tag). */
  prefix: string
  /** Hash of one token record: state, enc, fp, issuedAt, expiresAt, renewAt, lastUsedAt, client, server, mid. */
  token: (tokenId: string) => string
  /** The string prefix of token keys, for Lua scripts that address records by id. */
  tokenPrefix: string
  /** String: tokenId currently served for (client, server). */
  current: (client: string, server: string) => string
  /** The string prefix of `current` keys (`<currentPrefix><client>:<server>`), for Lua scripts. */
  currentPrefix: string
  /** Single-flight mint lock for (client, server). */
  mintLock: (client: string, server: string) => string
  /** ZSET client → last time it asked for a token of this server (ms); "active" clients. */
  active: (server: string) => string
  /** ZSETs tokenId → expiresAt, for revocation selectors and listing. */
  byClient: (client: string) => string
  byServer: (server: string) => string
  allTokens: string
  /**
   * Stream: the security audit trail (mints, rotations, revocations, invalidations, admin-token
   * changes, server events). Trimmed by AUDIT_RETENTION only (AUDIT_MAX_EVENTS as a last resort).
   */
  audit: string
  /** Stream: cache serves (`token.issue` from cache). Capped at AUDIT_MAX_EVENTS so load cannot push security events out. */
  auditServes: string
  /**
   * Stream: refused requests (`auth.denied`: failed authentications and 403s), coalesced per
   * client or address and window (broker/refusal-trail.ts). Capped at AUDIT_MAX_EVENTS on its own,
   * so a flood of refusals cannot push a revocation or a mint out of the security stream.
   */
  auditRefusals: string
  /**
   * Stream: the push channel's change log (push.ts): one entry per new current client token, per
   * retired current client token and per server up/down change. Ids only, never a token or its
   * ciphertext. Capped (XADD MAXLEN ~ PUSH_MAXLEN); every instance reads it for its own streams.
   */
  push: string
  /** String: token fingerprint → `tokenId|client|server|issuedAt`, kept for AUDIT_RETENTION (trace). */
  fingerprint: (fp: string) => string
  /** Hash: probed state of a PMS server. */
  server: (server: string) => string
  /**
   * Rate lock of the admin-token recheck of a server (SET NX PX <current backoff interval>): held
   * by whichever instance asked PMS last, so the fleet asks at most once per interval.
   */
  adminRecheck: (server: string) => string
  /** Lock: probes of one server never overlap across instances. */
  probeLock: (server: string) => string
  /**
   * The counter of one named limit (broker/rate-limiter.ts) for one subject: `rl:client:<id>`,
   * `rl:authfail:<address>`, `rl:notfound:<address>`, `rl:proxykey:<key id>`; and the sorted set
   * of a leased limit, `rl:proxystreams:<key id>` (member → lease expiry, ms). The serve script
   * counts the key it is handed, so this is the only place a counter key is spelled.
   */
  rateLimit: (limit: CountedLimit | LeasedLimit, subject: string) => string
  /** String written by /readyz to prove Redis accepts writes (expires after a minute). */
  readiness: string
  /** Lock key used to make scheduler setup safe when several instances boot at once. */
  schedulerLock: string
  /** BullMQ prefix. */
  queuePrefix: string
  /**
   * Hash: one proxy key (src/proxy/proxy-keys.ts): client, server, label, digest (SHA-256 of its
   * secret, never the secret), createdAt, expiresAt, revokedAt.
   */
  proxyKey: (id: string) => string
  /** ZSET proxy key id → createdAt: every proxy key, for listing. */
  proxyKeys: string
  /** ZSET proxy key id → createdAt: the proxy keys of one client. */
  proxyKeysByClient: (client: string) => string
}

export function createKeys (prefix: string, opts: { hashTag?: boolean } = {}): Keys {
  const p = opts.hashTag === true ? `{${prefix}}:` : `${prefix}:`
  return {
    prefix,
    token: (id) => `${p}tok:${id}`,
    tokenPrefix: `${p}tok:`,
    current: (c, s) => `${p}cur:${c}:${s}`,
    currentPrefix: `${p}cur:`,
    mintLock: (c, s) => `${p}lock:mint:${c}:${s}`,
    active: (s) => `${p}active:${s}`,
    byClient: (c) => `${p}idx:client:${c}`,
    byServer: (s) => `${p}idx:server:${s}`,
    allTokens: `${p}idx:all`,
    audit: `${p}audit`,
    auditServes: `${p}audit:serves`,
    auditRefusals: `${p}audit:refusals`,
    push: `${p}push`,
    fingerprint: (fp) => `${p}fp:${fp}`,
    server: (s) => `${p}srv:${s}`,
    adminRecheck: (s) => `${p}lock:admin-recheck:${s}`,
    probeLock: (s) => `${p}lock:probe:${s}`,
    readiness: `${p}readyz`,
    rateLimit: (limit, subject) => `${p}rl:${RATE_LIMIT_SEGMENT[limit]}:${subject}`,
    schedulerLock: `${p}lock:schedulers`,
    queuePrefix: `${p}q`,
    proxyKey: (id) => `${p}pkey:${id}`,
    proxyKeys: `${p}pkeys`,
    proxyKeysByClient: (c) => `${p}pkeys:client:${c}`,
  }
}

/**
 * What a class needs to talk to Redis: the connection, the key builder, the deadline wrapper
 * (redis.ts withDeadline) and the clock. Domain classes receive this instead of reaching through
 * the token store.
 */
export interface RedisContext {
  redis: RedisClient
  keys: Keys
  call: <T>(fn: () => Promise<T>) => Promise<T>
  now: () => number
}

/**
 * Upper bound of one store call: a Redis stall turns into STORE_UNAVAILABLE instead of a hang. With
 * the two rate-limit checks (250 ms each at most), a stalled Redis still gets a 503 within 2 s.
 */
export const STORE_TIMEOUT_MS = 1000

/** A RedisContext whose `call` is `withDeadline` (redis.ts) with `timeoutMs`. */
export function redisContext (redis: RedisClient, keys: Keys, now: () => number, timeoutMs = STORE_TIMEOUT_MS): RedisContext {
  return { redis, keys, now, call: async (fn) => await withDeadline(fn, timeoutMs) }
}
