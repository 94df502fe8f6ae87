#!/usr/bin/env node
/**
 * `ptb`: the ops command line of plex-token-broker. The plex.tv half lives here:
 *   ptb login       plex.tv PIN flow (or --password) → account token file (0600)
 *   ptb servers discover   the account's servers as ready `servers:` config entries
 *   ptb claim       claim a fresh, unclaimed PMS for the account
 * and the broker half (revoke, rotate, audit, trace, servers, proxy-key, client add) in ops-commands.ts.
 * PLEX_TV_URL overrides https://plex.tv (the tests point it at the plex.tv simulator, which models
 * the PIN, sign-in and claim behaviour and status codes relied on here).
 */
import { randomBytes, randomUUID } from 'node:crypto'
import { closeSync, constants, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs'
import { homedir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { createInterface } from 'node:readline'
import { setTimeout as sleep } from 'node:timers/promises'
import { parseArgs } from 'node:util'
import { request } from 'undici'
import { Document, type YAMLMap, type YAMLSeq } from 'yaml'
import { DEFAULT_PLEX_TV_URL, PLEX_TV_CODES, PlexTv, PlexTvError, PlexTvUnreachableError, type Resource } from '../plex/plextv.ts'
import { plexTvUrlProblem } from '../config/index.ts'
import { EXIT, OPS_COMMAND_USAGE, OPS_USAGE, proxyKeyUsage, runOpsCommand } from './ops-commands.ts'
import { VERSION } from '../version.ts'
import { printable } from './printable.ts'

export interface CliIo {
  stdout: { write: (s: string) => unknown }
  stderr: { write: (s: string) => unknown }
  /** Answers for `login --password` when there is no `prompt` (one per line: user, password, 2FA code). */
  stdin?: NodeJS.ReadableStream
  env: Record<string, string | undefined>
  /** Asks a question on a terminal; `secret` answers are not echoed. */
  prompt?: (question: string, opts: { secret: boolean }) => Promise<string>
  /** PIN poll interval (docs/plex-api.md §5: about once a second). Tests shorten it. */
  pollIntervalMs?: number
  /** Gives up polling after this long even if plex.tv gave no expiry. Default 30 min, a strong PIN's life. */
  pollTimeoutMs?: number
  /** Stops a running login (Ctrl-C). */
  signal?: AbortSignal
}

/** The plex.tv commands' own usage: the first line goes into `ptb help`, all of it into `ptb CMD --help`. */
const PLEX_COMMAND_USAGE: Readonly<Record<string, string>> = {
  login: `ptb login [--out FILE] [--print] [--password [--user NAME]]
Sign in with a PIN: open the printed link, approve, and the account token is written to FILE
(default ~/.config/plex-token-broker/token, mode 0600) or printed with --print. --password
asks for username, password (never an argument) and a 2FA code when plex.tv wants one.
  --out FILE           where to write the token (its client id is kept next to it)
  --print              print the token on stdout instead (prompts go to stderr)
  --password           sign in with username and password instead of a PIN
  --user NAME          the username, so only the password is asked
`,
  'servers discover': `ptb servers discover [--token-file FILE]
The account's own servers as \`servers:\` entries for the broker config (contains secrets).
  --token-file FILE    the account token (default ~/.config/plex-token-broker/token)
`,
  claim: `ptb claim --pms URL [--token-file FILE]
Claim an unclaimed PMS (e.g. a fresh container) for the account. Run it on the PMS host or subnet.
  --pms URL            the PMS base URL, e.g. http://127.0.0.1:32400
  --token-file FILE    the account token (default ~/.config/plex-token-broker/token)
`,
}

/** A command's synopsis and description without its option list, indented for `ptb help`. */
function summary (usage: string): string {
  const [synopsis, ...rest] = usage.trimEnd().split('\n')
  return [`  ${synopsis}`, ...rest.filter((l) => !l.startsWith(' ')).map((l) => `      ${l}`)].join('\n') + '\n'
}

const USAGE = `Usage: ptb <command> [--help]

plex.tv commands (PLEX_TV_URL, default ${DEFAULT_PLEX_TV_URL}):
${Object.values(PLEX_COMMAND_USAGE).map(summary).join('')}  ptb help | ptb --version

${OPS_USAGE}
Exit codes: 0 ok, 1 refused or failed, 2 usage error, 3 unreachable.
`

/** The usage of the command `argv` names (`servers discover`, `client add`, `revoke`, …), if any. */
function commandUsage (argv: string[]): string | undefined {
  const [cmd, sub] = argv
  const all = { ...PLEX_COMMAND_USAGE, ...OPS_COMMAND_USAGE }
  const two = `${cmd} ${sub}`
  if (Object.hasOwn(all, two)) return all[two]
  if (cmd === 'client') return all['client add']
  if (cmd === 'proxy-key') return proxyKeyUsage()
  if (cmd === 'proxy-rules') return all['proxy-rules suggest']
  return cmd !== undefined && Object.hasOwn(all, cmd) ? all[cmd] : undefined
}

class CliError extends Error {
  readonly exit: number
  constructor (message: string, exit: number = EXIT.failed) {
    super(message)
    this.exit = exit
  }
}

/** ~/.config/plex-token-broker/token, honouring XDG_CONFIG_HOME. */
function defaultTokenFile (env: CliIo['env']): string {
  const config = env.XDG_CONFIG_HOME ?? join(env.HOME ?? homedir(), '.config')
  return join(config, 'plex-token-broker', 'token')
}

const clientIdFile = (tokenFile: string): string => join(dirname(tokenFile), 'client-id')

/**
 * plex.tv keeps one token per account and client identifier (docs/plex-api.md §1): a new id on every
 * login would leave the old tokens orphaned in the account's device list. `login` creates the id
 * once next to the token file and reuses it; the read-only commands use it when it exists.
 */
function clientIdentifier (tokenFile: string, create: boolean): string {
  const file = clientIdFile(tokenFile)
  try {
    const id = readFileSync(file, 'utf8').trim()
    if (id !== '') return id
  } catch {}
  const id = `ptb-${randomUUID()}`
  if (create) writePrivate(file, `${id}\n`)
  return id
}

/**
 * Written beside, then renamed over: the file is 0600 from its first byte, even when it existed
 * before. The temporary name is random and opened with O_CREAT|O_EXCL|O_NOFOLLOW, so a file or
 * symlink planted at a guessed name makes the write fail instead of redirecting the token into
 * another file; rename(2) then replaces the target itself (a symlink there is replaced, not followed).
 */
function writePrivate (file: string, content: string): void {
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 })
  const tmp = `${file}.${randomBytes(12).toString('hex')}.tmp`
  let fd: number | undefined
  try {
    fd = openSync(tmp, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY | (constants.O_NOFOLLOW ?? 0), 0o600)
  } catch (err) {
    throw new CliError(`cannot write ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
  }
  try {
    writeSync(fd, content)
    fsyncSync(fd)
    closeSync(fd)
    fd = undefined
    renameSync(tmp, file)
  } catch (err) {
    if (fd !== undefined) closeSync(fd)
    rmSync(tmp, { force: true })
    throw new CliError(`cannot write ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
  }
}

function plexTv (io: CliIo, clientId: string): PlexTv {
  const baseUrl = io.env.PLEX_TV_URL ?? DEFAULT_PLEX_TV_URL
  const problem = plexTvUrlProblem(baseUrl)
  if (problem !== undefined) throw new CliError(`PLEX_TV_URL ${problem}`, EXIT.usage)
  return new PlexTv({ baseUrl, clientIdentifier: clientId, product: 'plex-token-broker (ptb)', timeoutMs: 15_000 })
}

function readToken (file: string): string {
  try {
    const t = readFileSync(file, 'utf8').trim()
    if (t !== '') return t
  } catch {}
  throw new CliError(`no account token in ${file}: run \`ptb login\` first (or pass --token-file)`)
}

/** Turns what went wrong into a message for a person; never includes a token or password. */
function explain (err: unknown): CliError {
  if (err instanceof CliError) return err
  if (err instanceof PlexTvUnreachableError) {
    return new CliError(`${err.message}. Check the network, proxy settings or PLEX_TV_URL, then try again.`, EXIT.unreachable)
  }
  if (err instanceof PlexTvError) {
    switch (err.code) {
      case PLEX_TV_CODES.signInLockout:
        return new CliError('plex.tv refuses sign-ins from this address for now (code 1031: repeated failures). ' +
          'Not retrying, since every attempt extends the lockout. Wait a while (often an hour or more), or use ' +
          '`ptb login` without --password: the PIN flow is approved in a browser where you are already signed in.')
      case PLEX_TV_CODES.pinNotFound:
        return new CliError('The PIN expired before it was approved (code 1020). Run `ptb login` again and approve the new link.')
      case PLEX_TV_CODES.notAuthenticated:
        return new CliError('plex.tv no longer accepts the stored account token (code 1001). Run `ptb login` again.')
      case PLEX_TV_CODES.clientIdMissing:
        return new CliError(`plex.tv wants a client identifier (code 1000): ${err.message}`)
    }
    if (err.status === 429) {
      const wait = err.retryAfterMs === undefined ? 'a minute' : `${Math.max(1, Math.ceil(err.retryAfterMs / 1000))} s`
      return new CliError(`plex.tv is rate limiting this address (429). Wait ${wait} and try again.`)
    }
    if (err.status === 401) return new CliError(`plex.tv rejected the account token (${err.message}). Run \`ptb login\` again.`)
    return new CliError(err.message)
  }
  return new CliError((err as Error).message)
}

/** Answers come from `io.prompt` on a terminal, else one line each from stdin (never from argv). */
class Answers {
  readonly #io: CliIo
  #lines: AsyncIterator<string> | undefined
  constructor (io: CliIo) { this.#io = io }

  async ask (question: string, secret: boolean): Promise<string> {
    if (this.#io.prompt !== undefined) return (await this.#io.prompt(question, { secret })).trim()
    if (this.#io.stdin === undefined) throw new CliError('no terminal or stdin to read the answer from', EXIT.usage)
    this.#lines ??= createInterface({ input: this.#io.stdin, terminal: false })[Symbol.asyncIterator]()
    const next = await this.#lines.next()
    if (next.done === true) throw new CliError(`no answer for "${question.replace(/:\s*$/, '')}" on stdin`, EXIT.usage)
    return next.value.trim()
  }

  async close (): Promise<void> { await this.#lines?.return?.() }
}

async function login (argv: string[], io: CliIo): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      out: { type: 'string' },
      print: { type: 'boolean', default: false },
      password: { type: 'boolean', default: false },
      user: { type: 'string' },
    },
  })
  if (values.user !== undefined && !values.password) throw new CliError('--user goes with --password', EXIT.usage)
  const file = resolve(values.out ?? defaultTokenFile(io.env))
  const tv = plexTv(io, clientIdentifier(file, true))
  const answers = new Answers(io)
  try {
    const token = values.password ? await passwordLogin(tv, answers, values.user) : await pinLogin(tv, io)
    // Who signed in: a check that the token works, and what a person wants to see. Not fatal.
    const who = await tv.user(token).then((u) => ` as ${u.username !== '' ? u.username : u.email}`, () => '')
    if (values.print) {
      io.stderr.write(`Signed in${who}.\n`)
      io.stdout.write(`${token}\n`)
    } else {
      writePrivate(file, `${token}\n`)
      io.stdout.write(`Signed in${who}. Account token written to ${file} (mode 0600).\n` +
        'Next: `ptb servers discover` prints your servers as broker config entries.\n')
    }
    return EXIT.ok
  } finally {
    await answers.close()
    await tv.close()
  }
}

/** docs/plex-api.md §5: create a strong PIN, send the person to app.plex.tv, poll until approved or expired. */
async function pinLogin (tv: PlexTv, io: CliIo): Promise<string> {
  const pin = await tv.createPin()
  io.stderr.write(`Open this link in a browser and approve the sign-in:\n\n  ${tv.authUrl(pin)}\n\nCode: ${pin.code}\nWaiting for approval…\n`)
  const interval = io.pollIntervalMs ?? 1000
  const expiresAt = pin.expiresAt === null ? Number.NaN : Date.parse(pin.expiresAt)
  const deadline = Math.min(Number.isNaN(expiresAt) ? Infinity : expiresAt + 5000, Date.now() + (io.pollTimeoutMs ?? 30 * 60_000))
  let unreachable = 0
  let noted429 = false
  let wait = interval
  for (;;) {
    try {
      await sleep(wait, undefined, { signal: io.signal })
    } catch {
      throw new CliError('Login cancelled.')
    }
    wait = interval
    if (Date.now() > deadline) throw new CliError('The PIN expired before it was approved. Run `ptb login` again and approve the new link.')
    try {
      const p = await tv.checkPin(pin.id)
      unreachable = 0
      if (p.authToken !== null) return p.authToken
    } catch (err) {
      // One bad poll should not throw away a PIN the person may be approving right now.
      if (err instanceof PlexTvError && err.status === 429) {
        wait = Math.min(Math.max(err.retryAfterMs ?? 5000, interval), 60_000)
        if (!noted429) io.stderr.write(`plex.tv is rate limiting (429); polling again in ${Math.ceil(wait / 1000)} s…\n`)
        noted429 = true
        continue
      }
      if (err instanceof PlexTvUnreachableError && ++unreachable < 5) {
        io.stderr.write(`${err.message}; still waiting…\n`)
        wait = Math.min(interval * 2 ** unreachable, 10_000)
        continue
      }
      throw err
    }
  }
}

/**
 * docs/plex-api.md §5. One attempt, plus one with the 2FA code when plex.tv asks for it (1029).
 * Never a loop: plex.tv locks out an address after repeated failures (1031), and each further
 * attempt only prolongs that.
 */
async function passwordLogin (tv: PlexTv, answers: Answers, user: string | undefined): Promise<string> {
  const login = user ?? await answers.ask('plex.tv username or email: ', false)
  if (login === '') throw new CliError('no username given', EXIT.usage)
  const password = await answers.ask('plex.tv password: ', true)
  if (password === '') throw new CliError('no password given', EXIT.usage)
  try {
    return await tv.signIn(login, password)
  } catch (err) {
    if (err instanceof PlexTvError && err.code === PLEX_TV_CODES.notAuthenticated) {
      throw new CliError('plex.tv did not accept this username and password (code 1001). Not retrying: repeated failures ' +
        'lock this address out (code 1031). Check them, or use `ptb login` without --password.')
    }
    if (!(err instanceof PlexTvError && err.code === PLEX_TV_CODES.twoFactorRequired)) throw err
  }
  const code = await answers.ask('Two-factor code: ', false)
  if (code === '') throw new CliError('no two-factor code given', EXIT.usage)
  try {
    return await tv.signIn(login, password, code)
  } catch (err) {
    if (err instanceof PlexTvError && err.code === PLEX_TV_CODES.twoFactorRequired) {
      throw new CliError('plex.tv did not accept the two-factor code (code 1029). Not retrying: run `ptb login --password` again with a fresh code.')
    }
    throw err
  }
}

/** A config `name` (NAME_PATTERN, `src/config/names.ts`), unique within the output. */
function configName (name: string, taken: Set<string>): string {
  const base = name.toLowerCase().normalize('NFKD').replace(/[^a-z0-9_-]+/g, '-').replace(/^[-_]+|-+$/g, '').slice(0, 56) || 'server'
  let n = base
  for (let i = 2; taken.has(n); i++) n = `${base}-${i}`
  taken.add(n)
  return n
}

const kind = (c: { local: boolean, relay: boolean }): string => (c.relay ? 'relay' : c.local ? 'local' : 'remote')

async function discover (argv: string[], io: CliIo): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { 'token-file': { type: 'string' } } })
  const file = resolve(values['token-file'] ?? defaultTokenFile(io.env))
  const token = readToken(file)
  const tv = plexTv(io, clientIdentifier(file, false))
  let all: Resource[]
  try {
    all = await tv.resources(token)
  } finally {
    await tv.close()
  }
  const servers = all.filter((r) => r.provides.split(',').includes('server'))
  // A shared server's accessToken is a share token: it cannot mint admin-level transient tokens.
  const usable = servers.flatMap((s) => {
    const [first, ...others] = s.connections
    return s.owned && s.accessToken !== null && first !== undefined ? [{ s, first, others }] : []
  })
  for (const s of servers) {
    if (!s.owned) io.stderr.write(`# skipped "${printable(s.name)}": shared with this account, not owned (its token is not an admin token)\n`)
    else if (s.accessToken === null) io.stderr.write(`# skipped "${printable(s.name)}": plex.tv sent no access token for it\n`)
    else if (s.connections.length === 0) io.stderr.write(`# skipped "${printable(s.name)}": plex.tv knows no connection for it (is it online?)\n`)
  }
  if (usable.length === 0) {
    io.stderr.write('No servers owned by this account were found. A fresh server must be claimed first: `ptb claim --pms URL`.\n')
    return EXIT.failed
  }
  const taken = new Set<string>()
  const doc = new Document({
    servers: usable.map(({ s, first }) => ({ name: configName(s.name, taken), url: first.uri, token: s.accessToken })),
  })
  doc.commentBefore = ' Generated by `ptb servers discover`. Contains admin tokens: keep it private (chmod 600),\n' +
    ' or move each token to a file and use `tokenFile:` instead of `token:`.'
  const seq = doc.get('servers') as YAMLSeq<YAMLMap>
  usable.forEach(({ s, first, others }, i) => {
    // The document was built from `usable` just above: one item per entry, in its order.
    const item = seq.items[i]!
    // Names, ids and addresses come from plex.tv (a shared server's name from another user): printable only.
    const listed = others.map((c) => `${printable(c.uri)} (${kind(c)})`)
    item.commentBefore = ` "${printable(s.name)}" (${printable(s.clientIdentifier)})${listed.length > 0 ? `; other connections: ${listed.join(', ')}` : ''}`
    ;(item.get('url', true) as { comment?: string }).comment = ` ${kind(first)}`
  })
  io.stderr.write('Warning: the output contains admin tokens. Store it like a password.\n')
  io.stdout.write(doc.toString())
  return EXIT.ok
}

