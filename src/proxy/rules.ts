/**
 * The proxy's rule model (docs/proxy.md, *Rules*): which method and canonical path (see
 * `canonical-path.ts`) a client's proxy key may reach on PMS. Pure functions and plain data, no
 * I/O, so the listener, the config loader and the CLI all judge a request the same way.
 *
 * A rule is `{ methods, path, query? }`:
 * - `methods`: `'*'` or a list of HTTP methods. `GET` covers `HEAD` too: PMS answers a HEAD by
 *   running the GET handler, side effects included, so a deny of GET must stop HEAD as well.
 * - `path`: a glob on the canonical path. `*` matches any characters but `/` (a whole segment or
 *   part of one), `**` matches anything including `/`, and `/**` as a whole segment also matches
 *   nothing at all (`/library/parts/**` matches `/library/parts` and everything under it).
 *   `{a,b,c}` matches one of the listed literals. Anything else is literal.
 * - `query.keys` (allow rules only): the request's query parameter names, apart from `X-Plex-*`
 *   (client identification, not arguments), must all be in this list.
 *
 * Evaluation order: built-in hard deny → client deny → allow → default deny. Deny patterns match
 * case-insensitively and allow patterns case-sensitively. Either way, not knowing whether PMS
 * folds the case of a path then leads to a refusal: if PMS folds case, `/Security/Token` is the
 * token endpoint and a deny must catch it; an allow rule describes the exact path a tool sends,
 * and a case variant nobody sends has no reason to pass.
 */

export const HTTP_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'] as const
export type HttpMethod = typeof HTTP_METHODS[number]

/** A rule as written in the config file or a preset. */
export interface RuleSpec {
  methods: readonly string[] | '*'
  path: string
  query?: { keys: readonly string[] }
}

type GlobToken =
  | { t: 'lit', s: string }
  | { t: 'star' }
  | { t: 'any' }
  | { t: 'segs' }
  | { t: 'alt', options: readonly string[] }

/** A compiled path pattern. */
export interface Glob {
  source: string
  /** The literal text before the first wildcard (lowercased when the glob is case-insensitive). */
  prefix: string
  /** True when the pattern has no wildcard: it matches `prefix` only. */
  exact: boolean
  caseInsensitive: boolean
  tokens: readonly GlobToken[]
}

export interface CompiledRule {
  /** Where the rule comes from and what it says, for decisions, logs and shadow-mode counts. */
  label: string
  /** Upper case; `HEAD` added wherever `GET` is. */
  methods: readonly string[] | '*'
  glob: Glob
  queryKeys?: readonly string[]
}

export type DecisionReason = 'hard-deny' | 'client-deny' | 'allow' | 'default-deny'

export interface Decision {
  allow: boolean
  reason: DecisionReason
  /** The label of the rule (or hard-deny entry) that decided; none for a default deny. */
  rule?: string
}

/** What the rules see of a request. */
export interface RequestFacts {
  method: string
  /** The canonical path (`canonicalPath`). */
  path: string
  /** Names of the query parameters, as sent (repeats allowed). */
  queryKeys?: readonly string[]
}

/** A response attribute the proxy must remove before the answer leaves it (a credential PMS hands out). */
export interface ResponseFilter {
  path: string
  /** XML attributes / JSON properties to remove wherever they occur in the answer. */
  removeAttributes: readonly string[]
}

export type ProxyMode = 'enforce' | 'shadow'

/** A client's compiled rules (`policyFrom` in presets.ts builds one). */
export interface ProxyPolicy {
  preset?: string
  /** `shadow`: forward everything, and log and count what would have been refused. */
  mode: ProxyMode
  deny: readonly CompiledRule[]
  allow: readonly CompiledRule[]
  responseFilters: readonly ResponseFilter[]
  /**
   * Hosts a nested `url=` may name besides PMS itself (`allowUrlHosts`, docs/proxy.md *Nested
   * URLs*): exact host names, lowercased, or `*.` and a domain for its subdomains.
   */
  allowUrlHosts: readonly string[]
  /** Each proxy key's limits (`proxy.limits`, else PROXY_KEY_REQUESTS_PER_MINUTE and PROXY_KEY_OPEN_STREAMS). */
  limits: ProxyKeyLimits
}

