import t from 'tap'
import { spawnSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { join, relative } from 'node:path'

// No usable client secret ships in the repository: a config digest whose secret is
// written in some file lets anyone who reads the repository authenticate as that client. So: take
// every SHA-256-shaped hex string in any file, and hash every string-like piece of every file;
// no piece may hash to one of those digests.

/** Files in the repository: tracked plus new ones not ignored (so a secret is caught before its commit). */
function repoFiles (): string[] {
  const git = spawnSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { encoding: 'utf8' })
  if (git.status === 0) return git.stdout.split('\0').filter((f) => f !== '' && statSync(f, { throwIfNoEntry: false })?.isFile() === true)
  // Not a git checkout (an unpacked tarball): walk it, skipping what .gitignore keeps out.
  const skip = new Set(['.git', 'node_modules', 'dist', '.tap', 'coverage', '.demo', join('docker', 'secrets')])
  const out: string[] = []
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name)
      if (skip.has(relative('.', p)) || e.name === '.env') continue
      if (e.isDirectory()) walk(p)
      else if (e.isFile()) out.push(relative('.', p))
    }
  }
  walk('.')
  return out
}

/** Every piece of text that could be a secret: whitespace/quote-delimited words, quoted strings, and runs of secret-like characters. */
function candidates (text: string): Set<string> {
  const found = new Set<string>()
  const add = (s: string): void => {
    for (const v of [s, s.trim(), s.replace(/[.,;:)\]}>]+$/, '')]) if (v.length >= 8) found.add(v)
  }
  for (const m of text.matchAll(/[^\s"'`]+/g)) add(m[0])
  for (const m of text.matchAll(/[A-Za-z0-9+/=_.~-]+/g)) add(m[0])
  for (const m of text.matchAll(/"([^"\n]*)"|'([^'\n]*)'|`([^`\n]*)`/g)) add(m[1] ?? m[2] ?? m[3] ?? '')
  return found
}

/** Pairs of (file holding a secret, file holding its digest) among `files`. */
function usableSecrets (files: Map<string, string>): Array<{ secretIn: string, digestIn: string }> {
  const digests = new Map<string, string>()
  for (const [name, text] of files) for (const m of text.matchAll(/\b[0-9a-fA-F]{64}\b/g)) digests.set(m[0].toLowerCase(), name)
  const hits: Array<{ secretIn: string, digestIn: string }> = []
  for (const [name, text] of files) {
    for (const c of candidates(text)) {
      const d = createHash('sha256').update(c).digest('hex')
      const where = digests.get(d)
      if (where !== undefined) hits.push({ secretIn: name, digestIn: where })
    }
  }
  return hits
}

t.test('the check finds a secret written next to (or far from) its digest', async (t) => {
  const secret = `change-me-${randomBytes(6).toString('hex')}`
  const digest = createHash('sha256').update(secret).digest('hex')
  const files = new Map([
    ['docker/broker.yaml', `clients:\n  # Example client; its secret is "${secret}" (replace it!).\n  - id: x\n    secretSha256: "${digest}"\n`],
    ['README.md', `curl -H "Authorization: Bearer ${secret}" http://broker:8080/v1/tokens`],
    ['test/other.ts', `const s = '${randomBytes(8).toString('hex')}'`],
  ])
  t.same(usableSecrets(files), [
    { secretIn: 'docker/broker.yaml', digestIn: 'docker/broker.yaml' },
    { secretIn: 'README.md', digestIn: 'docker/broker.yaml' },
  ])
})

t.test('no file in the repository holds a client secret whose digest any file holds', async (t) => {
  const files = new Map<string, string>()
  for (const f of repoFiles()) {
    const buf = readFileSync(f)
    if (!buf.subarray(0, 8000).includes(0)) files.set(f, buf.toString('utf8'))
  }
  t.ok(files.size > 50, `scanned ${files.size} files`)
  t.ok(files.has('docker/init-secrets.sh') && files.has('README.md'), 'the docs and the docker files are among them')
  t.same(usableSecrets(files), [], 'no usable secret')
})
