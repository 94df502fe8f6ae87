import type { ConnectionOptions as TlsOptions } from 'node:tls'
import { Cluster, Redis, SentinelConnector, type ClusterOptions, type RedisOptions } from 'ioredis'
import { StandaloneConnector } from 'ioredis/built/connectors/index.js'
import type { Logger } from 'pino'
import type { Config, HostPort } from './config/index.ts'
import { BrokerError, storeUnavailable } from './errors.ts'

/**
 * The connection roles of one instance (services.ts). A role added later (a stream reader…) gets
 * every setting below (TLS, ACL user, Sentinel or Cluster, reconnects, error logging) by being
 * created here; only the request-path and blocking behaviours depend on the role. `push`: the push
 * channel's reader (broker/push.ts), one blocking XREAD per instance, opened with the first stream.
 */
export type RedisRole = 'cache' | 'ratelimit' | 'queue' | 'worker' | 'audit' | 'push'

/**
 * One typed surface for every connection: a single Redis (standalone, or the primary Sentinel
 * names) or a Cluster. Both have the same commands, `defineCommand`, pipelines and MULTI; the
 * differences (where the command timeout lives, which node answers a key-less command such as
 * WAIT) are handled by the helpers below, so domain code never asks which one it has.
 */
export type RedisClient = Redis | Cluster

/** What the factory needs from the config (tests pass `{ redisUrl }` and override the rest). */
export type RedisTarget = Pick<Config, 'redisUrl'> &
  Partial<Pick<Config, 'redisPassword' | 'redisUsername' | 'redisTls' | 'redisSentinel' | 'redisCluster'>>

export type RedisMode = 'standalone' | 'sentinel' | 'cluster'

export function redisMode (t: RedisTarget): RedisMode {
  return t.redisCluster !== undefined ? 'cluster' : t.redisSentinel !== undefined ? 'sentinel' : 'standalone'
}

/** READONLY: the node we write to was demoted (a failover happened behind our back). */
const READONLY = /^READONLY\b/

/**
 * Options every connection shares: the address (standalone), the database, the ACL user and
 * password, and TLS with the server name checked. Credentials from REDIS_URL move into options,
 * so no URL handed to ioredis (and no error it logs) carries them.
 */
export function connectionOptions (t: RedisTarget): RedisOptions & { tls?: TlsOptions } {
  const url = new URL(t.redisUrl)
  const username = t.redisUsername ?? (url.username === '' ? undefined : decodeURIComponent(url.username))
  const password = t.redisPassword ?? (url.password === '' ? undefined : decodeURIComponent(url.password))
  const db = url.pathname.length > 1 ? Number(url.pathname.slice(1)) : 0
  const o: RedisOptions & { tls?: TlsOptions } = {
    host: url.hostname.replace(/^\[(.*)\]$/, '$1'),
    port: url.port === '' ? 6379 : Number(url.port),
    ...(db === 0 ? {} : { db }),
    ...(username === undefined ? {} : { username }),
    ...(password === undefined ? {} : { password }),
  }
  if (url.protocol === 'rediss:') {
    const tls: TlsOptions = {}
    const m = t.redisTls
    if (m?.ca !== undefined) tls.ca = m.ca
    if (m?.cert !== undefined) tls.cert = m.cert
    if (m?.key !== undefined) tls.key = m.key
    // Checked against this name instead of the address (Sentinel and Cluster hand out IPs).
    if (m?.servername !== undefined) tls.servername = m.servername
    o.tls = tls
  }
  return o
}

/** Cluster seed nodes: REDIS_URL's host first, then REDIS_CLUSTER_NODES. */
function clusterSeeds (t: RedisTarget, base: RedisOptions): HostPort[] {
  const first = { host: base.host ?? '127.0.0.1', port: base.port ?? 6379 }
  return [first, ...(t.redisCluster?.nodes ?? []).filter((n) => n.host !== first.host || n.port !== first.port)]
}

/**
 * ioredis listens for errors on a connection's socket with `once` (twice over: its connector and
 * the client). A socket that errs more often before it connects, as a TLS handshake the broker
 * refuses does (its own verdict, then the server's alert), would throw the next error as an
 * uncaught exception and crash the process. These connectors keep a listener on each socket for
 * its whole life; ioredis still gets the first error and the close that follows (and reconnects).
 */
