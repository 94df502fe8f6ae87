/**
 * The ops half of the `ptb` CLI: revoke, rotate, audit, trace, servers, proxy-key (over the
 * broker's HTTP API) and `client add` (offline). Human-readable tables by default, `--json` for scripts.
 * The broker URL comes from `--url` or PTB_URL; the ops client's secret from `--secret-file`,
 * PTB_SECRET_FILE or PTB_SECRET (never from argv, where `ps` would show it).
 */
import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import type { TSchema } from 'typebox'
import { Value } from 'typebox/value'
import { stringify } from 'yaml'
import { sha256 } from '../broker/crypto.ts'
import { parseRevokeSelector } from '../broker/revoke-selector.ts'
import { parseDuration, SCOPES } from '../config/index.ts'
import { isName, NAME_RULE } from '../config/names.ts'
import { AuditQuerySchema, RevokeBodySchema, TraceBodySchema } from '../schemas/ops.ts'
import { CreateProxyKeyBodySchema, PROXY_KEY_MAX_LIFE_MS, ProxyKeyListQuerySchema, ProxyKeyParamsSchema, RevokeProxyKeyQuerySchema } from '../schemas/proxy-keys.ts'
import { printable } from './printable.ts'
import { suggestionYaml, suggestRules } from './proxy-rules.ts'

export interface OpsIo {
  stdout: { write: (s: string) => unknown }
  stderr: { write: (s: string) => unknown }
  env: Record<string, string | undefined>
  /** For `audit --follow`: stops following when aborted. */
  signal?: AbortSignal
  /** Poll interval of `audit --follow` (tests shorten it). */
  followIntervalMs?: number
  /** Where `trace` reads the token from without --token-file. */
  stdin?: NodeJS.ReadableStream & { isTTY?: boolean }
}

/** Exit codes: 0 ok, 1 the broker refused or failed, 2 usage error, 3 broker unreachable. */
export const EXIT = { ok: 0, failed: 1, usage: 2, unreachable: 3 } as const

class UsageError extends Error {}

const CONN_HELP = `  --url URL            the broker (default PTB_URL, else http://127.0.0.1:8080)
  --secret-file FILE   the ops client's secret (default PTB_SECRET_FILE, else PTB_SECRET)
  --json               machine-readable output
`

