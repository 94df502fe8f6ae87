import t from 'tap'
import { readFileSync } from 'node:fs'
import { parse } from 'yaml'
import { Metrics } from '../src/metrics.ts'
import { havePromtool, promtool } from './promtool.ts'

interface Rule { alert: string, expr: string, for?: string, labels?: Record<string, string>, annotations?: Record<string, string> }
interface AlertTest { eval_time: string, alertname: string, exp_alerts: unknown[] }

const rules: Rule[] = parse(readFileSync('docker/alerts.yml', 'utf8')).groups.flatMap((g: { rules: Rule[] }) => g.rules)
const unitTests: Array<{ alert_rule_test: AlertTest[] }> = parse(readFileSync('test/alerts/alerts.test.yml', 'utf8')).tests
const cases = unitTests.flatMap((u) => u.alert_rule_test)

t.test('promtool accepts the rules and every unit test of them passes', async (t) => {
  if (!havePromtool(t, 'docker/alerts.yml')) return
  const check = promtool(['check', 'rules', 'docker/alerts.yml'])
  t.equal(check.status, 0, `promtool check rules: ${check.output}`)
  t.match(check.output, new RegExp(`SUCCESS: ${rules.length} rules found`))
  const test = promtool(['test', 'rules', 'test/alerts/alerts.test.yml'])
  t.equal(test.status, 0, `promtool test rules: ${test.output}`)
})

t.test('every alert has a case where it fires and one where it stays quiet', async (t) => {
  t.ok(rules.length >= 10, 'the rule set is loaded')
  for (const r of rules) {
    const mine = cases.filter((c) => c.alertname === r.alert)
    t.ok(mine.some((c) => c.exp_alerts.length > 0), `${r.alert} fires in a test`)
    t.ok(mine.some((c) => c.exp_alerts.length === 0), `${r.alert} stays quiet in a test`)
  }
  for (const c of cases) t.ok(rules.some((r) => r.alert === c.alertname), `the test of ${c.alertname} names a real alert`)
})

t.test('the alerts watch what matters, with metric names the broker really exports', async (t) => {
  const byName = new Map(rules.map((r) => [r.alert, r]))
  const expected: Array<[string, RegExp]> = [
    ['BrokerDown', /^up\{job="plex-token-broker"\} == 0$/],
    ['BrokerTargetMissing', /^absent\(up\{job="plex-token-broker"\}\)$/],
    ['BrokerAuthLockout', /ptb_rate_limited_total\{limit="auth_failures"\}/],
    ['BrokerUnknownSecrets', /ptb_auth_failures_total\{reason="unknown_secret"\}/],
    ['PlexAdminTokenInvalid', /ptb_admin_token_valid == 0/],
    ['PlexAdminTokenUnknown', /ptb_admin_token_valid == -1/],
    ['BrokerUndecryptableTokens', /increase\(ptb_undecryptable_tokens_total\[15m\]\)\) > 0/],
    ['ProxyCredentialLeakBlanked', /increase\(ptb_proxy_leaks_total\[15m\]\)\) > 0/],
  ]
  for (const [alert, expr] of expected) t.match(byName.get(alert)?.expr, expr, `${alert}: ${expr}`)
  t.equal(byName.get('PlexAdminTokenUnknown')?.for, '30m', 'unknown admin token: only after 30 minutes')

  const prom = parse(readFileSync('docker/prometheus.yml', 'utf8'))
  t.same(prom.rule_files, ['/etc/prometheus/alerts.yml'], 'Prometheus loads the rules')
  t.equal(prom.scrape_configs[0].job_name, 'plex-token-broker', 'the job the up{} alerts select')

  // A typo in a metric name makes an alert that can never fire: check each against the registry.
  const exported = new Set((await new Metrics({ defaultMetrics: false }).registry.getMetricsAsJSON()).map((m) => m.name))
  for (const r of rules) {
    for (const name of r.expr.match(/\bptb_[a-z_]+/g) ?? []) t.ok(exported.has(name), `${r.alert}: ${name} is exported`)
  }
  for (const r of rules) {
    t.match(r.labels?.severity, /^(warning|critical)$/, `${r.alert} has a severity`)
    t.ok((r.annotations?.summary ?? '') !== '' && (r.annotations?.description ?? '') !== '', `${r.alert} says what happened and what to do`)
  }

  // Alert rules watching increase()/rate() need the series before the first event.
  const text = await new Metrics({ defaultMetrics: false }).registry.metrics()
  t.match(text, /^ptb_rate_limited_total\{limit="auth_failures"\} 0$/m, 'auth lockouts counted from 0')
  t.match(text, /^ptb_auth_failures_total\{reason="unknown_secret"\} 0$/m, 'unknown secrets counted from 0')
})

t.test('the README says what to do for every alert', async (t) => {
  const readme = readFileSync('README.md', 'utf8')
  const start = readme.indexOf('\n### Alerts\n')
  t.ok(start >= 0, 'README has an Alerts section')
  const end = readme.indexOf('\n## ', start + 1)
  const section = readme.slice(start, end === -1 ? undefined : end)
  for (const r of rules) t.match(section, new RegExp(`\\*\\*${r.alert}\\*\\*`), `${r.alert} is listed`)
})
