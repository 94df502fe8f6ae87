import t from 'tap'
import { execFile, spawnSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { basename, join, resolve } from 'node:path'
import { parse } from 'yaml'
import { sha256 } from '../src/broker/crypto.ts'
import { ENV_VARIABLES, loadConfig } from '../src/config/index.ts'
import { aclRule } from '../src/redis.ts'
import { startSimFromEnv } from '../src/sim/main.ts'

// The container files checked statically, by construction; test/container/ builds the image and
// runs the stack on a real engine (`npm run test:container`).
/**
 * docker-compose.yml as compose sees it with none of its variables set: `${NAME:-default}` becomes
 * the default (the `$$` escapes stay, as in the file), and the `<<` merge keys are merged.
 */
const composeText = readFileSync('docker-compose.yml', 'utf8')
const compose = parse(composeText.replace(/\$\{([A-Z_]+):-([^}]*)\}/g, '$2'), { merge: true })
const known = new Set(ENV_VARIABLES.map((v) => v.name))

/** Runs docker/init-secrets.sh as a person would (`sh docker/init-secrets.sh [args]`). */
function initSecrets (args: string[], env: Record<string, string> = {}) {
  const r = spawnSync('sh', ['docker/init-secrets.sh', ...args], { encoding: 'utf8', env: { PATH: process.env.PATH, ...env } })
  if (r.status !== 0) throw new Error(`init-secrets.sh exited ${r.status}: ${r.stderr}`)
  return r
}
/** A service's environment with each /run/secrets/<name> mapped to the file init-secrets.sh wrote in `dir`. */
function mapSecrets (env: Record<string, string>, dir: string): Record<string, string> {
  return Object.fromEntries(Object.entries(env).map(([k, v]) => [k, v.replace(/^\/run\/secrets\/([a-z_]+)$/, (_, n: string) => join(dir, basename(compose.secrets[n].file)))]))
}
const CLIENT_SECRET = /\bptb_[A-Za-z0-9_-]{43}\b/g
const sample = mkdtempSync(join(tmpdir(), 'ptb-secrets-'))
initSecrets([join(sample, 'secrets')])
/** What compose may reference under ./docker/secrets/: exactly what init-secrets.sh writes. */
const generated = new Set(readdirSync(join(sample, 'secrets')).map((f) => `./docker/secrets/${f}`))
rmSync(sample, { recursive: true, force: true })

t.test('docker-compose.yml: services, health, dependencies', async (t) => {
  t.same(Object.keys(compose.services).sort(), ['broker', 'broker-ha', 'grafana', 'pms-sim', 'prometheus', 'redis', 'redis-primary', 'redis-replica',
    'sentinel-1', 'sentinel-2', 'sentinel-3'])
  t.same(compose.services.broker.depends_on.redis, { condition: 'service_healthy' }, 'broker waits for a healthy Redis')
  t.match(compose.services.redis.healthcheck.test.join(' '), /redis-cli --user ptb ping/)
  t.same(compose.services.grafana.profiles, ['grafana'], 'grafana is optional')
  const redisConf = readFileSync('docker/redis.conf', 'utf8')
  t.match(redisConf, /^appendonly yes$/m, 'AOF persistence')
  t.match(redisConf, /^maxmemory-policy noeviction$/m, 'never evicts BullMQ or token keys')
})

t.test('every broker variable in compose is one the config reads; the simulator\'s are SIM_*', async (t) => {
  for (const name of Object.keys(compose.services.broker.environment)) t.ok(known.has(name), `${name} is a broker variable`)
  for (const name of Object.keys(compose.services['pms-sim'].environment)) t.match(name, /^SIM_/)
  t.ok(compose.services.broker.environment.BROKER_SECRET_FILE.startsWith('/run/secrets/'), 'secrets via files')
})

