import t from 'tap'
import type { AddressInfo } from 'node:net'
import { parse } from 'yaml'
import { runOpsCommand } from '../src/cli/ops-commands.ts'
import { generalisePath, suggestionYaml, suggestRules } from '../src/cli/proxy-rules.ts'
import { policyFrom } from '../src/proxy/presets.ts'
import { evaluate } from '../src/proxy/rules.ts'
import { makeClient } from './helper.ts'
import { proxyClient, proxySetup } from './proxy-helper.ts'

/** `ptb proxy-rules suggest`: rules from what a client in shadow mode did, that load and allow it. */

t.test('ids in paths become *, methods group per path, counts include repeats', async (t) => {
  t.equal(generalisePath('/library/metadata/1234/children'), '/library/metadata/*/children')
  t.equal(generalisePath('/library/sections/2/all'), '/library/sections/*/all')
  t.equal(generalisePath('/transcode/sessions/4f1b2c3d4e5f6a7b'), '/transcode/sessions/*')
  t.equal(generalisePath('/status/sessions'), '/status/sessions', 'words stay')
  t.equal(generalisePath('/:/timeline'), '/:/timeline')
  const s = suggestRules([
    { detail: { method: 'GET', path: '/library/metadata/1', reason: 'default-deny' } },
    { detail: { method: 'GET', path: '/library/metadata/2', reason: 'default-deny' } },
    { detail: { method: 'GET', path: '/library/metadata/2', reason: 'default-deny', repeats: 8 } },
    { detail: { method: 'PUT', path: '/library/metadata/3', reason: 'default-deny' } },
    { detail: { method: 'HEAD', path: '/clients', reason: 'default-deny' } },
    { detail: { method: 'DELETE', path: '/playlists/7', reason: 'client-deny', rule: 'DELETE /playlists/*' } },
    { detail: { note: 'not a decision' } },
  ])
  t.same(s.allow, [
    { methods: ['GET', 'PUT'], path: '/library/metadata/*', requests: 11 },
    { methods: ['GET'], path: '/clients', requests: 1 },
  ])
  t.same(s.deniedByClient, [{ methods: ['DELETE'], path: '/playlists/*', requests: 1 }], 'an allow rule would not open these')
  t.equal(s.events, 6)
})

t.test('the printed YAML loads as the client\'s proxy section and allows what was seen', async (t) => {
  const seen: Array<[string, string]> = [['GET', '/library/metadata/1001'], ['GET', '/library/metadata/1002/children'], ['PUT', '/library/metadata/77'], ['GET', '/clients']]
  const s = suggestRules(seen.map(([method, path]) => ({ detail: { method, path, reason: 'default-deny' } })))
  const yaml = parse(suggestionYaml('learner', s)) as { proxy: { allow: unknown[] } }
  const compiled = policyFrom({ preset: 'dashboard', allow: yaml.proxy.allow })
  if (!('policy' in compiled)) throw new Error(`the suggestion does not load: ${compiled.problems.join('; ')}`)
  for (const [method, path] of seen) t.ok(evaluate(compiled.policy, { method, path }).allow, `${method} ${path} is allowed by the suggestion`)
  t.notOk(evaluate(compiled.policy, { method: 'DELETE', path: '/library/metadata/1001' }).allow, 'nothing beyond what was seen')
  t.notOk(evaluate(compiled.policy, { method: 'GET', path: '/security/token' }).allow, 'the hard deny still holds')
  t.match(suggestionYaml('idle', suggestRules([])), /Nothing to add/)
})

t.test('end to end: shadow-mode traffic through the proxy, then ptb proxy-rules suggest', async (t) => {
  const ops = makeClient('ops', { scopes: ['audit:read'] })
  const s = await proxySetup(t, [proxyClient('learner', { preset: 'dashboard', mode: 'shadow' }), ops], { proxy: { auditWindowMs: 300 } })
  const { key } = await s.key('learner')
  for (const id of [1001, 1002, 1001, 1001]) t.equal((await s.raw('GET', `/library/metadata/${id}`, { 'x-plex-token': key })).status, 200)
  t.equal((await s.raw('GET', '/clients', { 'x-plex-token': key })).status, 200)
  // The window ends: the repeats are written as one summary each.
  await new Promise((resolve) => setTimeout(resolve, 600))
  await s.app.listen({ host: '127.0.0.1', port: 0 })
  const url = `http://127.0.0.1:${(s.app.server.address() as AddressInfo).port}`
  let out = ''
  let err = ''
  const io = { stdout: { write: (x: string) => { out += x } }, stderr: { write: (x: string) => { err += x } }, env: { PTB_URL: url, PTB_SECRET: ops.secret } }
  t.equal(await runOpsCommand(['proxy-rules', 'suggest', '--client', 'learner', '--json'], io), 0, err)
  const suggestion = JSON.parse(out)
  t.same(suggestion.allow.map((r: { path: string }) => r.path).sort(), ['/clients', '/library/metadata/*'])
  t.equal(suggestion.allow.find((r: { path: string }) => r.path === '/library/metadata/*').requests, 4, 'every request counted, repeats included')
  out = ''
  t.equal(await runOpsCommand(['proxy-rules', 'suggest', '--client', 'learner'], io), 0)
  t.match(out, /path: "\/library\/metadata\/\*" \} {2}# 4 requests/)
  t.notOk(out.includes(key), 'the key is nowhere in the output')
  out = ''
  err = ''
  t.equal(await runOpsCommand(['proxy-rules', 'suggest'], io), 2, 'no --client: a usage error')
  t.match(err, /--client/)
  t.equal(await runOpsCommand(['proxy-rules', 'guess', '--client', 'x'], io), 2)
})
