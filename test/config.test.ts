import t from 'tap'
import fc from 'fast-check'
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { ConfigError, ENV_VARIABLES, isLoopbackHost, loadConfig, parseDuration, plexTvUrlProblem, tokenFromPreferences } from '../src/config/index.ts'
import { evaluate } from '../src/proxy/rules.ts'

const SECRET = Buffer.alloc(32, 7).toString('base64')
// HOST on loopback: a broker listening wider needs METRICS_TOKEN (tested below).
const BASE = { BROKER_SECRET: SECRET, PLEX_URL: 'http://127.0.0.1:32400', PLEX_TOKEN: 'admin-token-value', HOST: '127.0.0.1' }

function problems (env: Record<string, string | undefined>, io?: { readFile?: (p: string) => string }): string[] {
  try {
    loadConfig(env, io)
  } catch (err) {
    if (err instanceof ConfigError) return err.problems
    throw err
  }
  return []
}

t.test('defaults', async (t) => {
  t.equal(loadConfig({ ...BASE, HOST: undefined, METRICS_TOKEN: 'm' }).host, '0.0.0.0')
  const c = loadConfig(BASE)
  // The whole object, so a new setting has to state its default here.
  t.same(c, {
    host: '127.0.0.1',
    port: 8080,
    redisUrl: 'redis://127.0.0.1:6379',
    redisPrefix: 'ptb',
    redisWaitReplicas: 0,
    redisWaitTimeoutMs: 100,
    brokerSecret: Buffer.alloc(32, 7),
    tokenLifetimeMs: 48 * 3600_000,
    tokenRenewAfterMs: 24 * 3600_000,
    probeIntervalMs: 15_000,
    metricsToken: undefined,
    logLevel: 'info',
    role: 'all',
    auditRetentionMs: 30 * 86_400_000,
    auditMaxEvents: 1_000_000,
    plexTimeoutMs: 5000,
    plexConcurrency: 4,
    streamMaxPerClient: 16,
    streamMaxTotal: 1000,
    streamHeartbeatMs: 15_000,
    proxyKeyLimits: { requestsPerMinute: 0, openStreams: 0 },
    proxyCorsOrigins: [],
    trustProxy: [],
    defaultRateLimit: { max: 600, timeWindowMs: 60_000 },
    demo: false,
    plexTvUrl: 'https://plex.tv',
    brokerSecretPrevious: [],
    servers: [{ name: 'default', url: 'http://127.0.0.1:32400', adminToken: 'admin-token-value', tokenSource: 'token' }],
    clients: [],
  })
  t.notOk('redisPassword' in c, 'no Redis password unless REDIS_PASSWORD_FILE')
  for (const k of ['redisUsername', 'redisTls', 'redisSentinel', 'redisCluster']) t.notOk(k in c, `no ${k} unless configured`)
  t.ok(Object.isFrozen(c) && Object.isFrozen(c.servers[0]), 'frozen')
})

t.test('each documented default is the one applied: giving it explicitly changes nothing', async (t) => {
  const explicit = Object.fromEntries(ENV_VARIABLES.filter((v) => v.default !== undefined && v.name !== 'HOST').map((v) => [v.name, v.default]))
  t.same(loadConfig({ ...BASE, ...explicit }), loadConfig(BASE))
  t.same(loadConfig({ ...BASE, HOST: '0.0.0.0', METRICS_TOKEN: 'm' }), loadConfig({ ...BASE, HOST: undefined, METRICS_TOKEN: 'm' }), 'HOST')
})

t.test('every variable is parsed', async (t) => {
  const c = loadConfig({
    ...BASE,
    HOST: '127.0.0.1',
    PORT: '9000',
    REDIS_URL: 'redis://redis:6380/2',
    REDIS_PREFIX: 'prod-a',
    TOKEN_LIFETIME: '10h',
    TOKEN_RENEW_AFTER: '1h30m',
    PLEX_PROBE_INTERVAL: '500ms',
    METRICS_TOKEN: 'm',
    LOG_LEVEL: 'debug',
    BROKER_ROLE: 'worker',
    AUDIT_RETENTION: '7d',
    AUDIT_MAX_EVENTS: '5000',
    PLEX_TIMEOUT: '2s',
    PLEX_CONCURRENCY: '8',
    TRUST_PROXY: '10.0.0.0/8,127.0.0.1',
    RATE_LIMIT_DEFAULT: '50/10s',
    PLEX_TV_URL: 'http://127.0.0.1:9999/',
    STREAM_MAX_PER_CLIENT: '4',
    STREAM_MAX_TOTAL: '50',
    STREAM_HEARTBEAT_MS: '2500',
  })
  t.match(c, {
    host: '127.0.0.1',
    port: 9000,
    redisUrl: 'redis://redis:6380/2',
    redisPrefix: 'prod-a',
    tokenLifetimeMs: 36_000_000,
    tokenRenewAfterMs: 5_400_000,
    probeIntervalMs: 500,
    metricsToken: 'm',
    logLevel: 'debug',
    role: 'worker',
    auditRetentionMs: 7 * 86_400_000,
    auditMaxEvents: 5000,
    plexTimeoutMs: 2000,
    plexConcurrency: 8,
    trustProxy: ['10.0.0.0/8', '127.0.0.1'],
    defaultRateLimit: { max: 50, timeWindowMs: 10_000 },
    plexTvUrl: 'http://127.0.0.1:9999',
    streamMaxPerClient: 4,
    streamMaxTotal: 50,
    streamHeartbeatMs: 2500,
  })
})

