import { normalizeIP } from '@fastify/rate-limit'
import type { Logger } from 'pino'
import type { IssueResult } from '../broker/issuer.ts'
import type { LimitName, Meter, RateLimiter } from '../broker/rate-limiter.ts'
import type { ClientConfig, ServerConfig } from '../config/index.ts'
import { canUseServer } from '../broker/policy.ts'
import type { AuditSampler } from './audit-sampler.ts'
import { canonicalPath, splitTarget } from './canonical-path.ts'
import { urlHostAllowed } from './presets.ts'
import { SESSION_CREDENTIAL_PREFIX, type SessionCredentials } from './media-urls.ts'
import type { ProxyMetrics } from './proxy-metrics.ts'
import { PROXY_KEY_PREFIX, type ProxyKeyCheck, type ProxyKeys } from './proxy-keys.ts'
import { extractCredential, queryKeys } from './request-rewrite.ts'
import { type Decision, evaluate, type ProxyPolicy, stripLogFilter } from './rules.ts'
import { poolFor } from '../plex/upstream.ts'

/**
 * The proxy's decision for one request, HTTP or websocket upgrade alike (docs/proxy.md, *How a
 * request is handled*): which server, the caller's credential, the key's client, the canonical
 * path and the client's rules. Nothing here forwards anything: a refusal never reaches PMS.
 */

export interface Admitted {
  ok: true
  server: ServerConfig
  /** `/pms/<server>` when the request came that way, else ''. */
  prefix: string
  client: ClientConfig
  policy: ProxyPolicy
  keyId: string
  /** The canonical path PMS receives (re-encoded by the caller). */
  path: string
  /** The query PMS receives: credentials removed, nested URLs made relative, `log` filters removed. */
  query: string
  decision: Decision
  /** Shadow mode let through a request its rules refuse. */
  shadowed: boolean
}

export interface Refused {
  ok: false
  status: number
  code: string
  message: string
  /** For the metric's `decision` label. */
  decision: 'unauthenticated' | 'deny' | 'bad_request' | 'not_found' | 'throttled'
  retryAfter?: number
  client?: string
  server?: string
}

export interface GateOptions {
  /** The server whose PMS paths this listener mirrors at its root. */
  server: ServerConfig
  /** Every configured server by name (`/pms/<server>/…`). */
  servers: ReadonlyMap<string, ServerConfig>
  clients: readonly ClientConfig[]
  keys: ProxyKeys
  sessions: SessionCredentials
  /**
   * The broker's limiter: failed keys count against `proxy_key_failures` per address, admitted
   * requests against their key's `proxy_key_requests` and `proxy_key_streams`.
   */
  limiter: RateLimiter
  metrics: ProxyMetrics
  sampler: AuditSampler
  logger: Logger
  /** Failed credentials answered 401 per address and window; further failures get 429. */
  authFailures?: { max: number, timeWindowMs: number }
}

export interface RequestInfo {
  method: string
  /** The request target as sent (`/path?query`). */
  url: string
  header: string | string[] | undefined
  /** The caller's address (validated: request-identity.ts). */
  ip: string
}

