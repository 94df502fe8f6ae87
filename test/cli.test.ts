import t from 'tap'
import { spawnSync } from 'node:child_process'
import { chmodSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { parse, parseDocument } from 'yaml'
import { type CliIo, main } from '../src/cli/ptb.ts'
import { type PlexTvSimOptions, PlexTvSimulator, type TvResource } from '../src/sim/plextv-sim.ts'

/** The part of tap's Test the helpers need. */
interface Test { teardown: (fn: () => unknown) => void }

async function tv (t: Test, opts: PlexTvSimOptions = {}): Promise<PlexTvSimulator> {
  const sim = await PlexTvSimulator.start(opts)
  t.teardown(() => sim.stop())
  return sim
}

/** Runs `ptb` in-process with captured output, scripted prompt answers and a 10 ms PIN poll. */
function run (env: Record<string, string>, answers: string[] = [], extra: Partial<CliIo> = {}) {
  let out = ''
  let err = ''
  const asked: Array<{ question: string, secret: boolean }> = []
  const io: CliIo = {
    stdout: { write: (s: string) => { out += s } },
    stderr: { write: (s: string) => { err += s } },
    env,
    prompt: async (question, opts) => {
      asked.push({ question, secret: opts.secret })
      return answers.shift() ?? ''
    },
    pollIntervalMs: 10,
    ...extra,
  }
  return { io, out: () => out, err: () => err, all: () => out + err, asked }
}

/** Waits for the CLI to create a PIN, then approves it as the person at app.plex.tv would. */
async function approveNextPin (sim: PlexTvSimulator, seen: number, token?: string): Promise<string> {
  for (let i = 0; i < 200 && sim.pins.length <= seen; i++) await new Promise((resolve) => setTimeout(resolve, 5))
  const pin = sim.pins[seen]!
  sim.approve(pin.id, token)
  return pin.code
}

const configDir = (home: string): string => join(home, '.config', 'plex-token-broker')

t.test('ptb login: PIN flow, token file 0600, client id reused on the next login', async (t) => {
  const sim = await tv(t)
  const home = t.testdir({})
  const env = { PLEX_TV_URL: sim.url, HOME: home }
  const r = run(env)
  const done = main(['login'], r.io)
  const code = await approveNextPin(sim, 0)
  t.equal(await done, 0, r.err())
  const id = readFileSync(join(configDir(home), 'client-id'), 'utf8').trim()
  t.match(id, /^ptb-[0-9a-f-]{36}$/)
  t.ok(r.err().includes(`https://app.plex.tv/auth#?clientID=${id}&code=${code}&context%5Bdevice%5D%5Bproduct%5D=plex-token-broker%20%28ptb%29`), 'the link')
  t.ok(r.err().includes(`Code: ${code}`), 'the code')
  const file = join(configDir(home), 'token')
  t.equal(readFileSync(file, 'utf8'), `${sim.accountToken}\n`)
  t.equal(statSync(file).mode & 0o777, 0o600, 'token file mode 0600')
  t.equal(statSync(join(configDir(home), 'client-id')).mode & 0o777, 0o600, 'client id file mode 0600')
  t.match(r.out(), /Signed in as admin\. Account token written to .*token \(mode 0600\)/)
  t.notOk(r.all().includes(sim.accountToken), 'the token is not printed without --print')
  t.ok(sim.counters.pinPolls >= 1)

  // A token file left world-readable by hand is replaced by a 0600 one.
  chmodSync(file, 0o644)
  const again = run(env)
  const second = main(['login'], again.io)
  await approveNextPin(sim, 1, 'second-token')
  t.equal(await second, 0, again.err())
  t.equal(readFileSync(file, 'utf8'), 'second-token\n')
  t.equal(statSync(file).mode & 0o777, 0o600, 'still 0600 after overwriting')
  t.equal(readFileSync(join(configDir(home), 'client-id'), 'utf8').trim(), id, 'same client id file')
  t.same(new Set(sim.requests.map((q) => q.clientIdentifier)), new Set([id]), 'both logins used the same X-Plex-Client-Identifier')
  t.same(sim.pins.map((p) => p.clientIdentifier), [id, id])
})

t.test('ptb login: a symlink planted at a temporary path cannot redirect the token into another file', async (t) => {
  const sim = await tv(t)
  const home = t.testdir({ 'victim.txt': 'precious\n' })
  const victim = join(home, 'victim.txt')
  chmodSync(victim, 0o644)
  const dir = configDir(home)
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  // The names a local attacker could predict: the old `<file>.<pid>.tmp` (the tests run ptb in
  // this process, so it is this pid) for both files login writes, and a few plausible guesses.
  const planted: string[] = []
  for (const name of ['token', 'client-id']) {
    for (const suffix of [`.${process.pid}.tmp`, '.tmp', '.0.tmp', '~']) {
      const link = join(dir, `${name}${suffix}`)
      symlinkSync(victim, link)
      planted.push(link)
    }
  }
  const r = run({ PLEX_TV_URL: sim.url, HOME: home })
  const done = main(['login'], r.io)
  await approveNextPin(sim, 0)
  t.equal(await done, 0, r.err())
  t.equal(readFileSync(victim, 'utf8'), 'precious\n', 'the victim file is untouched')
  t.equal(statSync(victim).mode & 0o777, 0o644, 'and keeps its mode')
  const file = join(dir, 'token')
  t.ok(lstatSync(file).isFile(), 'the token file is a regular file')
  t.equal(readFileSync(file, 'utf8'), `${sim.accountToken}\n`)
  t.equal(statSync(file).mode & 0o777, 0o600, 'token file mode 0600')
  t.equal(statSync(join(dir, 'client-id')).mode & 0o777, 0o600, 'client id file mode 0600')
  for (const link of planted) t.ok(lstatSync(link).isSymbolicLink(), `${link} was neither followed nor replaced`)
  const left = readdirSync(dir).filter((f) => !['token', 'client-id'].includes(f) && !planted.includes(join(dir, f)))
  t.same(left, [], 'no temporary file is left behind')
})

t.test('ptb login --print: the token alone on stdout; --out elsewhere keeps its own client id', async (t) => {
  const sim = await tv(t)
  const home = t.testdir({})
  const r = run({ PLEX_TV_URL: sim.url, HOME: home })
  const done = main(['login', '--print', '--out', join(home, 'elsewhere', 'tok')], r.io)
  await approveNextPin(sim, 0)
  t.equal(await done, 0, r.err())
  t.equal(r.out(), `${sim.accountToken}\n`, 'stdout is just the token')
  t.match(r.err(), /Signed in as admin/)
  t.notOk(existsSync(join(home, 'elsewhere', 'tok')), '--print writes no token file')
  t.ok(existsSync(join(home, 'elsewhere', 'client-id')), 'the client id lives next to --out')
})

t.test('ptb login: expired PIN, 429, unreachable plex.tv', async (t) => {
  const sim = await tv(t, { retryAfterSec: 0 })
  const home = t.testdir({})
  const env = { PLEX_TV_URL: sim.url, HOME: home }

  const r = run(env)
  const done = main(['login'], r.io)
  for (let i = 0; i < 200 && sim.pins.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 5))
  sim.expire(sim.pins[0]!.code)
  t.equal(await done, 1)
  t.match(r.err(), /PIN expired before it was approved \(code 1020\)\. Run `ptb login` again/)
  t.notOk(existsSync(join(configDir(home), 'token')))

  sim.setRateLimited(true)
  const limited = run(env)
  t.equal(await main(['login'], limited.io), 1)
  t.match(limited.err(), /plex\.tv is rate limiting this address \(429\)\. Wait 1 s and try again/)
  sim.setRateLimited(false)

  // A 429 while polling only slows the polling down: the PIN may be approved right now.
  const polled = run(env)
  const pending = main(['login'], polled.io)
  for (let i = 0; i < 200 && sim.pins.length < 2; i++) await new Promise((resolve) => setTimeout(resolve, 5))
  sim.rateLimitNext(2)
  await new Promise((resolve) => setTimeout(resolve, 50))
  sim.approve(sim.pins[1]!.id)
  t.equal(await pending, 0, polled.err())
  t.match(polled.err(), /rate limiting \(429\); polling again/)

  const down = run({ PLEX_TV_URL: 'http://127.0.0.1:1', HOME: home })
  t.equal(await main(['login'], down.io), 3)
  t.match(down.err(), /ptb: plex\.tv \(http:\/\/127\.0\.0\.1:1\) did not answer POST \/api\/v2\/pins: connection refused\. Check the network/)

  const bad = run({ PLEX_TV_URL: 'plex.tv', HOME: home })
  t.equal(await main(['login'], bad.io), 2)
  t.match(bad.err(), /PLEX_TV_URL must be an https URL/)
  // The password and the account token travel to PLEX_TV_URL: plain http only to loopback.
  const plain = run({ PLEX_TV_URL: 'http://plex.example', HOME: home })
  t.equal(await main(['login'], plain.io), 2)
  t.match(plain.err(), /PLEX_TV_URL must be an https URL: the admin token .* loopback/)
})