/** Each ops command's own usage: the first line goes into `ptb help`, all of it into `ptb CMD --help`. */
export const OPS_COMMAND_USAGE: Readonly<Record<string, string>> = {
  revoke: `ptb revoke (--token-id ID | --client C [--server S] | --server S | --source SRC [--client C] [--server S] | --all) --reason TEXT [--json]
Revokes tokens (scope token:revoke); they are never served again and the client's next request gets a
new one. PMS keeps them valid until their 48-hour end or its next restart.
  --token-id ID        one token
  --client C           every token of a client (optionally only on --server S)
  --server S           every token of a server
  --source SRC         tokens for a shared server or provider (server://… or provider://…),
                       optionally narrowed by --client and/or --server
  --all                every token
  --reason TEXT        why (required; goes into the audit trail)
${CONN_HELP}`,
  rotate: `ptb rotate SERVER [--json]
Re-mints every active token of SERVER now (scope server:rotate); clients get the new token on
their next request. Prints how many rotations were queued.
${CONN_HELP}`,
  audit: `ptb audit [--action A] [--client C] [--server S] [--token-id ID] [--since ISO] [--limit N] [--follow] [--json]
The audit trail (scope audit:read), oldest first; --follow keeps printing new events (Ctrl-C stops).
  --action A           e.g. token.issue, token.revoke, auth.denied
  --client C, --server S, --token-id ID, --since ISO   filters
  --limit N            events shown at start (default 20)
  --follow             keep polling for new events
${CONN_HELP}`,
  trace: `ptb trace [--token-file FILE] [--json]
Who held this token? Reads a token value found somewhere (a log, a paste) from FILE or stdin, never
from the command line, and prints its fingerprint, the client, server and token id it was issued
to, and the audit events that mention it, oldest first (scope audit:read). The broker hashes it on
arrival; it is never stored or logged.
  --token-file FILE    read the token from FILE (default: stdin, e.g. \`ptb trace < found.txt\`)
${CONN_HELP}`,
  servers: `ptb servers [--json]
The PMS servers the broker serves: state, version, active tokens, admin token health (scope server:read).
${CONN_HELP}`,
  'proxy-key create': `ptb proxy-key create --client C [--server S] --label TEXT [--expires ISO|DURATION] [--json]
Creates a proxy key for a client with a \`proxy\` section (scope proxy-key:manage): the key a tool puts
where it would put a PMS token. The key alone goes to stdout, once (\`… > key.txt\`); what it is, to stderr.
  --client C           the client whose proxy rules apply
  --server S           the one server the key reaches (default: every server of the client)
  --label TEXT         what the key is for, e.g. "Tautulli on nas" (1 to 100 characters)
  --expires WHEN       an ISO 8601 time or a duration such as 30d or 12h (at most 366 days; default: never)
${CONN_HELP}`,
  'proxy-rules suggest': `ptb proxy-rules suggest --client C [--since ISO] [--json]
Allow rules for a client's \`proxy.allow\`, from the requests its rules refused while it ran in shadow
mode (\`proxy.mode: shadow\`; scope audit:read): ids in paths become *, methods are grouped per path,
the counts are comments. Paths the client's own deny rules refused are listed apart. Review first.
  --client C           the client in shadow mode
  --since ISO          only decisions after this time (default: everything the trail still holds)
${CONN_HELP}`,
  'proxy-key list': `ptb proxy-key list [--client C] [--json]
Lists proxy keys (scope proxy-key:manage): id, client, server, label, state (active, revoked, expired,
or orphaned: its client or server left the configuration), never the key itself.
  --client C           only this client's keys (a client removed from the config too)
${CONN_HELP}`,
  'proxy-key revoke': `ptb proxy-key revoke ID [--reason TEXT] [--json]
Revokes a proxy key by its id (scope proxy-key:manage): every broker instance refuses it on its next
request. Revoking a revoked key again is no error.
  --reason TEXT        why (goes into the audit trail)
${CONN_HELP}`,
  'client add': `ptb client add <id> [--scopes token:issue,...] [--servers a,b|*] [--json]
Offline: prints a new client secret (once) and the \`clients:\` config entry holding only its digest.
  --scopes LIST        comma-separated, from: ${SCOPES.join(', ')} (default token:issue)
  --servers LIST       server names, or * for all (default *)
  --json               {secret, entry} as JSON
`,
}

const COMMON = {
  url: { type: 'string' },
  'secret-file': { type: 'string' },
  json: { type: 'boolean', default: false },
} as const

interface Conn { url: string, secret: string }

