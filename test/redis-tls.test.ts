import t from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { type Config, ConfigError, loadConfig } from '../src/config/index.ts'
import { aclRule, connectionOptions } from '../src/redis.ts'
import { buildTestApp, makeClient, serverFor, startSim, testConfig, uniquePrefix, until } from './helper.ts'
import type { Redis } from 'ioredis'
import { makeTls, startTlsRedis, type Teardown, type TlsFiles } from './redis-topology.ts'

// Redis over TLS with an ACL user (README, *Redis: TLS, ACL users, Sentinel, Cluster*): a CA made
// here with openssl, a redis-server listening only on its TLS port and requiring a client
// certificate, and the README's ACL rule as the broker's only way in.

const SECRET = Buffer.alloc(32, 7).toString('base64')
const BASE = { BROKER_SECRET: SECRET, HOST: '127.0.0.1', PLEX_URL: 'http://127.0.0.1:32400', PLEX_TOKEN: 'admin' }

function problems (env: Record<string, string>): string[] {
  try {
    loadConfig({ ...BASE, ...env })
  } catch (err) {
    if (err instanceof ConfigError) return err.problems
    throw err
  }
  return []
}

/** The Redis part of what loadConfig makes of `env`. */
function redisSettings (env: Record<string, string>): Partial<Config> {
  const c = loadConfig({ ...BASE, ...env })
  return {
    redisUrl: c.redisUrl,
    redisPrefix: c.redisPrefix,
    ...(c.redisUsername === undefined ? {} : { redisUsername: c.redisUsername }),
    ...(c.redisPassword === undefined ? {} : { redisPassword: c.redisPassword }),
    ...(c.redisTls === undefined ? {} : { redisTls: c.redisTls }),
    redisWaitReplicas: c.redisWaitReplicas,
    redisWaitTimeoutMs: c.redisWaitTimeoutMs,
  }
}

