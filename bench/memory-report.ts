/**
 * Preloaded into the broker by bench/proxy-memory.ts (`--import`): writes `process.memoryUsage()`
 * and the V8 heap spaces' sizes to the file MEM_REPORT ten times a second. With MEM_LIVE=1 (and
 * `--expose-gc`) it also runs a full GC once a second and reports the ArrayBuffers still held
 * 300 ms later as `live`: a diagnosis of what is held rather than awaiting collection, never a
 * figure of the proxy bench.
 */
import { renameSync, writeFileSync } from 'node:fs'
import v8 from 'node:v8'

const file = process.env.MEM_REPORT ?? ''
const gc = (globalThis as { gc?: () => void }).gc
let tick = 0
let live = Number.NaN
setInterval(() => {
  const m = process.memoryUsage()
  if (process.env.MEM_LIVE === '1' && gc !== undefined) {
    tick++
    if (tick % 10 === 0) gc()
    if (tick % 10 === 3) live = m.arrayBuffers
  }
  const spaces = Object.fromEntries(v8.getHeapSpaceStatistics().map((s) => [s.space_name, s.space_size]))
  writeFileSync(`${file}.tmp`, JSON.stringify({ ...m, newSpace: spaces.new_space ?? 0, live }))
  renameSync(`${file}.tmp`, file)
}, 100).unref()