function connection (values: { url?: string, 'secret-file'?: string }, env: OpsIo['env']): Conn {
  const url = (values.url ?? env.PTB_URL ?? 'http://127.0.0.1:8080').replace(/\/+$/, '')
  // `broker:8080` parses as a URL with the scheme `broker:`: only http(s) with a host is a broker.
  let parsed: URL | undefined
  try { parsed = new URL(url) } catch {}
  if (parsed === undefined || !['http:', 'https:'].includes(parsed.protocol) || parsed.host === '') {
    const from = values.url !== undefined ? '--url' : env.PTB_URL !== undefined ? 'PTB_URL' : 'the default URL'
    throw new UsageError(`${from} must be an http:// or https:// URL such as http://127.0.0.1:8080; got "${url.replace(/\/\/[^@/]*@/, '//…@')}"`)
  }
  const file = values['secret-file'] ?? env.PTB_SECRET_FILE
  let secret = env.PTB_SECRET
  if (file !== undefined) {
    try {
      secret = readFileSync(file, 'utf8').trim()
    } catch (err) {
      throw new UsageError(`cannot read the secret file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
    }
  }
  if (secret === undefined || secret === '') throw new UsageError('no client secret: set PTB_SECRET or PTB_SECRET_FILE, or pass --secret-file')
  return { url, secret }
}

/** What an option is called on the command line, by the API field it fills. */
const FLAG: Readonly<Record<string, string>> = { tokenId: '--token-id', all: '--all', expiresAt: '--expires', id: 'ID' }
const flag = (field: string): string => FLAG[field] ?? `--${field}`

/**
 * Checks a request against the route's own schema before anything is sent, so a mistake the broker
 * would refuse (a malformed name, `--since yesterday`) is a usage error (exit 2) found without a
 * network call, with the same rules the broker applies.
 */
function checkRequest (schema: TSchema, value: Record<string, unknown>): void {
  const first = [...Value.Errors(schema, value)][0] as { instancePath: string, keyword: string, message: string } | undefined
  if (first === undefined) return
  const field = first.instancePath.split('/')[1] ?? ''
  const given = value[field]
  const shown = typeof given === 'string' || typeof given === 'number' ? ` "${given}"` : ''
  if (first.keyword === 'format') throw new UsageError(`${flag(field)}${shown} is not a date-time: give an ISO 8601 time such as 2026-12-06T09:00:00Z`)
  if (field === 'client' || field === 'server') throw new UsageError(`${flag(field)}${shown} is not a valid name (${NAME_RULE})`)
  if (field === 'tokenId') throw new UsageError(`${flag(field)}${shown} is not a token id (tk_ followed by 22 characters)`)
  if (field === 'id') throw new UsageError(`${flag(field)}${shown} is not a proxy key id (the 12 characters after pbk_, as \`ptb proxy-key list\` shows)`)
  if (field === 'label') throw new UsageError(`${flag(field)} must be 1 to 100 characters without control characters`)
  throw new UsageError(field === '' ? first.message : `${flag(field)}${shown} ${first.message}`)
}

class ApiError extends Error {
  readonly exit: number
  constructor (message: string, exit: number) {
    super(message)
    this.exit = exit
  }
}

async function api (c: Conn, method: string, path: string, body?: unknown): Promise<unknown> {
  let res: Response
  try {
    res = await fetch(`${c.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${c.secret}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(10_000),
    })
  } catch (err) {
    throw new ApiError(`cannot reach the broker at ${c.url}: ${(err as Error).cause instanceof Error ? ((err as Error).cause as Error).message : (err as Error).message}`, EXIT.unreachable)
  }
  const text = await res.text()
  let data: unknown
  try { data = JSON.parse(text) } catch { data = text }
  if (!res.ok) {
    const e = data as { code?: string, message?: string }
    throw new ApiError(`broker answered ${res.status} ${e.code ?? ''}: ${e.message ?? text.slice(0, 200)}`, EXIT.failed)
  }
  return data
}

/** Renders rows as an aligned text table. */
export function table (headers: string[], rows: Array<Array<string | number | null | undefined>>): string {
  const cells = [headers, ...rows.map((r) => r.map((v) => (v === null || v === undefined ? '-' : String(v))))]
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => r[i]?.length ?? 0)))
  return cells.map((r) => r.map((v, i) => v.padEnd(widths[i] ?? 0)).join('  ').trimEnd()).join('\n') + '\n'
}

/**
 * A table printed in batches (`audit --follow`): every batch uses the widths of the header and all
 * rows so far, and when a batch needs wider columns the header is printed again above it, so each
 * row lines up with the header above it. The last column is never padded.
 */
export class Columns {
  readonly #headers: string[]
  #widths: number[]
  #headerShown = false
  constructor (headers: string[], minWidths: number[] = []) {
    this.#headers = headers
    this.#widths = headers.map((h, i) => Math.max(h.length, minWidths[i] ?? 0))
  }

  render (rows: Array<Array<string | number | null | undefined>>): string {
    const cells = rows.map((r) => r.map((v) => (v === null || v === undefined ? '-' : String(v))))
    const widths = this.#widths.map((w, i) => Math.max(w, ...cells.map((r) => r[i]?.length ?? 0)))
    // The last column is not padded: only a wider earlier column moves anything.
    const grew = widths.some((w, i) => i < widths.length - 1 && w !== this.#widths[i])
    this.#widths = widths
    const line = (r: string[]): string => r.map((v, i) => v.padEnd(widths[i] ?? 0)).join('  ').trimEnd()
    let out = ''
    if (!this.#headerShown || grew) out += line(this.#headers) + '\n'
    this.#headerShown = true
    return out + cells.map(line).join('\n') + '\n'
  }
}

async function revoke (argv: string[], io: OpsIo): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { ...COMMON, 'token-id': { type: 'string' }, client: { type: 'string' }, server: { type: 'string' }, source: { type: 'string' }, all: { type: 'boolean' }, reason: { type: 'string' } },
  })
  if (values.reason === undefined) throw new UsageError('--reason is required (it goes into the audit trail)')
  const body: Record<string, unknown> = { reason: values.reason }
  if (values['token-id'] !== undefined) body.tokenId = values['token-id']
  if (values.source !== undefined) body.source = values.source
  if (values.client !== undefined) body.client = values.client
  if (values.server !== undefined) body.server = values.server
  if (values.all === true) body.all = true
  checkRequest(RevokeBodySchema, body)
  try {
    parseRevokeSelector(body)
  } catch {
    throw new UsageError('give exactly one of --token-id ID, --client C, --server S, --client C --server S, --source SRC (optionally with --client and/or --server) or --all')
  }
  const c = connection(values, io.env)
  const r = await api(c, 'POST', '/v1/revoke', body) as { revoked: number, upstreamStillValidUntil: string | null }
  if (values.json === true) io.stdout.write(JSON.stringify(r) + '\n')
  else {
    io.stdout.write(`revoked ${r.revoked} token(s)\n`)
    if (r.upstreamStillValidUntil !== null) {
      io.stdout.write(`PMS has no revoke call: they stay valid at PMS until ${r.upstreamStillValidUntil} or the next PMS restart.\n`)
    }
  }
  return EXIT.ok
}

async function rotate (argv: string[], io: OpsIo): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { ...COMMON } })
  const server = positionals[0]
  if (server === undefined || positionals.length > 1) throw new UsageError('give exactly one SERVER: ptb rotate SERVER')
  if (!isName(server)) throw new UsageError(`"${server}" is not a server name (${NAME_RULE})`)
  const r = await api(connection(values, io.env), 'POST', `/v1/servers/${encodeURIComponent(server)}/rotate`) as { rotating: number }
  if (values.json === true) io.stdout.write(JSON.stringify({ server, ...r }) + '\n')
  else io.stdout.write(`rotating ${r.rotating} token(s) of ${server}: clients get the new token on their next request\n`)
  return EXIT.ok
}

interface AuditEvent { id: string, time: string, action: string, client: string | null, server: string | null, tokenId: string | null, detail: Record<string, unknown> }

function auditRows (events: AuditEvent[]): Array<Array<string | null>> {
  return events.map((e) => [e.time, e.action, e.client, e.server, e.tokenId,
    Object.keys(e.detail).length === 0 ? null : JSON.stringify(e.detail)])
}

async function audit (argv: string[], io: OpsIo): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { ...COMMON, action: { type: 'string' }, client: { type: 'string' }, server: { type: 'string' }, 'token-id': { type: 'string' }, since: { type: 'string' }, limit: { type: 'string' }, follow: { type: 'boolean', default: false } },
  })
  const q = new URLSearchParams()
  for (const k of ['action', 'client', 'server', 'since'] as const) if (values[k] !== undefined) q.set(k, values[k])
  if (values['token-id'] !== undefined) q.set('tokenId', values['token-id'])
  q.set('limit', values.limit ?? '20')
  const query: Record<string, unknown> = Object.fromEntries(q)
  if (!/^\d+$/.test(query.limit as string)) throw new UsageError(`--limit "${values.limit}" is not a whole number (1 to 1000)`)
  query.limit = Number(query.limit)
  checkRequest(AuditQuerySchema, query)
  const c = connection(values, io.env)
  // Following, leave room for typical values up front (an ISO time, the longest action, a token
  // id), so the header rarely has to be printed again for a wider column.
  const columns = new Columns(['TIME', 'ACTION', 'CLIENT', 'SERVER', 'TOKEN', 'DETAIL'], values.follow === true ? [24, 18, 12, 12, 25] : [])
  const print = (events: AuditEvent[]): void => {
    if (values.json === true) for (const e of events) io.stdout.write(JSON.stringify(e) + '\n')
    else if (events.length > 0) io.stdout.write(columns.render(auditRows(events)))
  }
  const page = await api(c, 'GET', `/v1/audit?${q.toString()}`) as { events: AuditEvent[] }
  // Oldest first on screen, like a log.
  const shown = [...page.events].reverse()
  print(shown)
  if (values.follow !== true) return EXIT.ok
  let last = shown.at(-1)?.id
  while (io.signal?.aborted !== true) {
    await new Promise((resolve) => setTimeout(resolve, io.followIntervalMs ?? 2000))
    if (io.signal !== undefined && io.signal.aborted) break
    q.set('limit', '1000')
    const next = await api(c, 'GET', `/v1/audit?${q.toString()}`) as { events: AuditEvent[] }
    const fresh = []
    for (const e of next.events) {
      if (e.id === last) break
      fresh.push(e)
    }
    fresh.reverse()
    const newest = fresh.at(-1)
    if (newest !== undefined) {
      print(fresh)
      last = newest.id
    }
  }
  return EXIT.ok
}

/** The token `trace` looks up: the first line of FILE or stdin (never argv, where `ps` would show it). */
async function tokenToTrace (file: string | undefined, io: OpsIo): Promise<string> {
  let text: string
  if (file !== undefined) {
    try {
      text = readFileSync(file, 'utf8')
    } catch (err) {
      throw new UsageError(`cannot read the token file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
    }
  } else {
    if (io.stdin === undefined || io.stdin.isTTY === true) throw new UsageError('give the token on stdin (ptb trace < file) or with --token-file FILE, not as an argument')
    const chunks: Buffer[] = []
    for await (const chunk of io.stdin) chunks.push(Buffer.from(chunk as Buffer))
    text = Buffer.concat(chunks).toString('utf8')
  }
  const token = text.trim().split(/\r?\n/)[0]?.trim() ?? ''
  if (token === '') throw new UsageError(`no token in ${file ?? 'stdin'}`)
  return token
}

interface TraceResult { fingerprint: string, holder: { client: string, server: string, tokenId: string } | null, events: AuditEvent[] }

async function trace (argv: string[], io: OpsIo): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { ...COMMON, 'token-file': { type: 'string' } } })
  // The connection first: a missing secret or a bad URL is found before stdin is read.
  const c = connection(values, io.env)
  const body = { token: await tokenToTrace(values['token-file'], io) }
  checkRequest(TraceBodySchema, body)
  const r = await api(c, 'POST', '/v1/audit/trace', body) as TraceResult
  if (values.json === true) {
    io.stdout.write(JSON.stringify(r) + '\n')
    return EXIT.ok
  }
  const h = r.holder
  io.stdout.write(`fingerprint  ${r.fingerprint}\n`)
  io.stdout.write(h === null
    ? 'holder       none known: not a token this broker issued to a client you may see, or its record is gone\n'
    : `holder       client ${h.client}, server ${h.server}, token ${h.tokenId}\n`)
  if (r.events.length > 0) io.stdout.write('\n' + table(['TIME', 'ACTION', 'CLIENT', 'SERVER', 'TOKEN', 'DETAIL'], auditRows([...r.events].reverse())))
  return EXIT.ok
}