t.test('ptb login: a cancelled wait stops polling', async (t) => {
  const sim = await tv(t)
  const ac = new AbortController()
  const r = run({ PLEX_TV_URL: sim.url, HOME: t.testdir({}) }, [], { signal: ac.signal, pollIntervalMs: 1000 })
  const done = main(['login'], r.io)
  for (let i = 0; i < 200 && sim.pins.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 5))
  ac.abort()
  t.equal(await done, 1)
  t.match(r.err(), /Login cancelled/)
  t.equal(sim.counters.pinPolls, 0)
})

t.test('ptb login --password: 2FA on 1029, one attempt on 1031, the password never shown', async (t) => {
  const password = 'hunter2-but-much-longer'
  const sim = await tv(t, { username: 'me@example.com', password, totp: '123456', lockoutAfter: 2 })
  const home = t.testdir({})
  const env = { PLEX_TV_URL: sim.url, HOME: home }
  let everything = ''

  const ok = run(env, ['me@example.com', password, '123456'])
  t.equal(await main(['login', '--password'], ok.io), 0, ok.err())
  everything += ok.all()
  t.same(ok.asked, [
    { question: 'plex.tv username or email: ', secret: false },
    { question: 'plex.tv password: ', secret: true },
    { question: 'Two-factor code: ', secret: false },
  ], 'the password prompt does not echo; 2FA asked after code 1029')
  t.equal(readFileSync(join(configDir(home), 'token'), 'utf8').trim(), sim.accountToken)
  t.equal(statSync(join(configDir(home), 'token')).mode & 0o777, 0o600)
  t.equal(sim.counters.signins, 2, 'one sign-in without, one with the code')

  // From stdin when there is no terminal (e.g. a password manager piping it in).
  const piped = run(env, [], { prompt: undefined, stdin: Readable.from([`me@example.com\n${password}\n123456\n`]) })
  t.equal(await main(['login', '--password', '--print'], piped.io), 0, piped.err())
  t.equal(piped.out(), `${sim.accountToken}\n`)
  everything += piped.all()

  const wrongCode = run(env, ['me@example.com', password, '000000'])
  const before2fa = sim.counters.signins
  t.equal(await main(['login', '--password'], wrongCode.io), 1)
  t.match(wrongCode.err(), /did not accept the two-factor code \(code 1029\)\. Not retrying/)
  t.equal(sim.counters.signins - before2fa, 2, 'one attempt with the code, no more')
  everything += wrongCode.all()

  const wrong = run(env, ['me@example.com', 'wrong-password-here'])
  const beforeWrong = sim.counters.signins
  t.equal(await main(['login', '--password'], wrong.io), 1)
  t.match(wrong.err(), /did not accept this username and password \(code 1001\)\. Not retrying/)
  t.equal(sim.counters.signins - beforeWrong, 1)
  everything += wrong.all()

  // Two failures (the wrong 2FA code and the wrong password): this address is now locked out.
  const before = sim.counters.signins
  const locked = run(env, ['me@example.com', password, '123456'])
  t.equal(await main(['login', '--password'], locked.io), 1)
  t.match(locked.err(), /code 1031: repeated failures\)\. Not retrying/)
  t.match(locked.err(), /without --password/)
  t.equal(sim.counters.signins - before, 1, 'exactly one sign-in after the lockout: no loop')
  t.equal(locked.asked.length, 2, 'no 2FA question after a lockout')
  everything += locked.all()

  t.notOk(everything.includes(password), 'the password is never in any output')
  t.notOk(everything.includes('wrong-password-here'))

  const user = run(env, [password, '123456'])
  sim.resetLockout()
  t.equal(await main(['login', '--password', '--user', 'me@example.com'], user.io), 0, user.err())
  t.equal(user.asked[0]!.question, 'plex.tv password: ', '--user skips the username question')

  const empty = run(env, [], { prompt: undefined, stdin: Readable.from(['me@example.com\n']) })
  t.equal(await main(['login', '--password'], empty.io), 2)
  t.match(empty.err(), /no answer for "plex\.tv password" on stdin/)
  t.equal(await main(['login', '--user', 'x'], run(env).io), 2, '--user without --password')
})

