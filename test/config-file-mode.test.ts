import t from 'tap'
import { randomBytes } from 'node:crypto'
import { chmodSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { loadConfig } from '../src/config/index.ts'
import { buildTestApp, REDIS_URL, type T, uniquePrefix } from './helper.ts'

// A BROKER_CONFIG with `token:` entries holds PMS admin tokens: other users on the host must not read it.

const ADMIN_TOKEN = 'admin-token-in-the-file-1234'

async function bootLogs (t: T, file: string) {
  const config = loadConfig({
    BROKER_SECRET: randomBytes(32).toString('base64'),
    REDIS_URL,
    REDIS_PREFIX: uniquePrefix('file-mode'),
    HOST: '127.0.0.1',
    BROKER_ROLE: 'api',
    PLEX_TV_URL: 'http://127.0.0.1:1',
    BROKER_CONFIG: file,
  })
  const app = await buildTestApp(t, config, { defaultMetrics: false })
  await app.ready()
  return app.logs
}

t.test('a config file holding admin tokens that the group or others may read is warned about at boot (path and mode, not the tokens)', async (t) => {
  const dir = t.testdir({})
  const file = join(dir, 'broker.yaml')
  writeFileSync(file, `servers:\n  - name: living-room\n    url: http://127.0.0.1:1\n    token: ${ADMIN_TOKEN}\n`)
  for (const [mode, warned] of [[0o644, true], [0o640, true], [0o604, true], [0o600, false], [0o400, false]] as const) {
    chmodSync(file, mode)
    const logs = await bootLogs(t, file)
    const warning = logs.records().find((r) => r.level === 40 && /BROKER_CONFIG holds admin tokens/.test(String(r.msg)))
    const octal = `0${mode.toString(8)}`
    if (warned) t.match(warning, { path: file, mode: octal, msg: /chmod 600/ }, `mode ${octal}: warned, naming the path and mode`)
    else t.equal(warning, undefined, `mode ${octal}: no warning`)
    t.notOk(logs.text.includes(ADMIN_TOKEN), `mode ${octal}: the token is not in the logs`)
  }

  // No token in the file (token files instead): nothing secret to expose, no warning.
  const tokenFile = join(dir, 'plex-token')
  writeFileSync(tokenFile, `${ADMIN_TOKEN}\n`, { mode: 0o600 })
  const plain = join(dir, 'plain.yaml')
  writeFileSync(plain, `servers:\n  - name: attic\n    url: http://127.0.0.1:1\n    tokenFile: ${tokenFile}\n`, { mode: 0o644 })
  chmodSync(plain, 0o644)
  const logs = await bootLogs(t, plain)
  t.notOk(logs.records().some((r) => /BROKER_CONFIG holds admin tokens/.test(String(r.msg))), 'a file without tokens: no warning')
})