async function servers (argv: string[], io: OpsIo): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { ...COMMON } })
  const r = await api(connection(values, io.env), 'GET', '/v1/servers') as { servers: Array<Record<string, unknown>> }
  if (values.json === true) {
    io.stdout.write(JSON.stringify(r.servers, null, 2) + '\n')
    return EXIT.ok
  }
  io.stdout.write(table(['NAME', 'STATE', 'VERSION', 'ACTIVE', 'LAST RESTART', 'ADMIN TOKEN', 'VULNERABLE', 'URL'],
    r.servers.map((s) => [s.name as string, s.state as string, s.version as string | null, s.activeTokens as number,
      s.lastRestartAt as string | null, (s.adminToken as { state: string }).state, s.vulnerable === true ? 'YES: upgrade PMS' : 'no', s.url as string])))
  return EXIT.ok
}

interface ProxyKeyView { id: string, client: string, server: string | null, label: string, createdAt: string, expiresAt: string | null, revokedAt: string | null, state: string, orphaned: string | null }

/** `--expires`: an ISO 8601 time, or a duration from now (30d, 12h); in the future and within the broker's bound. */
function expiresAt (value: string, now: number): string {
  let at: number
  if (/^\d+[a-z]/i.test(value)) {
    try {
      at = now + parseDuration(value)
    } catch (err) {
      throw new UsageError(`--expires ${(err as Error).message}, or an ISO 8601 time`)
    }
  } else {
    checkRequest(CreateProxyKeyBodySchema, { client: 'x', label: 'x', expiresAt: value })
    at = Date.parse(value)
  }
  if (!Number.isFinite(at) || at <= now) throw new UsageError(`--expires "${value}" is not in the future`)
  if (at > now + PROXY_KEY_MAX_LIFE_MS) throw new UsageError(`--expires "${value}" is more than 366 days ahead; leave it out for a key that does not expire`)
  return new Date(at).toISOString()
}