/** `GET {pms}/identity` (unauthenticated, docs/plex-api.md §4): whether the server is claimed already. */
async function identity (pms: string): Promise<{ claimed: boolean, machineIdentifier: string } | undefined> {
  let res
  try {
    res = await request(new URL('identity', pms), { headers: { accept: 'application/json' }, signal: AbortSignal.timeout(10_000) })
  } catch (err) {
    throw new CliError(`PMS at ${pms.replace(/\/+$/, '')} did not answer: ${(err as { code?: string }).code ?? (err as Error).name}. Check the URL and that ptb runs on the PMS host or its subnet.`, EXIT.unreachable)
  }
  const text = await res.body.text().catch(() => '')
  if (res.statusCode !== 200) return undefined
  try {
    const mc = (JSON.parse(text) as { MediaContainer?: { claimed?: unknown, machineIdentifier?: unknown } }).MediaContainer
    return { claimed: mc?.claimed === true || mc?.claimed === '1' || mc?.claimed === 1, machineIdentifier: String(mc?.machineIdentifier ?? '') }
  } catch {
    const attr = (n: string): string => new RegExp(`\\s${n}="([^"]*)"`).exec(text)?.[1] ?? ''
    return text.includes('<MediaContainer') ? { claimed: attr('claimed') === '1', machineIdentifier: attr('machineIdentifier') } : undefined
  }
}

