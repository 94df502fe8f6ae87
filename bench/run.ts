/**
 * `npm run bench [scenario…]`: measures the broker against real processes on loopback, each
 * scenario paired with a bare-Fastify baseline in the same run, so the ratio survives noisy
 * machines. Scenarios: hot, herd, restart, footprint, scaling (default: these), soak, push (the
 * push channel with library clients), proxy (the PMS proxy, bench/proxy.ts), and the Redis HA ones (bench/ha.ts): failover (Sentinel,
 * repeated SIGKILLs) and tls. Results are printed
 * as Markdown; copy them into docs/benchmarks.md. Not part of `npm test`.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { cpus, tmpdir, totalmem } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import autocannon from 'autocannon'
import { Redis } from 'ioredis'
import { sha256 } from '../src/broker/crypto.ts'
import { freePort } from '../src/dev-support.ts'
import { PmsSimulator } from '../src/sim/pms-sim.ts'
import { createTokenSource, type TokenSource } from '../src/client/index.ts'
import { deleteKeys } from '../test/helper.ts'
import { failover, tls } from './ha.ts'
import { proxyBench } from './proxy.ts'

const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'
const DURATION = Number(process.env.BENCH_SECONDS ?? 10)
const out: string[] = []
const log = (s = ''): void => { out.push(s); process.stdout.write(`${s}\n`) }

interface Proc { child: ChildProcess, url: string, pid: number }

async function waitHealthy (url: string, child: ChildProcess): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (child.exitCode !== null) throw new Error(`process exited ${child.exitCode}`)
    try { if ((await fetch(`${url}/healthz`)).ok) return } catch {}
    await sleep(50)
  }
  throw new Error(`${url} never became healthy`)
}

async function startBaseline (): Promise<Proc> {
  const port = await freePort()
  const child = spawn(process.execPath, [join(import.meta.dirname, 'baseline.ts')], { env: { ...process.env, PORT: String(port) }, stdio: 'ignore' })
  const url = `http://127.0.0.1:${port}`
  await waitHealthy(url, child)
  return { child, url, pid: child.pid! }
}

interface BrokerSetup { prefix: string, configFile: string, secrets: string[], env: Record<string, string> }

function setup (sim: PmsSimulator, clients: number, extra: Record<string, string> = {}): BrokerSetup {
  const dir = mkdtempSync(join(tmpdir(), 'ptb-bench-'))
  const secrets = Array.from({ length: clients }, (_, i) => `bench-${i}-${randomBytes(12).toString('hex')}`)
  const lines = ['clients:']
  secrets.forEach((s, i) => lines.push(`  - id: c${i}`, `    secretSha256: "${sha256(s).toString('hex')}"`, '    servers: ["*"]', '    scopes: [token:issue]', '    rateLimit: { max: 100000000, timeWindow: 1m }'))
  const configFile = join(dir, 'broker.yaml')
  writeFileSync(configFile, lines.join('\n') + '\n')
  const prefix = `ptbbench-${randomBytes(3).toString('hex')}`
  return {
    prefix,
    configFile,
    secrets,
    env: {
      REDIS_URL,
      REDIS_PREFIX: prefix,
      BROKER_SECRET: randomBytes(32).toString('base64'),
      BROKER_CONFIG: configFile,
      PLEX_URL: sim.url,
      PLEX_TOKEN: sim.adminToken,
      LOG_LEVEL: 'warn',
      BROKER_ROLE: 'api',
      ...extra,
    },
  }
}

async function startBroker (s: BrokerSetup, extra: Record<string, string> = {}, nodeArgs: string[] = []): Promise<Proc> {
  const port = await freePort()
  const child = spawn(process.execPath, [...nodeArgs, 'src/server.ts'], {
    env: { PATH: process.env.PATH, HOME: process.env.HOME, ...s.env, ...extra, PORT: String(port), HOST: '127.0.0.1' },
    stdio: 'ignore',
  })
  const url = `http://127.0.0.1:${port}`
  await waitHealthy(url, child)
  return { child, url, pid: child.pid! }
}

async function stop (p: Proc): Promise<void> {
  if (p.child.exitCode !== null) return
  const done = new Promise((resolve) => p.child.once('exit', resolve))
  p.child.kill('SIGTERM')
  await Promise.race([done, sleep(12_000)])
}

function rssMb (pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024
}

async function cleanup (prefix: string): Promise<void> {
  await deleteKeys(prefix)
}

interface Load { rps: number, p50: number, p99: number, p999: number, errors: number, non2xx: number }

async function load (url: string, opts: { connections: number, secret?: string, rate?: number, seconds?: number }): Promise<Load> {
  const r = await autocannon({
    url: `${url}/v1/tokens`,
    method: 'POST',
    connections: opts.connections,
    duration: opts.seconds ?? DURATION,
    overallRate: opts.rate,
    headers: { 'content-type': 'application/json', ...(opts.secret === undefined ? {} : { authorization: `Bearer ${opts.secret}` }) },
    body: JSON.stringify({ server: 'default' }),
  })
  return { rps: r.requests.average, p50: r.latency.p50, p99: r.latency.p99, p999: r.latency.p99_9, errors: r.errors, non2xx: r.non2xx }
}

const fmt = (n: number, d = 0): string => n.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d })

/** wrk, the C load generator (Debian package `wrk`): installed when missing and possible, else named. */
function ensureWrk (): string {
  if (spawnSync('wrk', ['--version']).error === undefined) return 'wrk'
  const root = process.getuid?.() === 0
  process.stderr.write('wrk is not installed: trying `apt-get install -y wrk`…\n')
  const r = spawnSync(root ? 'apt-get' : 'sudo', root ? ['install', '-y', '-qq', 'wrk'] : ['apt-get', 'install', '-y', '-qq', 'wrk'], { stdio: 'inherit' })
  if (r.status === 0 && spawnSync('wrk', ['--version']).error === undefined) return 'wrk'
  throw new Error('The hot-path benchmark needs wrk (a load generator outside the broker\'s process): sudo apt-get install wrk')
}