t.test('profile ha: a primary, a replica and three Sentinels wired to broker-ha, consistent with the variables it reads', async (t) => {
  const ha = ['redis-primary', 'redis-replica', 'sentinel-1', 'sentinel-2', 'sentinel-3', 'broker-ha']
  for (const name of ha) t.same(compose.services[name].profiles, ['ha'], `${name} is in the ha profile only`)
  for (const name of ['redis', 'broker', 'pms-sim', 'prometheus']) t.notOk(compose.services[name].profiles, `${name} runs without a profile`)
  const script = (name: string): string => (compose.services[name].command as string[]).join(' ')
  for (const name of ['redis-primary', 'redis-replica']) {
    t.match(script(name), /requirepass \$\$\(cat \/run\/secrets\/redis_password\)/, `${name}: the password from the secret`)
    t.match(script(name), /masterauth \$\$\(cat \/run\/secrets\/redis_password\)/, `${name}: can follow the other after a failover`)
    t.match(script(name), new RegExp(`replica-announce-ip ${name}\\b`), `${name}: announced by its service name`)
  }
  t.match(script('redis-replica'), /replicaof redis-primary 6379/)
  const env = compose.services['broker-ha'].environment as Record<string, string>
  for (const name of Object.keys(env)) t.ok(known.has(name), `${name} is a broker variable`)
  const sentinels = env.REDIS_SENTINELS?.split(',')
  t.same(sentinels, ['sentinel-1:26379', 'sentinel-2:26379', 'sentinel-3:26379'], 'REDIS_SENTINELS names the three Sentinel services')
  for (const name of ['sentinel-1', 'sentinel-2', 'sentinel-3']) {
    const s = script(name)
    t.match(s, new RegExp(`sentinel monitor ${env.REDIS_SENTINEL_NAME} redis-primary 6379 2\\b`), `${name} monitors REDIS_SENTINEL_NAME with quorum 2`)
    t.match(s, new RegExp(`sentinel auth-pass ${env.REDIS_SENTINEL_NAME} \\$\\$\\(cat /run/secrets/redis_password\\)`), `${name} authenticates to the data nodes`)
    t.match(s, /requirepass \$\$\(cat \/run\/secrets\/redis_password\)/, `${name} requires the password the broker reads from REDIS_SENTINEL_PASSWORD_FILE`)
    t.match(s, /port 26379/)
    t.match(s, /exec redis-server \/data\/sentinel\.conf --sentinel/, `${name}: a config file of its own it may rewrite`)
    t.same(compose.services[name].secrets, ['redis_password'])
  }
  t.equal(env.REDIS_SENTINEL_PASSWORD_FILE, '/run/secrets/redis_password')
  t.notMatch(env.REDIS_URL, /@/, 'no credentials in the URL')
  // The broker's real config step accepts broker-ha's environment.
  const dir = mkdtempSync(join(tmpdir(), 'ptb-ha-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  initSecrets([dir])
  const mapped = Object.fromEntries(Object.entries(env).map(([k, v]) => [k, v.replace(/^\/run\/secrets\/([a-z_]+)$/, (_, n: string) => join(dir, basename(compose.secrets[n].file)))]))
  const config = loadConfig(mapped)
  t.match(config.redisSentinel, { name: env.REDIS_SENTINEL_NAME, sentinels: [{ host: 'sentinel-1', port: 26379 }, { host: 'sentinel-2', port: 26379 }, { host: 'sentinel-3', port: 26379 }] })
  t.equal(config.redisSentinel?.password, readFileSync(join(dir, 'redis-password'), 'utf8').trim())
  t.equal(config.redisWaitReplicas, 1, 'security events wait for the replica')
})

t.test('compose publishes every port on loopback only, and never Redis', async (t) => {
  const published: string[] = []
  for (const [name, svc] of Object.entries(compose.services) as Array<[string, { ports?: unknown[] }]>) {
    for (const p of svc.ports ?? []) {
      t.type(p, 'string', `${name}: short port syntax`)
      t.match(p, /^127\.0\.0\.1:\d+:\d+$/, `${name} publishes ${String(p)} on 127.0.0.1`)
      published.push(name)
    }
  }
  t.same([...new Set(published)].sort(), ['broker', 'broker-ha', 'grafana', 'pms-sim', 'prometheus'])
  for (const name of ['redis', 'redis-primary', 'redis-replica', 'sentinel-1', 'sentinel-2', 'sentinel-3']) {
    t.notOk(compose.services[name].ports, `${name} is reachable on the compose network only`)
  }
  t.notOk(compose.services.redis.network_mode ?? compose.services.broker.network_mode, 'no host networking')
  const head = readFileSync('docker-compose.yml', 'utf8').split('\nname:')[0]
  t.match(head, /To serve other hosts, change a port's "127\.0\.0\.1:"/, 'the file says how to expose a port')
})

t.test('Redis: a password from a compose secret, protected mode, and the broker uses it', async (t) => {
  const redis = compose.services.redis
  const script = (redis.command as string[]).join(' ')
  t.match(script, /user ptb on >\$\$\(cat \/run\/secrets\/redis_password\) /, 'the ACL user\'s password read from the secret file at start')
  t.match(script, /exec redis-server \/usr\/local\/etc\/redis\/redis\.conf - <</, 'fed on stdin, not as an argument; exec so Redis gets SIGTERM')
  t.same(redis.secrets, ['redis_password'])
  t.equal(redis.user, 'redis', 'not root')
  t.match((redis.healthcheck.test as string[]).join(' '), /REDISCLI_AUTH=.*\/run\/secrets\/redis_password.*redis-cli --user ptb ping/, 'the health check authenticates')
  const conf = readFileSync('docker/redis.conf', 'utf8')
  t.match(conf, /^protected-mode yes$/m)
  t.notMatch(conf, /^\s*requirepass/m, 'no password in the committed config')
  const env = compose.services.broker.environment
  t.equal(env.REDIS_PASSWORD_FILE, '/run/secrets/redis_password')
  t.ok(compose.services.broker.secrets.includes('redis_password'))
  t.notMatch(env.REDIS_URL, /@/, 'no credentials in the URL')
  t.equal(compose.secrets.redis_password.file, './docker/secrets/redis-password')
})

t.test('every /run/secrets file a service reads is one of its compose secrets, written by init-secrets.sh', async (t) => {
  for (const [name, svc] of Object.entries(compose.services) as Array<[string, Record<string, unknown>]>) {
    const mine = new Set((svc.secrets as string[] | undefined) ?? [])
    for (const m of JSON.stringify(svc).matchAll(/\/run\/secrets\/([a-z_]+)/g)) t.ok(mine.has(m[1]!), `${name} mounts ${m[1]}`)
    for (const s of mine) t.ok(generated.has(compose.secrets[s].file), `${s} (${compose.secrets[s].file}) is generated`)
  }
  t.equal(compose.services.broker.environment.BROKER_CONFIG, '/run/secrets/broker_config', 'the config with the clients\' digests comes from the secrets directory')
  t.notOk(existsSync('docker/broker.yaml'), 'no broker config with clients is committed')
  t.match(readFileSync('.gitignore', 'utf8'), /^docker\/secrets\/$/m, 'docker/secrets/ is never committed')
  t.equal(compose.services.grafana.environment.GF_SECURITY_ADMIN_PASSWORD__FILE, '/run/secrets/grafana_admin_password', 'no default Grafana password')
})

t.test('pms-sim has a health check of its own, and it passes against a running simulator', async (t) => {
  const sim = compose.services['pms-sim']
  const test = sim.healthcheck.test as string[]
  t.equal(test[0], 'CMD')
  t.notMatch(test.join(' '), /healthz/, 'not the broker\'s /healthz (the image default)')
  t.ok(test.join(' ').includes(`127.0.0.1:${sim.environment.SIM_CONTROL_PORT}/`), 'asks the simulator\'s control port')
  t.same(compose.services.broker.depends_on['pms-sim'], { condition: 'service_healthy' })
  // Run the very command against a simulator started the way the container starts it.
  const running = await startSimFromEnv({ ...sim.environment, SIM_HOST: '127.0.0.1', SIM_PORT: '0', SIM_CONTROL_HOST: '127.0.0.1', SIM_CONTROL_PORT: '0', SIM_ADMIN_TOKEN_FILE: undefined, SIM_ADMIN_TOKEN: 'x' })
  const port = new URL(running.controlUrl).port
  // Asynchronously: the simulator answers from this very process.
  const check = () => new Promise<number>((resolve) => {
    const args = test.slice(2).map((a) => a.replace(`:${sim.environment.SIM_CONTROL_PORT}/`, `:${port}/`))
    execFile(process.execPath, args, { timeout: 10_000 }, (err) => resolve(err === null ? 0 : typeof err.code === 'number' ? err.code : -1))
  })
  t.equal(test[1], 'node')
  const before = running.sim.counters.requests
  t.equal(await check(), 0, 'healthy while it runs')
  t.equal(running.sim.counters.requests, before, 'the check leaves the simulated PMS\'s counters alone')
  await running.close()
  t.equal(await check(), 1, 'unhealthy once it is gone')
})

t.test('init-secrets.sh: generated secrets, modes, a config of digests the broker loads; a second run keeps them', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'ptb-secrets-'))
  t.teardown(() => rmSync(root, { recursive: true, force: true }))
  const dir = join(root, 'secrets')
  const first = initSecrets([dir])
  const files = readdirSync(dir).sort()
  t.same(files, ['broker-secret', 'broker.yaml', 'grafana-admin-password', 'metrics-token', 'plex-token', 'redis-password'], 'these files and no temporary ones')
  t.equal(statSync(dir).mode & 0o777, 0o700, 'the directory is private on the host')
  for (const f of files) t.equal(statSync(join(dir, f)).mode & 0o777, 0o644, `${f} is 0644: readable by the containers' own users, whatever the host uid`)
  const read = (f: string) => readFileSync(join(dir, f), 'utf8')
  t.equal(Buffer.from(read('broker-secret').trim(), 'base64').length, 32, 'BROKER_SECRET: 32 random bytes')
  t.match(read('redis-password'), /^[0-9a-f]{64}$/, 'Redis password: 256 bits, safe inside redis.conf syntax')

  // The client secrets are printed once, and the config holds only their digests.
  const secrets = [...first.stdout.matchAll(CLIENT_SECRET)].map((m) => m[0])
  t.equal(secrets.length, 2, 'two client secrets printed')
  const yaml = read('broker.yaml')
  for (const s of secrets) t.notOk(yaml.includes(s), 'the config does not hold the secret')
  for (const f of files) for (const s of secrets) t.notOk(read(f).includes(s), `${f} does not hold a client secret`)
  const entries = parse(yaml).clients as Array<Record<string, unknown>>
  for (const e of entries) t.same(Object.keys(e).filter((k) => /secret/i.test(k)), ['secretSha256'], `${String(e.id)}: a digest only`)

  // Loaded by the real loadConfig exactly as the broker container sees it: compose's environment,
  // /run/secrets/<name> mapped to the files init-secrets.sh wrote.
  const env: Record<string, string> = {}
  for (const [k, v] of Object.entries(compose.services.broker.environment as Record<string, string>)) {
    env[k] = v.replace(/^\/run\/secrets\/([a-z_]+)$/, (_, name: string) => join(dir, basename(compose.secrets[name].file)))
  }
  const config = loadConfig(env)
  t.equal(config.redisPassword, read('redis-password'))
  t.equal(config.metricsToken, read('metrics-token').trim(), '/metrics needs the token Prometheus sends')
  t.same(config.brokerSecret, Buffer.from(read('broker-secret'), 'base64'))
  t.equal(config.servers[0]!.adminToken, read('plex-token'), 'the simulator and the broker share the admin token')
  const holder = (secret: string) => config.clients.find((c) => c.secretSha256.equals(sha256(secret)))
  t.match(holder(secrets[0]!), { id: 'thumbnailer', scopes: ['token:issue'], servers: ['default'] }, 'the thumbnailer may get tokens of the default server only')
  t.match(holder(secrets[1]!), { id: 'ops', scopes: ['token:revoke', 'audit:read', 'server:read', 'server:rotate'] })
  t.notOk(config.clients.some((c) => c.scopes.includes('token:issue') && c.servers === '*'), 'no client gets tokens for every server')

  // Idempotent: nothing is overwritten, no secret is printed again.
  const before = Object.fromEntries(files.map((f) => [f, read(f)]))
  const second = initSecrets([dir])
  t.same([...second.stdout.matchAll(CLIENT_SECRET)], [], 'no secret printed the second time')
  t.match(second.stdout, /kept: +broker-secret redis-password plex-token grafana-admin-password metrics-token broker\.yaml/)
  t.same(Object.fromEntries(files.map((f) => [f, read(f)])), before, 'every file unchanged')

  // --force: new secrets, except a real admin token put in plex-token.
  writeFileSync(join(dir, 'plex-token'), 'a-real-admin-token\n')
  const forced = initSecrets(['--force', dir])
  const renewed = [...forced.stdout.matchAll(CLIENT_SECRET)].map((m) => m[0])
  t.equal(renewed.length, 2, 'new client secrets printed')
  t.notSame(renewed, secrets)
  for (const f of ['broker-secret', 'redis-password', 'grafana-admin-password', 'metrics-token', 'broker.yaml']) t.not(read(f), before[f], `${f} renewed`)
  t.equal(read('plex-token'), 'a-real-admin-token\n', 'the admin token is kept')
  for (const f of readdirSync(dir)) t.equal(statSync(join(dir, f)).mode & 0o777, 0o644, `${f} still 0644`)
})