t.test('ptb servers discover: YAML config entries, local connection first, plex.tv order kept', async (t) => {
  const conn = (uri: string, local: boolean, relay = false) => ({ protocol: uri.split(':')[0]!, address: '10.0.0.1', port: 32400, uri, local, relay })
  const resources: TvResource[] = [
    {
      name: 'Living Room PMS',
      clientIdentifier: 'machine-1',
      accessToken: 'living-room-token',
      connections: [conn('https://relay.example:8443', false, true), conn('https://remote.example:32400', false), conn('http://192.168.1.10:32400', true)],
    },
    { name: 'Phone', clientIdentifier: 'phone', accessToken: 'phone-token', provides: 'client,player', connections: [] },
    { name: 'Friend\'s server', clientIdentifier: 'machine-2', accessToken: 'share-token', owned: false, connections: [conn('https://friend.example:32400', false)] },
    { name: 'Attic', clientIdentifier: 'machine-3', accessToken: 'attic-token', connections: [conn('https://attic-remote.example:32400', false)] },
    { name: 'living room pms', clientIdentifier: 'machine-4', accessToken: 'twin-token', connections: [conn('http://192.168.1.11:32400', true)] },
  ]
  const sim = await tv(t, { resources })
  const dir = t.testdir({ token: `${sim.accountToken}\n` })
  const r = run({ PLEX_TV_URL: sim.url, HOME: dir })
  t.equal(await main(['servers', 'discover', '--token-file', join(dir, 'token')], r.io), 0, r.err())
  t.same(parse(r.out()), {
    servers: [
      { name: 'living-room-pms', url: 'http://192.168.1.10:32400', token: 'living-room-token' },
      { name: 'attic', url: 'https://attic-remote.example:32400', token: 'attic-token' },
      { name: 'living-room-pms-2', url: 'http://192.168.1.11:32400', token: 'twin-token' },
    ],
  })
  const doc = parseDocument(r.out())
  t.match(doc.commentBefore, /Contains admin tokens/)
  t.match(r.out(), /# "Living Room PMS" \(machine-1\); other connections: https:\/\/remote\.example:32400 \(remote\), https:\/\/relay\.example:8443 \(relay\)/)
  t.match(r.out(), /url: http:\/\/192\.168\.1\.10:32400 # local/)
  t.match(r.err(), /Warning: the output contains admin tokens/)
  t.match(r.err(), /skipped "Friend's server": shared with this account, not owned/)
  t.notOk(r.out().includes('share-token') || r.out().includes('phone-token'))
  t.notOk(existsSync(join(dir, 'client-id')), 'discover does not create a client id file')

  const missing = run({ PLEX_TV_URL: sim.url, HOME: dir })
  t.equal(await main(['servers', 'discover', '--token-file', join(dir, 'missing')], missing.io), 1)
  t.match(missing.err(), /no account token in .*missing: run `ptb login` first/)

  const revoked = run({ PLEX_TV_URL: sim.url, HOME: dir })
  sim.revokeAccountToken()
  t.equal(await main(['servers', 'discover', '--token-file', join(dir, 'token')], revoked.io), 1)
  t.match(revoked.err(), /no longer accepts the stored account token \(code 1001\)\. Run `ptb login` again/)
})

t.test('ptb servers discover prints names from plex.tv without their control characters (terminal escapes)', async (t) => {
  const conn = (uri: string, local: boolean) => ({ protocol: 'https', address: '10.0.0.1', port: 32400, uri, local, relay: false })
  // Another plex.tv user names the server they share; the account owner's own server could be renamed too.
  const evil = 'Movies\u001b]0;owned\u0007\u001b[2J\u001b[31m\rRED\u009b1A\u202eevil\nservers:'
  const resources: TvResource[] = [
    { name: evil, clientIdentifier: 'machine-\u001b[8m', accessToken: 'own-token', connections: [conn('https://own.example:32400', true), conn('https://x.example:1/\u001b[1m', false)] },
    { name: `${evil} (shared)`, clientIdentifier: 'machine-2', accessToken: 'share-token', owned: false, connections: [conn('https://friend.example:32400', false)] },
  ]
  const sim = await tv(t, { resources })
  const dir = t.testdir({ token: `${sim.accountToken}\n` })
  const r = run({ PLEX_TV_URL: sim.url, HOME: dir })
  t.equal(await main(['servers', 'discover', '--token-file', join(dir, 'token')], r.io), 0, r.err())
  // eslint-disable-next-line no-control-regex
  const control = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/
  t.notMatch(r.out(), control, 'no control character on stdout')
  t.notMatch(r.err(), control, 'no control character on stderr')
  t.match(r.out(), /# "Movies\\u\{1b\}\]0;owned\\u\{7\}\\u\{1b\}\[2J.*\\u\{202e\}evil\\u\{a\}servers:" \(machine-\\u\{1b\}\[8m\)/, 'shown escaped, on one comment line')
  t.match(r.err(), /skipped "Movies\\u\{1b\}.* \(shared\)": shared with this account/)
  t.same(parse(r.out()).servers.map((x: { token: string }) => x.token), ['own-token'], 'the config is unchanged: one server')
})

t.test('ptb servers discover: no owned servers', async (t) => {
  const sim = await tv(t)
  const home = t.testdir({ '.config': { 'plex-token-broker': { token: sim.accountToken, 'client-id': 'ptb-kept' } } })
  const r = run({ PLEX_TV_URL: sim.url, HOME: home })
  t.equal(await main(['servers', 'discover'], r.io), 1)
  t.match(r.err(), /No servers owned by this account.*ptb claim/)
  t.equal(r.out(), '')
  t.equal(sim.requests[0]!.clientIdentifier, 'ptb-kept', 'the stored client id is used')
})

/** A PMS with just `/identity` and `/myplex/claim` (docs/plex-api.md §4, §5). */
async function fixturePms (t: Test, opts: { claimed?: boolean, machineIdentifier?: string, claimStatus?: number, identityXml?: boolean }) {
  const state = { claimed: opts.claimed ?? false, claimStatus: opts.claimStatus ?? 200, claims: [] as string[] }
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x')
    if (req.method === 'GET' && url.pathname === '/identity') {
      const mi = opts.machineIdentifier ?? 'machine-fresh'
      if (opts.identityXml === true) {
        res.setHeader('content-type', 'application/xml')
        res.end(`<?xml version="1.0" encoding="UTF-8"?>\n<MediaContainer size="0" claimed="${state.claimed ? 1 : 0}" machineIdentifier="${mi}" version="1.42.2"> </MediaContainer>`)
        return
      }
      res.setHeader('content-type', 'application/json')
      res.end(JSON.stringify({ MediaContainer: { size: 0, claimed: state.claimed, machineIdentifier: mi, version: '1.42.2' } }))
      return
    }
    if (req.method === 'POST' && url.pathname === '/myplex/claim') {
      state.claims.push(url.searchParams.get('token') ?? '')
      res.statusCode = state.claimStatus
      if (state.claimStatus === 200) state.claimed = true
      res.setHeader('content-type', state.claimStatus === 200 ? 'application/xml' : 'text/html')
      res.end(state.claimStatus === 200 ? '<MediaContainer><account/></MediaContainer>' : `<html><body><h1>${state.claimStatus}</h1></body></html>`)
      return
    }
    res.statusCode = 404
    res.end()
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.closeAllConnections(); server.close() })
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, state }
}

