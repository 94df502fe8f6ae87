import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import { freePort } from '../src/dev-support.ts'
import type { T } from './helper.ts'

/**
 * A redis-server of the test's own, so a test may pause (SIGSTOP), kill or restart it without
 * disturbing the shared Redis other test files use.
 */
export class PrivateRedis {
  readonly port: number
  /** Data directory: with `persist`, data survives `stop()` + `start()` (AOF), like a Redis restart with its data. */
  readonly dir = mkdtempSync(join(tmpdir(), 'ptb-redis-'))
  persist = false
  #proc: ChildProcess | undefined

  private constructor (port: number) { this.port = port }

  get url (): string { return `redis://127.0.0.1:${this.port}` }

  static async start (t: T, opts: { persist?: boolean } = {}): Promise<PrivateRedis> {
    const r = new PrivateRedis(await freePort())
    r.persist = opts.persist ?? false
    await r.start()
    t.teardown(() => r.stop())
    return r
  }

  async start (): Promise<void> {
    this.#proc = spawn('redis-server', ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--dir', this.dir,
      '--appendonly', this.persist ? 'yes' : 'no', '--appendfsync', 'always'], { stdio: 'ignore' })
    const probe = new Redis(this.url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null })
    for (let i = 0; i < 100; i++) {
      try {
        await probe.connect()
        await probe.ping()
        probe.disconnect()
        return
      } catch {
        probe.disconnect()
        await sleep(50)
      }
    }
    throw new Error('redis-server did not start')
  }

  pause (): void { this.#proc?.kill('SIGSTOP') }
  resume (): void { this.#proc?.kill('SIGCONT') }

  async stop (): Promise<void> {
    const p = this.#proc
    if (p === undefined || p.exitCode !== null) return
    p.kill('SIGCONT')
    p.kill('SIGKILL')
    await new Promise((resolve) => p.once('exit', resolve))
    this.#proc = undefined
  }
}
