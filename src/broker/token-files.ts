import { readFile } from 'node:fs/promises'
import { unwatchFile, watchFile } from 'node:fs'
import type { Logger } from 'pino'
import { type ServerConfig, tokenFromPreferences } from '../config/index.ts'
import type { AdminTokenHealth } from './admin-token-health.ts'

/**
 * Watches the files admin tokens come from (`tokenFile`, `preferencesPath`) and swaps a new token
 * in without a restart: Docker and Kubernetes rotate secret files in place, and a re-claimed PMS
 * writes a new PlexOnlineToken to Preferences.xml. Polling (fs.watchFile) rather than inotify,
 * because secret mounts are replaced through symlink swaps that inotify watches miss.
 */
export class TokenFileWatcher {
  readonly #servers: Map<string, ServerConfig>
  readonly #logger: Logger
  readonly #adminHealth: AdminTokenHealth
  readonly #paths: string[] = []

  /** A reloaded token is checked at once (`adminHealth.check`), so a fixed token unblocks minting without waiting for the hourly check. */
  constructor (servers: Map<string, ServerConfig>, logger: Logger, adminHealth: AdminTokenHealth) {
    this.#servers = servers
    this.#logger = logger
    this.#adminHealth = adminHealth
  }

  start (intervalMs: number): void {
    for (const server of this.#servers.values()) {
      const path = server.tokenPath
      if (path === undefined) continue
      this.#paths.push(path)
      watchFile(path, { interval: intervalMs, persistent: false }, () => {
        this.reload(server.name).catch((err: unknown) => this.#logger.warn({ server: server.name, err: { message: (err as Error).message } }, 'could not reload the admin token'))
      })
    }
  }

  /** Re-reads one server's token file; swaps the token in when it changed and is usable. */
  async reload (name: string): Promise<boolean> {
    const current = this.#servers.get(name)
    if (current?.tokenPath === undefined) return false
    const text = await readFile(current.tokenPath, 'utf8')
    const token = current.tokenSource === 'preferencesPath' ? tokenFromPreferences(text) : text.trim()
    if (token === undefined || token === '' || token === current.adminToken) return false
    const next: ServerConfig = Object.freeze({ ...current, adminToken: token })
    this.#servers.set(name, next)
    this.#logger.info({ server: name, source: current.tokenSource }, 'admin token reloaded from its file')
    this.#adminHealth.check(next).catch(() => {})
    return true
  }

  stop (): void {
    for (const p of this.#paths) unwatchFile(p)
  }
}