export interface ProxyKeyLimits {
  /** Requests per key and minute; beyond: 429. 0: not limited. */
  requestsPerMinute: number
  /** Long answers (media, event feeds, websockets) open at once per key, across instances; beyond: 429. 0: not limited. */
  openStreams: number
}

/**
 * The defaults of the per-key limits (docs/proxy.md, *Per-key limits*): none. Tools differ by
 * orders of magnitude (Tautulli polls every few seconds; Kometa, one call after another, makes
 * thousands a minute; a download manager or a family's players hold dozens of media answers at
 * once through one key), so any one default would either lock out a legitimate tool or limit
 * nothing. Ops set them per client from what the tool does.
 */
export const DEFAULT_KEY_LIMITS: ProxyKeyLimits = { requestsPerMinute: 0, openStreams: 0 }

export const MAX_PATTERN_LENGTH = 512
const MAX_WILDCARDS = 8

/** Compiles a path glob, or says what is wrong with it. */
export function compileGlob (source: string, opts: { caseInsensitive?: boolean } = {}): { glob: Glob } | { problem: string } {
  const ci = opts.caseInsensitive === true
  if (typeof source !== 'string' || !source.startsWith('/')) return { problem: 'must start with /' }
  if (source.length > MAX_PATTERN_LENGTH) return { problem: `longer than ${MAX_PATTERN_LENGTH} characters` }
  for (const ch of source) {
    const c = ch.charCodeAt(0)
    if (c <= 0x20 || c === 0x7f) return { problem: 'contains a space or control character' }
    if (ch === '\\' || ch === ';') return { problem: `contains "${ch}", which a canonical path never does` }
    if (ch === '%') return { problem: 'contains "%": patterns match the decoded path, write the character itself' }
    if (ch === '?' || ch === '#') return { problem: `contains "${ch}": patterns match the path only; restrict query parameters with query.keys` }
  }
  if (source !== '/' && source.endsWith('/')) return { problem: 'ends with /, which a canonical path never does' }
  for (const segment of source.split('/').slice(1)) {
    if (segment === '' && source !== '/') return { problem: 'contains an empty segment (//)' }
    if (segment === '.' || segment === '..') return { problem: `contains a "${segment}" segment, which a canonical path never does` }
  }

  const tokens: GlobToken[] = []
  let lit = ''
  let wildcards = 0
  const pushLit = (): void => {
    if (lit !== '') tokens.push({ t: 'lit', s: ci ? lit.toLowerCase() : lit })
    lit = ''
  }
  for (let i = 0; i < source.length; i++) {
    const ch = source[i]
    if (ch === '*') {
      wildcards++
      if (source[i + 1] === '*') {
        if (source[i + 2] === '*') return { problem: 'contains "***"' }
        // `/**` as a whole segment: nothing, or `/` and anything (the `/` belongs to the wildcard).
        if (lit.endsWith('/') && (i + 2 === source.length || source[i + 2] === '/')) {
          lit = lit.slice(0, -1)
          pushLit()
          tokens.push({ t: 'segs' })
        } else {
          pushLit()
          tokens.push({ t: 'any' })
        }
        i++
      } else {
        pushLit()
        tokens.push({ t: 'star' })
      }
    } else if (ch === '{') {
      wildcards++
      const end = source.indexOf('}', i)
      if (end < 0) return { problem: 'has a "{" without "}"' }
      const body = source.slice(i + 1, end)
      const options = body.split(',')
      if (/[{/*]/.test(body) || options.some((o) => o === '')) return { problem: `"{${body}}" must list non-empty literals without /, * or {` }
      pushLit()
      tokens.push({ t: 'alt', options: options.map((o) => ci ? o.toLowerCase() : o) })
      i = end
    } else if (ch === '}') {
      return { problem: 'has a "}" without "{"' }
    } else {
      lit += ch
    }
  }
  pushLit()
  if (wildcards > MAX_WILDCARDS) return { problem: `has more than ${MAX_WILDCARDS} wildcards` }
  const first = tokens[0]
  const prefix = first?.t === 'lit' ? first.s : ''
  return { glob: { source, prefix, exact: tokens.length === 1 && first?.t === 'lit', caseInsensitive: ci, tokens } }
}

/**
 * Whether `path` (already lowercased for a case-insensitive glob) matches. Dynamic programming
 * over (token, position) from the end: time linear in the path for each token, whatever the
 * pattern, so no pattern can make matching slow (a backtracking regular expression could).
 */
export function globMatches (glob: Glob, path: string): boolean {
  if (!path.startsWith(glob.prefix)) return false
  if (glob.exact) return path === glob.prefix
  const n = path.length
  // next[p]: tokens after the current one match path[p..].
  let next = new Uint8Array(n + 1)
  next[n] = 1
  for (let ti = glob.tokens.length - 1; ti >= 0; ti--) {
    const tok = glob.tokens[ti]! // ti counts down from the last index
    const cur = new Uint8Array(n + 1)
    switch (tok.t) {
      case 'lit':
        for (let p = 0; p + tok.s.length <= n; p++) if (next[p + tok.s.length] === 1 && path.startsWith(tok.s, p)) cur[p] = 1
        break
      case 'alt':
        for (let p = 0; p <= n; p++) {
          for (const o of tok.options) if (p + o.length <= n && next[p + o.length] === 1 && path.startsWith(o, p)) { cur[p] = 1; break }
        }
        break
      case 'star':
        for (let p = n; p >= 0; p--) cur[p] = next[p] === 1 || (p < n && path.charCodeAt(p) !== 0x2f && cur[p + 1] === 1) ? 1 : 0
        break
      case 'any':
        for (let p = n; p >= 0; p--) cur[p] = next[p] === 1 || (p < n && cur[p + 1] === 1) ? 1 : 0
        break
      case 'segs': {
        // Nothing, or `/` followed by anything: some q > p where the rest matches.
        let restAfter = false
        for (let p = n; p >= 0; p--) {
          cur[p] = next[p] === 1 || (p < n && path.charCodeAt(p) === 0x2f && restAfter) ? 1 : 0
          if (next[p] === 1) restAfter = true
        }
        break
      }
    }
    next = cur
  }
  return next[0] === 1
}

/** Normalises a method list: upper case, known methods only, HEAD wherever GET is. */
function compileMethods (methods: unknown): { methods: readonly string[] | '*' } | { problem: string } {
  if (methods === '*') return { methods: '*' }
  if (!Array.isArray(methods) || methods.length === 0) return { problem: 'methods must be "*" or a non-empty list of HTTP methods' }
  const out = new Set<string>()
  for (const m of methods as unknown[]) {
    const up = typeof m === 'string' ? m.toUpperCase() : ''
    if (up === '*') return { methods: '*' }
    if (!(HTTP_METHODS as readonly string[]).includes(up)) return { problem: `methods: "${String(m)}" is not one of ${HTTP_METHODS.join(', ')} or *` }
    out.add(up)
  }
  if (out.has('GET')) out.add('HEAD')
  return { methods: HTTP_METHODS.filter((m) => out.has(m)) }
}

/** How a rule reads in labels and docs: `GET,PUT /path` plus its query keys. */
export function describeRule (spec: RuleSpec): string {
  const methods = spec.methods === '*' ? '*' : spec.methods.map((m) => m.toUpperCase()).join(',')
  return `${methods} ${spec.path}${spec.query === undefined ? '' : ` (query keys: ${spec.query.keys.join(', ')})`}`
}

/**
 * Compiles one rule from untrusted input (the config file). `kind` decides the case handling;
 * `query` is allowed on allow rules only (a deny that depended on the query could be sidestepped
 * by leaving a parameter out). Problems name the field.
 */
export function compileRule (input: unknown, kind: 'allow' | 'deny', labelPrefix: string): { rule: CompiledRule } | { problem: string } {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) return { problem: 'must be an object { methods, path }' }
  const o = input as Record<string, unknown>
  const extra = Object.keys(o).filter((k) => !['methods', 'path', 'query'].includes(k))
  if (extra.length > 0) return { problem: `unknown field(s) ${extra.join(', ')} (a rule has methods, path${kind === 'allow' ? ', query' : ''})` }
  const methods = compileMethods(o.methods)
  if ('problem' in methods) return methods
  if (typeof o.path !== 'string') return { problem: 'path: must be a string starting with /' }
  const glob = compileGlob(o.path, { caseInsensitive: kind === 'deny' })
  if ('problem' in glob) return { problem: `path: "${o.path.slice(0, 80)}" ${glob.problem}` }
  let queryKeys: string[] | undefined
  if (o.query !== undefined) {
    if (kind === 'deny') return { problem: 'query: only allow rules may restrict query parameters' }
    const q = o.query as Record<string, unknown> | null
    const keys = q !== null && typeof q === 'object' ? q.keys : undefined
    if (Object.keys(q ?? {}).some((k) => k !== 'keys') || !Array.isArray(keys) || keys.length === 0 ||
        keys.some((k) => typeof k !== 'string' || !/^[A-Za-z0-9_.-]{1,128}$/.test(k))) {
      return { problem: 'query: must be { keys: [names…] } with at least one parameter name (letters, digits, _ . -)' }
    }
    queryKeys = [...new Set(keys as string[])]
  }
  const spec: RuleSpec = { methods: methods.methods, path: o.path, ...(queryKeys === undefined ? {} : { query: { keys: queryKeys } }) }
  return { rule: { label: `${labelPrefix}: ${describeRule(spec)}`, methods: methods.methods, glob: glob.glob, ...(queryKeys === undefined ? {} : { queryKeys }) } }
}

/** Compiles a rule the code itself defines (presets, the hard deny); a mistake there is a bug. */
export function builtInRule (spec: RuleSpec, kind: 'allow' | 'deny', labelPrefix: string): CompiledRule {
  const r = compileRule(spec, kind, labelPrefix)
  if ('problem' in r) throw new Error(`built-in rule ${describeRule(spec)}: ${r.problem}`)
  return r.rule
}

function methodMatches (rule: CompiledRule, method: string): boolean {
  return rule.methods === '*' || rule.methods.includes(method)
}

function queryMatches (rule: CompiledRule, keys: readonly string[] | undefined): boolean {
  if (rule.queryKeys === undefined) return true
  const allowed = rule.queryKeys
  return (keys ?? []).every((k) => k.toLowerCase().startsWith('x-plex-') || allowed.includes(k))
}

/** Whether a compiled rule matches; `lowerPath` is the path lowercased (used by case-insensitive globs). */
function ruleMatches (rule: CompiledRule, method: string, path: string, lowerPath: string, queryKeys?: readonly string[]): boolean {
  return methodMatches(rule, method) && globMatches(rule.glob, rule.glob.caseInsensitive ? lowerPath : path) && queryMatches(rule, queryKeys)
}

/** One entry of the built-in hard deny. */
export interface HardDenyEntry {
  id: string
  rule: CompiledRule
  /** Requests the entry does not cover (matched case-insensitively too). */
  except: readonly CompiledRule[]
  /** Only an allow rule with `query.keys` can name this entry (`PUT /:/prefs` sets whatever its query says). */
  needsQueryKeys: boolean
  why: string
}

function hardDeny (id: string, spec: RuleSpec, why: string, opts: { except?: RuleSpec[], needsQueryKeys?: boolean } = {}): HardDenyEntry {
  return {
    id,
    rule: builtInRule(spec, 'deny', `hard deny ${id}`),
    except: (opts.except ?? []).map((e) => builtInRule(e, 'deny', `hard deny ${id} except`)),
    needsQueryKeys: opts.needsQueryKeys === true,
    why,
  }
}

/**
 * Denied for every client and preset, whatever its allow rules say, unless an allow rule names
 * the path explicitly (`namesHardDenied`). `full` included.
 */
export const HARD_DENY: readonly HardDenyEntry[] = [
  hardDeny('security', { methods: '*', path: '/security/**' }, 'hands out credentials: /security/token mints tokens, /security/resources returns access tokens of other servers and providers'),
  hardDeny('myplex', { methods: '*', path: '/myplex/**' }, 'the owner\'s plex.tv account: GET /myplex/account returns its authToken'),
  hardDeny('prefs', { methods: '*', path: '/:/prefs' }, 'PUT /:/prefs changes any server setting named in its query', {
    except: [{ methods: ['GET'], path: '/:/prefs' }],
    needsQueryKeys: true,
  }),
  hardDeny('system', { methods: '*', path: '/system/**' }, 'server internals (agents, plug-ins, scanners)', {
    except: [{ methods: ['GET'], path: '/system/bundle/media/flags/**' }],
  }),
  hardDeny('updater', { methods: '*', path: '/updater/**' }, 'installs and applies PMS updates'),
  hardDeny('butler', { methods: '*', path: '/butler**' }, 'starts and stops maintenance tasks (database backup, optimisation, deep analysis)'),
  hardDeny('diagnostics', { methods: '*', path: '/diagnostics/**' }, 'zips of the logs and the database'),
  hardDeny('log', { methods: '*', path: '/log**' }, 'reads the server log and writes to it'),
]

/**
 * When an allow rule *names* a hard-denied path explicitly, the hard deny gives way to it for the
 * requests the rule matches. It names the entry when
 * 1. its literal prefix (the pattern up to its first wildcard) starts with the entry's literal
 *    prefix, compared case-insensitively: it was written for that subtree, not merely reaching
 *    it through a wildcard (`/myplex/account` and `/myplex/**` name `/myplex/**`; `/**`, `/my*`
 *    and `/{myplex,library}/account` do not); and
 * 2. for an entry that needs query keys (`PUT /:/prefs`), the rule lists them (`query.keys`).
 * The rule must also match the request itself (method, case-sensitive path, query keys).
 */
export function namesHardDenied (rule: CompiledRule, entry: HardDenyEntry): boolean {
  if (entry.needsQueryKeys && rule.queryKeys === undefined) return false
  return rule.glob.prefix.toLowerCase().startsWith(entry.rule.glob.prefix)
}

/** The hard-deny entries that cover a request (method upper case, path lowercased). */
function hardDenied (method: string, lowerPath: string): HardDenyEntry[] {
  return HARD_DENY.filter((h) => ruleMatches(h.rule, method, lowerPath, lowerPath) && !h.except.some((e) => ruleMatches(e, method, lowerPath, lowerPath)))
}

/** Judges one request: built-in hard deny → client deny → allow → default deny. */
export function evaluate (policy: ProxyPolicy, req: RequestFacts): Decision {
  const method = req.method.toUpperCase()
  const lowerPath = req.path.toLowerCase()
  let namedBy: CompiledRule | undefined
  for (const entry of hardDenied(method, lowerPath)) {
    const naming = policy.allow.find((r) => namesHardDenied(r, entry) && ruleMatches(r, method, req.path, lowerPath, req.queryKeys))
    if (naming === undefined) return { allow: false, reason: 'hard-deny', rule: entry.rule.label }
    namedBy ??= naming
  }
  const deny = policy.deny.find((r) => ruleMatches(r, method, req.path, lowerPath))
  if (deny !== undefined) return { allow: false, reason: 'client-deny', rule: deny.label }
  const allow = namedBy ?? policy.allow.find((r) => ruleMatches(r, method, req.path, lowerPath, req.queryKeys))
  if (allow !== undefined) return { allow: true, reason: 'allow', rule: allow.label }
  return { allow: false, reason: 'default-deny' }
}

/**
 * Attributes removed from every answer of these endpoints, whatever the client's rules: even a
 * client allowed to reach them explicitly never receives a PMS or plex.tv credential.
 */
export const TOKEN_RESPONSE_FILTERS: readonly ResponseFilter[] = [
  { path: '/myplex/account', removeAttributes: ['authToken'] },
  { path: '/security/token', removeAttributes: ['token'] },
  { path: '/security/resources', removeAttributes: ['accessToken'] },
]

/** The attributes to remove from the answer to `path` (canonical), built-in filters and the policy's. */
export function responseAttributesToRemove (policy: Pick<ProxyPolicy, 'responseFilters'>, path: string): string[] {
  const lower = path.toLowerCase()
  const out = new Set<string>()
  for (const f of [...TOKEN_RESPONSE_FILTERS, ...policy.responseFilters]) {
    if (globMatches(filterGlob(f.path), lower)) for (const a of f.removeAttributes) out.add(a)
  }
  return [...out]
}

// Filter paths come from code (presets, the list above), so this cache stays as small as they are.
const filterGlobs = new Map<string, Glob>()
function filterGlob (path: string): Glob {
  let g = filterGlobs.get(path)
  if (g === undefined) {
    const compiled = compileGlob(path, { caseInsensitive: true })
    if ('problem' in compiled) throw new Error(`response filter ${path}: ${compiled.problem}`)
    g = compiled.glob
    filterGlobs.set(path, g)
  }
  return g
}

/** The PMS event feeds that take a `filters` parameter. */
export const NOTIFICATION_PATHS = ['/:/websockets/notifications', '/:/websocket/notifications', '/:/eventsource/notifications'] as const

export type NotificationQuery =
  | { ok: true, query: string, removed: boolean }
  | { ok: false, reason: 'log-filter-only' | 'bad-encoding' }

/**
 * The query to forward for a request to `path`: on the notification feeds, `log` is removed from
 * every `filters` parameter (it streams the server log, which carries tokens and paths). A
 * `filters` left empty is refused rather than forwarded, since an empty list may mean "every
 * event". Other paths and parameters pass unchanged, byte for byte.
 */
export function stripLogFilter (path: string, rawQuery: string): NotificationQuery {
  const lower = path.toLowerCase()
  if (!(NOTIFICATION_PATHS as readonly string[]).includes(lower) || rawQuery === '') return { ok: true, query: rawQuery, removed: false }
  const decode = (s: string): string | undefined => {
    try {
      return decodeURIComponent(s.replace(/\+/g, ' '))
    } catch {
      return undefined
    }
  }
  let removed = false
  const parts: string[] = []
  for (const part of rawQuery.split('&')) {
    const eq = part.indexOf('=')
    const name = decode(eq < 0 ? part : part.slice(0, eq))
    if (name === undefined) return { ok: false, reason: 'bad-encoding' }
    if (name.trim().toLowerCase() !== 'filters' || eq < 0) {
      parts.push(part)
      continue
    }
    const value = decode(part.slice(eq + 1))
    if (value === undefined) return { ok: false, reason: 'bad-encoding' }
    const filters = value.split(',').map((f) => f.trim())
    const kept = filters.filter((f) => f.toLowerCase() !== 'log')
    if (kept.length === filters.length) {
      parts.push(part)
      continue
    }
    removed = true
    if (kept.every((f) => f === '')) return { ok: false, reason: 'log-filter-only' }
    parts.push(`${part.slice(0, eq)}=${kept.filter((f) => f !== '').map(encodeURIComponent).join(',')}`)
  }
  return { ok: true, query: parts.join('&'), removed }
}
