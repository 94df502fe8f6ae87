import t from 'tap'
import { spawn, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { freePort } from '../../src/dev-support.ts'

// The container smoke test (`npm run test:container`, run by .ci/run): builds the image on the
// Docker engine of this machine and runs the compose stack from docker-compose.yml as a user
// would, on ports, secrets, tags and a project name of its own, so it never touches a stack or an
// image of the user's. A missing engine or Compose older than 2.24 fails it: it runs only when
// asked for, and .ci/run provisions both.

const id = `ptb-ctest-${process.pid}-${randomBytes(3).toString('hex')}`
const work = mkdtempSync(join(tmpdir(), `${id}-`))
const timings: Array<[string, number]> = []

interface Run { code: number, stdout: string, stderr: string }

/** Runs a command to the end (asynchronously, so tap's timers keep running). */
function run (cmd: string, args: string[], opts: { env?: Record<string, string>, input?: string, timeoutMs?: number } = {}): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { env: { ...process.env, ...opts.env }, stdio: ['pipe', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 900_000)
    child.on('error', (err) => { clearTimeout(timer); resolve({ code: -1, stdout, stderr: `${stderr}${err.message}` }) })
    child.on('close', (code) => { clearTimeout(timer); resolve({ code: code ?? -1, stdout, stderr }) })
    child.stdin.end(opts.input ?? '')
  })
}

/** Like run, but a non-zero exit throws with the command's stderr. */
async function must (cmd: string, args: string[], opts: Parameters<typeof run>[2] = {}): Promise<string> {
  const r = await run(cmd, args, opts)
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}:\n${r.stderr.slice(-4000)}${r.stdout.slice(-2000)}`)
  return r.stdout
}

async function timed<T> (name: string, fn: () => Promise<T>): Promise<T> {
  const start = performance.now()
  try {
    return await fn()
  } finally {
    timings.push([name, (performance.now() - start) / 1000])
  }
}

// --- the engine, Compose and the base images ---------------------------------------------------

const info = spawnSync('docker', ['info', '--format', '{{.ServerVersion}}'], { encoding: 'utf8' })
if (info.status !== 0) {
  throw new Error(`no Docker engine answers (docker info: ${(info.stderr || info.error?.message || '').trim()}). ` +
    'Start one (dockerd, or systemctl start docker); .ci/run provisions Debian\'s docker.io')
}
const composeVersion = spawnSync('docker', ['compose', 'version', '--short'], { encoding: 'utf8' })
const cv = /^v?(\d+)\.(\d+)/.exec(composeVersion.stdout ?? '')
if (composeVersion.status !== 0 || cv === null || Number(cv[1]) < 2 || (Number(cv[1]) === 2 && Number(cv[2]) < 24)) {
  throw new Error(`docker-compose.yml needs Docker Compose 2.24 or newer; \`docker compose version\` says ${JSON.stringify((composeVersion.stdout || composeVersion.stderr || '').trim())}. ` +
    '.ci/run installs Debian\'s docker-compose 2.x (see ensure_compose in .ci/provision.sh)')
}

// Set by base-images.sh: the official images when present or pullable, else the Debian stand-ins.
const images: Record<string, string> = {}
const broker = `${id}:broker`
const sim = `${id}:sim`
let project: string | undefined
/** The thumbnailer's secret, printed once by init-secrets.sh. */
let thumbnailerSecret = ''
const env: Record<string, string> = {}

/** docker compose for this test's project, every profile in view, on this test's variables. */
const compose = async (args: string[], opts: { timeoutMs?: number, check?: boolean, env?: Record<string, string> } = {}): Promise<Run> => {
  const r = await run('docker', ['compose', '-p', project!, '--profile', 'ha', ...args], { env: { ...env, ...opts.env }, timeoutMs: opts.timeoutMs })
  if (opts.check !== false && r.code !== 0) throw new Error(`docker compose ${args.join(' ')} exited ${r.code}:\n${r.stderr.slice(-4000)}`)
  return r
}

/** Removes the stack (containers, networks, volumes) and this test's images; synchronous, so it also runs on exit. */
function teardownSync (): void {
  if (project !== undefined) {
    spawnSync('docker', ['compose', '-p', project, '--profile', 'ha', '--profile', 'grafana', 'down', '--volumes', '--remove-orphans', '--timeout', '5'],
      { env: { ...process.env, ...env }, stdio: 'ignore' })
  }
  // --no-prune keeps the layers: the next run builds from cache.
  spawnSync('docker', ['rmi', '--no-prune', broker, sim], { stdio: 'ignore' })
  rmSync(work, { recursive: true, force: true })
}
process.once('exit', teardownSync)
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => process.exit(1))

