import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis, type RedisOptions } from 'ioredis'
import { freePort } from '../src/dev-support.ts'

/**
 * Real Redis topologies on loopback for the HA tests and the failover bench: TLS servers with a CA
 * made on the spot (openssl), a primary with a replica and three Sentinels, a three-primary
 * Cluster. Every process is spawned here, in a temp dir of its own, and killed by `stop()`.
 */

export interface Teardown { teardown: (fn: () => unknown) => void }

export class RedisNode {
  readonly port: number
  readonly dir: string
  readonly args: string[]
  readonly probe: RedisOptions
  #proc: ChildProcess | undefined
  #stderr = ''

  constructor (port: number, dir: string, args: string[], probe: RedisOptions = {}) {
    this.port = port
    this.dir = dir
    this.args = args
    this.probe = probe
  }

  get address (): string { return `127.0.0.1:${this.port}` }
  get running (): boolean { return this.#proc !== undefined && this.#proc.exitCode === null && this.#proc.signalCode === null }

  /** Starts the process and resolves once it answers PING (with `probe` options: TLS, password); `extra` args for this start only. */
  async start (extra: string[] = []): Promise<void> {
    this.#proc = spawn('redis-server', [...this.args.filter((_, i, a) => !(extra.includes('--replicaof') && (a[i] === '--replicaof' || a[i - 1] === '--replicaof' || a[i - 2] === '--replicaof'))), ...extra],
      { stdio: ['ignore', 'ignore', 'pipe'], cwd: this.dir })
    this.#proc.stderr?.on('data', (d: Buffer) => { this.#stderr += d.toString() })
    for (let i = 0; i < 100; i++) {
      if (!this.running) throw new Error(`redis-server ${this.args.join(' ')} exited: ${this.#stderr}`)
      const c = this.client({ lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false })
      c.on('error', () => {})
      try {
        await c.connect()
        await c.ping()
        return
      } catch {
        await sleep(50)
      } finally {
        c.disconnect()
      }
    }
    throw new Error(`redis-server on ${this.port} did not answer: ${this.#stderr}`)
  }

  /** A direct connection to this node (the test's own, not the broker's). */
  client (extra: RedisOptions = {}): Redis {
    return new Redis({ host: '127.0.0.1', port: this.port, ...this.probe, ...extra })
  }