t.test('TRUST_PROXY: only a list of proxies; true and hop counts are refused, saying why', async (t) => {
  t.same(loadConfig({ ...BASE, TRUST_PROXY: ' 10.0.0.7 , 172.18.0.0/16,fd00::/8, ::1, uniquelocal' }).trustProxy,
    ['10.0.0.7', '172.18.0.0/16', 'fd00::/8', '::1', 'uniquelocal'])
  t.same(loadConfig({ ...BASE, TRUST_PROXY: 'false' }).trustProxy, [], 'false: no proxy, X-Forwarded-For is ignored')
  const all = problems({ ...BASE, TRUST_PROXY: 'true' })
  t.match(all.join(), /^TRUST_PROXY: "true" is refused: it believes X-Forwarded-For from anyone.*List the proxies/)
  const hops = problems({ ...BASE, TRUST_PROXY: '1' })
  t.match(hops.join(), /^TRUST_PROXY: a hop count \("1"\) is refused: .*recorded and throttled as the proxy/)
  t.match(problems({ ...BASE, TRUST_PROXY: '0.0.0.0/0' }).join(), /^TRUST_PROXY: "0\.0\.0\.0\/0" trusts every address/)
  t.match(problems({ ...BASE, TRUST_PROXY: '::/0' }).join(), /trusts every address/)
  t.match(problems({ ...BASE, TRUST_PROXY: '10.0.0.0/33' }).join(), /prefix length over 32/)
  t.match(problems({ ...BASE, TRUST_PROXY: '10.0.0.1,proxy.internal' }).join(), /^TRUST_PROXY: "proxy\.internal" is not an IP address/)
})

t.test('TRUST_PROXY: sets that trust (nearly) everyone in another spelling are refused too', async (t) => {
  for (const [list, why] of [
    ['0.0.0.0/1,128.0.0.0/1', /trusts 100% of all IPv4 addresses, as good as TRUST_PROXY=true/],
    ['::ffff:0.0.0.0/96', /IPv4-mapped range wider than \/104/],
    ['::ffff:0:0/97', /IPv4-mapped range wider than \/104/],
    ['8000::/1', /trusts 50\.0% of all IPv6 addresses/],
    // Mapped ranges count as the IPv4 they stand for: two mapped /104s and an IPv4 /1.
    ['::ffff:0.0.0.0/104,::ffff:1.0.0.0/104,128.0.0.0/1', /trusts 50\.8% of all IPv4 addresses/],
    ['2000::/3', /trusts 12\.5% of all IPv6 addresses/],
    ['0.0.0.0/2,64.0.0.0/3,10.0.0.1', /trusts 37\.5% of all IPv4 addresses/],
    [Array.from({ length: 32 }, (_, i) => `${i * 8}.0.0.0/5`).slice(0, 8).join(','), /trusts 25\.0% of all IPv4/],
  ] as const) {
    const found = problems({ ...BASE, TRUST_PROXY: list }).join('; ')
    t.match(found, new RegExp('^TRUST_PROXY: .*' + why.source), list)
  }
  // Overlaps count once; real proxy networks stay well under the bar.
  for (const ok of ['10.0.0.0/8,10.0.0.0/8,10.0.0.0/8,10.0.0.0/8,10.0.0.0/8', 'uniquelocal,loopback,linklocal', '::ffff:10.0.0.0/104', '::ffff:172.18.0.7', 'fc00::/7,fe80::/10,100.64.0.0/10', '0.0.0.0/4']) {
    t.same(problems({ ...BASE, TRUST_PROXY: ok }), [], ok)
  }
})