/**
 * What PMS's answer to `POST /myplex/claim` means. docs/plex-api.md §5 documents only success (200,
 * the /myplex/account container) and that claiming works only for an unclaimed server on
 * localhost or the same subnet; the failure meanings below are our reading of PMS's usual codes.
 */
const CLAIM_FAILURES: Record<number, string> = {
  400: 'PMS rejected the claim token (claim tokens live only a few minutes). Run `ptb claim` again',
  401: 'PMS refused: claiming works only from localhost or the server\'s own subnet, on an unclaimed server. Run ptb on the PMS host (or set PLEX_CLAIM on a fresh pms-docker container)',
  403: 'PMS refused: the server is already claimed, or this address is not on its subnet. Sign the server out first (Settings → General), or run ptb on the PMS host',
  404: 'PMS has no claim endpoint at this URL. Is it a Plex Media Server, and is the URL its base (http://host:32400)?',
}

async function claim (argv: string[], io: CliIo): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { pms: { type: 'string' }, 'token-file': { type: 'string' } } })
  if (values.pms === undefined || !/^https?:\/\/[^/]/.test(values.pms)) throw new CliError('usage: ptb claim --pms http://<pms-host>:32400 [--token-file FILE]', EXIT.usage)
  const pms = values.pms.endsWith('/') ? values.pms : `${values.pms}/`
  const file = resolve(values['token-file'] ?? defaultTokenFile(io.env))
  const token = readToken(file)
  const clientId = clientIdentifier(file, false)
  const tv = plexTv(io, clientId)
  try {
    const before = await identity(pms)
    if (before?.claimed === true) {
      const mine = (await tv.resources(token)).some((r) => r.owned && r.clientIdentifier === before.machineIdentifier)
      if (mine) {
        io.stdout.write(`${values.pms} is already claimed by this account. Nothing to do; \`ptb servers discover\` prints its config entry.\n`)
        return EXIT.ok
      }
      throw new CliError(`${values.pms} is already claimed by another account. Sign it out first (Settings → General), then run \`ptb claim\` again.`)
    }
    const claimToken = await tv.claimToken(token)
    const url = new URL('myplex/claim', pms)
    url.searchParams.set('token', claimToken)
    let status: number
    try {
      // PMS exchanges the claim token with plex.tv before it answers: allow it time.
      const res = await request(url, {
        method: 'POST',
        headers: { accept: 'application/json', 'x-plex-client-identifier': clientId, 'x-plex-product': 'plex-token-broker (ptb)' },
        signal: AbortSignal.timeout(30_000),
      })
      await res.body.dump()
      status = res.statusCode
    } catch (err) {
      // The URL carries the claim token: report the PMS base only.
      throw new CliError(`PMS at ${values.pms} did not answer the claim: ${(err as { code?: string }).code ?? (err as Error).name}.`, EXIT.unreachable)
    }
    if (status >= 200 && status < 300) {
      const after = await identity(pms).catch(() => undefined)
      const id = after?.machineIdentifier === undefined || after.machineIdentifier === '' ? '' : ` (machine ${after.machineIdentifier})`
      io.stdout.write(`Claimed ${values.pms}${id} for this account. Next: \`ptb servers discover\` prints its config entry.\n`)
      return EXIT.ok
    }
    const why = CLAIM_FAILURES[status] ?? (status >= 500
      ? 'PMS could not complete the claim with plex.tv. Check that PMS can reach plex.tv, and its log (Plex Media Server.log)'
      : 'unexpected answer from PMS')
    throw new CliError(`Claim failed (HTTP ${status}): ${why}.`)
  } finally {
    await tv.close()
  }
}

