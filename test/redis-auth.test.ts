import t from 'tap'
import { spawn, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { connect } from 'node:net'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { pino } from 'pino'
import { parse } from 'yaml'
import { buildApp } from '../src/app.ts'
import { ConfigError, describeConfig, loadConfig } from '../src/config/index.ts'
import { freePort } from '../src/dev-support.ts'
import { createRedis } from '../src/redis.ts'
import { LogCapture, makeClient, serverFor, startSim, testConfig } from './helper.ts'

// The compose stack's Redis requires a password (README, *With Docker Compose*). These tests run the compose file's own
// redis command (a real redis-server, paths mapped to a temp dir) and connect the broker to it
// through REDIS_PASSWORD_FILE, as the broker container does.

const compose = parse(readFileSync('docker-compose.yml', 'utf8').replace(/\$\{([A-Z_]+):-([^}]*)\}/g, '$2'), { merge: true })
const SECRET = Buffer.alloc(32, 7).toString('base64')
// HOST on loopback: listening wider needs METRICS_TOKEN, which is not what these tests are about.
const HOST = '127.0.0.1'

function problems (env: Record<string, string>): string[] {
  try {
    loadConfig(env)
  } catch (err) {
    if (err instanceof ConfigError) return err.problems
    throw err
  }
  return []
}

t.test('REDIS_PASSWORD_FILE: read and trimmed, kept out of the URL; a bad file is named, never its content', async (t) => {
  const dir = t.testdir({ pw: 'hunter2-redis-password\n', empty: '\n' })
  const base = { BROKER_SECRET: SECRET, HOST, PLEX_URL: 'http://127.0.0.1:32400', PLEX_TOKEN: 'admin' }
  const c = loadConfig({ ...base, REDIS_URL: 'redis://redis:6379', REDIS_PASSWORD_FILE: join(dir, 'pw') })
  t.equal(c.redisPassword, 'hunter2-redis-password')
  t.equal(c.redisUrl, 'redis://redis:6379', 'the URL carries no password')
  t.notOk(JSON.stringify(describeConfig(c)).includes('hunter2'), 'the boot summary has no password')
  t.equal(loadConfig(base).redisPassword, undefined, 'no file, no password')

  t.match(problems({ ...base, REDIS_PASSWORD_FILE: join(dir, 'missing') }), [/^REDIS_PASSWORD_FILE: cannot read .*missing: ENOENT$/])
  t.match(problems({ ...base, REDIS_PASSWORD_FILE: join(dir, 'empty') }), [/^REDIS_PASSWORD_FILE: .*empty is empty$/])
  const both = problems({ ...base, REDIS_URL: 'redis://:other@redis:6379', REDIS_PASSWORD_FILE: join(dir, 'pw') })
  t.match(both, [/^REDIS_PASSWORD_FILE: REDIS_URL carries credentials too/])
  t.notOk(both.join().includes('other') || both.join().includes('hunter2'), 'no password in the message')
})

/** Sends one inline command on a fresh connection; resolves the first reply line, or undefined when nothing answers. */
function rawCommand (port: number, command: string): Promise<string | undefined> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1')
    const finish = (line: string | undefined): void => { s.destroy(); resolve(line) }
    s.setTimeout(1000, () => finish(undefined))
    s.on('error', () => finish(undefined))
    s.on('connect', () => s.write(`${command}\r\n`))
    s.on('data', (d: Buffer) => finish(d.toString().split('\r\n')[0]))
  })
}

