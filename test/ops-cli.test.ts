import t from 'tap'
import { spawn, spawnSync } from 'node:child_process'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { parse } from 'yaml'
import { runOpsCommand } from '../src/cli/ops-commands.ts'
import { sha256 } from '../src/broker/crypto.ts'
import { ConfigError, loadConfig, SCOPES } from '../src/config/index.ts'
import { policyFrom } from '../src/proxy/presets.ts'
import { DEFAULT_SOURCES } from '../src/sim/pms-sim.ts'
import { buildTestApp, makeClient, serverFor, startSim, type T, testConfig, uniquePrefix, until } from './helper.ts'

function io (env: Record<string, string | undefined>) {
  let out = ''
  let err = ''
  return {
    io: { stdout: { write: (s: string) => { out += s } }, stderr: { write: (s: string) => { err += s } }, env, followIntervalMs: 100 },
    out: () => out,
    err: () => err,
  }
}

t.test('the ops CLI works against a running broker', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('svc')
  const ops = makeClient('ops', { scopes: ['token:revoke', 'audit:read', 'server:read', 'server:rotate'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('cli'), [serverFor(sim)], [a, ops]), { defaultMetrics: false })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
  const env = { PTB_URL: url, PTB_SECRET: ops.secret }
  const tok = (await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })).json()

  const servers = io(env)
  t.equal(await runOpsCommand(['servers'], servers.io), 0)
  t.match(servers.out(), /NAME\s+STATE/)
  t.match(servers.out(), /default/)
  const serversJson = io(env)
  await runOpsCommand(['servers', '--json'], serversJson.io)
  t.equal(JSON.parse(serversJson.out())[0].name, 'default')

  const audit = io(env)
  t.equal(await runOpsCommand(['audit', '--client', 'svc'], audit.io), 0)
  t.match(audit.out(), /token\.issue\s+svc\s+default/)
  t.notOk(audit.out().includes(tok.token), 'no token in the output')

  const controller = new AbortController()
  const follow = io(env)
  const following = runOpsCommand(['audit', '--follow', '--json'], { ...follow.io, signal: controller.signal })
  await new Promise((resolve) => setTimeout(resolve, 300))
  const revoke = io(env)
  t.equal(await runOpsCommand(['revoke', '--client', 'svc', '--reason', 'cli test'], revoke.io), 0)
  t.match(revoke.out(), /revoked 1 token/)
  t.match(revoke.out(), /valid at PMS until/)
  await new Promise((resolve) => setTimeout(resolve, 400))
  controller.abort()
  await following
  const followed = follow.out().trim().split('\n').map((l) => JSON.parse(l))
  t.ok(followed.some((e) => e.action === 'token.revoke'), '--follow shows new events')

  const noReason = io(env)
  t.equal(await runOpsCommand(['revoke', '--client', 'svc'], noReason.io), 2, 'usage error exit 2')
  t.match(noReason.err(), /--reason is required/)
  const wrongSecret = io({ PTB_URL: url, PTB_SECRET: 'nope' })
  t.equal(await runOpsCommand(['servers'], wrongSecret.io), 1)
  t.match(wrongSecret.err(), /401 UNAUTHENTICATED/)
  const unreachable = io({ PTB_URL: 'http://127.0.0.1:1', PTB_SECRET: 'x' })
  t.equal(await runOpsCommand(['servers'], unreachable.io), 3)
  t.match(unreachable.err(), /cannot reach the broker/)
  const noSecret = io({ PTB_URL: url })
  t.equal(await runOpsCommand(['servers'], noSecret.io), 2)
  t.equal(await runOpsCommand(['login'], noSecret.io), undefined, 'not an ops command')
})

t.test('client add prints a fresh secret once and a config entry holding only its digest', async (t) => {
  const one = io({})
  t.equal(await runOpsCommand(['client', 'add', 'thumbnailer', '--scopes', 'token:issue,source:connect', '--servers', 'default'], one.io), 0)
  const secret = /\n {2}(ptb_[A-Za-z0-9_-]+)\n/.exec(one.out())![1]!
  const yaml = one.out().slice(one.out().indexOf('- id:') - 2)
  const [entry] = parse(yaml)
  t.same(entry, { id: 'thumbnailer', secretSha256: sha256(secret).toString('hex'), servers: ['default'], scopes: ['token:issue', 'source:connect'] })
  const two = io({})
  await runOpsCommand(['client', 'add', 'thumbnailer', '--json'], two.io)
  t.not(JSON.parse(two.out()).secret, secret, 'a new secret every time')
  const bad = io({})
  t.equal(await runOpsCommand(['client', 'add', 'Bad Id'], bad.io), 2)
})

