import { Client, request } from 'undici'
import type { FastifyInstance } from 'fastify'
import type { ProxyOptions } from '../src/proxy/index.ts'
import type { ServiceOverrides } from '../src/services.ts'
import { policyFrom, type ProxySpec } from '../src/proxy/presets.ts'
import type { Config, ServerConfig } from '../src/config/index.ts'
import type { PmsSimOptions, PmsSimulator } from '../src/sim/pms-sim.ts'
import { buildTestApp, type LogCapture, makeClient, serverFor, startSim, type T, testConfig, type TestClient, uniquePrefix } from './helper.ts'

/** A test client with proxy rules. */
export function proxyClient (id: string, spec: ProxySpec, opts: Parameters<typeof makeClient>[1] = {}): TestClient {
  const c = makeClient(id, opts)
  const built = policyFrom(spec)
  if (!('policy' in built)) throw new Error(built.problems.join('; '))
  c.config.proxy = built.policy
  return c
}

export interface ProxySetup {
  sim: PmsSimulator
  app: FastifyInstance & { logs: LogCapture }
  config: Config
  /** The proxy listener's origin (`http://127.0.0.1:<port>`). */
  base: string
  /** A new proxy key for a client. */
  key: (client: string, opts?: { server?: string, expiresAt?: number }) => Promise<{ key: string, id: string }>
  /** A raw request through the proxy: the path is sent exactly as given (no URL normalisation). */
  raw: (method: string, path: string, headers?: Record<string, string>) => Promise<{ status: number, headers: Record<string, string | string[] | undefined>, body: string }>
}

export async function proxySetup (t: T, clients: TestClient[], opts: { sim?: PmsSimOptions, proxy?: ProxyOptions, proxyKeyCache?: ServiceOverrides['proxyKeyCache'], prefix?: string, config?: Partial<Config>, extraServers?: ServerConfig[] } = {}): Promise<ProxySetup> {
  const sim = await startSim(t, opts.sim)
  const server = { ...serverFor(sim), proxy: { port: 0 } }
  const config = testConfig(opts.prefix ?? uniquePrefix('pxy'), [server, ...(opts.extraServers ?? [])], clients, opts.config)
  const app = await buildTestApp(t, config, { defaultMetrics: false, proxyKeyCache: opts.proxyKeyCache, proxy: { recheckIntervalMs: 200, ...opts.proxy } })
  await app.ready()
  await app.proxy.listen('127.0.0.1', { default: 0 })
  const base = `http://127.0.0.1:${app.proxy.port('default')}`
  const client = new Client(base)
  t.teardown(async () => { await client.close() })
  return {
    sim,
    app,
    config,
    base,
    key: async (c, o = {}) => {
      const { key, record } = await app.proxy.keys.create({ client: c, label: 'test', ...o })
      return { key, id: record.id }
    },
    raw: async (method, path, headers = {}) => {
      const r = await client.request({ method: method as 'GET', path, headers })
      return { status: r.statusCode, headers: r.headers, body: await r.body.text() }
    },
  }
}

/** GET through undici with a full URL. */
export async function get (url: string, headers: Record<string, string> = {}): Promise<{ status: number, headers: Record<string, string | string[] | undefined>, body: Buffer }> {
  const r = await request(url, { headers })
  return { status: r.statusCode, headers: r.headers, body: Buffer.from(await r.body.arrayBuffer()) }
}
