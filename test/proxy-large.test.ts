import t from 'tap'
import { createHash } from 'node:crypto'
import { request } from 'undici'
import { mediaBytes } from '../src/sim/media-bytes.ts'
import { proxyClient, proxySetup } from './proxy-helper.ts'

/**
 * Large bodies through the proxy: 1 GiB streamed with the same sha256 and bounded memory (nothing
 * buffered), and a reader that pauses longer than the connection idle timeout is not cut off.
 */

const GIB = 1024 * 1024 * 1024

async function sha256Of (stream: AsyncIterable<Buffer>, onChunk: () => void = () => {}): Promise<{ hash: string, bytes: number }> {
  const h = createHash('sha256')
  let bytes = 0
  for await (const chunk of stream) {
    h.update(chunk)
    bytes += chunk.length
    onChunk()
  }
  return { hash: h.digest('hex'), bytes }
}

t.test('1 GiB streams through with the same sha256 and bounded memory', async (t) => {
  const s = await proxySetup(t, [proxyClient('player', { preset: 'stream' })], { sim: { partSizes: { 3: GIB } } })
  const { key } = await s.key('player')
  const expected = await sha256Of(mediaBytes(3, 0, GIB - 1))
  global.gc?.()
  const rssBefore = process.memoryUsage().rss
  let rssMax = rssBefore
  let n = 0
  const r = await request(`${s.base}/library/parts/3/1700000000/file.mp4`, { headers: { 'x-plex-token': key } })
  t.equal(r.statusCode, 200)
  t.equal(r.headers['content-length'], String(GIB))
  const got = await sha256Of(r.body, () => { if (++n % 256 === 0) rssMax = Math.max(rssMax, process.memoryUsage().rss) })
  t.equal(got.bytes, GIB)
  t.equal(got.hash, expected.hash, 'the same bytes')
  const growthMb = (rssMax - rssBefore) / 1024 / 1024
  t.comment(`RSS growth while streaming 1 GiB (simulator, proxy and reader in one process): ${growthMb.toFixed(1)} MB`)
  t.ok(growthMb < 150, 'nothing close to the body size is held in memory')
})

t.test('a reader that pauses longer than the idle timeout is not cut off', async (t) => {
  const size = 16 * 1024 * 1024
  const s = await proxySetup(t, [proxyClient('player', { preset: 'stream' })], {
    sim: { partSizes: { 2: size } },
    proxy: { timeouts: { connectionTimeoutMs: 500 } },
  })
  const { key } = await s.key('player')
  const expected = await sha256Of(mediaBytes(2, 0, size - 1))
  const r = await request(`${s.base}/library/parts/2/1700000000/file.mp4`, { headers: { 'x-plex-token': key } })
  t.equal(r.statusCode, 200)
  const h = createHash('sha256')
  let bytes = 0
  let paused = false
  const done = new Promise<void>((resolve, reject) => {
    r.body.on('data', (c: Buffer) => {
      h.update(c)
      bytes += c.length
      if (!paused) {
        paused = true
        r.body.pause()
        setTimeout(() => r.body.resume(), 1500)
      }
    })
    r.body.once('end', resolve)
    r.body.once('error', reject)
  })
  await done
  t.equal(bytes, size)
  t.equal(h.digest('hex'), expected.hash, 'complete after a pause three times the idle timeout')
})