t.test('REDIS_* settings: TLS files, ACL user, Sentinel and Cluster parse; contradictions are named, never a secret', async (t) => {
  const dir = t.testdir({ 'ca.pem': '-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n', 'key.pem': '-----BEGIN PRIVATE KEY-----\nsecret-key-material\n-----END PRIVATE KEY-----\n', pw: 'sentinel-pw\n', junk: 'not pem' })
  const c = loadConfig({
    ...BASE,
    REDIS_URL: 'rediss://redis.internal:6380/2',
    REDIS_USERNAME: 'ptb',
    REDIS_TLS_CA_FILE: join(dir, 'ca.pem'),
    REDIS_TLS_CERT_FILE: join(dir, 'ca.pem'),
    REDIS_TLS_KEY_FILE: join(dir, 'key.pem'),
    REDIS_TLS_SERVERNAME: 'redis.internal',
    REDIS_SENTINELS: 'sentinel-a:26379, [::1]:26380',
    REDIS_SENTINEL_NAME: 'broker',
    REDIS_SENTINEL_PASSWORD_FILE: join(dir, 'pw'),
    REDIS_WAIT_REPLICAS: '1',
    REDIS_WAIT_TIMEOUT: '50ms',
  })
  t.equal(c.redisUsername, 'ptb')
  t.match(c.redisTls, { servername: 'redis.internal' })
  t.ok(c.redisTls?.key?.includes('secret-key-material'), 'the key is read at boot')
  t.same(c.redisSentinel, { sentinels: [{ host: 'sentinel-a', port: 26379 }, { host: '::1', port: 26380 }], name: 'broker', password: 'sentinel-pw' })
  t.equal(c.redisWaitReplicas, 1)
  t.equal(c.redisWaitTimeoutMs, 50)
  const o = connectionOptions(c)
  t.match(o, { host: 'redis.internal', port: 6380, db: 2, username: 'ptb', tls: { servername: 'redis.internal' } })

  const cluster = loadConfig({ ...BASE, REDIS_CLUSTER: '1', REDIS_CLUSTER_NODES: 'n2:7001,n3:7002' })
  t.same(cluster.redisCluster, { nodes: [{ host: 'n2', port: 7001 }, { host: 'n3', port: 7002 }] })
  // Credentials in the URL become options (never a URL ioredis could log).
  t.match(connectionOptions({ redisUrl: 'redis://user%40x:p%3Ass@h:1' }), { host: 'h', port: 1, username: 'user@x', password: 'p:ss' })

  const cases: Array<[Record<string, string>, RegExp]> = [
    [{ REDIS_TLS_CA_FILE: join(dir, 'ca.pem') }, /^REDIS_TLS_CA_FILE: REDIS_URL must start with rediss:\/\//],
    [{ REDIS_URL: 'rediss://h', REDIS_TLS_CA_FILE: join(dir, 'junk') }, /^REDIS_TLS_CA_FILE: .*junk is not a PEM file$/],
    [{ REDIS_URL: 'rediss://h', REDIS_TLS_CERT_FILE: join(dir, 'ca.pem') }, /^REDIS_TLS_CERT_FILE: mutual TLS needs both/],
    [{ REDIS_URL: 'rediss://h', REDIS_TLS_KEY_FILE: join(dir, 'missing') }, /^REDIS_TLS_KEY_FILE: cannot read .*missing: ENOENT$/],
    [{ REDIS_URL: 'redis://ptb@h', REDIS_USERNAME: 'other' }, /^REDIS_USERNAME: REDIS_URL names a user too/],
    [{ REDIS_SENTINELS: 'a:1,b' }, /^REDIS_SENTINELS: "b" is not host:port$/],
    [{ REDIS_SENTINEL_PASSWORD_FILE: join(dir, 'pw') }, /^REDIS_SENTINEL_PASSWORD_FILE: set, but REDIS_SENTINELS is not$/],
    [{ REDIS_CLUSTER: '1', REDIS_SENTINELS: 'a:1' }, /^REDIS_CLUSTER: Cluster and Sentinel .* exclude each other/],
    [{ REDIS_CLUSTER: '1', REDIS_URL: 'redis://h/3' }, /^REDIS_URL: Redis Cluster has database 0 only$/],
    [{ REDIS_CLUSTER: 'yes' }, /^REDIS_CLUSTER: must be 0 or 1$/],
    [{ REDIS_CLUSTER_NODES: 'a:1' }, /^REDIS_CLUSTER_NODES: set, but REDIS_CLUSTER is not 1$/],
    [{ REDIS_WAIT_REPLICAS: 'all' }, /^REDIS_WAIT_REPLICAS: must be an integer/],
    [{ REDIS_WAIT_TIMEOUT: '2s' }, /^REDIS_WAIT_TIMEOUT: at most 250ms/],
  ]
  for (const [env, expected] of cases) {
    const p = problems(env)
    t.ok(p.some((m) => expected.test(m)), `${JSON.stringify(env)} → ${p.join(' | ')}`)
    t.notOk(/secret-key-material|sentinel-pw/.test(p.join('\n')), 'no secret in a message')
  }
})

t.test('the README carries the ACL rule operators paste, for standalone and Cluster', async (t) => {
  const readme = readFileSync('README.md', 'utf8')
  t.ok(readme.includes(aclRule('ptb')), aclRule('ptb'))
  t.ok(readme.includes(aclRule('ptb', { cluster: true })), aclRule('ptb', { cluster: true }))
})

interface TlsSetup { tls: TlsFiles, port: number, password: string, prefix: string, env: Record<string, string> }

async function tlsRedis (t: Teardown): Promise<TlsSetup & { admin: () => Redis }> {
  const tls = makeTls(t)
  const prefix = uniquePrefix('tls')
  const password = randomBytes(24).toString('hex')
  const adminPassword = randomBytes(24).toString('hex')
  // The default user is off: the broker gets in only as the README's ACL user; `admin` is the test's own.
  const rules = ['user default off', aclRule(prefix, { password }), `user admin on >${adminPassword} ~* &* +@all`].join('\n')
  const probe = { username: 'admin', password: adminPassword, tls: { ca: readFileSync(tls.ca), cert: readFileSync(tls.clientCert), key: readFileSync(tls.clientKey) } }
  const node = await startTlsRedis(t, tls, rules, probe)
  const passwordFile = join(tls.dir, 'redis-password')
  writeFileSync(passwordFile, `${password}\n`, { mode: 0o600 })
  const env = {
    REDIS_URL: `rediss://localhost:${node.port}`,
    REDIS_USERNAME: 'ptb',
    REDIS_PASSWORD_FILE: passwordFile,
    REDIS_PREFIX: prefix,
    REDIS_TLS_CA_FILE: tls.ca,
    REDIS_TLS_CERT_FILE: tls.clientCert,
    REDIS_TLS_KEY_FILE: tls.clientKey,
  }
  return { tls, port: node.port, password, prefix, env, admin: () => node.client() }
}

t.test('over mutual TLS as the ACL user: issue, rotate, revoke and audit; the user can do nothing else', async (t) => {
  const { password, prefix, env, admin } = await tlsRedis(t)
  const sim = await startSim(t)
  const a = makeClient('a')
  const ops = makeClient('ops', { scopes: ['token:revoke', 'audit:read', 'server:read', 'server:rotate'] })
  // REDIS_WAIT_REPLICAS=1 with no replica: every security event comes up short, and says so.
  const settings = redisSettings({ ...env, REDIS_WAIT_REPLICAS: '1', REDIS_WAIT_TIMEOUT: '20ms' })
  const app = await buildTestApp(t, testConfig(prefix, [serverFor(sim)], [a, ops], { ...settings, role: 'all', probeIntervalMs: 1000, tokenRenewAfterMs: 20_000 }), { defaultMetrics: false })
  await app.ready()

  const ready = await app.inject('/readyz')
  t.equal(ready.statusCode, 200, ready.body)
  t.match(ready.json().redis, { mode: 'standalone', role: 'primary', replicas: 0 })
  const first = await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })
  t.equal(first.statusCode, 200, first.body)
  t.ok(sim.isTokenValid(first.json().token), 'a token PMS accepts')
  t.equal((await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })).json().tokenId, first.json().tokenId, 'then served from the cache')

  const rotate = await app.inject({ method: 'POST', url: '/v1/servers/default/rotate', headers: ops.auth })
  t.equal(rotate.statusCode, 202, rotate.body)
  t.ok(await until(10_000, async () => (await app.broker.store.peek('a', 'default')) !== first.json().tokenId), 'the workers rotated it (BullMQ over TLS)')
  const rotated = await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })
  t.ok(sim.isTokenValid(rotated.json().token), 'the rotated token works')
  const revoke = await app.inject({ method: 'POST', url: '/v1/revoke', headers: ops.auth, payload: { client: 'a', reason: 'tls-test' } })
  t.ok(revoke.json().revoked >= 1, revoke.body)
  t.ok(await until(5000, async () => ((await app.broker.states.get('default')).lastProbeAt ?? 0) > 0), 'probes run')
  const audit = await app.inject({ method: 'GET', url: '/v1/audit?limit=100', headers: ops.auth })
  const actions = audit.json().events.map((e: { action: string }) => e.action)
  for (const action of ['token.issue', 'token.rotate', 'token.revoke', 'server.rotate']) t.ok(actions.includes(action), `audited: ${action}`)
  // Let the periodic work run too (the sweep every second, BullMQ's stalled-job check every 5 s),
  // so the ACL check below covers it.
  t.ok(await until(10_000, async () => (await app.broker.states.get('default')).activeTokens !== null), 'the sweep ran')
  await new Promise((resolve) => setTimeout(resolve, 5500))
  const metrics = (await app.inject({ url: '/metrics' })).body
  t.match(metrics, /ptb_redis_unreplicated_writes_total\{action="token\.revoke"\} [1-9]/, 'with no replica, the WAIT shortfall is counted')

  const direct = admin()
  t.teardown(() => direct.disconnect())
  const denied = (await direct.acl('LOG')) as unknown[]
  t.same(denied, [], 'Redis denied the broker nothing (ACL LOG is empty): the rule covers every command it ran')
  t.same(await direct.acl('DRYRUN', 'ptb', 'SET', 'someone-else:key', 'x'), "This user has no permissions to access the 'someone-else:key' key", 'other keys are out of reach')
  t.match(await direct.acl('DRYRUN', 'ptb', 'FLUSHALL'), /no permissions to run the 'flushall' command/, 'FLUSHALL is refused')
  t.match(await direct.acl('DRYRUN', 'ptb', 'CONFIG', 'GET', 'requirepass'), /no permissions/, 'CONFIG is refused')
  t.match(await direct.acl('DRYRUN', 'ptb', 'KEYS', '*'), /no permissions/, 'KEYS is refused')
  const clients = await direct.client('LIST') as string
  t.ok(clients.split('\n').filter((l) => l.includes('user=ptb')).length >= 3, 'the broker\'s connections are the ptb user\'s')
  await app.close()
  t.notOk(app.logs.text.includes(password), 'the password is never logged')
})