t.test('PLEX_TV_URL: https, or http to loopback only (the admin token and passwords travel to it)', async (t) => {
  for (const ok of ['https://plex.tv', 'https://plex.example:8443/', 'http://127.0.0.1:9999', 'http://127.8.9.10', 'http://localhost:1', 'http://[::1]:3000']) {
    t.equal(plexTvUrlProblem(ok), undefined, ok)
  }
  for (const bad of ['http://plex.tv', 'http://10.0.0.5:3000', 'http://127.0.0.1.example', 'ftp://plex.tv', 'plex.tv', 'https://user:pw@plex.tv']) {
    t.type(plexTvUrlProblem(bad), 'string', bad)
  }
  t.match(problems({ ...BASE, PLEX_TV_URL: 'http://plex.tv' }).join(), /^PLEX_TV_URL: must be an https URL: the admin token .*loopback address \(127\.0\.0\.0\/8, ::1, localhost\)/)
  t.ok(isLoopbackHost('127.0.0.1') && isLoopbackHost('::1') && isLoopbackHost('[::1]') && isLoopbackHost('LOCALHOST'))
  t.notOk(isLoopbackHost('0.0.0.0') || isLoopbackHost('::') || isLoopbackHost('10.0.0.1') || isLoopbackHost('127.example'))
})

t.test('PLEX_TV_URL=off: no plex.tv at all (a simulated PMS\'s admin token must never reach it)', async (t) => {
  t.equal(loadConfig(BASE).plexTvUrl, 'https://plex.tv', 'unset: the real plex.tv')
  for (const off of ['off', 'OFF', ' off ']) {
    const c = loadConfig({ ...BASE, PLEX_TV_URL: off })
    t.notOk('plexTvUrl' in c, `${JSON.stringify(off)}: no plex.tv URL`)
  }
})

t.test('METRICS_TOKEN: required to listen beyond loopback; from the variable or a file', async (t) => {
  const wide = problems({ ...BASE, HOST: '0.0.0.0' })
  t.match(wide.join(), /^METRICS_TOKEN: required when HOST \(0\.0\.0\.0\) is not a loopback address: .*METRICS_TOKEN_FILE/)
  t.match(problems({ ...BASE, HOST: '::' }).join(), /^METRICS_TOKEN: required/)
  for (const host of ['127.0.0.1', '::1', 'localhost']) t.equal(loadConfig({ ...BASE, HOST: host }).metricsToken, undefined, `${host}: optional`)
  t.equal(loadConfig({ ...BASE, HOST: '0.0.0.0', METRICS_TOKEN: 'scrape' }).metricsToken, 'scrape')
  const dir = t.testdir({ token: 'from-file\n', empty: '\n' })
  t.equal(loadConfig({ ...BASE, HOST: '0.0.0.0', METRICS_TOKEN_FILE: join(dir, 'token') }).metricsToken, 'from-file')
  t.match(problems({ ...BASE, HOST: '0.0.0.0', METRICS_TOKEN_FILE: join(dir, 'empty') }).join(), /^METRICS_TOKEN_FILE: .* is empty/)
  t.match(problems({ ...BASE, HOST: '0.0.0.0', METRICS_TOKEN_FILE: join(dir, 'missing') }).join(), /^METRICS_TOKEN_FILE: cannot read/)
})

t.test('each bad value is named, all problems are reported at once, no secret in any message', async (t) => {
  const cases: Array<[Record<string, string | undefined>, RegExp]> = [
    [{ BROKER_SECRET: undefined }, /^BROKER_SECRET: required/],
    [{ BROKER_SECRET: Buffer.alloc(16).toString('base64') }, /^BROKER_SECRET: must be base64 of 32 bytes/],
    [{ PORT: '70000' }, /^PORT: must be an integer/],
    [{ TOKEN_LIFETIME: '2 days' }, /^TOKEN_LIFETIME: .*not a duration/],
    [{ TOKEN_RENEW_AFTER: '48h' }, /^TOKEN_RENEW_AFTER: must be shorter than TOKEN_LIFETIME/],
    [{ LOG_LEVEL: 'loud' }, /^LOG_LEVEL:/],
    [{ BROKER_ROLE: 'both' }, /^BROKER_ROLE:/],
    [{ REDIS_PREFIX: 'a:b' }, /^REDIS_PREFIX:/],
    [{ REDIS_URL: 'http://x' }, /^REDIS_URL:/],
    [{ RATE_LIMIT_DEFAULT: '600' }, /^RATE_LIMIT_DEFAULT:/],
    [{ TRUST_PROXY: 'maybe' }, /^TRUST_PROXY:/],
    [{ PLEX_URL: 'ftp://x' }, /^PLEX_URL:/],
    [{ PLEX_TOKEN_FILE: '/x' }, /^PLEX_URL: give exactly one/],
    [{ PLEX_URL: undefined, PLEX_TOKEN: undefined }, /no PMS server configured/],
    [{ PLEX_URL: undefined }, /^PLEX_TOKEN: set PLEX_URL too/],
    [{ PLEX_CONCURRENCY: '0' }, /^PLEX_CONCURRENCY:/],
    [{ AUDIT_MAX_EVENTS: 'lots' }, /^AUDIT_MAX_EVENTS:/],
    [{ STREAM_MAX_PER_CLIENT: '0' }, /^STREAM_MAX_PER_CLIENT: must be an integer/],
    [{ STREAM_MAX_TOTAL: 'many' }, /^STREAM_MAX_TOTAL:/],
    [{ STREAM_HEARTBEAT_MS: '15s' }, /^STREAM_HEARTBEAT_MS: must be an integer/],
  ]
  for (const [over, expected] of cases) {
    const p = problems({ ...BASE, ...over })
    t.ok(p.some((m) => expected.test(m)), `${JSON.stringify(over)} → ${p.join(' | ')}`)
    t.notOk(p.join('\n').includes('admin-token-value'), 'no admin token in messages')
  }
  const many = problems({ BROKER_SECRET: 'x', PORT: 'x', LOG_LEVEL: 'x', PLEX_URL: BASE.PLEX_URL, PLEX_TOKEN: 't' })
  t.ok(many.length >= 3, 'all problems at once')
  t.equal(loadConfig({ ...BASE, BROKER_SECRET: undefined, BROKER_DEMO: '1' }).brokerSecret.length, 32, 'demo generates a secret')
})