/** Audit pages read at most by `proxy-rules suggest` (1,000 events each). */
const SUGGEST_MAX_PAGES = 20

async function proxyRulesSuggest (argv: string[], io: OpsIo): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { ...COMMON, client: { type: 'string' }, since: { type: 'string' } } })
  if (values.client === undefined) throw new UsageError('give the client: --client C')
  const q = new URLSearchParams({ action: 'proxy.shadow', client: values.client, limit: '1000' })
  if (values.since !== undefined) q.set('since', values.since)
  checkRequest(AuditQuerySchema, { ...Object.fromEntries(q), limit: 1000 })
  const c = connection(values, io.env)
  const events: AuditEvent[] = []
  let cursor: string | null = null
  for (let page = 0; page < SUGGEST_MAX_PAGES; page++) {
    if (cursor !== null) q.set('cursor', cursor)
    const r = await api(c, 'GET', `/v1/audit?${q.toString()}`) as { events: AuditEvent[], next: string | null }
    events.push(...r.events)
    cursor = r.next
    if (cursor === null) break
  }
  const suggestion = suggestRules(events)
  if (values.json === true) io.stdout.write(JSON.stringify(suggestion) + '\n')
  else io.stdout.write(suggestionYaml(values.client, suggestion))
  return EXIT.ok
}

