// Part of `npm run build`: tsc emits only JavaScript, so the files the compiled modules read at
// run time (the Lua scripts under src/broker/scripts/) are copied from src/ to dist/ at the same
// paths, where `new URL('./scripts/…', import.meta.url)` finds them.
import { cpSync, statSync } from 'node:fs'

const ASSET = /\.lua$/
cpSync('src', 'dist', { recursive: true, filter: (path) => statSync(path).isDirectory() || ASSET.test(path) })
