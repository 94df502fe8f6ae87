import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import t from 'tap'
import ts from 'typescript'
import openapiTS, { astToString } from 'openapi-typescript'
import { Validator } from '@seriousme/openapi-schema-validator'
import type { AddressInfo } from 'node:net'
import { Value } from 'typebox/value'
import { ErrorCodes } from '../src/errors.ts'
import { buildTestApp, makeClient, serverFor, startSim, type T, testConfig, uniquePrefix, until } from './helper.ts'

const METHODS = ['get', 'put', 'post', 'delete', 'patch', 'head', 'options', 'trace'] as const
const PUBLIC = new Set(['getHealth', 'getReadiness', 'getMetrics'])
const PACKAGE_VERSION = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version

interface Operation {
  operationId?: string
  security?: Array<Record<string, string[]>>
  requestBody?: unknown
  responses: Record<string, { description?: string, headers?: Record<string, unknown>, content?: Record<string, unknown> }>
  'x-events'?: Record<string, unknown>
}

/** Every operation of the document, with its method and path. */
function operations (doc: { paths: Record<string, Record<string, Operation>> }): Array<{ method: string, path: string, op: Operation }> {
  return Object.entries(doc.paths).flatMap(([path, item]) =>
    METHODS.flatMap((method) => { const op = item[method]; return op === undefined ? [] : [{ method, path, op }] }))
}

/** The member names of `export interface <name>` in generated TypeScript, read with the compiler's parser. */
function interfaceMembers (source: string, name: string): string[] {
  const file = ts.createSourceFile('api.d.ts', source, ts.ScriptTarget.Latest, false, ts.ScriptKind.TS)
  const decl = file.statements.find((s): s is ts.InterfaceDeclaration => ts.isInterfaceDeclaration(s) && s.name.text === name)
  if (decl === undefined) return []
  return decl.members.flatMap((m) => m.name !== undefined && (ts.isIdentifier(m.name) || ts.isStringLiteral(m.name)) ? [m.name.text] : [])
}

async function served (t: T & { equal: (a: unknown, b: unknown) => unknown }, over: Parameters<typeof testConfig>[3] = {}): Promise<any> {
  const sim = await startSim(t)
  const app = await buildTestApp(t, testConfig(uniquePrefix('openapi'), [serverFor(sim)], [makeClient('reader')], over), { defaultMetrics: false })
  const r = await app.inject({ method: 'GET', url: '/docs/json' })
  t.equal(r.statusCode, 200)
  return r.json()
}

