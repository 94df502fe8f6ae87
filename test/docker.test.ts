import t from 'tap'
import { spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { parse } from 'yaml'
import { ENV_VARIABLES } from '../src/config.ts'

// No Docker engine runs here: the container files are checked statically, by construction.
const compose = parse(readFileSync('docker-compose.yml', 'utf8'))
const known = new Set(ENV_VARIABLES.map((v) => v.name))
const generated = new Set(readFileSync('docker/init-secrets.sh', 'utf8').match(/secrets\/[a-z-]+/g)!.map((s) => `./docker/${s}`))

t.test('docker-compose.yml: services, health, dependencies', async (t) => {
  t.same(Object.keys(compose.services).sort(), ['broker', 'grafana', 'pms-sim', 'prometheus', 'redis'])
  t.same(compose.services.broker.depends_on.redis, { condition: 'service_healthy' }, 'broker waits for a healthy Redis')
  t.ok(compose.services.redis.healthcheck.test.includes('ping'))
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

t.test('every file compose and the Dockerfile reference exists (or is made by init-secrets.sh)', async (t) => {
  const files: string[] = []
  for (const svc of Object.values(compose.services) as Array<{ volumes?: string[] }>) {
    for (const v of svc.volumes ?? []) if (v.startsWith('./')) files.push(v.split(':')[0])
  }
  for (const s of Object.values(compose.secrets) as Array<{ file: string }>) files.push(s.file)
  for (const f of files) t.ok(existsSync(f) || generated.has(f), `${f} exists`)
  const prom = parse(readFileSync('docker/prometheus.yml', 'utf8'))
  t.equal(prom.scrape_configs[0].static_configs[0].targets[0], 'broker:8080')
  t.ok(parse(readFileSync('docker/alerts.yml', 'utf8')).groups[0].rules.length >= 3)
  JSON.parse(readFileSync('docker/grafana/dashboards/plex-token-broker.json', 'utf8'))
})

t.test('Dockerfile follows the rules a linter would enforce', async (t) => {
  const df = readFileSync('Dockerfile', 'utf8')
  const froms = df.match(/^FROM .+$/gm)!
  t.equal(froms.length, 3, 'multi-stage: deps, build, runtime')
  t.match(df, /ARG NODE_IMAGE=node:24-[a-z]+-slim/, 'Node 24 LTS slim base, pinned major')
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
  t.match(build, /^RUN npm run build && chmod 0755 dist\/cli\/ptb\.js$/m, 'made executable in the build stage (COPY keeps the mode)')
  t.match(runtime, /^COPY --from=build [^\n]*\/app\/dist \.\/dist$/m, 'dist/ lands in /app/dist')
  t.match(runtime, /^RUN ln -s \/app\/dist\/cli\/ptb\.js \/usr\/local\/bin\/ptb$/m, 'symlinked onto PATH')
  t.ok(runtime.indexOf('ln -s /app/dist/cli/ptb.js') < runtime.indexOf('USER node'), 'linked as root, before USER node')
  t.match(runtime, /^COPY [^\n]*package\.json \.\/$/m, 'package.json beside dist/: `ptb --version` reads it')
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
