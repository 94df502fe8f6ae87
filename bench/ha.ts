/**
 * The Redis HA scenarios of `npm run bench` (bench/run.ts): `failover` (Sentinel: the primary
 * SIGKILLed again and again under load; the unavailability window, the 503s, the audit events
 * lost with and without REDIS_WAIT_REPLICAS, and what WAIT costs) and `tls` (the hot path over
 * TLS vs plain TCP). The Redis processes are the test suite's (test/redis-topology.ts).
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import { sha256 } from '../src/broker/crypto.ts'
import { loadConfig } from '../src/config/index.ts'
import { freePort } from '../src/dev-support.ts'
import { createServices } from '../src/services.ts'
import type { PmsSimulator } from '../src/sim/pms-sim.ts'
import { makeTls, RedisNode, type SentinelGroup, startSentinelGroup, startTlsRedis, waitFor } from '../test/redis-topology.ts'

type Log = (s?: string) => void
type Wrk = (url: string, secret: string | undefined, seconds: number, connections?: number) => { rps: number, p50: number, p99: number, non2xx: number, errors: number }

/** Teardowns of the Redis processes a scenario starts, run at its end. */
class Scope {
  readonly #fns: Array<() => unknown> = []
  teardown (fn: () => unknown): void { this.#fns.push(fn) }
  async close (): Promise<void> {
    for (const fn of this.#fns.reverse()) await fn()
  }
}

const fmt = (n: number, d = 0): string => n.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d })
const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))] ?? Number.NaN
}

function clientsFile (secrets: string[]): string {
  const dir = mkdtempSync(join(tmpdir(), 'ptb-bench-ha-'))
  const lines = ['clients:']
  secrets.forEach((s, i) => lines.push(`  - id: c${i}`, `    secretSha256: "${sha256(s).toString('hex')}"`, '    servers: ["*"]', '    scopes: [token:issue]', '    rateLimit: { max: 100000000, timeWindow: 1m }'))
  const file = join(dir, 'broker.yaml')
  writeFileSync(file, lines.join('\n') + '\n')
  return file
}

async function startBroker (env: Record<string, string>): Promise<{ child: ChildProcess, url: string }> {
  const port = await freePort()
  const child = spawn(process.execPath, ['src/server.ts'], {
    env: { PATH: process.env.PATH, HOME: process.env.HOME, LOG_LEVEL: 'warn', ...env, PORT: String(port), HOST: '127.0.0.1' },
    stdio: 'ignore',
  })
  const url = `http://127.0.0.1:${port}`
  for (let i = 0; i < 200; i++) {
    if (child.exitCode !== null) throw new Error(`broker exited ${child.exitCode}`)
    try { if ((await fetch(`${url}/readyz`)).ok) return { child, url } } catch {}
    await sleep(50)
  }
  throw new Error('the broker never became ready')
}

async function stopBroker (b: { child: ChildProcess }): Promise<void> {
  if (b.child.exitCode !== null) return
  const done = new Promise((resolve) => b.child.once('exit', resolve))
  b.child.kill('SIGTERM')
  await Promise.race([done, sleep(12_000)])
}

/** Waits until the group is whole again: a primary with one synced replica, which every Sentinel sees up. */
async function healed (g: SentinelGroup): Promise<void> {
  await waitFor(60_000, async () => {
    const primary = await g.primaryNode()
    if (primary === undefined) return false
    const c = primary.client({ maxRetriesPerRequest: 0 })
    c.on('error', () => {})
    try {
      const info = await c.info('replication')
      if (!/role:master/.test(info) || !/slave0:.*state=online/.test(info)) return false
    } finally {
      c.disconnect()
    }
    for (const s of g.sentinels) {
      const sc = s.client({ enableReadyCheck: false })
      try {
        const replicas = await sc.call('SENTINEL', 'REPLICAS', g.name) as string[][]
        if (replicas.length === 0 || replicas.some((r) => /s_down|disconnected/.test(r[r.indexOf('flags') + 1]!))) return false
      } finally {
        sc.disconnect()
      }
    }
    return true
  }, 'the group did not heal')
}

interface Req { start: number, end: number, status: number }

async function loadLoop (url: string, secrets: string[], sink: Req[], running: () => boolean): Promise<void> {
  await Promise.all(secrets.map(async (secret) => {
    while (running()) {
      const start = Date.now()
      let status = 0
      try {
        const r = await fetch(`${url}/v1/tokens`, { method: 'POST', headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' }, body: '{"server":"default"}', signal: AbortSignal.timeout(5000) })
        status = r.status
        await r.arrayBuffer()
      } catch {}
      sink.push({ start, end: Date.now(), status })
      await sleep(10)
    }
  }))
}

/**
 * Security audit events written as fast as `concurrency` writers can, through the broker's own
 * AuditWriter (the path every security event takes), each numbered; `acked` holds the numbers whose
 * write was acknowledged, `flagged` those the store reported as not replicated in time.
 */
async function auditWriter (writer: ReturnType<typeof createServices>['auditWriter'], concurrency: number, acked: Set<number>, running: () => boolean): Promise<void> {
  let n = 0
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (running()) {
      const i = n++
      try {
        await writer.write({ action: 'bench.event', detail: { n: i } })
        acked.add(i)
      } catch {
        await sleep(20)
      }
    }
  }))
}