t.test('client add: every known scope is accepted and boots the broker; a typo is refused before any secret is made', async (t) => {
  const all = io({})
  t.equal(await runOpsCommand(['client', 'add', 'everything', '--scopes', SCOPES.join(','), '--servers', 'default', '--json'], all.io), 0, all.err())
  const { entry } = JSON.parse(all.out())
  t.same(entry.scopes, [...SCOPES])
  // What the command printed is what the broker's config loader accepts.
  const env = { BROKER_SECRET: Buffer.alloc(32, 7).toString('base64'), PLEX_URL: 'http://127.0.0.1:32400', PLEX_TOKEN: 'admin', HOST: '127.0.0.1', BROKER_CONFIG: '/etc/ptb/broker.json' }
  const loaded = loadConfig(env, { readFile: () => JSON.stringify({ clients: [entry] }) })
  t.same(loaded.clients[0]!.scopes, [...SCOPES], 'the broker boots with it')

  const typo = io({})
  t.equal(await runOpsCommand(['client', 'add', 'thumbnailer', '--scopes', 'token:issue,token:isue'], typo.io), 2)
  t.match(typo.err(), /ptb: unknown scope "token:isue"; --scopes takes a comma-separated list of: token:issue, token:revoke, audit:read, server:read, server:rotate, source:connect/)
  t.equal(typo.out(), '', 'no secret printed for an entry that would stop the broker')
  t.match(typo.err(), /^Usage: ptb client add <id>/m, 'its own usage, not every command\'s')
  t.throws(() => loadConfig(env, { readFile: () => JSON.stringify({ clients: [{ ...entry, scopes: ['token:isue'] }] }) }), ConfigError,
    'the broker would indeed refuse to boot with it')

  const two = io({})
  t.equal(await runOpsCommand(['client', 'add', 'x', '--scopes', 'audit:write,admin'], two.io), 2)
  t.match(two.err(), /unknown scopes "audit:write", "admin"/)
  const none = io({})
  t.equal(await runOpsCommand(['client', 'add', 'x', '--scopes', ','], none.io), 2)
  t.match(none.err(), /no scope given/)
  const server = io({})
  t.equal(await runOpsCommand(['client', 'add', 'x', '--servers', 'Living Room'], server.io), 2)
  t.match(server.err(), /--servers takes server names .*got "Living Room"/)
  t.equal(server.out(), '')
})