t.test('ptb claim: claims an unclaimed PMS with a fresh claim token', async (t) => {
  const sim = await tv(t)
  const dir = t.testdir({ token: `${sim.accountToken}\n` })
  for (const identityXml of [false, true]) {
    const pms = await fixturePms(t, { identityXml })
    const r = run({ PLEX_TV_URL: sim.url, HOME: dir })
    t.equal(await main(['claim', '--pms', pms.url, '--token-file', join(dir, 'token')], r.io), 0, r.err())
    t.match(r.out(), /Claimed http:\/\/127\.0\.0\.1:\d+ \(machine machine-fresh\) for this account/)
    t.same(pms.state.claims, [sim.claimTokens.at(-1)], 'PMS got the claim token plex.tv issued')
    t.notOk(r.all().includes(sim.claimTokens.at(-1)!), 'the claim token is not printed')
    t.notOk(r.all().includes(sim.accountToken))
  }
})

t.test('ptb claim: each refusal explained', async (t) => {
  const sim = await tv(t)
  const dir = t.testdir({ token: `${sim.accountToken}\n` })
  const cases: Array<[number, RegExp]> = [
    [400, /HTTP 400\): PMS rejected the claim token \(claim tokens live only a few minutes\)/],
    [401, /HTTP 401\): PMS refused: claiming works only from localhost or the server's own subnet/],
    [403, /HTTP 403\): PMS refused: the server is already claimed, or this address is not on its subnet/],
    [404, /HTTP 404\): PMS has no claim endpoint at this URL/],
    [500, /HTTP 500\): PMS could not complete the claim with plex\.tv/],
    [418, /HTTP 418\): unexpected answer from PMS/],
  ]
  for (const [status, message] of cases) {
    const pms = await fixturePms(t, { claimStatus: status })
    const r = run({ PLEX_TV_URL: sim.url, HOME: dir })
    t.equal(await main(['claim', '--pms', `${pms.url}/`, '--token-file', join(dir, 'token')], r.io), 1, `${status}`)
    t.match(r.err(), message)
    t.equal(pms.state.claims.length, 1, `${status}: one claim attempt`)
  }
})