export async function failover (sim: PmsSimulator, log: Log): Promise<void> {
  const kills = Number(process.env.BENCH_KILLS ?? 8)
  const laggingKills = Number(process.env.BENCH_LAGGING_KILLS ?? 3)
  const downAfter = 1000
  log(`## 6. Sentinel failover: the primary SIGKILLed ${kills} + ${laggingKills} times under load, without and with REDIS_WAIT_REPLICAS=1`)
  log()
  log(`A primary, a replica and three Sentinels on loopback (test/redis-topology.ts; down-after-milliseconds ${downAfter}, failover-timeout 3000, quorum 2). ` +
    'A broker process (`node src/server.ts`, BROKER_ROLE=all, REDIS_SENTINELS) under 8 closed-loop clients (fetch, 10 ms pause); in the bench process, ' +
    '16 writers append security audit events through the broker\'s TokenStore as fast as they can. For each kill: the current primary is SIGKILLed, ' +
    'the window runs from the kill to the first successful request after the last failed one, then the killed node is restarted (empty: no persistence) ' +
    'and the bench waits until Sentinel made it a synced replica before the next kill. Lost events: acknowledged to the writer, absent from the new primary\'s stream. ' +
    `The last ${laggingKills} kills of each setting hit a lagging replica: it is stalled (SIGSTOP) for 3 s before the kill and resumed 100 ms after, ` +
    'so it misses what the socket buffers could not hold, and is promoted anyway: the case asynchronous replication loses. Its window counts from the kill.')
  log()
  log('| REDIS_WAIT_REPLICAS | kill | replica | window ms | 503s | other non-200 | slowest answer ms | security events acked | lost | flagged unreplicated |')
  log('|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|')
  const summary: string[] = []
  for (const wait of [0, 1]) {
    const scope = new Scope()
    try {
      const g = await startSentinelGroup(scope, { downAfterMs: downAfter, failoverTimeoutMs: 3000 })
      const secrets = Array.from({ length: 8 }, (_, i) => `ha-${i}-${randomBytes(8).toString('hex')}`)
      const prefix = `ptbbench-ha-${randomBytes(3).toString('hex')}`
      const env = {
        REDIS_URL: 'redis://sentinel',
        REDIS_SENTINELS: g.sentinelList,
        REDIS_SENTINEL_NAME: g.name,
        REDIS_PREFIX: prefix,
        REDIS_WAIT_REPLICAS: String(wait),
        BROKER_SECRET: randomBytes(32).toString('base64'),
        BROKER_CONFIG: clientsFile(secrets),
        PLEX_URL: sim.url,
        PLEX_TOKEN: sim.adminToken,
        BROKER_ROLE: 'all',
        PLEX_PROBE_INTERVAL: '1s',
      }
      const broker = await startBroker(env)
      const writer = createServices(loadConfig({ ...env, BROKER_ROLE: 'api', HOST: '127.0.0.1' }), {
        logStream: new Writable({ write: (_c, _e, cb) => cb() }),
        defaultMetrics: false,
      })
      // Count the writer's own shortfalls (the store reports them through this metric).
      const metric = writer.metrics.unreplicated
      const windows: number[] = []
      const failures: number[] = []
      for (let k = 1; k <= kills + laggingKills; k++) {
        const lagging = k > kills
        const reqs: Req[] = []
        const acked = new Set<number>()
        let running = true
        const before = (await metric.get()).values.reduce((a, v) => a + v.value, 0)
        const load = loadLoop(broker.url, secrets, reqs, () => running)
        const writing = auditWriter(writer.auditWriter, 16, acked, () => running)
        await sleep(1500)
        const victim = (await g.primaryNode()) as RedisNode
        const replica = g.primary === victim ? g.replica : g.primary
        if (lagging) {
          // The replica stalls for 3 s (SIGSTOP): what the kernel's socket buffers cannot hold
          // stays in the primary's output buffer, and dies with it.
          replica.pause()
          await sleep(3000)
        }
        const killedAt = Date.now()
        await victim.kill()
        if (lagging) {
          await sleep(100)
          replica.resume()
        }
        await waitFor(30_000, async () => reqs.some((r) => r.start > killedAt + downAfter && r.status === 200), 'the broker did not recover')
        await sleep(1500)
        running = false
        await Promise.all([load, writing])
        const after = reqs.filter((r) => r.start >= killedAt)
        const failed = after.filter((r) => r.status !== 200)
        const lastFailure = Math.max(killedAt, ...failed.map((r) => r.start))
        const recovered = after.find((r) => r.start > lastFailure && r.status === 200)?.start ?? NaN
        const window = recovered - killedAt
        if (!lagging) {
          windows.push(window)
          failures.push(failed.length)
        }
        // What the new primary holds of the acknowledged events.
        const primary = (await g.primaryNode()) as RedisNode
        const c = primary.client()
        const entries = await c.xrange(writer.keys.audit, '-', '+') as Array<[string, string[]]>
        c.disconnect()
        const present = new Set<number>()
        for (const [, f] of entries) {
          if (f[f.indexOf('action') + 1] !== 'bench.event') continue
          present.add(Number(JSON.parse(f[f.indexOf('detail') + 1]!).n))
        }
        const lost = [...acked].filter((n) => !present.has(n)).length
        const flaggedNow = (await metric.get()).values.reduce((a, v) => a + v.value, 0) - before
        const slowest = Math.max(...reqs.map((r) => r.end - r.start))
        if (process.env.BENCH_DEBUG === '1') process.stderr.write(`writer cache ${writer.connections.cache.status} ${JSON.stringify((writer.connections.cache as unknown as { stream?: { remotePort?: number } }).stream?.remotePort)}\n`)
        log(`| ${wait} | ${k} | ${lagging ? 'lagging' : 'in sync'} | ${fmt(window)} | ${failed.filter((r) => r.status === 503).length} | ${failed.filter((r) => r.status !== 503).length} | ${fmt(slowest)} | ${fmt(acked.size)} | ${lost} | ${flaggedNow} |`)
        // Bring the victim back, empty, as a replica of the new primary, before the next kill.
        await victim.start(['--replicaof', '127.0.0.1', String(primary.port)])
        await healed(g)
        // The writer's own stream starts afresh each round.
        const p = (await g.primaryNode()) as RedisNode
        const pc = p.client()
        await pc.del(writer.keys.audit)
        pc.disconnect()
      }
      summary.push(`- REDIS_WAIT_REPLICAS=${wait}, replica in sync: window p50 **${fmt(pct(windows, 50))} ms**, p99 ${fmt(pct(windows, 99))} ms (the highest of ${kills}: too few kills for a real p99) over ${kills} kills; ` +
        `${fmt(failures.reduce((a, b) => a + b, 0) / kills, 1)} failed requests per kill on average.`)
      await writer.close()
      await stopBroker(broker)
    } finally {
      await scope.close()
    }
  }
  log()
  for (const s of summary) log(s)
  await waitCost(log)
}

