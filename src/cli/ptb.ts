#!/usr/bin/env node
/**
 * `ptb`: the ops command line of plex-token-broker.
 *   ptb login [--print] [--out FILE] [--password]   plex.tv PIN (or password) login → account token file (0600)
 *   ptb servers discover [--token-file FILE]         the account's servers as ready config entries
 *   ptb claim --pms URL [--token-file FILE]          claim an unclaimed PMS with the account
 *   ptb revoke | audit | servers | client add        talk to a running broker (see ops-commands.ts)
 * PLEX_TV_URL overrides https://plex.tv (tests use the plex.tv simulator).
 */
import { randomUUID } from 'node:crypto'
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { dirname, join } from 'node:path'
import { createInterface } from 'node:readline'
import { parseArgs } from 'node:util'
import { request } from 'undici'
import { stringify } from 'yaml'
import { PlexTv, PlexTvError, PlexTvUnreachableError } from '../plex/plextv.ts'
import { OPS_USAGE, runOpsCommand } from './ops-commands.ts'

export interface CliIo {
  stdout: { write: (s: string) => unknown }
  stderr: { write: (s: string) => unknown }
  env: Record<string, string | undefined>
  /** Asks a question; `secret` answers are not echoed. Absent: answers are read from stdin lines. */
  prompt?: (question: string, opts: { secret: boolean }) => Promise<string>
  /** PIN poll interval (plex-api.md §5.3: about once a second); tests shorten it. */
  pollIntervalMs?: number
  /** Gives up polling after this long (default 30 min, a strong PIN's lifetime). */
  pollTimeoutMs?: number
  signal?: AbortSignal
}

const USAGE = `Usage:
  ptb login [--print] [--out FILE] [--password]
  ptb servers discover [--token-file FILE]
  ptb claim --pms URL [--token-file FILE]
${OPS_USAGE}`

class CliError extends Error {
  readonly exit: number
  constructor (message: string, exit = 1) {
    super(message)
    this.exit = exit
  }
}

const defaultTokenFile = (env: CliIo['env']): string => join(env.HOME ?? homedir(), '.config', 'plex-token-broker', 'token')

/**
 * plex.tv keeps one token per account and client identifier: a new id on every login would orphan
 * the old tokens. The id is created once and stored next to the token file.
 */
function clientIdentifier (tokenFile: string): string {
  const file = join(dirname(tokenFile), 'client-id')
  try {
    const id = readFileSync(file, 'utf8').trim()
    if (id !== '') return id
  } catch {}
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 })
  const id = `ptb-${randomUUID()}`
  writeFileSync(file, `${id}\n`, { mode: 0o600 })
  return id
}

function plexTv (io: CliIo, tokenFile: string): PlexTv {
  return new PlexTv({ baseUrl: io.env.PLEX_TV_URL ?? 'https://plex.tv', clientIdentifier: clientIdentifier(tokenFile) })
}

function readToken (file: string): string {
  try {
    const t = readFileSync(file, 'utf8').trim()
    if (t !== '') return t
  } catch {}
  throw new CliError(`no account token in ${file}: run \`ptb login\` first (or pass --token-file)`)
}

function explain (err: unknown): CliError {
  if (err instanceof CliError) return err
  if (err instanceof PlexTvUnreachableError) return new CliError(`${err.message}. Check the network (or PLEX_TV_URL) and try again.`)
  if (err instanceof PlexTvError) {
    if (err.plexCode === 1031) {
      return new CliError('plex.tv refuses sign-ins from this address for now (code 1031: repeated failures). ' +
        'Not retrying: wait a while, or use `ptb login` without --password (the PIN flow).')
    }
    if (err.plexCode === 1020) return new CliError('The PIN expired before it was approved (code 1020). Run `ptb login` again.')
    if (err.status === 429) return new CliError('plex.tv is rate limiting this address (429). Wait a minute and try again.')
    if (err.status === 401) return new CliError(`plex.tv rejected the credentials (${err.message}).`)
    return new CliError(err.message)
  }
  return new CliError((err as Error).message)
}

async function ask (io: CliIo, question: string, secret: boolean, lines: AsyncIterator<string> | undefined): Promise<string> {
  if (io.prompt !== undefined) return (await io.prompt(question, { secret })).trim()
  if (lines === undefined) throw new CliError('no terminal to ask on')
  const next = await lines.next()
  if (next.done === true) throw new CliError(`no answer for "${question.trim()}" on stdin`)
  return next.value.trim()
}

function saveToken (file: string, token: string): void {
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 })
  writeFileSync(file, `${token}\n`, { mode: 0o600 })
  chmodSync(file, 0o600)
}

async function login (argv: string[], io: CliIo, lines: AsyncIterator<string> | undefined): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { print: { type: 'boolean', default: false }, out: { type: 'string' }, password: { type: 'boolean', default: false } } })
  const file = values.out ?? defaultTokenFile(io.env)
  const tv = plexTv(io, file)
  try {
    let token: string
    if (values.password === true) {
      // Never from argv (visible in `ps` and shell history): a prompt, or stdin.
      const user = await ask(io, 'plex.tv username or email: ', false, lines)
      const password = await ask(io, 'plex.tv password: ', true, lines)
      try {
        token = await tv.signIn(user, password)
      } catch (err) {
        if (!(err instanceof PlexTvError && err.plexCode === 1029)) throw err
        const code = await ask(io, 'Two-factor code: ', false, lines)
        token = await tv.signIn(user, password, code)
      }
    } else {
      const pin = await tv.createPin()
      io.stdout.write(`Open this link and approve the sign-in:\n\n  ${tv.authUrl(pin)}\n\nCode: ${pin.code}\nWaiting for approval…\n`)
      const deadline = Date.now() + (io.pollTimeoutMs ?? 30 * 60_000)
      let approved: string | null = null
      while (approved === null) {
        if (Date.now() > deadline || io.signal?.aborted === true) throw new CliError('Gave up waiting for the approval. Run `ptb login` again.')
        await new Promise((resolve) => setTimeout(resolve, io.pollIntervalMs ?? 1000))
        approved = (await tv.checkPin(pin.id)).authToken
      }
      token = approved
    }
    if (values.print === true) io.stdout.write(`${token}\n`)
    else {
      saveToken(file, token)
      io.stdout.write(`Signed in. Account token written to ${file} (mode 0600).\n`)
    }
    return 0
  } finally {
    await tv.close()
  }
}

