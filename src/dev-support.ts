/**
 * Helpers for running the broker's pieces on one machine (the demo, the tests, the bench): a free
 * port, whether a Redis answers, a private redis-server. Kept apart from the demo so importing
 * them does not load the whole app.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { mkdirSync } from 'node:fs'
import { connect, createServer } from 'node:net'

/** Resolves true when something answers PING at this Redis URL within a second. */
export function redisAnswers (url: string): Promise<boolean> {
  const u = new URL(url)
  return new Promise((resolve) => {
    const s = connect(Number(u.port || 6379), u.hostname)
    const finish = (ok: boolean): void => { s.destroy(); resolve(ok) }
    s.setTimeout(1000, () => finish(false))
    s.on('error', () => finish(false))
    s.on('connect', () => s.write('PING\r\n'))
    s.on('data', (d) => finish(d.toString().startsWith('+PONG') || d.toString().startsWith('-NOAUTH')))
  })
}

export async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const srv = createServer()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number }
      srv.close(() => resolve(port))
    })
  })
}

/** Starts a redis-server for the demo, persisting under `dir`. Throws a clear message when none is installed. */
export async function startRedis (dir: string): Promise<{ url: string, child: ChildProcess }> {
  if (spawnSync('redis-server', ['--version']).status !== 0) {
    throw new Error('No Redis answers on REDIS_URL and no redis-server is installed. ' +
      'Install the Debian package: sudo apt-get install redis-server (or set REDIS_URL to a running Redis).')
  }
  mkdirSync(dir, { recursive: true })
  const port = await freePort()
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir,
    '--appendonly', 'yes', '--save', '', '--maxmemory-policy', 'noeviction'], { stdio: 'ignore' })
  const url = `redis://127.0.0.1:${port}`
  for (let i = 0; i < 50; i++) {
    if (await redisAnswers(url)) return { url, child }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  child.kill()
  throw new Error(`redis-server did not start on port ${port}`)
}