t.test('init-secrets.sh: writes beside itself by default, or to PTB_SECRETS_DIR', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'ptb-secrets-'))
  t.teardown(() => rmSync(root, { recursive: true, force: true }))
  copyFileSync('docker/init-secrets.sh', join(root, 'init-secrets.sh'))
  const r = spawnSync('sh', [join(root, 'init-secrets.sh')], { encoding: 'utf8', cwd: tmpdir(), env: { PATH: process.env.PATH } })
  t.equal(r.status, 0, r.stderr)
  t.ok(existsSync(join(root, 'secrets', 'broker.yaml')), 'docker/secrets/ beside the script, wherever it is run from')
  initSecrets([], { PTB_SECRETS_DIR: join(root, 'elsewhere') })
  t.ok(existsSync(join(root, 'elsewhere', 'redis-password')))
  const bad = spawnSync('sh', ['docker/init-secrets.sh', '--frce'], { encoding: 'utf8' })
  t.equal(bad.status, 2, 'a mistyped option is refused, not taken for a directory')
})

t.test('every file compose and the Dockerfile reference exists (or is made by init-secrets.sh)', async (t) => {
  const files: string[] = []
  for (const svc of Object.values(compose.services) as Array<{ volumes?: string[] }>) {
    for (const v of svc.volumes ?? []) if (v.startsWith('./')) files.push(v.split(':')[0]!)
  }
  for (const s of Object.values(compose.secrets) as Array<{ file: string }>) files.push(s.file)
  for (const f of files) t.ok(existsSync(f) || generated.has(f), `${f} exists`)
  const prom = parse(readFileSync('docker/prometheus.yml', 'utf8'))
  t.equal(prom.scrape_configs[0].static_configs[0].targets[0], 'broker:8080')
  t.equal(prom.scrape_configs[0].authorization?.credentials_file, '/run/secrets/metrics_token', 'Prometheus sends the metrics token')
  t.ok((compose.services.prometheus.secrets as string[]).includes('metrics_token'), 'and has it mounted')
  t.ok(parse(readFileSync('docker/alerts.yml', 'utf8')).groups[0].rules.length >= 3)
  JSON.parse(readFileSync('docker/grafana/dashboards/plex-token-broker.json', 'utf8'))
})

