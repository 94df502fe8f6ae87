import t from 'tap'
import { spawn } from 'node:child_process'
import { statSync } from 'node:fs'
import { join } from 'node:path'
import { freePort } from '../src/dev-support.ts'
import { deleteKeys, REDIS_URL, type T, uniquePrefix, until } from './helper.ts'

// `npm run demo` started twice on one machine (one Redis, one ./.demo): the second run must hand
// out working tokens like the first (it used to answer 500 forever: a new random secret each run).

interface Run { stop: () => Promise<void>, output: () => string }

async function startDemo (t: T, env: Record<string, string>): Promise<Run> {
  const child = spawn(process.execPath, ['src/demo.ts'], {
    env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  child.stdout.on('data', (d) => { out += String(d) })
  child.stderr.on('data', (d) => { out += String(d) })
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()))
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  await until(30_000, async () => out.includes('Ctrl-C stops') || child.exitCode !== null)
  return {
    output: () => out,
    stop: async () => {
      child.kill('SIGTERM')
      await exited
    },
  }
}

function line (out: string, re: RegExp): string {
  const m = re.exec(out)
  if (m === null) throw new Error(`demo output lacks ${re}:\n${out}`)
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
  t.equal(statSync(join(dir, '.demo', 'secrets.json')).mode & 0o777, 0o600, 'the demo secrets file is private')
  await first.stop()

  const second = await startDemo(t, await env())
  t.match(second.output(), /plex-token-broker demo is running/)
  const b = await tokenWorks(second.output())
  t.same(b, { status: 200, works: true }, 'second run: a working token too')
  t.equal(line(second.output(), /PTB_SECRET=(ops_\S+)/), line(first.output(), /PTB_SECRET=(ops_\S+)/), 'the printed ops secret stays valid across runs')
  await second.stop()
})