/** ioredis types a connector's constructor as taking `unknown` options; these take what their base takes. */
type Connector = NonNullable<RedisOptions['Connector']>

function keepListening<T> (stream: T): T {
  (stream as { on: (event: string, fn: () => void) => void }).on('error', () => {})
  return stream
}

class GuardedStandalone extends StandaloneConnector {
  override async connect (...args: Parameters<StandaloneConnector['connect']>): ReturnType<StandaloneConnector['connect']> {
    return keepListening(await super.connect(...args))
  }
}

class GuardedSentinel extends SentinelConnector {
  override async connect (...args: Parameters<SentinelConnector['connect']>): ReturnType<SentinelConnector['connect']> {
    return keepListening(await super.connect(...args))
  }
}

/**
 * A Sentinel-mode connection whose failover detector (its own subscriptions to the Sentinels for
 * `+switch-master`) ends with it: ioredis closes those on `disconnect()` but not after `quit()`,
 * which BullMQ and `close()` use. BullMQ's duplicates (its blocking connections) are of this class too.
 */
class SentinelRedis extends Redis {
  constructor (options: RedisOptions) {
    super(options as RedisOptions & { replyMapping?: 'legacy' })
    // The connector's disconnect() (not this.disconnect(), which would also mark the client as
    // closed by hand and keep it from reconnecting should it be connected again) ends the detector.
    this.on('end', () => { (this as unknown as { connector: { disconnect: () => void } }).connector.disconnect() })
  }

  override duplicate (override?: Partial<RedisOptions>): Redis {
    return new SentinelRedis({ ...this.options, ...override })
  }
}

/** The last connection error of each client (readiness says why Redis is unreachable). */
const lastErrors = new WeakMap<object, { message: string, code?: string }>()

/**
 * One named connection per role. The request path fails fast: a command that does not answer
 * within a second is rejected, so a stalled Redis (or a failover) becomes a quick 503 instead of a
 * hang. BullMQ workers need `maxRetriesPerRequest: null` (they block on Redis by design).
 * Passwords are options, never part of a URL, so they reach no log line.
 *
 * Sentinel: ioredis asks the Sentinels for the primary on every (re)connect, checks the node's
 * role, and with `failoverDetector` drops the connection as soon as a Sentinel announces
 * `+switch-master`. Reconnects are retried every 50 ms doubling to 500 ms (2 s standalone), and a
 * READONLY reply (the node was demoted under us) reconnects and resends the command.
 * Cluster: the same node options for every node; keys share one hash slot (keys.ts), so scripts,
 * pipelines and MULTI stay on one node.
 */
