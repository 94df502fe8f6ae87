import t from 'tap'
import fc from 'fast-check'
import Fastify from 'fastify'
import { runOpsCommand } from '../src/cli/ops-commands.ts'
import { ConfigError, loadConfig, NAME_PATTERN } from '../src/config/index.ts'
import { CANARY_CLIENT } from '../src/broker/probe.ts'
import { NameSchema } from '../src/schemas/common.ts'

// Server names and client ids are checked in three places: the config loader, the HTTP schemas
// and `ptb client add`. They must agree, or a name one accepts is refused (or misread) by another.

const SECRET = Buffer.alloc(32, 7).toString('base64')

/** Does the config accept `name` as a server name, and as a client id? */
function configAccepts (name: string): { server: boolean, client: boolean } {
  const file = {
    servers: [{ name, url: 'http://127.0.0.1:32400', token: 'admin' }],
    clients: [{ id: name, secretSha256: 'ab'.repeat(32), servers: ['*'], scopes: ['token:issue'] }],
  }
  try {
    loadConfig({ BROKER_SECRET: SECRET, HOST: '127.0.0.1', BROKER_CONFIG: '/etc/ptb/broker.json' }, { readFile: () => JSON.stringify(file) })
    return { server: true, client: true }
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err
    const text = err.problems.join('\n')
    return { server: !text.includes('servers[0].name'), client: !text.includes('clients[0].id') }
  }
}

const quiet = { stdout: { write: () => true }, stderr: { write: () => true }, env: {} }

/**
 * Does `ptb client add` accept `name` as the id (`--` so a leading `-` is not an option), and as
 * a --servers entry? The latter only for a name that is one list entry as given: --servers splits
 * on commas, trims, and takes `*` for all servers.
 */
async function cliAccepts (name: string): Promise<{ id: boolean, server?: boolean }> {
  const id = await runOpsCommand(['client', 'add', '--json', '--', name], quiet)
  if (name === '*' || name.includes(',') || name.trim() !== name) return { id: id === 0 }
  const server = await runOpsCommand(['client', 'add', '--json', '--servers', name, '--', 'svc'], quiet)
  return { id: id === 0, server: server === 0 }
}

t.test('config, HTTP schemas and the CLI accept and refuse the same names', async (t) => {
  // The routes' validator: fastify's Ajv with the options src/app.ts gives it.
  const app = Fastify({ ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', allErrors: false } } })
  app.get('/q', { schema: { querystring: { type: 'object', properties: { name: NameSchema }, required: ['name'] } } }, async () => 'ok')
  app.get('/p/:name', { schema: { params: { type: 'object', properties: { name: NameSchema } } } }, async () => 'ok')
  t.teardown(() => app.close())
  const httpAccepts = async (name: string): Promise<boolean> => {
    const q = await app.inject({ url: `/q?name=${encodeURIComponent(name)}` })
    if (name !== '' && name !== '.' && name !== '..') { // dot segments are resolved away in a path
      const p = await app.inject({ url: `/p/${encodeURIComponent(name)}` })
      t.equal(p.statusCode, q.statusCode, `path and query agree on ${JSON.stringify(name)}`)
    }
    return q.statusCode === 200
  }
  const verdicts = async (name: string) => {
    const config = configAccepts(name)
    const cli = await cliAccepts(name)
    return { configServer: config.server, configClient: config.client, http: await httpAccepts(name), cliId: cli.id, ...(cli.server === undefined ? {} : { cliServer: cli.server }) }
  }
  const every = (name: string, v: boolean) => ({ configServer: v, configClient: v, http: v, cliId: v, ...(name === '*' || name.includes(',') || name.trim() !== name ? {} : { cliServer: v }) })

  const table: Array<[string, boolean]> = [
    ['default', true], ['a', true], ['0', true], ['thumbnailer-2', true], ['svc_a', true], ['a'.repeat(63), true], ['9-_', true],
    ['', false], ['a'.repeat(64), false],
    ['Default', false], // no case-only differences
    ['a.b', false], // `.` separates BullMQ job id parts
    ['a:b', false], // `:` separates Redis key parts
    ['a~b', false], [CANARY_CLIENT, false], // `~` separates a client from its source slot; the canary's id starts with it
    ['-a', false], ['_a', false], ['a b', false], ['a/b', false], ['é', false], ['a\n', false], ['*', false],
  ]
  for (const [name, ok] of table) t.same(await verdicts(name), every(name, ok), `${JSON.stringify(name)} ${ok ? 'accepted' : 'refused'} everywhere`)

  const alphabet = fc.constantFrom(...'az09AZ_-.:~ /*é'.split(''))
  await fc.assert(fc.asyncProperty(
    fc.oneof(fc.stringMatching(new RegExp(NAME_PATTERN)), fc.string({ unit: alphabet, maxLength: 70 })),
    async (name) => {
      const v = await verdicts(name)
      const expected = new RegExp(NAME_PATTERN).test(name)
      return JSON.stringify(v) === JSON.stringify(every(name, expected))
    }), { numRuns: 150 })
})