t.test('config file: YAML and JSON, token sources resolved against the file, strict schema', async (t) => {
  const dir = t.testdir({
    'plex-token': '  file-admin-token\n',
    'Preferences.xml': '<?xml version="1.0" encoding="utf-8"?>\n<Preferences OldestPreviousVersion="1.32.5.7516" MachineIdentifier="abc" ProcessedMachineIdentifier="def" PlexOnlineToken="prefs-admin-token" PlexOnlineUsername="me" AcceptedEULA="1"/>\n',
    'NoToken.xml': '<?xml version="1.0"?><Preferences MachineIdentifier="abc"/>',
  })
  const digest = 'ab'.repeat(32)
  const yaml = `servers:
  - name: a
    url: http://10.0.0.1:32400/
    tokenFile: plex-token
  - name: b
    url: https://pms.example:32400
    preferencesPath: Preferences.xml
clients:
  - id: thumbnailer
    secretSha256: "${digest}"
    servers: [a]
    scopes: [token:issue]
    rateLimit: { max: 10, timeWindow: 30s }
  - id: ops
    secretSha256: "${'cd'.repeat(32)}"
    servers: ["*"]
    scopes: [token:revoke, audit:read]
    sources: ["*"]
`
  writeFileSync(join(dir, 'broker.yaml'), yaml)
  const c = loadConfig({ BROKER_SECRET: SECRET, HOST: BASE.HOST, BROKER_CONFIG: join(dir, 'broker.yaml') })
  t.same(c.servers.map((s) => [s.name, s.url, s.adminToken, s.tokenSource]), [
    ['a', 'http://10.0.0.1:32400', 'file-admin-token', 'tokenFile'],
    ['b', 'https://pms.example:32400', 'prefs-admin-token', 'preferencesPath'],
  ])
  t.equal(c.servers[0]!.tokenPath, join(dir, 'plex-token'))
  t.same(c.clients[0], { id: 'thumbnailer', secretSha256: Buffer.from(digest, 'hex'), servers: ['a'], scopes: ['token:issue'], rateLimit: { max: 10, timeWindowMs: 30_000 }, sources: [] })
  t.equal(c.clients[1]!.servers, '*')
  t.equal(c.clients[1]!.sources, '*')
  t.same(c.clients[1]!.rateLimit, { max: 600, timeWindowMs: 60_000 }, 'RATE_LIMIT_DEFAULT applies')

  writeFileSync(join(dir, 'broker.json'), JSON.stringify({ clients: [{ id: 'x', secretSha256: digest, servers: ['default'], scopes: ['token:issue'] }] }))
  t.equal(loadConfig({ ...BASE, BROKER_CONFIG: join(dir, 'broker.json') }).clients[0]!.id, 'x', 'JSON plus the PLEX_URL shortcut')

  const bad = (text: string, file = 'bad.yaml'): string[] => {
    writeFileSync(join(dir, file), text)
    return problems({ ...BASE, BROKER_CONFIG: join(dir, file) })
  }
  t.match(bad('clients:\n  - id: x\n    secretSha256: "12"\n    servers: [default]\n    scopes: [token:issue]\n').join(), /clients\[0\]\.secretSha256: /)
  t.match(bad('clients:\n  - id: x\n    secretSha256: "' + digest + '"\n    servers: [nope]\n    scopes: [token:issue]\n').join(), /clients\[0\]: server "nope" is not configured/)
  t.match(bad('clients:\n  - id: x\n    secretSha256: "' + digest + '"\n    servers: [default]\n    scopes: [root]\n').join(), /clients\[0\]\.scopes/)
  t.match(bad('clients:\n  - id: x\n    secret: plain\n    secretSha256: "' + digest + '"\n    servers: [default]\n    scopes: [token:issue]\n').join(), /must not have additional properties \(secret\)/)
  t.match(bad('servers:\n  - name: default\n    url: http://x\n    token: t\n').join(), /PLEX_URL: defines the server "default"/)
  t.match(bad('servers:\n  - name: other\n    url: http://x\n    token: t\n    tokenFile: f\n').join(), /servers\[0\]: give exactly one of token, tokenFile, preferencesPath/)
  t.match(bad('servers:\n  - name: other\n    url: http://x\n    preferencesPath: NoToken.xml\n').join(), /has no PlexOnlineToken/)
  t.match(bad('servers:\n  - name: other\n    url: http://x\n    tokenFile: missing\n').join(), /cannot read .*missing: ENOENT/)
  t.match(bad('servers: [').join(), /not valid YAML/)
  t.match(bad('{"clients": 1', 'bad.json').join(), /not valid JSON/)
  const twice = bad(`clients:\n  - id: x\n    secretSha256: "${digest}"\n    servers: [default]\n    scopes: [token:issue]\n  - id: x\n    secretSha256: "${digest}"\n    servers: [default]\n    scopes: [token:issue]\n`)
  t.ok(twice.some((m) => /used twice/.test(m)) && twice.some((m) => /same secret/.test(m)))
  t.match(problems({ ...BASE, BROKER_CONFIG: join(dir, 'nope.yaml') }).join(), /^BROKER_CONFIG: cannot read/)
})