  /** SIGSTOP / SIGCONT: a node that stops answering (a stalled machine, a lagging replica). */
  pause (): void { this.#proc?.kill('SIGSTOP') }
  resume (): void { this.#proc?.kill('SIGCONT') }

  /** SIGKILL: the machine is gone, nothing is flushed or announced. */
  async kill (): Promise<void> {
    const p = this.#proc
    if (p === undefined || !this.running) return
    p.kill('SIGCONT')
    p.kill('SIGKILL')
    await new Promise((resolve) => p.once('exit', resolve))
  }

  async stop (): Promise<void> {
    await this.kill()
    this.#proc = undefined
  }
}

function tempDir (t: Teardown, name: string): string {
  const dir = mkdtempSync(join(tmpdir(), `ptb-${name}-`))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

const COMMON = ['--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--maxmemory-policy', 'noeviction']

/** A CA, a server certificate for 127.0.0.1/localhost, a client certificate, and an unrelated CA. */
export interface TlsFiles { dir: string, ca: string, serverCert: string, serverKey: string, clientCert: string, clientKey: string, otherCa: string }

export function makeTls (t: Teardown): TlsFiles {
  const dir = tempDir(t, 'tls')
  const ssl = (...args: string[]): void => { execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' }) }
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
  ssl('req', '-x509', '-new', ...ec, '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', '/CN=ptb test CA')
  ssl('req', '-x509', '-new', ...ec, '-keyout', 'other.key', '-out', 'other.crt', '-days', '2', '-subj', '/CN=some other CA')
  writeFileSync(join(dir, 'server.ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n')
  writeFileSync(join(dir, 'client.ext'), 'extendedKeyUsage=clientAuth\n')
  for (const [name, subject] of [['server', '/CN=localhost'], ['client', '/CN=ptb-broker']] as const) {
    ssl('req', '-new', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', subject)
    ssl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.crt`, '-days', '2', '-extfile', `${name}.ext`)
  }
  const p = (f: string): string => join(dir, f)
  return { dir, ca: p('ca.crt'), serverCert: p('server.crt'), serverKey: p('server.key'), clientCert: p('client.crt'), clientKey: p('client.key'), otherCa: p('other.crt') }
}

/**
 * A TLS-only redis-server (`--port 0`) that requires a client certificate, with `aclRules` as its
 * ACL file (the default user off). `probe`: how the test itself connects (TLS and a user).
 */
export async function startTlsRedis (t: Teardown, tls: TlsFiles, aclRules: string, probe: RedisOptions): Promise<RedisNode> {
  const dir = tempDir(t, 'redis-tls')
  const port = await freePort()
  writeFileSync(join(dir, 'users.acl'), `${aclRules}\n`, { mode: 0o600 })
  const node = new RedisNode(port, dir, [...COMMON, '--port', '0', '--tls-port', String(port), '--dir', dir,
    '--tls-cert-file', tls.serverCert, '--tls-key-file', tls.serverKey, '--tls-ca-cert-file', tls.ca, '--tls-auth-clients', 'yes',
    '--aclfile', join(dir, 'users.acl')], probe)
  await node.start()
  t.teardown(() => node.stop())
  return node
}

export interface SentinelGroup {
  name: string
  primary: RedisNode
  replica: RedisNode
  sentinels: RedisNode[]
  /** `host:port,…` for REDIS_SENTINELS. */
  sentinelList: string
  /** The address the Sentinels name as primary now. */
  currentPrimary: () => Promise<string | undefined>
  /** The data node that is primary now (by the Sentinels' word). */
  primaryNode: () => Promise<RedisNode | undefined>
}

/**
 * A primary, one replica and three Sentinels (quorum 2), all on loopback. Resolves once every
 * Sentinel knows the replica and the two other Sentinels, so a failover can start at once.
 */
export async function startSentinelGroup (t: Teardown, opts: { downAfterMs?: number, failoverTimeoutMs?: number } = {}): Promise<SentinelGroup> {
  const name = 'ptbha'
  const dir = tempDir(t, 'sentinel')
  const data: RedisNode[] = []
  for (const role of ['primary', 'replica']) {
    const port = await freePort()
    const d = join(dir, role)
    execFileSync('mkdir', ['-p', d])
    const args = [...COMMON, '--port', String(port), '--dir', d, '--repl-diskless-sync', 'yes', '--repl-diskless-sync-delay', '0']
    if (role === 'replica') args.push('--replicaof', '127.0.0.1', String(data[0]!.port))
    const node = new RedisNode(port, d, args)
    await node.start()
    t.teardown(() => node.stop())
    data.push(node)
  }
  const [primary, replica] = data
  if (primary === undefined || replica === undefined) throw new Error('the sentinel group started without its primary and replica')
  await waitFor(10_000, async () => {
    const c = replica.client()
    try {
      return /master_link_status:up/.test(await c.info('replication'))
    } finally {
      c.disconnect()
    }
  }, 'the replica did not sync')

  const sentinels: RedisNode[] = []
  for (let i = 0; i < 3; i++) {
    const port = await freePort()
    const d = join(dir, `sentinel-${i}`)
    execFileSync('mkdir', ['-p', d])
    // Sentinel rewrites its config file, so each gets one of its own.
    writeFileSync(join(d, 'sentinel.conf'), [
      `port ${port}`, 'bind 127.0.0.1', `dir ${d}`,
      `sentinel monitor ${name} 127.0.0.1 ${primary.port} 2`,
      `sentinel down-after-milliseconds ${name} ${opts.downAfterMs ?? 1000}`,
      `sentinel failover-timeout ${name} ${opts.failoverTimeoutMs ?? 3000}`,
      `sentinel parallel-syncs ${name} 1`, '',
    ].join('\n'))
    const node = new RedisNode(port, d, [join(d, 'sentinel.conf'), '--sentinel'])
    await node.start()
    t.teardown(() => node.stop())
    sentinels.push(node)
  }
  const master = async (s: RedisNode): Promise<Map<string, string>> => {
    const c = s.client({ enableReadyCheck: false })
    try {
      const flat = await c.call('SENTINEL', 'MASTER', name) as string[]
      return new Map(flat.flatMap((v, i) => i % 2 === 0 ? [[v, flat[i + 1]] as [string, string]] : []))
    } finally {
      c.disconnect()
    }
  }
  await waitFor(20_000, async () => {
    for (const s of sentinels) {
      const m = await master(s)
      if (m.get('num-slaves') !== '1' || m.get('num-other-sentinels') !== '2') return false
    }
    return true
  }, 'the Sentinels did not find each other and the replica')

  const currentPrimary = async (): Promise<string | undefined> => {
    for (const s of sentinels) {
      if (!s.running) continue
      const c = s.client({ enableReadyCheck: false, maxRetriesPerRequest: 0 })
      c.on('error', () => {})
      try {
        const r = await c.call('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', name) as [string, string] | null
        if (r !== null) return `${r[0]}:${r[1]}`
      } catch {
      } finally {
        c.disconnect()
      }
    }
    return undefined
  }
  return {
    name,
    primary,
    replica,
    sentinels,
    sentinelList: sentinels.map((s) => s.address).join(','),
    currentPrimary,
    primaryNode: async () => {
      const at = await currentPrimary()
      return data.find((n) => n.address === at)
    },
  }
}

export interface LocalCluster {
  nodes: RedisNode[]
  /** REDIS_URL of the first node (the seed). */
  url: string
  /** host:port of the others, for REDIS_CLUSTER_NODES. */
  otherSeeds: string
}

/** Three primaries (`--cluster-enabled yes`) joined by `redis-cli --cluster create … --cluster-yes`. */
export async function startCluster (t: Teardown): Promise<LocalCluster> {
  const dir = tempDir(t, 'cluster')
  const nodes: RedisNode[] = []
  for (let i = 0; i < 3; i++) {
    const port = await freePort()
    const bus = await freePort()
    const d = join(dir, `node-${i}`)
    execFileSync('mkdir', ['-p', d])
    const node = new RedisNode(port, d, [...COMMON, '--port', String(port), '--dir', d, '--cluster-enabled', 'yes',
      '--cluster-port', String(bus), '--cluster-config-file', join(d, 'nodes.conf'), '--cluster-node-timeout', '2000'])
    await node.start()
    t.teardown(() => node.stop())
    nodes.push(node)
  }
  execFileSync('redis-cli', ['--cluster', 'create', ...nodes.map((n) => n.address), '--cluster-yes'], { stdio: 'pipe' })
  await waitFor(20_000, async () => {
    for (const n of nodes) {
      const c = n.client()
      try {
        if (!/cluster_state:ok/.test(await c.cluster('INFO') as string)) return false
      } finally {
        c.disconnect()
      }
    }
    return true
  }, 'the cluster did not reach state ok')
  return { nodes, url: `redis://127.0.0.1:${nodes[0]!.port}`, otherSeeds: nodes.slice(1).map((n) => n.address).join(',') }
}

export async function waitFor (ms: number, check: () => Promise<boolean>, message: string): Promise<void> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (await check().catch(() => false)) return
    await sleep(100)
  }
  throw new Error(message)
}
