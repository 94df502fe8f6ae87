/**
 * `npm run bench proxy`: the PMS proxy against direct-to-simulator and a bare @fastify/reply-from
 * proxy, in the same run (docs/benchmarks.md). Small answers with wrk (latency, throughput, Redis
 * round trips per request), a large body's MB/s, and the broker's memory with 1 and 100 downloads open.
 */
import { spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import { request, Agent } from 'undici'
import { freePort } from '../src/dev-support.ts'
import { deleteKeys } from '../test/helper.ts'
import { benchKey, REDIS_URL, spawnBenchBroker, spawnNode, waitUp } from './proxy-setup.ts'

type Log = (s?: string) => void
const DURATION = Number(process.env.BENCH_SECONDS ?? 10)
const fmt = (n: number, d = 0): string => n.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d })

/** CPU time (user + system) a process has used, in ms. */
function cpuMs (pid: number): number {
  const f = (readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1] ?? '').split(' ')
  return (Number(f[11]) + Number(f[12])) * 10
}

function rssMb (pid: number): number {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) / 1024
}

interface WrkGet { rps: number, p50: number, p99: number, requests: number, non2xx: number, errors: number, transferMBs: number }

function wrkGet (url: string, token: string, seconds: number, connections: number): WrkGet {
  const dir = mkdtempSync(join(tmpdir(), 'ptb-wrk-'))
  const script = join(dir, 'get.lua')
  writeFileSync(script, `wrk.headers["X-Plex-Token"] = "${token}"\n`)
  const r = spawnSync('wrk', ['-t1', `-c${connections}`, `-d${seconds}s`, '--latency', '-s', script, url], { encoding: 'utf8' })
  const out = r.stdout
  const ms = (label: string): number => {
    const m = new RegExp(`^\\s+${label}%\\s+([\\d.]+)(us|ms|s)$`, 'm').exec(out)
    return m === null ? NaN : Number(m[1]) * ({ us: 0.001, ms: 1, s: 1000 } as Record<string, number>)[m[2]!]!
  }
  const errs = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out)
  const transfer = /Transfer\/sec:\s+([\d.]+)([KMG]B)/.exec(out)
  return {
    rps: Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? 0),
    p50: ms('50'),
    p99: ms('99'),
    requests: Number(/(\d+) requests in/.exec(out)?.[1] ?? 0),
    non2xx: Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0),
    errors: errs === null ? 0 : errs.slice(1).reduce((a, x) => a + Number(x), 0),
    transferMBs: transfer === null ? 0 : Number(transfer[1]) * ({ KB: 1 / 1024, MB: 1, GB: 1024 } as Record<string, number>)[transfer[2]!]!,
  }
}

async function redisCalls (redis: Redis): Promise<number> {
  const stats = await redis.info('commandstats')
  return [...stats.matchAll(/calls=(\d+)/g)].reduce((a, m) => a + Number(m[1]), 0)
}

/** MB/s of one download of the 1 GiB part, read to the end. */
async function downloadMBs (url: string, token: string): Promise<number> {
  const started = performance.now()
  const r = await request(url, { headers: { 'x-plex-token': token } })
  let bytes = 0
  for await (const chunk of r.body) bytes += (chunk as Buffer).length
  return bytes / 2 ** 20 / ((performance.now() - started) / 1000)
}