export function createRedis (target: RedisTarget, role: RedisRole, logger: Logger, extra: RedisOptions = {}): RedisClient {
  // `audit`: security events and their WAIT (REDIS_WAIT_REPLICAS), on the request path too.
  const requestPath = role === 'cache' || role === 'ratelimit' || role === 'audit'
  const mode = redisMode(target)
  const base = connectionOptions(target)
  const retryCap = mode === 'standalone' ? 2000 : 500
  const retry = (times: number): number => Math.min(50 * 2 ** times, retryCap)
  const node: RedisOptions = {
    ...base,
    connectionName: `ptb-${role}`,
    maxRetriesPerRequest: role === 'worker' ? null : 1,
    // Rate limits fail open, so they must give up quickly: a stalled Redis costs a request at
    // most 250 ms per limit check before the token store's own deadline answers 503.
    // With auto-pipelining a command waits for the batch in flight on its connection before its
    // own batch is written (and this timer armed), so this alone bounds a call at twice the
    // timeout: the token store's hot call adds a CoarseDeadline of its own (below).
    commandTimeout: role === 'ratelimit' ? 250 : requestPath ? 1000 : undefined,
    connectTimeout: 2000,
    // A dropped connection is ended, then destroyed after this long: a primary that froze (no FIN,
    // no RST) would otherwise hold the reconnect to the promoted one back by ioredis's default 2 s.
    disconnectTimeout: 200,
    // Reconnect quickly but never spin.
    retryStrategy: retry,
    reconnectOnError: (err) => READONLY.test(err.message) ? 2 : false,
    Connector: (mode === 'sentinel' ? GuardedSentinel : GuardedStandalone) as Connector,
    ...extra,
  }
  let redis: RedisClient
  if (mode === 'cluster') {
    // Per-node reconnects are the Cluster's business (clusterRetryStrategy, slot refreshes).
    const { host: _h, port: _p, retryStrategy: _r, ...nodeOptions } = node
    const options: ClusterOptions = {
      redisOptions: nodeOptions,
      // Concurrent requests share one write per event-loop tick (+30% measured on the cache path).
      enableAutoPipelining: requestPath,
      clusterRetryStrategy: retry,
      // Keep the names as given (TLS checks them); nodes are then reached at the addresses they announce.
      dnsLookup: (address, callback) => callback(null, address),
      retryDelayOnFailover: 100,
      retryDelayOnClusterDown: 100,
      slotsRefreshTimeout: 2000,
    }
    redis = new Cluster(clusterSeeds(target, base), options)
  } else if (mode === 'sentinel') {
    const s = target.redisSentinel
    const { host: _h, port: _p, ...nodeOptions } = node
    redis = new SentinelRedis({
      ...nodeOptions,
      enableAutoPipelining: requestPath,
      sentinels: s?.sentinels.map((x) => ({ host: x.host, port: x.port })),
      name: s?.name,
      ...(s?.password === undefined ? {} : { sentinelPassword: s.password }),
      // rediss://: TLS to the primary and to the Sentinels, with the same CA and server name.
      ...(base.tls === undefined ? {} : { enableTLSForSentinelMode: true, sentinelTLS: base.tls }),
      sentinelRetryStrategy: retry,
      sentinelCommandTimeout: 500,
      failoverDetector: true,
    })
  } else {
    redis = new Redis({ ...node, enableAutoPipelining: requestPath })
  }
  let lastLog = 0
  const onError = (err: Error): void => {
    lastErrors.set(redis, { message: err.message, code: (err as { code?: string }).code })
    // A down Redis errors on every reconnect attempt; one line per 10 s is enough.
    const now = Date.now()
    if (now - lastLog > 10_000) {
      lastLog = now
      logger.warn({ role, mode, err: { message: err.message, code: (err as { code?: string }).code } }, 'redis connection error')
    }
  }
  redis.on('error', onError)
  if (redis instanceof Cluster) redis.on('node error', onError)
  else redis.on('ready', () => lastErrors.delete(redis))
  return redis
}

/**
 * The commands the broker needs, as a Redis ACL rule (README, *Redis ACL user*): its own Lua
 * scripts and BullMQ's (the commands a script runs are checked against the user too), MULTI,
 * BullMQ's blocking pop, WAIT, and INFO (ioredis's ready check, BullMQ's version check), ROLE
 * (/readyz) and CLUSTER INFO/SLOTS (Cluster mode). Nothing `@dangerous` (FLUSHALL, KEYS, CONFIG,
 * DEBUG, CLIENT KILL…), no FUNCTION, no pub/sub, and only the deployment's keys.
 */
export const ACL_COMMANDS = '-@all +@read +@write +@connection +@transaction +@blocking -@dangerous -function ' +
  '+eval +evalsha +script|load +script|exists +info +role +cluster|info +cluster|slots'

/**
 * The ACL rule of the broker's user for REDIS_PREFIX `prefix` (`{prefix}` in Cluster mode), in
 * redis.conf / ACL file syntax. `password` is a placeholder to replace (or use `#<sha256 hex>`).
 */
export function aclRule (prefix: string, opts: { user?: string, password?: string, cluster?: boolean } = {}): string {
  const root = opts.cluster === true ? `{${prefix}}` : prefix
  return `user ${opts.user ?? 'ptb'} on >${opts.password ?? 'CHANGE-ME'} resetkeys ~${root}:* resetchannels ${ACL_COMMANDS}`
}

/** The command timeout of the connection (request path), wherever the client keeps it. */
export function commandTimeoutOf (redis: RedisClient): number | undefined {
  return redis instanceof Cluster ? redis.options.redisOptions?.commandTimeout : redis.options.commandTimeout
}

/**
 * Why a connection fails, in words for /readyz and logs, with the variable to look at. Never a
 * secret: Redis and TLS error messages name users and certificates, not passwords.
 */