interface WrkResult { rps: number, p50: number, p99: number, requests: number, non2xx: number, errors: number }

/** One wrk run (`-t1 -c64`), POST /v1/tokens with the body and bearer secret; latencies in ms. */
function wrk (url: string, secret: string | undefined, seconds: number, connections = 64): WrkResult {
  const dir = mkdtempSync(join(tmpdir(), 'ptb-wrk-'))
  const script = join(dir, 'post.lua')
  writeFileSync(script, [
    'wrk.method = "POST"',
    'wrk.body = \'{"server":"default"}\'',
    'wrk.headers["Content-Type"] = "application/json"',
    ...(secret === undefined ? [] : [`wrk.headers["Authorization"] = "Bearer ${secret}"`]),
  ].join('\n'))
  const r = spawnSync('wrk', ['-t1', `-c${connections}`, `-d${seconds}s`, '--latency', '-s', script, `${url}/v1/tokens`], { encoding: 'utf8' })
  const out = r.stdout
  const ms = (label: string): number => {
    const m = new RegExp(`^\\s+${label}%\\s+([\\d.]+)(us|ms|s)$`, 'm').exec(out)
    if (m === null) return NaN
    return Number(m[1]) * ({ us: 0.001, ms: 1, s: 1000 } as Record<string, number>)[m[2]!]!
  }
  const requests = Number(/(\d+) requests in/.exec(out)?.[1] ?? 0)
  const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0)
  const errs = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out)
  return {
    rps: Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? 0),
    p50: ms('50'),
    p99: ms('99'),
    requests,
    non2xx,
    errors: errs === null ? 0 : errs.slice(1).reduce((a, x) => a + Number(x), 0),
  }
}

/** Open-loop load at a fixed rate from a separate process (bench/fixed-rate.ts). */
function fixedRate (url: string, rate: number, seconds: number, secret?: string): { ok: number, errors: number, p50: number, p99: number, p999: number } {
  const r = spawnSync(process.execPath, [join(import.meta.dirname, 'fixed-rate.ts'), `${url}/v1/tokens`, String(rate), String(seconds), '32', ...(secret === undefined ? [] : [secret])], { encoding: 'utf8' })
  return JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}')
}