t.test('rotate SERVER re-mints the server\'s active tokens through the API', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('svc')
  const ops = makeClient('ops', { scopes: ['server:rotate', 'audit:read'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('cli-rotate'), [serverFor(sim)], [a, ops], { role: 'all' }), { defaultMetrics: false })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const env = { PTB_URL: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`, PTB_SECRET: ops.secret }
  const issue = async () => (await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })).json()
  const before = await issue()

  const r = io(env)
  t.equal(await runOpsCommand(['rotate', 'default'], r.io), 0, r.err())
  t.equal(r.out(), 'rotating 1 token(s) of default: clients get the new token on their next request\n')
  t.ok(await until(10_000, async () => (await issue()).tokenId !== before.tokenId), 'the client gets a new token')
  t.not((await issue()).token, before.token)
  const audit = io(env)
  await runOpsCommand(['audit', '--action', 'server.rotate', '--json'], audit.io)
  t.match(JSON.parse(audit.out().trim()), { action: 'server.rotate', server: 'default', detail: { actor: 'ops', tokens: 1 } })

  const json = io(env)
  t.equal(await runOpsCommand(['rotate', 'default', '--json'], json.io), 0)
  t.same(JSON.parse(json.out()), { server: 'default', rotating: 1 })
  const unknown = io(env)
  t.equal(await runOpsCommand(['rotate', 'nosuch'], unknown.io), 1)
  t.match(unknown.err(), /broker answered 404 NOT_FOUND: No server named "nosuch"/)
  const missing = io(env)
  t.equal(await runOpsCommand(['rotate'], missing.io), 2)
  t.match(missing.err(), /give exactly one SERVER[\s\S]*Usage: ptb rotate SERVER/)
  const denied = io({ ...env, PTB_SECRET: a.secret })
  t.equal(await runOpsCommand(['rotate', 'default'], denied.io), 1, 'needs server:rotate')
  t.match(denied.err(), /403/)
})

t.test('revoke --source revokes only the tokens for that source', async (t) => {
  const sim = await startSim(t, { version: '1.43.0.10162-aaaaaaaaa' })
  const a = makeClient('viewer', { scopes: ['source:connect', 'token:issue'], sources: '*' })
  const ops = makeClient('ops', { scopes: ['token:revoke'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('cli-source'), [serverFor(sim)], [a, ops]), { defaultMetrics: false })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const env = { PTB_URL: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`, PTB_SECRET: ops.secret }
  const connect = async (source: string) => (await app.inject({ method: 'POST', url: '/v1/sources/connection', headers: a.auth, payload: { server: 'default', source } })).json()
  const issue = async () => (await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })).json()
  const [shared, provider] = [DEFAULT_SOURCES[0]!.source, DEFAULT_SOURCES[1]!.source]
  const s1 = await connect(shared)
  const p1 = await connect(provider)
  const plain = await issue()

  const r = io(env)
  t.equal(await runOpsCommand(['revoke', '--source', shared, '--reason', 'share withdrawn', '--json'], r.io), 0, r.err())
  t.match(JSON.parse(r.out()), { revoked: 1, upstreamStillValidUntil: String })
  t.not((await connect(shared)).tokenId, s1.tokenId, 'the source gets a new token')
  t.equal((await connect(provider)).tokenId, p1.tokenId, 'another source is untouched')
  t.equal((await issue()).tokenId, plain.tokenId, 'the client\'s PMS token is untouched')

  const narrowed = io(env)
  t.equal(await runOpsCommand(['revoke', '--source', provider, '--client', 'someone-else', '--reason', 'x'], narrowed.io), 0)
  t.match(narrowed.out(), /revoked 0 token/, 'narrowed by --client')
  t.equal((await connect(provider)).tokenId, p1.tokenId)
})