/** Writes config files of clients (`file`), each client an entry with a `proxy` section given as YAML text (`client`). */
function clientFiles (dir: string): { file: (clients: string) => string, client: (id: string, n: number, proxy: string) => string } {
  const digest = (n: number): string => String(n).repeat(64).slice(0, 64)
  return {
    file: (clients) => {
      const path = join(dir, `c${Math.random().toString(36).slice(2)}.yaml`)
      writeFileSync(path, `clients:\n${clients}`)
      return path
    },
    client: (id, n, proxy) => `  - id: ${id}\n    secretSha256: "${digest(n)}"\n    servers: [default]\n    scopes: [token:issue]\n${proxy}`,
  }
}

t.test('config file: proxy rules per client, compiled at load; every bad one named with its client', async (t) => {
  const { file, client } = clientFiles(t.testdir({}))
  const good = file(client('tautulli', 1, '    proxy:\n      preset: monitor\n      mode: shadow\n      allow:\n        - { methods: [GET], path: /status/sessions/terminate }\n      deny:\n        - { methods: "*", path: /devices/** }\n') +
    client('plain', 2, ''))
  const c = loadConfig({ ...BASE, BROKER_CONFIG: good })
  const policy = c.clients[0]!.proxy
  t.ok(policy !== undefined)
  if (policy === undefined) return
  t.equal(policy.preset, 'monitor')
  t.equal(policy.mode, 'shadow')
  t.equal(evaluate(policy, { method: 'GET', path: '/accounts' }).reason, 'allow', 'the preset applies')
  t.equal(evaluate(policy, { method: 'GET', path: '/status/sessions/terminate' }).reason, 'allow', 'and the client\'s allow')
  t.equal(evaluate(policy, { method: 'GET', path: '/devices' }).reason, 'client-deny', 'and its deny')
  t.equal(evaluate(policy, { method: 'GET', path: '/security/token' }).reason, 'hard-deny')
  t.notOk('proxy' in c.clients[1]!, 'no proxy section: no policy (its keys would reach nothing)')

  const bad = problems({
    ...BASE,
    BROKER_CONFIG: file(client('kometa', 3, '    proxy: { preset: kometa }\n') +
      client('sonarr', 4, '    proxy:\n      preset: library-notify\n      allow:\n        - { methods: [GET], path: "library/x" }\n        - { methods: [FETCH], path: /x }\n')),
  })
  t.match(bad[0], /clients\[0\] "kometa": proxy\.preset: unknown preset "kometa" \(known: dashboard, read, monitor/)
  t.match(bad[1], /clients\[1\] "sonarr": proxy\.allow\[0\]: path: "library\/x" must start with \//)
  t.match(bad[2], /clients\[1\] "sonarr": proxy\.allow\[1\]: methods: "FETCH" is not one of/)
  t.equal(bad.length, 3, 'every problem at once')
  t.match(problems({ ...BASE, BROKER_CONFIG: file(client('x', 5, '    proxy: { preset: read, rules: [] }\n')) }).join(), /clients\[0\]\.proxy: must not have additional properties \(rules\)/)
  t.match(problems({ ...BASE, BROKER_CONFIG: file(client('x', 5, '    proxy: { preset: read, mode: audit }\n')) }).join(), /clients\[0\]\.proxy\.mode/)
})

t.test('config file: per-key limits and allowUrlHosts per client; PROXY_KEY_* defaults; bad hosts named', async (t) => {
  const { file, client } = clientFiles(t.testdir({}))
  const path = file(client('kometa', 1, '    proxy:\n      preset: metadata-editor\n      allowUrlHosts: [Image.TMDB.org, "*.fanart.tv"]\n      limits: { openStreams: 4 }\n') +
    client('tautulli', 2, '    proxy: { preset: monitor }\n'))
  const c = loadConfig({ ...BASE, BROKER_CONFIG: path, PROXY_KEY_REQUESTS_PER_MINUTE: '900' })
  t.same(c.clients[0]!.proxy?.allowUrlHosts, ['image.tmdb.org', '*.fanart.tv'], 'lowercased')
  t.same(c.clients[0]!.proxy?.limits, { requestsPerMinute: 900, openStreams: 4 }, 'the file\'s limit, the environment\'s default for the other')
  t.same(c.clients[1]!.proxy?.limits, { requestsPerMinute: 900, openStreams: 0 })
  t.same(c.clients[1]!.proxy?.allowUrlHosts, [])

  const bad = problems({
    ...BASE,
    BROKER_CONFIG: file(client('kometa', 3, '    proxy:\n      allowUrlHosts: ["https://image.tmdb.org", "*", "*.com", "tmdb.org:443", localhost, 7]\n')),
  })
  t.match(bad[0], /clients\[0\] "kometa": proxy\.allowUrlHosts\[0\]: "https:\/\/image\.tmdb\.org" is not a host name/)
  t.match(bad[1], /allowUrlHosts\[1\]: "\*" is not a host name/)
  t.match(bad[2], /allowUrlHosts\[2\]: "\*\.com" is not a host name/)
  t.match(bad[3], /allowUrlHosts\[3\]/)
  t.match(bad[4], /allowUrlHosts\[4\]: "localhost"/)
  t.match(bad[5], /allowUrlHosts\[5\]: must be a host name/)
  t.equal(bad.length, 6)
  t.match(problems({ ...BASE, BROKER_CONFIG: file(client('x', 5, '    proxy: { preset: read, limits: { openStreams: -1 } }\n')) }).join(), /clients\[0\]\.proxy\.limits\.openStreams/)
  t.same(loadConfig({ ...BASE, BROKER_CONFIG: file(client('x', 6, '    proxy: { preset: read, limits: { openStreams: 0, requestsPerMinute: 0 } }\n')) }).clients[0]!.proxy?.limits,
    { requestsPerMinute: 0, openStreams: 0 }, '0: no limit')
  t.match(problems({ ...BASE, PROXY_KEY_OPEN_STREAMS: 'many' }).join(), /PROXY_KEY_OPEN_STREAMS: must be an integer/)
})

t.test('CORS origins: PROXY_CORS_ORIGINS and proxy.corsOrigins per server; exact origins only, never *', async (t) => {
  t.same(loadConfig({ ...BASE, PROXY_CORS_ORIGINS: 'https://dash.example.com, http://10.0.0.4:3000' }).proxyCorsOrigins, ['https://dash.example.com', 'http://10.0.0.4:3000'])
  const bad = problems({ ...BASE, PROXY_CORS_ORIGINS: '*,https://dash.example.com/,dash.example.com,https://Dash.example.com' })
  t.match(bad[0], /PROXY_CORS_ORIGINS: "\*": wildcards are refused/)
  t.match(bad[1], /PROXY_CORS_ORIGINS: "https:\/\/dash\.example\.com\/" is not an origin as browsers send it/)
  t.match(bad[2], /PROXY_CORS_ORIGINS: "dash\.example\.com" is not/)
  t.match(bad[3], /PROXY_CORS_ORIGINS: "https:\/\/Dash\.example\.com" is not an origin as browsers send it/)
  const dir = t.testdir({})
  const path = join(dir, 'servers.yaml')
  writeFileSync(path, 'servers:\n  - { name: attic, url: "http://10.0.0.5:32400", token: t, proxy: { port: 32401, corsOrigins: ["https://dash.example.com"] } }\n' +
    '  - { name: den, url: "http://10.0.0.6:32400", token: u, proxy: { port: 32402, corsOrigins: ["https://*.example.com"] } }\n')
  const p = problems({ BROKER_SECRET: SECRET, HOST: '127.0.0.1', BROKER_CONFIG: path })
  t.equal(p.length, 1)
  t.match(p[0], /servers\[1\] "den": proxy\.corsOrigins\[0\]: "https:\/\/\*\.example\.com": wildcards are refused/)
  writeFileSync(path, 'servers:\n  - { name: attic, url: "http://10.0.0.5:32400", token: t, proxy: { port: 32401, corsOrigins: ["https://dash.example.com"] } }\n')
  t.same(loadConfig({ BROKER_SECRET: SECRET, HOST: '127.0.0.1', BROKER_CONFIG: path }).servers[0]!.proxy, { port: 32401, corsOrigins: ['https://dash.example.com'] })
})

t.test('proxy ports: per server in the file or PROXY_PORT for one server; unique and not the API port', async (t) => {
  t.same(loadConfig({ ...BASE, PROXY_PORT: '32401' }).servers[0]!.proxy, { port: 32401 }, 'PROXY_PORT and PLEX_URL')
  t.notOk('proxy' in loadConfig(BASE).servers[0]!, 'no port, no proxy')
  const dir = t.testdir({})
  const servers = (ports: Array<number | undefined>): string => {
    const path = join(dir, `s${ports.join('-')}.yaml`)
    writeFileSync(path, `servers:\n${ports.map((p, i) => `  - name: s${i}\n    url: http://10.0.0.${i + 1}:32400\n    token: t${i}\n${p === undefined ? '' : `    proxy: { port: ${p} }\n`}`).join('')}`)
    return path
  }
  const env = { BROKER_SECRET: SECRET, HOST: BASE.HOST }
  t.same(loadConfig({ ...env, BROKER_CONFIG: servers([32401, 32402, undefined]) }).servers.map((s) => s.proxy?.port), [32401, 32402, undefined])
  t.same(loadConfig({ ...env, BROKER_CONFIG: servers([undefined]), PROXY_PORT: '32499' }).servers[0]!.proxy, { port: 32499 }, 'PROXY_PORT for the file\'s only server')
  t.match(problems({ ...env, BROKER_CONFIG: servers([32401, 32401]) }).join(), /server "s1": proxy port 32401 is server "s0"'s proxy port too/)
  t.match(problems({ ...env, BROKER_CONFIG: servers([8080]) }).join(), /server "s0": proxy port 8080 is the API's PORT/)
  t.match(problems({ ...BASE, PROXY_PORT: '9000', PORT: '9000' }).join(), /^PROXY_PORT: proxy port 9000 is the API's PORT/)
  t.match(problems({ ...env, BROKER_CONFIG: servers([70000]) }).join(), /servers\[0\]\.proxy\.port/)
  t.match(problems({ ...env, BROKER_CONFIG: servers([undefined, undefined]), PROXY_PORT: '32401' }).join(), /^PROXY_PORT: is for a single server; 2 are configured/)
  t.match(problems({ ...env, BROKER_CONFIG: servers([32401]), PROXY_PORT: '32402' }).join(), /^PROXY_PORT: server "s0" has a proxy\.port in BROKER_CONFIG too/)
  for (const bad of ['0', '65536', 'x', '-1']) t.match(problems({ ...BASE, PROXY_PORT: bad }).join(), /^PROXY_PORT: must be an integer from 1 to 65535/, bad)
})

t.test('PLEX_TOKEN_FILE, PLEX_PREFERENCES_PATH and BROKER_SECRET_FILE', async (t) => {
  const dir = t.testdir({ tok: 'from-file\n', secret: `${SECRET}\n`, 'Preferences.xml': '<Preferences PlexOnlineToken="from-prefs" />' })
  t.equal(loadConfig({ BROKER_SECRET_FILE: join(dir, 'secret'), PLEX_URL: BASE.PLEX_URL, HOST: BASE.HOST, PLEX_TOKEN_FILE: join(dir, 'tok') }).servers[0]!.adminToken, 'from-file')
  t.equal(loadConfig({ ...BASE, PLEX_TOKEN: undefined, PLEX_PREFERENCES_PATH: join(dir, 'Preferences.xml') }).servers[0]!.adminToken, 'from-prefs')
  t.equal(tokenFromPreferences('<Preferences PlexOnlineToken="" />'), undefined)
  t.equal(tokenFromPreferences('<Other PlexOnlineToken="x"/>'), undefined)
})

t.test('BROKER_SECRET_PREVIOUS: a list, or a file with one per line; bad entries named, never echoed', async (t) => {
  const p1 = Buffer.alloc(32, 1).toString('base64')
  const p2 = Buffer.alloc(40, 2).toString('base64')
  t.same(loadConfig({ ...BASE, BROKER_SECRET_PREVIOUS: `${p1},${p2}` }).brokerSecretPrevious?.map((b) => b.length), [32, 40])
  const dir = t.testdir({ prev: `${p1}\n${p2}\n` })
  t.equal(loadConfig({ ...BASE, BROKER_SECRET_PREVIOUS_FILE: join(dir, 'prev') }).brokerSecretPrevious?.length, 2)
  t.same(loadConfig(BASE).brokerSecretPrevious, [])
  const bad = problems({ ...BASE, BROKER_SECRET_PREVIOUS: `${p1},c2hvcnQ=` })
  t.match(bad.join(), /BROKER_SECRET_PREVIOUS: entry 2 must be base64 of 32 bytes or more/)
  t.notOk(bad.join().includes('c2hvcnQ='), 'the value is not echoed')
})

t.test('parseDuration', async (t) => {
  t.equal(parseDuration('48h'), 172_800_000)
  t.equal(parseDuration('1h30m'), 5_400_000)
  t.equal(parseDuration('500ms'), 500)
  for (const bad of ['', '10', 'h', '-5s', '1.5h', '0s', '10 s', '5w']) t.throws(() => parseDuration(bad), bad)
  fc.assert(fc.property(fc.integer({ min: 1, max: 1e6 }), fc.constantFrom('ms', 's', 'm', 'h', 'd'), (n, unit) => {
    const ms = parseDuration(`${n}${unit}`)
    return ms === n * ({ ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as Record<string, number>)[unit]!
  }))
})

t.test('.env.example lists exactly the variables the service reads', async (t) => {
  const example = readFileSync('.env.example', 'utf8')
  const listed = [...example.matchAll(/^# ([A-Z_]+)=/gm)].map((m) => m[1])
  t.same(listed, ENV_VARIABLES.map((v) => v.name), 'same names, same order')
  for (const v of ENV_VARIABLES) if (v.default !== undefined) t.match(example, `# ${v.name}=${v.default}\n`, `${v.name} default`)

  // Every variable the source reads must be in ENV_VARIABLES, except the simulator's (SIM_*) and
  // the ops CLI's (PTB_*, HOME, XDG_CONFIG_HOME), documented with them (PLEX_TV_URL is a service variable too).
  const files: string[] = []
  const walk = (d: string): void => {
    for (const f of readdirSync(d)) {
      const p = join(d, f)
      if (statSync(p).isDirectory()) walk(p)
      else if (p.endsWith('.ts')) files.push(p)
    }
  }
  walk('src')
  const read = new Set<string>()
  for (const f of files) {
    const text = readFileSync(f, 'utf8')
    for (const m of text.matchAll(/env(?:\.|\[['"])([A-Z][A-Z0-9_]+)/g)) read.add(m[1]!)
    for (const m of text.matchAll(/\b(?:get|dflt|duration|integer|secret)\('([A-Z][A-Z0-9_]+)'/g)) read.add(m[1]!)
    for (const m of text.matchAll(/\bsecret\([^,)]+, '([A-Z][A-Z0-9_]+)'/g)) read.add(m[1]!)
  }
  const known = new Set(ENV_VARIABLES.map((v) => v.name))
  // HOME and XDG_CONFIG_HOME: where the CLI keeps its token file; DEMO_DIR: where `npm run demo`
  // keeps its secrets. Not settings of the service.
  const unlisted = [...read].filter((n) => !known.has(n) && !n.startsWith('SIM_') && !n.startsWith('PTB_') && !['HOME', 'XDG_CONFIG_HOME', 'DEMO_DIR'].includes(n))
  t.same(unlisted, [], 'no variable is read without being listed')
  t.ok(read.size > 10, `found ${read.size} variables in the source`)
})

t.test('the README configuration table lists exactly the variables the service reads, with their defaults', async (t) => {
  const readme = readFileSync('README.md', 'utf8')
  const section = readme.slice(readme.indexOf('\n## Configuration\n'))
  const rows = section.slice(section.indexOf('| variable | default | meaning |')).split('\n\n')[0]!.split('\n').slice(2)
  t.ok(rows.length > 10, `${rows.length} rows`)
  const documented = new Map<string, string>()
  for (const row of rows) {
    // A row may group variables (`A / B`, `A + B`) and then their defaults (`x / y`, or one for all).
    const [names = '', defaults = ''] = row.split('|').slice(1, 3).map((cell) => cell.trim())
    const nameList = names.split(/\s+[/+]\s+/)
    const defaultList = defaults.split(/\s+\/\s+/)
    t.ok(defaultList.length === 1 || defaultList.length === nameList.length, `defaults of ${names}`)
    for (const [i, name] of nameList.entries()) documented.set(name, (defaultList.length === 1 ? defaultList[0] : defaultList[i]) ?? '')
  }
  t.same([...documented.keys()].sort(), ENV_VARIABLES.map((v) => v.name).sort(), 'same variables')
  for (const v of ENV_VARIABLES) t.equal(documented.get(v.name), v.default ?? 'none', `${v.name} default`)
})
