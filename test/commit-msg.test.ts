import t from 'tap'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

// bin/check-commit-msg is the commit-msg hook and CI's check of CONTRIBUTING.md's message rule.
const dir = mkdtempSync(join(tmpdir(), 'ptb-commit-msg-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))

function check (message: string) {
  const file = join(dir, 'MSG')
  writeFileSync(file, message)
  return spawnSync('bin/check-commit-msg', [file], { encoding: 'utf8' })
}

t.test('a short subject, a blank line and a body pass', async (t) => {
  t.equal(check('Cap how far back a stream resume may go\n\nA resume from 0-0 scanned the whole log.\n').status, 0)
  t.equal(check('Subject only\n').status, 0)
  t.equal(check('# a git comment line\nSubject after a comment\n').status, 0, 'comment lines are ignored')
})

t.test('a subject over 72 characters is refused, naming its length', async (t) => {
  const r = check(`${'x'.repeat(73)}\n\nbody\n`)
  t.equal(r.status, 1)
  t.match(r.stderr, /73 characters \(at most 72\)/)
  t.equal(check(`${'x'.repeat(72)}\n`).status, 0, 'exactly 72 is fine')
})

t.test('a body glued to the subject is refused', async (t) => {
  const r = check('Subject\nbody on the second line\n')
  t.equal(r.status, 1)
  t.match(r.stderr, /blank line/)
})

t.test('an empty message is refused', async (t) => {
  t.equal(check('\n').status, 1)
})

t.test('the range form checks every commit since the rule', async (t) => {
  const r = spawnSync('bin/check-commit-msg', ['--since-rule'], { encoding: 'utf8' })
  t.equal(r.status, 0, r.stderr)
})
