import t from 'tap'
import { readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { parse } from 'yaml'
import { main } from '../src/cli/ptb.ts'
import { PlexTv } from '../src/plex/plextv.ts'
import { type PlexTvSimOptions, PlexTvSimulator } from '../src/sim/plextv-sim.ts'
import { startSim, type T } from './helper.ts'

async function tv (t: T, opts: PlexTvSimOptions = {}): Promise<PlexTvSimulator> {
  const sim = await PlexTvSimulator.start(opts)
  t.teardown(() => sim.stop())
  return sim
}

function run (env: Record<string, string>, answers: string[] = [], extra: Record<string, unknown> = {}) {
  let out = ''
  let err = ''
  const asked: Array<{ question: string, secret: boolean }> = []
  const io = {
    stdout: { write: (s: string) => { out += s } },
    stderr: { write: (s: string) => { err += s } },
    env,
    prompt: async (question: string, opts: { secret: boolean }) => {
      asked.push({ question, secret: opts.secret })
      return answers.shift() ?? ''
    },
    pollIntervalMs: 20,
    ...extra,
  }
  return { io, out: () => out, err: () => err, asked }
}

t.test('ptb login: PIN flow, token file 0600, stable client identifier', async (t) => {
  const sim = await tv(t)
  const home = t.testdir({})
  const env = { PLEX_TV_URL: sim.url, HOME: home }
  const r = run(env)
  const done = main(['login'], r.io)
  // The person opens the printed link and approves.
  let code: string | undefined
  for (let i = 0; i < 50 && code === undefined; i++) {
    await new Promise((resolve) => setTimeout(resolve, 20))
    code = /Code: (\S+)/.exec(r.out())?.[1]
  }
  t.match(r.out(), /https:\/\/app\.plex\.tv\/auth#\?clientID=ptb-[0-9a-f-]+&code=/)
  sim.approve(code!)
  t.equal(await done, 0, r.err())
  const file = join(home, '.config', 'plex-token-broker', 'token')
  t.equal(readFileSync(file, 'utf8').trim(), sim.accountToken)
  t.equal(statSync(file).mode & 0o777, 0o600, 'mode 0600')
  t.notOk(r.out().includes(sim.accountToken), 'the token is not printed without --print')
  const id1 = readFileSync(join(home, '.config', 'plex-token-broker', 'client-id'), 'utf8')

  const again = run(env)
  const second = main(['login', '--print'], again.io)
  for (let i = 0; i < 50 && !/Code: /.test(again.out()); i++) await new Promise((resolve) => setTimeout(resolve, 20))
  sim.approve(/Code: (\S+)/.exec(again.out())![1])
  t.equal(await second, 0)
  t.match(again.out(), new RegExp(`${sim.accountToken}\\n$`), '--print prints the token')
  t.equal(readFileSync(join(home, '.config', 'plex-token-broker', 'client-id'), 'utf8'), id1, 'same client identifier on the next login')
  t.ok(again.out().includes(`clientID=${id1.trim()}`))
})

t.test('ptb login: expired PIN, 429 and an unreachable plex.tv get clear messages', async (t) => {
  const sim = await tv(t)
  const home = t.testdir({})
  const r = run({ PLEX_TV_URL: sim.url, HOME: home })
  const done = main(['login'], r.io)
  for (let i = 0; i < 50 && !/Code: /.test(r.out()); i++) await new Promise((resolve) => setTimeout(resolve, 20))
  sim.expire(/Code: (\S+)/.exec(r.out())![1])
  t.equal(await done, 1)
  t.match(r.err(), /PIN expired .*code 1020/)

  sim.setRateLimited(true)
  const limited = run({ PLEX_TV_URL: sim.url, HOME: home })
  t.equal(await main(['login'], limited.io), 1)
  t.match(limited.err(), /rate limiting .*429/)

  const down = run({ PLEX_TV_URL: 'http://127.0.0.1:1', HOME: home })
  t.equal(await main(['login'], down.io), 1)
  t.match(down.err(), /unreachable/)
})

t.test('ptb login --password: prompts, 2FA on code 1029, stops on lockout 1031 without looping', async (t) => {
  const sim = await tv(t, { username: 'me@example.com', password: 'hunter2-but-long', totp: '123456', lockoutAfter: 2 })
  const home = t.testdir({})
  const env = { PLEX_TV_URL: sim.url, HOME: home }
  const ok = run(env, ['me@example.com', 'hunter2-but-long', '123456'])
  t.equal(await main(['login', '--password'], ok.io), 0, ok.err())
  t.same(ok.asked.map((a) => a.secret), [false, true, false], 'the password prompt does not echo')
  t.match(ok.asked[2].question, /Two-factor code/)
  t.equal(readFileSync(join(home, '.config', 'plex-token-broker', 'token'), 'utf8').trim(), sim.accountToken)
  t.notOk((ok.out() + ok.err()).includes('hunter2-but-long'), 'the password is never printed')

  for (let i = 0; i < 2; i++) await main(['login', '--password'], run(env, ['me@example.com', 'wrong']).io)
  const before = sim.counters.signins
  const locked = run(env, ['me@example.com', 'hunter2-but-long', '123456'])
  t.equal(await main(['login', '--password'], locked.io), 1)
  t.match(locked.err(), /code 1031.*Not retrying/)
  t.equal(sim.counters.signins - before, 1, 'exactly one sign-in attempt after the lockout: no loop')
})

t.test('ptb servers discover prints config entries, local connection first', async (t) => {
  const sim = await tv(t, {
    resources: [{
      name: 'Living Room PMS',
      clientIdentifier: 'abc',
      accessToken: 'server-access-token',
      connections: [
        { protocol: 'https', address: '1.2.3.4', port: 8443, uri: 'https://relay.example:8443', local: false, relay: true },
        { protocol: 'https', address: '5.6.7.8', port: 32400, uri: 'https://remote.example:32400', local: false, relay: false },
        { protocol: 'http', address: '192.168.1.10', port: 32400, uri: 'http://192.168.1.10:32400', local: true, relay: false },
      ],
    }],
  })
  const dir = t.testdir({ token: `${sim.accountToken}\n` })
  const r = run({ PLEX_TV_URL: sim.url, HOME: dir })
  t.equal(await main(['servers', 'discover', '--token-file', join(dir, 'token')], r.io), 0, r.err())
  t.same(parse(r.out()), { servers: [{ name: 'living-room-pms', url: 'http://192.168.1.10:32400', token: 'server-access-token' }] })
  t.match(r.err(), /secrets/)
  const resources = await new PlexTv({ baseUrl: sim.url, clientIdentifier: 'x' }).resources(sim.accountToken)
  t.same(resources[0].connections.map((c) => [c.local, c.relay]), [[true, false], [false, false], [false, true]], 'local → remote → relay')

  const none = run({ PLEX_TV_URL: sim.url, HOME: dir })
  t.equal(await main(['servers', 'discover', '--token-file', join(dir, 'missing')], none.io), 1)
  t.match(none.err(), /ptb login/)
})

t.test('ptb claim claims an unclaimed PMS and explains refusals', async (t) => {
  const sim = await tv(t)
  const pms = await startSim(t, { claimed: false })
  const dir = t.testdir({ token: `${sim.accountToken}\n` })
  const env = { PLEX_TV_URL: sim.url, HOME: dir }
  const r = run(env)
  t.equal(await main(['claim', '--pms', pms.url, '--token-file', join(dir, 'token')], r.io), 0, r.err())
  t.match(r.out(), /Claimed/)
  t.equal(pms.claimed, true)
  const again = run(env)
  t.equal(await main(['claim', '--pms', pms.url, '--token-file', join(dir, 'token')], again.io), 1)
  t.match(again.err(), /already claimed/)
  const usage = run(env)
  t.equal(await main(['claim'], usage.io), 2)
})

t.test('plex.tv token check: valid, invalid, unreachable is unknown', async (t) => {
  const sim = await tv(t)
  const client = new PlexTv({ baseUrl: sim.url, clientIdentifier: 'x' })
  t.equal(await client.checkAccountToken(sim.accountToken), 'valid')
  t.equal(await client.checkAccountToken('nope'), 'invalid')
  await client.ping(sim.accountToken)
  t.equal(sim.counters.pings, 1)
  sim.setRateLimited(true)
  t.equal(await client.checkAccountToken(sim.accountToken), 'unknown', '429 is not invalid')
  t.equal(await new PlexTv({ baseUrl: 'http://127.0.0.1:1', clientIdentifier: 'x' }).checkAccountToken('t'), 'unknown', 'an outage is not invalid')
  await client.close()
})

t.test('help and unknown commands', async (t) => {
  const r = run({})
  t.equal(await main(['help'], r.io), 0)
  t.match(r.out(), /ptb login/)
  const u = run({})
  t.equal(await main(['frobnicate'], u.io), 2)
})
