import t from 'tap'
import { execFile } from 'node:child_process'
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, relative, resolve } from 'node:path'
import { promisify } from 'node:util'
import ts from 'typescript'
import { startSim } from './helper.ts'
import { listeningBroker } from './client-helper.ts'

const run = promisify(execFile)
const ROOT = resolve('.')
const CLIENT = join(ROOT, 'src', 'client')
const PACKAGE = join(ROOT, 'packages', 'client')

interface PackageJson {
  name: string
  version: string
  type?: string
  engines: { node: string }
  exports?: Record<string, unknown>
  main?: string
  types?: string
  files?: string[]
  scripts?: Record<string, string>
  dependencies: Record<string, string>
}
const readJson = (file: string): PackageJson => JSON.parse(readFileSync(file, 'utf8')) as PackageJson
const root = readJson('package.json')
const pkg = readJson(join(PACKAGE, 'package.json'))

/** Every module specifier of a TypeScript source (imports, re-exports, dynamic imports), as the compiler reads them. */
function specifiers (source: string): string[] {
  return ts.preProcessFile(source, true, true).importedFiles.map((f) => f.fileName)
}

/** The ts example of the README's *Client library* section. */
function readmeExample (): string {
  const readme = readFileSync('README.md', 'utf8')
  const section = readme.slice(readme.indexOf('\n## Client library\n'))
  const m = /```ts\n([\s\S]*?)```/.exec(section)
  if (m?.[1] === undefined) throw new Error('no ts example in the README\'s Client library section')
  return m[1]
}

/** The lowest version a `>=x.y[.z]` range allows, as [major, minor, patch]. */
function floor (range: string): number[] {
  const m = /^>=\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?$/.exec(range.trim())
  if (m === null) throw new Error(`not a >= range: ${range}`)
  return [Number(m[1]), Number(m[2] ?? 0), Number(m[3] ?? 0)]
}
const atLeast = (a: number[], b: number[]): boolean => a[0] !== b[0] ? a[0]! > b[0]! : a[1] !== b[1] ? a[1]! > b[1]! : a[2]! >= b[2]!

/** The environment for npm in a scratch project: none of the npm_* variables of an `npm test` around us (its prefix is this repository). */
function npmEnv (): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.toLowerCase().startsWith('npm_')))
}

