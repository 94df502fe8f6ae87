import type { Dispatcher } from 'undici'

/**
 * Upper bound of one answer from PMS or plex.tv (1 MiB). Real answers are a few KiB; a larger
 * one is a misbehaving server or something posing as one, and must not cost the broker memory.
 */
export const MAX_BODY_BYTES = 1024 * 1024

/**
 * The body as text, or undefined when it is larger than `cap` bytes. A declared Content-Length
 * over the cap is refused before reading; otherwise reading stops at the first byte over the
 * cap and the connection is destroyed, so the rest is never read.
 */
export async function readCapped (res: Dispatcher.ResponseData, cap = MAX_BODY_BYTES): Promise<string | undefined> {
  const declared = Number(res.headers['content-length'])
  if (Number.isFinite(declared) && declared > cap) {
    res.body.destroy()
    return undefined
  }
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of res.body) {
    const buf = chunk as Buffer
    size += buf.length
    if (size > cap) {
      res.body.destroy()
      return undefined
    }
    chunks.push(buf)
  }
  return Buffer.concat(chunks, size).toString('utf8')
}
