/**
 * `node bench/proxy-memory.ts`: where the broker's memory goes while the proxy streams media
 * (docs/benchmarks.md §9). The simulator and the broker run in their own processes, the broker
 * with bench/memory-report.ts preloaded; N concurrent downloads of a 1 GiB part run for SECONDS,
 * and the peak growth of RSS, V8 heap (used, total, new space) and external memory (ArrayBuffers:
 * the bytes in flight) over the value before is printed, with the MB/s delivered.
 *
 * Environment: N (100), SECONDS (10); PAUSED=1: each reader takes one chunk and stops reading, as
 * a paused player does, so nothing flows once the buffers are full; NODE_FLAGS: flags for the
 * broker (`--max-semi-space-size=1`, `--trace-gc`); LIVE=1: diagnosis only, the broker runs with
 * `--expose-gc` and a full GC a second, and `live` is the ArrayBuffers still held after one (at
 * the end of the run).
 */
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import { Agent, request } from 'undici'
import { sha256 } from '../src/broker/crypto.ts'
import { createKeys } from '../src/broker/keys.ts'
import { freePort } from '../src/dev-support.ts'
import { ProxyKeys } from '../src/proxy/proxy-keys.ts'
import { deleteKeys } from '../test/helper.ts'

const N = Number(process.env.N ?? 100)
const SECONDS = Number(process.env.SECONDS ?? 10)
const PAUSED = process.env.PAUSED === '1'
const LIVE = process.env.LIVE === '1'
const FLAGS = [...(process.env.NODE_FLAGS ?? '').split(' ').filter((x) => x !== ''), ...(LIVE ? ['--expose-gc'] : [])]
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'

type Sample = Record<'rss' | 'heapUsed' | 'heapTotal' | 'newSpace' | 'external' | 'arrayBuffers' | 'live', number>
const mb = (n: number): string => (n / 2 ** 20).toFixed(1)
const spawnNode = (args: string[], env: Record<string, string>): ReturnType<typeof spawn> =>
  spawn(process.execPath, args, { env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env }, stdio: ['ignore', 'ignore', 'inherit'] })

async function waitUp (url: string, headers: Record<string, string> = {}): Promise<void> {
  for (let i = 0; i < 200; i++) {
    try {
      const r = await fetch(url, { headers })
      await r.arrayBuffer()
      if (r.status < 500) return
    } catch {}
    await sleep(50)
  }
  throw new Error(`${url} never came up`)
}

const adminToken = randomBytes(15).toString('base64url')
const simPort = await freePort()
const sim = spawnNode([join(import.meta.dirname, 'proxy-procs.ts'), 'sim', String(simPort), adminToken], {})
const simUrl = `http://127.0.0.1:${simPort}`
const prefix = `ptbmem-${randomBytes(3).toString('hex')}`
const dir = mkdtempSync(join(tmpdir(), 'ptb-mem-'))
const configFile = join(dir, 'broker.yaml')
writeFileSync(configFile, ['clients:', '  - id: tool', `    secretSha256: "${sha256(randomBytes(16).toString('hex')).toString('hex')}"`,
  '    servers: ["*"]', '    scopes: [token:issue]', '    proxy: { preset: read, allow: [{ methods: [GET], path: "/library/parts/**" }] }'].join('\n') + '\n')
const apiPort = await freePort()
const proxyPort = await freePort()
const report = join(dir, 'memory.json')
const broker = spawnNode([...FLAGS, '--import', join(import.meta.dirname, 'memory-report.ts'), 'src/server.ts'], {
  REDIS_URL,
  REDIS_PREFIX: prefix,
  BROKER_SECRET: randomBytes(32).toString('base64'),
  BROKER_CONFIG: configFile,
  PLEX_URL: simUrl,
  PLEX_TOKEN: adminToken,
  PLEX_TV_URL: 'off',
  LOG_LEVEL: 'info',
  BROKER_ROLE: 'api',
  HOST: '127.0.0.1',
  PORT: String(apiPort),
  PROXY_PORT: String(proxyPort),
  MEM_REPORT: report,
  MEM_LIVE: LIVE ? '1' : '',
})
const brokerUrl = `http://127.0.0.1:${proxyPort}`
const redis = new Redis(REDIS_URL)
const sample = (): Sample => {
  const rss = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${broker.pid!}/status`, 'utf8'))?.[1] ?? 0) * 1024
  return { ...(JSON.parse(readFileSync(report, 'utf8')) as Sample), rss }
}
try {
  await waitUp(`${simUrl}/identity`)
  await waitUp(`http://127.0.0.1:${apiPort}/healthz`)
  const keys = new ProxyKeys({ redis, keys: createKeys(prefix), call: async (fn) => await fn(), now: Date.now })
  const { key } = await keys.create({ client: 'tool', label: 'bench' })
  await waitUp(`${brokerUrl}/library/sections`, { 'x-plex-token': key })
  await sleep(1000)
  const before = sample()
  const agent = new Agent({ connections: N + 10 })
  const ac = new AbortController()
  let bytes = 0
  const downloads = Array.from({ length: N }, async () => {
    try {
      const r = await request(`${brokerUrl}/library/parts/1/1700000000/file.mp4`, { headers: { 'x-plex-token': key }, dispatcher: agent, signal: ac.signal })
      if (PAUSED) {
        r.body.once('data', (c: Buffer) => { bytes += c.length; r.body.pause() })
        await new Promise((resolve) => { ac.signal.addEventListener('abort', resolve); r.body.once('error', resolve) })
        return
      }
      for await (const chunk of r.body) bytes += (chunk as Buffer).length
    } catch {}
  })
  const peak: Sample = { ...before }
  const end = Date.now() + SECONDS * 1000
  while (Date.now() < end) {
    await sleep(250)
    const now = sample()
    for (const k of Object.keys(peak) as Array<keyof Sample>) peak[k] = Math.max(peak[k], now[k])
  }
  const last = sample()
  ac.abort()
  await Promise.all(downloads)
  await agent.close()
  const growth = (k: keyof Sample): string => `${k} ${mb(before[k])} → ${mb(peak[k])} (+${mb(peak[k] - before[k])})`
  console.log(`${N} downloads${PAUSED ? ' (paused)' : ''}${FLAGS.length > 0 ? ` ${FLAGS.join(' ')}` : ''}, ${SECONDS} s, MB peak: ` +
    `${(['rss', 'heapUsed', 'heapTotal', 'newSpace', 'external', 'arrayBuffers'] as const).map(growth).join(', ')}; ` +
    `${mb(bytes / SECONDS)} MB/s${LIVE ? `; live ArrayBuffers after a full GC at the end: ${mb(last.live)}` : ''}`)
} finally {
  broker.kill('SIGTERM')
  sim.kill('SIGTERM')
  redis.disconnect()
  await deleteKeys(prefix)
}