export function connectionProblem (redis: RedisClient): string | undefined {
  const e = lastErrors.get(redis)
  if (e === undefined) return undefined
  const text = `${e.code === undefined || e.message.includes(e.code) ? '' : `${e.code}: `}${e.message}`.slice(0, 300)
  if (/CERT|SELF_SIGNED|UNABLE_TO_VERIFY|TLS|SSL|altnames/i.test(`${e.code ?? ''} ${e.message}`)) {
    return `TLS handshake failed (${text}); check REDIS_TLS_CA_FILE, REDIS_TLS_SERVERNAME and the server certificate`
  }
  if (/WRONGPASS|NOAUTH|invalid password|invalid username/i.test(e.message)) return `authentication failed (${text}); check REDIS_USERNAME and REDIS_PASSWORD_FILE`
  if (/NOPERM/.test(e.message)) return `the ACL user may not run a command the broker needs (${text}); see the ACL rule in the README`
  return text
}

/**
 * WAIT for `replicas` acknowledgements of the writes this connection made so far, on the node that
 * holds `key` (a Cluster sends key-less commands to any node, so it is addressed by slot).
 * Returns how many replicas acknowledged within `timeoutMs`.
 */
export async function waitForReplicas (redis: RedisClient, key: string, replicas: number, timeoutMs: number): Promise<number> {
  if (!(redis instanceof Cluster)) return await redis.wait(replicas, timeoutMs)
  const owner = redis.slots[keySlot(key)]?.[0]
  const node = redis.nodes('master').find((n) => `${n.options.host}:${n.options.port}` === owner)
  if (node === undefined) return 0
  return await node.wait(replicas, timeoutMs)
}

/** What /readyz says about Redis: the mode, the role of the node the broker writes to, its replicas. */
export interface RedisView {
  mode: RedisMode
  /** `primary` when the broker's writes land on a primary. */
  role: string
  /** host:port of that node, when known. */
  address?: string
  /** Replicas the primary reports connected (what REDIS_WAIT_REPLICAS can count on). */
  replicas?: number
}

/**
 * Inspects the request-path connection (`key`: any key of the deployment, for the Cluster slot):
 * `{ view }` when the broker talks to a primary, `{ problem }`
 * otherwise — unreachable (with the connection's last error), a read-only replica, or a Sentinel
 * failover in progress (the Sentinels are asked what they see).
 */
export async function inspectRedis (redis: RedisClient, target: RedisTarget, key: string,
  call: <T>(fn: () => Promise<T>) => Promise<T>): Promise<{ view?: RedisView, problem?: string }> {
  const mode = redisMode(target)
  try {
    if (redis instanceof Cluster) {
      const info = await call(() => redis.cluster('INFO')) as string
      const state = /cluster_state:(\w+)/.exec(info)?.[1] ?? 'unknown'
      if (state !== 'ok') return { problem: `cluster state ${state}` }
      // The node serving the deployment's slot (`key` is one of its keys).
      const address = redis.slots[keySlot(key)]?.[0]
      return { view: { mode, role: 'primary', ...(address === undefined ? {} : { address }) } }
    }
    const role = await call(() => redis.role()) as unknown[]
    const address = redis.stream?.remoteAddress === undefined ? undefined : `${redis.stream.remoteAddress}:${redis.stream.remotePort ?? ''}`
    if (role[0] === 'master') {
      return { view: { mode, role: 'primary', ...(address === undefined ? {} : { address }), replicas: Array.isArray(role[2]) ? role[2].length : 0 } }
    }
    const of = role[0] === 'slave' ? ` of ${String(role[1])}:${String(role[2])}` : ''
    if (mode === 'sentinel') return { problem: `failover in progress: connected to a read-only replica${of}; reconnecting to the primary the Sentinels name` }
    return { problem: `read-only replica${of}: writes fail until REDIS_URL names the primary` }
  } catch {
    const why = connectionProblem(redis) ?? (redis.status === 'ready' ? 'no answer in time' : `connection ${redis.status}`)
    if (mode !== 'sentinel') return { problem: `unreachable: ${why}` }
    const seen = await sentinelView(target)
    if (seen === undefined) return { problem: `unreachable: no Sentinel answers (REDIS_SENTINELS); ${why}` }
    if (/s_down|o_down|failover/.test(seen.flags)) {
      return { problem: `failover in progress: the Sentinels see primary ${seen.address} as ${seen.flags}` }
    }
    return { problem: `unreachable: ${why} (the Sentinels name ${seen.address} as primary, flags ${seen.flags})` }
  }
}