t.test('Dockerfile follows the rules a linter would enforce', async (t) => {
  const df = readFileSync('Dockerfile', 'utf8')
  const froms = df.match(/^FROM .+$/gm)!
  t.same(froms.map((f) => f.split(' AS ')[1]), ['deps', 'build', 'base', 'sim', 'runtime'], 'multi-stage; the broker\'s is the last, so a plain build makes it')
  t.match(df, /^ARG NODE_IMAGE=node:24-[a-z]+-slim$/m, 'Node 24 LTS slim base, pinned major, replaceable with a build argument')
  for (const f of froms) t.match(f, /^FROM (\$\{NODE_IMAGE\}|base) AS /, `${f}: on NODE_IMAGE`)
  t.notMatch(df, /^#\s*syntax=/m, 'no syntax directive: BuildKit would fetch a frontend image from Docker Hub')
  t.match(df, /npm ci --omit=dev/, 'production dependencies only')
  t.match(df, /^USER node$/m, 'non-root')
  t.match(df, /ENTRYPOINT \["\/usr\/bin\/tini", "--"\]/, 'an init for signals')
  t.match(df, /^HEALTHCHECK .*\n.*\/healthz/m, 'health check on liveness')
  t.match(df, /org\.opencontainers\.image\.title/, 'OCI labels')
  t.match(df, /--no-install-recommends/, 'DL3015')
  t.match(df, /rm -rf \/var\/lib\/apt\/lists/, 'DL3009')
  t.notMatch(df, /^ADD /m, 'COPY, not ADD')
  t.notMatch(df, /:latest/, 'no :latest base')
  const ignore = readFileSync('.dockerignore', 'utf8')
  for (const p of ['node_modules', '.git', '.env', 'docker/secrets']) t.match(ignore, new RegExp(`^${p.replace('.', '\\.')}$`, 'm'), `${p} is not sent to the build`)
})

t.test('the image puts `ptb` on PATH: the built CLI, executable, behind a symlink', async (t) => {
  const df = readFileSync('Dockerfile', 'utf8')
  const runtime = df.slice(df.lastIndexOf('\nFROM '))
  const build = df.slice(df.indexOf(' AS build'), df.lastIndexOf('\nFROM '))
  t.match(build, /^RUN npm run build && chmod 0755 dist\/cli\/ptb\.js\b/m, 'made executable in the build stage (COPY keeps the mode)')
  t.match(runtime, /^COPY --from=build [^\n]*\/app\/dist \.\/dist$/m, 'dist/ lands in /app/dist')
  t.match(runtime, /^RUN ln -s \/app\/dist\/cli\/ptb\.js \/usr\/local\/bin\/ptb$/m, 'symlinked onto PATH')
  t.ok(runtime.indexOf('ln -s /app/dist/cli/ptb.js') < runtime.indexOf('USER node'), 'linked as root, before USER node')
  const base = df.slice(df.indexOf(' AS base'), df.indexOf(' AS sim'))
  t.match(base, /^COPY package\.json \.\/$/m, 'package.json beside dist/: `ptb --version` reads it')
  t.match(readFileSync('src/cli/ptb.ts', 'utf8'), /^#!\/usr\/bin\/env node\n/, 'a shebang (tsc keeps it in dist/cli/ptb.js)')
  t.equal(JSON.parse(readFileSync('package.json', 'utf8')).bin.ptb, 'dist/cli/ptb.js', 'npm install -g links the same file')

  // Run through a symlink from elsewhere, as /usr/local/bin/ptb does: package.json is still found.
  const dir = mkdtempSync(join(tmpdir(), 'ptb-bin-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  symlinkSync(resolve('src/cli/ptb.ts'), join(dir, 'ptb.ts'))
  const r = spawnSync(process.execPath, [join(dir, 'ptb.ts'), '--version'], { encoding: 'utf8', cwd: dir })
  t.equal(r.status, 0, r.stderr)
  t.equal(r.stdout, `${JSON.parse(readFileSync('package.json', 'utf8')).version}\n`)
})

t.test('npm start reads .env when there is one, and starts without one', async (t) => {
  const start: string = JSON.parse(readFileSync('package.json', 'utf8')).scripts.start
  t.match(start, /^node --env-file-if-exists=\.env dist\/server\.js$/)
  const flags = start.split(' ').slice(1, -1)
  const env = { PATH: process.env.PATH }
  const withFile = mkdtempSync(join(tmpdir(), 'ptb-env-'))
  const without = mkdtempSync(join(tmpdir(), 'ptb-env-'))
  t.teardown(() => { rmSync(withFile, { recursive: true, force: true }); rmSync(without, { recursive: true, force: true }) })
  writeFileSync(join(withFile, '.env'), 'PLEX_URL=http://pms.example:32400\n')
  const probe = ['-p', 'process.env.PLEX_URL ?? "unset"']
  const a = spawnSync(process.execPath, [...flags, ...probe], { encoding: 'utf8', cwd: withFile, env })
  t.equal(a.stdout, 'http://pms.example:32400\n', `.env is read (${a.stderr})`)
  const b = spawnSync(process.execPath, [...flags, ...probe], { encoding: 'utf8', cwd: without, env })
  t.equal(b.status, 0, `no .env is no error (${b.stderr})`)
  t.equal(b.stdout, 'unset\n')
})

t.test('the image: root-owned code, no source maps or declarations, no simulator, demo or dev helpers in the broker\'s', async (t) => {
  const df = readFileSync('Dockerfile', 'utf8')
  t.notMatch(df, /--chown/, 'nothing is copied as the runtime user: it could rewrite its own code')
  const stage = (name: string) => df.slice(df.indexOf(` AS ${name}\n`), df.indexOf('\nFROM ', df.indexOf(` AS ${name}\n`)) >>> 0)
  const build = stage('build')
  t.match(build, /find dist \\\( -name '\*\.map' -o -name '\*\.d\.ts' \\\) -delete/, 'maps and declarations dropped')
  t.match(build, /mv dist\/sim dist-sim\/sim/, 'the simulator moved out of dist/')
  t.match(build, /rm -f dist\/demo\.js dist\/dev-support\.js/, 'the demo and its helpers dropped')
  const runtime = df.slice(df.lastIndexOf('\nFROM '))
  t.notMatch(runtime, /dist-sim/, 'the broker\'s stage never sees the simulator')
  t.match(stage('sim'), /^COPY --from=build \/app\/dist-sim\/sim \.\/dist\/sim$/m, 'the sim stage has it')
  t.match(runtime, /^USER node$/m)
})

t.test('compose: the broker, broker-ha and the simulator run read-only, without capabilities, without new privileges', async (t) => {
  for (const name of ['broker', 'broker-ha', 'pms-sim']) {
    const svc = compose.services[name]
    t.equal(svc.read_only, true, `${name}: read-only root file system`)
    t.same(svc.cap_drop, ['ALL'], `${name}: no capabilities`)
    t.same(svc.security_opt, ['no-new-privileges:true'], `${name}: no setuid escalation`)
  }
})

t.test('compose: every image of ours is built here (`docker compose pull` never looks for it on a registry)', async (t) => {
  for (const [name, svc] of Object.entries(compose.services) as Array<[string, { image: string, build?: { target?: string }, pull_policy?: string }]>) {
    if (!svc.image.startsWith('plex-token-broker')) continue
    t.ok(svc.build !== undefined || ['build', 'never'].includes(svc.pull_policy ?? ''), `${name} (${svc.image}) has a build`)
  }
  t.equal(compose.services['pms-sim'].build.target, 'sim', 'the simulator has an image of its own')
  t.not(compose.services['pms-sim'].image, compose.services.broker.image, 'not the broker\'s image')
  t.equal(compose.services.broker.build.target, 'runtime')
  t.same(compose.services['broker-ha'].build, compose.services.broker.build, 'broker-ha is built like the broker')
  for (const name of ['broker', 'pms-sim']) t.equal(compose.services[name].build.args.NODE_IMAGE, 'node:24-bookworm-slim', `${name}: NODE_IMAGE is passed on`)
  for (const v of ['NODE_IMAGE', 'REDIS_IMAGE', 'PROMETHEUS_IMAGE', 'PTB_SECRETS_DIR', 'PTB_BROKER_PORT']) t.ok(composeText.includes(`\${${v}:-`), `${v} can be set`)
})

t.test('compose needs Compose 2.24+: the file and the README say so', async (t) => {
  t.ok(compose.name !== undefined && compose.services.broker.env_file[0].required === false, 'it uses a top-level name and an optional env_file')
  t.match(composeText.split('\nname:')[0], /Docker Compose 2\.24 or newer/)
  t.match(readFileSync('README.md', 'utf8'), /Docker Compose 2\.24 or newer/)
})

t.test('compose: PORT and HOST in .env cannot move the broker away from the port compose publishes and Prometheus scrapes', async (t) => {
  const prom = parse(readFileSync('docker/prometheus.yml', 'utf8'))
  const target = prom.scrape_configs[0].static_configs[0].targets[0] as string
  for (const name of ['broker', 'broker-ha']) {
    const svc = compose.services[name]
    t.same(svc.env_file.map((e: { path: string }) => e.path), ['.env'], `${name} reads .env`)
    // `environment` wins over `env_file` in compose.
    t.equal(svc.environment.PORT, '8080', `${name}: PORT pinned`)
    t.equal(svc.environment.HOST, '0.0.0.0', `${name}: HOST pinned`)
    t.match(svc.ports[0], /:8080$/, `${name} publishes the pinned port`)
  }
  t.equal(target, 'broker:8080', 'Prometheus scrapes the pinned port')
  // What the broker makes of it: .env's PORT and HOST overridden as compose does.
  const dir = mkdtempSync(join(tmpdir(), 'ptb-port-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  initSecrets([dir])
  const env = { PORT: '9999', HOST: '127.0.0.1', ...mapSecrets(compose.services.broker.environment, dir) }
  const config = loadConfig(env)
  t.equal(config.port, 8080)
  t.equal(config.host, '0.0.0.0')
})

t.test('compose: the brokers sign in to Redis as the README\'s ACL user, and `default` is off', async (t) => {
  const script = (name: string): string => (compose.services[name].command as string[]).join(' ').replaceAll('$$', '$')
  const rule = aclRule('ptb', { password: '$(cat /run/secrets/redis_password)' })
  for (const name of ['redis', 'redis-primary', 'redis-replica']) t.ok(script(name).includes(rule), `${name} has the README's rule for ptb`)
  t.match(script('redis'), /^user default off$/m, 'the all-powerful default user is off')
  t.notMatch(script('redis'), /requirepass/, 'no password for default either')
  for (const name of ['broker', 'broker-ha']) t.equal(compose.services[name].environment.REDIS_USERNAME, 'ptb', `${name} signs in as ptb`)
  t.match(compose.services.redis.healthcheck.test[1], /redis-cli --user ptb ping/)
  t.ok(readFileSync('README.md', 'utf8').includes(aclRule('ptb')), 'the rule is the README\'s')
})

t.test('compose: a broker pointed at the simulator never sends its admin token to plex.tv', async (t) => {
  for (const [name, svc] of Object.entries(compose.services) as Array<[string, { environment?: Record<string, string> }]>) {
    if (svc.environment?.PLEX_URL === undefined) continue
    t.match(svc.environment.PLEX_URL, /^http:\/\/pms-sim:/, `${name} uses the simulator`)
    t.equal(svc.environment.PLEX_TV_URL, 'off', `${name}: no plex.tv checks`)
    const dir = mkdtempSync(join(tmpdir(), 'ptb-plextv-'))
    t.teardown(() => rmSync(dir, { recursive: true, force: true }))
    initSecrets([dir])
    t.notOk('plexTvUrl' in loadConfig(mapSecrets(svc.environment, dir)), `${name}'s config has no plex.tv`)
  }
})
