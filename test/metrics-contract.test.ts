import t from 'tap'
import { readFileSync } from 'node:fs'
import { buildTestApp, makeClient, serverFor, startSim, testConfig, uniquePrefix, until } from './helper.ts'

// Every metric the README lists is exported, with exactly the labels the README gives it: the
// README is what dashboards and alert rules are written against.

function documented (): Map<string, string[]> {
  const readme = readFileSync('README.md', 'utf8')
  const start = readme.indexOf('- **Metrics** (`/metrics`)')
  const block = readme.slice(start, readme.indexOf('\n- **', start + 10))
  const out = new Map<string, string[]>()
  for (const m of block.matchAll(/`((?:ptb|http)_[a-z_]+)(?:\{([a-z_,]+)\})?`/g)) out.set(m[1]!, m[2] === undefined ? [] : m[2].split(','))
  return out
}

t.test('every metric the README lists is exported with the documented labels', async (t) => {
  const docs = documented()
  t.ok(docs.size >= 18, `the README lists ${docs.size} metrics`)
  const sim = await startSim(t)
  const a = makeClient('a')
  const ops = makeClient('ops', { scopes: ['token:revoke', 'audit:read', 'server:read'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('contract'), [serverFor(sim)], [a, ops], { role: 'all', probeIntervalMs: 500 }))
  await app.ready()
  // Produce a sample for as many series as a short run can: serve, mint, revoke, deny, probe.
  const tok = (await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })).json()
  await app.inject({ method: 'POST', url: '/v1/tokens', headers: a.auth, payload: { server: 'default' } })
  await app.inject({ method: 'POST', url: '/v1/revoke', headers: ops.auth, payload: { tokenId: tok.tokenId, reason: 'contract' } })
  await app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: 'Bearer wrong' }, payload: { server: 'default' } })
  await until(5000, async () => (await app.broker.states.get('default')).state === 'up')
  const text = (await app.inject({ method: 'GET', url: '/metrics' })).body

  for (const [name, labels] of docs) {
    t.match(text, new RegExp(`^# TYPE ${name} `, 'm'), `${name} is exported`)
    const type = new RegExp(`^# TYPE ${name} (\\w+)`, 'm').exec(text)?.[1]
    const sampleName = type === 'histogram' ? `${name}_bucket` : name
    const samples = [...text.matchAll(new RegExp(`^${sampleName}(?:\\{([^}]*)\\})? `, 'gm'))]
    for (const s of samples) {
      const keys = (s[1] ?? '').split(',').filter((kv) => kv !== '').map((kv) => kv.split('=')[0]).filter((k) => k !== 'le').sort()
      t.same(keys, [...labels].sort(), `${name}: labels ${labels.join(',') || '(none)'}`)
    }
  }
  // The series a user looks at first have samples after the run above.
  for (const name of ['ptb_tokens_served_total', 'ptb_mints_total', 'ptb_revocations_total', 'ptb_auth_failures_total', 'http_request_duration_seconds', 'ptb_server_up']) {
    t.match(text, new RegExp(`^${name}(_bucket)?\\{`, 'm'), `${name} has samples`)
  }
})