/** What the first Sentinel that answers says about the primary: its address and flags (s_down, o_down, failover_in_progress). */
export async function sentinelView (target: RedisTarget): Promise<{ address: string, flags: string } | undefined> {
  const s = target.redisSentinel
  if (s === undefined) return undefined
  const tls = connectionOptions(target).tls
  for (const addr of s.sentinels) {
    const conn = new Redis({
      host: addr.host,
      port: addr.port,
      ...(s.password === undefined ? {} : { password: s.password }),
      ...(tls === undefined ? {} : { tls }),
      lazyConnect: true,
      connectTimeout: 500,
      commandTimeout: 500,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
      enableReadyCheck: false,
      enableOfflineQueue: false,
      Connector: GuardedStandalone as Connector,
    })
    conn.on('error', () => {})
    try {
      await conn.connect()
      const flat = await conn.call('SENTINEL', 'MASTER', s.name) as string[]
      const f = new Map<string, string>()
      for (let i = 0; i + 1 < flat.length; i += 2) {
        const name = flat[i]
        const value = flat[i + 1]
        if (name !== undefined && value !== undefined) f.set(name, value)
      }
      return { address: `${f.get('ip') ?? '?'}:${f.get('port') ?? '?'}`, flags: f.get('flags') ?? '' }
    } catch {
      // The next Sentinel.
    } finally {
      conn.disconnect()
    }
  }
  return undefined
}

/** The hash slot of a key (CRC16/XMODEM of its hash tag, mod 16384), as Redis Cluster computes it. */
export function keySlot (key: string): number {
  let k = Buffer.from(key)
  const open = k.indexOf('{')
  if (open !== -1) {
    const close = k.indexOf('}', open + 1)
    if (close > open + 1) k = k.subarray(open + 1, close)
  }
  let crc = 0
  for (const byte of k) {
    crc ^= byte << 8
    for (let i = 0; i < 8; i++) crc = (crc & 0x8000) !== 0 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff
  }
  return crc % 16384
}

/**
 * Runs one Redis call with a hard deadline; any failure becomes STORE_UNAVAILABLE (503). The
 * request path goes through this so a stalled Redis is a quick answer, never a hang.
 */
export async function withDeadline<T> (fn: () => Promise<T>, timeoutMs: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const deadline = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error('redis call timed out')), timeoutMs)
  })
  try {
    return await Promise.race([fn(), deadline])
  } catch (err) {
    throw err instanceof BrokerError ? err : storeUnavailable(err)
  } finally {
    clearTimeout(timer)
  }
}
/**
 * A deadline for the hottest call without a timer per call: pending calls sit in a set that one
 * coarse timer sweeps every `resolutionMs`, so a call fails with STORE_UNAVAILABLE at most
 * `timeoutMs + resolutionMs` after it started, wherever it waits (an ioredis command queued behind
 * an auto-pipelined batch in flight has not armed its own commandTimeout yet). A timer per call
 * cost 1.5 % of the cache-hit profile (docs/benchmarks.md); this costs a Set insert and delete.
 */
export class CoarseDeadline {
  readonly #pending = new Set<{ at: number, reject: (err: Error) => void }>()
  #timer: NodeJS.Timeout | undefined

  readonly timeoutMs: number
  readonly resolutionMs: number

  constructor (timeoutMs: number, resolutionMs = 50) {
    this.timeoutMs = timeoutMs
    this.resolutionMs = resolutionMs
  }

  async run<T> (fn: () => Promise<T>): Promise<T> {
    let entry!: { at: number, reject: (err: Error) => void }
    const deadline = new Promise<never>((_resolve, reject) => { entry = { at: Date.now() + this.timeoutMs, reject } })
    this.#pending.add(entry)
    this.#timer ??= setInterval(() => { this.#sweep() }, this.resolutionMs).unref()
    try {
      return await Promise.race([fn(), deadline])
    } catch (err) {
      throw err instanceof BrokerError ? err : storeUnavailable(err)
    } finally {
      this.#pending.delete(entry)
    }
  }

  #sweep (): void {
    const now = Date.now()
    for (const e of this.#pending) {
      if (e.at <= now) {
        this.#pending.delete(e)
        e.reject(new Error('redis call timed out'))
      }
    }
    if (this.#pending.size === 0 && this.#timer !== undefined) {
      clearInterval(this.#timer)
      this.#timer = undefined
    }
  }
}