t.teardown(async () => {
  teardownSync()
  project = undefined
  t.comment(`timings: ${timings.map(([n, s]) => `${n} ${s.toFixed(1)} s`).join(', ')}`)
})

t.test('the base images: official, or stand-ins built from Debian', async (t) => {
  const out = await timed('base images', () => must('sh', ['docker/base-images.sh'], { timeoutMs: 1_200_000 }))
  for (const line of out.trim().split('\n')) {
    const m = /^([A-Z_]+)=(.+)$/.exec(line)
    if (m?.[1] !== undefined && m[2] !== undefined) images[m[1]] = m[2]
  }
  t.same(Object.keys(images).sort(), ['NODE_IMAGE', 'PROMETHEUS_IMAGE', 'REDIS_IMAGE'], 'one name each')
  for (const name of Object.values(images)) t.equal((await run('docker', ['image', 'inspect', name])).code, 0, `${name} is on the engine`)
  t.comment(`base images: ${JSON.stringify(images)}`)
})

t.test('the image: builds, runs as a non-root user, cannot write its own code, carries no simulator', async (t) => {
  const args = ['build', '--force-rm', '-q', '--build-arg', `NODE_IMAGE=${images.NODE_IMAGE}`]
  await timed('image build', async () => {
    await must('docker', [...args, '-t', broker, '.'])
    await must('docker', [...args, '--target', 'sim', '-t', sim, '.'])
  })
  const inside = async (image: string, script: string): Promise<Run> => await run('docker', ['run', '--rm', '--entrypoint', 'sh', image, '-c', script])
  const who = await inside(broker, 'id -u; id -un')
  t.same(who.stdout.trim().split('\n'), ['1000', 'node'], 'runs as node (uid 1000)')
  const write = await inside(broker, 'touch /app/dist/server.js; echo >> /app/dist/planted.js')
  t.not(write.code, 0, 'the runtime user cannot write to /app/dist')
  t.match(write.stderr, /Permission denied/)
  const owners = await inside(broker, 'stat -c "%U %a %n" /app /app/dist /app/dist/server.js /app/node_modules /app/package.json')
  for (const line of owners.stdout.trim().split('\n')) t.match(line, /^root (755|644) /, `root-owned, read-only to others: ${line}`)
  const contents = await inside(broker, 'find /app/dist \\( -name "*.map" -o -name "*.d.ts" -o -path "*/sim*" -o -name "demo.js" -o -name "dev-support.js" \\) | head; ls /app/dist/server.js; ptb --version')
  t.same(contents.stdout.trim().split('\n'), ['/app/dist/server.js', JSON.parse(readFileSync('package.json', 'utf8')).version],
    'no source maps, declarations, simulator, demo or dev helpers; the broker and `ptb` are there')
  const simFiles = await inside(sim, 'id -un; ls /app/dist; test -f /app/dist/sim/main.js && echo main')
  t.same(simFiles.stdout.trim().split('\n'), ['node', 'sim', 'main'], 'the sim image: the simulator only, as node')
})

