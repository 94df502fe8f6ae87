import { request } from 'undici'
import { PmsSimulator, type PmsSimOptions } from '../../src/sim/pms-sim.ts'

// What the simulator's own tests share: starting one, and calling it the way a PMS client does.

/** The HTML body a real PMS sends with a 401. */
export const UNAUTHORIZED = '<html><head><title>Unauthorized</title></head><body><h1>401 Unauthorized</h1></body></html>'

export interface Call {
  token?: string
  /** Send the token as the X-Plex-Token query argument instead of the header. */
  query?: boolean
  json?: boolean
  method?: 'GET' | 'POST' | 'HEAD' | 'DELETE'
  headers?: Record<string, string>
}

export interface Answer {
  status: number
  type: string
  headers: Record<string, string | string[] | undefined>
  text: string
}

/** The part of tap's Test the helpers use. */
interface Test {
  teardown: (fn: () => unknown) => void
}

export async function start (t: Test, opts: PmsSimOptions = {}): Promise<PmsSimulator> {
  const sim = await PmsSimulator.start(opts)
  t.teardown(() => sim.stop())
  return sim
}

export async function call (sim: PmsSimulator, path: string, o: Call = {}): Promise<Answer> {
  let url = sim.url + path
  const headers: Record<string, string> = { ...o.headers }
  if (o.token !== undefined) {
    if (o.query === true) url += `${path.includes('?') ? '&' : '?'}X-Plex-Token=${encodeURIComponent(o.token)}`
    else headers['x-plex-token'] = o.token
  }
  if (o.json === true) headers.accept = 'application/json'
  // A fresh connection per call: a pooled one may be the one a restart just dropped, and these
  // files test the simulator, not a client's retry on a dead keep-alive connection.
  const r = await request(url, { method: o.method ?? 'GET', headers, reset: true })
  const text = await r.body.text()
  return { status: r.statusCode, type: String(r.headers['content-type']), headers: r.headers, text }
}
