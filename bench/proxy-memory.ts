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
import { randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import { Agent, request } from 'undici'
import { freePort } from '../src/dev-support.ts'
import { deleteKeys } from '../test/helper.ts'
import { benchKey, REDIS_URL, spawnBenchBroker, spawnNode, waitUp } from './proxy-setup.ts'

const N = Number(process.env.N ?? 100)
const SECONDS = Number(process.env.SECONDS ?? 10)
const PAUSED = process.env.PAUSED === '1'
const LIVE = process.env.LIVE === '1'
const FLAGS = [...(process.env.NODE_FLAGS ?? '').split(' ').filter((x) => x !== ''), ...(LIVE ? ['--expose-gc'] : [])]

type Sample = Record<'rss' | 'heapUsed' | 'heapTotal' | 'newSpace' | 'external' | 'arrayBuffers' | 'live', number>
const mb = (n: number): string => (n / 2 ** 20).toFixed(1)
const adminToken = randomBytes(15).toString('base64url')
const simPort = await freePort()
const sim = spawnNode([join(import.meta.dirname, 'proxy-procs.ts'), 'sim', String(simPort), adminToken])
const simUrl = `http://127.0.0.1:${simPort}`
const dir = mkdtempSync(join(tmpdir(), 'ptb-mem-'))
const report = join(dir, 'memory.json')
const brokerProc = await spawnBenchBroker({
  simUrl,
  adminToken,
  prefix: `ptbmem-${randomBytes(3).toString('hex')}`,
  nodeArgs: [...FLAGS, '--import', join(import.meta.dirname, 'memory-report.ts')],
  env: { MEM_REPORT: report, MEM_LIVE: LIVE ? '1' : '' },
  stdio: ['ignore', 'ignore', 'inherit'],
})
const broker = brokerProc.process
const prefix = brokerProc.prefix
const brokerUrl = brokerProc.url
const redis = new Redis(REDIS_URL)
const sample = (): Sample => {
  const rss = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${broker.pid!}/status`, 'utf8'))?.[1] ?? 0) * 1024
  return { ...(JSON.parse(readFileSync(report, 'utf8')) as Sample), rss }
}
try {
  await waitUp(`${simUrl}/identity`)
  const key = await benchKey(brokerProc, redis)
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