async function discover (argv: string[], io: CliIo): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { 'token-file': { type: 'string' } } })
  const file = values['token-file'] ?? defaultTokenFile(io.env)
  const tv = plexTv(io, file)
  try {
    const servers = (await tv.resources(readToken(file))).filter((r) => r.provides.split(',').includes('server') && r.owned && r.accessToken !== null)
    if (servers.length === 0) {
      io.stderr.write('No servers owned by this account were found.\n')
      return 1
    }
    const entries = servers.map((s, i) => ({
      name: s.name.toLowerCase().replace(/[^a-z0-9_-]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 60) || `server-${i + 1}`,
      url: s.connections[0]?.uri ?? '',
      token: s.accessToken,
    }))
    io.stderr.write('# The entries below contain admin tokens: treat them as secrets (or move each token to a tokenFile).\n')
    io.stdout.write(stringify({ servers: entries }))
    return 0
  } finally {
    await tv.close()
  }
}

async function claim (argv: string[], io: CliIo): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { pms: { type: 'string' }, 'token-file': { type: 'string' } } })
  if (values.pms === undefined) throw new CliError('usage: ptb claim --pms http://<pms>:32400', 2)
  const file = values['token-file'] ?? defaultTokenFile(io.env)
  const tv = plexTv(io, file)
  try {
    const claimToken = await tv.claimToken(readToken(file))
    const url = new URL('myplex/claim', values.pms.endsWith('/') ? values.pms : `${values.pms}/`)
    url.searchParams.set('token', claimToken)
    let status: number
    try {
      const res = await request(url, { method: 'POST', headers: { accept: 'application/json' }, signal: AbortSignal.timeout(15_000) })
      await res.body.dump()
      status = res.statusCode
    } catch (err) {
      throw new CliError(`PMS at ${values.pms} is unreachable: ${(err as { code?: string }).code ?? (err as Error).message}`)
    }
    // plex-api.md §5.7: claiming works only on an unclaimed server on localhost or the same subnet.
    if (status >= 200 && status < 300) {
      io.stdout.write(`Claimed ${values.pms} for this account. Run \`ptb servers discover\` for its config entry.\n`)
      return 0
    }
    const why: Record<number, string> = {
      400: 'PMS refused the claim token (expired or malformed; claim tokens live a few minutes): run `ptb claim` again',
      401: 'PMS refused the claim: it is already claimed, or this address is not on its subnet',
      403: 'PMS refused the claim: it is already claimed, or this address is not on its subnet',
      404: 'this PMS has no claim endpoint (is the URL a Plex Media Server?)',
    }
    throw new CliError(`Claim failed (HTTP ${status}): ${why[status] ?? 'unexpected answer from PMS'}.`)
  } finally {
    await tv.close()
  }
}

export async function main (argv: string[], io: CliIo): Promise<number> {
  const [cmd, sub, ...rest] = argv
  let lines: AsyncIterator<string> | undefined
  try {
    if (cmd === undefined || cmd === 'help' || cmd === '--help' || cmd === '-h') {
      io.stdout.write(USAGE)
      return cmd === undefined ? 2 : 0
    }
    if (cmd === 'login') {
      if (io.prompt === undefined) lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]()
      return await login(argv.slice(1), io, lines)
    }
    if (cmd === 'servers' && sub === 'discover') return await discover(rest, io)
    if (cmd === 'claim') return await claim(argv.slice(1), io)
    const ops = await runOpsCommand(argv, io)
    if (ops !== undefined) return ops
    io.stderr.write(`ptb: unknown command "${argv.join(' ')}"\n\n${USAGE}`)
    return 2
  } catch (err) {
    if ((err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS') === true) {
      io.stderr.write(`ptb: ${(err as Error).message}\n\n${USAGE}`)
      return 2
    }
    const e = explain(err)
    io.stderr.write(`ptb: ${e.message}\n`)
    return e.exit
  } finally {
    await lines?.return?.()
  }
}

/** A terminal prompt that does not echo secrets. */
function terminalPrompt (question: string, opts: { secret: boolean }): Promise<string> {
  return new Promise((resolve) => {
    const rl = createInterface({ input: process.stdin, output: process.stdout, terminal: true })
    if (opts.secret) {
      const out = rl as unknown as { _writeToOutput: (s: string) => void }
      out._writeToOutput = (s: string) => { if (s.includes(question)) process.stdout.write(question) }
    }
    rl.question(question, (answer) => {
      rl.close()
      if (opts.secret) process.stdout.write('\n')
      resolve(answer)
    })
  })
}

if (import.meta.main) {
  const code = await main(process.argv.slice(2), {
    stdout: process.stdout,
    stderr: process.stderr,
    env: process.env,
    prompt: process.stdin.isTTY === true ? terminalPrompt : undefined,
  })
  process.exitCode = code
}