async function proxyKeyCreate (argv: string[], io: OpsIo): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { ...COMMON, client: { type: 'string' }, server: { type: 'string' }, label: { type: 'string' }, expires: { type: 'string' } } })
  if (values.client === undefined) throw new UsageError('--client is required: the client whose proxy rules the key gets')
  if (values.label === undefined) throw new UsageError('--label is required: what the key is for, e.g. --label "Tautulli on nas"')
  const body: Record<string, unknown> = { client: values.client, label: values.label }
  if (values.server !== undefined) body.server = values.server
  if (values.expires !== undefined) body.expiresAt = expiresAt(values.expires, Date.now())
  checkRequest(CreateProxyKeyBodySchema, body)
  const r = await api(connection(values, io.env), 'POST', '/v1/proxy-keys', body) as { key: string, record: ProxyKeyView }
  if (values.json === true) {
    io.stdout.write(JSON.stringify(r) + '\n')
    return EXIT.ok
  }
  // Only the key on stdout, so \`ptb proxy-key create … > key.txt\` writes a file holding just the key.
  io.stdout.write(`${r.key}\n`)
  const k = r.record
  io.stderr.write(`Proxy key ${k.id} for client ${k.client}, ${k.server === null ? 'every server of the client' : `server ${k.server}`}, ` +
    `label "${printable(k.label)}", ${k.expiresAt === null ? 'no expiry' : `expires ${k.expiresAt}`}.\n` +
    'Shown once: the broker keeps only a digest of it. Give it to the tool as its Plex token (X-Plex-Token).\n' +
    `Revoke it with: ptb proxy-key revoke ${k.id}\n`)
  return EXIT.ok
}

