import { spawnSync } from 'node:child_process'

/** The part of tap's Test this helper needs. */
interface T {
  fail: (message: string) => unknown
  comment: (...message: string[]) => unknown
}

/**
 * Whether `promtool` (Prometheus's linter and rule tester) can run here. CI provisions it
 * (`ensure_promtool` in .ci/provision.sh), so under CI=true a missing promtool fails the test
 * instead of passing without checking anything. On a developer machine without it the checks
 * that need it are left out, with a visible note saying how to get them.
 */
export function havePromtool (t: T, what: string): boolean {
  const r = spawnSync('promtool', ['--version'], { encoding: 'utf8' })
  if (r.status === 0) return true
  const why = r.error !== undefined ? (r.error as NodeJS.ErrnoException).code ?? r.error.message : `exit ${r.status}`
  if (process.env.CI === 'true') {
    t.fail(`promtool is required under CI=true to check ${what} (${why}); .ci/provision.sh ensure_promtool installs it`)
  } else {
    t.comment(`NOTE: promtool not found (${why}): ${what} not checked. Install it with \`apt-get install prometheus\` (or run bin/test).`)
  }
  return false
}

/** Runs promtool with `args` (and `input` on stdin); status and everything it printed. */
export function promtool (args: string[], input?: string): { status: number | null, output: string } {
  const r = spawnSync('promtool', args, { encoding: 'utf8', input, timeout: 60_000 })
  return { status: r.status, output: `${r.stdout ?? ''}${r.stderr ?? ''}` }
}
