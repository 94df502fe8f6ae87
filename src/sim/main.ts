import { readFile } from 'node:fs/promises'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { PmsSimulator, type PmsSimOptions, type SimFault } from './pms-sim.ts'

/**
 * `npm run sim`: a PMS simulator on SIM_PORT plus a loopback-only control server, so a demo or a
 * person can restart PMS, cut the network or inject faults while the broker runs against it.
 */

export type SimEnv = Record<string, string | undefined>

export interface RunningSim {
  sim: PmsSimulator
  control: Server
  controlUrl: string
  close: () => Promise<void>
}

/**
 * SIM_PORT (32400), SIM_HOST (127.0.0.1), SIM_ADMIN_TOKEN (comma-separated) or SIM_ADMIN_TOKEN_FILE
 * (a Docker secret), SIM_MACHINE_ID, SIM_VERSION, SIM_TOKEN_LIFETIME (ms), SIM_XML_ONLY,
 * SIM_CONTROL_PORT (32401), SIM_CONTROL_HOST (127.0.0.1; a container needs 0.0.0.0 and a
 * loopback-only port mapping instead).
 */
export async function startSimFromEnv (env: SimEnv): Promise<RunningSim> {
  const rawTokens = env.SIM_ADMIN_TOKEN || (env.SIM_ADMIN_TOKEN_FILE ? await readFile(env.SIM_ADMIN_TOKEN_FILE, 'utf8') : '')
  const adminTokens = rawTokens.split(',').map((s) => s.trim()).filter((s) => s !== '')
  const opts: PmsSimOptions = {
    port: intVar(env, 'SIM_PORT', 32400),
    host: env.SIM_HOST || '127.0.0.1',
    adminTokens: adminTokens.length > 0 ? adminTokens : undefined,
    machineIdentifier: env.SIM_MACHINE_ID || undefined,
    version: env.SIM_VERSION || undefined,
    tokenLifetimeMs: env.SIM_TOKEN_LIFETIME ? intVar(env, 'SIM_TOKEN_LIFETIME', 0) : undefined,
    xmlOnly: boolVar(env, 'SIM_XML_ONLY'),
  }
  const controlPort = intVar(env, 'SIM_CONTROL_PORT', 32401)
  const controlHost = env.SIM_CONTROL_HOST || '127.0.0.1'
  const sim = await PmsSimulator.start(opts)
  let control: Server
  try {
    control = await listenControl(sim, controlHost, controlPort)
  } catch (err) {
    await sim.stop()
    throw err
  }
  const { port } = control.address() as AddressInfo
  return {
    sim,
    control,
    controlUrl: `http://127.0.0.1:${port}`,
    close: async () => {
      await new Promise<void>((resolve) => {
        control.close(() => resolve())
        control.closeAllConnections()
      })
      await sim.stop()
    },
  }
}

function intVar (env: SimEnv, name: string, fallback: number): number {
  const raw = env[name]
  if (raw === undefined || raw === '') return fallback
  const n = Number(raw)
  if (!Number.isInteger(n) || n < 0) throw new Error(`${name} must be a non-negative integer, got ${JSON.stringify(raw)}`)
  return n
}

function boolVar (env: SimEnv, name: string): boolean {
  return ['1', 'true', 'yes'].includes((env[name] ?? '').toLowerCase())
}

/** Loopback by default: whoever reaches it can take "PMS" down. */
async function listenControl (sim: PmsSimulator, host: string, port: number): Promise<Server> {
  const server = createServer((req, res) => {
    control(sim, req, res).catch((err: Error) => reply(res, 500, { error: err.message }))
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => {
      server.off('error', reject)
      resolve()
    })
  })
  return server
}

