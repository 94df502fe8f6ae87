/**
 * `ptb proxy-rules suggest`: allow rules derived from what a client in shadow mode really did.
 * In shadow mode (docs/proxy.md) the proxy forwards a request its rules refuse and records a
 * sampled `proxy.shadow` audit event (method, canonical path, how often in the window). This turns
 * those events into rules ops can review and paste into the client's `proxy.allow`: ids in paths
 * (numbers, long hex or base64url runs) become `*`, methods are grouped per path, and paths a
 * client `deny` rule refused are listed apart (an allow rule cannot open them; deny wins).
 */

/** The part of a `proxy.shadow` event the suggestion reads. */
export interface ShadowEvent {
  detail: Record<string, unknown>
}

export interface SuggestedRule {
  methods: string[]
  path: string
  /** Requests seen: one per first event, `repeats` per summary event. */
  requests: number
}

export interface Suggestion {
  allow: SuggestedRule[]
  /** Refused by the client's own deny rules: an allow rule would not open them. */
  deniedByClient: SuggestedRule[]
  /** Events read. */
  events: number
}

/** A path segment that names one object rather than a kind of thing: numbers, hashes, uuids, session ids. */
const ID_SEGMENT = /^(?:\d+|[0-9a-f]{8,}|[0-9a-f-]{32,36}|[A-Za-z0-9_-]{20,})$/i

/** `/library/metadata/1234/children` → `/library/metadata/*\/children`. */
export function generalisePath (path: string): string {
  return path.split('/').map((seg, i) => (i > 0 && ID_SEGMENT.test(seg) ? '*' : seg)).join('/')
}

const METHOD_ORDER = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']

export function suggestRules (events: readonly ShadowEvent[]): Suggestion {
  const groups = { allow: new Map<string, SuggestedRule>(), deniedByClient: new Map<string, SuggestedRule>() }
  let read = 0
  for (const e of events) {
    const { method, path, reason, repeats } = e.detail
    if (typeof method !== 'string' || typeof path !== 'string' || !path.startsWith('/')) continue
    read++
    const into = reason === 'client-deny' ? groups.deniedByClient : groups.allow
    const glob = generalisePath(path)
    const rule = into.get(glob) ?? { methods: [], path: glob, requests: 0 }
    const m = method.toUpperCase()
    // GET covers HEAD in the rule model: a HEAD seen alone is suggested as GET.
    const named = m === 'HEAD' ? 'GET' : m
    if (!rule.methods.includes(named)) rule.methods.push(named)
    // A window's first occurrence is one event; its repeats come later as one summary event that
    // carries their count (and stands for those requests only).
    rule.requests += typeof repeats === 'number' && repeats > 0 ? repeats : 1
    into.set(glob, rule)
  }
  const sorted = (m: Map<string, SuggestedRule>): SuggestedRule[] => [...m.values()]
    .map((r) => ({ ...r, methods: r.methods.sort((a, b) => METHOD_ORDER.indexOf(a) - METHOD_ORDER.indexOf(b)) }))
    .sort((a, b) => b.requests - a.requests || a.path.localeCompare(b.path))
  return { allow: sorted(groups.allow), deniedByClient: sorted(groups.deniedByClient), events: read }
}

/** The suggestion as the YAML a `BROKER_CONFIG` client entry takes, with the counts as comments. */
export function suggestionYaml (client: string, s: Suggestion): string {
  const out = [`# ${client}: ${s.events} shadow-mode decisions read from the audit trail. Review before use:`,
    '# every rule widens what the client may do at PMS.']
  if (s.allow.length === 0) out.push('# Nothing to add: no request of this client was refused by its rules in shadow mode.')
  else {
    out.push('proxy:', '  allow:')
    for (const r of s.allow) out.push(`    - { methods: [${r.methods.join(', ')}], path: ${JSON.stringify(r.path)} }  # ${r.requests} request${r.requests === 1 ? '' : 's'}`)
  }
  if (s.deniedByClient.length > 0) {
    out.push('# Refused by the client\'s own deny rules (an allow rule does not open these; change the deny rule):')
    for (const r of s.deniedByClient) out.push(`#   ${r.methods.join(',')} ${r.path}  (${r.requests})`)
  }
  return out.join('\n') + '\n'
}