export async function proxyBench (log: Log): Promise<void> {
  const adminToken = randomBytes(15).toString('base64url')
  const simPort = await freePort()
  const sim = spawnNode([join(import.meta.dirname, 'proxy-procs.ts'), 'sim', String(simPort), adminToken])
  const simUrl = `http://127.0.0.1:${simPort}`
  const barePort = await freePort()
  const bare = spawnNode([join(import.meta.dirname, 'proxy-procs.ts'), 'bare', String(barePort), simUrl, adminToken])
  const bareUrl = `http://127.0.0.1:${barePort}`

  // BENCH_PROFILE_DIR=dir writes a V8 CPU profile of the broker process there (node --cpu-prof).
  const profile = process.env.BENCH_PROFILE_DIR
  const brokerProc = await spawnBenchBroker({
    simUrl,
    adminToken,
    prefix: `ptbbench-${randomBytes(3).toString('hex')}`,
    nodeArgs: profile === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${profile}`],
    // Node flags for the broker alone (an A/B of V8 settings such as --max-semi-space-size).
    env: process.env.BROKER_NODE_OPTIONS === undefined ? {} : { NODE_OPTIONS: process.env.BROKER_NODE_OPTIONS },
  })
  const broker = brokerProc.process
  const prefix = brokerProc.prefix
  const brokerUrl = brokerProc.url
  const redis = new Redis(REDIS_URL)
  try {
    await waitUp(`${simUrl}/identity`)
    await waitUp(`${bareUrl}/healthz`)
    const key = await benchKey(brokerProc, redis)

    const small = '/library/sections'
    log(`## PMS proxy: \`npm run bench proxy\` (wrk -t1 -c50, ${DURATION} s per run; PMS simulator, bare reply-from proxy and broker each in its own process; LOG_LEVEL=info)`)
    log()
    log(`### Small answers: \`GET ${small}\``)
    log()
    for (const [u, t] of [[simUrl, adminToken], [bareUrl, 'x'], [brokerUrl, key]] as const) wrkGet(`${u}${small}`, t, 2, 50)
    const direct = wrkGet(`${simUrl}${small}`, adminToken, DURATION, 50)
    const bareCpu0 = cpuMs(bare.pid!)
    const bareR = wrkGet(`${bareUrl}${small}`, 'ignored', DURATION, 50)
    const bareCpu = (cpuMs(bare.pid!) - bareCpu0) / Math.max(1, bareR.requests)
    const before = await redisCalls(redis)
    const brokerCpu0 = cpuMs(broker.pid!)
    const brokerR = wrkGet(`${brokerUrl}${small}`, key, DURATION, 50)
    const brokerCpu = (cpuMs(broker.pid!) - brokerCpu0) / Math.max(1, brokerR.requests)
    const after = await redisCalls(redis)
    log('| target | req/s | p50 ms | p99 ms | non-2xx | socket errors |')
    log('|---|---:|---:|---:|---:|---:|')
    for (const [name, r] of [['direct to the simulator', direct], ['bare @fastify/reply-from proxy', bareR], ['broker PMS proxy', brokerR]] as const) {
      log(`| ${name} | ${fmt(r.rps)} | ${fmt(r.p50, 2)} | ${fmt(r.p99, 2)} | ${r.non2xx} | ${r.errors} |`)
    }
    log()
    log(`Broker vs bare proxy: ${fmt((brokerR.rps / bareR.rps) * 100)} % of its throughput; added latency over direct p50 ${fmt(brokerR.p50 - direct.p50, 2)} ms, p99 ${fmt(brokerR.p99 - direct.p99, 2)} ms; over the bare proxy p50 ${fmt(brokerR.p50 - bareR.p50, 2)} ms, p99 ${fmt(brokerR.p99 - bareR.p99, 2)} ms.`)
    log(`CPU per request (user + system, /proc): bare proxy ${fmt(bareCpu, 3)} ms, broker ${fmt(brokerCpu, 3)} ms (less sensitive to other load on the machine than req/s).`)
    log(`Redis commands per proxied request: ${fmt((after - before) / Math.max(1, brokerR.requests), 2)} (INFO commandstats delta over ${fmt(brokerR.requests)} requests; by design EVALSHA of the serve script, whose inner commands Redis counts too, and HGETALL of the key when the local view of keys does not have it).`)
    log()

    // BENCH_PROXY_PARTS=small skips the large-body and memory parts (while iterating on the small-answer path).
    if (process.env.BENCH_PROXY_PARTS === 'small') return
    const part = '/library/parts/1/1700000000/file.mp4'
    log('### Large body: one download of a 1 GiB media part, read to the end (median of 3)')
    log()
    log('| target | MB/s |')
    log('|---|---:|')
    const mbs: Record<string, number> = {}
    for (const [name, u, t] of [['direct to the simulator', simUrl, adminToken], ['bare @fastify/reply-from proxy', bareUrl, 'x'], ['broker PMS proxy', brokerUrl, key]] as const) {
      const runs = [await downloadMBs(`${u}${part}`, t), await downloadMBs(`${u}${part}`, t), await downloadMBs(`${u}${part}`, t)].sort((x, y) => x - y)
      mbs[name] = runs[1]!
      log(`| ${name} | ${fmt(runs[1]!)} |`)
    }
    log()
    log(`Broker: ${fmt((mbs['broker PMS proxy']! / mbs['direct to the simulator']!) * 100)} % of direct MB/s (the simulator generates the bytes, so direct is bounded by it too).`)
    log()

    log('### Memory: 1, then 100 concurrent downloads through the broker, 10 s each')
    log()
    log('Peaks over the run against the value before it: RSS from /proc, V8 heap used and external memory (ArrayBuffers, which hold the bytes in flight) from the broker\'s own `/metrics`. Nothing forces a GC.')
    log()
    log('| downloads | RSS MB: before → peak (growth) | heap used MB: growth | external MB: growth | MB/s in total |')
    log('|---:|---:|---:|---:|---:|')
    const pid = broker.pid!
    const metricsUrl = `http://127.0.0.1:${brokerProc.apiPort}/metrics`
    const runtime = async (): Promise<{ heap: number, external: number }> => {
      const text = await (await fetch(metricsUrl)).text()
      const value = (name: string): number => Number(new RegExp(`^${name} ([\\d.e+]+)$`, 'm').exec(text)?.[1] ?? NaN) / 2 ** 20
      return { heap: value('nodejs_heap_size_used_bytes'), external: value('nodejs_external_memory_bytes') }
    }
    const growth: Record<number, number> = {}
    for (const n of [1, 100]) {
      await sleep(1000)
      const rssBefore = rssMb(pid)
      const before = await runtime()
      const agent = new Agent({ connections: 200 })
      const ac = new AbortController()
      let bytes = 0
      const downloads = Array.from({ length: n }, async () => {
        try {
          const r = await request(`${brokerUrl}${part}`, { headers: { 'x-plex-token': key }, dispatcher: agent, signal: ac.signal })
          for await (const chunk of r.body) bytes += (chunk as Buffer).length
        } catch {}
      })
      let rssMax = rssBefore
      let peak = { ...before }
      const end = Date.now() + 10_000
      for (let i = 1; Date.now() < end; i++) {
        await sleep(250)
        rssMax = Math.max(rssMax, rssMb(pid))
        if (i % 4 === 0) {
          const now = await runtime()
          peak = { heap: Math.max(peak.heap, now.heap), external: Math.max(peak.external, now.external) }
        }
      }
      ac.abort()
      await Promise.all(downloads)
      await agent.close()
      growth[n] = rssMax - rssBefore
      log(`| ${n} | ${fmt(rssBefore, 1)} → ${fmt(rssMax, 1)} (${fmt(rssMax - rssBefore, 1)}) | ${fmt(peak.heap - before.heap, 1)} | ${fmt(peak.external - before.external, 1)} | ${fmt(bytes / 2 ** 20 / 10)} |`)
    }
    log()
    log(`RSS growth with 100 downloads ${fmt(growth[100]!, 1)} MB, with 1 ${fmt(growth[1]!, 1)} MB: external memory is mostly socket read buffers awaiting V8's next GC, and follows MB/s rather than the number of downloads (docs/benchmarks.md §9; \`node bench/proxy-memory.ts\` breaks it down).`)
  } finally {
    for (const c of [broker, bare, sim]) c.kill('SIGTERM')
    redis.disconnect()
    await deleteKeys(prefix)
  }
}