t.test('ptb claim: already claimed, unreachable PMS, plex.tv refusal, usage', async (t) => {
  const sim = await tv(t, { resources: [{ name: 'Mine', clientIdentifier: 'machine-mine', accessToken: 'x', connections: [] }] })
  const dir = t.testdir({ token: `${sim.accountToken}\n` })
  const env = { PLEX_TV_URL: sim.url, HOME: dir }
  const args = (url: string) => ['claim', '--pms', url, '--token-file', join(dir, 'token')]

  const mine = await fixturePms(t, { claimed: true, machineIdentifier: 'machine-mine' })
  const a = run(env)
  t.equal(await main(args(mine.url), a.io), 0)
  t.match(a.out(), /already claimed by this account\. Nothing to do/)
  t.same(mine.state.claims, [], 'no claim attempt')

  const theirs = await fixturePms(t, { claimed: true, machineIdentifier: 'machine-theirs' })
  const b = run(env)
  t.equal(await main(args(theirs.url), b.io), 1)
  t.match(b.err(), /already claimed by another account\. Sign it out first/)
  t.same(theirs.state.claims, [])
  t.equal(sim.counters.claimTokens, 0, 'no claim token fetched for a claimed server')

  const c = run(env)
  t.equal(await main(args('http://127.0.0.1:1'), c.io), 3)
  t.match(c.err(), /PMS at http:\/\/127\.0\.0\.1:1 did not answer: ECONNREFUSED/)

  const fresh = await fixturePms(t, {})
  writeFileSync(join(dir, 'bad'), 'not-a-valid-token\n')
  const d = run(env)
  t.equal(await main(['claim', '--pms', fresh.url, '--token-file', join(dir, 'bad')], d.io), 1)
  t.match(d.err(), /code 1001/)
  t.same(fresh.state.claims, [])

  t.equal(await main(['claim'], run(env).io), 2)
  t.equal(await main(['claim', '--pms', 'pms.local:32400'], run(env).io), 2)
})

