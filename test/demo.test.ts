import t from 'tap'
import { spawn } from 'node:child_process'
import { statSync } from 'node:fs'
import { connect } from 'node:net'
import { dirname, join } from 'node:path'
import { freePort } from '../src/dev-support.ts'
import { deleteKeys, REDIS_URL, type T, uniquePrefix, until } from './helper.ts'

// `npm run demo` started twice on one machine (one Redis, one ./.demo): the second run must hand
// out working tokens like the first (it used to answer 500 forever: a new random secret each run).

interface Run { stop: () => Promise<void>, output: () => string, pid: number, exited: Promise<number | null> }

/** The demo as `node src/demo.ts`, or as a person starts it: `bin/demo`. */
async function startDemo (t: T, env: Record<string, string>, how: 'node' | 'bin/demo' = 'node'): Promise<Run> {
  const [cmd, args] = how === 'node' ? [process.execPath, ['src/demo.ts']] : ['bin/demo', []]
  const child = spawn(cmd, args, {
    // This Node first, so bin/demo finds it instead of provisioning one.
    env: { PATH: `${dirname(process.execPath)}:${process.env.PATH}`, HOME: process.env.HOME, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  child.stdout.on('data', (d) => { out += String(d) })
  child.stderr.on('data', (d) => { out += String(d) })
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  await until(30_000, async () => out.includes('Ctrl-C stops') || child.exitCode !== null)
  return {
    pid: child.pid!,
    exited,
    output: () => out,
    stop: async () => {
      child.kill('SIGTERM')
      await exited
    },
  }
}

function line (out: string, re: RegExp): string {
  const m = re.exec(out)
  if (m?.[1] === undefined) throw new Error(`demo output lacks ${re}:\n${out}`)
  return m[1]
}

async function tokenWorks (out: string): Promise<{ status: number, works: boolean }> {
  const base = line(out, /broker\s+(http:\/\/\S+)/)
  const pms = line(out, /PMS simulator\s+(http:\/\/\S+)/)
  const secret = line(out, /Authorization: Bearer (demo_\S+)'/)
  const r = await fetch(`${base}/v1/tokens`, {
    method: 'POST',
    headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' },
    body: JSON.stringify({ server: 'default' }),
  })
  if (r.status !== 200) return { status: r.status, works: false }
  const { token } = await r.json() as { token: string }
  const check = await fetch(`${pms}/identity`, { headers: { 'X-Plex-Token': token, accept: 'application/json' } })
  const root = await fetch(`${pms}/`, { headers: { 'X-Plex-Token': token, accept: 'application/json' } })
  return { status: r.status, works: check.ok && root.status === 200 }
}

/** The printed proxy curl: the key reads sections through the proxy; /security/token is refused. */
async function proxyWorks (out: string): Promise<{ read: number, denied: number }> {
  const base = line(out, /PMS proxy\s+(http:\/\/\S+)/)
  const key = line(out, /X-Plex-Token: (pbk_\S+)'/)
  const read = await fetch(`${base}/library/sections`, { headers: { 'X-Plex-Token': key, accept: 'application/json' } })
  const denied = await fetch(`${base}/security/token`, { headers: { 'X-Plex-Token': key } })
  return { read: read.status, denied: denied.status }
}

t.test('the demo works when started twice in a row on the same Redis and directory', async (t) => {
  const dir = t.testdir()
  const prefix = uniquePrefix('demo')
  t.teardown(() => deleteKeys(prefix))
  const env = async (): Promise<Record<string, string>> => ({ REDIS_URL, REDIS_PREFIX: prefix, DEMO_DIR: join(dir, '.demo'), PORT: String(await freePort()), LOG_LEVEL: 'warn' })

  const first = await startDemo(t, await env())
  t.match(first.output(), /plex-token-broker demo is running/)
  t.match(first.output(), /export PTB_URL=http:\/\/127\.0\.0\.1:\d+/, 'prints what ptb needs')
  t.match(first.output(), /export PTB_SECRET=ops_\S+/)
  t.match(first.output(), /plex\.tv sim\s+http:\/\/127\.0\.0\.1:\d+/, 'plex.tv is the simulator, never the real one')
  const a = await tokenWorks(first.output())
  t.same(a, { status: 200, works: true }, 'first run: a working token')
  t.same(await proxyWorks(first.output()), { read: 200, denied: 403 }, 'first run: the printed proxy key reads through the proxy, and only that')
  t.equal(statSync(join(dir, '.demo', 'secrets.json')).mode & 0o777, 0o600, 'the demo secrets file is private')
  await first.stop()

  const second = await startDemo(t, await env())
  t.match(second.output(), /plex-token-broker demo is running/)
  const b = await tokenWorks(second.output())
  t.same(b, { status: 200, works: true }, 'second run: a working token too')
  t.same(await proxyWorks(second.output()), { read: 200, denied: 403 }, 'second run: the proxy too')
  t.equal(line(second.output(), /PTB_SECRET=(ops_\S+)/), line(first.output(), /PTB_SECRET=(ops_\S+)/), 'the printed ops secret stays valid across runs')
  await second.stop()
})

t.test('a second demo on a running one\'s port says what to do; the suggested command runs beside it', async (t) => {
  const dir = t.testdir()
  const prefix = uniquePrefix('demo')
  const other = uniquePrefix('demo')
  t.teardown(async () => { await deleteKeys(prefix); await deleteKeys(other) })
  const port = String(await freePort())
  const base = { REDIS_URL, DEMO_DIR: join(dir, '.demo'), LOG_LEVEL: 'warn' }
  const first = await startDemo(t, { ...base, REDIS_PREFIX: prefix, PORT: port })
  t.match(first.output(), /plex-token-broker demo is running/)

  const clash = await startDemo(t, { ...base, REDIS_PREFIX: prefix, PORT: port })
  t.equal(await clash.exited, 1, 'the second one exits 1')
  t.match(clash.output(), /EADDRINUSE/)
  t.match(clash.output(), /another demo \(or broker\) already running/)
  const advice = line(clash.output(), /(PORT=\d+ REDIS_PREFIX=\S+) bin\/demo/)
  t.same(await tokenWorks(first.output()), { status: 200, works: true }, 'the first demo is untouched')

  // The advice, with a free port and this test's own prefix: both demos serve working tokens.
  t.match(advice, /^PORT=\d+ REDIS_PREFIX=\S+$/)
  const beside = await startDemo(t, { ...base, REDIS_PREFIX: other, PORT: String(await freePort()) })
  t.same(await tokenWorks(beside.output()), { status: 200, works: true }, 'a demo beside it with its own port and prefix')
  t.same(await tokenWorks(first.output()), { status: 200, works: true }, 'and the first one still')
  await beside.stop()
  await first.stop()
})

/** Whether something accepts connections on 127.0.0.1:port. */
function listening (port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1')
    s.once('connect', () => { s.destroy(); resolve(true) })
    s.once('error', () => resolve(false))
  })
}

/** Every port the demo's output names: broker, PMS simulator and its control port, plex.tv simulator, a Redis it started. */
function ports (out: string): number[] {
  return [...out.matchAll(/http:\/\/127\.0\.0\.1:(\d+)|Started redis-server on redis:\/\/127\.0\.0\.1:(\d+)/g)]
    .map((m) => Number(m[1] ?? m[2])).filter((p, i, all) => all.indexOf(p) === i)
}

// A person stops bin/demo with Ctrl-C or `kill PID`: either must stop the broker, both simulators
// and a Redis the demo started, so the next bin/demo gets the same port (it used to run `npm run
// demo`: npm ignored SIGINT and died on SIGTERM leaving the broker holding the port).
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  t.test(`bin/demo stops everything it started on ${signal} to its PID, and starts again on the same port`, async (t) => {
    const dir = t.testdir()
    const prefix = uniquePrefix('demo-signal')
    t.teardown(() => deleteKeys(prefix))
    // SIGTERM: no Redis answers, so the demo starts its own, which must stop too.
    const redis = signal === 'SIGTERM' ? `redis://127.0.0.1:${await freePort()}` : REDIS_URL
    const env = { REDIS_URL: redis, REDIS_PREFIX: prefix, DEMO_DIR: join(dir, '.demo'), PORT: String(await freePort()), LOG_LEVEL: 'warn' }

    const first = await startDemo(t, env, 'bin/demo')
    t.match(first.output(), /plex-token-broker demo is running/, 'the demo started')
    const used = ports(first.output())
    t.ok(used.includes(Number(env.PORT)), 'the broker\'s port is among those checked')
    if (signal === 'SIGTERM') t.match(first.output(), /Started redis-server on redis:\/\/127\.0\.0\.1:\d+/)
    t.ok(used.length >= (signal === 'SIGTERM' ? 5 : 4), `ports ${used.join(', ')}`)
    process.kill(first.pid, signal)
    const code = await Promise.race([first.exited, new Promise<string>((resolve) => setTimeout(() => resolve('still running'), 20_000))])
    t.equal(code, 0, `bin/demo exits on ${signal}`)
    const open = []
    for (const p of used) if (await listening(p)) open.push(p)
    t.same(open, [], 'no port is left open')

    const second = await startDemo(t, env, 'bin/demo')
    t.match(second.output(), /plex-token-broker demo is running/, 'it starts again')
    t.notMatch(second.output(), /EADDRINUSE/)
    t.same(await tokenWorks(second.output()), { status: 200, works: true }, 'the second run serves tokens on the same port')
    await second.stop()
  })
}