t.test('the default profile: a token with the README\'s curl, /metrics with its token, the same token after a restart', async (t) => {
  const secretsDir = join(work, 'secrets')
  const ports = { PTB_BROKER_PORT: await freePort(), PTB_BROKER_HA_PORT: await freePort(), PTB_PROMETHEUS_PORT: await freePort(), PTB_SIM_CONTROL_PORT: await freePort(), PTB_GRAFANA_PORT: await freePort(), PTB_PROXY_PORT: await freePort(), PTB_PROXY_HA_PORT: await freePort() }
  Object.assign(env, images, { PTB_IMAGE: broker, PTB_SIM_IMAGE: sim, PTB_SECRETS_DIR: secretsDir },
    Object.fromEntries(Object.entries(ports).map(([k, v]) => [k, String(v)])))
  const printed = await must('sh', ['docker/init-secrets.sh'], { env })
  const thumbnailer = /^\s*thumbnailer\s+(ptb_\S+)$/m.exec(printed)![1]!
  const ops = /^\s*ops\s+(ptb_\S+)$/m.exec(printed)![1]!
  thumbnailerSecret = thumbnailer
  project = id
  // `up` waits for Redis and the simulator to be healthy (depends_on); the broker is ready when
  // /readyz says so (sooner than its first health check, 15 s in).
  await timed('compose up', async () => {
    await compose(['up', '-d', 'redis', 'pms-sim', 'broker', 'prometheus'], { timeoutMs: 300_000 })
    await untilReady(ports.PTB_BROKER_PORT)
  })

  // The README's own command, on this test's port.
  const readme = readFileSync('README.md', 'utf8')
  const section = readme.slice(readme.indexOf('### With Docker Compose'))
  const curl = /^curl -s -X POST http:\/\/127\.0\.0\.1:8080\/v1\/tokens[^\n]*\\\n[^\n]*$/m.exec(section)![0]
    .replace('127.0.0.1:8080', `127.0.0.1:${ports.PTB_BROKER_PORT}`)
  const getToken = async (): Promise<Record<string, unknown>> => {
    const out = await must('sh', ['-c', curl], { env: { THUMBNAILER_SECRET: thumbnailer } })
    return JSON.parse(out) as Record<string, unknown>
  }
  const first = await getToken()
  t.match(first, { token: String, server: { name: 'default' } }, 'a token from the README\'s curl')

  const metrics = `http://127.0.0.1:${ports.PTB_BROKER_PORT}/metrics`
  const metricsToken = readFileSync(join(secretsDir, 'metrics-token'), 'utf8').trim()
  const scrape = await fetch(metrics, { headers: { authorization: `Bearer ${metricsToken}` } })
  t.equal(scrape.status, 200, '/metrics with the metrics token')
  t.match(await scrape.text(), /^ptb_tokens_served_total\{[^}]*source="upstream"[^}]*\} 1$/m, 'the mint is counted')
  t.equal((await fetch(metrics)).status, 401, 'and refused without it')

  // The token sits in Redis encrypted: Redis's own append-only file never holds it.
  const aof = await compose(['exec', '-T', 'redis', 'sh', '-c', 'cat /data/appendonlydir/*'])
  t.ok(aof.stdout.includes('ptb:'), 'the broker wrote its keys')
  t.notOk(aof.stdout.includes(first.token as string), 'the token is not in Redis in plain text')
  // As the ACL user, nothing @dangerous; the default user is off.
  const redisAs = (args: string) => compose(['exec', '-T', 'redis', 'sh', '-c', `REDISCLI_AUTH="$(cat /run/secrets/redis_password)" redis-cli ${args}`], { check: false })
  t.match((await redisAs('--user ptb FLUSHALL')).stdout, /NOPERM/, 'the broker\'s Redis user cannot FLUSHALL')
  const asDefault = await redisAs('--user default PING')
  t.notMatch(asDefault.stdout, /PONG/, 'the default user is off, even with the password')
  t.match(asDefault.stdout + asDefault.stderr, /WRONGPASS|NOAUTH/)

  // The ops CLI inside the container finds the broker on its default URL.
  const servers = await compose(['exec', '-T', '-e', `PTB_SECRET=${ops}`, 'broker', 'ptb', 'servers', '--json'])
  t.match(JSON.parse(servers.stdout), [{ name: 'default' }], '`ptb servers` in the container')

  // The PMS proxy, with the README's two lines: a key for homepage from the CLI in the
  // container, then PMS through the published proxy port.
  const keyLine = /^KEY=\$\((docker compose exec [^\n]*proxy-key create[^\n]*)\)$/m.exec(section)![1]!
  const created = await compose(keyLine.replace(/^docker compose /, '').split(' '), { env: { PTB_SECRET: ops } })
  const key = created.stdout.trim()
  t.match(key, /^pbk_[^.\s]+\.\S+$/, 'a proxy key, alone on stdout')
  const proxyCurl = /^curl -s http:\/\/127\.0\.0\.1:32402\/library\/sections[^\n]*?(?=\s+#|$)/m.exec(section)![0]
    .replace('127.0.0.1:32402', `127.0.0.1:${ports.PTB_PROXY_PORT}`)
  const sections = await must('sh', ['-c', `${proxyCurl} -w '\\n%{http_code}'`], { env: { KEY: key } })
  t.match(sections, /<MediaContainer[\s\S]*\n200$/, 'the README\'s curl reads PMS through the proxy')
  const plexToken = readFileSync(join(secretsDir, 'plex-token'), 'utf8').trim()
  t.notOk(sections.includes(plexToken), 'the admin token is not in the answer')
  const denied = await fetch(`http://127.0.0.1:${ports.PTB_PROXY_PORT}/security/token?type=delegation&scope=all`, { headers: { 'x-plex-token': key } })
  t.equal(denied.status, 403, 'the hard deny: no PMS token minted through the proxy')
  const asAdmin = await fetch(`http://127.0.0.1:${ports.PTB_PROXY_PORT}/library/sections`, { headers: { 'x-plex-token': plexToken } })
  t.equal(asAdmin.status, 401, 'a PMS token is not a proxy key')

  await timed('broker restart', async () => {
    await compose(['restart', 'broker'])
    await untilReady(ports.PTB_BROKER_PORT)
  })
  const again = await getToken()
  t.equal(again.token, first.token, 'the same token after the broker restarted (cached in Redis)')
  t.equal(again.tokenId, first.tokenId)
})

