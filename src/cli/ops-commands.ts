/**
 * The ops half of the `ptb` CLI: revoke, rotate, audit, servers (over the broker's HTTP API) and
 * `client add` (offline). Human-readable tables by default, `--json` for scripts.
 * The broker URL comes from `--url` or PTB_URL; the ops client's secret from `--secret-file`,
 * PTB_SECRET_FILE or PTB_SECRET (never from argv, where `ps` would show it).
 */
import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { stringify } from 'yaml'
import { sha256 } from '../broker/crypto.ts'
import { SCOPES } from '../config/index.ts'
import { isName, NAME_RULE } from '../config/names.ts'

export interface OpsIo {
  stdout: { write: (s: string) => unknown }
  stderr: { write: (s: string) => unknown }
  env: Record<string, string | undefined>
  /** For `audit --follow`: stops following when aborted. */
  signal?: AbortSignal
  /** Poll interval of `audit --follow` (tests shorten it). */
  followIntervalMs?: number
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
  servers: `ptb servers [--json]
The PMS servers the broker serves: state, version, active tokens, admin token health (scope server:read).
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
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => r[i].length)))
  return cells.map((r) => r.map((v, i) => v.padEnd(widths[i])).join('  ').trimEnd()).join('\n') + '\n'
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
    const widths = this.#widths.map((w, i) => Math.max(w, ...cells.map((r) => r[i].length)))
    // The last column is not padded: only a wider earlier column moves anything.
    const grew = widths.some((w, i) => i < widths.length - 1 && w !== this.#widths[i])
    this.#widths = widths
    const line = (r: string[]): string => r.map((v, i) => v.padEnd(widths[i])).join('  ').trimEnd()
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
  const r = await api(connection(values, io.env), 'POST', '/v1/revoke', body) as { revoked: number, upstreamStillValidUntil: string | null }
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
  const c = connection(values, io.env)
  const q = new URLSearchParams()
  for (const k of ['action', 'client', 'server', 'since'] as const) if (values[k] !== undefined) q.set(k, values[k])
  if (values['token-id'] !== undefined) q.set('tokenId', values['token-id'])
  q.set('limit', values.limit ?? '20')
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
  let last = shown.length > 0 ? shown[shown.length - 1].id : undefined
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
    if (fresh.length > 0) {
      print(fresh)
      last = fresh[fresh.length - 1].id
    }
  }
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

export const OPS_USAGE = `Ops commands (talk to a running broker; PTB_URL, PTB_SECRET or PTB_SECRET_FILE):
${Object.values(OPS_COMMAND_USAGE).map((u) => `  ${u.slice(0, u.indexOf('\n'))}\n`).join('')}`

/** Runs an ops command; `undefined` when `argv` is not one (the caller tries its other commands). */
export async function runOpsCommand (argv: string[], io: OpsIo): Promise<number | undefined> {
  const [cmd, sub, ...rest] = argv
  const name = cmd === 'client' && sub === 'add' ? 'client add' : cmd
  try {
    if (cmd === 'revoke') return await revoke(argv.slice(1), io)
    if (cmd === 'rotate') return await rotate(argv.slice(1), io)
    if (cmd === 'audit') return await audit(argv.slice(1), io)
    if (cmd === 'servers' && (sub === undefined || sub.startsWith('-'))) return await servers(argv.slice(1), io)
    if (cmd === 'client' && sub === 'add') return await clientAdd(rest, io)
  } catch (err) {
    if (err instanceof ApiError) {
      io.stderr.write(`ptb: ${err.message}\n`)
      return err.exit
    }
    if (err instanceof UsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS') === true) {
      io.stderr.write(`ptb: ${(err as Error).message}\n\nUsage: ${OPS_COMMAND_USAGE[name] ?? OPS_USAGE}`)
      return EXIT.usage
    }
    throw err
  }
  return undefined
}
