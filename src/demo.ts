/**
 * `npm run demo`: the whole product on one machine with nothing configured. Starts the PMS
 * simulator and a plex.tv simulator (so nothing is ever sent to the real plex.tv), uses the Redis
 * at REDIS_URL when one answers (else starts a private redis-server with its data under ./.demo/),
 * creates a demo client and an ops client, runs the broker with its workers, and prints
 * ready-to-paste curl and ptb commands. Ctrl-C stops everything it started.
 *
 * The demo's secrets (BROKER_SECRET and the two client secrets) live in ./.demo/secrets.json
 * (mode 0600; DEMO_DIR moves it), so a second run on the same Redis opens what the first sealed
 * and the printed commands keep working. The PMS simulator starts afresh each run, which the
 * broker sees as a PMS restart: its first probe re-mints, as it would after a real one.
 */
import type { ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { resolve } from 'node:path'
import closeWithGrace from 'close-with-grace'
import { buildApp } from './app.ts'
import { sha256 } from './broker/crypto.ts'
import { freePort, redisAnswers, startRedis } from './dev-support.ts'
import { type ClientConfig, type Config, ConfigError, loadConfig } from './config/index.ts'
import { policyFrom } from './proxy/presets.ts'
import { startSimFromEnv } from './sim/main.ts'
import { PlexTvSimulator } from './sim/plextv-sim.ts'

const out = (s = ''): void => { process.stdout.write(`${s}\n`) }

export interface DemoSecrets { brokerSecret: string, demoSecret: string, opsSecret: string }

/** The demo's secrets, made on the first run and reused after (mode 0600). */
export function demoSecrets (dir: string): DemoSecrets {
  const file = resolve(dir, 'secrets.json')
  if (existsSync(file)) {
    const saved = JSON.parse(readFileSync(file, 'utf8')) as Partial<DemoSecrets>
    if (typeof saved.brokerSecret === 'string' && typeof saved.demoSecret === 'string' && typeof saved.opsSecret === 'string') {
      return saved as DemoSecrets
    }
  }
  const made: DemoSecrets = {
    brokerSecret: randomBytes(32).toString('base64'),
    demoSecret: `demo_${randomBytes(24).toString('base64url')}`,
    opsSecret: `ops_${randomBytes(24).toString('base64url')}`,
  }
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  writeFileSync(file, JSON.stringify(made, null, 2) + '\n', { mode: 0o600 })
  return made
}

/**
 * Stops a child the demo started and waits for it to exit (SIGKILL after `ms`), so its port is
 * free by the time the demo itself is gone.
 */
async function stopChild (child: ChildProcess, ms = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), ms)
  await exited
  clearTimeout(timer)
}

/** What the demo started, stopped newest first: on SIGINT/SIGTERM, on an error, and when startup fails. */
const running: Array<() => Promise<void>> = []
async function stopAll (): Promise<void> {
  for (const stop of running.splice(0).reverse()) await stop().catch(() => {})
}

