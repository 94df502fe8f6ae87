import t from 'tap'
import type { AddressInfo } from 'node:net'
import { parse } from 'yaml'
import { runOpsCommand } from '../src/cli/ops-commands.ts'
import { sha256 } from '../src/broker/crypto.ts'
import { buildTestApp, makeClient, serverFor, startSim, testConfig, uniquePrefix } from './helper.ts'

function io (env: Record<string, string | undefined>) {
  let out = ''
  let err = ''
  return {
    io: { stdout: { write: (s: string) => { out += s } }, stderr: { write: (s: string) => { err += s } }, env, followIntervalMs: 100 },
    out: () => out,
    err: () => err,
  }
}

t.test('the ops CLI works against a running broker', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('svc')
  const ops = makeClient('ops', { scopes: ['token:revoke', 'audit:read', 'server:read', 'server:rotate'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('cli'), [serverFor(sim)], [a, ops]), { defaultMetrics: false })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
  const env = { PTB_URL: url, PTB_SECRET: ops.secret }
  const tok = (await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })).json()

  const servers = io(env)
  t.equal(await runOpsCommand(['servers'], servers.io), 0)
  t.match(servers.out(), /NAME\s+STATE/)
  t.match(servers.out(), /default/)
  const serversJson = io(env)
  await runOpsCommand(['servers', '--json'], serversJson.io)
  t.equal(JSON.parse(serversJson.out())[0].name, 'default')

  const audit = io(env)
  t.equal(await runOpsCommand(['audit', '--client', 'svc'], audit.io), 0)
  t.match(audit.out(), /token\.issue\s+svc\s+default/)
  t.notOk(audit.out().includes(tok.token), 'no token in the output')

  const controller = new AbortController()
  const follow = io(env)
  const following = runOpsCommand(['audit', '--follow', '--json'], { ...follow.io, signal: controller.signal })
  await new Promise((r) => setTimeout(r, 300))
  const revoke = io(env)
  t.equal(await runOpsCommand(['revoke', '--client', 'svc', '--reason', 'cli test'], revoke.io), 0)
  t.match(revoke.out(), /revoked 1 token/)
  t.match(revoke.out(), /valid at PMS until/)
  await new Promise((r) => setTimeout(r, 400))
  controller.abort()
  await following
  const followed = follow.out().trim().split('\n').map((l) => JSON.parse(l))
  t.ok(followed.some((e) => e.action === 'token.revoke'), '--follow shows new events')

  const noReason = io(env)
  t.equal(await runOpsCommand(['revoke', '--client', 'svc'], noReason.io), 2, 'usage error exit 2')
  t.match(noReason.err(), /--reason is required/)
  const wrongSecret = io({ PTB_URL: url, PTB_SECRET: 'nope' })
  t.equal(await runOpsCommand(['servers'], wrongSecret.io), 1)
  t.match(wrongSecret.err(), /401 UNAUTHENTICATED/)
  const unreachable = io({ PTB_URL: 'http://127.0.0.1:1', PTB_SECRET: 'x' })
  t.equal(await runOpsCommand(['servers'], unreachable.io), 3)
  t.match(unreachable.err(), /cannot reach the broker/)
  const noSecret = io({ PTB_URL: url })
  t.equal(await runOpsCommand(['servers'], noSecret.io), 2)
  t.equal(await runOpsCommand(['login'], noSecret.io), undefined, 'not an ops command')
})

t.test('client add prints a fresh secret once and a config entry holding only its digest', async (t) => {
  const one = io({})
  t.equal(await runOpsCommand(['client', 'add', 'thumbnailer', '--scopes', 'token:issue,source:connect', '--servers', 'default'], one.io), 0)
  const secret = /\n {2}(ptb_[A-Za-z0-9_-]+)\n/.exec(one.out())![1]
  const yaml = one.out().slice(one.out().indexOf('- id:') - 2)
  const [entry] = parse(yaml)
  t.same(entry, { id: 'thumbnailer', secretSha256: sha256(secret).toString('hex'), servers: ['default'], scopes: ['token:issue', 'source:connect'] })
  const two = io({})
  await runOpsCommand(['client', 'add', 'thumbnailer', '--json'], two.io)
  t.not(JSON.parse(two.out()).secret, secret, 'a new secret every time')
  const bad = io({})
  t.equal(await runOpsCommand(['client', 'add', 'Bad Id'], bad.io), 2)
})