async function control (sim: PmsSimulator, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://control.invalid')
  const q = url.searchParams
  const route = `${req.method} ${url.pathname}`
  switch (route) {
    case 'GET /counters':
      return reply(res, 200, { ...sim.counters, transientTokens: sim.transientTokens(), up: sim.isUp, version: sim.version, machineIdentifier: sim.machineIdentifier, webSockets: sim.webSockets, playback: sim.playback ?? null })
    case 'POST /restart':
      await sim.restart({
        downForMs: num(q.get('downMs')),
        version: q.get('version') ?? undefined,
        machineIdentifier: q.get('machineIdentifier') ?? undefined,
      })
      return reply(res, 200, { ok: true, version: sim.version })
    case 'POST /down':
      await sim.setDown(true)
      return reply(res, 200, { ok: true, up: false })
    case 'POST /up':
      await sim.setDown(false)
      return reply(res, 200, { ok: true, up: true })
    case 'POST /fault': {
      // No parameters clears every fault.
      const fault: SimFault = {
        latencyMs: num(q.get('latencyMs')),
        failEvery: num(q.get('failEvery')),
        status: num(q.get('status')),
        garbage: q.has('garbage') ? q.get('garbage') !== '0' : undefined,
        xmlOnly: q.has('xmlOnly') ? q.get('xmlOnly') !== '0' : undefined,
      }
      sim.setFault(fault)
      return reply(res, 200, { ok: true, fault })
    }
    case 'POST /reset-counters':
      sim.resetCounters()
      return reply(res, 200, { ok: true })
    case 'POST /playback': {
      // Someone presses play (or pause, or stop) in a Plex app: /status/sessions and the
      // notification WebSockets show it.
      const state = q.get('state') ?? 'playing'
      if (state === 'stopped') return reply(res, 200, { ok: true, stopped: sim.stopPlayback() })
      const ratingKey = q.get('ratingKey') ?? sim.playback?.ratingKey
      if ((state !== 'playing' && state !== 'paused') || ratingKey === undefined) return reply(res, 400, { error: 'ratingKey= (a movie or episode) and state=playing|paused|stopped' })
      try {
        sim.play(ratingKey, { state, viewOffset: num(q.get('viewOffset')) })
      } catch (err) {
        return reply(res, 400, { error: (err as Error).message })
      }
      return reply(res, 200, { ok: true, playback: sim.playback })
    }
    default:
      return reply(res, 404, { error: 'unknown control route', routes: ['GET /counters', 'POST /restart?downMs=&version=', 'POST /down', 'POST /up', 'POST /fault?status=&latencyMs=&failEvery=&garbage=1&xmlOnly=1', 'POST /reset-counters', 'POST /playback?ratingKey=&state=playing|paused|stopped&viewOffset='] })
  }
}

function num (v: string | null): number | undefined {
  if (v === null || v === '') return undefined
  const n = Number(v)
  return Number.isFinite(n) ? n : undefined
}

function reply (res: ServerResponse, status: number, body: unknown): void {
  if (res.headersSent) return
  res.writeHead(status, { 'Content-Type': 'application/json' })
  res.end(JSON.stringify(body))
}

if (import.meta.main) {
  const running = await startSimFromEnv(process.env)
  const { sim } = running
  // A token the operator gave is only hinted at; a generated one is printed whole, or nobody could use it.
  const given = process.env.SIM_ADMIN_TOKEN ? 'SIM_ADMIN_TOKEN' : process.env.SIM_ADMIN_TOKEN_FILE ? 'SIM_ADMIN_TOKEN_FILE' : undefined
  const token = given !== undefined ? `${sim.adminToken.slice(0, 4)}… (from ${given})` : sim.adminToken
  process.stdout.write([
    `PMS simulator ${sim.url}  machineIdentifier ${sim.machineIdentifier}  version ${sim.version}`,
    `admin X-Plex-Token: ${token}`,
    `control ${running.controlUrl}: GET /counters, POST /restart?downMs=, POST /down, POST /up, POST /fault, POST /reset-counters, POST /playback?ratingKey=1001`,
    '',
  ].join('\n'))
  const shutdown = (): void => {
    running.close().then(() => process.exit(0), () => process.exit(1))
  }
  process.once('SIGINT', shutdown)
  process.once('SIGTERM', shutdown)
}