t.test('help, usage errors, unknown commands', async (t) => {
  const h = run({})
  t.equal(await main(['help'], h.io), 0)
  t.match(h.out(), /ptb login \[--out FILE\] \[--print\] \[--password \[--user NAME\]\]/)
  t.match(h.out(), /ptb servers discover/)
  t.match(h.out(), /ptb claim --pms URL/)
  t.match(h.out(), /ptb revoke/, 'the ops commands too')
  t.equal(await main(['login', '--help'], run({}).io), 0)
  const none = run({})
  t.equal(await main([], none.io), 2)
  t.match(none.err(), /Usage: ptb/)
  const u = run({})
  t.equal(await main(['frobnicate'], u.io), 2)
  t.match(u.err(), /unknown command "frobnicate"/)
  const flag = run({})
  t.equal(await main(['login', '--bogus'], flag.io), 2)
  t.match(flag.err(), /Unknown option '--bogus'/)
})

t.test('ptb --version prints the package version, in-process and as a program', async (t) => {
  const { version } = JSON.parse(readFileSync('package.json', 'utf8'))
  for (const flag of ['--version', '-V', 'version']) {
    const r = run({})
    t.equal(await main([flag], r.io), 0)
    t.equal(r.out(), `${version}\n`, flag)
  }
  const child = spawnSync(process.execPath, ['src/cli/ptb.ts', '--version'], { encoding: 'utf8' })
  t.equal(child.status, 0, child.stderr)
  t.equal(child.stdout, `${version}\n`, 'only the version on stdout: usable as $(ptb --version)')
})