/** What WAIT costs a security event: sequential AuditWriter.write calls on a healthy primary + replica, without and with WAIT 1. */
async function waitCost (log: Log): Promise<void> {
  const scope = new Scope()
  try {
    const g = await startSentinelGroup(scope, { downAfterMs: 1000 })
    const rows: string[] = []
    for (const wait of [0, 1]) {
      const config = loadConfig({
        REDIS_URL: 'redis://sentinel',
        REDIS_SENTINELS: g.sentinelList,
        REDIS_SENTINEL_NAME: g.name,
        REDIS_PREFIX: `ptbbench-wait-${wait}`,
        REDIS_WAIT_REPLICAS: String(wait),
        BROKER_SECRET: randomBytes(32).toString('base64'),
        PLEX_URL: 'http://127.0.0.1:1',
        PLEX_TOKEN: 'x',
        BROKER_ROLE: 'api',
        HOST: '127.0.0.1',
      })
      const s = createServices(config, { logStream: new Writable({ write: (_c, _e, cb) => cb() }), defaultMetrics: false })
      for (let i = 0; i < 200; i++) await s.auditWriter.write({ action: 'bench.event' })
      const ms: number[] = []
      for (let i = 0; i < 3000; i++) {
        const t0 = performance.now()
        await s.auditWriter.write({ action: 'bench.event', detail: { i } })
        ms.push(performance.now() - t0)
      }
      const unreplicated = (await s.metrics.unreplicated.get()).values.reduce((a, v) => a + v.value, 0)
      rows.push(`| ${wait} | ${fmt(pct(ms, 50), 3)} | ${fmt(pct(ms, 99), 3)} | ${fmt(1000 / (ms.reduce((a, b) => a + b, 0) / ms.length))} | ${unreplicated} |`)
      await s.close()
    }
    log()
    log('What WAIT costs a security event (3,000 sequential `TokenStore.audit` calls, primary + 1 replica on loopback, after 200 warm-up calls):')
    log()
    log('| REDIS_WAIT_REPLICAS | p50 ms | p99 ms | events/s (one writer) | shortfalls |')
    log('|---:|---:|---:|---:|---:|')
    for (const r of rows) log(r)
  } finally {
    await scope.close()
  }
}