const PMS_PREFIX = /^\/pms\/([^/?#]+)(?=\/|$)/

/**
 * Whether an answer counts against the key's open streams (`proxy.limits.openStreams`): what the
 * media pool serves (parts, transcodes, downloads, the event feed) but the photo transcoder,
 * whose images are short answers fetched dozens at a time by dashboards. Websockets count too.
 */
export function isLongAnswer (path: string): boolean {
  return poolFor(path) === 'media' && path !== '/photo/:/transcode'
}

/** What `ProxyGate.issue` gives an admitted request: its token, and what to call when its answer ends. */
export interface Issued {
  ok: true
  issued: IssueResult
  /** Gives back the request's open-stream lease, if it took one (idempotent). */
  release: () => void
}

/** A 429 at a per-key limit asks the caller to wait this long when the limit has no window (open streams). */
const STREAMS_RETRY_AFTER_S = 5

export class ProxyGate {
  readonly #o: GateOptions
  readonly #clients: Map<string, ClientConfig>

  constructor (opts: GateOptions) {
    this.#o = opts
    this.#clients = new Map(opts.clients.map((c) => [c.id, c]))
  }

  async admit (req: RequestInfo): Promise<Admitted | Refused> {
    const { path: rawPath, query: rawQuery } = splitTarget(req.url)
    let server = this.#o.server
    let prefix = ''
    let pmsPath = rawPath
    const m = PMS_PREFIX.exec(rawPath)
    if (m !== null) {
      const named = this.#o.servers.get(decodeURIComponent(m[1] ?? ''))
      if (named === undefined) return { ok: false, status: 404, code: 'NOT_FOUND', message: 'No PMS server with this name.', decision: 'not_found' }
      server = named
      prefix = m[0]
      pmsPath = rawPath.slice(m[0].length) || '/'
    }
    const isPms = (u: URL): boolean => {
      try {
        return u.origin === new URL(server.url).origin
      } catch {
        return false
      }
    }
    let cred = extractCredential(req.header, rawQuery, isPms)
    if (!cred.ok && cred.reason === 'conflicting-credentials') return await this.#refuseCredential(req, 'conflicting', server)
    if (!cred.ok && cred.reason === 'bad-encoding') return { ok: false, status: 400, code: 'BAD_REQUEST', message: cred.message, decision: 'bad_request' }
    const credential = cred.ok ? cred.credential : extractCredentialOnly(req.header, rawQuery)
    const canonical = canonicalPath(pmsPath)

    let check: ProxyKeyCheck
    if (credential === undefined || credential === '') {
      return await this.#refuseCredential(req, 'missing', server)
    } else if (credential.startsWith(PROXY_KEY_PREFIX)) {
      check = await this.#o.keys.verify(credential, { server: server.name })
    } else if (credential.startsWith(SESSION_CREDENTIAL_PREFIX) && canonical.ok) {
      const keyId = this.#o.sessions.verify(credential, server.name, canonical.path)
      check = keyId === undefined ? { ok: false, reason: 'mismatch' } : await this.#o.keys.check(keyId, { server: server.name })
    } else {
      // A PMS or plex.tv token, or anything else: never passed on.
      return await this.#refuseCredential(req, 'not-a-proxy-key', server)
    }
    if (!check.ok) return await this.#refuseCredential(req, check.reason, server)
    const record = check.record
    const client = this.#clients.get(record.client)
    // A client removed from the configuration takes its keys with it; a client without a proxy
    // section has no proxy access; a client not allowed this server cannot reach it by proxy either.
    if (client === undefined) return await this.#refuseCredential(req, 'client-gone', server)
    if (client.proxy === undefined) return await this.#refuseCredential(req, 'no-proxy-access', server, client.id)
    if (!canUseServer(client, server.name)) return await this.#refuseCredential(req, 'wrong-server', server, client.id)

    if (!canonical.ok) {
      return { ok: false, status: 400, code: 'BAD_REQUEST', message: canonical.message, decision: 'bad_request', client: client.id, server: server.name }
    }
    const path = canonical.path
    const policy = client.proxy
    if (!cred.ok && cred.reason === 'foreign-url' && policy.allowUrlHosts.length > 0) {
      // The client may name some hosts (`allowUrlHosts`): read the query again with its list.
      cred = extractCredential(req.header, rawQuery, isPms, (u) => urlHostAllowed(policy.allowUrlHosts, u.hostname))
      if (!cred.ok && cred.reason === 'conflicting-credentials') return await this.#refuseCredential(req, 'conflicting', server, client.id)
      if (!cred.ok && cred.reason === 'bad-encoding') return { ok: false, status: 400, code: 'BAD_REQUEST', message: cred.message, decision: 'bad_request', client: client.id, server: server.name }
    }
    if (!cred.ok) {
      // A nested url= on another host: refused whatever the rules and the mode (PMS would fetch it).
      this.#sample('proxy.denied', record.id, client.id, server.name, req.method, path, 'foreign-url')
      return { ok: false, status: 403, code: 'FORBIDDEN', message: cred.message, decision: 'deny', client: client.id, server: server.name }
    }
    let decision = evaluate(policy, { method: req.method, path, queryKeys: queryKeys(cred.query) })
    // A nested URL is a path PMS fetches for the caller: the rules must allow a GET of it too.
    // (An absolute one is on a host of the client's `allowUrlHosts`: not a PMS path.)
    for (const nested of cred.nestedUrls) {
      if (!decision.allow) break
      if (!nested.startsWith('/')) continue
      const n = canonicalPath(splitTarget(nested).path)
      const d = n.ok ? evaluate(policy, { method: 'GET', path: n.path }) : { allow: false, reason: 'default-deny' as const }
      if (!d.allow) decision = { ...d, rule: `nested url: ${d.rule ?? d.reason}` }
    }
    let shadowed = false
    if (!decision.allow) {
      // Shadow mode never lifts the hard deny: diagnostics zips, the log and the updater would
      // pass otherwise, and what a tool needs there is named by a rule, not learnt from traffic.
      if (policy.mode === 'shadow' && decision.reason !== 'hard-deny') {
        shadowed = true
        this.#o.logger.info({ client: client.id, server: server.name, keyId: record.id, method: req.method, path, reason: decision.reason, rule: decision.rule },
          'proxy shadow mode: forwarded a request the rules refuse')
        this.#sample('proxy.shadow', record.id, client.id, server.name, req.method, path, decision.reason, decision.rule)
      } else {
        this.#sample('proxy.denied', record.id, client.id, server.name, req.method, path, decision.reason, decision.rule)
        return {
          ok: false,
          status: 403,
          code: 'FORBIDDEN',
          message: `The proxy rules of client "${client.id}" do not allow ${req.method} ${path}.`,
          decision: 'deny',
          client: client.id,
          server: server.name,
        }
      }
    }
    const filtered = stripLogFilter(path, cred.query)
    if (!filtered.ok) {
      return {
        ok: false,
        status: 400,
        code: 'BAD_REQUEST',
        message: filtered.reason === 'log-filter-only' ? 'The log filter is not available through the proxy.' : 'The filters parameter is not valid percent-encoding.',
        decision: 'bad_request',
        client: client.id,
        server: server.name,
      }
    }
    return { ok: true, server, prefix, client, policy, keyId: record.id, path, query: filtered.query, decision, shadowed }
  }

  /**
   * The token for an admitted request, counted against its key's limits (docs/proxy.md, *Per-key
   * limits*): the request against `proxy_key_requests` inside the token's serve script (no round
   * trip of its own), and a long answer (`long`) against `proxy_key_streams` by a lease taken at
   * the same time (one more command, no added wait). Over either limit: 429 with Retry-After,
   * audited once per key and limit per window. Another key's traffic never counts here.
   */
  async issue (a: Admitted, long: boolean, issue: (meter: Meter) => Promise<IssueResult>): Promise<Issued | Refused> {
    const { limiter } = this.#o
    const meter = limiter.meterOf(limiter.proxyKey(a.keyId, a.policy.limits.requestsPerMinute))
    const leasing = long && a.policy.limits.openStreams > 0 ? limiter.lease(limiter.proxyKeyStreams(a.keyId, a.policy.limits.openStreams)) : undefined
    let issued: IssueResult
    try {
      issued = await issue(meter)
    } catch (err) {
      ;(await leasing)?.release()
      const counted = meter.last
      if (counted?.limited === true) {
        return this.#throttled(a, 'proxy_key_requests', counted.max, Math.max(1, Math.ceil(counted.ttlMs / 1000)),
          `Rate limit exceeded: ${counted.max} requests per minute for this proxy key; retry later.`)
      }
      throw err
    }
    const lease = await leasing
    if (lease?.limited === true) {
      return this.#throttled(a, 'proxy_key_streams', lease.max, STREAMS_RETRY_AFTER_S,
        `Too many open streams: ${lease.max} at once for this proxy key; retry when one has ended.`)
    }
    return { ok: true, issued, release: lease?.release ?? (() => {}) }
  }

  #throttled (a: Admitted, limit: LimitName, max: number, retryAfter: number, message: string): Refused {
    this.#o.sampler.record(`proxy.throttled\u0000${a.keyId}\u0000${limit}`, {
      action: 'proxy.throttled',
      client: a.client.id,
      server: a.server.name,
      detail: { keyId: a.keyId, limit, max },
    })
    return { ok: false, status: 429, code: 'RATE_LIMITED', message, decision: 'throttled', retryAfter, client: a.client.id, server: a.server.name }
  }

  #sample (action: string, keyId: string, client: string, server: string, method: string, path: string, reason: string, rule?: string): void {
    this.#o.sampler.record(`${action}\u0000${keyId}\u0000${method}\u0000${path}`, {
      action,
      client,
      server,
      detail: { keyId, method, path, reason, ...(rule === undefined ? {} : { rule }) },
    })
  }

  /**
   * A credential that is missing, not a proxy key, or not usable: 401, or 429 once the address
   * has failed too often in the window (a valid key from the same address is never counted or
   * refused here). Audited through the sampler, so a flood of bad keys costs the trail one event
   * per address and reason per window.
   */
  async #refuseCredential (req: RequestInfo, reason: string, server: ServerConfig, client?: string): Promise<Refused> {
    this.#o.metrics.keyFailures.inc({ reason })
    const ip = normalizeIP(req.ip)
    const over = this.#o.authFailures
    const counter = this.#o.limiter.address('proxy_key_failures', ip)
    // Fails open (a 401, not a 429) when Redis cannot count, like the API's throttle.
    const hit = await this.#o.limiter.hit(over === undefined ? counter : { ...counter, max: over.max, windowMs: over.timeWindowMs })
    const throttled = hit.limited
    const retryAfter = Math.max(1, Math.ceil(hit.ttlMs / 1000))
    this.#o.sampler.record(`proxy.unauthenticated\u0000${ip}\u0000${reason}`, {
      action: 'proxy.unauthenticated',
      ...(client === undefined ? {} : { client }),
      server: server.name,
      detail: { reason, ip, ...(throttled ? { throttled: true } : {}) },
    })
    if (throttled) {
      return {
        ok: false,
        status: 429,
        code: 'RATE_LIMITED',
        message: 'Too many failed proxy credentials from this address; retry later.',
        decision: 'throttled',
        retryAfter,
        server: server.name,
      }
    }
    return {
      ok: false,
      status: 401,
      code: 'UNAUTHENTICATED',
      message: 'Missing or unknown proxy key: send a broker proxy key (pbk_…) as X-Plex-Token.',
      decision: 'unauthenticated',
      ...(client === undefined ? {} : { client }),
      server: server.name,
    }
  }
}

/** The credential alone, when the rest of the query was refused (a foreign nested URL): the key is still checked first. */
function extractCredentialOnly (header: string | string[] | undefined, rawQuery: string): string | undefined {
  const r = extractCredential(header, rawQuery.split('&').filter((p) => !/^url=/i.test(p)).join('&'), () => true)
  return r.ok ? r.credential : undefined
}