t.test('the ha profile: kill the primary, 503s, then tokens again after the failover', async (t) => {
  if (project === undefined) throw new Error('the default profile did not start')
  await timed('ha up', () => compose(['up', '-d'], { timeoutMs: 300_000 }))
  const thumbnailer = `Bearer ${thumbnailerSecret}`
  const url = `http://127.0.0.1:${env.PTB_BROKER_HA_PORT}/v1/tokens`
  const ask = async (): Promise<number> => {
    try {
      const res = await fetch(url, { method: 'POST', headers: { authorization: thumbnailer, 'content-type': 'application/json' }, body: '{"server":"default"}', signal: AbortSignal.timeout(5000) })
      await res.arrayBuffer()
      return res.status
    } catch {
      return 0
    }
  }
  let before = 0
  for (let i = 0; i < 60 && before !== 200; i++) { before = await ask(); if (before !== 200) await sleep(500) }
  t.equal(before, 200, 'broker-ha serves tokens through the Sentinels')
  // A failover needs Sentinels that know the replica and each other (they learn it within about
  // 10 s of starting); killing the primary sooner leaves nothing to promote.
  await timed('sentinels settle', async () => {
    let last = ''
    for (let i = 0; i < 120; i++) {
      const views = await Promise.all(['sentinel-1', 'sentinel-2', 'sentinel-3'].map(async (name) => {
        const r = await compose(['exec', '-T', name, 'sh', '-c', 'REDISCLI_AUTH="$(cat /run/secrets/redis_password)" redis-cli -p 26379 SENTINEL master ptb'], { check: false })
        const f = r.stdout.trim().split('\n')
        const field = (k: string): string | undefined => f[f.indexOf(k) + 1]
        return `${name}: replicas ${field('num-slaves')}, other sentinels ${field('num-other-sentinels')}`
      }))
      last = views.join('; ')
      if (views.every((v) => v.endsWith('replicas 1, other sentinels 2'))) return
      await sleep(500)
    }
    throw new Error(`the Sentinels did not find the replica and each other: ${last}`)
  })

  const killed = performance.now()
  await compose(['kill', 'redis-primary'])
  const codes: number[] = []
  let recovered: number | undefined
  // The Sentinels' failover-timeout (30 s) bounds the wait; the documented window is 6-7 s of 503s.
  while (performance.now() - killed < 30_000) {
    const code = await ask()
    codes.push(code)
    if (code === 200 && codes.includes(503)) { recovered = (performance.now() - killed) / 1000; break }
    await sleep(250)
  }
  timings.push(['failover to tokens again', recovered ?? Number.NaN])
  t.comment(`answers after the kill: ${codes.join(' ')}`)
  t.ok(codes.includes(503), 'the outage answers 503')
  t.ok(codes.every((c) => c === 503 || c === 200), 'only 503s (or tokens), never a 500 or a hang')
  t.ok(recovered !== undefined, `tokens again after the failover (${recovered?.toFixed(1)} s)`)
})

/** Waits until the broker on this host port answers /readyz 200 (Redis reachable). */
async function untilReady (port: number): Promise<void> {
  let last = ''
  for (let i = 0; i < 240; i++) {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/readyz`, { signal: AbortSignal.timeout(2000) })
      if (res.status === 200) return
      last = `${res.status} ${await res.text()}`
    } catch (err) {
      last = (err as Error).message
    }
    await sleep(250)
  }
  throw new Error(`the broker on port ${port} did not become ready: ${last}`)
}