t.test('each command prints its own usage with --help and exits 0', async (t) => {
  const commands: Array<[string[], RegExp]> = [
    [['login'], /^Usage: ptb login \[--out FILE\][\s\S]*--print /],
    [['servers', 'discover'], /^Usage: ptb servers discover \[--token-file FILE\]/],
    [['claim'], /^Usage: ptb claim --pms URL[\s\S]*--pms URL /],
    [['revoke'], /^Usage: ptb revoke \(--token-id ID[\s\S]*--source SRC [\s\S]*--reason TEXT /],
    [['rotate'], /^Usage: ptb rotate SERVER[\s\S]*server:rotate/],
    [['audit'], /^Usage: ptb audit [\s\S]*--follow /],
    [['servers'], /^Usage: ptb servers \[--json\]/],
    [['proxy-key', 'create'], /^Usage: ptb proxy-key create --client C [\s\S]*--expires WHEN [\s\S]*--secret-file FILE/],
    [['proxy-key', 'list'], /^Usage: ptb proxy-key list \[--client C\][\s\S]*orphaned/],
    [['proxy-key', 'revoke'], /^Usage: ptb proxy-key revoke ID[\s\S]*--reason TEXT/],
    [['client', 'add'], /^Usage: ptb client add <id>[\s\S]*--scopes LIST .*token:issue, token:revoke, audit:read, server:read, server:rotate, source:connect/],
  ]
  const synopses = commands.map(([cmd]) => `Usage: ptb ${cmd.join(' ')}`)
  for (const [cmd, usage] of commands) {
    for (const flag of ['--help', '-h']) {
      const r = run({})
      t.equal(await main([...cmd, flag], r.io), 0, `${cmd.join(' ')} ${flag}`)
      t.match(r.out(), usage, `${cmd.join(' ')} ${flag}: its usage`)
      t.equal(r.err(), '')
      t.notOk(r.out().includes('Ops commands'), `${cmd.join(' ')} ${flag}: not the whole list`)
    }
    // Even with other arguments, and with nothing sent anywhere.
    const busy = run({ PTB_URL: 'http://127.0.0.1:1', PTB_SECRET: 'x' })
    t.equal(await main([...cmd, '--json', '--help'], busy.io), 0)
    t.match(busy.out(), usage)
  }
  t.equal(new Set(synopses).size, synopses.length)
  const viaHelp = run({})
  t.equal(await main(['help', 'rotate'], viaHelp.io), 0)
  t.match(viaHelp.out(), /^Usage: ptb rotate SERVER/)
  const proxyKey = run({})
  t.equal(await main(['proxy-key', '--help'], proxyKey.io), 0)
  t.match(proxyKey.out(), /^Usage: ptb proxy-key create [\s\S]*\nptb proxy-key list [\s\S]*\nptb proxy-key revoke /, 'proxy-key --help: its three subcommands')
  const all = run({})
  t.equal(await main(['--help'], all.io), 0)
  for (const [cmd] of commands) t.match(all.out(), new RegExp(`\\n {2}ptb ${cmd.join(' ')}\\b`), `ptb --help lists ${cmd.join(' ')}`)
  t.match(all.out(), /ptb --version/)
})

t.test('the README runs the CLI as `bin/ptb` (no npm banner on stdout, signals reach it)', async (t) => {
  const readme = readFileSync('README.md', 'utf8')
  t.ok((readme.match(/\bbin\/ptb /g) ?? []).length >= 5, 'the README shows the CLI')
  t.same(readme.match(/npm run(?: -\S+)* ptb\b/g) ?? [], [], 'never through npm run (its banner lands on stdout; it swallows SIGINT)')
})
