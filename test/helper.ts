import { randomBytes } from 'node:crypto'
import { Writable } from 'node:stream'
import { Redis } from 'ioredis'
import type { FastifyInstance } from 'fastify'
import { buildApp, type AppOverrides } from '../src/app.ts'
import { sha256 } from '../src/broker/crypto.ts'
import { type ClientConfig, type Config, loadConfig, type Scope, type ServerConfig } from '../src/config/index.ts'
import { PmsSimulator, type PmsSimOptions } from '../src/sim/pms-sim.ts'

export const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'

/** Polls `check` every 100 ms until it holds (true) or `ms` pass (false). */
export async function until (ms: number, check: () => Promise<boolean>): Promise<boolean> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (await check()) return true
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  return false
}

/** The subset of tap's Test we use, so helpers work with any subtest. */
export interface T {
  teardown: (fn: () => unknown) => void
}

/** A unique REDIS_PREFIX per test file and run: runs never collide, and teardown removes its keys. */
export function uniquePrefix (name: string): string {
  return `ptbtest-${name}-${randomBytes(4).toString('hex')}`
}

export async function deleteKeys (prefix: string): Promise<void> {
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 })
  try {
    let cursor = '0'
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000)
      cursor = next
      if (keys.length > 0) await redis.unlink(...keys)
    } while (cursor !== '0')
  } finally {
    redis.disconnect()
  }
}

export interface TestClient {
  id: string
  secret: string
  config: ClientConfig
  auth: { authorization: string }
}

export function makeClient (id: string, opts: { scopes?: Scope[], servers?: string[] | '*', rateLimit?: { max: number, timeWindowMs: number }, sources?: string[] | '*' } = {}): TestClient {
  const secret = `sec_${randomBytes(24).toString('base64url')}`
  const config: ClientConfig = {
    id,
    secretSha256: sha256(secret),
    servers: opts.servers ?? '*',
    scopes: opts.scopes ?? ['token:issue'],
    rateLimit: opts.rateLimit ?? { max: 100_000, timeWindowMs: 60_000 },
    sources: opts.sources ?? [],
  }
  return { id, secret, config, auth: { authorization: `Bearer ${secret}` } }
}

export function serverFor (sim: PmsSimulator, name = 'default'): ServerConfig {
  return { name, url: sim.url, adminToken: sim.adminToken, tokenSource: 'token' }
}

/**
 * The config of an in-process test broker: what `loadConfig` makes of the environment below (so
 * every default is the service's own), with the given servers and clients and `over` on top.
 * Against the defaults: loopback and an ephemeral port, the api role (tests start workers
 * themselves), shorter PMS calls, a rate limit no test reaches by accident, and a plex.tv
 * address nothing listens on.
 */
export function testConfig (prefix: string, servers: ServerConfig[], clients: TestClient[], over: Partial<Config> = {}): Config {
  const loaded = loadConfig({
    BROKER_SECRET: randomBytes(32).toString('base64'),
    REDIS_URL,
    REDIS_PREFIX: prefix,
    HOST: '127.0.0.1',
    PORT: '0',
    BROKER_ROLE: 'api',
    PLEX_TIMEOUT: '2s',
    RATE_LIMIT_DEFAULT: '100000/1m',
    PLEX_TV_URL: 'http://127.0.0.1:1',
    // loadConfig insists on a server; this placeholder is replaced by `servers`.
    PLEX_URL: 'http://127.0.0.1:1',
    PLEX_TOKEN: 'placeholder',
  })
  return { ...loaded, servers, clients: clients.map((c) => c.config), ...over }
}

export async function startSim (t: T, opts: PmsSimOptions = {}): Promise<PmsSimulator> {
  const sim = await PmsSimulator.start(opts)
  t.teardown(() => sim.stop())
  return sim
}

/** Captures every log line so tests can assert what was (and was not) logged. */
export class LogCapture extends Writable {
  readonly lines: string[] = []
  override _write (chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    this.lines.push(...chunk.toString('utf8').split('\n').filter((l) => l !== ''))
    cb()
  }

  get text (): string { return this.lines.join('\n') }
  records (): Array<Record<string, unknown>> { return this.lines.map((l) => JSON.parse(l) as Record<string, unknown>) }
}

/** Builds the app on a unique prefix; closes it and deletes its keys on teardown. */
export async function buildTestApp (t: T, config: Config, overrides: AppOverrides = {}): Promise<FastifyInstance & { logs: LogCapture }> {
  const logs = new LogCapture()
  const app = await buildApp(config, { logStream: logs, ...overrides })
  t.teardown(async () => {
    await app.close()
    await deleteKeys(config.redisPrefix)
  })
  return Object.assign(app, { logs })
}

/**
 * Watches every command Redis executes (MONITOR) on a plain socket, calling `onCommand` with the
 * command's words and its source (`lua` for commands a script ran, else the client's address).
 * A raw socket, not ioredis's monitor mode, which fails with "Command queue state error" when
 * other test files' traffic floods it. Returns a function that stops watching.
 */
export async function monitorRedis (onCommand: (words: string[], source: string) => void): Promise<() => void> {
  const { connect } = await import('node:net')
  const u = new URL(REDIS_URL)
  const socket = connect(Number(u.port || 6379), u.hostname)
  await new Promise<void>((resolve, reject) => { socket.once('connect', () => resolve()); socket.once('error', reject) })
  let buffered = ''
  let ready = false
  const started = new Promise<void>((resolve) => {
    socket.on('data', (chunk: Buffer) => {
      buffered += chunk.toString('utf8')
      let nl: number
      while ((nl = buffered.indexOf('\r\n')) >= 0) {
        const line = buffered.slice(0, nl)
        buffered = buffered.slice(nl + 2)
        if (!ready) {
          if (line === '+OK') { ready = true; resolve() }
          continue
        }
        // +<time> [<db> <source>] "word" "word" …
        const m = /^\+[\d.]+ \[\d+ ([^\]]+)\] (.*)$/.exec(line)
        if (m?.[1] === undefined || m[2] === undefined) continue
        const words = [...m[2].matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((w) => w[1] ?? '')
        onCommand(words, m[1])
      }
    })
  })
  socket.write('MONITOR\r\n')
  await started
  return () => { socket.destroy() }
}
