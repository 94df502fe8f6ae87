import t from 'tap'
import { createServer, type IncomingHttpHeaders, request, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { LongResponse, type PeerEnd } from '../src/http/long-response.ts'
import { type T, until } from './helper.ts'

// A server whose one response is a LongResponse, and a client that never reads its body.
async function serve (t: T, bounds: { maxBufferedBytes: number, drainTimeoutMs: number }) {
  const ends: PeerEnd[] = []
  let headers: IncomingHttpHeaders | undefined
  let out: LongResponse | undefined
  const ready = new Promise<LongResponse>((resolve) => {
    const server = createServer((_req, res: ServerResponse) => {
      out = new LongResponse(res, { 'x-kept': 'yes' }, bounds, (why) => { ends.push(why); out?.end(why === 'slow' ? 'abort' : 'graceful') })
      out.open(200, { 'content-type': 'text/plain' })
      resolve(out)
    })
    server.listen(0, '127.0.0.1', () => {
      const req = request({ port: (server.address() as AddressInfo).port, host: '127.0.0.1' }, (res) => {
        res.pause()
        headers = res.headers
      })
      req.on('error', () => {})
      req.end()
      t.teardown(() => { req.destroy(); server.close() })
    })
  })
  return { out: await ready, ends, headers: async () => { await until(5000, async () => headers !== undefined); return headers } }
}

t.test('a peer that does not read is ended as slow once too much is queued', async (t) => {
  const { out, ends, headers } = await serve(t, { maxBufferedBytes: 64 * 1024, drainTimeoutMs: 60_000 })
  out.write('hello\n')
  t.match(await headers(), { 'x-kept': 'yes', connection: 'close' }, 'the headers set before the takeover are sent, and the connection ends with it')
  const chunk = 'x'.repeat(16 * 1024)
  for (let i = 0; i < 1000 && ends.length === 0; i++) out.write(chunk)
  t.same(ends, ['slow'], 'reported once, as slow')
  out.write(chunk)
  t.same(ends, ['slow'], 'a write after the end is ignored')
})

t.test('a full socket that does not drain in time is ended as slow', async (t) => {
  const { out, ends } = await serve(t, { maxBufferedBytes: Number.MAX_SAFE_INTEGER, drainTimeoutMs: 50 })
  const chunk = 'x'.repeat(1024 * 1024)
  for (let i = 0; i < 64; i++) out.write(chunk)
  t.ok(await until(10_000, async () => ends.length > 0), 'ended')
  t.same(ends, ['slow'])
})