t.test('every route has a camelCase operationId, and openapi-typescript names each in `operations`', async (t) => {
  const doc = await served(t)
  const ops = operations(doc)
  t.ok(ops.length >= 12, `${ops.length} operations documented`)
  const missing = ops.filter(({ op }) => typeof op.operationId !== 'string' || op.operationId === '').map(({ method, path }) => `${method.toUpperCase()} ${path}`)
  t.same(missing, [], 'no route without an operationId')
  const ids = ops.map(({ op }) => op.operationId!)
  t.equal(new Set(ids).size, ids.length, 'operationIds are unique')
  t.same(ids.filter((id) => !/^[a-z]+[A-Za-z]*$/.test(id)), [], 'operationIds are camelCase')
  for (const id of ['issueToken', 'getToken', 'streamTokens', 'connectSource', 'revokeTokens', 'listAudit', 'exportAudit', 'traceToken', 'listServers', 'rotateServer', 'createProxyKey', 'listProxyKeys', 'getProxyKey', 'revokeProxyKey', 'getHealth', 'getReadiness', 'getMetrics']) {
    t.ok(ids.includes(id), `operation ${id}`)
  }

  // Generate types the way a client would: from the served document, through a file.
  const dir = mkdtempSync(join(tmpdir(), 'ptb-openapi-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'openapi.json')
  writeFileSync(file, JSON.stringify(doc))
  const source = astToString(await openapiTS(pathToFileURL(file), { silent: true }))
  const generated = interfaceMembers(source, 'operations')
  t.same([...generated].sort(), [...ids].sort(), 'the generated `operations` type names exactly the routes\' operationIds')
  t.same(interfaceMembers(source, 'paths').sort(), Object.keys(doc.paths).sort(), 'and `paths` every path')
})

t.test('the document is valid OpenAPI 3.1', async (t) => {
  const doc = await served(t)
  const validator = new Validator()
  const result = await validator.validate(doc)
  t.equal(validator.version, '3.1', 'validated against the 3.1 schema')
  t.ok(result.valid, `valid: ${JSON.stringify(result.errors ?? [], null, 1).slice(0, 2000)}`)
})

t.test('the document names the product: version, license, servers, security per route, the 401 challenge', async (t) => {
  const doc = await served(t)
  t.equal(doc.info.version, PACKAGE_VERSION, 'info.version is package.json\'s')
  t.equal(doc.info.license.name, 'MIT')
  t.equal(doc.info.license.identifier, 'MIT')
  t.same(doc.servers, [{ url: '/' }], 'a relative server: the document works wherever the broker is reached')
  t.same(Object.keys(doc.components.securitySchemes).sort(), ['bearer'], 'without METRICS_TOKEN, no metricsToken scheme that nothing applies')
  for (const { method, path, op } of operations(doc)) {
    const where = `${method.toUpperCase()} ${path}`
    t.ok(Array.isArray(op.security), `${where} declares its security`)
    if (PUBLIC.has(op.operationId!)) {
      t.same(op.security, [], `${where} is public`)
      t.notOk(op.responses['401'], `${where} has no 401 without METRICS_TOKEN`)
    } else {
      t.same(op.security, [{ bearer: [] }], `${where} takes the client secret`)
      t.ok(op.responses['401']?.headers?.['WWW-Authenticate'], `${where} documents WWW-Authenticate on 401`)
    }
  }
})

t.test('with METRICS_TOKEN, /metrics is documented as bearer-protected with its 401', async (t) => {
  const doc = await served(t, { metricsToken: 'scrape-me' })
  const metrics = doc.paths['/metrics'].get
  t.same(metrics.security, [{ metricsToken: [] }])
  t.same(Object.keys(doc.components.securitySchemes).sort(), ['bearer', 'metricsToken'])
  t.ok(metrics.responses['401'].headers['WWW-Authenticate'])
  t.same(doc.paths['/healthz'].get.security, [], 'health stays public')
})

t.test('401 answers carry WWW-Authenticate: Bearer, with error="invalid_token" for an unknown credential', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('challenged')
  const app = await buildTestApp(t, testConfig(uniquePrefix('challenge'), [serverFor(sim)], [a], { metricsToken: 'scrape-me' }), { defaultMetrics: false })
  const post = (headers: Record<string, string>) => app.inject({ method: 'POST', url: '/v1/tokens', headers, payload: { server: 'default' } })

  const none = await post({})
  t.equal(none.statusCode, 401)
  t.equal(none.headers['www-authenticate'], 'Bearer', 'no credential: a bare challenge, no error code')
  const basic = await post({ authorization: 'Basic dXNlcjpwYXNz' })
  t.equal(basic.headers['www-authenticate'], 'Bearer', 'another scheme is no bearer credential')
  const unknown = await post({ authorization: 'Bearer not-a-secret' })
  t.equal(unknown.statusCode, 401)
  t.equal(unknown.headers['www-authenticate'], 'Bearer error="invalid_token"')
  const ok = await post(a.auth)
  t.equal(ok.statusCode, 200)
  t.notOk(ok.headers['www-authenticate'], 'no challenge on success')
  const forbidden = await app.inject({ method: 'GET', url: '/v1/servers', headers: a.auth })
  t.equal(forbidden.statusCode, 403)
  t.notOk(forbidden.headers['www-authenticate'], 'a 403 (missing scope) is no challenge')

  const metricsNone = await app.inject({ method: 'GET', url: '/metrics' })
  t.equal(metricsNone.statusCode, 401)
  t.equal(metricsNone.headers['www-authenticate'], 'Bearer')
  const metricsWrong = await app.inject({ method: 'GET', url: '/metrics', headers: { authorization: 'Bearer wrong' } })
  t.equal(metricsWrong.headers['www-authenticate'], 'Bearer error="invalid_token"')

  // Once the address is throttled the answer is 429, which challenges nothing.
  let last = unknown
  for (let i = 0; i < 25 && last.statusCode !== 429; i++) last = await post({ authorization: `Bearer guess-${i}` })
  t.equal(last.statusCode, 429)
  t.notOk(last.headers['www-authenticate'], '429 carries no challenge')
})

t.test('every declared security scheme is applied by some operation, with and without METRICS_TOKEN', async (t) => {
  for (const over of [{}, { metricsToken: 'scrape-me' }]) {
    const doc = await served(t, over)
    const applied = new Set(operations(doc).flatMap(({ op }) => (op.security ?? []).flatMap((s) => Object.keys(s))))
    t.same(Object.keys(doc.components.securitySchemes).filter((s) => !applied.has(s)), [], `declared but unused (${JSON.stringify(over)})`)
  }
})

t.test('every response says what it means, every error answer is declared as JSON, every body route its 413 and 415', async (t) => {
  const doc = await served(t, { metricsToken: 'scrape-me' })
  for (const { method, path, op } of operations(doc)) {
    const where = `${method.toUpperCase()} ${path}`
    for (const [status, response] of Object.entries(op.responses)) {
      t.ok(typeof response.description === 'string' && response.description !== '' && response.description !== 'Default Response',
        `${where} ${status} has a description (${response.description})`)
      if (Number(status) >= 400) t.same(Object.keys(response.content ?? {}), ['application/json'], `${where} ${status} is JSON`)
    }
    if (op.requestBody !== undefined) {
      t.ok(op.responses['413'] !== undefined && op.responses['415'] !== undefined, `${where} takes a body: 413 and 415 declared`)
    }
  }
  const stream = doc.paths['/v1/tokens/stream'].get
  t.same(Object.keys(stream.responses['200'].content), ['text/event-stream'], 'the stream\'s events are text/event-stream')
  t.same(Object.keys(doc.paths['/v1/audit/export'].get.responses['200'].content), ['application/x-ndjson'])
})

t.test('a body that is not JSON is a 415 JSON error on every body route, as documented and listed in the README', async (t) => {
  const sim = await startSim(t)
  const all = makeClient('all', { scopes: ['token:issue', 'source:connect', 'token:revoke', 'audit:read', 'server:read', 'server:rotate', 'proxy-key:manage'], sources: '*' })
  const app = await buildTestApp(t, testConfig(uniquePrefix('openapi-415'), [serverFor(sim)], [all]), { defaultMetrics: false })
  const doc = (await app.inject({ method: 'GET', url: '/docs/json' })).json()
  const bodyRoutes = operations(doc).filter(({ op }) => op.requestBody !== undefined)
  t.ok(bodyRoutes.length >= 4, bodyRoutes.map(({ path }) => path).join(', '))
  for (const { method, path } of bodyRoutes) {
    const r = await app.inject({ method: method.toUpperCase() as 'POST', url: path, headers: { ...all.auth, 'content-type': 'text/plain' }, payload: 'server=default' })
    t.equal(r.statusCode, 415, `${path}: 415`)
    t.match(r.headers['content-type'], /^application\/json/)
    t.ok(Value.Check(doc.components.schemas.Error, r.json()), `${path}: the Error body`)
    t.equal(r.json().code, 'UNSUPPORTED_MEDIA_TYPE')
  }
  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8')
  for (const [code, status] of Object.entries(ErrorCodes)) t.ok(readme.includes(`\`${code}\` ${status}`), `the README lists ${code} ${status}`)
})

interface SseEvent { event: string, data: unknown }

/** Opens the push channel with fetch and collects its events; non-200 answers are returned as they are. */
async function openStream (url: string, headers: Record<string, string>): Promise<{ response: Response, events: SseEvent[], close: () => void }> {
  const controller = new AbortController()
  const response = await fetch(url, { headers: { ...headers, accept: 'text/event-stream' }, signal: controller.signal })
  const events: SseEvent[] = []
  if (response.status === 200 && response.body !== null) {
    void (async () => {
      let buffered = ''
      const decoder = new TextDecoder()
      try {
        for await (const chunk of response.body!) {
          buffered += decoder.decode(chunk, { stream: true })
          let end: number
          while ((end = buffered.indexOf('\n\n')) >= 0) {
            const block = buffered.slice(0, end)
            buffered = buffered.slice(end + 2)
            const event = /^event: (.*)$/m.exec(block)?.[1]
            const data = /^data: (.*)$/m.exec(block)?.[1]
            if (event !== undefined && data !== undefined) events.push({ event, data: JSON.parse(data) })
          }
        }
      } catch {}
    })()
  }
  return { response, events, close: () => controller.abort() }
}

t.test('the stream\'s real events validate against x-events, and its real errors are JSON', async (t) => {
  const sim = await startSim(t)
  const a = makeClient('watcher')
  const ops = makeClient('ops', { scopes: ['token:revoke'] })
  const app = await buildTestApp(t, testConfig(uniquePrefix('openapi-sse'), [serverFor(sim)], [a, ops],
    { tokenLifetimeMs: 60_000, tokenRenewAfterMs: 50_000, probeIntervalMs: 500, role: 'all' }))
  await app.listen({ host: '127.0.0.1', port: 0 })
  const base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
  const doc = (await app.inject({ method: 'GET', url: '/docs/json' })).json()
  const schemas = doc.paths['/v1/tokens/stream'].get['x-events'] as Record<string, unknown>
  t.same(Object.keys(schemas).sort(), ['revoked', 'server', 'token'], 'a schema for each event the stream sends')

  for (const [query, headers, status] of [['nope', a.auth, 404], ['default', {}, 401], ['default', ops.auth, 403], ['Bad%20Name', a.auth, 400]] as const) {
    const s = await openStream(`${base}/v1/tokens/stream?server=${query}`, headers)
    t.equal(s.response.status, status)
    t.match(s.response.headers.get('content-type'), /^application\/json/, `${status}: JSON, as the document now says`)
    t.ok(Value.Check(doc.components.schemas.Error, await s.response.json()), `${status}: the Error body`)
  }

  t.ok(await until(10_000, async () => (await app.broker.states.get('default')).state === 'up'))
  const s = await openStream(`${base}/v1/tokens/stream?server=default`, a.auth)
  t.teardown(() => s.close())
  t.equal(s.response.status, 200)
  t.ok(await until(10_000, async () => s.events.some((e) => e.event === 'token')), 'the first token')
  await sim.setDown(true)
  t.ok(await until(20_000, async () => s.events.some((e) => e.event === 'server')), 'PMS down')
  await sim.setDown(false)
  t.ok(await until(20_000, async () => s.events.filter((e) => e.event === 'server').length >= 2), 'PMS up')
  const first = s.events.find((e) => e.event === 'token')!.data as { tokenId: string }
  const revoke = await app.inject({ method: 'POST', url: '/v1/revoke', headers: ops.auth, payload: { tokenId: first.tokenId, reason: 'schema test' } })
  t.equal(revoke.statusCode, 200)
  t.ok(await until(10_000, async () => s.events.some((e) => e.event === 'revoked')), 'the revocation')

  t.same([...new Set(s.events.map((e) => e.event))].sort(), ['revoked', 'server', 'token'], 'every kind of event was seen')
  for (const e of s.events) {
    const schema = schemas[e.event]
    t.ok(schema !== undefined && Value.Check(schema as Parameters<typeof Value.Check>[0], e.data), `${e.event} ${JSON.stringify(e.data).replace(/"token":"[^"]+"/, '"token":"…"')} matches x-events.${e.event}`)
  }
  // The schemas are not vacuous: a token event without its reason, or with a field too many, fails.
  const token = s.events.find((e) => e.event === 'token')!.data as Record<string, unknown>
  const { reason: _reason, ...noReason } = token
  t.notOk(Value.Check(schemas.token as Parameters<typeof Value.Check>[0], noReason))
  t.notOk(Value.Check(schemas.server as Parameters<typeof Value.Check>[0], { server: 'default', up: 'yes' }))
})