function proxyKeyRows (keys: ProxyKeyView[]): Array<Array<string | null>> {
  return keys.map((k) => [k.id, k.client, k.server ?? '*', printable(k.label), k.orphaned !== null && k.state === 'orphaned' ? `orphaned (${k.orphaned})` : k.state,
    k.createdAt, k.expiresAt, k.revokedAt])
}

async function proxyKeyList (argv: string[], io: OpsIo): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { ...COMMON, client: { type: 'string' } } })
  const query: Record<string, unknown> = values.client === undefined ? {} : { client: values.client }
  checkRequest(ProxyKeyListQuerySchema, query)
  const q = new URLSearchParams(query as Record<string, string>).toString()
  const r = await api(connection(values, io.env), 'GET', `/v1/proxy-keys${q === '' ? '' : `?${q}`}`) as { keys: ProxyKeyView[] }
  if (values.json === true) io.stdout.write(JSON.stringify(r.keys, null, 2) + '\n')
  else if (r.keys.length === 0) io.stdout.write(`no proxy keys${values.client === undefined ? '' : ` of client ${values.client}`}\n`)
  else io.stdout.write(table(['ID', 'CLIENT', 'SERVER', 'LABEL', 'STATE', 'CREATED', 'EXPIRES', 'REVOKED'], proxyKeyRows(r.keys)))
  return EXIT.ok
}

async function proxyKeyRevoke (argv: string[], io: OpsIo): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { ...COMMON, reason: { type: 'string' } } })
  const [id, ...extra] = positionals
  if (id === undefined || extra.length > 0) throw new UsageError('give exactly one key ID: ptb proxy-key revoke ID')
  // A whole key pasted by mistake is refused here, before it is sent anywhere or echoed back.
  if (id.startsWith('pbk_') && id.length !== 12) throw new UsageError('give the key\'s id (as `ptb proxy-key list` shows it), not the key itself')
  checkRequest(ProxyKeyParamsSchema, { id })
  const query: Record<string, unknown> = values.reason === undefined ? {} : { reason: values.reason }
  checkRequest(RevokeProxyKeyQuerySchema, query)
  const q = new URLSearchParams(query as Record<string, string>).toString()
  const r = await api(connection(values, io.env), 'DELETE', `/v1/proxy-keys/${encodeURIComponent(id)}${q === '' ? '' : `?${q}`}`) as { alreadyRevoked: boolean, record: ProxyKeyView }
  if (values.json === true) io.stdout.write(JSON.stringify(r) + '\n')
  else {
    io.stdout.write(r.alreadyRevoked
      ? `proxy key ${id} was already revoked (at ${r.record.revokedAt})\n`
      : `revoked proxy key ${id} (client ${r.record.client}, label "${printable(r.record.label)}"): refused from its next request on\n`)
  }
  return EXIT.ok
}

