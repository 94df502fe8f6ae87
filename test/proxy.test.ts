import t from 'tap'
import { Agent, request } from 'undici'
import { buildTestApp, makeClient, serverFor, startSim, testConfig, uniquePrefix, type T } from './helper.ts'

/**
 * TRUST_PROXY over real sockets: the "proxy" is a connection from 127.0.0.1 (listed in
 * TRUST_PROXY), the untrusted source a connection from 127.0.0.2 (not listed). Each test sends
 * X-Forwarded-For as a proxy would pass it on (client-sent entries, then what the proxy appended).
 */

interface AuditEvent { action: string, ip: string | null, requestId: string | null, detail: Record<string, unknown> }

async function setup (t: T, trustProxy: string[] = ['127.0.0.1']) {
  const sim = await startSim(t)
  const svc = makeClient('svc')
  const ops = makeClient('ops', { scopes: ['audit:read'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('proxy'), [serverFor(sim)], [svc, ops], { trustProxy }), { defaultMetrics: false })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = app.server.address() as { port: number }
  const viaProxy = new Agent({ localAddress: '127.0.0.1' })
  const direct = new Agent({ localAddress: '127.0.0.2' })
  t.teardown(async () => { await viaProxy.close(); await direct.close() })
  /** POST /v1/tokens from `from`, with this X-Forwarded-For and secret; the status. */
  const issue = async (from: Agent, xff: string | undefined, secret: string): Promise<number> => {
    const r = await request(`http://127.0.0.1:${port}/v1/tokens`, {
      method: 'POST',
      dispatcher: from,
      headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json', ...(xff === undefined ? {} : { 'x-forwarded-for': xff }) },
      body: JSON.stringify({ server: 'default' }),
    })
    await r.body.text()
    return r.statusCode
  }
  const audit = async (action: string): Promise<AuditEvent[]> =>
    (await app.inject({ method: 'GET', url: `/v1/audit?action=${action}&limit=1000`, headers: ops.auth })).json().events
  return { app, svc, ops, viaProxy, direct, issue, audit }
}

const statuses = (list: number[]): Record<number, number> => list.reduce<Record<number, number>>((a, s) => ({ ...a, [s]: (a[s] ?? 0) + 1 }), {})

t.test('through a trusted proxy, the audit trail and the throttle see the forwarded client', async (t) => {
  const { app, svc, viaProxy, issue, audit } = await setup(t)
  t.equal(await issue(viaProxy, '198.51.100.7', svc.secret), 200)
  t.same((await audit('token.issue')).map((e) => e.ip), ['198.51.100.7'], 'the token was issued to the forwarded client')

  // The client forged an entry of its own; the proxy appended the address it saw. The right-most
  // untrusted entry is the client, whatever it wrote on the left.
  const attacker = '198.51.100.66'
  const answers: number[] = []
  for (let i = 0; i < 25; i++) answers.push(await issue(viaProxy, `203.0.113.${i}, ${attacker}`, 'wrong'))
  t.same(statuses(answers), { 401: 20, 429: 5 }, 'rotating the forged part does not escape the throttle: 20 failures, then 429')
  // The failures after the first are written as one count when their window closes (here, now).
  await app.broker.refusals.flush()
  const denied = await audit('auth.denied')
  t.same(new Set(denied.map((e) => e.ip)), new Set([attacker]), 'every failure is recorded against the forwarded client')
  t.equal(denied.length, 3, 'the first failure, one "became throttled" event and the count of the rest')
  t.equal(denied.reduce((n, e) => n + Number(e.detail.count ?? 1), 0), 25, 'the counts add up to the 25 failures')

  t.equal(await issue(viaProxy, '198.51.100.67', 'wrong'), 401, 'another client behind the same proxy keeps its own allowance')
  t.equal(await issue(viaProxy, attacker, svc.secret), 200, 'a valid secret is never throttled')

  // A chain of two trusted proxies: both are skipped.
  t.equal(await issue(viaProxy, '192.0.2.1, 198.51.100.99, 127.0.0.1', 'wrong'), 401)
  t.equal((await audit('auth.denied'))[0]!.ip, '198.51.100.99', 'the trusted hops are skipped, the forged left-most entry is not used')
})

t.test('IPv6 clients behind a proxy are throttled per /64 and audited by their full address', async (t) => {
  const { viaProxy, issue, audit } = await setup(t)
  const answers: number[] = []
  for (let i = 1; i <= 22; i++) answers.push(await issue(viaProxy, `2001:db8:aa:bb::${i.toString(16)}`, 'wrong'))
  t.same(statuses(answers), { 401: 20, 429: 2 }, 'stepping through the /64 does not buy a fresh allowance')
  t.equal(await issue(viaProxy, '2001:db8:aa:bc::1', 'wrong'), 401, 'the next /64 is another client')
  const ips = (await audit('auth.denied')).map((e) => e.ip)
  t.equal(ips[0], '2001:db8:aa:bc::1')
  // The first failure and the one that made the /64 throttled are events of their own.
  t.ok(ips.includes('2001:db8:aa:bb::1') && ips.includes('2001:db8:aa:bb::15'), 'the full address is recorded')
  t.notOk(ips.includes('2001:db8:aa:bb::'), 'not the /64 it is counted under')
})

t.test('from an untrusted source X-Forwarded-For is ignored', async (t) => {
  const { svc, viaProxy, direct, issue, audit } = await setup(t)
  t.equal(await issue(direct, '198.51.100.7', svc.secret), 200)
  t.same((await audit('token.issue')).map((e) => e.ip), ['127.0.0.2'], 'the socket address, not the header')

  // Rotating a forged header does not escape the failed-authentication throttle.
  const answers: number[] = []
  for (let i = 0; i < 25; i++) answers.push(await issue(direct, `203.0.113.${i}`, 'wrong'))
  t.same(statuses(answers), { 401: 20, 429: 5 })
  const denied = await audit('auth.denied')
  t.same(new Set(denied.map((e) => e.ip)), new Set(['127.0.0.2']), 'no forged address in the audit trail')

  // The flood named a victim in the header: the victim is not throttled.
  const victim = '198.51.100.50'
  for (let i = 0; i < 25; i++) await issue(direct, victim, 'wrong')
  t.equal(await issue(viaProxy, victim, 'wrong'), 401, 'the victim (behind the proxy) still has its whole allowance')
})

t.test('naming a victim through the proxy throttles the sender, not the victim', async (t) => {
  const { viaProxy, issue } = await setup(t)
  const victim = '198.51.100.50'
  const attacker = '198.51.100.66'
  // The attacker writes the victim's address; the proxy appends the attacker's.
  for (let i = 0; i < 25; i++) await issue(viaProxy, `${victim}, ${attacker}`, 'wrong')
  t.equal(await issue(viaProxy, attacker, 'wrong'), 429, 'the attacker is throttled')
  t.equal(await issue(viaProxy, victim, 'wrong'), 401, 'the victim is not')
})

t.test('garbage in X-Forwarded-For never lands in the audit trail or the logs', async (t) => {
  const { app, svc, ops, viaProxy, direct, issue, audit } = await setup(t)
  const garbage = ['not-an-ip', '<script>alert(1)</script>', '198.51.100.7:5678', '[2001:db8::1]', 'unknown', '999.1.1.1',
    `evil-${'x'.repeat(300)}`, '198.51.100.7 extra', '0x7f.1', 'garbage-entry, 127.0.0.1']
  for (const g of garbage) {
    t.equal(await issue(viaProxy, g, 'wrong'), 401, `${g.slice(0, 30)}: answered as usual`)
    t.equal(await issue(direct, g, 'wrong'), 401)
  }
  t.equal(await issue(viaProxy, '<img src=x>', svc.secret), 200)
  const events = [...await audit('auth.denied'), ...await audit('token.issue')]
  t.same(new Set(events.map((e) => e.ip)), new Set(['127.0.0.1', '127.0.0.2']), 'an unusable forwarded address falls back to the socket address')
  const exported = (await app.inject({ method: 'GET', url: '/v1/audit/export', headers: ops.auth })).body
  for (const text of [exported, app.logs.text]) {
    for (const needle of ['not-an-ip', 'script', '.7:5678', '2001:db8::1', '999.1.1.1', 'xxxxxxxx', 'extra', '0x7f', 'garbage-entry', 'img']) {
      t.notOk(text.includes(needle), `no "${needle}"`)
    }
  }
})

t.test('without TRUST_PROXY the header is ignored even from loopback', async (t) => {
  const { svc, viaProxy, issue, audit } = await setup(t, [])
  t.equal(await issue(viaProxy, '198.51.100.7', svc.secret), 200)
  t.same((await audit('token.issue')).map((e) => e.ip), ['127.0.0.1'])
})

t.test('injected requests: the proxy address list and IPv4-mapped sockets', async (t) => {
  const sim = await startSim(t)
  const ops = makeClient('ops', { scopes: ['audit:read'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('proxyinj'), [serverFor(sim)], [ops], { trustProxy: ['10.0.0.0/8', 'fd00::/8'] }), { defaultMetrics: false })
  const fail = async (remoteAddress: string, xff?: string) => await app.inject({
    method: 'POST',
    url: '/v1/tokens',
    remoteAddress,
    payload: { server: 'default' },
    headers: { authorization: 'Bearer wrong', ...(xff === undefined ? {} : { 'x-forwarded-for': xff }) },
  })
  await fail('10.1.2.3', '198.51.100.1')
  await fail('fd00::5', '198.51.100.2, 10.9.9.9')
  await fail('192.0.2.9', '198.51.100.3')
  await fail('::ffff:192.0.2.10')
  const ips = ((await app.inject({ method: 'GET', url: '/v1/audit?action=auth.denied', headers: ops.auth, remoteAddress: '192.0.2.200' })).json().events as AuditEvent[]).map((e) => e.ip)
  t.same(ips, ['192.0.2.10', '192.0.2.9', '198.51.100.2', '198.51.100.1'])
})