/** Runs compose's redis command with its paths mapped into `dir`; resolves once Redis answers. */
async function composeRedis (t: { teardown: (fn: () => unknown) => void }, dir: string, passwordFile: string) {
  const port = await freePort()
  const conf = readFileSync('docker/redis.conf', 'utf8')
    .replace(/^port .*$/m, `port ${port}`).replace(/^bind .*$/m, 'bind 127.0.0.1').replace(/^dir .*$/m, `dir ${dir}`)
  writeFileSync(join(dir, 'redis.conf'), conf)
  const [shell, flag, script] = compose.services.redis.command as [string, string, string]
  // Compose turns `$$` into `$` before the container sees it.
  const run = script.replaceAll('$$', '$')
    .replaceAll('/usr/local/etc/redis/redis.conf', join(dir, 'redis.conf'))
    .replaceAll('/run/secrets/redis_password', passwordFile)
  const proc = spawn(shell, [flag, run], { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  proc.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  t.teardown(async () => {
    if (proc.exitCode !== null || proc.signalCode !== null) return
    proc.kill('SIGKILL')
    await new Promise((resolve) => proc.once('exit', resolve))
  })
  const url = `redis://127.0.0.1:${port}`
  for (let i = 0; i < 100 && proc.exitCode === null; i++) {
    if (await rawCommand(port, 'PING') !== undefined) return { url, proc, port }
    await sleep(50)
  }
  throw new Error(`the compose redis command did not start: ${stderr}`)
}

t.test('compose\'s Redis refuses clients without the password; the broker gets in through REDIS_PASSWORD_FILE', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ptb-redis-auth-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const password = randomBytes(32).toString('hex')
  const passwordFile = join(dir, 'redis_password')
  writeFileSync(passwordFile, `${password}\n`, { mode: 0o644 })
  const { url, proc, port } = await composeRedis(t, dir, passwordFile)

  t.match(await rawCommand(port, 'PING'), /^-NOAUTH/, 'no password: refused')
  t.match(await rawCommand(port, 'GET anything'), /^-NOAUTH/, 'no password: no data either')
  t.match(await rawCommand(port, 'AUTH ptb not-it'), /^-WRONGPASS/, 'a wrong password: refused')
  t.match(await rawCommand(port, `AUTH ${password}`), /^-WRONGPASS/, 'the all-powerful default user is off, even with the password')
  t.equal(await rawCommand(port, `AUTH ptb ${password}`), '+OK', 'the ACL user with the secret file\'s password: accepted')

  const cmdline = readFileSync(`/proc/${proc.pid}/cmdline`, 'utf8')
  t.match(cmdline, /redis-server/, 'the shell exec\'d redis-server (it gets the stop signal)')
  t.notOk(cmdline.includes(password), 'the password is in no process argument')

  const username = compose.services.broker.environment.REDIS_USERNAME as string
  t.equal(username, 'ptb')
  const config = loadConfig({ BROKER_SECRET: SECRET, HOST, PLEX_URL: 'http://127.0.0.1:32400', PLEX_TOKEN: 'admin', REDIS_URL: url, REDIS_USERNAME: username, REDIS_PASSWORD_FILE: passwordFile })
  const logs = new LogCapture()
  const redis = createRedis(config, 'cache', pino(logs))
  t.equal(await redis.ping(), 'PONG', 'the broker\'s connection authenticates')
  await t.rejects(redis.flushall(), /NOPERM/, 'and may run nothing @dangerous')
  await t.rejects(redis.set('elsewhere:key', '1'), /NOPERM/, 'nor touch keys outside its prefix')
  t.equal(await redis.set('ptb:probe', '1'), 'OK', 'its own keys it may write')
  redis.disconnect()
  // protected-mode stays on as a second lock (CONFIG is beyond the broker's user, and default is off).
  t.match(readFileSync('docker/redis.conf', 'utf8'), /^protected-mode yes$/m)

  // The compose health check authenticates too (and fails without the password).
  const health = compose.services.redis.healthcheck.test as string[]
  t.equal(health[0], 'CMD-SHELL')
  const check = (file: string) => spawnSync('sh', ['-c', health[1]!.replaceAll('$$', '$').replaceAll('/run/secrets/redis_password', file)
    .replace('redis-cli --user ptb ping', `redis-cli -p ${new URL(url).port} --user ptb ping`)], { encoding: 'utf8' })
  t.equal(check(passwordFile).status, 0, 'healthy with the secret')
  writeFileSync(join(dir, 'bad'), 'nope\n')
  t.not(check(join(dir, 'bad')).status, 0, 'unhealthy with a wrong one')

  // A broker with the wrong password logs the failure, never a password.
  writeFileSync(join(dir, 'stale'), 'stale-password-value\n')
  const stale = loadConfig({ BROKER_SECRET: SECRET, HOST, PLEX_URL: 'http://127.0.0.1:32400', PLEX_TOKEN: 'admin', REDIS_URL: url, REDIS_PASSWORD_FILE: join(dir, 'stale') })
  const bad = createRedis(stale, 'cache', pino(logs))
  await t.rejects(bad.ping())
  bad.disconnect()
  t.ok(logs.lines.length > 0, 'the connection error is logged')
  t.notOk(logs.text.includes('stale-password-value') || logs.text.includes(password), 'no password in the log')
})

t.test('a whole broker serves tokens from the password-protected Redis', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ptb-redis-auth-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const password = randomBytes(32).toString('hex')
  const passwordFile = join(dir, 'redis_password')
  writeFileSync(passwordFile, password)
  const { url } = await composeRedis(t, dir, passwordFile)
  const sim = await startSim(t)
  const client = makeClient('svc')
  const { redisPassword, redisUsername } = loadConfig({ BROKER_SECRET: SECRET, HOST, PLEX_URL: sim.url, PLEX_TOKEN: sim.adminToken, REDIS_USERNAME: 'ptb', REDIS_PASSWORD_FILE: passwordFile })
  const logs = new LogCapture()
  // REDIS_PREFIX ptb: the keys the ACL rule allows (this Redis is the test's own).
  const app = await buildApp(testConfig('ptb', [serverFor(sim)], [client], { redisUrl: url, redisPassword, redisUsername }), { logStream: logs })
  try {
    t.equal((await app.inject({ url: '/readyz' })).statusCode, 200, 'ready')
    const res = await app.inject({ method: 'POST', url: '/v1/tokens', headers: client.auth, payload: { server: 'default' } })
    t.equal(res.statusCode, 200, res.body)
    t.ok(sim.isTokenValid(res.json().token), 'a token PMS accepts')
  } finally {
    await app.close()
  }
  t.notOk(logs.text.includes(password), 'the password is not logged')
})