t.test('the README example is short and imports the package', async (t) => {
  const lines = readmeExample().trim().split('\n').filter((l) => l.trim() !== '')
  t.ok(lines.length <= 12, `${lines.length} lines`)
  t.match(readmeExample(), /createTokenSource\(/)
  t.match(readmeExample(), `from '${pkg.name}'`)
})

t.test('the client imports node built-ins, undici and eventsource-parser only: never the server code', async (t) => {
  const files = readdirSync(CLIENT).filter((f) => f.endsWith('.ts'))
  t.ok(files.includes('index.ts'))
  const seen: string[] = []
  for (const file of files) {
    const specs = specifiers(readFileSync(join(CLIENT, file), 'utf8'))
    seen.push(...specs)
    for (const spec of specs) {
      if (spec.startsWith('.')) {
        const target = resolve(CLIENT, spec)
        t.equal(relative(CLIENT, dirname(target)), '', `${file}: ${spec} stays in src/client`)
      } else {
        t.ok(spec.startsWith('node:') || spec === 'undici' || spec === 'eventsource-parser', `${file}: ${spec} is allowed`)
      }
    }
  }
  t.ok(seen.includes('undici') && seen.includes('./http.ts'), 'the scan finds imports')
  t.same(specifiers("import a from '../x.ts'\nexport * from './y.ts'\nawait import('z')"), ['../x.ts', './y.ts', 'z'], 'and would find these')
  t.same(Object.keys(pkg.dependencies).sort(), ['eventsource-parser', 'undici'], 'the package depends on what the client imports, nothing else')
  for (const [name, range] of Object.entries(pkg.dependencies)) {
    t.equal(range, root.dependencies[name], `${name}: the range the repository's own tests run the client with`)
  }
  t.equal(pkg.version, root.version, 'released with the broker it talks to')
})

t.test('the Node ranges agree: the client with its dependencies, the broker with provisioning and the README', async (t) => {
  // The package may claim no older Node than its dependencies accept.
  for (const dep of Object.keys(pkg.dependencies)) {
    const engines = readJson(join(ROOT, 'node_modules', dep, 'package.json')).engines
    t.ok(atLeast(floor(pkg.engines.node), floor(engines.node)), `${pkg.name} ${pkg.engines.node} is within ${dep}'s ${engines.node}`)
  }
  const broker = floor(root.engines.node)[0]
  const provision = readFileSync('.ci/provision.sh', 'utf8')
  t.equal(Number(/if \[ "\$major" -lt (\d+) \]/.exec(provision)?.[1]), broker, `provisioning installs Node ${broker} when the system Node is older than the broker's engines`)
  const readme = readFileSync('README.md', 'utf8')
  t.match(readme, `when the system Node is older than ${broker}`, 'the quick start says so')
  const [major, minor] = floor(pkg.engines.node)
  t.match(readme, `Node ${major}.${minor}`, 'the README names the client\'s own minimum')
})

t.test('packed, installed in a scratch project: only undici and eventsource-parser come along, and the README example runs against a broker', async (t) => {
  // Outside the repository, so that nothing resolves from its node_modules by accident.
  const dir = mkdtempSync(join(tmpdir(), 'ptb-client-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const env = npmEnv()

  // npm pack runs prepack, which builds dist/ from src/client.
  const packed = await run('npm', ['pack', '--json', '--foreground-scripts=false', '--pack-destination', dir], { cwd: PACKAGE, env, maxBuffer: 16 * 2 ** 20 })
  const [info] = JSON.parse(packed.stdout.slice(packed.stdout.indexOf('['))) as Array<{ filename: string, files: Array<{ path: string }> }>
  if (info === undefined) throw new Error(`npm pack listed no package: ${packed.stdout}`)
  const files = info.files.map((f) => f.path).sort()
  t.same(files, ['README.md', 'dist/http.d.ts', 'dist/http.js', 'dist/index.d.ts', 'dist/index.js', 'dist/stream.d.ts', 'dist/stream.js', 'package.json'],
    'the compiled client and its declarations: no tests, sources, maps, docs or server code')

  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'scratch', version: '1.0.0', private: true, type: 'module' }))
  await run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', '--loglevel=error', join(dir, info.filename)], { cwd: dir, env, timeout: 120_000 })

  // The whole installed tree: the client and its two dependencies, and no install scripts.
  const ls = await run('npm', ['ls', '--all', '--json'], { cwd: dir, env })
  const names = new Set<string>()
  const walk = (deps: Record<string, { dependencies?: Record<string, unknown> }> | undefined): void => {
    for (const [name, d] of Object.entries(deps ?? {})) {
      names.add(name)
      walk(d.dependencies as never)
    }
  }
  walk((JSON.parse(ls.stdout) as { dependencies: Record<string, { dependencies?: Record<string, unknown> }> }).dependencies)
  t.same([...names].sort(), ['@plex-token-broker/client', 'eventsource-parser', 'undici'])
  t.same(readdirSync(join(dir, 'node_modules')).filter((n) => !n.startsWith('.')).sort(), ['@plex-token-broker', 'eventsource-parser', 'undici'], 'node_modules holds nothing else')
  const lock = JSON.parse(readFileSync(join(dir, 'package-lock.json'), 'utf8')) as { packages: Record<string, { hasInstallScript?: boolean }> }
  t.same(Object.entries(lock.packages).filter(([, p]) => p.hasInstallScript === true).map(([k]) => k), [], 'no install scripts')

  // A real broker and PMS (the simulator) for the README example.
  const sim = await startSim(t)
  const b = await listeningBroker(t, sim)
  writeFileSync(join(dir, 'secret'), `${b.client.secret}\n`)
  let example = readmeExample()
  for (const [from, to] of [['http://broker:8080', b.url], ['/run/secrets/ptb-thumbnailer', join(dir, 'secret')], ['http://192.168.1.10:32400', sim.url]]) {
    t.ok(example.includes(`'${from}'`), `the example names ${from}`)
    example = example.replace(`'${from}'`, JSON.stringify(to))
  }
  writeFileSync(join(dir, 'example.ts'), example)
  const out = await run(process.execPath, ['example.ts'], { cwd: dir, env, timeout: 60_000 })
  t.match(out.stdout, /^200 /, 'the example printed PMS\'s answer; it then exited by itself (close())')
  t.ok(sim.counters.byPath['/library/sections']! >= 1, 'PMS got the call')
  t.ok(b.seen.posts >= 1 || b.seen.streams >= 1, 'with a token from the broker')

  // TypeScript: an ES module (the README example too) and a CommonJS one, checked against the
  // installed declarations (skipLibCheck off, so they are checked as well); the CommonJS one is
  // compiled and run, as a CommonJS service would (`require` of this ES module, Node 22.12+).
  writeFileSync(join(dir, 'consumer.mts'), `
import { createTokenSource, PmsUnavailableError, type IssuedToken, type TokenChange } from '${pkg.name}'
const s = createTokenSource({ brokerUrl: 'http://broker:8080', secretFile: '/run/secrets/ptb', server: 'default' })
s.on('token', (c: TokenChange) => { const id: string = c.tokenId; void id })
const t: Promise<IssuedToken> = s.current()
void t
const e = new PmsUnavailableError('x', { attempts: 1, cause: undefined })
const code: 'PMS_UNAVAILABLE' = e.code
void code
// Real types, not any: were the declarations missing or untyped, this directive would be unused (TS2578).
// @ts-expect-error a function is not a number
const n: number = createTokenSource
void n
`)
  writeFileSync(join(dir, 'consumer.cts'), `
import { createTokenSource, BrokerError } from '${pkg.name}'
async function main (): Promise<void> {
  const s = createTokenSource({ brokerUrl: process.env.BROKER!, secret: process.env.SECRET!, server: 'default', stream: false })
  const token: string = await s.token()
  await s.close()
  console.log(JSON.stringify({ token, brokerError: typeof BrokerError }))
}
void main()
`)
  writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify({
    compilerOptions: { module: 'nodenext', moduleResolution: 'nodenext', target: 'ES2022', strict: true, skipLibCheck: false, outDir: 'out', types: ['node'], typeRoots: [join(ROOT, 'node_modules', '@types')] },
    files: ['consumer.mts', 'consumer.cts', 'example.ts'],
  }))
  const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc')
  const typed = await run(process.execPath, [tsc, '-p', 'tsconfig.json'], { cwd: dir }).then(() => 'ok', (e: { stdout: string }) => e.stdout)
  t.equal(typed, 'ok', 'both consumers and the README example type-check against the installed declarations')
  t.match(readFileSync(join(dir, 'out', 'consumer.cjs'), 'utf8'), `require("${pkg.name}")`, 'the CommonJS consumer is compiled to require()')
  const cjs = await run(process.execPath, [join('out', 'consumer.cjs')], { cwd: dir, env: { ...env, BROKER: b.url, SECRET: b.client.secret }, timeout: 60_000 })
  const answer = JSON.parse(cjs.stdout) as { token: string, brokerError: string }
  t.ok(sim.isTokenValid(answer.token), 'require() of the package gets a token PMS accepts')
  t.equal(answer.brokerError, 'function')
})