export async function main (argv: string[], io: CliIo): Promise<number> {
  const [cmd, sub, ...rest] = argv
  try {
    if (cmd === undefined) {
      io.stderr.write(USAGE)
      return EXIT.usage
    }
    if (cmd === '--version' || cmd === '-V' || cmd === 'version') {
      io.stdout.write(`${VERSION}\n`)
      return EXIT.ok
    }
    if (cmd === 'help' || argv.includes('--help') || argv.includes('-h')) {
      // `ptb revoke --help`, `ptb help revoke`: that command's usage; otherwise all of them.
      const own = commandUsage(cmd === 'help' ? argv.slice(1) : argv)
      io.stdout.write(own === undefined ? USAGE : `Usage: ${own}`)
      return EXIT.ok
    }
    if (cmd === 'login') return await login(argv.slice(1), io)
    if (cmd === 'servers' && sub === 'discover') return await discover(rest, io)
    if (cmd === 'claim') return await claim(argv.slice(1), io)
    const ops = await runOpsCommand(argv, io)
    if (ops !== undefined) return ops
    io.stderr.write(`ptb: unknown command "${argv.join(' ')}"\n\n${USAGE}`)
    return EXIT.usage
  } catch (err) {
    const code = (err as { code?: unknown }).code
    if (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS')) {
      io.stderr.write(`ptb: ${(err as Error).message}\n\n${USAGE}`)
      return EXIT.usage
    }
    const e = explain(err)
    io.stderr.write(`ptb: ${e.message}\n`)
    return e.exit
  }
}

