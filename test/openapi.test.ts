import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import t from 'tap'
import ts from 'typescript'
import openapiTS, { astToString } from 'openapi-typescript'
import { Validator } from '@seriousme/openapi-schema-validator'
import { buildTestApp, makeClient, serverFor, startSim, type T, testConfig, uniquePrefix } from './helper.ts'

const METHODS = ['get', 'put', 'post', 'delete', 'patch', 'head', 'options', 'trace'] as const
const PUBLIC = new Set(['getHealth', 'getReadiness', 'getMetrics'])
const PACKAGE_VERSION = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version

interface Operation {
  operationId?: string
  security?: Array<Record<string, string[]>>
  responses: Record<string, { headers?: Record<string, unknown> }>
}

/** Every operation of the document, with its method and path. */
function operations (doc: { paths: Record<string, Record<string, Operation>> }): Array<{ method: string, path: string, op: Operation }> {
  return Object.entries(doc.paths).flatMap(([path, item]) =>
    METHODS.filter((m) => item[m] !== undefined).map((method) => ({ method, path, op: item[method] })))
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
  for (const id of ['issueToken', 'getToken', 'streamTokens', 'connectSource', 'revokeTokens', 'listAudit', 'exportAudit', 'traceToken', 'listServers', 'rotateServer', 'getHealth', 'getReadiness', 'getMetrics']) {
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
  t.same(Object.keys(doc.components.securitySchemes).sort(), ['bearer', 'metricsToken'])
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