export async function tls (_sim: PmsSimulator, log: Log, wrk: Wrk): Promise<void> {
  const rounds = Number(process.env.BENCH_ROUNDS ?? 3)
  const seconds = Number(process.env.BENCH_SECONDS ?? 10)
  log(`## 7. Hot path over TLS vs plain TCP: wrk -t1 -c64, ${seconds} s per round, ${rounds} alternating rounds`)
  const scope = new Scope()
  const brokers: Array<{ child: ChildProcess }> = []
  try {
    const files = makeTls(scope)
    const probe = { tls: { ca: readFileSync(files.ca), cert: readFileSync(files.clientCert), key: readFileSync(files.clientKey) } }
    const tlsNode = await startTlsRedis(scope, files, 'user default on nopass ~* &* +@all', probe)
    const plainPort = await freePort()
    const plainDir = mkdtempSync(join(tmpdir(), 'ptb-bench-plain-'))
    const plain = new RedisNode(plainPort, plainDir, ['--port', String(plainPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', plainDir])
    await plain.start()
    scope.teardown(() => plain.stop())
    const secret = `tls-${randomBytes(8).toString('hex')}`
    const base = {
      BROKER_SECRET: randomBytes(32).toString('base64'),
      BROKER_CONFIG: clientsFile([secret]),
      PLEX_URL: _sim.url,
      PLEX_TOKEN: _sim.adminToken,
      BROKER_ROLE: 'api',
      LOG_LEVEL: 'info',
    }
    const tlsBroker = await startBroker({ ...base, REDIS_PREFIX: 'ptbbench-tls', REDIS_URL: `rediss://localhost:${tlsNode.port}`, REDIS_TLS_CA_FILE: files.ca, REDIS_TLS_CERT_FILE: files.clientCert, REDIS_TLS_KEY_FILE: files.clientKey })
    const tcpBroker = await startBroker({ ...base, REDIS_PREFIX: 'ptbbench-tcp', REDIS_URL: `redis://127.0.0.1:${plain.port}` })
    brokers.push(tlsBroker, tcpBroker)
    for (const b of [tlsBroker, tcpBroker]) {
      const warm = await fetch(`${b.url}/v1/tokens`, { method: 'POST', headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' }, body: '{"server":"default"}' })
      if (!warm.ok) throw new Error(`warm-up failed: ${warm.status}`)
      wrk(b.url, secret, 3)
    }
    const tcp: Array<ReturnType<Wrk>> = []
    const over: Array<ReturnType<Wrk>> = []
    for (let i = 0; i < rounds; i++) {
      tcp.push(wrk(tcpBroker.url, secret, seconds))
      over.push(wrk(tlsBroker.url, secret, seconds))
    }
    log()
    log('Both brokers at production defaults (LOG_LEVEL=info), each on a redis-server of its own started the same way; the TLS one requires client certificates (mutual TLS).')
    log()
    log('| round | plain TCP req/s | TLS req/s | TLS / TCP | TCP p50 / p99 ms | TLS p50 / p99 ms | non-2xx (TCP / TLS) |')
    log('|---:|---:|---:|---:|---:|---:|---:|')
    for (let i = 0; i < rounds; i++) {
      log(`| ${i + 1} | ${fmt(tcp[i]!.rps)} | ${fmt(over[i]!.rps)} | ${fmt(100 * over[i]!.rps / tcp[i]!.rps, 1)} % | ${fmt(tcp[i]!.p50, 2)} / ${fmt(tcp[i]!.p99, 2)} | ${fmt(over[i]!.p50, 2)} / ${fmt(over[i]!.p99, 2)} | ${tcp[i]!.non2xx} / ${over[i]!.non2xx} |`)
    }
    const med = (xs: number[]): number => pct(xs, 50)
    log()
    log(`- **TLS / TCP, medians: ${fmt(100 * med(over.map((r) => r.rps)) / med(tcp.map((r) => r.rps)), 1)} %** (${fmt(med(tcp.map((r) => r.rps)))} req/s over TCP, ` +
      `${fmt(med(over.map((r) => r.rps)))} over TLS); per round ${fmt(Math.min(...over.map((r, i) => 100 * r.rps / tcp[i]!.rps)), 1)}–${fmt(Math.max(...over.map((r, i) => 100 * r.rps / tcp[i]!.rps)), 1)} %.`)
  } finally {
    for (const b of brokers) await stopBroker(b)
    await scope.close()
  }
}