async function redisCalls (redis: Redis): Promise<number> {
  const stats = await redis.info('commandstats')
  return [...stats.matchAll(/calls=(\d+)/g)].reduce((a, m) => a + Number(m[1]), 0)
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? Number.NaN

async function hot (sim: PmsSimulator): Promise<void> {
  const rounds = Number(process.env.BENCH_ROUNDS ?? 3)
  log(`## 1. Hot path: \`POST /v1/tokens\` cache hit, wrk -t1 -c64, ${DURATION} s per round, ${rounds} alternating rounds`)
  ensureWrk()
  // Production defaults: LOG_LEVEL=info (one line per request), metrics on.
  const s = setup(sim, 1, { LOG_LEVEL: 'info' })
  const profileDir = mkdtempSync(join(tmpdir(), 'ptb-prof-'))
  const broker = await startBroker(s)
  const quiet = await startBroker(s, { LOG_LEVEL: 'warn' })
  const baseline = await startBaseline()
  const redis = new Redis(REDIS_URL)
  try {
    for (const b of [broker, quiet]) {
      const warm = await fetch(`${b.url}/v1/tokens`, { method: 'POST', headers: { authorization: `Bearer ${s.secrets[0]}`, 'content-type': 'application/json' }, body: '{"server":"default"}' })
      if (!warm.ok) throw new Error(`warm-up failed: ${warm.status}`)
      wrk(b.url, s.secrets[0], 3)
    }
    wrk(baseline.url, undefined, 3)
    const base: WrkResult[] = []
    const info: WrkResult[] = []
    const warn: WrkResult[] = []
    const perRequest: number[] = []
    for (let i = 0; i < rounds; i++) {
      base.push(wrk(baseline.url, undefined, DURATION))
      const before = await redisCalls(redis)
      const r = wrk(broker.url, s.secrets[0], DURATION)
      const after = await redisCalls(redis)
      info.push(r)
      perRequest.push((after - before - 1) / Math.max(1, r.requests))
      warn.push(wrk(quiet.url, s.secrets[0], DURATION))
    }
    const rss = rssMb(broker.pid)
    const ratios = info.map((r, i) => 100 * r.rps / base[i]!.rps)
    const half = Math.round(median(info.map((r) => r.rps)) / 2)
    const fixedBase = fixedRate(baseline.url, half, DURATION)
    const fixedBroker = fixedRate(broker.url, half, DURATION, s.secrets[0])
    log()
    log('| round | baseline req/s | broker (info) req/s | ratio | broker (warn) req/s | baseline p50 / p99 ms | broker p50 / p99 ms | Redis commands per request | non-2xx / errors |')
    log('|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
    for (let i = 0; i < rounds; i++) {
      log(`| ${i + 1} | ${fmt(base[i]!.rps)} | ${fmt(info[i]!.rps)} | ${fmt(ratios[i]!, 1)} % | ${fmt(warn[i]!.rps)} | ${fmt(base[i]!.p50, 2)} / ${fmt(base[i]!.p99, 2)} | ${fmt(info[i]!.p50, 2)} / ${fmt(info[i]!.p99, 2)} | ${fmt(perRequest[i]!, 2)} | ${info[i]!.non2xx} / ${info[i]!.errors} |`)
    }
    const medInfo = median(info.map((r) => r.rps))
    const medWarn = median(warn.map((r) => r.rps))
    log()
    log(`- **Ratio broker / baseline (median of ${rounds} pairs): ${fmt(median(ratios), 1)} %** (target ≥ 50 %, stretch 65 %).`)
    log(`- Log cost: info ${fmt(medInfo)} req/s vs warn ${fmt(medWarn)} req/s: **${fmt(100 * (medWarn - medInfo) / medWarn, 1)} %** slower with the per-request line (target < 15 %).`)
    log('- Redis round trips per cache hit: the commands per request above (commandstats counts a Lua script and the commands it runs; the hot path sends one EVALSHA).')
    log(`- Fixed rate ${fmt(half)} req/s (half the broker's median peak), open loop from a separate process (bench/fixed-rate.ts, latency from each request's due time): baseline p50 ${fixedBase.p50} / p99 ${fixedBase.p99} / p99.9 ${fixedBase.p999} ms; broker p50 ${fixedBroker.p50} / p99 ${fixedBroker.p99} / p99.9 ${fixedBroker.p999} ms: **p99 ratio ${fmt(fixedBroker.p99 / Math.max(0.01, fixedBase.p99), 2)}×** (target ≤ 1.5×); ${fixedBroker.errors} errors.`)
    log(`- Broker RSS after the rounds: ${fmt(rss, 1)} MB.`)
  } finally {
    redis.disconnect()
    await stop(broker)
    await stop(quiet)
    await stop(baseline)
  }
  // A CPU profile of the broker (production defaults) under the same load.
  const prof = await startBroker(s, {}, ['--cpu-prof', `--cpu-prof-dir=${profileDir}`])
  await fetch(`${prof.url}/v1/tokens`, { method: 'POST', headers: { authorization: `Bearer ${s.secrets[0]}`, 'content-type': 'application/json' }, body: '{"server":"default"}' })
  wrk(prof.url, s.secrets[0], 5)
  await stop(prof)
  const file = readdirSync(profileDir).find((f) => f.endsWith('.cpuprofile'))
  if (file !== undefined) {
    log()
    log('CPU profile of the broker under this load (self time by module, top 12):')
    log()
    log('| module | self time % |')
    log('|---|---:|')
    for (const [mod, pct] of profileSummary(join(profileDir, file)).slice(0, 12)) log(`| ${mod} | ${fmt(pct, 1)} |`)
    log()
    log('Top functions by self time:')
    log()
    log('| function (file) | self time % |')
    log('|---|---:|')
    for (const [fn, pct] of profileSummary(join(profileDir, file), true).slice(0, 15)) log(`| ${fn} | ${fmt(pct, 1)} |`)
  }
  await cleanup(s.prefix)
}

/** Self time per module (node_modules package, src file, or node internals) from a .cpuprofile. */
function profileSummary (file: string, byFunction = false): Array<[string, number]> {
  const prof = JSON.parse(readFileSync(file, 'utf8')) as { nodes: Array<{ id: number, callFrame: { url: string, functionName: string } }>, samples: number[] }
  const byId = new Map(prof.nodes.map((n) => [n.id, n]))
  const counts = new Map<string, number>()
  for (const id of prof.samples) {
    const n = byId.get(id)
    const url = n?.callFrame.url ?? ''
    let mod = url === '' ? `(${n?.callFrame.functionName || 'program'})` : url.startsWith('node:') ? 'node internals' : url
    const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)
    if (nm?.[1] !== undefined) mod = nm[1]
    else if (url.includes('/src/')) mod = url.slice(url.indexOf('/src/') + 1)
    if (byFunction) mod = `\`${n?.callFrame.functionName || '(anonymous)'}\` (${mod})`
    counts.set(mod, (counts.get(mod) ?? 0) + 1)
  }
  const total = prof.samples.length
  return [...counts.entries()].map(([k, v]) => [k, 100 * v / total] as [string, number]).sort((a, b) => b[1] - a[1])
}

async function herd (sim: PmsSimulator): Promise<void> {
  log('## 2. Cold herd: 1,000 concurrent first requests for one (client, server), two broker instances')
  const s = setup(sim, 1)
  const a = await startBroker(s)
  const b = await startBroker(s)
  try {
    sim.resetCounters()
    sim.setFault({ latencyMs: 50 })
    const started = performance.now()
    const answers = await Promise.all(Array.from({ length: 1000 }, (_, i) => fetch(`${(i % 2 === 0 ? a : b).url}/v1/tokens`, {
      method: 'POST', headers: { authorization: `Bearer ${s.secrets[0]}`, 'content-type': 'application/json' }, body: '{"server":"default"}',
    }).then(async (r) => ({ status: r.status, id: (await r.json() as { tokenId?: string }).tokenId }))))
    const took = performance.now() - started
    sim.setFault({})
    const ok = answers.filter((r) => r.status === 200).length
    log()
    log('| answers 200 | distinct tokens | mints at PMS | time to the last answer |')
    log('|---:|---:|---:|---:|')
    log(`| ${ok} / 1000 | ${new Set(answers.map((r) => r.id)).size} | ${sim.counters.mints} | ${fmt(took)} ms (PMS latency 50 ms) |`)
  } finally {
    await stop(a)
    await stop(b)
    await cleanup(s.prefix)
  }
}

async function restart (sim: PmsSimulator): Promise<void> {
  const n = Number(process.env.BENCH_CLIENTS ?? 5000)
  const cap = 4
  log(`## 3. Restart recovery at scale: ${fmt(n)} active clients on one server`)
  const s = setup(sim, n, { BROKER_ROLE: 'all', PLEX_PROBE_INTERVAL: '1s', PLEX_CONCURRENCY: String(cap) })
  const broker = await startBroker(s)
  const redis = new Redis(REDIS_URL)
  try {
    for (let i = 0; i < n; i += 100) {
      await Promise.all(s.secrets.slice(i, i + 100).map((secret) => fetch(`${broker.url}/v1/tokens`, {
        method: 'POST', headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' }, body: '{"server":"default"}',
      }).then((r) => r.arrayBuffer())))
    }
    await sleep(3000)
    const before = new Map<string, string | null>()
    const ids = await redis.mget(s.secrets.map((_, i) => `${s.prefix}:cur:c${i}:default`))
    s.secrets.forEach((_, i) => before.set(`c${i}`, ids[i]!))
    sim.resetCounters()
    let peak = 0
    let last = sim.counters.mints
    const sampler = setInterval(() => {
      const m = sim.counters.mints
      peak = Math.max(peak, (m - last) * 10)
      last = m
    }, 100)
    await sim.restart({ downForMs: 1000 })
    const back = performance.now()
    let done = -1
    while (performance.now() - back < 120_000) {
      const now = await redis.mget(s.secrets.map((_, i) => `${s.prefix}:cur:c${i}:default`))
      if (now.every((id, i) => id !== null && id !== before.get(`c${i}`))) {
        done = performance.now() - back
        break
      }
      await sleep(100)
    }
    clearInterval(sampler)
    log()
    log('| active clients | time from PMS answering again to every client holding a fresh token | peak mint rate at PMS | most PMS requests in flight at once | cap (PLEX_CONCURRENCY) |')
    log('|---:|---:|---:|---:|---:|')
    log(`| ${fmt(n)} | ${done < 0 ? 'not within 120 s' : `${fmt(done / 1000, 1)} s`} | ${fmt(peak)} mints/s | ${sim.counters.maxInFlight} | ${cap} per server and instance |`)
  } finally {
    redis.disconnect()
    await stop(broker)
    await cleanup(s.prefix)
  }
}

async function footprint (sim: PmsSimulator): Promise<void> {
  const n = Number(process.env.BENCH_TOKENS ?? 50_000)
  log(`## 4. Footprint: ${fmt(n)} active tokens`)
  const s = setup(sim, n)
  const broker = await startBroker(s)
  const redis = new Redis(REDIS_URL)
  try {
    const started = performance.now()
    for (let i = 0; i < n; i += 200) {
      await Promise.all(s.secrets.slice(i, i + 200).map((secret) => fetch(`${broker.url}/v1/tokens`, {
        method: 'POST', headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' }, body: '{"server":"default"}',
      }).then((r) => r.arrayBuffer())))
    }
    const seedS = (performance.now() - started) / 1000
    const id = await redis.get(`${s.prefix}:cur:c0:default`)
    const tok = Number(await redis.memory('USAGE', `${s.prefix}:tok:${id}`))
    const cur = Number(await redis.memory('USAGE', `${s.prefix}:cur:c0:default`))
    // Both audit streams: security events and cache serves.
    const stream = Number(await redis.memory('USAGE', `${s.prefix}:audit`, 'SAMPLES', '0')) +
      Number(await redis.memory('USAGE', `${s.prefix}:audit:serves`, 'SAMPLES', '0'))
    const events = await redis.xlen(`${s.prefix}:audit`) + await redis.xlen(`${s.prefix}:audit:serves`)
    const idx = ['idx:all', 'idx:client:c0', 'idx:server:default', 'active:default']
    const idxBytes = await Promise.all(idx.map(async (k) => Number(await redis.memory('USAGE', `${s.prefix}:${k}`, 'SAMPLES', '0'))))
    const rss = rssMb(broker.pid)
    const metrics = await (await fetch(`${broker.url}/metrics`)).text()
    const heap = Number(/^nodejs_heap_size_used_bytes (\S+)$/m.exec(metrics)?.[1] ?? 0) / 2 ** 20
    const heapTotal = Number(/^nodejs_heap_size_total_bytes (\S+)$/m.exec(metrics)?.[1] ?? 0) / 2 ** 20
    const external = Number(/^nodejs_external_memory_bytes (\S+)$/m.exec(metrics)?.[1] ?? 0) / 2 ** 20
    // One rotation sweep over all of them, in-process, against the same Redis.
    const { buildApp } = await import('../src/app.ts')
    const { loadConfig } = await import('../src/config/index.ts')
    const app = await buildApp(loadConfig({ ...s.env, HOST: '127.0.0.1', LOG_LEVEL: 'silent' }), { defaultMetrics: false })
    const sweepStart = performance.now()
    const due = await app.broker.rotator.due()
    const sweepMs = performance.now() - sweepStart
    await app.close()
    log()
    log('| measure | value |')
    log('|---|---:|')
    log(`| seeding ${fmt(n)} tokens through the API | ${fmt(seedS, 1)} s |`)
    log(`| Redis per token: record hash + current key | ${fmt(tok)} + ${fmt(cur)} bytes |`)
    log(`| Redis per token: index and activity entries (idx:all, idx:client, idx:server, active) | ≈ ${fmt((idxBytes[0]! + idxBytes[2]! + idxBytes[3]!) / n + idxBytes[1]!)} bytes |`)
    log(`| Redis per audit event (stream of ${fmt(events)} events) | ${fmt(stream / events)} bytes |`)
    log(`| broker RSS / JS heap used with ${fmt(n)} active tokens (and ${fmt(n)} clients in its config) | ${fmt(rss, 1)} MB / ${fmt(heap, 1)} MB |`)
    log(`| of which: V8 heap reserved / external (Buffers, native objects) | ${fmt(heapTotal, 1)} MB / ${fmt(external, 1)} MB |`)
    log(`| rotation sweep over ${fmt(n)} active tokens (${due.length} due) | ${fmt(sweepMs)} ms |`)
  } finally {
    redis.disconnect()
    await stop(broker)
    await cleanup(s.prefix)
  }
}

async function scaling (sim: PmsSimulator): Promise<void> {
  log('## 5. Scaling: 1, 2 and 4 broker processes on one Redis (cache hits, 50 connections each)')
  const s = setup(sim, 1)
  log()
  log('| processes | total req/s | p99 ms (worst process) |')
  log('|---:|---:|---:|')
  for (const count of [1, 2, 4]) {
    const procs = await Promise.all(Array.from({ length: count }, () => startBroker(s)))
    try {
      await fetch(`${procs[0]!.url}/v1/tokens`, { method: 'POST', headers: { authorization: `Bearer ${s.secrets[0]}`, 'content-type': 'application/json' }, body: '{"server":"default"}' })
      const results = await Promise.all(procs.map((p) => load(p.url, { connections: 50, secret: s.secrets[0], seconds: Math.max(5, DURATION / 2) })))
      log(`| ${count} | ${fmt(results.reduce((a, r) => a + r.rps, 0))} | ${Math.max(...results.map((r) => r.p99))} |`)
    } finally {
      await Promise.all(procs.map(stop))
    }
  }
  await cleanup(s.prefix)
}

/**
 * `npm run soak`: mixed load (cache hits, new clients, rotations every few seconds) for
 * SOAK_MINUTES (default 10) with a PMS restart every minute. Every served token is checked
 * against the simulator; RSS and heap are sampled. Not part of `npm run bench`'s default set.
 */
async function soak (sim: PmsSimulator): Promise<void> {
  const minutes = Number(process.env.SOAK_MINUTES ?? 10)
  const clients = 200
  log(`## Soak: ${minutes} min, ${clients} clients, TOKEN_RENEW_AFTER 20s, a PMS restart every minute`)
  const s = setup(sim, clients, { BROKER_ROLE: 'all', PLEX_PROBE_INTERVAL: '1s', TOKEN_LIFETIME: '2m', TOKEN_RENEW_AFTER: '20s' })
  const broker = await startBroker(s)
  const samples: Array<{ t: number, rss: number, heap: number }> = []
  let served = 0
  let invalid = 0
  let stillInvalid = 0
  let reportRefused = 0
  let failed = 0
  const end = Date.now() + minutes * 60_000
  let nextRestart = Date.now() + 60_000
  let restarts = 0
  try {
    while (Date.now() < end) {
      const batch = await Promise.all(Array.from({ length: 50 }, () => {
        const secret = s.secrets[Math.floor(Math.random() * clients)]
        const ask = (rejectedTokenId?: string): Promise<{ status: number, token?: string, tokenId?: string }> =>
          fetch(`${broker.url}/v1/tokens`, { method: 'POST', headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' }, body: JSON.stringify({ server: 'default', rejectedTokenId }) })
            .then(async (r) => ({ status: r.status, ...(await r.json() as { token?: string, tokenId?: string }) }))
            .catch(() => ({ status: 0 }))
        return ask().then(async (r) => {
          // Between a PMS restart and its detection the cache still holds dead tokens; a real client
          // then reports the 401 with rejectedTokenId. Count both: dead on first answer, dead after the report.
          if (r.status !== 200 || r.token === undefined || !sim.isUp || sim.isTokenValid(r.token)) return { ...r, dead: false, deadAfterReport: false, refused: false }
          const again = await ask(r.tokenId)
          // A 503 here is honest (PMS not confirmed back yet); a 200 with a dead token is the bug we look for.
          return { ...r, dead: true, refused: again.status !== 200, deadAfterReport: again.status === 200 && (again.token === undefined || !sim.isTokenValid(again.token)) }
        })
      }))
      for (const r of batch) {
        if (r.status !== 200) { failed++; continue }
        served++
        if (r.dead) invalid++
        if (r.deadAfterReport) stillInvalid++
        if (r.refused) reportRefused++
      }
      if (Date.now() >= nextRestart) {
        await sim.restart({ downForMs: 1000 })
        restarts++
        nextRestart = Date.now() + 60_000
      }
      if (samples.length === 0 || Date.now() - samples[samples.length - 1]!.t > 15_000) {
        const m = await (await fetch(`${broker.url}/metrics`)).text()
        samples.push({ t: Date.now(), rss: rssMb(broker.pid), heap: Number(/^nodejs_heap_size_used_bytes (\S+)$/m.exec(m)?.[1] ?? 0) / 2 ** 20 })
      }
      await sleep(20)
    }
    const first = samples[Math.min(2, samples.length - 1)]
    const last = samples.at(-1)
    if (first === undefined || last === undefined) throw new Error('no memory sample was taken')
    log()
    log('| requests served | not 200 | dead on first answer (restart not yet detected) | report answered 503 (retry later) | report answered 200 with a dead token | PMS restarts | RSS after warm-up → end | JS heap after warm-up → end |')
    log('|---:|---:|---:|---:|---:|---:|---:|---:|')
    log(`| ${fmt(served)} | ${fmt(failed)} | ${invalid} | ${reportRefused} | ${stillInvalid} | ${restarts} | ${fmt(first.rss)} → ${fmt(last.rss)} MB | ${fmt(first.heap, 1)} → ${fmt(last.heap, 1)} MB |`)
  } finally {
    await stop(broker)
    await cleanup(s.prefix)
  }
}

/**
 * The push channel at scale: library clients (src/client) streaming from two broker instances,
 * calling PMS through `fetchPms`, and a PMS restart every PUSH_RESTART_EVERY. For each restart:
 * the time from PMS answering again to every client holding a token PMS accepts (learnt from the
 * stream, without asking), and the 401s PMS answered inside and outside that window.
 */
async function push (sim: PmsSimulator): Promise<void> {
  const n = Number(process.env.BENCH_PUSH_CLIENTS ?? 500)
  const restarts = Number(process.env.BENCH_PUSH_RESTARTS ?? 3)
  const every = Number(process.env.PUSH_RESTART_EVERY_S ?? 60) * 1000
  const callEvery = 2000
  log(`## 6. Push channel: ${fmt(n)} library clients streaming from two instances, a PMS restart every ${every / 1000} s (${restarts} restarts), each client calling PMS every ${callEvery / 1000} s`)
  // Production defaults (probe every 15 s); streams per instance raised for the clients.
  const s = setup(sim, n, { BROKER_ROLE: 'all', LOG_LEVEL: 'warn', STREAM_MAX_TOTAL: String(n) })
  const a = await startBroker(s)
  const b = await startBroker(s)
  const heapMb = async (p: Proc): Promise<number> => Number(/^nodejs_heap_size_used_bytes (\S+)$/m.exec(await (await fetch(`${p.url}/metrics`)).text())?.[1] ?? 0) / 2 ** 20
  await sleep(2000)
  const rssBefore = rssMb(a.pid) + rssMb(b.pid)
  const heapBefore = await heapMb(a) + await heapMb(b)
  const latest = new Map<number, string>()
  const sources: TokenSource[] = []
  let calls = 0
  let failedForCaller = 0
  let downErrors = 0
  const running = { on: true }
  const loops: Array<Promise<void>> = []
  try {
    for (let i = 0; i < n; i++) {
      const src = createTokenSource({ brokerUrl: i % 2 === 0 ? a.url : b.url, secret: s.secrets[i], server: 'default', pmsUrl: sim.url })
      src.on('token', (t) => latest.set(i, t.token))
      sources.push(src)
    }
    await Promise.all(sources.map(async (src, i) => { latest.set(i, await src.token()) }))
    await sleep(2000)
    const rssStreams = rssMb(a.pid) + rssMb(b.pid)
    const heapStreams = await heapMb(a) + await heapMb(b)
    const streamsOpen = await Promise.all([a, b].map(async (p) => Number(/^ptb_streams_open (\S+)$/m.exec(await (await fetch(`${p.url}/metrics`)).text())?.[1] ?? 0)))
    for (const [i, src] of sources.entries()) {
      loops.push((async () => {
        await sleep((i * callEvery) / n)
        while (running.on) {
          try {
            const r = await src.fetchPms('/library/sections', { headers: { accept: 'application/json' } })
            await r.arrayBuffer()
            calls++
            if (r.status !== 200) failedForCaller++
          } catch {
            downErrors++
          }
          await sleep(callEvery)
        }
      })())
    }
    const rows: string[] = []
    for (let r = 0; r < restarts; r++) {
      await sleep(every)
      const unauthorizedBefore = sim.counters.unauthorized
      await sim.restart({ downForMs: 1000 })
      const back = performance.now()
      let fresh = -1
      while (performance.now() - back < 60_000) {
        if ([...latest.values()].every((t) => sim.isTokenValid(t)) && latest.size === n) {
          fresh = performance.now() - back
          break
        }
        await sleep(20)
      }
      const inWindow = sim.counters.unauthorized - unauthorizedBefore
      const afterStart = sim.counters.unauthorized
      await sleep(Math.min(10_000, every / 2))
      rows.push(`| ${r + 1} | ${fresh < 0 ? 'not within 60 s' : `${fmt(fresh / 1000, 2)} s`} | ${inWindow} | ${sim.counters.unauthorized - afterStart} |`)
    }
    running.on = false
    await Promise.all(loops)
    log()
    log(`Streams open: ${streamsOpen.join(' + ')}; broker RSS ${fmt(rssBefore)} MB before the streams → ${fmt(rssStreams)} MB with them (two instances), JS heap used ${fmt(heapBefore, 1)} → ${fmt(heapStreams, 1)} MB: about ${fmt(((rssStreams - rssBefore) * 1024) / n, 1)} KiB RSS and ${fmt(((heapStreams - heapBefore) * 1024) / n, 1)} KiB heap per open stream (GC timing makes small counts noisy).`)
    log(`PMS calls by the clients: ${fmt(calls)} answered, ${failedForCaller} not 200 for the caller (after the library's one report and retry), ${downErrors} connection errors (PMS down for 1 s at each restart).`)
    log()
    log('| restart | PMS answering again → every client holds a token PMS accepts | PMS 401s in that window (clients\' first try + the broker\'s checks) | PMS 401s in the 10 s after it |')
    log('|---:|---:|---:|---:|')
    for (const row of rows) log(row)
  } finally {
    running.on = false
    await Promise.all(sources.map(async (src) => { await src.close() }))
    await stop(a)
    await stop(b)
    await cleanup(s.prefix)
  }
}

const SCENARIOS: Record<string, (sim: PmsSimulator) => Promise<void>> = {
  hot,
  herd,
  restart,
  footprint,
  scaling,
  soak,
  push,
  failover: async (sim) => { await failover(sim, log) },
  tls: async (sim) => { ensureWrk(); await tls(sim, log, wrk) },
  proxy: async () => { ensureWrk(); await proxyBench(log) },
}
const DEFAULT_SET = ['hot', 'herd', 'restart', 'footprint', 'scaling']

async function main (): Promise<void> {
  const wanted = process.argv.slice(2).filter((a) => a in SCENARIOS)
  const run = wanted.length > 0 ? wanted : DEFAULT_SET
  const redis = new Redis(REDIS_URL)
  const info = await redis.info('server')
  redis.disconnect()
  log(`Run ${new Date().toISOString()} — \`npm run bench${wanted.length > 0 ? ` ${wanted.join(' ')}` : ''}\``)
  log(`Machine: ${cpus()[0]?.model ?? 'unknown CPU'}, ${cpus().length} cores, ${fmt(totalmem() / 2 ** 30, 1)} GiB; Node ${process.version}; Redis ${/redis_version:(\S+)/.exec(info)?.[1]} on loopback; hot path: wrk in its own process; other scenarios: fetch/autocannon from the bench process; ${DURATION} s per run.`)
  log()
  const sim = await PmsSimulator.start({ version: '1.43.0.10162-aaaaaaaaa' })
  try {
    for (const name of run) {
      await SCENARIOS[name]!(sim)
      log()
    }
  } finally {
    await sim.stop()
  }
  writeFileSync(join(tmpdir(), 'ptb-bench-latest.md'), out.join('\n') + '\n')
}

await main()