async function main (): Promise<void> {
  // From the start: a signal while Redis or the simulators are starting must stop them too.
  closeWithGrace({ delay: 10_000 }, async ({ err }) => {
    if (err !== undefined) process.stderr.write(`demo stopping on error: ${err.message}\n`)
    await stopAll()
  })
  const env = process.env
  const dir = resolve(env.DEMO_DIR ?? '.demo')
  const secrets = demoSecrets(dir)
  let redisUrl = env.REDIS_URL ?? 'redis://127.0.0.1:6379'
  if (!(await redisAnswers(redisUrl))) {
    const started = await startRedis(resolve(dir, 'redis'))
    redisUrl = started.url
    running.push(async () => { await stopChild(started.child) })
    out(`Started redis-server on ${redisUrl} (data in ${resolve(dir, 'redis')})`)
  }

  const simPort = env.SIM_PORT ?? String(await freePort())
  const controlPort = env.SIM_CONTROL_PORT ?? String(await freePort())
  const sim = await startSimFromEnv({ ...env, SIM_PORT: simPort, SIM_CONTROL_PORT: controlPort })
  running.push(async () => { await sim.close() })
  // The simulator's admin token is an account token of this fake plex.tv: the broker's admin
  // token checks and keep-alive pings go there, never to the real plex.tv.
  const plexTv = await PlexTvSimulator.start({ accountToken: sim.sim.adminToken })
  running.push(async () => { await plexTv.stop() })

  const { demoSecret, opsSecret } = secrets
  const config: Config = loadConfig({
    ...env,
    BROKER_DEMO: '1',
    // Local by default: the demo prints 127.0.0.1 URLs, and a wider HOST needs METRICS_TOKEN.
    HOST: env.HOST ?? '127.0.0.1',
    BROKER_SECRET: env.BROKER_SECRET ?? secrets.brokerSecret,
    BROKER_SECRET_FILE: undefined,
    PLEX_TV_URL: plexTv.url,
    REDIS_URL: redisUrl,
    REDIS_PREFIX: env.REDIS_PREFIX ?? 'ptb-demo',
    PLEX_URL: sim.sim.url,
    PLEX_TOKEN: sim.sim.adminToken,
    PLEX_TOKEN_FILE: undefined,
    PLEX_PREFERENCES_PATH: undefined,
    BROKER_CONFIG: undefined,
    PLEX_PROBE_INTERVAL: env.PLEX_PROBE_INTERVAL ?? '2s',
    // The PMS proxy on a port of its own (a free one, so two demos side by side both start).
    PROXY_PORT: env.PROXY_PORT ?? String(await freePort()),
  })
  // The demo client may use the proxy with the `read` preset (docs/proxy.md).
  const readPolicy = policyFrom({ preset: 'read' })
  if (!('policy' in readPolicy)) throw new Error(`demo proxy rules: ${readPolicy.problems.join('; ')}`)
  const clients: ClientConfig[] = [
    { id: 'demo', secretSha256: sha256(demoSecret), servers: '*', scopes: ['token:issue', 'source:connect'], rateLimit: config.defaultRateLimit, sources: '*', proxy: readPolicy.policy },
    { id: 'ops', secretSha256: sha256(opsSecret), servers: '*', scopes: ['token:revoke', 'audit:read', 'server:read', 'server:rotate'], rateLimit: config.defaultRateLimit, sources: [] },
  ]
  const app = await buildApp({ ...config, clients })
  running.push(async () => { await app.close() })
  await app.listen({ host: config.host, port: config.port })
  await app.proxy.listen(config.host)
  const base = `http://127.0.0.1:${config.port}`
  const proxyBase = `http://127.0.0.1:${app.proxy.port('default')}`
  // A key for this run (a day long): what a tool would be given instead of a PMS token.
  const { key: proxyKey } = await app.proxy.keys.create({ client: 'demo', label: 'demo run', expiresAt: Date.now() + 86_400_000 })
  // Wait for the first probe: on a second run it finds the cached tokens of the previous
  // simulator dead (a PMS restart) and replaces them before anyone asks.
  const started = Date.now()
  while (Date.now() - started < 10_000) {
    const st = await app.broker.states.get('default').catch(() => undefined)
    if (st?.lastProbeAt !== undefined && st.lastProbeAt !== null && st.lastProbeAt >= started) break
    await new Promise((resolve) => setTimeout(resolve, 100))
  }

  out()
  out('plex-token-broker demo is running')
  out(`  broker          ${base}   (OpenAPI UI: ${base}/docs)`)
  out(`  PMS simulator   ${sim.sim.url}`)
  out(`  Redis           ${redisUrl}   prefix ${config.redisPrefix}`)
  out(`  plex.tv sim     ${plexTv.url}`)
  out(`  PMS proxy       ${proxyBase}   (the simulator behind scoped proxy keys)`)
  out(`  secrets         ${resolve(dir, 'secrets.json')} (kept for the next run)`)
  out()
  out('Get a token as the demo client:')
  out(`  curl -s -X POST ${base}/v1/tokens -H 'Authorization: Bearer ${demoSecret}' -H 'Content-Type: application/json' -d '{"server":"default"}'`)
  out()
  out('Or keep a push stream open (another shell): the token now, and every change of it:')
  out(`  curl -N -H 'Authorization: Bearer ${demoSecret}' '${base}/v1/tokens/stream?server=default'`)
  out()
  out('Use it against PMS (the simulator):')
  out(`  curl -s ${sim.sim.url}/library/sections -H 'Accept: application/json' -H 'X-Plex-Token: <token from above>'`)
  out()
  out('Or let a tool talk to PMS through the proxy with a proxy key (preset `read`), never a PMS token:')
  out(`  curl -s ${proxyBase}/library/sections -H 'Accept: application/json' -H 'X-Plex-Token: ${proxyKey}'`)
  out(`  curl -s ${proxyBase}/security/token -H 'X-Plex-Token: ${proxyKey}'     # 403: never reaches PMS`)
  out()
  out('Simulate a PMS restart (every transient token dies), then watch the broker recover:')
  out(`  curl -s -X POST '${sim.controlUrl}/restart?downMs=2000'`)
  out(`  curl -s ${base}/v1/servers -H 'Authorization: Bearer ${opsSecret}'`)
  out(`  curl -s '${base}/v1/audit?limit=5' -H 'Authorization: Bearer ${opsSecret}'`)
  out()
  out('Revoke the demo client\'s tokens:')
  out(`  curl -s -X POST ${base}/v1/revoke -H 'Authorization: Bearer ${opsSecret}' -H 'Content-Type: application/json' -d '{"client":"demo","reason":"demo"}'`)
  out()
  out('Or use the ops CLI against it (in another shell):')
  out(`  export PTB_URL=${base}`)
  out(`  export PTB_SECRET=${opsSecret}`)
  out('  bin/ptb servers')
  out('  bin/ptb audit --limit 5')
  out('  bin/ptb revoke --client demo --reason demo')
  out()
  out('Ctrl-C stops the broker, the simulator and any Redis the demo started.')
}

if (import.meta.main) {
  main().catch((err: unknown) => {
    const msg = err instanceof ConfigError || err instanceof Error ? err.message : String(err)
    process.stderr.write(`demo: ${msg}\n`)
    if ((err as { code?: string }).code === 'EADDRINUSE') {
      // Most often a demo already running: it keeps working. A second one beside it needs its own
      // port and its own Redis prefix (its simulator is another PMS under the same server name).
      process.stderr.write('demo: is another demo (or broker) already running there? Stop it first (Ctrl-C in its shell), or give this one its own port and Redis prefix: PORT=8090 REDIS_PREFIX=ptb-demo2 bin/demo\n')
    }
    // A failed start (say, the port is taken) stops what was already started before exiting.
    void stopAll().finally(() => process.exit(1))
  })
}
