/**
 * What `npm run bench proxy` (bench/proxy.ts) and `node bench/proxy-memory.ts` share: spawning
 * Node processes, waiting for them, and a broker whose PMS proxy serves one client (`tool`, preset
 * `read` plus media parts) in front of a simulator, with a proxy key for it.
 */
import { type ChildProcess, spawn, type StdioOptions } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Redis } from 'ioredis'
import { sha256 } from '../src/broker/crypto.ts'
import { createKeys } from '../src/broker/keys.ts'
import { freePort } from '../src/dev-support.ts'
import { ProxyKeys } from '../src/proxy/proxy-keys.ts'

export const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'

export function spawnNode (args: string[], env: Record<string, string> = {}, stdio: StdioOptions = 'ignore'): ChildProcess {
  return spawn(process.execPath, args, { env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env }, stdio })
}

export async function waitUp (url: string, headers: Record<string, string> = {}): Promise<void> {
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

export interface BenchBroker {
  process: ChildProcess
  prefix: string
  /** The proxy listener's origin. */
  url: string
  apiPort: number
}

/**
 * A broker (`src/server.ts`, role api, LOG_LEVEL=info) in its own process, its PMS proxy in front
 * of `simUrl`. `nodeArgs` go before the script (profiling, preloads), `env` adds to its environment.
 */
export async function spawnBenchBroker (o: { simUrl: string, adminToken: string, prefix: string, nodeArgs?: string[], env?: Record<string, string>, stdio?: StdioOptions }): Promise<BenchBroker> {
  const dir = mkdtempSync(join(tmpdir(), 'ptb-bench-'))
  const configFile = join(dir, 'broker.yaml')
  writeFileSync(configFile, [
    'clients:',
    '  - id: tool',
    `    secretSha256: "${sha256(randomBytes(16).toString('hex')).toString('hex')}"`,
    '    servers: ["*"]',
    '    scopes: [token:issue]',
    '    proxy: { preset: read, allow: [{ methods: [GET], path: "/library/parts/**" }] }',
  ].join('\n') + '\n')
  const apiPort = await freePort()
  const proxyPort = await freePort()
  const child = spawnNode([...(o.nodeArgs ?? []), 'src/server.ts'], {
    REDIS_URL,
    REDIS_PREFIX: o.prefix,
    BROKER_SECRET: randomBytes(32).toString('base64'),
    BROKER_CONFIG: configFile,
    PLEX_URL: o.simUrl,
    PLEX_TOKEN: o.adminToken,
    PLEX_TV_URL: 'off',
    LOG_LEVEL: 'info',
    BROKER_ROLE: 'api',
    HOST: '127.0.0.1',
    PORT: String(apiPort),
    PROXY_PORT: String(proxyPort),
    ...o.env,
  }, o.stdio)
  return { process: child, prefix: o.prefix, url: `http://127.0.0.1:${proxyPort}`, apiPort }
}

/** Waits for the broker, creates a proxy key for `tool` and waits until the proxy serves it. */
export async function benchKey (broker: BenchBroker, redis: Redis): Promise<string> {
  await waitUp(`http://127.0.0.1:${broker.apiPort}/healthz`)
  const keys = new ProxyKeys({ redis, keys: createKeys(broker.prefix), call: async (fn) => await fn(), now: Date.now })
  const { key } = await keys.create({ client: 'tool', label: 'bench' })
  await waitUp(`${broker.url}/library/sections`, { 'x-plex-token': key })
  return key
}
