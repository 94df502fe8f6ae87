import closeWithGrace from 'close-with-grace'
import { buildApp } from './app.ts'
import { ConfigError, loadConfig } from './config/index.ts'

/**
 * The only entry that reads the environment, listens and handles signals.
 * SIGTERM/SIGINT: stop accepting, finish in-flight requests and jobs, close Redis, exit 0 within 10 s.
 */
async function main (): Promise<void> {
  let config
  try {
    config = loadConfig(process.env)
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`plex-token-broker: invalid configuration\n${err.message}\n`)
      process.exit(1)
    }
    throw err
  }
  const app = await buildApp(config)
  closeWithGrace({ delay: 10_000, logger: app.log }, async ({ signal, err }) => {
    if (err !== undefined) app.log.error({ err: { message: err.message, type: err.name } }, 'fatal error, shutting down')
    else app.log.info({ signal }, 'shutting down')
    await app.close()
  })
  await app.listen({ host: config.host, port: config.port })
  // A listener per server with a proxy port, on the same HOST (docs/proxy.md).
  await app.proxy.listen(config.host)
}

main().catch((err: unknown) => {
  // Boot failures (port taken, unreadable file…) get one clear line, not a stack trace.
  process.stderr.write(`plex-token-broker: cannot start: ${err instanceof Error ? err.message : String(err)}\n`)
  process.exit(1)
})