t.test('audit --follow keeps every row under its header as wider values arrive', async (t) => {
  const sim = await startSim(t)
  const short = makeClient('a')
  const long = makeClient('a-client-with-a-much-longer-name-than-the-header')
  const ops = makeClient('ops', { scopes: ['audit:read'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('cli-follow'), [serverFor(sim)], [short, long, ops]), { defaultMetrics: false })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const env = { PTB_URL: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`, PTB_SECRET: ops.secret }
  const issue = (c: typeof short) => app.inject({ method: 'POST', url: '/v1/tokens', headers: c.auth, payload: { server: 'default' } })
  await issue(short)

  const controller = new AbortController()
  const follow = io(env)
  const following = runOpsCommand(['audit', '--follow', '--action', 'token.issue'], { ...follow.io, signal: controller.signal })
  await until(5000, async () => follow.out().split('\n').length >= 3)
  await issue(short)
  await until(5000, async () => follow.out().split('\n').length >= 4)
  await issue(long)
  await until(5000, async () => follow.out().includes(long.id))
  await issue(short)
  await until(5000, async () => follow.out().trimEnd().split('\n').filter((l) => l.includes(' a ')).length >= 3)
  controller.abort()
  t.equal(await following, 0)

  const lines = follow.out().trimEnd().split('\n')
  t.equal(lines.filter((l) => !l.startsWith('TIME')).length, 4, 'four events')
  t.ok(lines[0]!.startsWith('TIME'), 'starts with the header')
  let starts: number[] = []
  for (const line of lines) {
    if (line.startsWith('TIME')) {
      starts = ['TIME', 'ACTION', 'CLIENT', 'SERVER', 'TOKEN', 'DETAIL'].map((h) => line.indexOf(h))
      continue
    }
    for (const [i, at] of starts.entries()) {
      if (i === 0) continue
      t.ok(line.slice(at - 2, at) === '  ' && line[at] !== ' ', `column ${i + 1} of "${line.slice(0, 60)}…" starts under its header`)
    }
  }
})

/** A broker for the CLI, with a count of the requests it received. */
async function countedBroker (t: T) {
  const sim = await startSim(t)
  const svc = makeClient('svc')
  const ops = makeClient('ops', { scopes: ['token:revoke', 'audit:read', 'server:read', 'server:rotate'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('cli-usage'), [serverFor(sim)], [svc, ops]), { defaultMetrics: false })
  let requests = 0
  app.addHook('onRequest', async () => { requests++ })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
  return { app, url, svc, ops, env: { PTB_URL: url, PTB_SECRET: ops.secret }, requests: () => requests }
}

t.test('usage mistakes are exit 2 with the command\'s usage, found before any request reaches the broker', async (t) => {
  const b = await countedBroker(t)
  const mistakes: Array<[string[], RegExp, Record<string, string>?]> = [
    [['revoke', '--reason', 'x'], /give exactly one of --token-id ID, --client C/],
    [['revoke', '--token-id', 'tk_aaaaaaaaaaaaaaaaaaaaaa', '--client', 'svc', '--reason', 'x'], /give exactly one of/],
    [['revoke', '--source', 'server://x', '--all', '--reason', 'x'], /give exactly one of/],
    [['revoke', '--client', 'Some Client', '--reason', 'x'], /--client "Some Client" is not a valid name/],
    [['audit', '--since', 'yesterday'], /--since "yesterday" is not a date-time: give an ISO 8601 time/],
    [['audit', '--limit', '0'], /--limit "0" must be >= 1/],
    [['audit', '--limit', 'ten'], /--limit "ten" is not a whole number/],
    [['audit', '--server', 'Living Room'], /--server "Living Room" is not a valid name/],
    [['audit', '--token-id', '42'], /--token-id "42" is not a token id/],
    [['rotate', 'Living Room'], /"Living Room" is not a server name/],
    [['servers'], /PTB_URL must be an http:\/\/ or https:\/\/ URL such as http:\/\/127\.0\.0\.1:8080; got "127\.0\.0\.1:8080"/, { PTB_URL: '127.0.0.1:8080' }],
    [['servers'], /PTB_URL must be an http:\/\/ or https:\/\/ URL .*got "localhost:8080"/, { PTB_URL: 'localhost:8080' }],
    [['servers', '--url', 'ftp://127.0.0.1'], /--url must be an http:\/\/ or https:\/\/ URL/],
  ]
  for (const [argv, message, env] of mistakes) {
    const r = io({ ...b.env, ...env })
    t.equal(await runOpsCommand(argv, r.io), 2, `ptb ${argv.join(' ')}: exit 2`)
    t.match(r.err(), message)
    t.match(r.err(), new RegExp(`Usage: ptb ${argv[0]}`), 'with the command\'s usage')
  }
  t.equal(b.requests(), 0, 'none of them sent a request')

  // The checks refuse only what the broker refuses: valid input still goes through.
  const ok = io(b.env)
  t.equal(await runOpsCommand(['audit', '--since', '2026-01-01T00:00:00Z', '--limit', '5', '--server', 'default'], ok.io), 0, ok.err())
  const none = io(b.env)
  t.equal(await runOpsCommand(['revoke', '--client', 'svc', '--server', 'default', '--reason', 'x'], none.io), 0, none.err())
  t.equal(b.requests(), 2)
})

t.test('ptb trace: who held a token, read from stdin or a file, never from argv', async (t) => {
  const b = await countedBroker(t)
  const tok = (await b.app.inject({ method: 'POST', url: '/v1/tokens', headers: b.svc.auth, payload: { server: 'default' } })).json()

  const human = io(b.env)
  t.equal(await runOpsCommand(['trace'], { ...human.io, stdin: Readable.from([`${tok.token}\n`]) }), 0, human.err())
  t.match(human.out(), /^fingerprint {2}\S+\n/)
  t.match(human.out(), `holder       client svc, server default, token ${tok.tokenId}\n`)
  t.match(human.out(), /TIME\s+ACTION\s+CLIENT\s+SERVER\s+TOKEN\s+DETAIL\n\S+\s+token\.issue\s+svc\s+default\s+tk_/)
  t.notOk(human.out().includes(tok.token), 'the token itself is not printed')

  const dir = t.testdir({ found: `${tok.token}\n` })
  const json = io(b.env)
  t.equal(await runOpsCommand(['trace', '--token-file', join(dir, 'found'), '--json'], json.io), 0, json.err())
  const r = JSON.parse(json.out())
  t.same(r.holder, { client: 'svc', server: 'default', tokenId: tok.tokenId })
  t.ok(r.events.some((e: { action: string }) => e.action === 'token.issue'))

  const unknown = io(b.env)
  t.equal(await runOpsCommand(['trace'], { ...unknown.io, stdin: Readable.from(['not-a-token-we-issued\n']) }), 0)
  t.match(unknown.out(), /holder {7}none known/)

  const tty = io(b.env)
  t.equal(await runOpsCommand(['trace'], { ...tty.io, stdin: Object.assign(Readable.from([]), { isTTY: true }) }), 2)
  t.match(tty.err(), /give the token on stdin \(ptb trace < file\) or with --token-file FILE/)
  const empty = io(b.env)
  t.equal(await runOpsCommand(['trace'], { ...empty.io, stdin: Readable.from(['\n']) }), 2)
  t.match(empty.err(), /no token in stdin/)
  const denied = io({ ...b.env, PTB_SECRET: b.svc.secret })
  t.equal(await runOpsCommand(['trace'], { ...denied.io, stdin: Readable.from([tok.token]) }), 1, 'needs audit:read')
  t.match(denied.err(), /403 FORBIDDEN/)

  // As a program, the way the README runs it (asynchronously: the broker answers from this process).
  const child = spawn(process.execPath, ['src/cli/ptb.ts', 'trace', '--json'], { env: { ...process.env, ...b.env }, stdio: ['pipe', 'pipe', 'pipe'] })
  child.stdin.end(`${tok.token}\n`)
  let out = ''
  let err = ''
  child.stdout.on('data', (d) => { out += String(d) })
  child.stderr.on('data', (d) => { err += String(d) })
  t.equal(await new Promise((resolve) => child.on('close', resolve)), 0, err)
  t.equal(JSON.parse(out).holder.tokenId, tok.tokenId)
  const help = spawnSync(process.execPath, ['src/cli/ptb.ts', 'help'], { encoding: 'utf8' })
  t.match(help.stdout, /^ {2}ptb trace \[--token-file FILE\] \[--json\]$/m, '`ptb help` lists it')
})

t.test('bin/ptb is the CLI itself: SIGTERM or SIGINT to its PID ends `audit --follow`', async (t) => {
  const b = await countedBroker(t)
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    const child = spawn('bin/ptb', ['audit', '--follow'], { env: { ...process.env, ...b.env }, stdio: ['ignore', 'pipe', 'pipe'] })
    const closed = new Promise<[number | null, string | null]>((resolve) => child.on('close', (c, s) => resolve([c, s])))
    // Following: the first poll has reached the broker.
    const before = b.requests()
    while (b.requests() === before) await new Promise((resolve) => setTimeout(resolve, 20))
    child.kill(signal)
    const ended = await Promise.race([closed, new Promise<null>((resolve) => setTimeout(resolve, 5000, null))])
    t.ok(ended, `${signal}: the process signalled ended`)
    if (!ended) child.kill('SIGKILL')
    // Nothing left polling (the follower polls every 2 s): no request reaches the broker any more.
    const after = b.requests()
    await new Promise((resolve) => setTimeout(resolve, 2600))
    t.equal(b.requests(), after, `${signal}: no orphan keeps following`)
  }
})

t.test('ptb piped into a reader that stops early (`ptb audit | head`) exits 0 without an EPIPE stack', async (t) => {
  const b = await countedBroker(t)
  for (let i = 0; i < 5; i++) await b.app.inject({ method: 'POST', url: '/v1/tokens', headers: b.svc.auth, payload: { server: 'default' } })
  for (const argv of [['audit', '--limit', '50'], ['audit', '--json'], ['help']]) {
    const child = spawn(process.execPath, ['src/cli/ptb.ts', ...argv], { env: { ...process.env, ...b.env }, stdio: ['ignore', 'pipe', 'pipe'] })
    // The reader is gone before ptb writes a byte: every write of it meets a closed pipe.
    child.stdout.destroy()
    let err = ''
    child.stderr.on('data', (d) => { err += String(d) })
    const code = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)))
    t.equal(code, 0, `ptb ${argv.join(' ')}: exit 0`)
    t.equal(err, '', 'nothing on stderr')
  }
  t.ok(b.requests() >= 2, 'the audit commands did reach the broker before writing')
})

t.test('proxy-key create, list and revoke: the key alone on stdout, once; usage mistakes before any request', async (t) => {
  const built = policyFrom({ preset: 'read' })
  if (!('policy' in built)) throw new Error('the read preset compiles')
  const tool = makeClient('tautulli')
  tool.config.proxy = built.policy
  const ops = makeClient('ops', { scopes: ['proxy-key:manage'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('cli-pkey'), [{ name: 'default', url: 'http://127.0.0.1:1', adminToken: 'x', tokenSource: 'token' }], [tool, ops]), { defaultMetrics: false })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const env = { PTB_URL: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`, PTB_SECRET: ops.secret }

  const created = io(env)
  t.equal(await runOpsCommand(['proxy-key', 'create', '--client', 'tautulli', '--server', 'default', '--label', 'Tautulli on nas', '--expires', '30d'], created.io), 0, created.err())
  t.match(created.out(), /^pbk_[A-Za-z0-9_-]{12}\.[A-Za-z0-9_-]{43}\n$/, 'stdout holds the key and nothing else')
  const key = created.out().trim()
  const id = key.slice(4, 16)
  const secret = key.slice(17)
  t.match(created.err(), new RegExp(`Proxy key ${id} for client tautulli, server default, label "Tautulli on nas", expires 20`))
  t.match(created.err(), /Shown once/)
  t.notOk(created.err().includes(secret), 'stderr names the key by its id only')
  const check = await app.broker.proxyKeys.verify(key, { server: 'default' })
  t.equal(check.ok, true, 'the printed key works')
  if (check.ok) t.ok(Math.abs((check.record.expiresAt ?? 0) - (Date.now() + 30 * 86_400_000)) < 60_000, '--expires 30d: thirty days from now')

  // As a program: `ptb proxy-key create … > key.txt` gets the key alone.
  const child = spawn(process.execPath, ['src/cli/ptb.ts', 'proxy-key', 'create', '--client', 'tautulli', '--label', 'as a program'], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  child.stdout.on('data', (d) => { out += String(d) })
  child.stderr.on('data', (d) => { err += String(d) })
  t.equal(await new Promise((resolve) => child.on('close', resolve)), 0, err)
  t.match(out, /^pbk_[A-Za-z0-9_-]{12}\.[A-Za-z0-9_-]{43}\n$/)
  t.match(err, /every server of the client/)

  const json = io(env)
  t.equal(await runOpsCommand(['proxy-key', 'create', '--client', 'tautulli', '--label', 'json', '--json'], json.io), 0)
  t.match(JSON.parse(json.out()), { key: /^pbk_/, record: { client: 'tautulli', server: null, label: 'json', state: 'active' } })

  const list = io(env)
  t.equal(await runOpsCommand(['proxy-key', 'list'], list.io), 0, list.err())
  t.match(list.out(), /^ID\s+CLIENT\s+SERVER\s+LABEL\s+STATE\s+CREATED\s+EXPIRES\s+REVOKED\n/)
  t.match(list.out(), new RegExp(`${id}\\s+tautulli\\s+default\\s+Tautulli on nas\\s+active\\s`))
  t.match(list.out(), /tautulli\s+\*\s+as a program\s+active/, 'a key without a server shows *')
  t.notOk(list.out().includes(secret), 'the listing never shows the key')
  const listJson = io(env)
  t.equal(await runOpsCommand(['proxy-key', 'list', '--client', 'tautulli', '--json'], listJson.io), 0)
  const keys = JSON.parse(listJson.out())
  t.same(keys.map((k: { label: string }) => k.label), ['Tautulli on nas', 'as a program', 'json'])
  t.notOk(listJson.out().includes(secret))
  const none = io(env)
  t.equal(await runOpsCommand(['proxy-key', 'list', '--client', 'sonarr'], none.io), 0)
  t.equal(none.out(), 'no proxy keys of client sonarr\n')

  const revoke = io(env)
  t.equal(await runOpsCommand(['proxy-key', 'revoke', id, '--reason', 'tool retired'], revoke.io), 0, revoke.err())
  t.equal(revoke.out(), `revoked proxy key ${id} (client tautulli, label "Tautulli on nas"): refused from its next request on\n`)
  t.same(await app.broker.proxyKeys.verify(key, { server: 'default' }), { ok: false, reason: 'revoked' })
  const again = io(env)
  t.equal(await runOpsCommand(['proxy-key', 'revoke', id, '--json'], again.io), 0)
  t.match(JSON.parse(again.out()), { alreadyRevoked: true, record: { id, state: 'revoked' } })
  const unknown = io(env)
  t.equal(await runOpsCommand(['proxy-key', 'revoke', 'BBBBBBBBBBBB'], unknown.io), 1)
  t.match(unknown.err(), /404 NOT_FOUND: No proxy key "BBBBBBBBBBBB"/)
  const refused = io(env)
  t.equal(await runOpsCommand(['proxy-key', 'create', '--client', 'nobody', '--label', 'x'], refused.io), 1)
  t.match(refused.err(), /400 UNKNOWN_CLIENT: No client "nobody"/)
  const denied = io({ ...env, PTB_SECRET: tool.secret })
  t.equal(await runOpsCommand(['proxy-key', 'list'], denied.io), 1)
  t.match(denied.err(), /403 FORBIDDEN: .*proxy-key:manage/)

  // Usage mistakes: exit 2 with nothing sent (the URL below reaches nothing: a request would exit 3).
  const offline = { PTB_URL: 'http://127.0.0.1:1', PTB_SECRET: 'x' }
  const mistakes: Array<[string[], RegExp]> = [
    [['proxy-key'], /give a subcommand: create, list or revoke[\s\S]*Usage: ptb proxy-key create[\s\S]*ptb proxy-key revoke/],
    [['proxy-key', 'rotate'], /unknown subcommand "rotate"/],
    [['proxy-key', 'create', '--label', 'x'], /--client is required[\s\S]*Usage: ptb proxy-key create/],
    [['proxy-key', 'create', '--client', 'tautulli'], /--label is required/],
    [['proxy-key', 'create', '--client', 'Bad Name', '--label', 'x'], /--client "Bad Name" is not a valid name/],
    [['proxy-key', 'create', '--client', 'tautulli', '--server', 'Living Room', '--label', 'x'], /--server "Living Room" is not a valid name/],
    [['proxy-key', 'create', '--client', 'tautulli', '--label', ''], /--label must be 1 to 100 characters/],
    [['proxy-key', 'create', '--client', 'tautulli', '--label', 'a\nb'], /--label must be 1 to 100 characters without control characters/],
    [['proxy-key', 'create', '--client', 'tautulli', '--label', 'x', '--expires', 'yesterday'], /--expires "yesterday" is not a date-time/],
    [['proxy-key', 'create', '--client', 'tautulli', '--label', 'x', '--expires', '2020-01-01T00:00:00Z'], /--expires "2020-01-01T00:00:00Z" is not in the future/],
    [['proxy-key', 'create', '--client', 'tautulli', '--label', 'x', '--expires', '400d'], /more than 366 days ahead/],
    [['proxy-key', 'create', '--client', 'tautulli', '--label', 'x', '--expires', '30x'], /--expires "30x" is not a duration/],
    [['proxy-key', 'list', '--client', 'A!'], /--client "A!" is not a valid name/],
    [['proxy-key', 'revoke'], /give exactly one key ID[\s\S]*Usage: ptb proxy-key revoke ID/],
    [['proxy-key', 'revoke', 'short'], /ID "short" is not a proxy key id/],
    [['proxy-key', 'revoke', key], /give the key's id .*not the key itself/],
    [['proxy-key', 'revoke', id, '--reason', ''], /--reason/],
  ]
  for (const [argv, message] of mistakes) {
    const r = io(offline)
    t.equal(await runOpsCommand(argv, r.io), 2, `${argv.slice(0, 4).join(' ')}: usage error`)
    t.match(r.err(), message)
    t.notOk(r.err().includes(secret), 'the key is not echoed')
  }
})