t.test('a CA that did not sign the server, a wrong server name or a wrong password: /readyz says why, nothing crashes', async (t) => {
  const { tls, password, prefix, env } = await tlsRedis(t)
  const sim = await startSim(t)
  const a = makeClient('a')
  const wrongPassword = join(tls.dir, 'wrong-password')
  writeFileSync(wrongPassword, 'not-the-password-1234\n')
  const cases: Array<[string, Record<string, string>, RegExp]> = [
    ['another CA', { REDIS_TLS_CA_FILE: tls.otherCa }, /redis unreachable: TLS handshake failed \(.*(certificate|SELF_SIGNED|UNABLE).*\); check REDIS_TLS_CA_FILE/],
    ['a name the certificate lacks', { REDIS_TLS_SERVERNAME: 'redis.example.org' }, /redis unreachable: TLS handshake failed \(.*redis\.example\.org.*\); check REDIS_TLS_CA_FILE, REDIS_TLS_SERVERNAME/],
    ['a wrong password', { REDIS_PASSWORD_FILE: wrongPassword }, /redis unreachable: authentication failed \(.*WRONGPASS.*\); check REDIS_USERNAME and REDIS_PASSWORD_FILE/],
  ]
  for (const [what, over, expected] of cases) {
    const app = await buildTestApp(t, testConfig(prefix, [serverFor(sim)], [a], redisSettings({ ...env, ...over })), { defaultMetrics: false })
    let ready = await app.inject('/readyz')
    // The first answer may come before the first handshake failed; the next one knows why.
    if (!expected.test(ready.json().message)) ready = await app.inject('/readyz')
    t.equal(ready.statusCode, 503, what)
    t.match(ready.json(), { code: 'STORE_UNAVAILABLE', message: expected }, `${what}: ${ready.json().message}`)
    const token = await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })
    t.equal(token.statusCode, 503, `${what}: tokens are refused with 503, not a crash`)
    t.equal((await app.inject('/healthz')).statusCode, 200, `${what}: the process lives on`)
    await app.close()
    t.notOk(app.logs.text.includes(password) || app.logs.text.includes('not-the-password-1234'), `${what}: no password in the log`)
    t.notOk(ready.body.includes('not-the-password-1234'), `${what}: no password in the answer`)
  }
})
