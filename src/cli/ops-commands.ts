/**
 * The ops half of the `ptb` CLI: revoke, audit, servers (over the broker's HTTP API) and
 * `client add` (offline). Human-readable tables by default, `--json` for scripts.
 * The broker URL comes from `--url` or PTB_URL; the ops client's secret from `--secret-file`,
 * PTB_SECRET_FILE or PTB_SECRET (never from argv, where `ps` would show it).
 */
import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { stringify } from 'yaml'
import { sha256 } from '../broker/crypto.ts'

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

async function revoke (argv: string[], io: OpsIo): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { ...COMMON, 'token-id': { type: 'string' }, client: { type: 'string' }, server: { type: 'string' }, all: { type: 'boolean' }, reason: { type: 'string' } },
  })
  if (values.reason === undefined) throw new UsageError('--reason is required (it goes into the audit trail)')
  const body: Record<string, unknown> = { reason: values.reason }
  if (values['token-id'] !== undefined) body.tokenId = values['token-id']
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
  const headers = ['TIME', 'ACTION', 'CLIENT', 'SERVER', 'TOKEN', 'DETAIL']
  const print = (events: AuditEvent[], withHeader: boolean): void => {
    if (values.json === true) for (const e of events) io.stdout.write(JSON.stringify(e) + '\n')
    else if (events.length > 0) {
      const out = table(headers, auditRows(events))
      io.stdout.write(withHeader ? out : out.split('\n').slice(1).join('\n'))
    }
  }
  const page = await api(c, 'GET', `/v1/audit?${q.toString()}`) as { events: AuditEvent[] }
  // Oldest first on screen, like a log.
  const shown = [...page.events].reverse()
  print(shown, true)
  if (values.follow !== true) return EXIT.ok
  let last = shown.length > 0 ? shown[shown.length - 1].id : undefined
  while (io.signal?.aborted !== true) {
    await new Promise((r) => setTimeout(r, io.followIntervalMs ?? 2000))
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
      print(fresh, last === undefined)
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

const ID = /^[a-z0-9][a-z0-9_-]{0,62}$/

async function clientAdd (argv: string[], io: OpsIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: { scopes: { type: 'string', default: 'token:issue' }, servers: { type: 'string', default: '*' }, json: { type: 'boolean', default: false } },
  })
  const id = positionals[0]
  if (id === undefined || !ID.test(id)) throw new UsageError('usage: ptb client add <id>   (id: lowercase letters, digits, _ and -)')
  const secret = `ptb_${randomBytes(32).toString('base64url')}`
  const entry = {
    id,
    secretSha256: sha256(secret).toString('hex'),
    servers: values.servers.split(',').map((s) => s.trim()).filter(Boolean),
    scopes: values.scopes.split(',').map((s) => s.trim()).filter(Boolean),
  }
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
  ptb revoke (--token-id ID | --client C [--server S] | --server S | --all) --reason TEXT [--json]
  ptb audit [--action A] [--client C] [--server S] [--token-id ID] [--since ISO] [--limit N] [--follow] [--json]
  ptb servers [--json]
  ptb client add <id> [--scopes token:issue,...] [--servers a,b|*] [--json]   (offline: prints a new secret and config entry)
`

/** Runs an ops command; `undefined` when `argv` is not one (the caller tries its other commands). */
export async function runOpsCommand (argv: string[], io: OpsIo): Promise<number | undefined> {
  const [cmd, sub, ...rest] = argv
  try {
    if (cmd === 'revoke') return await revoke(argv.slice(1), io)
    if (cmd === 'audit') return await audit(argv.slice(1), io)
    if (cmd === 'servers' && (sub === undefined || sub.startsWith('-'))) return await servers(argv.slice(1), io)
    if (cmd === 'client' && sub === 'add') return await clientAdd(rest, io)
  } catch (err) {
    if (err instanceof ApiError) {
      io.stderr.write(`ptb: ${err.message}\n`)
      return err.exit
    }
    if (err instanceof UsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS') === true) {
      io.stderr.write(`ptb: ${(err as Error).message}\n\n${OPS_USAGE}`)
      return EXIT.usage
    }
    throw err
  }
  return undefined
}