async function clientAdd (argv: string[], io: OpsIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: { scopes: { type: 'string', default: 'token:issue' }, servers: { type: 'string', default: '*' }, json: { type: 'boolean', default: false } },
  })
  const id = positionals[0]
  if (id === undefined || !isName(id)) throw new UsageError(`usage: ptb client add <id>   (id: ${NAME_RULE})`)
  const scopes = [...new Set(values.scopes.split(',').map((s) => s.trim()).filter(Boolean))]
  // The broker refuses to boot with an unknown scope in its config: refuse it here instead.
  const unknown = scopes.filter((s) => !(SCOPES as readonly string[]).includes(s))
  if (unknown.length > 0 || scopes.length === 0) {
    const what = unknown.length === 0 ? 'no scope given' : `unknown scope${unknown.length > 1 ? 's' : ''} ${unknown.map((s) => `"${s}"`).join(', ')}`
    throw new UsageError(`${what}; --scopes takes a comma-separated list of: ${SCOPES.join(', ')}`)
  }
  const servers = [...new Set(values.servers.split(',').map((s) => s.trim()).filter(Boolean))]
  const badServer = servers.find((s) => s !== '*' && !isName(s))
  if (servers.length === 0 || badServer !== undefined || (servers.includes('*') && servers.length > 1)) {
    throw new UsageError(`--servers takes server names (${NAME_RULE}) separated by commas, or * for all${badServer === undefined ? '' : `; got "${badServer}"`}`)
  }
  const secret = `ptb_${randomBytes(32).toString('base64url')}`
  const entry = { id, secretSha256: sha256(secret).toString('hex'), servers, scopes }
  if (values.json === true) {
    io.stdout.write(JSON.stringify({ secret, entry }) + '\n')
    return EXIT.ok
  }
  io.stdout.write(`Secret for client "${id}" (shown once; give it to the service, store it as a secret):\n\n  ${secret}\n\n`)
  io.stdout.write('Add this entry under `clients:` in the broker config (it holds only a digest of the secret):\n\n')
  io.stdout.write(stringify([entry]).replace(/^/gm, '  ') + '\n')
  return EXIT.ok
}

/** The three `proxy-key` subcommands' usage, for `ptb proxy-key --help` and a missing subcommand. */
export function proxyKeyUsage (): string {
  return ['proxy-key create', 'proxy-key list', 'proxy-key revoke'].map((n) => (OPS_COMMAND_USAGE[n] ?? n).replace(CONN_HELP, '')).join('\n') + CONN_HELP
}

export const OPS_USAGE = `Ops commands (talk to a running broker; PTB_URL, PTB_SECRET or PTB_SECRET_FILE):
${Object.values(OPS_COMMAND_USAGE).map((u) => `  ${u.slice(0, u.indexOf('\n'))}\n`).join('')}`

/** Runs an ops command; `undefined` when `argv` is not one (the caller tries its other commands). */
export async function runOpsCommand (argv: string[], io: OpsIo): Promise<number | undefined> {
  const [cmd, sub, ...rest] = argv
  const name = cmd === 'client' && sub === 'add' ? 'client add' : cmd === 'proxy-key' || cmd === 'proxy-rules' ? `${cmd} ${sub}` : cmd
  try {
    if (cmd === 'proxy-key') {
      if (sub === 'create') return await proxyKeyCreate(rest, io)
      if (sub === 'list') return await proxyKeyList(rest, io)
      if (sub === 'revoke') return await proxyKeyRevoke(rest, io)
      throw new UsageError(sub === undefined ? 'give a subcommand: create, list or revoke' : `unknown subcommand "${sub}": create, list or revoke`)
    }
    if (cmd === 'proxy-rules') {
      if (sub === 'suggest') return await proxyRulesSuggest(rest, io)
      throw new UsageError(sub === undefined ? 'give a subcommand: suggest' : `unknown subcommand "${sub}": suggest`)
    }
    if (cmd === 'revoke') return await revoke(argv.slice(1), io)
    if (cmd === 'rotate') return await rotate(argv.slice(1), io)
    if (cmd === 'audit') return await audit(argv.slice(1), io)
    if (cmd === 'trace') return await trace(argv.slice(1), io)
    if (cmd === 'servers' && (sub === undefined || sub.startsWith('-'))) return await servers(argv.slice(1), io)
    if (cmd === 'client' && sub === 'add') return await clientAdd(rest, io)
  } catch (err) {
    if (err instanceof ApiError) {
      io.stderr.write(`ptb: ${err.message}\n`)
      return err.exit
    }
    if (err instanceof UsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS') === true) {
      io.stderr.write(`ptb: ${(err as Error).message}\n\nUsage: ${(name === undefined ? undefined : OPS_COMMAND_USAGE[name]) ?? (cmd === 'proxy-key' ? proxyKeyUsage() : OPS_USAGE)}`)
      return EXIT.usage
    }
    throw err
  }
  return undefined
}
