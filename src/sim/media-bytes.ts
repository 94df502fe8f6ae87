import { Readable } from 'node:stream'

/**
 * The simulator's media files: bytes generated on the fly, the same for the same seed and offset
 * every time, so a test can fetch any range directly and through a proxy and compare, and a
 * 1 GiB part costs no memory. Each 64 KiB block is an xorshift32 stream seeded by (seed, block).
 */

export const BLOCK = 64 * 1024

function block (seed: number, index: number): Buffer {
  const words = new Uint32Array(BLOCK / 4)
  let x = (Math.imul(seed + 1, 0x9e3779b1) ^ Math.imul(index + 1, 0x85ebca6b)) >>> 0
  if (x === 0) x = 0x6d2b79f5
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13
    x >>>= 0
    x ^= x >>> 17
    x ^= x << 5
    x >>>= 0
    words[i] = x
  }
  return Buffer.from(words.buffer)
}

/** Bytes [start, end] (inclusive) of the file with this seed, streamed block by block with backpressure. */
export function mediaBytes (seed: number, start: number, end: number): Readable {
  let pos = start
  return new Readable({
    highWaterMark: BLOCK,
    read () {
      if (pos > end) {
        this.push(null)
        return
      }
      const index = Math.floor(pos / BLOCK)
      const b = block(seed, index)
      const from = pos - index * BLOCK
      const to = Math.min(BLOCK, end - index * BLOCK + 1)
      pos = index * BLOCK + to
      this.push(b.subarray(from, to))
    },
  })
}

/** A `Range` header against a file of `size` bytes: the inclusive range, 'unsatisfiable', or undefined (whole file). */
export function parseRange (header: string | undefined, size: number): { start: number, end: number } | 'unsatisfiable' | undefined {
  if (header === undefined) return undefined
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim())
  if (m === null || (m[1] === '' && m[2] === '')) return undefined
  if (m[1] === '') {
    const n = Number(m[2])
    if (n === 0) return 'unsatisfiable'
    return { start: Math.max(0, size - n), end: size - 1 }
  }
  const start = Number(m[1])
  const end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1)
  if (start >= size || end < start) return 'unsatisfiable'
  return { start, end }
}