/**
 * A terminal prompt on stderr (stdout stays clean for `--print`). Secret answers are not echoed:
 * readline runs the terminal raw and everything it would echo goes through `_writeToOutput`.
 */
function terminalPrompt (question: string, opts: { secret: boolean }): Promise<string> {
  return new Promise((resolve) => {
    const rl = createInterface({ input: process.stdin, output: process.stderr, terminal: true })
    if (opts.secret) {
      const out = rl as unknown as { _writeToOutput: (s: string) => void }
      out._writeToOutput = (s: string) => { if (s.includes(question)) process.stderr.write(question) }
    }
    // Raw mode swallows Ctrl-C: readline reports it here, and without a listener it would only pause.
    rl.once('SIGINT', () => {
      rl.close()
      process.stderr.write('\n')
      process.exit(130)
    })
    rl.question(question, (answer) => {
      rl.close()
      if (opts.secret) process.stderr.write('\n')
      resolve(answer)
    })
  })
}

if (import.meta.main) {
  // `ptb audit | head`: once the reader is gone, the rest of the output has nowhere to go. That is
  // the reader's choice, not a failure: stop quietly with status 0 instead of an EPIPE stack.
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE') process.exit(EXIT.ok)
      throw err
    })
  }
  process.exitCode = await main(process.argv.slice(2), {
    stdout: process.stdout,
    stderr: process.stderr,
    stdin: process.stdin,
    env: process.env,
    prompt: process.stdin.isTTY === true ? terminalPrompt : undefined,
  })
}
