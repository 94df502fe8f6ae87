import t from 'tap'
import { execFile } from 'node:child_process'
import { existsSync, readdirSync, readFileSync, symlinkSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import { promisify } from 'node:util'
import ts from 'typescript'

const run = promisify(execFile)
const ROOT = resolve('.')
const CLIENT = join(ROOT, 'src', 'client')
const pkg = JSON.parse(readFileSync('package.json', 'utf8')) as {
  name: string
  type: string
  exports: Record<string, unknown>
  dependencies: Record<string, string>
}

/** Every module specifier of a TypeScript source (imports, re-exports, dynamic imports), as the compiler reads them. */
function specifiers (source: string): string[] {
  return ts.preProcessFile(source, true, true).importedFiles.map((f) => f.fileName)
}

/** The ts example of the README's *Client library* section. */
function readmeExample (): string {
  const readme = readFileSync('README.md', 'utf8')
  const section = readme.slice(readme.indexOf('\n## Client library\n'))
  const m = /```ts\n([\s\S]*?)```/.exec(section)
  if (m === null) throw new Error('no ts example in the README\'s Client library section')
  return m[1]
}

t.test('the README example is short', async (t) => {
  const lines = readmeExample().trim().split('\n').filter((l) => l.trim() !== '')
  t.ok(lines.length <= 12, `${lines.length} lines`)
  t.match(readmeExample(), /createTokenSource\(/)
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
  t.ok(pkg.dependencies.undici !== undefined && pkg.dependencies['eventsource-parser'] !== undefined,
    'what the client imports is a runtime dependency, so `npm install` brings it')
})

t.test('exports map `plex-token-broker/client` to files the build emits', async (t) => {
  t.equal(pkg.name, 'plex-token-broker')
  t.same(pkg.exports['./client'], { types: './dist/client/index.d.ts', default: './dist/client/index.js' })
  const build = JSON.parse(readFileSync('tsconfig.build.json', 'utf8')) as { compilerOptions: Record<string, unknown> }
  t.match(build.compilerOptions, { rootDir: 'src', outDir: 'dist', declaration: true }, 'src/client/index.ts → dist/client/index.{js,d.ts}')
})

t.test('built with the build config, `import "plex-token-broker/client"` works from JavaScript and TypeScript', async (t) => {
  // A throw-away package with the repository's name and exports: the client alone is compiled
  // with the options of tsconfig.build.json (so dist/ of the repository is left alone), then
  // imported by name through the exports map, as a service that installed the package would.
  const dir = t.testdir({
    'package.json': JSON.stringify({ name: pkg.name, type: pkg.type, exports: pkg.exports }),
    'tsconfig.json': JSON.stringify({
      extends: join(ROOT, 'tsconfig.build.json'),
      compilerOptions: { rootDir: join(ROOT, 'src'), outDir: 'dist', sourceMap: false },
      include: [CLIENT],
    }),
    'use.mjs': `
import { createTokenSource, TokenSource, BrokerError } from 'plex-token-broker/client'
const s = createTokenSource({ brokerUrl: 'http://127.0.0.1:1', secret: 'x', server: 'default', stream: false })
console.log(JSON.stringify({ source: s instanceof TokenSource, error: typeof BrokerError, mode: s.mode }))
await s.close()
`,
    'consumer.ts': `
import { createTokenSource, type IssuedToken, type TokenChange } from 'plex-token-broker/client'
const s = createTokenSource({ brokerUrl: 'http://broker:8080', secretFile: '/run/secrets/ptb', server: 'default' })
s.on('token', (c: TokenChange) => { const id: string = c.tokenId; void id })
const t: Promise<IssuedToken> = s.current()
void t
// Real types, not any: were the declarations missing or untyped, this directive would be unused (TS2578).
// @ts-expect-error a function is not a number
const n: number = createTokenSource
void n
`,
    // The README's example, as a service would write it.
    'readme-example.ts': readmeExample(),
    'consumer.json': JSON.stringify({
      compilerOptions: { module: 'NodeNext', moduleResolution: 'NodeNext', target: 'ES2022', strict: true, noEmit: true, types: ['node'], typeRoots: [join(ROOT, 'node_modules', '@types')] },
      files: ['consumer.ts', 'readme-example.ts'],
    }),
  })
  symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'), 'dir')
  const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc')
  await run(process.execPath, [tsc, '-p', join(dir, 'tsconfig.json')], { cwd: dir })
  t.same(readdirSync(join(dir, 'dist')), ['client'], 'nothing outside src/client was pulled into the build')
  t.ok(existsSync(join(dir, 'dist/client/index.js')) && existsSync(join(dir, 'dist/client/index.d.ts')), 'index.js and index.d.ts')

  const { stdout } = await run(process.execPath, ['use.mjs'], { cwd: dir })
  t.same(JSON.parse(stdout), { source: true, error: 'function', mode: 'polling' })

  // The types resolve through the exports map (a wrong "types" path would make this fail).
  const typed = await run(process.execPath, [tsc, '-p', 'consumer.json'], { cwd: dir }).then(() => 'ok', (e: { stdout: string }) => e.stdout)
  t.equal(typed, 'ok', 'a TypeScript consumer and the README example type-check against the declarations, which are real types')
})
