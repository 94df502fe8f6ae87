import { type ChildProcess, spawn } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { freePort } from '../src/dev-support.ts'
import { sha256 } from '../src/broker/crypto.ts'
import { REDIS_URL, type T } from './helper.ts'

/** Real broker processes (src/server.ts), so kill -9, SIGTERM and boot errors are what ops see. */
export interface Broker { child: ChildProcess, url: string, output: () => string, exited: Promise<number | null> }

export async function startBroker (t: T, env: Record<string, string>): Promise<Broker> {
  const port = await freePort()
  const child = spawn(process.execPath, ['src/server.ts'], {
    env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env, PORT: String(port), HOST: '127.0.0.1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  child.stdout!.on('data', (d) => { out += String(d) })
  child.stderr!.on('data', (d) => { out += String(d) })
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  const url = `http://127.0.0.1:${port}`
  for (let i = 0; i < 100; i++) {
    if (child.exitCode !== null) break
    try {
      if ((await fetch(`${url}/healthz`)).ok) return { child, url, output: () => out, exited }
    } catch {}
    await sleep(100)
  }
  return { child, url, output: () => out, exited }
}

export function baseEnv (t: T & { testdir: () => string }, sim: { url: string, adminToken: string }, prefix: string, secret: string,
  extra: Record<string, string> = {}, secrets: string[] = [secret]) {
  const dir = t.testdir()
  const file = join(dir, 'broker.yaml')
  // One client per secret: `proc`, `proc1`, … The first may also revoke and read the audit trail.
  const clients = secrets.map((s, i) => `  - id: proc${i === 0 ? '' : i}\n    secretSha256: "${sha256(s).toString('hex')}"\n    servers: ["*"]\n` +
    `    scopes: [token:issue${i === 0 ? ', token:revoke, audit:read' : ''}]\n`)
  writeFileSync(file, `clients:\n${clients.join('')}`)
  return {
    REDIS_URL,
    REDIS_PREFIX: prefix,
    BROKER_SECRET: randomBytes(32).toString('base64'),
    BROKER_CONFIG: file,
    PLEX_URL: sim.url,
    PLEX_TOKEN: sim.adminToken,
    LOG_LEVEL: 'info',
    ...extra,
  }
}

/** POST /v1/tokens; a network failure is status 0 (the caller decides whether that is allowed). */
/** A token answer's body; on an error status `token` and `tokenId` are absent, and the test fails on them. */
export type TokenBody = { token: string, tokenId: string } & Record<string, string>

export async function getToken (url: string, secret: string): Promise<{ status: number, body: TokenBody }> {
  try {
    const r = await fetch(`${url}/v1/tokens`, {
      method: 'POST',
      headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' },
      body: JSON.stringify({ server: 'default' }),
      signal: AbortSignal.timeout(10_000),
    })
    return { status: r.status, body: await r.json() as TokenBody }
  } catch (err) {
    return { status: 0, body: { error: String((err as Error).cause ?? err) } as Record<string, string> as TokenBody }
  }
}
